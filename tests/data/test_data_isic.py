"""ISIC loaders: layouts, pairing, splits under both protocols, normalisation, augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import vmbench
from vmbench.data import build_dataset, synth_isic
from vmbench.data.isic_files import CHALLENGE_FOLDERS
from vmbench.data.transforms import IMAGENET_MEAN, IMAGENET_STD, IsicTransform

SIZE = (48, 48)  # small resize target keeps the tests quick


@pytest.fixture(scope="module")
def isic18(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isic18") / "data"
    synth_isic(root, n=20, seed=1, year=2018, size_range=(60, 90))
    return root


@pytest.fixture(scope="module")
def isic17(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isic17") / "data"
    synth_isic(root, n=10, seed=2, year=2017, size_range=(60, 90))
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prep") / "data"
    synth_isic(root, n=20, seed=3, layout="prepared", size_range=(60, 90))
    return root


def _ids_in(folder: Path, suffix: str) -> set[str]:
    return {p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and "superpixels" not in p.name}


def _check_items(ds, n_items=3):
    for i in range(min(n_items, len(ds))):
        item = ds[i]
        assert set(item) == {"image", "mask", "id"}
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, *SIZE)
        assert item["mask"].dtype == torch.float32 and item["mask"].shape == (1, *SIZE)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert item["id"] == ds.ids[i]
        assert torch.isfinite(item["image"]).all()


@pytest.mark.parametrize("year", [2017, 2018])
def test_challenge_layout_holdout_uses_official_folders(year, isic17, isic18):
    root = isic17 if year == 2017 else isic18
    n = 10 if year == 2017 else 20
    expected = {"train": round(0.7 * n), "val": round(0.8 * n) - round(0.7 * n), "test": n - round(0.8 * n)}
    name = f"isic{year}"
    for split, (img_dir, _) in CHALLENGE_FOLDERS[year].items():
        ds = build_dataset(name, root, split, img_size=SIZE)
        assert (ds.name, ds.split, ds.protocol, ds.is_volume, ds.val_is_test) == (name, split, "holdout", False, False)
        assert ds.layout == f"challenge-{year}"
        assert len(ds) == expected[split]
        assert set(ds.ids) == _ids_in(root / img_dir, ".jpg")  # superpixels and CSV skipped
        _check_items(ds)


def test_challenge_layout_paper_splits_training_7_3_with_val_equal_test(isic18):
    train_ids = _ids_in(isic18 / CHALLENGE_FOLDERS[2018]["train"][0], ".jpg")
    tr = build_dataset("isic2018", isic18, "train", "paper", img_size=SIZE)
    va = build_dataset("isic2018", isic18, "val", "paper", img_size=SIZE)
    te = build_dataset("isic2018", isic18, "test", "paper", img_size=SIZE)
    assert va.ids == te.ids and tr.val_is_test and te.val_is_test
    assert not set(tr.ids) & set(te.ids)
    assert set(tr.ids) | set(te.ids) == train_ids
    assert len(tr) == round(0.7 * len(train_ids))
    assert va.normalize == "vmunet"
    again = build_dataset("isic2018", isic18, "train", "paper", img_size=SIZE, seed=5)
    assert again.ids == tr.ids  # the training seed does not move the split
    other = build_dataset("isic2018", isic18, "train", "paper", img_size=SIZE, split_seed=1)
    assert other.ids != tr.ids and len(other) == len(tr)


def test_challenge_layout_without_val_test_folders_splits_70_10_20(isic18, tmp_path):
    root = tmp_path / "only_training"
    root.mkdir()
    for f in CHALLENGE_FOLDERS[2018]["train"]:
        shutil.copytree(isic18 / f, root / f)
    parts = {s: build_dataset("isic2018", root, s, img_size=SIZE).ids for s in ("train", "val", "test")}
    assert [len(v) for v in parts.values()] == [10, 1, 3]  # 14 training images
    assert not set(parts["train"]) & set(parts["val"]) and not set(parts["val"]) & set(parts["test"])
    assert not set(parts["train"]) & set(parts["test"])
    assert set().union(*parts.values()) == _ids_in(root / CHALLENGE_FOLDERS[2018]["train"][0], ".jpg")


def test_prepared_layout_both_protocols(prepared):
    train_ids = _ids_in(prepared / "train" / "images", ".png")
    val_ids = _ids_in(prepared / "val" / "images", ".png")
    assert (len(train_ids), len(val_ids)) == (14, 6)
    p = {s: build_dataset("isic2018", prepared, s, "paper", img_size=SIZE) for s in ("train", "val", "test")}
    assert set(p["train"].ids) == train_ids and set(p["test"].ids) == val_ids
    assert p["val"].ids == p["test"].ids and p["val"].val_is_test and p["train"].layout == "prepared"
    h = {s: build_dataset("isic2018", prepared, s, "holdout", img_size=SIZE) for s in ("train", "val", "test")}
    assert not set(h["train"].ids) & set(h["val"].ids)
    assert set(h["train"].ids) | set(h["val"].ids) == train_ids
    assert (len(h["train"]), len(h["val"])) == (11, 3)  # 20 % of 14, rounded
    assert set(h["test"].ids) == val_ids and not h["val"].val_is_test
    for ds in (*p.values(), *h.values()):
        _check_items(ds, 1)


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _square(h, w, box):
    m = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


def test_prepared_pairs_by_name_not_sorted_order(tmp_path):
    # Sorted image names: a.png, a_b.png; sorted mask names: a_b_segmentation.png, a_segmentation.png.
    # Pairing by position would pair images with the other one's mask (different sizes too).
    boxes = {"a": (30, 40, (5, 15, 5, 25)), "a_b": (50, 20, (20, 45, 2, 8))}
    for split in ("train", "val"):
        for sid, (h, w, box) in boxes.items():
            m = _square(h, w, box)
            _write(tmp_path / split / "images" / f"{sid}.png", np.stack([m // 2 + 60] * 3, -1))
            _write(tmp_path / split / "masks" / f"{sid}_segmentation.png", m)
    ds = build_dataset("isic2017", tmp_path, "train", "paper", img_size=SIZE)
    assert ds.ids == ["a", "a_b"]
    for i, sid in enumerate(ds.ids):
        image, mask = ds.load(i)
        assert np.array_equal(mask, (image[..., 0] > 100).astype(np.uint8)), sid
        assert mask.shape == boxes[sid][:2]


def test_challenge_pairs_by_id(tmp_path, isic18):
    # Masks are matched by ISIC id; extra files (superpixels, CSV, licence) are ignored.
    img_dir, gt_dir = (tmp_path / f for f in CHALLENGE_FOLDERS[2018]["train"])
    img_dir.mkdir()
    gt_dir.mkdir()
    boxes = {"ISIC_0000009": (30, 40, (5, 15, 5, 25)), "ISIC_0000010": (50, 20, (20, 45, 2, 8))}
    for sid, (h, w, box) in boxes.items():
        m = _square(h, w, box)
        _write(img_dir / f"{sid}.jpg", np.stack([m // 2 + 60] * 3, -1))
        _write(gt_dir / f"{sid}_segmentation.png", m)
        _write(img_dir / f"{sid}_superpixels.png", m)
    (img_dir / "ISIC-2017_Training_Data_metadata.csv").write_text("image_id\n")
    (gt_dir / "LICENSE.txt").write_text("x")
    ds = build_dataset("isic2018", tmp_path, "train", "paper", img_size=SIZE, split_seed=0)
    full = build_dataset("isic2018", tmp_path, "test", "paper", img_size=SIZE)
    for d in (ds, full):
        for i in range(len(d)):
            image, mask = d.load(i)
            assert np.array_equal(mask, (image[..., 0] > 100).astype(np.uint8))


def test_nested_archive_folder_is_descended(tmp_path, isic18):
    for f in CHALLENGE_FOLDERS[2018]["train"]:
        shutil.copytree(isic18 / f, tmp_path / f / f)
    assert len(build_dataset("isic2018", tmp_path, "train", img_size=SIZE)) == 10


def test_build_dataset_defaults(isic18):
    info = vmbench.dataset_info("isic2018")
    assert (info.task, info.num_classes, info.in_chans, info.img_size, info.evaluation) == (
        "binary", 1, 3, (256, 256), "pooled2d"
    )
    tr = build_dataset("isic2018", isic18)
    te = build_dataset("isic2018", isic18, "test")
    assert tr.img_size == (256, 256) and tr.augment and not te.augment
    assert tr.split == "train" and tr.protocol == "holdout" and tr.normalize == "minmax-imagenet"
    assert tr[0]["image"].shape == (3, 256, 256)
    assert build_dataset("isic2018", isic18, "val", img_size=32)[0]["mask"].shape == (1, 32, 32)


def test_normalisation_modes(isic18):
    ds = build_dataset("isic2018", isic18, "test", "holdout", img_size=SIZE, normalize="unit")
    raw, _ = ds.load(0)
    x = raw.astype(np.float32)
    resized = cv2.resize(x, SIZE[::-1], interpolation=cv2.INTER_AREA)

    def get(normalize):
        d = build_dataset("isic2018", isic18, "test", "holdout", img_size=SIZE, normalize=normalize)
        return d[0]["image"].numpy().transpose(1, 2, 0)

    np.testing.assert_allclose(get("unit"), resized / 255, atol=1e-5)
    mm = cv2.resize((x - x.min()) / (x.max() - x.min()), SIZE[::-1], interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(get("minmax-imagenet"), (mm - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-4)
    np.testing.assert_allclose(get("imagenet"), (resized / 255 - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-4)
    # VM-UNet myNormalize: (x - mean) / std with the test constants, then min-max to [0, 255].
    z = (x - 149.034) / 32.022
    vm = cv2.resize((z - z.min()) / (z.max() - z.min()) * 255, SIZE[::-1], interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(get("vmunet"), vm, atol=1e-3)
    paper = build_dataset("isic2018", isic18, "test", "paper", img_size=SIZE)
    assert paper.normalize == "vmunet" and 0 <= float(paper[0]["image"].min()) and float(paper[0]["image"].max()) <= 255


# ---------------------------------------------------------------------------------------------
# Augmentation


def _blob_pair(h=64, w=64):
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (w * 3 // 8, h // 2), (w // 4, h // 6), 30, 0, 360, 1, -1)
    img = np.where(m[..., None] > 0, 200, 60).astype(np.uint8).repeat(3, 2)
    return img, m


def test_augmentation_keeps_masks_binary_and_aligned():
    img, m = _blob_pair()
    big_img, big_m = _blob_pair(128, 128)
    exact = IsicTransform((64, 64), augment=True, normalize="vmunet", stats=(150, 30), rotate_interpolation="nearest")
    smooth = IsicTransform((40, 40), augment=True, normalize="minmax-imagenet", rotate_interpolation="linear")
    distinct = set()
    for s in range(30):
        x, mask = exact(img, m, np.random.default_rng(s))
        assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
        # nearest everywhere and no resize: the mask derived from the image is the mask
        assert np.array_equal((x[0] > 127).astype(np.float32), mask[0])
        distinct.add(x.tobytes())
        y, mask2 = smooth(big_img, big_m, np.random.default_rng(s))
        assert set(np.unique(mask2)) <= {0.0, 1.0} and mask2.shape == (1, 40, 40)
        derived = y[0] > (0.5 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
        inter, union = (derived & (mask2[0] > 0)).sum(), (derived | (mask2[0] > 0)).sum()
        assert inter / union > 0.9
    # flips and a fixed angle give at most 8 distinct outputs; per-sample angles give more
    assert len(distinct) > 8


def test_augmentation_is_reproducible_for_seed_and_epoch(isic18):
    ds = build_dataset("isic2018", isic18, "train", img_size=SIZE, seed=3)
    first = [ds[i]["image"] for i in range(4)]
    ds2 = build_dataset("isic2018", isic18, "train", img_size=SIZE, seed=3)
    assert torch.equal(ds2[2]["image"], first[2])  # independent of access order
    assert all(torch.equal(ds2[i]["image"], first[i]) for i in range(4))
    ds2.set_epoch(1)
    assert any(not torch.equal(ds2[i]["image"], first[i]) for i in range(4))
    ds3 = build_dataset("isic2018", isic18, "train", img_size=SIZE, seed=4)
    assert any(not torch.equal(ds3[i]["image"], first[i]) for i in range(4))
    ev = build_dataset("isic2018", isic18, "test", img_size=SIZE)
    assert torch.equal(ev[0]["image"], ev[0]["image"])


def test_the_file_layer_does_not_import_the_dataset():
    """vmbench.data.isic (the dataset, its registration) builds on vmbench.data.isic_files (layouts,
    splits, reading files), never the reverse."""
    import ast

    import vmbench.data.isic_files as files

    tree = ast.parse(Path(files.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "vmbench.data.isic" not in imported and "vmbench.data" not in imported, imported
