"""The generated Synapse stand-in: abdominal-CT-like volumes in the raw BTCV layout, then prepared.

See :mod:`vmbench.data.synthetic` for what the volumes look like and how generation is keyed.
"""

from __future__ import annotations

import gzip
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from vmbench.data.common import atomic_dir, cache_dir, check_empty_output, progress_bar
from vmbench.errors import DataError
from vmbench.data.synapse import HOLDOUT_VAL_CASES, PAPER_TEST_CASES, PAPER_TRAIN_CASES
from vmbench.data.synapse_prepare import prepare_synapse

log = logging.getLogger("vmbench.data")

__all__ = ["SYNAPSE_GENERATOR_VERSION", "SYNTH_CASE_ORDER", "synth_synapse", "synthetic_synapse_root"]

SYNAPSE_GENERATOR_VERSION = 1


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
    check_empty_output(out_dir, overwrite)
    cases = []
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        img_dir, lab_dir = (tmp / "img", tmp / "label") if subfolders else (tmp, tmp)
        img_dir.mkdir(exist_ok=True)
        lab_dir.mkdir(exist_ok=True)
        for cid in progress_bar(ids, len(ids), f"generating Synapse-like CT into {out_dir.name}", progress, "case"):
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
