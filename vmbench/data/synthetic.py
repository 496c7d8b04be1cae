"""Generated stand-ins for ISIC and Synapse: real (if easy) learning problems, same file layouts.

Both generators are deterministic: the same arguments give byte-identical files (JPEG/PNG through
Pillow, NIfTI gzipped with a zero timestamp). Each image or case draws from its own generator keyed
by (seed, index or case number), so a larger ``n`` adds samples without changing the first ones
(their ids and pixels; which split an image falls in depends on ``n``).

``synth_isic``     dermoscopy-like RGB images with one lesion (irregular border from radial Fourier
                   noise on a polar radius plus fine boundary noise, sometimes a satellite blob),
                   skin colour and texture, darker lesion with mottling, globules and a soft edge,
                   hair-like dark curves over lesion and skin, vignetting, sometimes the dark
                   corners of a dermoscope, noise; sizes 200-320 px per side. Masks 0/255 PNG of
                   the image's size. Written in the ISIC challenge layout (2017 or 2018 names,
                   Training/Validation/Test = 70/10/20, with the superpixel, CSV, ATTRIBUTION and
                   LICENSE distractors of the real archives) or the VM-UNet prepared layout (7:3).
``synth_synapse``  abdominal-CT-like volumes in Hounsfield units, raw BTCV style
                   (``img0005.nii.gz`` / ``label0005.nii.gz`` with the official case ids): a body
                   ellipse with fat, muscle wall, spine and unlabelled bowel loops, and BTCV organ
                   ids 1, 2, 3, 4, 6, 7, 8, 11 (the 8 kept organs) plus 5, 9, 12 (esophagus, IVC,
                   right adrenal: dropped by the remap) at plausible relative positions and z
                   ranges (so some slices lack some organs), with texture, deformed shapes and
                   noise. The affine carries a voxel spacing. ``prepare_synapse`` turns them into
                   the TransUNet layout.

``synthetic_isic_root`` / ``synthetic_synapse_root`` generate into the cache folder
(``$VMBENCH_CACHE`` or ``~/.cache/vmbench``), in a subfolder keyed by generator version, size and
seed, on first use; generation happens in a temporary folder renamed when complete.
"""

from __future__ import annotations

import gzip
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from vmbench.data.common import atomic_dir, cache_dir
from vmbench.data.errors import DataError
from vmbench.data.isic import CHALLENGE_FOLDERS, ISIC_DATASET_INFO, build_isic
from vmbench.data.synapse import (
    HOLDOUT_VAL_CASES,
    PAPER_TEST_CASES,
    PAPER_TRAIN_CASES,
    SYNAPSE_DATASET_INFO,
    build_synapse,
    prepare_synapse,
)
from vmbench.registry import register_dataset

log = logging.getLogger("vmbench.data")

__all__ = [
    "ISIC_GENERATOR_VERSION",
    "SYNAPSE_GENERATOR_VERSION",
    "SYNTH_CASE_ORDER",
    "synth_isic",
    "synth_synapse",
    "synthetic_isic_root",
    "synthetic_synapse_root",
]

ISIC_GENERATOR_VERSION = 1
SYNAPSE_GENERATOR_VERSION = 1


def _check_empty(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output folder {out_dir} is a file")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"output folder {out_dir} already exists and is not empty: choose an empty folder, or replace "
                        "it (--overwrite on the command line, overwrite=True in Python)")


def _progress(items, total: int, desc: str, enabled: bool):
    """A progress bar on a terminal (tqdm hides itself elsewhere); the plain iterable when disabled."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="case" if "Synapse" in desc else "image", leave=False,
                disable=None, dynamic_ncols=True)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-std noise with features about ``cell`` pixels wide."""
    import cv2

    gh, gw = max(2, int(math.ceil(h / cell)) + 1), max(2, int(math.ceil(w / cell)) + 1)
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    n = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return (n - n.mean()) / (n.std() + 1e-6)


