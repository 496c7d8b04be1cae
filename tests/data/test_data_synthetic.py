"""Generated data: deterministic for a seed, realistic layouts, self-building cached datasets."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

import vmbench
from vmbench.data import build_dataset, synth_isic, synth_synapse
from vmbench.data.isic_files import CHALLENGE_FOLDERS


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout,year", [("challenge", 2018), ("challenge", 2017), ("prepared", 2018)])
def test_synth_isic_is_byte_identical_for_a_seed(tmp_path, layout, year):
    kw = dict(n=5, layout=layout, year=year, size_range=(40, 60))
    synth_isic(tmp_path / "a", seed=4, **kw)
    synth_isic(tmp_path / "b", seed=4, **kw)
    synth_isic(tmp_path / "c", seed=5, **kw)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b and a != c
    # a larger n keeps the first images (ids and pixels; the split may change)
    synth_isic(tmp_path / "d", seed=4, **{**kw, "n": 6})
    by_name = lambda tree: {Path(k).name: v for k, v in tree.items() if k.endswith((".jpg", ".png"))}  # noqa: E731
    first, more = by_name(a), by_name(_tree(tmp_path / "d"))
    assert all(more[k] == v for k, v in first.items()) and len(more) > len(first)


def test_synth_isic_images_and_masks(tmp_path):
    report = synth_isic(tmp_path / "d", n=10, seed=0, size_range=(64, 96))
    assert report["counts"] == {"train": 7, "val": 1, "test": 2}
    fracs = []
    for split, (img_dir, gt_dir) in CHALLENGE_FOLDERS[2018].items():
        images = sorted((tmp_path / "d" / img_dir).glob("ISIC_*.jpg"))
        assert len(images) == report["counts"][split]
        assert (tmp_path / "d" / img_dir / "LICENSE.txt").is_file()
        for p in images:
            im = Image.open(p)
            m = np.asarray(Image.open(tmp_path / "d" / gt_dir / f"{p.stem}_segmentation.png"))
            assert im.mode == "RGB" and m.dtype == np.uint8 and m.shape == (im.size[1], im.size[0])
            assert 64 <= min(im.size) and max(im.size) <= 96
            assert set(np.unique(m)) <= {0, 255}
            fracs.append((m > 0).mean())
            rgb = np.asarray(im).astype(float).mean(-1)
            assert rgb[m > 0].mean() < rgb[m == 0].mean()  # lesions are darker than skin
    assert 0.01 < min(fracs) and max(fracs) < 0.9 and np.std(fracs) > 0.02


def test_synth_synapse_is_byte_identical_and_ct_like(tmp_path):
    kw = dict(n_cases=2, size=32, slices=(6, 8))
    synth_synapse(tmp_path / "a", seed=3, **kw)
    synth_synapse(tmp_path / "b", seed=3, **kw)
    synth_synapse(tmp_path / "c", seed=4, **kw)
    a = _tree(tmp_path / "a")
    # BTCV's file names, and vmbench's output marker (what lets --overwrite replace the folder).
    assert sorted(a) == [".vmbench-output", "img0001.nii.gz", "img0005.nii.gz", "label0001.nii.gz", "label0005.nii.gz"]
    assert a == _tree(tmp_path / "b") and a != _tree(tmp_path / "c")
    img = nib.load(str(tmp_path / "a" / "img0005.nii.gz"))
    lab = nib.load(str(tmp_path / "a" / "label0005.nii.gz"))
    hu, seg = np.asarray(img.dataobj), np.asarray(lab.dataobj)
    assert hu.shape == seg.shape and hu.shape[:2] == (32, 32) and 6 <= hu.shape[2] <= 8
    assert np.allclose(img.affine, lab.affine) and img.header.get_zooms()[2] >= 2.5
    assert hu.min() <= -900 and hu.max() >= 300  # air and bone, Hounsfield-like
    ids = set(np.unique(seg).tolist())
    assert {1, 2, 3, 4, 6, 7, 8, 11} <= ids  # the 8 kept organs
    assert ids & {5, 9, 12}  # at least one id the remap drops
    per_slice = [set(np.unique(seg[:, :, z]).tolist()) for z in range(seg.shape[2])]
    assert any(not {1, 2, 3, 4, 6, 7, 8, 11} <= s for s in per_slice)  # some slices lack organs
    liver, aorta = (seg == 6).sum(), (seg == 8).sum()
    assert liver > 3 * aorta > 0
    assert hu[seg == 8].mean() > hu[seg == 6].mean()  # contrast-enhanced aorta brighter than liver


def test_synthetic_isic_builds_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("VMBENCH_CACHE", str(tmp_path / "cache"))
    ds = build_dataset("synthetic-isic", split="val", img_size=32, n=12)
    assert ds.name == "synthetic-isic" and len(ds) == 2 and ds[0]["image"].shape == (3, 32, 32)
    made = [p for p in (tmp_path / "cache").iterdir()]
    assert len(made) == 1 and made[0].name.startswith("isic-g") and "n12-s0" in made[0].name

    def boom(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr("vmbench.data.generated_isic.synth_isic", boom)
    again = build_dataset("synthetic-isic", split="train", protocol="paper", img_size=32, n=12)
    assert len(again) == round(0.7 * 8) and again.val_is_test
    info, real = vmbench.dataset_info("synthetic-isic"), vmbench.dataset_info("isic2018")
    assert (info.task, info.num_classes, info.in_chans, info.img_size, info.evaluation) == (
        real.task, real.num_classes, real.in_chans, real.img_size, real.evaluation
    )


def test_synthetic_synapse_builds_into_the_cache_once(tmp_path, monkeypatch):
    monkeypatch.setenv("VMBENCH_CACHE", str(tmp_path / "cache"))
    kw = dict(n_cases=6, size=32, slices=(4, 5))
    tr = build_dataset("synthetic-synapse", split="train", img_size=32, **kw)
    assert tr.name == "synthetic-synapse" and tr.cases == ("case0005", "case0006")
    assert tr[0]["mask"].shape == (32, 32)
    val = build_dataset("synthetic-synapse", split="val", **kw)
    assert val.is_volume and val.ids == ["case0007", "case0026", "case0034"]
    assert val.class_names == vmbench.dataset_info("synthetic-synapse").class_names
    (made,) = list((tmp_path / "cache").iterdir())
    assert (made / "raw" / "img0005.nii.gz").is_file() and (made / "Synapse" / "test_vol_h5").is_dir()

    def boom(*a, **k):
        raise AssertionError("regenerated")

    monkeypatch.setattr("vmbench.data.generated_synapse.synth_synapse", boom)
    test = build_dataset("synthetic-synapse", split="test", protocol="paper", **kw)
    assert test.ids == ["case0001"]


def test_generation_failure_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VMBENCH_CACHE", str(tmp_path / "cache"))
    calls = []

    def flaky(rng, size_range):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)

    monkeypatch.setattr("vmbench.data.generated_isic._isic_sample", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        build_dataset("synthetic-isic", n=5)
    assert list((tmp_path / "cache").iterdir()) == []  # neither the folder nor a temp copy
