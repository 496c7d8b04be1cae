"""Datasets users bring as folders: the ``folder`` layout, the class map, the splits and the 2D dataset.

``folder`` layout (U-Bench, FengheTan9/U-Bench@eafbb9f, README "Datasets": ``images/`` and
``masks/0/`` with the same file names; many redistributed sets use ``masks/`` directly)::

    ROOT/images/<case>.<png|jpg|bmp|tif>      ROOT/masks/<case>.<...>   (or masks/0/, labels/)
    ROOT/imagesTs/ + ROOT/labelsTs/           optional test split (also test/images + test/masks)
    ROOT/splits.json                          optional {"train": [...], "val": [...], "test": [...]}

Images and masks are matched by file stem (a mask stem may end in ``_mask``, ``_segmentation`` or
``_label``). Mask pixel values map to classes by ``labels`` (nnU-Net's ``dataset.json`` style,
name -> value, background 0), else by the values found: {0, v} is binary, 0..K contiguous ids.

Splits: the test folder (or the splits file) is the test split; without one, a seeded holdout
(``split_seed``; 70/10/20 by content-independent id hashes); protocol ``cv``: nnU-Net's folds
(``vmbench.data.splits``) over everything not in test, or a ``splits_final.json``'s folds.

Items are ISIC's (``vmbench.data.isic``): images resized to the training size (``img_size``) with
the same augmentation presets; binary masks float32 (1, h, w), multi-class int64 (h, w).
``native_mask(i)`` and ``native_size(i)`` give the mask at the file's own size, for
native-resolution metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vmbench.data.common import split_by_hash
from vmbench.data.imagefiles import image_size, is_image_file, load_image, load_mask
from vmbench.data.splits import kfold_splits
from vmbench.data.transforms import IsicTransform, item_rng
from vmbench.errors import DataError
from vmbench.protocols import CV

__all__ = ["ClassMap", "FolderLayout", "Pair", "UserDataset", "find_folder_layout", "holdout_splits", "pair_files",
           "scan_mask_values"]

MASK_STEM_SUFFIXES = ("_mask", "_segmentation", "_label", "_gt")
_TRAIN_DIRS = (("images", "masks"), ("images", "labels"), ("imagesTr", "labelsTr"))
_TEST_DIRS = (("imagesTs", "labelsTs"), ("test/images", "test/masks"))
HOLDOUT_FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test when the data has no test split of its own


@dataclass(frozen=True)
class Pair:
    id: str
    images: tuple[Path, ...]  # one file (RGB or greyscale), or one per channel (nnU-Net's _0000, _0001)
    mask: Path | None


@dataclass
class FolderLayout:
    root: Path
    train: list[Pair]
    test: list[Pair]
    splits_file: Path | None = None
    unmatched: list[Path] = field(default_factory=list)  # images without a mask and masks without an image
    image_dir: Path | None = None
    mask_dir: Path | None = None


def _mask_dir(root: Path, name: str) -> Path:
    folder = root / name
    # U-Bench keeps the (binary) class in masks/0/
    if folder.is_dir() and not any(is_image_file(p) for p in folder.iterdir()) and (folder / "0").is_dir():
        return folder / "0"
    return folder


def _mask_stem(stem: str) -> str:
    for suffix in MASK_STEM_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def pair_files(image_dir: Path, mask_dir: Path | None) -> tuple[list[Pair], list[Path]]:
    """Pairs matched by stem, and the files left unmatched (sorted)."""
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if is_image_file(p)}
    masks: dict[str, Path] = {}
    if mask_dir is not None and mask_dir.is_dir():
        for p in sorted(mask_dir.iterdir()):
            if is_image_file(p):
                key = p.stem if p.stem in images else _mask_stem(p.stem)
                masks[key] = p
    pairs = [Pair(stem, (images[stem],), masks[stem]) for stem in sorted(images) if stem in masks]
    unmatched = sorted([images[s] for s in images if s not in masks] + [masks[s] for s in masks if s not in images])
    return pairs, unmatched


def find_folder_layout(root: str | Path) -> FolderLayout:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    for image_name, mask_name in _TRAIN_DIRS:
        image_dir, mask_dir = root / image_name, _mask_dir(root, mask_name)
        if image_dir.is_dir() and mask_dir.is_dir():
            break
    else:
        raise DataError(f"{root}: expected images/ and masks/ (or masks/0/, labels/, imagesTr/ + labelsTr/) folders")
    train, unmatched = pair_files(image_dir, mask_dir)
    test: list[Pair] = []
    for image_name, mask_name in _TEST_DIRS:
        if (root / image_name).is_dir() and (root / mask_name).is_dir():
            test, more = pair_files(root / image_name, _mask_dir(root, mask_name))
            unmatched += more
            break
    if not train:
        raise DataError(f"{root}: no image in {image_dir.name}/ has a mask of the same name in {mask_dir.name}/")
    splits_file = root / "splits.json"
    return FolderLayout(root, train, test, splits_file if splits_file.is_file() else None, unmatched, image_dir, mask_dir)


# ------------------------------------------------------------------------------------------------
# Classes


@dataclass(frozen=True)
class ClassMap:
    """Pixel value -> class id. ``names[0]`` is the background; ``values[i]`` the value of class i."""

    names: tuple[str, ...]
    values: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def binary(self) -> bool:
        return len(self.names) == 2

    def to_option(self) -> dict[str, int]:
        return dict(zip(self.names, self.values))

    @classmethod
    def from_option(cls, labels: Any, where: str) -> "ClassMap":
        """From ``labels`` (name -> value, background 0); ``where`` names the field in errors."""
        if not isinstance(labels, dict) or not labels:
            raise DataError(f"{where}: expected a mapping of class name -> mask value, e.g. {{background: 0, polyp: 255}}")
        items = []
        for name, value in labels.items():
            if isinstance(value, list):
                raise DataError(f"{where}: {name!r} is a region label {value!r}; vmbench trains 2D classes, "
                                "not nnU-Net regions: give each class one value")
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
                raise DataError(f"{where}: {name!r}: expected an integer mask value 0..65535, got {value!r}")
            items.append((int(value), str(name)))
        items.sort()
        values = [v for v, _ in items]
        if len(set(values)) != len(values):
            raise DataError(f"{where}: two classes share one mask value")
        if values[0] != 0:
            raise DataError(f"{where}: the background must have value 0 (lowest given: {values[0]})")
        return cls(tuple(n for _, n in items), tuple(values))

    @classmethod
    def from_values(cls, values: set[int], where: str) -> "ClassMap":
        """Classes inferred from the mask values found: {0, v} binary, else 0..K contiguous ids."""
        found = sorted(values | {0})
        if len(found) <= 2:
            fg = found[1] if len(found) == 2 else 255
            return cls(("background", "foreground"), (0, fg))
        if found == list(range(len(found))):
            return cls(("background", *(f"class{v}" for v in found[1:])), tuple(found))
        shown = ", ".join(map(str, found[:8])) + (", ..." if len(found) > 8 else "")
        raise DataError(f"{where}: mask values {{{shown}}} are neither {{0, v}} nor contiguous ids 0..K; declare "
                        "which value is which class with labels: {background: 0, name: value, ...}")

    def lookup(self) -> np.ndarray:
        """A table value -> class id (255: a value of no class)."""
        table = np.full(65536, 255, dtype=np.uint8)
        for cls, value in enumerate(self.values):
            table[value] = cls
        return table


def scan_mask_values(masks: Sequence[Path]) -> set[int]:
    values: set[int] = set()
    for path in masks:
        pixels, _ = load_mask(path)
        values.update(int(v) for v in np.unique(pixels))
    return values


def map_mask(path: Path, classes: ClassMap, table: np.ndarray) -> np.ndarray:
    pixels, how = load_mask(path)
    if how.startswith("jpeg-threshold") and classes.binary:  # thresholded to {0, 255}: 255 is the foreground
        return (pixels > 0).astype(np.uint8)
    ids = table[pixels]
    if np.any(ids == 255):
        bad = sorted(int(v) for v in np.unique(pixels[ids == 255]))[:5]
        raise DataError(f"{path}: mask values {bad} belong to no class (classes: {classes.to_option()}); "
                        "declare them in labels")
    return ids


# ------------------------------------------------------------------------------------------------
# Splits


def _counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Part sizes; every part after the first keeps one case when there are enough (small sets)."""
    sizes = [max(1, round(n * f / sum(fractions))) if n > len(fractions) else 0 for f in fractions[1:]]
    return [n - sum(sizes), *sizes]


