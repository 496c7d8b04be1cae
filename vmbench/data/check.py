"""``vmbench data check``: a dataset folder's integrity and fingerprint before any training.

Modelled on nnU-Net's integrity check (MIC-DKFZ/nnUNet@0e495086,
``nnunetv2/experiment_planning/verify_dataset_integrity.py``: every case has all channels and a
label, geometries match, label values are those declared) and its dataset fingerprint (sizes,
intensities, class frequencies), plus what redistributed 2D releases get wrong: lossy JPEG masks,
swapped image/mask folders, the same image in training and test data, empty masks.

Errors stop a training (exit 2 on the command line); warnings do not.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vmbench.data.folder import ClassMap, Pair, choose_split, map_mask
from vmbench.data.imagefiles import load_image, load_mask, read_pixels
from vmbench.data.user import detect_format, is_volumes, load_layout
from vmbench.errors import DataError

__all__ = ["CheckReport", "check_dataset"]

MAX_LISTED = 4  # files named per finding (one screen)
SWAP_DISTINCT = 32  # a "mask" with more distinct values than this looks like an image


@dataclass
class CheckReport:
    root: Path
    format: str
    classes: ClassMap | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def lines(self) -> list[str]:
        out = [f"{self.root} ({self.format})"]
        if self.classes is not None:
            mapping = ", ".join(f"{v}->{n}" for n, v in zip(self.classes.names, self.classes.values))
            out.append(f"  classes: {mapping}")
        fp = self.fingerprint
        if fp:
            out.append(f"  pairs: {fp['pairs']} ({', '.join(f'{k} {v}' for k, v in fp['splits'].items())})")
            sizes = ", ".join(f"{h}x{w} ({n})" for (h, w), n in fp["sizes"][:4])
            more = f", ... {fp['distinct_sizes']} sizes" if fp["distinct_sizes"] > 4 else ""
            out.append(f"  sizes (HxW): {sizes}{more}; height {fp['height'][0]}..{fp['height'][1]}, "
                       f"width {fp['width'][0]}..{fp['width'][1]}")
            if fp.get("volumes"):
                out.append(f"  intensity (raw voxel values): mean {fp['mean'][0]:.1f}, std {fp['std'][0]:.1f}")
            else:
                out.append(f"  intensity (0-255, R/G/B): mean {_triple(fp['mean'])}, std {_triple(fp['std'])}")
            fractions = ", ".join(f"{n} {100 * f:.1f}%" for n, f in fp["foreground"].items())
            out.append(f"  foreground per class (pixels): {fractions}; images containing each: "
                       + ", ".join(f"{n} {c}" for n, c in fp["images_with"].items()))
        out += [f"  note: {n}" for n in self.notes]
        out += [f"  warning: {w}" for w in self.warnings]
        out += [f"  error: {e}" for e in self.errors]
        out.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        # Files are named relative to the folder of the first line (one screen, still unambiguous).
        return [out[0], *(line.replace(f"{self.root}/", "") for line in out[1:])]


def _triple(values) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _listed(paths) -> str:
    paths = [str(p) for p in paths]
    shown = ", ".join(paths[:MAX_LISTED])
    return shown + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")


def check_dataset(root: str | Path, fmt: str | None = None, labels=None, split_seed: int = 0) -> CheckReport:
    """Check the dataset folder ``root`` (read as ``fmt``, detected when None)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    fmt = fmt or detect_format(root)
    report = CheckReport(root, fmt)
    try:
        layout, declared, cv_folds = load_layout(root, fmt)
    except DataError as err:
        report.errors.append(str(err))
        return report
    if layout.unmatched:
        report.errors.append(f"{len(layout.unmatched)} file(s) without a partner (image without mask or mask without "
                             f"image, matched by stem): {_listed(layout.unmatched)}")
    pairs = layout.train + layout.test
    test_ids = {p.id for p in layout.test}
    if is_volumes(root, fmt):
        _check_volumes(report, layout, declared, cv_folds, split_seed)
        return report

    # Read every pair once: raw mask values, sizes, hashes, intensities.
    values: dict[int, list[Path]] = {}
    read: list[tuple[Pair, np.ndarray, np.ndarray]] = []
    unreadable, mismatched, thresholded, swapped, via_tifffile = [], [], [], [], []
    decoded: Counter = Counter()
    hashes: dict[str, list[str]] = {}
    sums, squares, pixel_count = np.zeros(3), np.zeros(3), 0
    for pair in pairs:
        try:
            image = _image(pair)
            raw, how = load_mask(pair.mask)
        except DataError as err:
            unreadable.append(str(err))
            continue
        if image.shape[:2] != raw.shape:
            mismatched.append(f"{pair.mask} {raw.shape[1]}x{raw.shape[0]} vs image {image.shape[1]}x{image.shape[0]}")
            continue
        decoded[how] += 1
        if _pillow_refuses(pair.images[0]):
            via_tifffile.append(pair.images[0])
        if how.startswith("jpeg-threshold"):
            thresholded.append(pair.mask)
            distinct = len(np.unique(read_pixels(pair.mask)[0]))
        else:
            distinct = len(np.unique(raw))
        if distinct > SWAP_DISTINCT and len(np.unique(image)) <= 8:
            swapped.append(pair.id)
        for v in np.unique(raw):
            values.setdefault(int(v), []).append(pair.mask)
        hashes.setdefault(hashlib.sha256(image.tobytes() + str(image.shape).encode()).hexdigest(), []).append(pair.id)
        flat = image.reshape(-1, 3).astype(np.float64)
        sums += flat.sum(0)
        squares += (flat ** 2).sum(0)
        pixel_count += flat.shape[0]
        read.append((pair, image, raw))
    for line in unreadable[:MAX_LISTED]:
        report.errors.append(line)
    if len(unreadable) > MAX_LISTED:
        report.errors.append(f"... and {len(unreadable) - MAX_LISTED} more unreadable or ambiguous files")
    if mismatched:
        report.errors.append(f"{len(mismatched)} mask(s) of another size than their image: {_listed(mismatched)}")
    if swapped:
        report.errors.append(f"image and mask folders look swapped: the 'masks' of {_listed(swapped)} have many "
                             f"distinct values (> {SWAP_DISTINCT}) and their 'images' few")
    for how, text in (("equal-channels", "RGB masks with three equal channels, read as one"),
                      ("1-bit", "1-bit masks, read as {0, 255}"),
                      ("alpha", "masks in an alpha channel")):
        if decoded[how]:
            report.notes.append(f"{decoded[how]} {text}")
    if via_tifffile:
        report.notes.append(f"{len(via_tifffile)} TIFF image(s) Pillow refuses, read with tifffile: {_listed(via_tifffile)}")
    if thresholded:
        report.notes.append(f"{len(thresholded)} lossy JPEG mask(s) thresholded at 128 to {{0, 255}} "
                            f"(compression spreads their values): {_listed(thresholded)}")

    # Classes: declared (labels, dataset.json) or inferred from the values found.
    try:
        if labels is not None:
            classes = ClassMap.from_option(labels, "labels")
        elif declared is not None:
            classes = declared
        else:
            classes = ClassMap.from_values(set(values), f"{root}: masks")
    except DataError as err:
        report.errors.append(str(err))
        classes = None
    report.classes = classes
    if classes is not None:
        undeclared = sorted(set(values) - set(classes.values))
        if undeclared and not (classes.binary and thresholded and set(undeclared) <= {255}):
            files = sorted({p for v in undeclared for p in values[v]})
            report.errors.append(f"mask values {undeclared[:6]} belong to no class: {_listed(files)}")

    # Identical images: across splits an error (test leaks into training), within one a warning.
    split_of = _splits(layout, cv_folds, split_seed, report)
    for ids in hashes.values():
        if len(ids) > 1:
            splits = {split_of.get(i, "?") for i in ids}
            if "test" in splits and len(splits) > 1:
                report.errors.append(f"identical images in test and training data: {_listed(sorted(ids))}")
            else:
                report.warnings.append(f"identical images: {_listed(sorted(ids))}")

    empty = [pair.id for pair, _, raw in read if not np.any(raw)]
    if empty:
        report.warnings.append(f"{len(empty)} empty mask(s) (background only): {_listed(empty)}")
    report.fingerprint = _fingerprint(read, classes, split_of, sums, squares, pixel_count, test_ids)
    if classes is not None:
        for name, n in report.fingerprint["images_with"].items():
            if n == 0:
                report.warnings.append(f"class {name!r} appears in no mask")
            elif report.fingerprint["foreground"][name] < 0.001:
                report.warnings.append(f"class {name!r} covers under 0.1% of the pixels (imbalanced; consider a Dice loss)")
    return report


