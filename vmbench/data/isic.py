"""ISIC2017 / ISIC2018 lesion segmentation (binary, 3 channels, 256x256, pooled 2D evaluation).

Items
    ``{"image": float32 (3, H, W), "mask": float32 (1, H, W) in {0, 1}, "id": str}`` at ``img_size``.
    Masks are resized with nearest-neighbour interpolation under both protocols. The official
    VM-UNet code resizes masks bilinearly (soft masks, re-thresholded at 0.5 by its metric);
    vmbench fixes this. See ``vmbench.data.transforms`` for augmentation and normalisation
    (``normalize``: ``"vmunet"`` by default under ``paper``, ``"minmax-imagenet"`` under
    ``holdout``, or ``"zscore"``; ``augmentation``: ``"vmunet"`` or ``"nnunet"``).

Layouts, splits and the masks accepted: :mod:`vmbench.data.isic_files`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vmbench.data.common import check_split_protocol
from vmbench.data.isic_files import Sample, image_size, isic_samples, load_isic_image, load_isic_mask
from vmbench.data.transforms import AUGMENTATION_PRESETS, NORMALIZE_MODES, VMUNET_ISIC_STATS, IsicTransform, item_rng
from vmbench.errors import ConfigError, DataError
from vmbench.protocols import CV, HOLDOUT, PAPER
from vmbench.registry import register_dataset

__all__ = ["ISIC_DATASET_INFO", "ISICDataset", "build_isic"]

# ----------------------------------------------------------------------------------------------
# Dataset


class ISICDataset(Dataset):
    """2D ISIC items ``{"image", "mask", "id"}``; see the module docstring."""

    is_volume = False
    class_names = ("lesion",)

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        name: str,
        split: str,
        protocol: str,
        img_size: Sequence[int],
        augment: bool,
        seed: int = 0,
        normalize: str = "minmax-imagenet",
        stats: tuple[float, float] | None = None,
        val_is_test: bool = False,
        layout: str = "",
        split_source: str = "",
        check_sizes: bool = True,
        fast_decode: bool = True,
        cv_splits: list[dict[str, list[str]]] | None = None,
        augmentation: str = "vmunet",
    ):
        self.samples = list(samples)
        self.cv_splits = cv_splits  # protocol cv: every fold's train/val ids (what splits.json records)
        self.name = name
        self.split = split
        self.protocol = protocol
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.normalize = normalize
        self.val_is_test = bool(val_is_test)
        self.layout = layout
        self.split_source = split_source
        self.fast_decode = fast_decode
        self.transform = IsicTransform(
            self.img_size,
            augment=self.augment,
            normalize=normalize,
            stats=stats,
            rotate_interpolation="nearest" if protocol == "paper" else "linear",
            preset=augmentation,
        )
        if check_sizes:
            for s in self.samples:
                isz, msz = image_size(s.image), image_size(s.mask)
                if isz != msz:
                    raise DataError(_size_message(s, isz, msz))

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw pair: RGB uint8 (H, W, 3) and {0,1} uint8 (H, W), before any transform."""
        s = self.samples[index]
        draft = (2 * self.img_size[1], 2 * self.img_size[0]) if self.fast_decode else None
        image, size = load_isic_image(s.image, draft)
        mask = load_isic_mask(s.mask)
        if (mask.shape[1], mask.shape[0]) != size:
            raise DataError(_size_message(s, size, (mask.shape[1], mask.shape[0])))
        if mask.shape != image.shape[:2]:  # decoded at a reduced scale
            import cv2

            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
        return image, mask

    def native_size(self, index: int) -> tuple[int, int]:
        """(height, width) of the image as released: where native-resolution metrics are scored."""
        width, height = image_size(self.samples[index].image)
        return height, width

    def native_mask(self, index: int) -> np.ndarray:
        """The {0, 1} uint8 mask at the image's released size (never decoded at a reduced scale)."""
        return load_isic_mask(self.samples[index].mask)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.load(index)
        x, m = self.transform(image, mask, item_rng(self.seed, self.epoch, index))
        return {"image": torch.from_numpy(x), "mask": torch.from_numpy(m), "id": self.samples[index].id}

    def __repr__(self) -> str:
        return (
            f"ISICDataset(name={self.name!r}, split={self.split!r}, protocol={self.protocol!r}, "
            f"n={len(self)}, layout={self.layout!r}, val_is_test={self.val_is_test})"
        )


