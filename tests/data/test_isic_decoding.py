"""ISIC files decoded by format with the decoder every dataset uses (issue 23, class 7): the masks
that Pillow's grey conversion got wrong, and 16-bit images it clipped to white, read as drawn."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmbench.data import build_dataset
from vmbench.data.isic_files import load_isic_image, load_isic_mask
from vmbench.errors import DataError

H, W = 40, 48


def lesion(top: int, left: int, size: int) -> np.ndarray:
    """A small square lesion (bool), drawn here: the expected mask."""
    m = np.zeros((H, W), bool)
    m[top : top + size, left : left + size] = True
    return m


def palette_mask(path: Path, m: np.ndarray) -> None:
    """Index 1 is the lesion, under a dark colour (grey conversion gives it ~12 of 255)."""
    im = Image.fromarray(m.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 40, 0, 0] + [0, 0, 0] * 254)
    im.save(path)


def alpha_mask(path: Path, m: np.ndarray) -> None:
    """Constant white colour; the alpha channel is the lesion (grey conversion sees all white)."""
    rgba = np.full((H, W, 4), 255, np.uint8)
    rgba[:, :, 3] = np.where(m, 255, 0)
    Image.fromarray(rgba, mode="RGBA").save(path)


def image16(path: Path, seed: int) -> np.ndarray:
    """A 12-bit greyscale image in a 16-bit PNG (values 16 * v, v spanning 0..255): rescaled by its
    own range it reads back as v exactly; ``convert('RGB')`` clipped nearly all of it to 255."""
    v = np.random.default_rng(seed).integers(0, 256, (H, W)).astype(np.uint16)
    v.flat[:2] = (0, 255)  # the full range, so the expected values need no rescaling here
    Image.fromarray(v * 16).save(path)  # mode I;16
    return np.repeat(v.astype(np.uint8)[:, :, None], 3, axis=2)


def test_palette_mask_with_a_dark_lesion_colour(tmp_path):
    m = lesion(10, 12, 3)  # 9 pixels of 1920: under the anti-aliasing tolerance, so it vanished
    palette_mask(tmp_path / "p.png", m)
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(load_isic_mask(tmp_path / "p.png"), m.astype(np.uint8))


def test_alpha_channel_mask(tmp_path):
    m = lesion(5, 20, 12)
    alpha_mask(tmp_path / "a.png", m)
    np.testing.assert_array_equal(load_isic_mask(tmp_path / "a.png"), m.astype(np.uint8))


def test_16bit_mask_is_scaled_not_clipped(tmp_path):
    m = lesion(8, 8, 10)
    Image.fromarray((m * 65535).astype(np.uint16)).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(load_isic_mask(tmp_path / "m16.png"), m.astype(np.uint8))


def test_16bit_image_is_scaled_not_clipped(tmp_path):
    expected = image16(tmp_path / "i16.png", seed=4)
    image, size = load_isic_image(tmp_path / "i16.png")
    assert size == (W, H)
    np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize("kind", ["colour-and-alpha", "colour-coded"])
def test_ambiguous_mask_refused_in_one_line_naming_the_file(tmp_path, kind):
    m = lesion(10, 10, 10)
    rgba = np.zeros((H, W, 4), np.uint8)
    if kind == "colour-and-alpha":  # colour and alpha both vary: which is the mask?
        rgba[m] = (255, 255, 255, 255)
        rgba[~m, 3] = 128
        Image.fromarray(rgba, mode="RGBA").save(tmp_path / "x.png")
    else:  # two classes by colour: a colour-to-class map is not guessed
        rgb = rgba[:, :, :3]
        rgb[m] = (255, 0, 0)
        rgb[:5] = (0, 255, 0)
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp_path / "x.png")
    with pytest.raises(DataError) as info:
        load_isic_mask(tmp_path / "x.png")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot read mask {tmp_path / 'x.png'}: "), message
    assert message.count(str(tmp_path / "x.png")) == 1, message


def test_dataset_reads_them_as_drawn(tmp_path):
    """Through the ISIC dataset (prepared layout): the raw pair and the native-size mask."""
    root = tmp_path / "isic"
    expected = {}
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
    for i, (kind, m) in enumerate([("palette", lesion(3, 4, 3)), ("alpha", lesion(20, 30, 8)),
                                   ("grey", lesion(12, 12, 6))]):
        image = image16(root / "val" / "images" / f"{kind}.png", seed=i)
        if kind == "palette":
            palette_mask(root / "val" / "masks" / f"{kind}.png", m)
        elif kind == "alpha":
            alpha_mask(root / "val" / "masks" / f"{kind}.png", m)
        else:
            Image.fromarray((m * 255).astype(np.uint8)).save(root / "val" / "masks" / f"{kind}.png")
        expected[kind] = (image, m.astype(np.uint8))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "train" / "images" / "t.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "train" / "masks" / "t.png")
    ds = build_dataset("isic2018", root, "test", img_size=32)
    assert sorted(ds.ids) == sorted(expected)
    for index, case in enumerate(ds.ids):
        image, mask = ds.load(index)
        np.testing.assert_array_equal(image, expected[case][0])
        np.testing.assert_array_equal(mask, expected[case][1])
        np.testing.assert_array_equal(ds.native_mask(index), expected[case][1])
        assert ds.native_size(index) == (H, W)
        assert ds[index]["mask"].sum() > 0  # the lesion survives to the item


def test_unreadable_mask_named_once(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=re.escape(f"cannot read mask {tmp_path / 'bad.png'}: not a readable image")):
        load_isic_mask(tmp_path / "bad.png")
