"""nnU-Net 2d's training augmentation, expressed with albumentations (the ``augmentation: nnunet`` preset).

Source: ``nnUNetTrainer.get_training_transforms`` and
``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` (MIC-DKFZ/nnUNet@0e495086, v2.8.1,
``nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py``) with the transforms of batchgeneratorsv2
(MIC-DKFZ/batchgeneratorsv2 v0.3.3: ``transforms/spatial/spatial.py``, ``intensity/*.py``,
``noise/gaussian_blur.py``, ``spatial/low_resolution.py``, ``spatial/mirroring.py``). For a square 2d
patch nnU-Net applies, in this order, each to a whole sample with the probability given (the image
is z-scored, so its intensities are unbounded):

====================================================================  ==========================================
nnU-Net                                                               here
====================================================================  ==========================================
rotation p 0.2, angle uniform in [-180, 180] degrees                  ``A.Affine(rotate=(-180, 180))``
scaling p 0.2, one factor s uniform in [0.7, 1.4] for both axes       ``A.Affine(scale=(1/1.4, 1/0.7))``
(s > 1 shows more of the image: zoom 1/s)
Gaussian noise p 0.1: one std uniform in [0, 0.1] (the value named   :class:`GaussianNoise`
``noise_variance`` is used as the std), independent noise per channel
Gaussian blur p 0.2: each channel with p 0.5, a sigma uniform in      :class:`GaussianBlurPerAxis`
[0.5, 1] per channel and axis, kernel ``odd(6 sigma + 0.5)``, reflect
multiplicative brightness p 0.15: per channel ``x * m``               :class:`MultiplicativeBrightness`
contrast p 0.15: per channel ``(x - mean) m + mean`` clipped to the   :class:`Contrast`
channel's range
low resolution p 0.25: each channel with p 0.5, zoom z uniform in     :class:`LowResolution`
[0.5, 1] for both axes, nearest-exact down, bilinear up
gamma p 0.1 on the inverted image, gamma p 0.3: per channel, rescaled :class:`Gamma`
to [0, 1], ``x ** g``, rescaled back, mean and std restored
mirroring: each axis with p 0.5                                       ``A.VerticalFlip``, ``A.HorizontalFlip``
====================================================================  ==========================================

``m`` and ``g`` are drawn as batchgeneratorsv2's ``BGContrast``: with p 0.5 uniform in [low, 1],
otherwise uniform in [1, high] (brightness and contrast [0.75, 1.25]; gamma [0.7, 1.5]).

What albumentations cannot express exactly, and so differs from nnU-Net:

* albumentations' own pixel transforms (``GaussNoise``, ``GaussianBlur``, ``MultiplicativeNoise``,
  ``RandomBrightnessContrast``, ``Downscale``, ``RandomGamma``) clip float images to [0, 1] or
  assume that range (``RandomGamma`` takes powers of negative values), draw one factor for all
  channels and their factors uniformly: the six intensity transforms are therefore written here as
  albumentations ``ImageOnlyTransform`` subclasses with nnU-Net's arithmetic, drawing from the
  pipeline's seeded generator.
* ``A.Affine`` draws its zoom uniformly in [1/1.4, 1/0.7]; nnU-Net draws the inverse uniformly in
  [0.7, 1.4] (zooming out is more likely there). When both rotation and scaling are drawn (4 % of
  samples) the image is resampled twice here, once by nnU-Net.
* nnU-Net resamples each label of the mask bilinearly and keeps the label above 0.5 (binary
  masks); here the mask is resampled with nearest neighbours.
* nnU-Net crops its patch from a larger region of the image, so a rotated patch shows image
  content where the image extends beyond it; here the whole (resized) image is the patch and the
  corners are filled with 0, the mean of a z-scored image, as nnU-Net pads at image borders.
* nnU-Net's data loader, not its augmentation, draws 33 % of each batch around foreground pixels;
  vmbench does not (see the search spaces' headers).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from vmbench.data.albumentations_env import albumentations

A = albumentations()

__all__ = [
    "Contrast",
    "Gamma",
    "GaussianBlurPerAxis",
    "GaussianNoise",
    "LowResolution",
    "MultiplicativeBrightness",
    "bg_contrast",
    "blur_kernel_size",
    "nnunet_2d_transforms",
]


def bg_contrast(rng: np.random.Generator, low: float, high: float) -> float:
    """batchgeneratorsv2's ``BGContrast``: with p 0.5 uniform in [low, 1], else uniform in [1, high]."""
    if rng.random() < 0.5 and low < 1:
        return float(rng.uniform(low, 1))
    return float(rng.uniform(max(low, 1), high))


