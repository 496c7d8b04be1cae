"""Raw BTCV NIfTI -> the TransUNet Synapse layout (``vmbench data prepare synapse``).

TransUNet's authors distribute the preprocessed files but not the script (Beckschen/TransUNet@02ef001
``datasets/README.md``: clip HU to [-125, 275], normalise each volume to [0, 1], slice the training
cases, keep the test cases as 3-D h5). ``prepare_synapse`` follows SAMed's re-creation of it
(hitachinsk/SAMed@a00f7f0 ``preprocess/preprocess_data.py``): clip to [-125, 275] and scale with
(HU + 125) / 400, transpose nibabel's (x, y, z) to (z, y, x), remap BTCV's 13 labels to the 8
organs (mapping "A", or "B" for the papers' table order), write each slice of the training cases as
npz and each test case as an h5 volume, and the lists. The output folder is built under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vmbench.data.common import atomic_dir, check_empty_output
from vmbench.io import check_output_apart
from vmbench.errors import DataError, few
from vmbench.data.synapse import (
    CLASS_NAMES_A,
    CLASS_NAMES_B,
    HU_WINDOW,
    META_FILE,
    PAPER_TEST_CASES,
    PAPER_TRAIN_CASES,
    REMAPS,
)

__all__ = ["PrepareReport", "hu_to_unit", "load_nifti", "prepare_synapse", "remap_labels"]


@dataclass
class PrepareReport:
    out_dir: Path
    mapping: str
    train_cases: list[str] = field(default_factory=list)
    test_cases: list[str] = field(default_factory=list)
    train_slices: int = 0
    skipped: list[str] = field(default_factory=list)  # in the raw folder, in neither list
    missing: list[str] = field(default_factory=list)  # listed, absent from the raw folder
    warnings: list[str] = field(default_factory=list)

    @property
    def cases_written(self) -> list[str]:
        return self.train_cases + self.test_cases

    def summary(self) -> str:
        lines = [
            f"wrote {self.out_dir}: {len(self.train_cases)} training case(s) ({self.train_slices} slices), "
            f"{len(self.test_cases)} test volume(s), label mapping {self.mapping}"
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


_RAW_IMG = re.compile(r"^img(\d+)\.nii(\.gz)?$")
_RAW_LAB = re.compile(r"^label(\d+)\.nii(\.gz)?$")


def _scan_raw(raw_dir: Path) -> tuple[dict[str, Path], dict[str, Path], Path, Path]:
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"raw Synapse folder {raw_dir} does not exist")
    candidates = [raw_dir] + [raw_dir / b for b in ("Training", "RawData/Training", "Abdomen/RawData/Training")]
    for b in candidates:
        for img_dir, lab_dir in ((b, b), (b / "img", b / "label")):
            if not img_dir.is_dir():
                continue
            imgs = {f"case{int(m.group(1)):04d}": p for p in img_dir.iterdir() if (m := _RAW_IMG.match(p.name))}
            if imgs:
                labs = {}
                if lab_dir.is_dir():
                    labs = {f"case{int(m.group(1)):04d}": p for p in lab_dir.iterdir() if (m := _RAW_LAB.match(p.name))}
                return imgs, labs, img_dir, lab_dir
    raise DataError(
        f"no raw CT volumes in {raw_dir}: expected img0001.nii.gz + label0001.nii.gz side by side, "
        f"or img/imgXXXX.nii.gz + label/labelXXXX.nii.gz"
    )


def load_nifti(path: Path):
    """(nibabel image, its 3-D array); an (X, Y, Z, 1) volume loses its last axis."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path} is not a 3D volume (shape {data.shape})")
    return img, data