# ----------------------------------------------------------------------------------------------
# ISIC


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
    rad *= 1.0 + rng.uniform(0.0, 0.06) * _smooth_noise(rng, h, w, rng.uniform(3.0, 8.0))
    return rad - rho, r0


def _isic_sample(rng: np.random.Generator, size_range: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    h = int(rng.integers(size_range[0], size_range[1] + 1))
    w = int(rng.integers(size_range[0], size_range[1] + 1))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # skin
    skin = np.array([rng.uniform(180, 240), rng.uniform(125, 195), rng.uniform(100, 170)], np.float32)
    low = _smooth_noise(rng, h, w, rng.uniform(25, 70))
    fine = _smooth_noise(rng, h, w, rng.uniform(1.5, 4))
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
    tex = _smooth_noise(rng, h, w, max(2.0, r0 / rng.uniform(3, 8)))
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
    _check_empty(out_dir, overwrite)
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
        samples = _progress(enumerate(zip(ids, which)), n, f"generating ISIC-like images into {out_dir.name}", progress)
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


# ----------------------------------------------------------------------------------------------
# Synapse

# Case ids in generation order: the first five already give every split something (a holdout
# training case, a test case, the three holdout validation cases).
_REST_TRAIN = [c for c in PAPER_TRAIN_CASES if c not in ("case0005", "case0006") + HOLDOUT_VAL_CASES]
_REST_TEST = [c for c in PAPER_TEST_CASES if c not in ("case0001", "case0002")]
SYNTH_CASE_ORDER = ("case0005", "case0001") + HOLDOUT_VAL_CASES + ("case0006", "case0002")
_mix = []
while _REST_TRAIN or _REST_TEST:
    _mix += [_REST_TRAIN.pop(0) for _ in range(2) if _REST_TRAIN]
    _mix += [_REST_TEST.pop(0) for _ in range(1) if _REST_TEST]
SYNTH_CASE_ORDER = SYNTH_CASE_ORDER + tuple(_mix)
del _mix, _REST_TRAIN, _REST_TEST

# BTCV id, centre (y, x) and radii (y, x) in body half-axes (y: +1 posterior/bottom rows, x: +1
# image right = patient left), z range (0 inferior .. 1 superior), HU mean, HU std, shape
# irregularity, tubular. Painted in this order (later ones win where they overlap).
_ORGANS = (
    (6, (-0.05, -0.42), (0.55, 0.42), (0.35, 1.00), 60, 8, 0.10, False),  # liver
    (1, (0.30, 0.60), (0.28, 0.16), (0.50, 0.95), 48, 8, 0.10, False),  # spleen
    (7, (-0.32, 0.30), (0.30, 0.25), (0.55, 0.95), 25, 12, 0.15, False),  # stomach
    (2, (0.42, -0.40), (0.24, 0.13), (0.12, 0.60), 150, 15, 0.06, False),  # right kidney
    (3, (0.42, 0.40), (0.24, 0.13), (0.18, 0.65), 150, 15, 0.06, False),  # left kidney
    (11, (0.08, 0.12), (0.10, 0.36), (0.38, 0.62), 42, 10, 0.15, False),  # pancreas
    (4, (-0.36, -0.30), (0.13, 0.09), (0.38, 0.58), 10, 5, 0.05, False),  # gallbladder
    (12, (0.30, -0.26), (0.06, 0.04), (0.55, 0.72), 30, 8, 0.10, False),  # right adrenal (dropped)
    (9, (0.36, -0.15), (0.08, 0.06), (0.05, 0.95), 110, 8, 0.02, True),  # IVC (dropped)
    (8, (0.46, 0.06), (0.08, 0.055), (0.00, 1.00), 180, 10, 0.02, True),  # aorta
    (5, (0.28, -0.01), (0.055, 0.04), (0.82, 1.00), 35, 8, 0.05, True),  # esophagus (dropped)
)


def _synapse_case(rng: np.random.Generator, size: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """HU (D, H, W) float32 and BTCV label (D, H, W) uint8, rows = posterior-ward."""
    from scipy import ndimage

    D, H, W = depth, size, size
    t = (np.arange(D, dtype=np.float32) / max(D - 1, 1))[:, None, None]
    Y = ((np.arange(H, dtype=np.float32) + 0.5) / H * 2 - 1)[None, :, None]
    X = ((np.arange(W, dtype=np.float32) + 0.5) / W * 2 - 1)[None, None, :]

    y0, x0 = rng.normal(0.03, 0.02), rng.normal(0.0, 0.02)
    by, bx = rng.uniform(0.55, 0.68), rng.uniform(0.80, 0.92)
    sz = 1 + 0.04 * np.sin(2 * math.pi * t * rng.uniform(0.3, 1.0) + rng.uniform(0, 2 * math.pi))
    body_r = np.hypot((Y - y0) / (by * sz), (X - x0) / (bx * sz))
    body = body_r <= 1.0
    tex = rng.standard_normal((D, H, W)).astype(np.float32)
    tex = ndimage.gaussian_filter(tex, (0.7, 1.5, 1.5))
    tex /= tex.std() + 1e-6

    hu = np.full((D, H, W), -1000.0, np.float32)
    hu[body] = -95.0 + 15.0 * tex[body]  # fat
    wall = body & (body_r > 0.88)
    hu[wall] = 45.0 + 10.0 * tex[wall]  # muscle wall
    inner = body & (body_r <= 0.86)

    def ellipse(cy, cx, ry, rx):
        return np.hypot((Y - cy) / ry, (X - cx) / rx)

    # spine and paraspinal muscles (unlabelled)
    sy, sx = y0 + 0.72 * by, x0
    vert = ellipse(sy, sx, 0.13 * by, 0.11 * bx)
    for side in (-1, 1):
        musc = ellipse(sy + 0.04 * by, sx + side * 0.28 * bx, 0.16 * by, 0.17 * bx) <= 1
        hu[musc & inner] = 50.0 + 8.0 * tex[musc & inner]
    hu[(vert <= 1) & inner] = 250.0 + 40.0 * tex[(vert <= 1) & inner]
    hu[(vert <= 1) & (vert > 0.75) & inner] = 600.0
    # bowel loops (unlabelled distractors)
    for _ in range(int(rng.integers(3, 7))):
        cy, cx = y0 + rng.uniform(-0.6, 0.1) * by, x0 + rng.uniform(-0.5, 0.6) * bx
        r = rng.uniform(0.06, 0.13)
        z0 = rng.uniform(0, 0.7)
        z1 = z0 + rng.uniform(0.2, 0.5)
        blob = (ellipse(cy, cx, r * by, r * bx) <= 1) & (t >= z0) & (t <= z1) & inner
        hu[blob] = rng.uniform(0, 40) + 10 * tex[blob]
        if rng.random() < 0.5:
            gas = (ellipse(cy - 0.3 * r * by, cx, 0.4 * r * by, 0.5 * r * bx) <= 1) & (t >= z0) & (t <= z1) & inner
            hu[gas] = -700.0

    label = np.zeros((D, H, W), np.uint8)
    for bid, (oy, ox), (ry, rx), (t0, t1), mean, sd, irreg, tube in _ORGANS:
        cy = y0 + (oy + rng.normal(0, 0.03)) * by
        cx = x0 + (ox + rng.normal(0, 0.03)) * bx
        s = rng.uniform(0.85, 1.15)
        ry_, rx_ = ry * by * s, rx * bx * s * rng.uniform(0.9, 1.1)
        t0_ = float(np.clip(t0 + rng.normal(0, 0.04), 0, 1))
        t1_ = float(np.clip(t1 + rng.normal(0, 0.04), t0_ + 0.08, 1.0))
        span = 2.0 / max(D - 1, 1)  # every organ spans at least 3 slices
        if t1_ - t0_ < span:
            mid = float(np.clip((t0_ + t1_) / 2, span / 2, 1 - span / 2))
            t0_, t1_ = mid - span / 2 - 1e-6, mid + span / 2 + 1e-6
        drift = rng.normal(0, 0.03, 2)
        phases = [
            (irreg * rng.uniform(0.3, 1.0) / k**0.7, rng.uniform(0, 2 * math.pi), rng.normal(0, 1.5))
            for k in range(2, 7)
        ]
        m = mean + rng.normal(0, 5)
        gas_draw = rng.random()
        zs = np.nonzero((t[:, 0, 0] >= t0_) & (t[:, 0, 0] <= t1_))[0]
        if zs.size == 0:
            continue
        z = slice(int(zs[0]), int(zs[-1]) + 1)
        tz = t[z]
        ccy = cy + drift[0] * (tz - 0.5) * 2
        ccx = cx + drift[1] * (tz - 0.5) * 2
        dy, dx = (Y - ccy) / ry_, (X - ccx) / rx_
        rho = np.hypot(dy, dx)
        phi = np.arctan2(dy, dx)
        rad = np.ones_like(rho)
        for k, (a, p0, p1) in zip(range(2, 7), phases):
            rad = rad + a * np.cos(k * phi + p0 + p1 * tz)
        if tube:
            prof = np.ones_like(tz)
        else:
            u = np.clip((tz - t0_) / max(t1_ - t0_, 1e-3), 0, 1)
            prof = np.sqrt(np.clip(np.sin(math.pi * u), 0, None))
        inside = (rho <= rad * prof) & inner[z]
        hu_z, lab_z, tex_z = hu[z], label[z], tex[z]
        hu_z[inside] = m + sd * tex_z[inside]
        lab_z[inside] = bid
        if bid == 7 and gas_draw < 0.6:  # gas in the stomach, still stomach
            gas = inside & (np.hypot((Y - (ccy - 0.5 * ry_)) / (0.35 * ry_), (X - ccx) / (0.6 * rx_)) <= 1)
            hu_z[gas] = -750.0
    hu += rng.normal(0, rng.uniform(6, 15), hu.shape).astype(np.float32)
    return np.clip(hu, -1024, 2000), label


def _nifti_gz_bytes(data_xyz: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(data_xyz, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def synth_synapse(
    out_dir,
    n_cases: int = 30,
    seed: int = 0,
    size: int = 128,
    *,
    slices: Sequence[int] = (16, 40),
    case_ids: Sequence[str] | None = None,
    subfolders: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write ``n_cases`` raw CT-like cases ``img0005.nii.gz`` + ``label0005.nii.gz`` (BTCV ids).

    Case ids follow ``SYNTH_CASE_ORDER`` (the official 18 training and 12 test ids, ordered so that
    a handful of cases already covers every split) unless ``case_ids`` are given. ``subfolders``
    writes ``img/`` and ``label/`` folders instead. In-plane ``size`` x ``size``, a random number of
    slices in ``slices`` (inclusive) per case.
    """
    ids = list(case_ids) if case_ids is not None else list(SYNTH_CASE_ORDER[:n_cases])
    if case_ids is None and n_cases > len(SYNTH_CASE_ORDER):
        raise DataError(f"n_cases={n_cases}: at most {len(SYNTH_CASE_ORDER)} (the official case ids)")
    if not ids:
        raise DataError("n_cases must be at least 1")
    out_dir = Path(out_dir)
    _check_empty(out_dir, overwrite)
    cases = []
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        img_dir, lab_dir = (tmp / "img", tmp / "label") if subfolders else (tmp, tmp)
        img_dir.mkdir(exist_ok=True)
        lab_dir.mkdir(exist_ok=True)
        for cid in _progress(ids, len(ids), f"generating Synapse-like CT into {out_dir.name}", progress):
            num = int(cid.removeprefix("case"))
            rng = np.random.default_rng([seed, num])
            depth = int(rng.integers(slices[0], slices[1] + 1))
            hu, lab = _synapse_case(rng, size, depth)
            sxy = round(float(rng.uniform(0.6, 0.9)) * 512 / size, 4)
            szz = float(rng.choice([2.5, 3.0, 4.0, 5.0]))
            affine = np.array(
                [
                    [-sxy, 0, 0, sxy * size / 2],
                    [0, -sxy, 0, sxy * size / 2],
                    [0, 0, szz, -szz * depth / 2],
                    [0, 0, 0, 1],
                ],
                dtype=np.float64,
            )
            # nibabel arrays are (x, y, z); the generator works in (z, y, x).
            hu_xyz = np.ascontiguousarray(np.round(hu).astype(np.int16).transpose(2, 1, 0))
            lab_xyz = np.ascontiguousarray(lab.transpose(2, 1, 0))
            (img_dir / f"img{num:04d}.nii.gz").write_bytes(_nifti_gz_bytes(hu_xyz, affine))
            (lab_dir / f"label{num:04d}.nii.gz").write_bytes(_nifti_gz_bytes(lab_xyz, affine))
            cases.append({"case": cid, "slices": depth, "spacing": (szz, sxy, sxy)})
    return {"out_dir": out_dir, "cases": cases}


def synthetic_synapse_root(
    n_cases: int = 30, seed: int = 0, size: int = 128, slices: Sequence[int] = (16, 40)
) -> Path:
    """The cached prepared (TransUNet layout) synthetic Synapse folder, generated on first use.

    Raw volumes go to ``<key>/raw`` and the prepared files (label mapping "B", so the registered
    class names hold) to ``<key>/Synapse``; both are built in a temporary folder renamed at the end.
    """
    key = f"synapse-g{SYNAPSE_GENERATOR_VERSION}-n{n_cases}-s{seed}-{size}px-z{slices[0]}-{slices[1]}"
    d = cache_dir() / key
    if not (d / "Synapse").is_dir():
        log.info("first use of synthetic-synapse (%d cases, seed %d): generating it into %s", n_cases, seed, d)
        with atomic_dir(d, overwrite=d.exists()) as tmp:
            synth_synapse(tmp / "raw", n_cases=n_cases, seed=seed, size=size, slices=slices, progress=True)
            prepare_synapse(tmp / "raw", tmp / "Synapse", mapping="B")
    return d / "Synapse"


# ----------------------------------------------------------------------------------------------
# Registered datasets


@register_dataset(
    "synthetic-isic",
    **ISIC_DATASET_INFO,
    description=(
        "Generated dermoscopy-like lesions in the ISIC2018 challenge layout (root=None generates "
        "into the vmbench cache); same loader, splits and protocols as isic2018."
    ),
)
def synthetic_isic(
    root=None,
    split="train",
    protocol="holdout",
    img_size=(256, 256),
    augment=None,
    seed=0,
    *,
    n: int = 200,
    data_seed: int = 0,
    layout: str = "challenge",
    year: int = 2018,
    **kwargs,
):
    if root is None:
        root = synthetic_isic_root(n=n, seed=data_seed, layout=layout, year=year)
    return build_isic(root, split, protocol, img_size, augment, seed, year=year, name="synthetic-isic", **kwargs)


@register_dataset(
    "synthetic-synapse",
    **SYNAPSE_DATASET_INFO,
    description=(
        "Generated abdominal-CT-like volumes with the official Synapse case ids, prepared into the "
        "TransUNet layout (root=None generates into the vmbench cache); organ ids follow mapping (B) "
        "by construction. Same loader, splits and protocols as synapse."
    ),
)
def synthetic_synapse(
    root=None,
    split="train",
    protocol="holdout",
    img_size=(224, 224),
    augment=None,
    seed=0,
    *,
    n_cases: int = 30,
    data_seed: int = 0,
    size: int = 128,
    slices: Sequence[int] = (16, 40),
    **kwargs,
):
    if root is None:
        root = synthetic_synapse_root(n_cases=n_cases, seed=data_seed, size=size, slices=tuple(slices))
    return build_synapse(root, split, protocol, img_size, augment, seed, name="synthetic-synapse", **kwargs)
