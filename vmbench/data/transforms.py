"""Normalisation and augmentation, every random choice drawn from a seeded generator.

Reproducibility
    A 2D dataset draws the augmentation of item ``i`` from ``item_rng(seed, epoch, i)``, a numpy
    generator keyed by the dataset seed, the epoch (``dataset.set_epoch(e)``) and the index. So a
    (seed, epoch) pair gives the same batches whatever the number of DataLoader workers or the
    order they run in. ``set_epoch`` changes a plain attribute: call it before the epoch's
    iterator is created (workers are forked then); with ``persistent_workers=True`` the workers
    keep the epoch they were started with. ``seed_worker`` seeds the global numpy/``random``
    state of each worker from torch's per-worker seed, for any code that still uses them.

ISIC (albumentations)
    train: horizontal flip (p 0.5), vertical flip (p 0.5), rotation (p 0.5) by an angle drawn
    per sample, uniformly in [0, 360), zero fill, no expansion; then resize to ``img_size``.
    eval: resize only. The official VM-UNet ``myRandomRotation`` draws its angle once, when the
    config is imported, so every rotated sample of a run uses the same unseeded angle; vmbench
    does not copy that bug. Masks are always resampled with nearest-neighbour interpolation
    (the official code resizes masks bilinearly, making them soft), pixel-centre aligned for the
    resize (``cv2.INTER_NEAREST_EXACT``: plain ``INTER_NEAREST`` shifts masks by up to half a
    source pixel against the image); the image uses bilinear
    interpolation (area averaging when shrinking) for the resize and, for rotation, nearest
    under ``protocol="paper"`` (as torchvision's ``TF.rotate`` default) and bilinear under
    ``holdout``.

ISIC normalisation (``normalize=``)
    ``"vmunet"`` (default under ``paper``): VM-UNet's ``myNormalize``, ``(x - mean) / std`` with
    the per-dataset constants (train constants for the train split, test constants otherwise),
    then per-image min-max over all channels to [0, 255] as float. The network sees 0..255.
    ``"minmax-imagenet"`` (default under ``holdout``): per-image min-max to [0, 1], then the
    ImageNet channel mean/std (the statistics of the ImageNet-pretrained VMamba encoder).
    ``"imagenet"``: ``x / 255`` then ImageNet mean/std (TransFuse). ``"unit"``: ``x / 255``.
    ``"zscore"``: nnU-Net's ``ZScoreNormalization`` for images that are not CT, per image and
    channel ``(x - mean) / max(std, 1e-8)`` (MIC-DKFZ/nnUNet@0e495086,
    ``preprocessing/normalization/default_normalization_schemes.py``).
    Normalisation runs before the geometric transforms (as in VM-UNet), except for the final
    ImageNet standardisation, which runs after them so the rotation's zero fill is the image
    minimum (black) under every mode but ``zscore``, where it is the mean, as nnU-Net pads its
    normalised images with 0. A constant image maps to zeros instead of NaN.

ISIC augmentation presets (``augmentation=``, data option ``data.options.augmentation``)
    ``"vmunet"`` (default): the flips and rotation above. ``"nnunet"``: nnU-Net 2d's training
    transforms (rotation, scaling, noise, blur, brightness, contrast, low resolution, gamma,
    mirroring) after the resize to ``img_size``, expressed with albumentations as far as it goes
    (:mod:`vmbench.data.nnunet_augment` lists what differs); meant for ``normalize="zscore"``.

Synapse
    TransUNet's ``RandomGenerator``: with p 0.5 ``rot90`` by k in {0..3} then a flip along a
    random axis; otherwise with p 0.5 a rotation by a random integer angle in [-20, 20) with
    nearest interpolation (order 0) for image and label, zero fill, no reshape; then a zoom to
    ``img_size`` (image cubic spline, order 3; label nearest, order 0). The same scipy
    operations as TransUNet are used, so the paper protocol trains on the same pixels; only the
    random source differs (a seeded per-item generator instead of the global state).
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from vmbench.data.albumentations_env import albumentations

__all__ = [
    "AUGMENTATION_PRESETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VMUNET_ISIC_STATS",
    "NORMALIZE_MODES",
    "IsicTransform",
    "SynapseTransform",
    "item_rng",
    "normalize_isic",
    "seed_worker",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# VM-UNet utils.py myNormalize: (mean, std) per dataset and train/test.
VMUNET_ISIC_STATS = {
    ("isic2017", "train"): (159.922, 28.871),
    ("isic2017", "test"): (148.429, 25.748),
    ("isic2018", "train"): (157.561, 26.706),
    ("isic2018", "test"): (149.034, 32.022),
}

NORMALIZE_MODES = ("vmunet", "minmax-imagenet", "imagenet", "unit", "zscore")
AUGMENTATION_PRESETS = ("vmunet", "nnunet")


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator an item's augmentation is drawn from: a function of (seed, epoch, index)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)])


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy's and Python's global state from torch's."""
    import torch

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _minmax(x: np.ndarray, hi: float) -> np.ndarray:
    lo_v, hi_v = float(x.min()), float(x.max())
    if hi_v <= lo_v:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo_v) * (hi / (hi_v - lo_v))).astype(np.float32)


