"""Decoding the image and mask files users bring (PNG, JPEG, BMP, TIFF), robustly and by format.

Images become RGB uint8 (H, W, 3): greyscale is replicated, palette expanded, alpha dropped, 1-bit
scaled to {0, 255}, 16-bit and float rescaled by the image's own minimum and maximum.

Masks become integer maps (H, W) of *pixel values* (the dataset maps values to classes):

* greyscale (8/16-bit) and palette files: the values (a palette mask's values are its indices,
  as in PASCAL VOC);
* 1-bit files (BMP masks of some releases): {0, 255}, like an 8-bit {0, 255} mask of the same set;
* RGB with three equal channels (ultrasound releases): one channel;
* an alpha-channel mask (constant colour, varying alpha): the alpha channel; RGBA whose colour
  varies and alpha is constant: the colour (then as RGB);
* lossy JPEG masks: values spread near 0 and 255 by compression, so they are thresholded at
  ``JPEG_THRESHOLD`` (reported by ``vmbench data check``) to {0, 255};
* anything else (colour-coded RGB masks, RGBA with both varying) is refused with one line naming
  the file: guessing a colour-to-class map would train on the wrong classes.

TIFF frames that Pillow refuses (RGB written with PhotometricInterpretation MinIsBlack and three
samples per pixel: Pillow raises ``UnidentifiedImageError``) are read with ``tifffile``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vmbench.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "JPEG_THRESHOLD", "LOSSY_SUFFIXES", "image_size", "is_image_file", "load_image",
           "load_mask", "read_pixels"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
# Midway between the two levels of a {0, 255} mask: JPEG ringing stays well within +-100 of them.
JPEG_THRESHOLD = 128


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_pixels(path: str | Path, draft: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    """The file's pixels as stored (H, W) or (H, W, C) and its Pillow mode ('' when read by tifffile).
    ``draft`` (width, height): a JPEG may be decoded at a reduced scale no smaller than it (libjpeg
    DCT scaling: large photographs decode several times faster)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            if draft is not None and im.format == "JPEG":
                im.draft(im.mode, draft)
            mode = im.mode
            if mode == "1":  # bool array; 1-bit masks mean {0, 255} like their 8-bit siblings
                return np.asarray(im, dtype=np.uint8) * 255, mode
            if mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im).astype(np.uint16), mode
            return np.asarray(im), mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # SyntaxError: broken PNG chunks
        if path.suffix.lower() not in TIFF_SUFFIXES:
            raise DataError(f"{path}: not a readable image ({err})") from None
        pillow_error = err
    return _read_tiff(path, pillow_error), ""


def _read_tiff(path: Path, pillow_error: Exception) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        raise DataError(f"{path}: Pillow cannot read this TIFF ({pillow_error}) and tifffile is not installed "
                        "(pip install tifffile)") from None
    try:
        array = tifffile.imread(path)
    except (ValueError, OSError, tifffile.TiffFileError) as err:
        raise DataError(f"{path}: neither Pillow ({pillow_error}) nor tifffile ({err}) can read it") from None
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) storage
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: expected one 2D frame, got an array of shape {array.shape} (a stack or volume)")
    return array


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    a = array.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


# Pillow modes whose channels are not R, G, B (and alpha): Pillow converts them to RGB itself.
_CONVERT_TO_RGB = ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def load_image(path: str | Path, draft: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3); see the module docstring (``draft``: see :func:`read_pixels`)."""
    from PIL import Image

    path = Path(path)
    pixels, mode = read_pixels(path, draft)
    if mode in _CONVERT_TO_RGB:  # palette images: the colours, not the indices; CMYK JPEGs: their colours
        with Image.open(path) as im:
            if draft is not None and im.format == "JPEG":
                im.draft(im.mode, draft)
            pixels = np.asarray(im.convert("RGB"))
    pixels = _to_uint8(pixels)
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    channels = pixels.shape[2]
    if channels == 1:
        return np.repeat(pixels, 3, axis=2)
    if channels == 2:  # grey + alpha
        return np.repeat(pixels[:, :, :1], 3, axis=2)
    if channels in (3, 4):
        return np.ascontiguousarray(pixels[:, :, :3])
    raise DataError(f"{path}: {channels} channels; expected greyscale, RGB or RGBA")


def load_mask(path: str | Path) -> tuple[np.ndarray, str]:
    """Pixel values (H, W) (uint8 or uint16) and how they were read ('' or e.g. 'alpha',
    'jpeg-threshold-128'); see the module docstring for the rules."""
    path = Path(path)
    pixels, mode = read_pixels(path)
    how = "1-bit" if mode == "1" else ""
    if pixels.ndim == 3:
        pixels, how = _one_channel(path, pixels)
    if path.suffix.lower() in LOSSY_SUFFIXES:
        pixels = np.where(pixels >= JPEG_THRESHOLD, 255, 0).astype(np.uint8)
        how = f"jpeg-threshold-{JPEG_THRESHOLD}"
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.dtype.kind == "f":
        if not np.all(pixels == np.round(pixels)):
            raise DataError(f"{path}: a mask of non-integer values; save masks as integer class values")
        pixels = pixels.astype(np.int64)
    if pixels.dtype.kind in "iu" and pixels.dtype not in (np.uint8, np.uint16):
        if pixels.min() < 0 or pixels.max() > 65535:
            raise DataError(f"{path}: mask values outside 0..65535")
        pixels = pixels.astype(np.uint16)
    return np.ascontiguousarray(pixels), how


def _one_channel(path: Path, pixels: np.ndarray) -> tuple[np.ndarray, str]:
    channels = pixels.shape[2]
    if channels == 1:
        return pixels[:, :, 0], ""
    colour = pixels[:, :, :3] if channels >= 3 else pixels[:, :, :1]
    alpha = pixels[:, :, 3] if channels == 4 else pixels[:, :, 1] if channels == 2 else None
    if alpha is not None:
        colour_varies = bool(np.any(colour != colour.reshape(-1, colour.shape[2])[0]))
        alpha_varies = bool(np.any(alpha != alpha.flat[0]))
        if alpha_varies and colour_varies:
            raise DataError(f"{path}: both colour and alpha vary, so it is ambiguous which one is the mask; "
                            "save the mask as one greyscale channel")
        if alpha_varies:
            return alpha, "alpha"
        pixels = colour
    if pixels.shape[2] == 1:
        return pixels[:, :, 0], ""
    lossy = path.suffix.lower() in LOSSY_SUFFIXES
    first = pixels[:, :, 0]
    if all(np.array_equal(first, pixels[:, :, c]) for c in range(1, pixels.shape[2])):
        return first, "equal-channels"
    if lossy:  # compression perturbs the channels independently: their mean is thresholded next
        return pixels.mean(axis=2).astype(np.uint8), "channel-mean"
    raise DataError(f"{path}: an RGB mask whose channels differ (colour-coded classes?); save masks as one channel "
                    "of class values (a colour-to-class map is not guessed)")


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) read from the header where Pillow can, else from the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (UnidentifiedImageError, OSError):
        pixels, _ = read_pixels(path)
        return int(pixels.shape[0]), int(pixels.shape[1])
