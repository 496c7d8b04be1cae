"""Synapse multi-organ CT (BTCV abdomen, 8 organs + background, 1 channel, 224x224, 3D evaluation).

Layout (TransUNet's preprocessed files, or what ``prepare_synapse`` writes)
    ``train_npz/caseXXXX_sliceYYY.npz``      keys ``image`` (H, W) in [0, 1], ``label`` (H, W)
    ``test_vol_h5/caseXXXX.npy.h5``          datasets ``image``, ``label`` (D, H, W)
    ``lists/lists_Synapse/{train.txt,test_vol.txt}`` (``lists/`` directly is accepted too; without
    lists the folders are scanned).

Splits
    ``paper``    train = every slice in ``train.txt`` (the official 18 cases); test = the 12 volumes
                 of ``test_vol.txt``; there is no validation split (``split="val"`` is an error; VM-UNet
                 selects on the training loss).
    ``holdout``  val = the 3 training cases ``HOLDOUT_VAL_CASES`` (case0007, case0026, case0034:
                 every sixth of the 18 sorted training cases, starting with the third), rebuilt as
                 volumes from their slices; train = the slices of the other 15; test = the 12.
    ``cv``       ``folds`` nnU-Net-style folds over the training cases (``vmbench.data.splits``),
                 volumes kept whole: val = fold ``fold``'s cases as volumes, train = the slices of
                 the others; test = the 12. ``dataset.cv_splits`` lists every fold.

Items
    train (2D): ``{"image": float32 tensor (1, H, W), "mask": int64 tensor (H, W), "id":
    "case0005_slice042"}`` at ``img_size`` (TransUNet's RandomGenerator when augmenting; see
    ``vmbench.data.transforms``). The model repeats the channel to 3 itself.
    val (holdout) and test: whole volumes ``{"id": "case0001", "image": float32 ndarray (D, H, W),
    "label": int64 ndarray (D, H, W), "spacing": (z, y, x) or None}`` at original resolution, with
    ``is_volume = True``; the engine does slice-wise inference.

Labels must be integers in 0..8 (checked per item, naming the file).

Organ ids
    The official files (Beckschen/TransUNet@02ef001) never state which id is which organ. The registered class names
    follow the assumed mapping (B): 1 aorta, 2 gallbladder, 3 left kidney, 4 right kidney, 5 liver,
    6 pancreas, 7 spleen, 8 stomach. ``prepare_synapse`` remaps BTCV's 13 ids with SAMed's table
    (mapping "A", hitachinsk/SAMed@a00f7f0 preprocess/preprocess_data.py: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 liver,
    6 stomach, 7 aorta, 8 pancreas) unless told ``mapping="B"``; it records the mapping in
    ``vmbench_prepare.json`` and datasets read from such a folder expose the matching
    ``class_names``.

``vmbench.data.synapse_prepare.prepare_synapse`` writes this layout from raw BTCV NIfTI volumes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vmbench.data.common import check_split_protocol
from vmbench.data.splits import check_fold, kfold_splits
from vmbench.protocols import CV, HOLDOUT, PAPER
from vmbench.errors import DataError, few
from vmbench.data.transforms import SynapseTransform, item_rng
from vmbench.registry import register_dataset

__all__ = [
    "BTCV_NAMES",
    "CLASS_NAMES_A",
    "CLASS_NAMES_B",
    "HOLDOUT_VAL_CASES",
    "PAPER_TEST_CASES",
    "PAPER_TRAIN_CASES",
    "REMAP_A",
    "REMAP_B",
    "SynapseSliceDataset",
    "SynapseVolumeDataset",
    "build_synapse",
    "find_synapse_lists",
]

PAPER_TRAIN_CASES = tuple(
    f"case{n:04d}" for n in (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
)
PAPER_TEST_CASES = tuple(f"case{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38))
HOLDOUT_VAL_CASES = ("case0007", "case0026", "case0034")
NUM_CLASSES = 9

BTCV_NAMES = {
    1: "spleen",
    2: "kidney_r",
    3: "kidney_l",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior_vena_cava",
    10: "portal_splenic_vein",
    11: "pancreas",
    12: "adrenal_right",
    13: "adrenal_left",
}
# BTCV id -> Synapse id; ids not listed become 0.
REMAP_A = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}  # SAMed preprocess_data.py
REMAP_B = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}  # table order
REMAPS = {"A": REMAP_A, "B": REMAP_B}


def _names(remap: dict[int, int]) -> tuple[str, ...]:
    inv = {v: BTCV_NAMES[k] for k, v in remap.items()}
    return ("background",) + tuple(inv[i] for i in range(1, NUM_CLASSES))


CLASS_NAMES_A = _names(REMAP_A)
CLASS_NAMES_B = _names(REMAP_B)
HU_WINDOW = (-125.0, 275.0)
META_FILE = "vmbench_prepare.json"

_SLICE = re.compile(r"^(case\d+)_slice(\d+)$")


# ----------------------------------------------------------------------------------------------
# Reading the TransUNet layout


def find_synapse_lists(root: Path) -> Path | None:
    for cand in ("lists/lists_Synapse", "lists/list_Synapse", "lists"):
        d = Path(root) / cand
        if (d / "train.txt").is_file() or (d / "test_vol.txt").is_file():
            return d
    return None


def _read_list(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            names.append(line.removesuffix(".npz").removesuffix(".npy.h5"))
    return names


def _listed_names(root: Path, folder: Path, list_file: str, suffix: str, item: str, items: str) -> tuple[list[str], Path]:
    """Names from ``lists/<list_file>`` (each must exist in ``folder`` with ``suffix``), else every
    ``*<suffix>`` file in ``folder``; with the place they came from."""
    lists = find_synapse_lists(root)
    if lists is not None and (lists / list_file).is_file():
        source = lists / list_file
        names = _read_list(source)
        missing = [n for n in names if not (folder / f"{n}{suffix}").is_file()]
        if missing:
            raise DataError(f"{len(missing)} {item}(s) listed in {source} are missing from {folder}: {few(missing)}")
    else:
        source = folder
        names = sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))
    if not names:
        raise DataError(f"no {items} in {source}")
    return names, source


def _train_slices(root: Path) -> dict[str, list[tuple[int, Path]]]:
    """case id -> [(slice index, npz path)] sorted by index, from train.txt or a folder scan."""
    folder = root / "train_npz"
    if not folder.is_dir():
        raise DataError(f"missing folder {folder} (Synapse training slices, TransUNet layout)")
    names, source = _listed_names(root, folder, "train.txt", ".npz", "slice", "training slices")
    cases: dict[str, list[tuple[int, Path]]] = {}
    for n in names:
        m = _SLICE.match(n)
        if not m:
            raise DataError(f"slice name {n!r} in {source} is not caseXXXX_sliceYYY")
        cases.setdefault(m.group(1), []).append((int(m.group(2)), folder / f"{n}.npz"))
    for v in cases.values():
        v.sort()
    return cases


def _test_volumes(root: Path) -> dict[str, Path]:
    folder = root / "test_vol_h5"
    if not folder.is_dir():
        raise DataError(f"missing folder {folder} (Synapse test volumes, TransUNet layout)")
    names, _ = _listed_names(root, folder, "test_vol.txt", ".npy.h5", "volume", "test volumes")
    return {n: folder / f"{n}.npy.h5" for n in names}


def check_label(label: np.ndarray, where: object, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """int64 copy of ``label``; a DataError naming ``where`` if it is not integers in range."""
    lab = np.asarray(label)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise DataError(f"label in {where} has non-integer values")
    if lab.dtype.kind not in "fiub":
        raise DataError(f"label in {where} has dtype {lab.dtype}, expected integers")
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        bad = np.unique(lab[(lab < 0) | (lab >= num_classes)]).astype(np.int64)
        raise DataError(f"label in {where} has values {few(bad.tolist())} outside 0..{num_classes - 1}")
    return lab.astype(np.int64)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    try:
        with np.load(path) as data:
            keys = set(data.files)
            for k in ("image", "label"):
                if k not in keys:
                    raise DataError(f"{path} has no {k!r} array (keys: {', '.join(sorted(keys)) or 'none'})")
            image, label = data["image"], data["label"]
            spacing = data["spacing"] if "spacing" in keys else None
    except DataError:
        raise
    except Exception as err:  # zipfile / pickle / OS errors
        raise DataError(f"cannot read {path}: {err}") from None
    if image.ndim != 2 or image.shape != label.shape:
        raise DataError(f"{path}: image {image.shape} and label {label.shape} must be equal 2D shapes")
    return image, label, spacing


def _load_h5(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float] | None]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for k in ("image", "label"):
                if k not in f:
                    raise DataError(f"{path} has no {k!r} dataset (keys: {', '.join(sorted(f.keys())) or 'none'})")
            image, label = f["image"][:], f["label"][:]
            spacing = f.attrs.get("spacing")
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if image.ndim != 3 or image.shape != label.shape:
        raise DataError(f"{path}: image {image.shape} and label {label.shape} must be equal 3D shapes")
    return image, label, (tuple(float(s) for s in spacing) if spacing is not None else None)


class SynapseSliceDataset(Dataset):
    """2D training slices ``{"image": (1, H, W) float32, "mask": (H, W) int64, "id"}``."""

    is_volume = False
    val_is_test = False
    cv_splits: list[dict[str, list[str]]] | None = None  # protocol cv only

    def __init__(
        self,
        slices: Sequence[tuple[str, Path]],
        *,
        name: str,
        split: str,
        protocol: str,
        img_size: Sequence[int],
        augment: bool,
        seed: int = 0,
        class_names: Sequence[str] = CLASS_NAMES_B,
        cases: Sequence[str] = (),
    ):
        self.slices = list(slices)
        self.name, self.split, self.protocol = name, split, protocol
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.class_names = tuple(class_names)
        self.cases = tuple(cases)
        self.transform = SynapseTransform(self.img_size, augment=self.augment)

    @property
    def ids(self) -> list[str]:
        return [s for s, _ in self.slices]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> dict:
        sid, path = self.slices[index]
        image, label, _ = _load_npz(path)
        label = check_label(label, path)
        x, y = self.transform(image, label, item_rng(self.seed, self.epoch, index))
        return {"image": torch.from_numpy(x), "mask": torch.from_numpy(y), "id": sid}

    def __repr__(self) -> str:
        return (
            f"SynapseSliceDataset(name={self.name!r}, split={self.split!r}, protocol={self.protocol!r}, "
            f"cases={len(self.cases)}, slices={len(self)})"
        )


class SynapseVolumeDataset(Dataset):
    """Whole volumes ``{"id", "image": (D, H, W) float32, "label": (D, H, W) int64, "spacing"}``.

    A case's source is an h5 file or the sorted list of its npz slices (holdout validation).
    """

    cv_splits: list[dict[str, list[str]]] | None = None  # protocol cv only

    is_volume = True
    val_is_test = False

    def __init__(
        self,
        cases: Sequence[tuple[str, Path | Sequence[tuple[int, Path]]]],
        *,
        name: str,
        split: str,
        protocol: str,
        img_size: Sequence[int] = (224, 224),
        class_names: Sequence[str] = CLASS_NAMES_B,
    ):
        self.sources = list(cases)
        self.name, self.split, self.protocol = name, split, protocol
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.class_names = tuple(class_names)
        self.augment = False
        for cid, src in self.sources:
            if not isinstance(src, Path):
                idx = [i for i, _ in src]
                if idx != list(range(idx[0], idx[0] + len(idx))):
                    gaps = sorted(set(range(idx[0], idx[-1] + 1)) - set(idx))
                    raise DataError(f"{cid}: its training slices are not contiguous (missing slice {few(gaps)})")

    @property
    def ids(self) -> list[str]:
        return [c for c, _ in self.sources]

    def set_epoch(self, epoch: int) -> None:  # volumes are not augmented
        pass

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict:
        cid, src = self.sources[index]
        if isinstance(src, Path):
            image, label, spacing = _load_h5(src)
            label = check_label(label, src)
        else:
            images, labels, spacing = [], [], None
            for i, (_, path) in enumerate(src):
                im, lab, sp = _load_npz(path)
                if images and im.shape != images[0].shape:
                    raise DataError(f"{path}: slice shape {im.shape} differs from {src[0][1].name} {images[0].shape}")
                images.append(im)
                labels.append(check_label(lab, path))
                if i == 0 and sp is not None:
                    spacing = tuple(float(s) for s in sp)
            image, label = np.stack(images), np.stack(labels)
        return {
            "id": cid,
            "image": np.ascontiguousarray(image, dtype=np.float32),
            "label": np.ascontiguousarray(label, dtype=np.int64),
            "spacing": spacing,
        }

    def __repr__(self) -> str:
        return (
            f"SynapseVolumeDataset(name={self.name!r}, split={self.split!r}, protocol={self.protocol!r}, "
            f"cases={len(self)})"
        )


def _class_names_for(root: Path, default: Sequence[str]) -> tuple[str, ...]:
    meta = root / META_FILE
    if meta.is_file():
        try:
            names = json.loads(meta.read_text()).get("class_names")
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read {meta}: {err}") from None
        if names and len(names) == NUM_CLASSES:
            return tuple(names)
    return tuple(default)


def build_synapse(
    root,
    split: str = "train",
    protocol: str = "holdout",
    img_size: Sequence[int] = (224, 224),
    augment: bool | None = None,
    seed: int = 0,
    *,
    name: str = "synapse",
    val_cases: Sequence[str] = HOLDOUT_VAL_CASES,
    class_names: Sequence[str] = CLASS_NAMES_B,
    fold: int | None = None,
    folds: int = 5,
):
    """A Synapse split from the TransUNet layout at ``root`` (see the module docstring)."""
    check_split_protocol(split, protocol)
    if protocol == CV:
        fold, folds = check_fold(fold, folds)
    if split == "val" and protocol == "paper":
        raise DataError(
            "the paper protocol has no Synapse validation set (TransUNet / VM-UNet train on the 18 "
            "cases and select on the training loss or the last epoch); use protocol='holdout'"
        )
    root = Path(root if root is not None else "data/Synapse")
    if not root.is_dir():
        raise DataError(f"Synapse data folder {root} does not exist")
    if augment is None:
        augment = split == "train"
    names = _class_names_for(root, class_names)
    common = dict(name=name, split=split, protocol=protocol, img_size=img_size, class_names=names)
    if split == "test":
        vols = _test_volumes(root)
        return SynapseVolumeDataset([(c, p) for c, p in vols.items()], **common)
    cases = _train_slices(root)
    cv_splits = None
    if protocol == "paper":
        chosen = sorted(cases)
    elif protocol == CV:  # folds over the training cases, volumes kept whole
        cv_splits = kfold_splits(list(cases), folds)
        chosen = cv_splits[fold][split]
        if split == "val":
            dataset = SynapseVolumeDataset([(c, cases[c]) for c in chosen], **common)
            dataset.cv_splits = cv_splits
            return dataset
    else:
        val = [c for c in val_cases if c in cases]
        if not val:
            raise DataError(
                f"none of the holdout validation cases ({', '.join(val_cases)}) is among the training "
                f"cases of {root} ({few(sorted(cases))})"
            )
        if split == "val":
            return SynapseVolumeDataset([(c, cases[c]) for c in val], **common)
        chosen = sorted(c for c in cases if c not in set(val))
    if not chosen:
        raise DataError(f"split {split!r} of {root} has no cases under protocol {protocol!r}")
    slices = [(f"{c}_slice{i:03d}", p) for c in chosen for i, p in cases[c]]
    dataset = SynapseSliceDataset(slices, augment=augment, seed=seed, cases=chosen, **common)
    dataset.cv_splits = cv_splits  # protocol cv: every fold's train/val case ids (splits.json)
    return dataset


# Registry metadata shared with the generated stand-in (vmbench.data.synthetic).
SYNAPSE_DATASET_INFO = dict(
    task="multiclass",
    num_classes=NUM_CLASSES,
    in_chans=1,
    img_size=(224, 224),
    evaluation="volume",
    class_names=CLASS_NAMES_B,
    protocols=(HOLDOUT, PAPER, CV),
    # data.options the wrappers forward to build_synapse (name is fixed by each wrapper)
    forwarded_options=("val_cases", "class_names"),
)


@register_dataset(
    "synapse",
    **SYNAPSE_DATASET_INFO,
    description=(
        "Synapse multi-organ CT (BTCV), TransUNet preprocessed layout; 8 organs + background. "
        "Per-organ names assume mapping (B), the papers' table order (1 aorta ... 8 stomach), which is not "
        "confirmed by the official files."
    ),
    default_root="data/Synapse",
)
def synapse(root=None, split="train", protocol="holdout", img_size=(224, 224), augment=None, seed=0, **kwargs):
    return build_synapse(root, split, protocol, img_size, augment, seed, name="synapse", **kwargs)