def normalize_isic(image: np.ndarray, mode: str, stats: tuple[float, float] | None = None) -> np.ndarray:
    """The part of the normalisation that runs before augmentation; uint8 (H, W, 3) -> float32."""
    x = image.astype(np.float32)
    if mode == "vmunet":
        mean, std = stats if stats is not None else (0.0, 1.0)
        return _minmax((x - np.float32(mean)) / np.float32(std), 255.0)
    if mode == "minmax-imagenet":
        return _minmax(x, 1.0)
    if mode in ("imagenet", "unit"):
        return x / np.float32(255.0)
    if mode == "zscore":  # per channel over the whole image; numpy's std is nnU-Net's (ddof 0)
        mean, std = x.mean(axis=(0, 1)), x.std(axis=(0, 1))
        return ((x - mean) / np.maximum(std, np.float32(1e-8))).astype(np.float32)
    raise ValueError(f"normalize {mode!r} is not one of {', '.join(NORMALIZE_MODES)}")


def _standardize(x: np.ndarray, mode: str) -> np.ndarray:
    if mode in ("minmax-imagenet", "imagenet"):
        return (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return x


class IsicTransform:
    """uint8 image (H, W, 3) + {0,1} mask (H, W) -> float32 (3, h, w) image, float32 (1, h, w) mask."""

    def __init__(
        self,
        img_size: Sequence[int],
        *,
        augment: bool,
        normalize: str = "minmax-imagenet",
        stats: tuple[float, float] | None = None,
        rotate_interpolation: str = "linear",
        preset: str = "vmunet",
    ):
        import cv2

        A = albumentations()
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize {normalize!r} is not one of {', '.join(NORMALIZE_MODES)}")
        if preset not in AUGMENTATION_PRESETS:
            raise ValueError(f"augmentation {preset!r} (data.options.augmentation) is not one of "
                             f"{', '.join(AUGMENTATION_PRESETS)}")
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.augment = bool(augment)
        self.normalize = normalize
        self.stats = stats
        self.preset = preset
        interp = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR}[rotate_interpolation]
        ops = []
        if self.augment and preset == "vmunet":
            ops += [
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
                A.Rotate(
                    limit=(0.0, 360.0),
                    interpolation=interp,
                    mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                    fill_mask=0,
                    p=0.5,
                ),
            ]
        ops.append(
            A.Resize(
                *self.img_size,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST_EXACT,  # pixel-centre aligned, unlike INTER_NEAREST
                area_for_downscale="image",
            )
        )
        if self.augment and preset == "nnunet":  # at the patch size, as nnU-Net augments its patches
            # Imported here, not at the top, only because it imports albumentations and cv2 on load;
            # it does not import this module (the shared loader is vmbench.data.albumentations_env).
            from vmbench.data.nnunet_augment import nnunet_2d_transforms

            ops += nnunet_2d_transforms()
        self.compose = A.Compose(ops)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        x = normalize_isic(image, self.normalize, self.stats)
        # One shared stream for all transforms (set_random_seed would give each transform the
        # same seed, so both flips would always agree).
        py = random.Random(int(rng.integers(0, 2**63 - 1)))
        self.compose.set_random_state(rng, py)
        out = self.compose(image=x, mask=np.ascontiguousarray(mask, dtype=np.uint8))
        x = _standardize(out["image"].astype(np.float32, copy=False), self.normalize)
        m = out["mask"]
        image_t = np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
        mask_t = np.ascontiguousarray(m[None], dtype=np.float32)
        return image_t, mask_t


class SynapseTransform:
    """float image (H, W) + integer label (H, W) -> float32 (1, h, w) image, int64 (h, w) label."""

    def __init__(self, img_size: Sequence[int], *, augment: bool):
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.augment = bool(augment)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        from scipy import ndimage

        image = np.asarray(image, dtype=np.float32)
        label = np.asarray(label)
        if self.augment:
            if rng.random() > 0.5:
                k = int(rng.integers(0, 4))
                axis = int(rng.integers(0, 2))
                image = np.flip(np.rot90(image, k), axis=axis)
                label = np.flip(np.rot90(label, k), axis=axis)
            elif rng.random() > 0.5:
                angle = int(rng.integers(-20, 20))
                image = ndimage.rotate(image, angle, order=0, reshape=False)
                label = ndimage.rotate(label, angle, order=0, reshape=False)
        h, w = image.shape
        if (h, w) != self.img_size:
            factors = (self.img_size[0] / h, self.img_size[1] / w)
            image = ndimage.zoom(image, factors, order=3)
            label = ndimage.zoom(label, factors, order=0)
        return (
            np.ascontiguousarray(image[None], dtype=np.float32),
            np.ascontiguousarray(label, dtype=np.int64),
        )
