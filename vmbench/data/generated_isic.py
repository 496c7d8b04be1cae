"""The generated ISIC stand-in: dermoscopy-like images with one lesion, in the real ISIC layouts.

See :mod:`vmbench.data.synthetic` for what the images look like and how generation is keyed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from vmbench.data.common import atomic_dir, cache_dir, check_empty_output, progress_bar
from vmbench.data.isic_files import CHALLENGE_FOLDERS
from vmbench.errors import DataError

log = logging.getLogger("vmbench.data")

__all__ = ["ISIC_GENERATOR_VERSION", "smooth_noise", "synth_isic", "synthetic_isic_root"]

ISIC_GENERATOR_VERSION = 1


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-std noise with features about ``cell`` pixels wide."""
    import cv2

    gh, gw = max(2, int(math.ceil(h / cell)) + 1), max(2, int(math.ceil(w / cell)) + 1)
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    n = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return (n - n.mean()) / (n.std() + 1e-6)





def _lesion_field(rng, h, w, yy, xx):
    """(signed margin in pixels: >0 inside, r0) of one irregular lesion."""
    cy = h * (0.5 + rng.normal(0.0, 0.08))
    cx = w * (0.5 + rng.normal(0.0, 0.08))
    r0 = rng.uniform(0.10, 0.38) * min(h, w)
    aspect = rng.uniform(0.6, 1.0)
    rot = rng.uniform(0.0, math.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(rot) + dy * math.sin(rot)
    v = (-dx * math.sin(rot) + dy * math.cos(rot)) / aspect
    rho = np.hypot(u, v)
    phi = np.arctan2(v, u)
    irregular = rng.uniform(0.03, 0.3)
    rad = np.ones_like(phi)
    for k in range(2, 14):
        rad += irregular * rng.uniform(0.2, 1.0) / k**0.9 * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    rad = r0 * np.clip(rad, 0.35, None)
    rad *= 1.0 + rng.uniform(0.0, 0.06) * smooth_noise(rng, h, w, rng.uniform(3.0, 8.0))
    return rad - rho, r0


def _isic_sample(rng: np.random.Generator, size_range: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    h = int(rng.integers(size_range[0], size_range[1] + 1))
    w = int(rng.integers(size_range[0], size_range[1] + 1))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # skin
    skin = np.array([rng.uniform(180, 240), rng.uniform(125, 195), rng.uniform(100, 170)], np.float32)
    low = smooth_noise(rng, h, w, rng.uniform(25, 70))
    fine = smooth_noise(rng, h, w, rng.uniform(1.5, 4))
    img = skin * (1 + 0.06 * low[..., None]) + rng.uniform(2, 7) * fine[..., None]

    # lesion (sometimes with a merged satellite)
    margin, r0 = _lesion_field(rng, h, w, yy, xx)
    if rng.random() < 0.2:
        margin2, _ = _lesion_field(rng, h, w, yy, xx)
        margin = np.maximum(margin, margin2)
    mask = margin > 0
    dark = rng.uniform(0.35, 0.85)
    tint = np.array([1.0, rng.uniform(0.65, 0.95), rng.uniform(0.55, 0.9)], np.float32)
    lesion = skin * dark * tint
    tex = smooth_noise(rng, h, w, max(2.0, r0 / rng.uniform(3, 8)))
    core = np.clip(margin / max(r0, 1.0), 0, 1)
    lesion = lesion[None, None, :] * (1 + 0.15 * tex[..., None]) * (1 - rng.uniform(0, 0.35) * core[..., None])
    dots = np.zeros((h, w), np.float32)
    ys, xs = np.nonzero(mask)
    if len(ys):
        for _ in range(int(rng.integers(0, 30))):
            j = int(rng.integers(0, len(ys)))
            cv2.circle(dots, (int(xs[j]), int(ys[j])), int(rng.integers(1, 4)), 1.0, -1, cv2.LINE_AA)
    lesion = lesion * (1 - 0.4 * dots[..., None])
    edge = rng.uniform(1.0, max(1.5, 0.12 * r0))
    alpha = np.clip(margin / edge + 0.5, 0, 1)[..., None]
    img = img * (1 - alpha) + lesion * alpha

    # hair
    hair = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.choice([0, 0, 1, 2, 4, 7, 12]))):
        p = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        theta = rng.uniform(0, 2 * math.pi)
        pts = [p.copy()]
        for _ in range(int(rng.uniform(0.2, 1.0) * max(h, w) / 3)):
            theta += rng.normal(0, 0.06)
            p = p + 3.0 * np.array([math.cos(theta), math.sin(theta)])
            pts.append(p.copy())
        poly = np.round(np.array(pts) * 4).astype(np.int32)  # 2 fractional bits
        cv2.polylines(hair, [poly], False, 255, int(rng.integers(1, 3)), cv2.LINE_AA, shift=2)
    a = hair.astype(np.float32)[..., None] / 255.0 * rng.uniform(0.6, 0.95)
    hair_col = np.full(3, rng.uniform(20, 70), np.float32) * np.array([1.0, 0.9, 0.85], np.float32)
    img = img * (1 - a) + hair_col * a

    # illumination: gradient, vignetting, sometimes the dermoscope's dark rim
    gy, gx = rng.normal(0, 0.06, 2)
    img *= (1 + gy * (yy / h - 0.5) + gx * (xx / w - 0.5))[..., None]
    rr = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)) / math.sqrt(2)
    img *= (1 - rng.uniform(0.0, 0.45) * rr**2)[..., None]
    if rng.random() < 0.25:
        rim = np.clip((rr - rng.uniform(0.75, 0.95)) / 0.05, 0, 1)
        img *= (1 - 0.9 * rim)[..., None]
    img += rng.normal(0, rng.uniform(1.5, 5.0), img.shape)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.4, 1.0))
    rgb = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return rgb, mask.astype(np.uint8) * 255