def _pillow_refuses(path: Path) -> bool:
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError):
        return True
    return False


def _image(pair: Pair) -> np.ndarray:
    if len(pair.images) == 1:
        return load_image(pair.images[0])
    channels = [load_image(p)[:, :, 0] for p in pair.images]
    sizes = {c.shape for c in channels}
    if len(sizes) > 1:
        raise DataError(f"{pair.images[0]}: the channel files of case {pair.id} differ in size {sorted(sizes)}")
    return np.stack((channels * 3)[:3] if len(channels) == 1 else channels[:3], axis=2)


def _splits(layout, cv_folds, split_seed: int, report: CheckReport) -> dict[str, str]:
    """Case id -> the split the holdout protocol gives it (as training will use it)."""
    split_of, sources = {}, {}
    for split in ("train", "val", "test"):
        try:
            chosen, source = choose_split(layout.train, layout.test, split, "holdout", split_seed, None, 5,
                                          layout.splits_file, cv_folds)
        except DataError as err:
            report.errors.append(f"split {split}: {err}")
            continue
        split_of.update({p.id: split for p in chosen})
        sources.setdefault(source, []).append(split)
    if sources:
        report.notes.append("splits: " + "; ".join(f"{'/'.join(splits)} from {source}" for source, splits in sources.items()))
    return split_of