def blur_kernel_size(sigma: float, truncate: float = 6.0) -> int:
    """batchgeneratorsv2's Gaussian kernel length: ``sigma * truncate + 0.5`` rounded to the nearest
    odd integer (Python's rounding first; an even result moves toward the unrounded value)."""
    value = sigma * truncate + 0.5
    rounded = round(value)
    if rounded % 2 == 1:
        return rounded
    return rounded + 1 if value - rounded >= 0 else rounded - 1


class _ChannelTransform(A.ImageOnlyTransform):
    """An intensity transform of float (H, W, C) images, some or all channels each with its own
    parameters. Parameters are drawn from the pipeline's generator (``self.random_generator``), so a
    sample's augmentation is a function of the generator the dataset seeds per (seed, epoch, index)."""

    def _draw_channels(self, data: dict[str, Any], p_per_channel: float) -> list[int]:
        image = data["image"]
        channels = image.shape[2] if image.ndim == 3 else 1
        return [c for c in range(channels) if self.random_generator.random() < p_per_channel]

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        out = (img[:, :, None] if img.ndim == 2 else img).astype(np.float32, copy=True)
        for c, value in params["per_channel"].items():
            out[:, :, c] = self.channel(out[:, :, c], value)
        return out.reshape(img.shape)

    def channel(self, x: np.ndarray, value: Any) -> np.ndarray:
        raise NotImplementedError


class GaussianNoise(A.ImageOnlyTransform):
    """Additive Gaussian noise, one std uniform in ``std_range`` for every channel."""

    def __init__(self, std_range: tuple[float, float] = (0.0, 0.1), p: float = 0.1):
        super().__init__(p=p)
        self.std_range = tuple(std_range)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        std = self.random_generator.uniform(*self.std_range)
        return {"noise": (self.random_generator.standard_normal(data["image"].shape) * std).astype(np.float32)}

    def apply(self, img: np.ndarray, noise: np.ndarray, **params: Any) -> np.ndarray:
        return (img + noise).astype(np.float32)


class GaussianBlurPerAxis(_ChannelTransform):
    """Separable Gaussian blur of some channels, a sigma per channel and axis, reflected borders
    (batchgeneratorsv2 pads with torch's ``reflect``, OpenCV's ``BORDER_REFLECT_101``)."""

    def __init__(self, sigma_range: tuple[float, float] = (0.5, 1.0), p_per_channel: float = 0.5, p: float = 0.2):
        super().__init__(p=p)
        self.sigma_range, self.p_per_channel = tuple(sigma_range), p_per_channel

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        chosen = self._draw_channels(data, self.p_per_channel)
        return {"per_channel": {c: tuple(self.random_generator.uniform(*self.sigma_range, size=2)) for c in chosen}}

    def channel(self, x: np.ndarray, value: tuple[float, float]) -> np.ndarray:
        sigma_rows, sigma_cols = value
        ksize = (blur_kernel_size(sigma_cols), blur_kernel_size(sigma_rows))  # OpenCV: (width, height)
        return cv2.GaussianBlur(x, ksize, sigmaX=sigma_cols, sigmaY=sigma_rows, borderType=cv2.BORDER_REFLECT_101)


class _FactorPerChannel(_ChannelTransform):
    """Every channel with its own factor drawn by :func:`bg_contrast` from ``factor_range``."""

    def __init__(self, factor_range: tuple[float, float], p: float):
        super().__init__(p=p)
        self.factor_range = tuple(factor_range)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        chosen = self._draw_channels(data, 1.0)
        return {"per_channel": {c: bg_contrast(self.random_generator, *self.factor_range) for c in chosen}}