def _size_message(s: Sample, image_size, mask_size) -> str:
    return (
        f"mask {s.mask} is {mask_size[0]}x{mask_size[1]} but its image {s.image} is "
        f"{image_size[0]}x{image_size[1]} (width x height)"
    )


def build_isic(
    root,
    split: str = "train",
    protocol: str = "holdout",
    img_size: Sequence[int] = (256, 256),
    augment: bool | None = None,
    seed: int = 0,
    *,
    year: int = 2018,
    name: str | None = None,
    normalize: str | None = None,
    split_seed: int = 0,
    check_sizes: bool = True,
    fast_decode: bool = True,
    fold: int | None = None,
    folds: int = 5,
    augmentation: str = "vmunet",
) -> ISICDataset:
    """An ISIC split from a challenge or prepared layout at ``root`` (see the module docstring);
    ``augmentation``: the training augmentation preset, ``vmunet`` or ``nnunet``
    (``vmbench.data.transforms``)."""
    check_split_protocol(split, protocol)
    if root is None:
        root = f"data/isic{year}"
    name = name or f"isic{year}"
    if augment is None:
        augment = split == "train"
    if normalize is None:
        normalize = "vmunet" if protocol == "paper" else "minmax-imagenet"
    _check_choice("normalize", normalize, NORMALIZE_MODES)  # before any file is read
    _check_choice("augmentation", augmentation, AUGMENTATION_PRESETS)
    samples, info = isic_samples(Path(root), split, protocol, year=year, split_seed=split_seed, fold=fold, folds=folds)
    key = f"isic{info['year'] or year}"
    stats = VMUNET_ISIC_STATS.get((key, "train" if split == "train" else "test"))
    layout = info["layout"] + (f"-{info['year']}" if info["year"] else "")
    try:
        return ISICDataset(
            samples,
            name=name,
            split=split,
            protocol=protocol,
            img_size=img_size,
            augment=augment,
            seed=seed,
            normalize=normalize,
            stats=stats,
            val_is_test=info["val_is_test"],
            layout=layout,
            split_source=info.get("split_source", ""),
            check_sizes=check_sizes,
            fast_decode=fast_decode,
            cv_splits=info.get("cv_splits"),
            augmentation=augmentation,
        )
    except ValueError as err:
        if isinstance(err, DataError):
            raise
        raise DataError(str(err)) from None


def _check_choice(option: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"data.options.{option}: {value!r} is not one of {', '.join(map(repr, choices))}")


# Registry metadata shared with the generated stand-in (vmbench.data.synthetic).
ISIC_DATASET_INFO = dict(
    task="binary",
    num_classes=1,
    in_chans=3,
    img_size=(256, 256),
    evaluation="pooled2d",
    class_names=("lesion",),
    protocols=(HOLDOUT, PAPER, CV),
    # data.options the wrappers forward to build_isic (year and name are fixed by each wrapper)
    forwarded_options=("normalize", "split_seed", "check_sizes", "fast_decode", "augmentation"),
)


@register_dataset(
    "isic2017",
    description="ISIC 2017 lesion segmentation (challenge archives or the VM-UNet prepared layout).",
    default_root="data/isic2017",
    **ISIC_DATASET_INFO,
)
def isic2017(root=None, split="train", protocol="holdout", img_size=(256, 256), augment=None, seed=0, **kwargs):
    return build_isic(root, split, protocol, img_size, augment, seed, year=2017, name="isic2017", **kwargs)


@register_dataset(
    "isic2018",
    description="ISIC 2018 Task 1 lesion segmentation (challenge archives or the VM-UNet prepared layout).",
    default_root="data/isic2018",
    **ISIC_DATASET_INFO,
)
def isic2018(root=None, split="train", protocol="holdout", img_size=(256, 256), augment=None, seed=0, **kwargs):
    return build_isic(root, split, protocol, img_size, augment, seed, year=2018, name="isic2018", **kwargs)
