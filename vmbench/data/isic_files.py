"""ISIC2017 / ISIC2018 files on disk: the two layouts, the splits, and reading images and masks.

Layouts (detected from ``root``; a root matching neither is an error listing both)
    challenge  the official archives unzipped side by side, e.g. ``ISIC2018_Task1-2_Training_Input/``
               + ``ISIC2018_Task1_Training_GroundTruth/`` (and ``Validation``/``Test``), or the
               ISIC2017 names ``ISIC-2017_Training_Data/`` + ``ISIC-2017_Training_Part1_GroundTruth/``
               (``Validation``, ``Test_v2``). Images ``ISIC_<id>.jpg`` pair with
               ``ISIC_<id>_segmentation.png`` by id. Superpixel PNGs, CSV metadata, ATTRIBUTION and
               LICENSE files are skipped. A folder holding one same-named folder is descended into.
    prepared   VM-UNet / MALUNet / EGE-UNet: ``{train,val}/{images,masks}/*``. Images and masks pair
               by file stem (a mask stem may end in ``_segmentation``). The official ``NPY_datasets``
               pairs them by sorted order; vmbench pairs by name.

Splits
    ``protocol="paper"`` reproduces the published (leaky) split:
        prepared   train = ``train/``; val = test = ``val/`` (``val_is_test = True``; VM-UNet selects
                   its checkpoint on the test set).
        challenge  official training set split 7:3 into train/test (by ``split_seed``); val = test.
    ``protocol="cv"``: the holdout protocol's test split is the test split; its train and val parts
        form the pool that ``folds`` nnU-Net-style folds divide (``vmbench.data.splits``); ``fold``
        picks the one whose val part validates. ``dataset.cv_splits`` lists every fold.
    ``protocol="holdout"`` (default) keeps validation apart from test:
        prepared   val = 20 % of ``train/`` (by ``split_seed``), train = the other 80 %,
                   test = ``val/``.
        challenge  the official Validation and Test folders when both are present (ISIC2017:
                   2000/150/600); otherwise the training set split 70/10/20.
    Seeded splits rank ids by ``sha256(f"{split_seed}|{id}")``: they depend only on the ids and
    ``split_seed`` (default 0, deliberately separate from the training ``seed`` so the test set
    is the same for every seed of an experiment).

Images and masks are decoded by format with the one decoder of every dataset
(:mod:`vmbench.data.imagefiles`): 16-bit and greyscale images are rescaled to RGB uint8, TIFFs that
Pillow refuses are read with tifffile.

Masks
    Pixel values by format, not the official code's ``convert("L")`` (which empties a palette mask
    whose lesion index has a dark colour and fills a mask held in the alpha channel): palette
    indices, the alpha channel of a constant-colour RGBA mask, 1-bit as {0, 255}, RGB with equal
    channels as one channel, lossy JPEG thresholded at 128, 16-bit scaled to 8 bits (65535 -> 255);
    colour-coded or otherwise ambiguous masks are refused naming the file. Then a mask whose values
    are all in {0, 1} or all in {0, 255} is used as is. Anti-aliased masks (some values strictly between 0
    and 255, at most 5 % of the pixels) are thresholded at 128. Anything else (e.g. a photograph
    or a JPEG saved as a mask) is an error naming the file. A mask must have its image's size.

Large challenge JPEGs are decoded at a reduced scale (libjpeg DCT scaling, still at least twice
``img_size``) when ``fast_decode=True`` (default); the mask is then brought to the decoded size
with nearest interpolation before augmentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmbench.data.imagefiles import image_size as height_width
from vmbench.data.imagefiles import load_image, load_mask
from vmbench.data.common import check_split_protocol, split_by_hash
from vmbench.data.splits import check_fold, fold_ids, kfold_splits
from vmbench.errors import DataError, few
from vmbench.protocols import CV, HOLDOUT

__all__ = [
    "CHALLENGE_FOLDERS",
    "Sample",
    "detect_isic_layout",
    "image_size",
    "isic_samples",
    "load_isic_image",
    "load_isic_mask",
    "scan_challenge",
    "scan_prepared",
]

CHALLENGE_FOLDERS = {
    2017: {
        "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
        "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
        "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    },
    2018: {
        "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
        "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
    },
}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
_CHALLENGE_IMAGE = re.compile(r"^(ISIC_\d+)\.(jpe?g|png)$", re.I)
_CHALLENGE_MASK = re.compile(r"^(ISIC_\d+)_segmentation\.png$", re.I)
ANTIALIAS_TOLERANCE = 0.05


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Path


# ----------------------------------------------------------------------------------------------
# Layout discovery and pairing


def _descend(folder: Path) -> Path:
    """``X/X/files`` (an archive unzipped into a folder of its own name) -> ``X/X``."""
    inner = folder / folder.name
    if inner.is_dir():
        return inner
    return folder


def detect_isic_layout(root: Path, year: int | None = None) -> tuple[str, int | None]:
    """``("challenge", year)`` or ``("prepared", None)``; a DataError when ``root`` is neither."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"ISIC data folder {root} does not exist")
    years = [
        y
        for y, folders in CHALLENGE_FOLDERS.items()
        if any((root / f).is_dir() for pair in folders.values() for f in pair)
    ]
    if years and year is not None and year not in years:
        # Never read another year's images under this year's name and normalisation constants.
        found = ", ".join(f"ISIC{y}" for y in years)
        train_image, train_mask = CHALLENGE_FOLDERS[year]["train"] if year in CHALLENGE_FOLDERS else ("?", "?")
        raise DataError(
            f"{root} holds the {found} challenge folders, not ISIC{year}'s ({train_image}/, {train_mask}/): "
            f"point the data root at ISIC{year} data, or use the {found.lower()} dataset (year {years[0]})"
        )
    if years:
        return "challenge", (year if year is not None else years[0])
    if any((root / s / "images").is_dir() or (root / s / "masks").is_dir() for s in ("train", "val")):
        return "prepared", None
    expected = "; ".join(
        f"{y}: {CHALLENGE_FOLDERS[y]['train'][0]}/ + {CHALLENGE_FOLDERS[y]['train'][1]}/" for y in CHALLENGE_FOLDERS
    )
    raise DataError(
        f"{root} is not an ISIC data folder: expected the challenge layout ({expected}; plus "
        f"Validation/Test folders) or the VM-UNet prepared layout (train/images, train/masks, "
        f"val/images, val/masks)"
    )


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"missing folder {path} ({what})")
    return path