class MultiplicativeBrightness(_FactorPerChannel):
    """Each channel times its own factor (nnU-Net: ``BGContrast((0.75, 1.25))``)."""

    def __init__(self, multiplier_range: tuple[float, float] = (0.75, 1.25), p: float = 0.15):
        super().__init__(multiplier_range, p)

    def channel(self, x: np.ndarray, value: float) -> np.ndarray:
        return x * np.float32(value)


class Contrast(_FactorPerChannel):
    """Per channel ``(x - mean) * m + mean``, clipped to the channel's own [min, max]."""

    def __init__(self, contrast_range: tuple[float, float] = (0.75, 1.25), p: float = 0.15):
        super().__init__(contrast_range, p)

    def channel(self, x: np.ndarray, value: float) -> np.ndarray:
        mean = x.mean()
        return np.clip((x - mean) * np.float32(value) + mean, x.min(), x.max())


class Gamma(_FactorPerChannel):
    """Per channel ``x ** g`` on the channel rescaled to [0, 1], rescaled back, then its mean and
    std restored (nnU-Net's ``retain_stats``); ``invert``: on the negated channel, negated back."""

    def __init__(self, gamma_range: tuple[float, float] = (0.7, 1.5), invert: bool = False, p: float = 0.3):
        super().__init__(gamma_range, p)
        self.invert = bool(invert)

    def channel(self, x: np.ndarray, value: float) -> np.ndarray:
        sign = np.float32(-1.0 if self.invert else 1.0)
        x = x * sign
        mean, std = x.mean(), x.std(ddof=1)  # torch's std (unbiased), as batchgeneratorsv2
        low, span = x.min(), x.max() - x.min()
        x = ((x - low) / max(span, np.float32(1e-7))) ** np.float32(value) * span + low
        x = (x - x.mean()) * (std / max(x.std(ddof=1), np.float32(1e-7))) + mean
        return x * sign


class LowResolution(_ChannelTransform):
    """Some channels brought down by a zoom (nearest-exact) and back up (bilinear)."""

    def __init__(self, zoom_range: tuple[float, float] = (0.5, 1.0), p_per_channel: float = 0.5, p: float = 0.25):
        super().__init__(p=p)
        self.zoom_range, self.p_per_channel = tuple(zoom_range), p_per_channel

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        chosen = self._draw_channels(data, self.p_per_channel)
        return {"per_channel": {c: float(self.random_generator.uniform(*self.zoom_range)) for c in chosen}}

    def channel(self, x: np.ndarray, value: float) -> np.ndarray:
        height, width = x.shape
        small = (max(1, round(width * value)), max(1, round(height * value)))  # OpenCV: (width, height)
        down = cv2.resize(x, small, interpolation=cv2.INTER_NEAREST_EXACT)
        return cv2.resize(down, (width, height), interpolation=cv2.INTER_LINEAR)


def nnunet_2d_transforms() -> list:
    """The preset after the resize to the patch size, in nnU-Net's order (see the module docstring)."""
    geometry = dict(interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.2)
    return [
        A.Affine(rotate=(-180.0, 180.0), **geometry),
        A.Affine(scale=(1 / 1.4, 1 / 0.7), **geometry),
        GaussianNoise(std_range=(0.0, 0.1), p=0.1),
        GaussianBlurPerAxis(sigma_range=(0.5, 1.0), p_per_channel=0.5, p=0.2),
        MultiplicativeBrightness(multiplier_range=(0.75, 1.25), p=0.15),
        Contrast(contrast_range=(0.75, 1.25), p=0.15),
        LowResolution(zoom_range=(0.5, 1.0), p_per_channel=0.5, p=0.25),
        Gamma(gamma_range=(0.7, 1.5), invert=True, p=0.1),
        Gamma(gamma_range=(0.7, 1.5), invert=False, p=0.3),
        A.VerticalFlip(p=0.5),
        A.HorizontalFlip(p=0.5),
    ]
