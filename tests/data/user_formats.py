"""Generated datasets in every format users bring, with the quirks of real releases.

Each writer returns the folder and the expected class-id masks per case (computed here from the
drawing, independently of vmbench's decoders), so tests compare what vmbench reads with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = [(48, 64), (60, 40), (52, 52), (40, 72), (64, 56), (44, 60)]  # (height, width): varied per image


def disc(h: int, w: int, seed: int, radius: float = 0.3) -> np.ndarray:
    """A filled ellipse (bool) placed by ``seed``."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.35, 0.65, 2) * (h, w)
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) / (radius * h)) ** 2 + ((xx - cx) / (radius * w)) ** 2 <= 1


def rgb_image(h: int, w: int, seed: int, mask: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    img = rng.integers(20, 90, (h, w, 3), dtype=np.uint8)
    img[mask] = np.clip(img[mask].astype(int) + 120, 0, 255).astype(np.uint8)
    return img


def _cases(n: int, prefix: str = "case"):
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        yield f"{prefix}{i:03d}", h, w, disc(h, w, i)


def folder_png(root: Path, n: int = 10, ubench: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """U-Bench layout: images/*.png, masks/0/*.png {0, 255}; sizes vary."""
    masks_dir = root / "masks" / "0" if ubench else root / "masks"
    (root / "images").mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    truth = {}
    for case, h, w, m in _cases(n):
        Image.fromarray(rgb_image(h, w, len(truth), m)).save(root / "images" / f"{case}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(masks_dir / f"{case}.png")
        truth[case] = m.astype(np.uint8)
    return root, truth


def folder_jpeg(root: Path, n: int = 8) -> tuple[Path, dict[str, np.ndarray]]:
    """Kvasir-SEG-like: JPEG images and 3-channel lossy JPEG masks (values near 0 and 255)."""
    for d in ("images", "masks"):
        (root / d).mkdir(parents=True)
    truth = {}
    for case, h, w, m in _cases(n):
        Image.fromarray(rgb_image(h, w, len(truth), m)).save(root / "images" / f"{case}.jpg", quality=90)
        rgb = np.repeat((m * 255).astype(np.uint8)[:, :, None], 3, axis=2)
        Image.fromarray(rgb).save(root / "masks" / f"{case}.jpg", quality=75)
        truth[case] = m.astype(np.uint8)
    return root, truth


def folder_bmp(root: Path, n: int = 6) -> tuple[Path, dict[str, np.ndarray]]:
    """1-bit BMP masks, one odd one saved as 24-bit RGB {0, 255}; BMP images."""
    for d in ("images", "masks"):
        (root / d).mkdir(parents=True)
    truth = {}
    for i, (case, h, w, m) in enumerate(_cases(n)):
        Image.fromarray(rgb_image(h, w, i, m)).save(root / "images" / f"{case}.bmp")
        if i == 2:
            Image.fromarray(np.repeat((m * 255).astype(np.uint8)[:, :, None], 3, axis=2)).save(root / "masks" / f"{case}.bmp")
        else:
            Image.fromarray(m).convert("1").save(root / "masks" / f"{case}.bmp")
        truth[case] = m.astype(np.uint8)
    return root, truth


def folder_tiff(root: Path, n: int = 6) -> tuple[Path, dict[str, np.ndarray]]:
    """TIFF frames, one RGB written with three samples under MinIsBlack photometry (Pillow refuses
    it); masks as _mask.png files."""
    import tifffile

    for d in ("images", "masks"):
        (root / d).mkdir(parents=True)
    truth = {}
    for i, (case, h, w, m) in enumerate(_cases(n)):
        img = rgb_image(h, w, i, m)
        if i == 0:
            tifffile.imwrite(root / "images" / f"{case}.tif", img, photometric="minisblack", planarconfig="contig")
        else:
            tifffile.imwrite(root / "images" / f"{case}.tif", img, photometric="rgb")
        Image.fromarray((m * 255).astype(np.uint8)).save(root / "masks" / f"{case}_mask.png")
        truth[case] = m.astype(np.uint8)
    return root, truth


def folder_grey(root: Path, n: int = 6) -> tuple[Path, dict[str, np.ndarray]]:
    """BUSI-like: greyscale (mode L) images, one 16-bit, with RGB masks whose channels are equal."""
    for d in ("images", "masks"):
        (root / d).mkdir(parents=True)
    truth = {}
    for i, (case, h, w, m) in enumerate(_cases(n)):
        grey = rgb_image(h, w, i, m)[:, :, 0]
        if i == 1:
            Image.fromarray(grey.astype(np.uint16) * 257).save(root / "images" / f"{case}.png")  # 16-bit
        else:
            Image.fromarray(grey).save(root / "images" / f"{case}.png")
        Image.fromarray(np.repeat((m * 255).astype(np.uint8)[:, :, None], 3, axis=2)).save(root / "masks" / f"{case}.png")
        truth[case] = m.astype(np.uint8)
    return root, truth


def folder_multiclass(root: Path, n: int = 10, values=(0, 1, 2), test: int = 3,
                      palette: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
    """Multi-class PNG masks of pixel values ``values`` (classes 0..len-1), with imagesTs/labelsTs."""
    for d in ("images", "masks", "imagesTs", "labelsTs"):
        (root / d).mkdir(parents=True)
    truth = {}
    for i, (case, h, w, m) in enumerate(_cases(n + test)):
        ids = m.astype(np.uint8) + (disc(h, w, i + 50, 0.12) & m)  # class 2 inside class 1
        ids = np.minimum(ids, len(values) - 1).astype(np.uint8)
        pixels = np.asarray(values, dtype=np.uint8)[ids]
        image_dir, mask_dir = ("images", "masks") if i < n else ("imagesTs", "labelsTs")
        Image.fromarray(rgb_image(h, w, i, m)).save(root / image_dir / f"{case}.png")
        mask = Image.fromarray(pixels)
        if palette:
            mask = mask.convert("P")
            mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
        mask.save(root / mask_dir / f"{case}.png")
        truth[case] = ids
    return root, truth


def nnunet_2d(root: Path, n: int = 10, test: int = 2, splits: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """nnU-Net v2 raw: dataset.json, imagesTr/{case}_0000.png (RGB in one file), labelsTr/{case}.png."""
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / d).mkdir(parents=True)
    truth = {}
    for i, (case, h, w, m) in enumerate(_cases(n + test, prefix="road_")):
        ids = (m.astype(np.uint8) + (disc(h, w, i + 50, 0.12) & m)).astype(np.uint8)
        image_dir, label_dir = ("imagesTr", "labelsTr") if i < n else ("imagesTs", "labelsTs")
        Image.fromarray(rgb_image(h, w, i, m)).save(root / image_dir / f"{case}_0000.png")
        Image.fromarray(ids).save(root / label_dir / f"{case}.png")
        truth[case] = ids
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "rgb"},  # RGB natural images: three channels in one _0000 file
        "labels": {"background": 0, "road": 1, "lane": 2},
        "numTraining": n, "file_ending": ".png",
    }))
    if splits:
        train_ids = sorted(c for c in truth if c in {f"road_{i:03d}" for i in range(n)})
        folds = [{"train": [c for j, c in enumerate(train_ids) if j % 5 != k],
                  "val": [c for j, c in enumerate(train_ids) if j % 5 == k]} for k in range(5)]
        (root / "splits_final.json").write_text(json.dumps(folds))
    return root, truth