def holdout_splits(ids: Sequence[str], seed: int) -> dict[str, list[str]]:
    train, val, test = split_by_hash(list(ids), _counts(len(ids), HOLDOUT_FRACTIONS), seed)
    return {"train": train, "val": val, "test": test}


def read_splits_file(path: Path, ids: set[str]) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` from ``splits.json``, every id checked."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON splits file ({err})") from None
    if not isinstance(raw, dict) or not {"train", "test"} <= set(raw):
        raise DataError(f"{path}: expected {{\"train\": [...], \"val\": [...], \"test\": [...]}}")
    out = {}
    for split in ("train", "val", "test"):
        names = raw.get(split, [])
        if not isinstance(names, list):
            raise DataError(f"{path}: {split!r} must be a list of case ids")
        unknown = sorted(set(map(str, names)) - ids)
        if unknown:
            raise DataError(f"{path}: {split} names {unknown[0]!r}, which has no image/mask pair")
        out[split] = sorted(map(str, names))
    return out


def choose_split(pool: list[Pair], test: list[Pair], split: str, protocol: str, split_seed: int,
                 fold: int | None, folds: int, splits_file: Path | None = None,
                 cv_splits: list[dict[str, list[str]]] | None = None) -> tuple[list[Pair], str]:
    """The pairs of ``split`` and where the split came from (recorded beside the run)."""
    by_id = {p.id: p for p in pool + test}
    if splits_file is not None:
        parts, source = read_splits_file(splits_file, set(by_id)), str(splits_file.name)
        if not parts["val"] and protocol != CV:
            parts["train"], parts["val"] = _holdout_val(parts["train"], split_seed)
    elif test:
        parts, source = {"test": [p.id for p in test]}, "test folder"
        parts["train"], parts["val"] = _holdout_val([p.id for p in pool], split_seed)
    else:
        parts, source = holdout_splits([p.id for p in pool], split_seed), f"holdout (split_seed {split_seed})"
    if split != "test" and (protocol == CV or cv_splits):
        train_pool = sorted(set(parts["train"]) | set(parts.get("val", [])))
        if cv_splits:  # nnU-Net's splits_final.json
            k = fold if protocol == CV else 0
            if k is None or k >= len(cv_splits):
                raise DataError(f"splits_final.json has {len(cv_splits)} folds; fold {k} does not exist")
            held_out = set(parts["test"])  # without imagesTs the test cases come out of nnU-Net's folds
            parts = {part: [i for i in cv_splits[k][part] if i not in held_out] for part in ("train", "val")}
            source = f"splits_final.json fold {k}" + (" less the held-out test cases" if held_out and not test else "")
        else:
            parts = kfold_splits(train_pool, folds)[fold]
            source = f"nnU-Net folds ({fold} of {folds})"
    missing = sorted(set(parts[split]) - set(by_id))
    if missing:
        raise DataError(f"split {split}: case {missing[0]!r} has no image/mask pair")
    chosen = [by_id[i] for i in sorted(parts[split])]
    if not chosen:
        raise DataError(f"split {split!r} is empty ({source}); the dataset has {len(pool) + len(test)} pairs")
    return chosen, source


def _holdout_val(ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    train, val = split_by_hash(ids, _counts(len(ids), (0.875, 0.125)), seed)  # the 70/10 of a 70/10/20 holdout
    return train, val


# ------------------------------------------------------------------------------------------------
# The dataset


class UserDataset(Dataset):
    """2D items from image/mask pairs of any supported file type (see the module docstring)."""

    is_volume = False

    def __init__(self, pairs: Sequence[Pair], *, name: str, split: str, protocol: str, img_size: Sequence[int],
                 augment: bool, seed: int, classes: ClassMap, normalize: str = "minmax-imagenet",
                 augmentation: str = "vmunet", split_source: str = ""):
        self.pairs = list(pairs)
        self.name, self.split, self.protocol = name, split, protocol
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.augment, self.seed, self.epoch = bool(augment), int(seed), 0
        self.classes = classes
        self.class_names = classes.names[1:] if classes.binary else classes.names
        self.val_is_test = False
        self.split_source = split_source
        self._table = classes.lookup()
        try:
            self.transform = IsicTransform(self.img_size, augment=self.augment, normalize=normalize, preset=augmentation)
        except ValueError as err:
            raise DataError(f"data.options: {err}") from None

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.pairs]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def load_image(self, index: int) -> np.ndarray:
        pair = self.pairs[index]
        if len(pair.images) == 1:
            return load_image(pair.images[0])
        channels = [load_image(p)[:, :, 0] for p in pair.images]  # nnU-Net: one greyscale file per channel
        if len(channels) != 3:
            raise DataError(f"{pair.images[0]}: {len(channels)} channel files; 2D datasets take 1 or 3 channels")
        return np.stack(channels, axis=2)

    def native_mask(self, index: int) -> np.ndarray:
        """The mask at the image's own size, uint8 class ids."""
        pair = self.pairs[index]
        if pair.mask is None:
            raise DataError(f"case {pair.id} has no mask")
        return map_mask(pair.mask, self.classes, self._table)

    def native_size(self, index: int) -> tuple[int, int]:
        """(height, width) of the image file."""
        return image_size(self.pairs[index].images[0])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = self.load_image(index), self.native_mask(index)
        if image.shape[:2] != mask.shape:
            pair = self.pairs[index]
            raise DataError(f"{pair.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {pair.images[0]} is "
                            f"{image.shape[1]}x{image.shape[0]} (width x height)")
        return image, mask

    def __getitem__(self, index: int) -> dict:
        image, mask = self.load(index)
        x, m = self.transform(image, mask, item_rng(self.seed, self.epoch, index))
        target = torch.from_numpy(m) if self.classes.binary else torch.from_numpy(m[0].astype(np.int64))
        return {"image": torch.from_numpy(x), "mask": target, "id": self.pairs[index].id}

    def __repr__(self) -> str:
        return (f"UserDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.classes.to_option()}, split_source={self.split_source!r})")