def _save_image(path: Path, array: np.ndarray, **kw) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, **kw)


def synth_isic(
    out_dir,
    n: int = 200,
    seed: int = 0,
    layout: str = "challenge",
    year: int = 2018,
    *,
    size_range: Sequence[int] = (200, 320),
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write ``n`` generated lesion images + masks in an ISIC layout; returns split counts.

    ``layout="challenge"``: the official archive folders of ``year`` (2017 or 2018), 70/10/20 into
    Training/Validation/Test. ``layout="prepared"``: VM-UNet's ``{train,val}/{images,masks}`` 7:3.
    """
    if layout not in ("challenge", "prepared"):
        raise DataError(f"layout {layout!r} is not 'challenge' or 'prepared'")
    if year not in CHALLENGE_FOLDERS:
        raise DataError(f"year {year!r} is not one of {', '.join(map(str, CHALLENGE_FOLDERS))}")
    if n < 3:
        raise DataError(f"n={n}: need at least 3 images")
    out_dir = Path(out_dir)
    check_empty_output(out_dir, overwrite)
    ids: list[str] = []
    for i in range(n):  # an image's id depends on (seed, i) only
        id_rng = np.random.default_rng([seed, i, 0x15_1C])
        sid = f"ISIC_{int(id_rng.integers(0, 10**7)):07d}"
        while sid in ids:
            sid = f"ISIC_{int(id_rng.integers(0, 10**7)):07d}"
        ids.append(sid)
    if layout == "challenge":
        fr = (0.7, 0.1, 0.2)
        splits = ("train", "val", "test")
    else:
        fr = (0.7, 0.3)
        splits = ("train", "val")
    cuts = np.round(np.cumsum(fr) * n).astype(int)
    which = [splits[int(np.searchsorted(cuts, i, side="right"))] for i in range(n)]
    counts = {s: which.count(s) for s in splits}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        folders = {}
        for s in splits:
            if layout == "challenge":
                img_dir, gt_dir = (tmp / f for f in CHALLENGE_FOLDERS[year][s])
            else:
                img_dir, gt_dir = tmp / s / "images", tmp / s / "masks"
            img_dir.mkdir(parents=True)
            gt_dir.mkdir(parents=True)
            folders[s] = (img_dir, gt_dir)
            if layout == "challenge" and year == 2018:
                for d in (img_dir, gt_dir):
                    (d / "ATTRIBUTION.txt").write_text("Generated by vmbench.data.synthetic (not ISIC data).\n")
                    (d / "LICENSE.txt").write_text("CC0: generated data.\n")
        meta_rows = {s: ["image_id,age_approximate,sex"] for s in splits}
        samples = progress_bar(enumerate(zip(ids, which)), n, f"generating ISIC-like images into {out_dir.name}", progress, "image")
        for i, (sid, s) in samples:
            rgb, mask = _isic_sample(np.random.default_rng([seed, i]), size_range)
            img_dir, gt_dir = folders[s]
            if layout == "challenge":
                _save_image(img_dir / f"{sid}.jpg", rgb, quality=92)
                _save_image(gt_dir / f"{sid}_segmentation.png", mask)
                if year == 2017:
                    sp = (rgb // 64 * 64).astype(np.uint8)  # a stand-in for the superpixel maps
                    _save_image(img_dir / f"{sid}_superpixels.png", sp)
                    meta_rows[s].append(f"{sid},{50 + i % 30},unknown")
            else:
                _save_image(img_dir / f"{sid}.png", rgb)
                _save_image(gt_dir / f"{sid}.png", mask)
        if layout == "challenge" and year == 2017:
            for s in splits:
                img_dir = folders[s][0]
                (img_dir / f"{img_dir.name}_metadata.csv").write_text("\n".join(meta_rows[s]) + "\n")
    return {"out_dir": out_dir, "layout": layout, "year": year, "counts": counts}


def synthetic_isic_root(n: int = 200, seed: int = 0, layout: str = "challenge", year: int = 2018) -> Path:
    """The cached generated ISIC folder for these arguments, generated on first use."""
    d = cache_dir() / f"isic-g{ISIC_GENERATOR_VERSION}-{layout}{year}-n{n}-s{seed}"
    if not d.is_dir():
        log.info("first use of synthetic-isic (n=%d, seed %d): generating it into %s", n, seed, d)
        synth_isic(d, n=n, seed=seed, layout=layout, year=year, progress=True)
    return d