def nnunet_3d(root: Path, n: int = 5, test: int = 1, ending: str = ".nii.gz") -> tuple[Path, dict[str, np.ndarray]]:
    """nnU-Net v2 raw with 3D NIfTI volumes (CT-like, one channel); truth as (D, H, W) class ids."""
    import nibabel as nib

    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / d).mkdir(parents=True)
    truth = {}
    for i in range(n + test):
        case, depth = f"liver_{i:03d}", 4 + i % 3
        h, w = SIZES[i % len(SIZES)]
        label = np.stack([disc(h, w, i) * (1 + (disc(h, w, i + 50, 0.12) & disc(h, w, i))) for _ in range(depth)])
        label[0] = 0  # an empty slice at the top, as volumes have
        rng = np.random.default_rng(i)
        image = rng.normal(-100, 30, label.shape) + 150.0 * (label > 0)
        image_dir, label_dir = ("imagesTr", "labelsTr") if i < n else ("imagesTs", "labelsTs")
        affine = np.diag([0.8, 0.8, 2.5, 1.0])
        # NIfTI axes are (x, y, z): (D, H, W) -> (W, H, D)
        nib.save(nib.Nifti1Image(np.transpose(image, (2, 1, 0)).astype(np.float32), affine),
                 root / image_dir / f"{case}_0000{ending}")
        nib.save(nib.Nifti1Image(np.transpose(label, (2, 1, 0)).astype(np.uint8), affine),
                 root / label_dir / f"{case}{ending}")
        truth[case] = label.astype(np.int64)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": n,
        "file_ending": ending,
    }))
    return root, truth