def _pair(images: dict[str, Path], masks: dict[str, Path], image_dir: Path, mask_dir: Path) -> list[Sample]:
    if not images:
        raise DataError(f"no images found in {image_dir}")
    if not masks:
        raise DataError(f"no masks found in {mask_dir}")
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise DataError(f"{len(no_mask)} image(s) in {image_dir} have no mask in {mask_dir}: {few(no_mask)}")
    no_image = sorted(set(masks) - set(images))
    if no_image:
        raise DataError(f"{len(no_image)} mask(s) in {mask_dir} have no image in {image_dir}: {few(no_image)}")
    return [Sample(i, images[i], masks[i]) for i in sorted(images)]


def _add_unique(table: dict[str, Path], key: str, path: Path) -> None:
    if key in table:
        raise DataError(f"two files for id {key!r}: {table[key]} and {path}")
    table[key] = path


def scan_challenge(image_dir: Path, mask_dir: Path) -> list[Sample]:
    image_dir, mask_dir = _descend(image_dir), _descend(mask_dir)
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for p in image_dir.iterdir():
        m = _CHALLENGE_IMAGE.match(p.name)
        if m and p.is_file():
            _add_unique(images, m.group(1), p)
    for p in mask_dir.iterdir():
        m = _CHALLENGE_MASK.match(p.name)
        if m and p.is_file():
            _add_unique(masks, m.group(1), p)
    return _pair(images, masks, image_dir, mask_dir)


def scan_prepared(split_dir: Path) -> list[Sample]:
    image_dir = _require_dir(split_dir / "images", "VM-UNet prepared layout")
    mask_dir = _require_dir(split_dir / "masks", "VM-UNet prepared layout")
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for p in image_dir.iterdir():
        if p.suffix.lower() in IMAGE_EXTS and p.is_file() and not p.name.startswith("."):
            _add_unique(images, p.stem, p)
    for p in mask_dir.iterdir():
        if p.suffix.lower() in IMAGE_EXTS and p.is_file() and not p.name.startswith("."):
            stem = p.stem[: -len("_segmentation")] if p.stem.endswith("_segmentation") else p.stem
            _add_unique(masks, stem, p)
    return _pair(images, masks, image_dir, mask_dir)