def _fingerprint(read, classes, split_of, sums, squares, n, test_ids) -> dict:
    sizes = Counter(raw.shape for _, _, raw in read)
    heights = [s[0] for s in sizes] or [0]
    widths = [s[1] for s in sizes] or [0]
    mean = sums / max(n, 1)
    std = np.sqrt(np.maximum(squares / max(n, 1) - mean ** 2, 0))
    foreground, images_with = {}, {}
    if classes is not None:
        table = classes.lookup()
        counts = np.zeros(classes.num_classes, dtype=np.int64)
        present = np.zeros(classes.num_classes, dtype=np.int64)
        total = 0
        for pair, _, _raw in read:
            try:
                ids = map_mask(pair.mask, classes, table)
            except DataError:
                continue  # reported above as values of no class
            binc = np.bincount(ids.ravel(), minlength=classes.num_classes)[: classes.num_classes]
            counts += binc
            present += binc > 0
            total += ids.size
        for k, name in enumerate(classes.names[1:], start=1):
            foreground[name] = float(counts[k] / max(total, 1))
            images_with[name] = int(present[k])
    return {
        "pairs": len(read),
        "splits": {s: n for s in ("train", "val", "test", "?")
                   if (n := sum(split_of.get(p.id, "?") == s for p, _, _ in read))},
        "sizes": sizes.most_common(),
        "distinct_sizes": len(sizes),
        "height": (min(heights), max(heights)),
        "width": (min(widths), max(widths)),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "foreground": foreground,
        "images_with": images_with,
    }


def _check_volumes(report: CheckReport, layout, classes: ClassMap, cv_folds, split_seed: int) -> None:
    """nnU-Net 3D: geometry of each image/label pair, label values against dataset.json, leaks."""
    import nibabel as nib

    report.classes = classes
    split_of = _splits(layout, cv_folds, split_seed, report)
    shapes, hashes, empty = Counter(), {}, []
    counts = np.zeros(classes.num_classes, dtype=np.int64)
    present = np.zeros(classes.num_classes, dtype=np.int64)
    total, sums, squares, n = 0, 0.0, 0.0, 0
    for pair in layout.train + layout.test:
        if len(pair.images) != 1:
            report.errors.append(f"{pair.images[0]}: {len(pair.images)} channels; 3D volumes are read with one")
            continue
        try:
            image = np.asarray(nib.load(str(pair.images[0])).dataobj, dtype=np.float64)
            label = np.asarray(nib.load(str(pair.mask)).dataobj)
        except (OSError, ValueError, nib.filebasedimages.ImageFileError) as err:
            report.errors.append(f"{pair.id}: not a readable NIfTI pair ({err})")
            continue
        if image.shape != label.shape:
            report.errors.append(f"{pair.mask}: shape {label.shape} differs from its image's {image.shape}")
            continue
        values = set(int(v) for v in np.unique(label))
        undeclared = sorted(values - set(classes.values))
        if undeclared:
            report.errors.append(f"{pair.mask}: label values {undeclared[:5]} are not in dataset.json's labels")
            continue
        ids = classes.lookup()[label.astype(np.int64)]
        binc = np.bincount(ids.ravel(), minlength=classes.num_classes)[: classes.num_classes]
        counts += binc
        present += binc > 0
        total += ids.size
        if values <= {0}:
            empty.append(pair.id)
        shapes[tuple(image.shape[::-1])] += 1  # (D, H, W)
        hashes.setdefault(hashlib.sha256(image.tobytes()).hexdigest(), []).append(pair.id)
        sums, squares, n = sums + image.sum(), squares + (image ** 2).sum(), n + image.size
    for ids_ in hashes.values():
        if len(ids_) > 1:
            splits = {split_of.get(i, "?") for i in ids_}
            kind = "error" if "test" in splits and len(splits) > 1 else "warning"
            (report.errors if kind == "error" else report.warnings).append(f"identical volumes: {_listed(sorted(ids_))}")
    if empty:
        report.warnings.append(f"{len(empty)} empty label volume(s): {_listed(empty)}")
    mean = sums / max(n, 1)
    std = float(np.sqrt(max(squares / max(n, 1) - mean ** 2, 0.0)))
    depths = [s[0] for s in shapes] or [0]
    heights = [s[1] for s in shapes] or [0]
    widths = [s[2] for s in shapes] or [0]
    report.notes.append(f"3D volumes (D x H x W): depth {min(depths)}..{max(depths)}; trained as 2D slices, scored per volume")
    report.fingerprint = {
        "pairs": sum(shapes.values()),
        "splits": {s: k for s in ("train", "val", "test") if (k := sum(v == s for v in split_of.values()))},
        "sizes": [((h, w), c) for (_, h, w), c in shapes.most_common()], "distinct_sizes": len(shapes),
        "height": (min(heights), max(heights)), "width": (min(widths), max(widths)),
        "mean": [mean] * 3, "std": [std] * 3, "volumes": True,
        "foreground": {name: float(counts[k] / max(total, 1)) for k, name in enumerate(classes.names[1:], start=1)},
        "images_with": {name: int(present[k]) for k, name in enumerate(classes.names[1:], start=1)},
    }