def hu_to_unit(hu: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Clip to ``window`` and scale linearly to [0, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    return ((np.clip(hu.astype(np.float32), lo, hi) - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)


def remap_labels(label: np.ndarray, mapping: str | dict[int, int], where: object = "label") -> np.ndarray:
    """BTCV ids (0..13) -> Synapse ids (0..8), uint8; a DataError for values outside 0..13."""
    remap = REMAPS[mapping] if isinstance(mapping, str) else mapping
    lab = np.asarray(label)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise DataError(f"{where}: label volume has non-integer values")
    lab = lab.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() > 13):
        bad = np.unique(lab[(lab < 0) | (lab > 13)])
        raise DataError(f"{where}: label values {few(bad.tolist())} are outside BTCV's 0..13")
    lut = np.zeros(14, dtype=np.uint8)
    for k, v in remap.items():
        lut[k] = v
    return lut[lab]


def prepare_synapse(
    raw_dir,
    out_dir,
    *,
    train_cases: Sequence[str] = PAPER_TRAIN_CASES,
    test_cases: Sequence[str] = PAPER_TEST_CASES,
    mapping: str = "A",
    hu_window: tuple[float, float] = HU_WINDOW,
    overwrite: bool = False,
    progress=None,
) -> PrepareReport:
    """Raw BTCV NIfTI volumes -> the TransUNet layout in ``out_dir`` (see the module docstring).

    ``mapping`` "A" is SAMed's remap (hitachinsk/SAMed@a00f7f0 preprocess/preprocess_data.py); "B" puts the ids in the papers' table order.
    ``progress``, if given, is called with each case id as it is written.
    """
    import h5py

    if mapping not in REMAPS:
        raise DataError(f"mapping {mapping!r} is not one of {', '.join(REMAPS)}")
    out_dir = Path(out_dir)
    # Before the overwrite rule: a raw folder vmbench generated carries the marker too.
    check_output_apart(out_dir, [raw_dir], "output folder", "raw folder")
    check_empty_output(out_dir, overwrite)
    imgs, labs, img_dir, lab_dir = _scan_raw(Path(raw_dir))
    train_set, test_set = set(train_cases), set(test_cases)
    both = sorted(train_set & test_set)
    if both:
        raise DataError(f"case(s) {few(both)} are in both train_cases and test_cases")
    report = PrepareReport(out_dir=out_dir, mapping=mapping)
    present = set(imgs) | set(labs)
    report.skipped = sorted(c for c in present if c not in train_set and c not in test_set)
    if report.skipped:
        report.warnings.append(f"skipped {len(report.skipped)} case(s) in neither list: {few(report.skipped)}")
    report.missing = sorted(c for c in train_set | test_set if c not in present)
    if report.missing:
        report.warnings.append(f"{len(report.missing)} listed case(s) are not in {img_dir}: {few(report.missing)}")
    wanted = sorted(c for c in present if c in train_set or c in test_set)
    no_label = [c for c in wanted if c not in labs]
    if no_label:
        raise DataError(f"image(s) without a label in {lab_dir}: {few(imgs[c].name for c in no_label)}")
    no_image = [c for c in wanted if c not in imgs]
    if no_image:
        raise DataError(f"label(s) without an image in {img_dir}: {few(labs[c].name for c in no_image)}")
    if not wanted:
        raise DataError(f"none of the listed cases is in {img_dir}")

    train_lines: list[str] = []
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "train_npz").mkdir()
        (tmp / "test_vol_h5").mkdir()
        for case in wanted:
            ipath, lpath = imgs[case], labs[case]
            img, hu = load_nifti(ipath)
            lab, label = load_nifti(lpath)
            if hu.shape != label.shape:
                raise DataError(f"{ipath.name} has shape {hu.shape} but {lpath.name} has shape {label.shape} ({case})")
            if not np.allclose(img.affine, lab.affine, atol=1e-3):
                raise DataError(f"{ipath.name} and {lpath.name} have different affines ({case})")
            zooms = img.header.get_zooms()[:3]
            spacing = np.asarray([zooms[2], zooms[1], zooms[0]], dtype=np.float64)
            vol = hu_to_unit(hu, hu_window).transpose(2, 1, 0)
            seg = remap_labels(label, mapping, lpath).transpose(2, 1, 0)
            vol, seg = np.ascontiguousarray(vol), np.ascontiguousarray(seg)
            if case in train_set:
                for z in range(vol.shape[0]):
                    sid = f"{case}_slice{z:03d}"
                    np.savez(tmp / "train_npz" / f"{sid}.npz", image=vol[z], label=seg[z], spacing=spacing)
                    train_lines.append(sid)
                report.train_cases.append(case)
                report.train_slices += vol.shape[0]
            else:
                # Built in memory, written by Python: HDF5's own writer on a full disk prints tracebacks
                # from its destructors, where Python's write is one OSError naming the file.
                buffer = io.BytesIO()
                with h5py.File(buffer, "w") as f:
                    f.create_dataset("image", data=vol, track_times=False)
                    f.create_dataset("label", data=seg, track_times=False)
                    f.attrs["spacing"] = spacing
                (tmp / "test_vol_h5" / f"{case}.npy.h5").write_bytes(buffer.getvalue())
                report.test_cases.append(case)
            if progress is not None:
                progress(case)
        lists = tmp / "lists" / "lists_Synapse"
        lists.mkdir(parents=True)
        (lists / "train.txt").write_text("".join(f"{s}\n" for s in train_lines))
        (lists / "test_vol.txt").write_text("".join(f"{c}\n" for c in report.test_cases))
        meta = {
            "mapping": mapping,
            "remap": {str(k): v for k, v in REMAPS[mapping].items()},
            "class_names": list(CLASS_NAMES_A if mapping == "A" else CLASS_NAMES_B),
            "hu_window": list(hu_window),
            "train_cases": report.train_cases,
            "test_cases": report.test_cases,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return report
