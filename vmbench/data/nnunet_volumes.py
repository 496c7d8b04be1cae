"""nnU-Net raw datasets of 3D NIfTI volumes, trained as 2D slices and scored per volume (as Synapse).

Training items are axial slices ``{"image": float32 (1, h, w), "mask": int64 (h, w), "id"}`` at the
training size (``vmbench.data.transforms.SynapseTransform``: TransUNet's rotations and flips, cubic
zoom for the image, nearest for the label); validation and test items are whole volumes
``{"id", "image": float32 (D, H, W), "label": int64 (D, H, W), "spacing"}`` that the engine predicts
slice by slice and scores with Synapse's per-volume 3D Dice and HD95 (``evaluation: volume``).

Intensities: each volume is clipped to its own 0.5 and 99.5 percentiles and scaled to [0, 1] (the
percentile clipping of nnU-Net's CT normalisation, MIC-DKFZ/nnUNet@0e495086
``nnunetv2/preprocessing/normalization/default_normalization_schemes.py``, without its dataset-wide
statistics, which would need a preprocessing pass). One channel (``_0000``) only.
Volumes are read with nibabel (.nii, .nii.gz); axes (x, y, z) become (z, y, x) = (D, H, W).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vmbench.data.folder import ClassMap, Pair
from vmbench.data.transforms import SynapseTransform, item_rng
from vmbench.errors import DataError

__all__ = ["NiftiSliceDataset", "NiftiVolumeDataset", "load_volume", "volume_shape"]

CACHED_VOLUMES = 4  # per dataset object and process: slices of one volume are read together


def _nifti(path: Path):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise DataError(f"{path}: not a readable NIfTI volume ({err})") from None


def volume_shape(path: Path) -> tuple[int, int, int]:
    """(D, H, W) from the header."""
    shape = _nifti(path).shape
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {shape}")
    return int(shape[2]), int(shape[1]), int(shape[0])


def load_volume(path: Path, label: bool = False) -> tuple[np.ndarray, tuple[float, float, float]]:
    img = _nifti(path)
    data = np.asarray(img.dataobj)
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    data = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    spacing = (zooms[2], zooms[1], zooms[0])
    if label:
        if not np.all(data == np.round(data)):
            raise DataError(f"{path}: a label volume of non-integer values")
        return data.astype(np.int64), spacing
    data = data.astype(np.float32)
    lo, hi = np.percentile(data, (0.5, 99.5))
    if hi <= lo:
        return np.zeros_like(data), spacing
    return ((np.clip(data, lo, hi) - lo) / (hi - lo)).astype(np.float32), spacing


def _class_ids(path: Path, label: np.ndarray, classes: ClassMap, table: np.ndarray) -> np.ndarray:
    if label.min() < 0 or label.max() > 65535:
        raise DataError(f"{path}: label values outside 0..65535")
    ids = table[label]
    if np.any(ids == 255):
        bad = sorted(int(v) for v in np.unique(label[ids == 255]))[:5]
        raise DataError(f"{path}: label values {bad} are not in dataset.json's labels {classes.to_option()}")
    return ids.astype(np.int64)


class _Volumes:
    """Reads (image, class ids, spacing) of a case, keeping the last few in memory."""

    def __init__(self, classes: ClassMap):
        self.classes, self.table = classes, classes.lookup()
        self.cache: OrderedDict[str, tuple] = OrderedDict()

    def get(self, pair: Pair) -> tuple[np.ndarray, np.ndarray, tuple]:
        if pair.id in self.cache:
            self.cache.move_to_end(pair.id)
            return self.cache[pair.id]
        image, spacing = load_volume(pair.images[0])
        label, _ = load_volume(pair.mask, label=True)
        if image.shape != label.shape:
            raise DataError(f"{pair.mask}: label shape {label.shape} differs from its image {pair.images[0]} {image.shape}")
        entry = (image, _class_ids(pair.mask, label, self.classes, self.table), spacing)
        self.cache[pair.id] = entry
        if len(self.cache) > CACHED_VOLUMES:
            self.cache.popitem(last=False)
        return entry


def _check_channels(pairs: Sequence[Pair]) -> None:
    for pair in pairs:
        if len(pair.images) != 1:
            raise DataError(f"{pair.images[0]}: {len(pair.images)} channels; 3D volumes are read with one channel (_0000)")


class NiftiSliceDataset(Dataset):
    is_volume = False
    val_is_test = False

    def __init__(self, pairs: Sequence[Pair], *, name: str, split: str, protocol: str, img_size: Sequence[int],
                 augment: bool, seed: int, classes: ClassMap, split_source: str = ""):
        _check_channels(pairs)
        self.pairs = list(pairs)
        self.name, self.split, self.protocol = name, split, protocol
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.augment, self.seed, self.epoch = bool(augment), int(seed), 0
        self.class_names = classes.names
        self.split_source = split_source
        self.volumes = _Volumes(classes)
        self.slices = [(k, z) for k, pair in enumerate(self.pairs) for z in range(volume_shape(pair.images[0])[0])]
        self.transform = SynapseTransform(self.img_size, augment=self.augment)

    @property
    def ids(self) -> list[str]:
        return [f"{self.pairs[k].id}_slice{z:03d}" for k, z in self.slices]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> dict:
        k, z = self.slices[index]
        image, label, _ = self.volumes.get(self.pairs[k])
        x, y = self.transform(image[z], label[z], item_rng(self.seed, self.epoch, index))
        return {"image": torch.from_numpy(x), "mask": torch.from_numpy(y), "id": f"{self.pairs[k].id}_slice{z:03d}"}


class NiftiVolumeDataset(Dataset):
    is_volume = True
    val_is_test = False

    def __init__(self, pairs: Sequence[Pair], *, name: str, split: str, protocol: str, img_size: Sequence[int],
                 classes: ClassMap, split_source: str = ""):
        _check_channels(pairs)
        self.pairs = list(pairs)
        self.name, self.split, self.protocol = name, split, protocol
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.augment = False
        self.class_names = classes.names
        self.split_source = split_source
        self.volumes = _Volumes(classes)

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.pairs]

    def set_epoch(self, epoch: int) -> None:  # volumes are not augmented
        pass

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image, label, spacing = self.volumes.get(self.pairs[index])
        return {"id": self.pairs[index].id, "image": image, "label": label, "spacing": spacing}
