"""Synapse: raw NIfTI -> TransUNet layout, loaders under both protocols, augmentation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

import vmbench
from vmbench.data import DataError, build_dataset, prepare_synapse, synth_synapse
from vmbench.data.synapse import (
    CLASS_NAMES_A,
    CLASS_NAMES_B,
    HOLDOUT_VAL_CASES,
    PAPER_TEST_CASES,
    PAPER_TRAIN_CASES,
)
from vmbench.data.transforms import SynapseTransform

N_CASES = 7  # case0005, case0001, the 3 holdout val cases, case0006, case0002
SMALL = (32, 32)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("raw") / "raw"
    synth_synapse(d, n_cases=N_CASES, seed=0, size=40, slices=(5, 8))
    return d


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("prep") / "Synapse"
    return out, prepare_synapse(raw, out)


def _save_nifti(path: Path, data: np.ndarray, affine=None) -> None:
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine), str(path))


def test_prepare_writes_transunet_layout(raw, prepared):
    out, report = prepared
    assert report.train_cases == ["case0005", "case0006", *sorted(HOLDOUT_VAL_CASES)]
    assert report.test_cases == ["case0001", "case0002"]
    assert report.skipped == [] and len(report.missing) == 30 - N_CASES and report.warnings
    train_list = (out / "lists" / "lists_Synapse" / "train.txt").read_text().split()
    assert len(train_list) == report.train_slices
    assert sorted(train_list) == sorted(p.stem for p in (out / "train_npz").glob("*.npz"))
    assert (out / "lists" / "lists_Synapse" / "test_vol.txt").read_text().split() == ["case0001", "case0002"]
    assert sorted(p.name for p in (out / "test_vol_h5").iterdir()) == ["case0001.npy.h5", "case0002.npy.h5"]
    meta = json.loads((out / "vmbench_prepare.json").read_text())
    assert meta["mapping"] == "A" and tuple(meta["class_names"]) == CLASS_NAMES_A
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_prepare_hu_window_remap_and_transpose_on_a_hand_made_volume(tmp_path):
    raw = tmp_path / "raw"
    (raw / "img").mkdir(parents=True)
    (raw / "label").mkdir()
    rng = np.random.default_rng(0)
    hu = {c: rng.integers(-1000, 1500, size=(5, 4, 3)).astype(np.int16) for c in (5, 1)}  # (x, y, z)
    lab = {c: rng.integers(0, 14, size=(5, 4, 3)).astype(np.uint8) for c in (5, 1)}
    hu[5][0, 0, 0], hu[5][1, 0, 0], hu[5][2, 0, 0] = -125, 275, 75
    for c in (5, 1):
        _save_nifti(raw / "img" / f"img{c:04d}.nii.gz", hu[c])
        _save_nifti(raw / "label" / f"label{c:04d}.nii.gz", lab[c])
    _save_nifti(raw / "img" / "img0099.nii.gz", hu[5])  # in neither list
    _save_nifti(raw / "label" / "label0099.nii.gz", lab[5])
    out = tmp_path / "out"
    report = prepare_synapse(raw, out)
    assert report.skipped == ["case0099"] and any("case0099" in w for w in report.warnings)
    assert report.train_cases == ["case0005"] and report.test_cases == ["case0001"] and report.train_slices == 3

    # independent expectation: numpy clip/scale, dict remap, (x, y, z) -> (z, y, x)
    table = {1: 1, 2: 2, 3: 3, 4: 4, 5: 0, 6: 5, 7: 6, 8: 7, 9: 0, 10: 0, 11: 8, 12: 0, 13: 0, 0: 0}

    def expect(c):
        img = np.minimum(np.maximum(hu[c].astype(np.float64), -125.0), 275.0)
        img = (img + 125.0) / 400.0
        remapped = np.vectorize(table.get)(lab[c])
        return np.transpose(img, (2, 1, 0)), np.transpose(remapped, (2, 1, 0))

    img5, lab5 = expect(5)
    for z in range(3):
        with np.load(out / "train_npz" / f"case0005_slice{z:03d}.npz") as d:
            assert d["image"].shape == (4, 5) and d["image"].dtype == np.float32
            np.testing.assert_allclose(d["image"], img5[z], atol=1e-6)
            np.testing.assert_array_equal(d["label"], lab5[z])
            np.testing.assert_allclose(d["spacing"], [2.5, 0.8, 0.8])
    with np.load(out / "train_npz" / "case0005_slice000.npz") as d:
        assert d["image"][0, 0] == 0.0 and d["image"][0, 1] == 1.0 and d["image"][0, 2] == 0.5
    img1, lab1 = expect(1)
    with h5py.File(out / "test_vol_h5" / "case0001.npy.h5", "r") as f:
        np.testing.assert_allclose(f["image"][:], img1, atol=1e-6)
        np.testing.assert_array_equal(f["label"][:], lab1)
    # mapping B puts ids in the papers' table order (1 aorta ... 8 stomach)
    report_b = prepare_synapse(raw, tmp_path / "out_b", mapping="B")
    assert report_b.mapping == "B"
    with np.load(tmp_path / "out_b" / "train_npz" / "case0005_slice000.npz") as d:
        b = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
        np.testing.assert_array_equal(d["label"], np.vectorize(lambda v: b.get(v, 0))(lab[5].transpose(2, 1, 0)[0]))
    vol = build_dataset("synapse", tmp_path / "out_b", "test")
    assert vol.class_names == CLASS_NAMES_B
    assert build_dataset("synapse", out, "test").class_names == CLASS_NAMES_A


def test_prepare_accepts_subfolder_layout_and_gz_or_plain(tmp_path):
    synth_synapse(tmp_path / "raw", n_cases=2, seed=1, size=24, slices=(3, 4), subfolders=True)
    assert (tmp_path / "raw" / "img" / "img0005.nii.gz").is_file()
    report = prepare_synapse(tmp_path / "raw", tmp_path / "out")
    assert report.cases_written == ["case0005", "case0001"]


def test_loader_splits_under_both_protocols(prepared):
    root, report = prepared
    h = {s: build_dataset("synapse", root, s, "holdout", img_size=SMALL) for s in ("train", "val", "test")}
    assert h["train"].cases == ("case0005", "case0006")
    assert h["val"].ids == list(HOLDOUT_VAL_CASES) and h["val"].is_volume and h["test"].is_volume
    assert h["test"].ids == ["case0001", "case0002"]
    assert not h["train"].is_volume and not set(h["train"].cases) & set(h["val"].ids)
    assert not set(h["val"].ids) & set(h["test"].ids)
    p_train = build_dataset("synapse", root, "train", "paper", img_size=SMALL)
    p_test = build_dataset("synapse", root, "test", "paper")
    assert p_train.cases == tuple(report.train_cases) and len(p_train) == report.train_slices
    assert p_test.ids == h["test"].ids
    with pytest.raises(DataError, match="paper protocol has no Synapse validation set"):
        build_dataset("synapse", root, "val", "paper")
    for ds in (*h.values(), p_train, p_test):
        assert (ds.name, ds.protocol, ds.val_is_test) == ("synapse", ds.protocol, False)
    assert set(HOLDOUT_VAL_CASES) <= set(PAPER_TRAIN_CASES) and len(PAPER_TEST_CASES) == 12


def test_items_contract(raw, prepared):
    root, _ = prepared
    ds = build_dataset("synapse", root, "train", img_size=SMALL)
    item = ds[3]
    assert set(item) == {"image", "mask", "id"} and item["id"] == ds.ids[3]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, *SMALL)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == SMALL
    assert 0 <= int(item["mask"].min()) and int(item["mask"].max()) <= 8
    assert build_dataset("synapse", root, "train")[0]["image"].shape == (1, 224, 224)  # default size
    for split in ("val", "test"):
        vds = build_dataset("synapse", root, split)
        v = vds[0]
        assert set(v) == {"id", "image", "label", "spacing"}
        assert v["image"].dtype == np.float32 and v["label"].dtype == np.int64 and v["image"].ndim == 3
        assert v["image"].shape == v["label"].shape and v["image"].shape[1:] == (40, 40)
        assert 0.0 <= v["image"].min() and v["image"].max() <= 1.0
        assert len(v["spacing"]) == 3 and all(isinstance(s, float) for s in v["spacing"])
        # whole volume at original resolution, compared with the raw NIfTI
        num = v["id"].removeprefix("case")
        hu = np.asarray(nib.load(str(raw / f"img{num}.nii.gz")).dataobj).astype(np.float64)
        expect = ((np.clip(hu, -125, 275) + 125) / 400).transpose(2, 1, 0)
        np.testing.assert_allclose(v["image"], expect, atol=1e-6)
    info = vmbench.dataset_info("synapse")
    assert (info.task, info.num_classes, info.in_chans, info.img_size, info.evaluation) == (
        "multiclass", 9, 1, (224, 224), "volume"
    )
    assert info.class_names[1] == "aorta" and "assume" in info.description


def test_lists_folder_variants(prepared, tmp_path):
    root, _ = prepared
    flat = tmp_path / "flat"
    shutil.copytree(root, flat)
    shutil.move(flat / "lists" / "lists_Synapse" / "train.txt", flat / "lists" / "train.txt")
    shutil.move(flat / "lists" / "lists_Synapse" / "test_vol.txt", flat / "lists" / "test_vol.txt")
    (flat / "lists" / "lists_Synapse").rmdir()
    a = build_dataset("synapse", root, "train", "paper", img_size=SMALL)
    assert build_dataset("synapse", flat, "train", "paper", img_size=SMALL).ids == a.ids
    shutil.rmtree(flat / "lists")  # no lists: the folders are scanned
    assert build_dataset("synapse", flat, "train", "paper", img_size=SMALL).ids == a.ids
    assert build_dataset("synapse", flat, "test").ids == ["case0001", "case0002"]


# ---------------------------------------------------------------------------------------------
# Augmentation (TransUNet RandomGenerator)


def test_augmentation_keeps_labels_integer_and_aligned():
    rng = np.random.default_rng(0)
    label = np.zeros((36, 36), np.int64)
    label[5:20, 8:14] = 3
    label[22:30, 4:30] = 7
    label[10:12, 25:33] = 1
    image = label / 8.0 + 0.0  # label derivable from the image
    same = SynapseTransform((36, 36), augment=True)
    zoom = SynapseTransform((24, 24), augment=True)
    outcomes = set()
    for s in range(40):
        x, y = same(image, label, np.random.default_rng(s))
        assert x.dtype == np.float32 and x.shape == (1, 36, 36) and y.dtype == np.int64
        assert np.array_equal(np.round(x[0] * 8).astype(np.int64), y)  # rot90/flip/order-0 rotation
        assert set(np.unique(y)) <= {0, 1, 3, 7}
        outcomes.add(y.tobytes())
        x2, y2 = zoom(image, label, np.random.default_rng(s))
        assert x2.shape == (1, 24, 24) and y2.shape == (24, 24) and set(np.unique(y2)) <= {0, 1, 3, 7}
    assert len(outcomes) > 8
    x0, y0 = SynapseTransform((36, 36), augment=False)(image, label, rng)
    assert np.array_equal(y0, label) and np.allclose(x0[0], image)


def test_augmentation_reproducible(prepared):
    root, _ = prepared
    a = build_dataset("synapse", root, "train", img_size=SMALL, seed=7)
    b = build_dataset("synapse", root, "train", img_size=SMALL, seed=7)
    idx = range(min(6, len(a)))
    first = [a[i] for i in idx]
    assert all(torch.equal(b[i]["image"], first[i]["image"]) for i in idx)
    assert all(torch.equal(b[i]["mask"], first[i]["mask"]) for i in idx)
    b.set_epoch(1)
    assert any(not torch.equal(b[i]["image"], first[i]["image"]) for i in idx)