def isic_samples(
    root: Path, split: str, protocol: str, *, year: int | None = None, split_seed: int = 0,
    fold: int | None = None, folds: int = 5,
) -> tuple[list[Sample], dict]:
    """The samples of one split and a description (layout, year, val_is_test, split_source, cv_splits)."""
    check_split_protocol(split, protocol)
    root = Path(root)
    if protocol == CV:
        return _cv_samples(root, split, year, split_seed, fold, folds)
    layout, found_year = detect_isic_layout(root, year)
    info = {"layout": layout, "year": found_year, "val_is_test": False}
    if layout == "prepared":
        if split == "train" and protocol == "paper":
            samples = scan_prepared(root / "train")
        elif split == "test" or protocol == "paper":  # paper val = test = the "val" folder
            samples = scan_prepared(root / "val")
        else:
            train = scan_prepared(root / "train")
            _require_dir(root / "val", "VM-UNet prepared layout: the test split")
            by_id = {s.id: s for s in train}
            tr, va = split_by_hash(list(by_id), (0.8, 0.2), split_seed)
            samples = [by_id[i] for i in (tr if split == "train" else va)]
        info["val_is_test"] = protocol == "paper"
        info["split_source"] = "train/ and val/ folders" + (", val = test" if protocol == "paper" else "")
    else:
        names = CHALLENGE_FOLDERS[found_year]

        def folder(which: str) -> list[Sample]:
            img, gt = names[which]
            _require_dir(root / img, f"ISIC{found_year} {which} images")
            _require_dir(root / gt, f"ISIC{found_year} {which} ground truth")
            return scan_challenge(root / img, root / gt)

        official = all((root / f).is_dir() for w in ("val", "test") for f in names[w])
        if protocol == "holdout" and official:
            samples = folder(split)
            info["split_source"] = "official Training/Validation/Test folders"
        else:
            train = folder("train")
            by_id = {s.id: s for s in train}
            if protocol == "paper":
                tr, te = split_by_hash(list(by_id), (0.7, 0.3), split_seed)
                parts = {"train": tr, "val": te, "test": te}
                info["val_is_test"] = True
                info["split_source"] = f"official training set split 7:3 (split_seed={split_seed}), val = test"
            else:
                tr, va, te = split_by_hash(list(by_id), (0.7, 0.1, 0.2), split_seed)
                parts = {"train": tr, "val": va, "test": te}
                info["split_source"] = f"official training set split 70/10/20 (split_seed={split_seed})"
            samples = [by_id[i] for i in parts[split]]
    if not samples:
        raise DataError(f"split {split!r} of {root} is empty under protocol {protocol!r}")
    return samples, info


def _cv_samples(root: Path, split: str, year: int | None, split_seed: int, fold, folds) -> tuple[list[Sample], dict]:
    """Protocol cv: the holdout protocol's test split stays the test split; everything else (its train
    and val parts) is the pool that nnU-Net-style folds divide."""
    fold, folds = check_fold(fold, folds)
    test, info = isic_samples(root, "test", HOLDOUT, year=year, split_seed=split_seed)
    if split == "test":
        samples = test
    else:
        pool = {s.id: s for part in ("train", "val") for s in isic_samples(root, part, HOLDOUT, year=year,
                                                                          split_seed=split_seed)[0]}
        samples = [pool[i] for i in fold_ids(list(pool), split, fold, folds)]
        info["cv_splits"] = kfold_splits(list(pool), folds)
    pool_source = info.get("split_source", "")
    info["split_source"] = (
        f"the holdout protocol's test split ({pool_source}), untouched by cross-validation" if split == "test"
        else f"{folds}-fold cross-validation (fold {fold}) over the non-test part of: {pool_source}"
    )
    return samples, info


# ----------------------------------------------------------------------------------------------
# Reading files


def _reason(err: DataError, path: Path) -> str:
    """The decoder's message without its leading ``<path>: `` (the ISIC messages name the file first)."""
    text = str(err)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header (from the pixels for a TIFF that only tifffile reads)."""
    try:
        height, width = height_width(path)
    except DataError as err:
        raise DataError(f"cannot read {path}: {_reason(err, Path(path))}") from None
    return width, height


def load_isic_image(path: Path, draft: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB uint8 (H, W, 3) and the file's full (width, height), decoded by format as every user
    dataset is (:mod:`vmbench.data.imagefiles`: 16-bit images rescaled, not clipped to white)."""
    try:
        height, width = height_width(path)  # the header: a JPEG decoded at a reduced scale is smaller
        arr = load_image(path, draft)
    except DataError as err:
        raise DataError(f"cannot read image {path}: {_reason(err, Path(path))}") from None
    return arr, (width, height)


def load_isic_mask(path: Path) -> np.ndarray:
    """uint8 (H, W) with values {0, 1}; see the module docstring for what is accepted."""
    try:
        # By format (palette indices, the alpha channel, 1-bit, equal RGB channels, lossy JPEG
        # thresholded): a grey conversion would empty a dark-coloured palette lesion and fill an
        # alpha mask. What is ambiguous is refused there.
        m, _ = load_mask(path)
    except DataError as err:
        raise DataError(f"cannot read mask {path}: {_reason(err, Path(path))}") from None
    if m.dtype == np.uint16 and m.max() > 255:
        # A 16-bit mask spans 0..65535: scaled to 8 bits (65535 -> 255), never clipped.
        m = np.round(m / 257.0).astype(np.uint8)
    values = np.unique(m)
    if values.size and values.max() <= 1:
        return m.astype(np.uint8)
    odd = (m != 0) & (m != 255)
    frac = float(odd.mean())
    if frac == 0.0:
        return (m > 127).astype(np.uint8)
    if frac <= ANTIALIAS_TOLERANCE:
        return (m >= 128).astype(np.uint8)
    raise DataError(
        f"mask {path} is not binary: values {few(values.tolist(), 8)}; {frac:.1%} of its pixels are "
        f"neither 0 nor 255 (expected {{0, 255}} or {{0, 1}}, anti-aliased edges up to "
        f"{ANTIALIAS_TOLERANCE:.0%} of the pixels)"
    )
