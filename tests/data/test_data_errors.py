"""Bad input: one clear DataError naming the file, folder or field; nothing written half."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from vmbench.data import DataError, build_dataset, prepare_synapse, synth_isic, synth_synapse
from vmbench.data.isic_files import CHALLENGE_FOLDERS, load_isic_mask
from vmbench.registry import UnknownNameError
from vmbench.errors import ConfigError

IMG18, GT18 = CHALLENGE_FOLDERS[2018]["train"]


@pytest.fixture(scope="module")
def isic_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isic") / "data"
    synth_isic(root, n=6, seed=0, size_range=(40, 50))
    return root


@pytest.fixture
def isic(isic_src, tmp_path) -> Path:
    root = tmp_path / "isic"
    shutil.copytree(isic_src, root)
    return root


def test_isic2018_on_a_2017_folder_is_an_error_not_2017_data(tmp_path):
    synth_isic(tmp_path / "isic", n=6, seed=0, size_range=(40, 50), year=2017)
    with pytest.raises(DataError, match=r"holds the ISIC2017 challenge folders, not ISIC2018's \(ISIC2018_Task1-2_Tr"):
        build_dataset("isic2018", root=tmp_path / "isic", split="train")
    assert len(build_dataset("isic2017", root=tmp_path / "isic", split="train")) > 0


@pytest.fixture(scope="module")
def synapse_src(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("syn")
    synth_synapse(base / "raw", n_cases=5, seed=0, size=24, slices=(3, 4))
    prepare_synapse(base / "raw", base / "Synapse")
    return base / "raw", base / "Synapse"


def _train_files(root: Path) -> tuple[list[Path], list[Path]]:
    return sorted((root / IMG18).glob("ISIC_*.jpg")), sorted((root / GT18).glob("*_segmentation.png"))


# ---------------------------------------------------------------------------------------------
# names, splits, protocols


def test_unknown_dataset_name_lists_close_matches():
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'isic2019'.*did you mean"):
        build_dataset("isic2019")


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(split="training"), r"split 'training' is not one of train, val, test"),
        (dict(protocol="leaky"), r"protocol 'leaky' is not one of holdout, paper"),
        (dict(img_size="big"), r"img_size 'big'"),
    ],
)
def test_bad_split_protocol_size(isic, kw, match):
    with pytest.raises(DataError, match=match):
        build_dataset("isic2018", isic, **kw)


def test_bad_normalize_is_named(isic):
    # A value outside the known modes is the configuration's fault, named before any file is read.
    with pytest.raises(ConfigError, match="normalize.*'z-score'"):
        build_dataset("isic2018", isic, normalize="z-score")


# ---------------------------------------------------------------------------------------------
# ISIC folders and pairing


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"ISIC data folder {tmp_path / 'nope'} does not exist")):
        build_dataset("isic2018", tmp_path / "nope")


def test_unrecognised_root_lists_the_expected_layouts(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match=r"is not an ISIC data folder.*ISIC2018_Task1-2_Training_Input.*train/images"):
        build_dataset("isic2018", tmp_path)


def test_missing_ground_truth_folder(isic):
    shutil.rmtree(isic / GT18)
    with pytest.raises(DataError, match=re.escape(f"missing folder {isic / GT18}")):
        build_dataset("isic2018", isic)


def test_empty_image_folder(isic):
    for p in (isic / IMG18).iterdir():
        p.unlink()
    with pytest.raises(DataError, match=re.escape(f"no images found in {isic / IMG18}")):
        build_dataset("isic2018", isic)


def test_image_without_mask_lists_ids(isic):
    images, masks = _train_files(isic)
    masks[0].unlink()
    masks[1].unlink()
    with pytest.raises(DataError, match=rf"2 image\(s\) in .* have no mask in .*: {images[0].stem}, {images[1].stem}"):
        build_dataset("isic2018", isic)


def test_mask_without_image_lists_ids(isic):
    images, _ = _train_files(isic)
    images[0].unlink()
    with pytest.raises(DataError, match=rf"1 mask\(s\) in .* have no image in .*: {images[0].stem}"):
        build_dataset("isic2018", isic)


def test_prepared_layout_missing_masks_folder(tmp_path):
    synth_isic(tmp_path / "p", n=4, seed=0, layout="prepared", size_range=(30, 40))
    shutil.rmtree(tmp_path / "p" / "val" / "masks")
    with pytest.raises(DataError, match=re.escape(f"missing folder {tmp_path / 'p' / 'val' / 'masks'}")):
        build_dataset("isic2018", tmp_path / "p", "test")


def test_corrupt_and_truncated_images_named_at_load(isic):
    images, _ = _train_files(isic)
    data = images[1].read_bytes()
    images[1].write_bytes(data[: len(data) // 3])  # truncated JPEG
    images[0].write_bytes(b"not a jpeg at all")
    ds = build_dataset("isic2018", isic, "train", check_sizes=False, img_size=32)
    by_id = {i: k for k, i in enumerate(ds.ids)}
    with pytest.raises(DataError, match=re.escape(f"cannot read image {images[0]}")):
        ds[by_id[images[0].stem]]
    with pytest.raises(DataError, match=re.escape(f"cannot read image {images[1]}")):
        ds[by_id[images[1].stem]]
    with pytest.raises(DataError, match=re.escape(f"cannot read {images[0]}")):  # header check
        build_dataset("isic2018", isic, "train")


def test_mask_size_mismatch_named_at_construction_and_load(isic):
    images, masks = _train_files(isic)
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(masks[2])
    with pytest.raises(DataError, match=re.escape(f"mask {masks[2]} is 9x7 but its image {images[2]} is")):
        build_dataset("isic2018", isic)
    ds = build_dataset("isic2018", isic, check_sizes=False)
    with pytest.raises(DataError, match=re.escape(f"mask {masks[2]} is 9x7")):
        ds[ds.ids.index(images[2].stem)]


def test_mask_values(tmp_path):
    grad = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))
    Image.fromarray(grad).save(tmp_path / "grad.png")
    with pytest.raises(DataError, match=re.escape(f"mask {tmp_path / 'grad.png'} is not binary")):
        load_isic_mask(tmp_path / "grad.png")
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 5:15] = 255
    m[5, 5:15] = 128  # anti-aliased edge: 2.5 % of the pixels
    m[14, 5:15] = 100
    Image.fromarray(m).save(tmp_path / "aa.png")
    out = load_isic_mask(tmp_path / "aa.png")
    assert out[5, 6] == 1 and out[14, 6] == 0 and out[10, 10] == 1 and set(np.unique(out)) == {0, 1}
    Image.fromarray((m > 127).astype(np.uint8)).save(tmp_path / "01.png")
    assert set(np.unique(load_isic_mask(tmp_path / "01.png"))) == {0, 1}
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=re.escape(f"cannot read mask {tmp_path / 'bad.png'}")):
        load_isic_mask(tmp_path / "bad.png")


# ---------------------------------------------------------------------------------------------
# Synapse, TransUNet layout


@pytest.fixture
def synapse(synapse_src, tmp_path) -> Path:
    root = tmp_path / "Synapse"
    shutil.copytree(synapse_src[1], root)
    return root


def test_synapse_missing_folder(synapse):
    shutil.rmtree(synapse / "train_npz")
    with pytest.raises(DataError, match=re.escape(f"missing folder {synapse / 'train_npz'}")):
        build_dataset("synapse", synapse, "train")
    with pytest.raises(DataError, match=re.escape(f"Synapse data folder {synapse / 'x'} does not exist")):
        build_dataset("synapse", synapse / "x", "test")


def test_synapse_listed_slice_missing(synapse):
    (synapse / "train_npz" / "case0005_slice001.npz").unlink()
    with pytest.raises(DataError, match=r"1 slice\(s\) listed in .*train.txt are missing .*case0005_slice001"):
        build_dataset("synapse", synapse, "train")


def test_synapse_label_out_of_range_named_at_load(synapse):
    path = synapse / "train_npz" / "case0005_slice000.npz"
    with np.load(path) as d:
        image, label = d["image"], d["label"].astype(np.float32)
    label[0, 0] = 11
    np.savez(path, image=image, label=label)
    ds = build_dataset("synapse", synapse, "train", img_size=24)
    with pytest.raises(DataError, match=re.escape(f"label in {path} has values 11 outside 0..8")):
        ds[ds.ids.index("case0005_slice000")]
    label[0, 0] = 0.5
    np.savez(path, image=image, label=label)
    with pytest.raises(DataError, match=re.escape(f"label in {path} has non-integer values")):
        ds[ds.ids.index("case0005_slice000")]


def test_synapse_npz_missing_key_and_h5_corrupt(synapse):
    path = synapse / "train_npz" / "case0005_slice000.npz"
    np.savez(path, image=np.zeros((24, 24), np.float32))
    ds = build_dataset("synapse", synapse, "train", img_size=24)
    with pytest.raises(DataError, match=re.escape(f"{path} has no 'label' array")):
        ds[ds.ids.index("case0005_slice000")]
    h5 = synapse / "test_vol_h5" / "case0001.npy.h5"
    h5.write_bytes(b"garbage")
    with pytest.raises(DataError, match=re.escape(f"cannot read {h5}")):
        build_dataset("synapse", synapse, "test")[0]
    with h5py.File(h5, "w") as f:
        f["image"] = np.zeros((2, 3, 3), np.float32)
        f["label"] = np.full((2, 3, 3), 9, np.float32)
    with pytest.raises(DataError, match=re.escape(f"label in {h5} has values 9 outside 0..8")):
        build_dataset("synapse", synapse, "test")[0]


def test_synapse_holdout_val_volume_with_a_gap(synapse):
    (synapse / "train_npz" / "case0007_slice001.npz").unlink()
    shutil.rmtree(synapse / "lists")
    with pytest.raises(DataError, match=r"case0007: its training slices are not contiguous \(missing slice 1\)"):
        build_dataset("synapse", synapse, "val")


# ---------------------------------------------------------------------------------------------
# Synapse, raw NIfTI


@pytest.fixture
def raw(synapse_src, tmp_path) -> Path:
    root = tmp_path / "raw"
    shutil.copytree(synapse_src[0], root)
    return root


def _resave(path: Path, data=None, affine=None):
    img = nib.load(str(path))
    arr = np.asarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(arr, img.affine if affine is None else affine), str(path))


def test_nifti_shape_mismatch(raw, tmp_path):
    lab = raw / "label0005.nii.gz"
    _resave(lab, np.zeros((24, 24, 2), np.uint8))
    msg = r"img0005.nii.gz has shape \(24, 24, \d\) but label0005.nii.gz has shape \(24, 24, 2\)"
    with pytest.raises(DataError, match=msg):
        prepare_synapse(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))  # nothing half written


def test_nifti_affine_mismatch(raw, tmp_path):
    lab = raw / "label0026.nii.gz"
    _resave(lab, affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(DataError, match="img0026.nii.gz and label0026.nii.gz have different affines"):
        prepare_synapse(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nifti_unreadable_and_bad_labels(raw, tmp_path):
    (raw / "img0001.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match=re.escape(f"cannot read {raw / 'img0001.nii.gz'}")):
        prepare_synapse(raw, tmp_path / "out")
    shutil.copy(raw / "img0005.nii.gz", raw / "img0001.nii.gz")
    shutil.copy(raw / "label0005.nii.gz", raw / "label0001.nii.gz")
    lab = raw / "label0007.nii.gz"
    arr = np.asarray(nib.load(str(lab)).dataobj).copy()
    arr[0, 0, 0] = 14
    _resave(lab, arr)
    with pytest.raises(DataError, match=re.escape(f"{lab}: label values 14 are outside BTCV's 0..13")):
        prepare_synapse(raw, tmp_path / "out")


def test_nifti_image_without_label_and_missing_raw(raw, tmp_path):
    (raw / "label0034.nii.gz").unlink()
    with pytest.raises(DataError, match=r"image\(s\) without a label in .*: img0034.nii.gz"):
        prepare_synapse(raw, tmp_path / "out")
    (raw / "img0034.nii.gz").unlink()
    (raw / "img0005.nii.gz").unlink()
    with pytest.raises(DataError, match=r"label\(s\) without an image in .*: label0005.nii.gz"):
        prepare_synapse(raw, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=re.escape(f"no raw CT volumes in {tmp_path / 'empty'}")):
        prepare_synapse(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(DataError, match=re.escape(f"raw Synapse folder {tmp_path / 'nope'} does not exist")):
        prepare_synapse(tmp_path / "nope", tmp_path / "o")


def test_prepare_refuses_existing_output(raw, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match=re.escape(f"output folder {tmp_path / 'out'} already exists")):
        prepare_synapse(raw, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").is_file()
    # --overwrite never deletes a folder vmbench did not write: the user's file survives.
    with pytest.raises(DataError, match="was not written by vmbench"):
        prepare_synapse(raw, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"
    # A folder vmbench wrote is replaced.
    first = prepare_synapse(raw, tmp_path / "made")
    (tmp_path / "made" / "stale.txt").write_text("from before")
    report = prepare_synapse(raw, tmp_path / "made", overwrite=True)
    assert not (tmp_path / "made" / "stale.txt").exists() and report.train_slices == first.train_slices > 0
    with pytest.raises(DataError, match="mapping 'C'"):
        prepare_synapse(raw, tmp_path / "out2", mapping="C")
