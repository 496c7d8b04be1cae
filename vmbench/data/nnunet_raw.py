"""nnU-Net v2's raw dataset format, read from its ``dataset.json`` (2D files).

Format (MIC-DKFZ/nnUNet@0e495086, ``documentation/dataset_format.md``): ``DatasetXXX_Name/`` holds
``dataset.json`` (``channel_names``, ``labels`` name -> int, ``numTraining``, ``file_ending``),
``imagesTr/{CASE}_{XXXX}{file_ending}`` (XXXX: the 4-digit channel id of ``channel_names``),
``labelsTr/{CASE}{file_ending}``, optional ``imagesTs/`` (and, by the convention of many
conversions, ``labelsTs/``). RGB natural images hold their three channels in one ``_0000`` file
(``nnunetv2/dataset_conversion/Dataset120_RoadSegmentation.py``). Region labels (name -> list of
ints, for ``regions_class_order``) are refused: vmbench trains one class per pixel.

``splits_final.json`` (a list of ``{"train": [...], "val": [...]}``, one per fold, as
``nnUNet_preprocessed/DatasetXXX/`` holds it) is respected when it sits in the dataset folder:
fold k's val is the validation split (fold 0 under the holdout protocol).

3D NIfTI volumes (.nii.gz, .nii) are trained as 2D slices and scored per volume
(:mod:`vmbench.data.nnunet_volumes`); .nrrd and .mha are refused with one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from vmbench.data.folder import ClassMap, FolderLayout, Pair
from vmbench.data.imagefiles import IMAGE_SUFFIXES
from vmbench.errors import DataError

__all__ = ["VOLUME_ENDINGS", "NnunetInfo", "find_nnunet_layout", "read_dataset_json", "read_splits_final"]

VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".nhdr")
NIFTI_ENDINGS = (".nii.gz", ".nii")  # read with nibabel; the others would need SimpleITK
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class NnunetInfo:
    def __init__(self, path: Path, raw: dict):
        self.path = path
        self.file_ending = raw["file_ending"]
        self.channels = [str(k) for k in sorted(raw["channel_names"], key=int)]
        self.classes = ClassMap.from_option(raw["labels"], f"{path}: labels")
        self.num_training = raw.get("numTraining")
        self.is_3d = self.file_ending.lower() in VOLUME_ENDINGS


def read_dataset_json(root: Path) -> NnunetInfo:
    path = root / "dataset.json"
    try:
        raw = json.loads(path.read_text())
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object")
    for key in ("channel_names", "labels", "file_ending"):
        if key not in raw:
            raise DataError(f"{path}: required key {key!r} is missing (nnU-Net v2 dataset.json)")
    if not isinstance(raw["channel_names"], dict) or not all(str(k).isdigit() for k in raw["channel_names"]):
        raise DataError(f"{path}: channel_names must map channel ids \"0\", \"1\", ... to names")
    ending = str(raw["file_ending"]).lower()
    if ending in VOLUME_ENDINGS and ending not in NIFTI_ENDINGS:
        raise DataError(f"{path}: file_ending {ending}: vmbench reads 3D volumes as NIfTI (.nii.gz, .nii) only; "
                        "convert them (e.g. SimpleITK.WriteImage) or use 2D files (.png, .bmp, .tif)")
    if ending not in IMAGE_SUFFIXES + NIFTI_ENDINGS:
        raise DataError(f"{path}: file_ending {ending!r} is not one of {', '.join(IMAGE_SUFFIXES)}")
    return NnunetInfo(path, raw)


def _cases(image_dir: Path, label_dir: Path | None, info: NnunetInfo) -> tuple[list[Pair], list[Path]]:
    """Cases with every channel file and a label; the files left unmatched."""
    channels: dict[str, dict[str, Path]] = {}
    unmatched: list[Path] = []
    for p in sorted(image_dir.iterdir()):
        if not p.name.lower().endswith(info.file_ending.lower()):
            continue
        stem = p.name[: -len(info.file_ending)]
        m = _CHANNEL.match(stem)
        if not m:
            unmatched.append(p)  # no _XXXX channel suffix
            continue
        channels.setdefault(m["case"], {})[str(int(m["channel"]))] = p
    labels = {}
    if label_dir is not None and label_dir.is_dir():
        labels = {p.name[: -len(info.file_ending)]: p for p in sorted(label_dir.iterdir())
                  if p.name.lower().endswith(info.file_ending.lower())}
    pairs = []
    for case, files in sorted(channels.items()):
        missing = [c for c in info.channels if c not in files]
        if missing or case not in labels:
            unmatched.extend(files.values())
            continue
        pairs.append(Pair(case, tuple(files[c] for c in info.channels), labels[case]))
    unmatched += [p for case, p in labels.items() if case not in channels]
    return pairs, sorted(unmatched)


def find_nnunet_layout(root: str | Path) -> tuple[FolderLayout, NnunetInfo]:
    root = Path(root)
    info = read_dataset_json(root)
    if not (root / "imagesTr").is_dir() or not (root / "labelsTr").is_dir():
        raise DataError(f"{root}: an nnU-Net dataset needs imagesTr/ and labelsTr/ beside dataset.json")
    train, unmatched = _cases(root / "imagesTr", root / "labelsTr", info)
    test: list[Pair] = []
    if (root / "imagesTs").is_dir() and (root / "labelsTs").is_dir():
        test, more = _cases(root / "imagesTs", root / "labelsTs", info)
        unmatched += more
    if not train:
        raise DataError(f"{root}: no case in imagesTr/ has all channels {info.channels} and a label in labelsTr/ "
                        f"(file_ending {info.file_ending})")
    layout = FolderLayout(root, train, test, None, unmatched, root / "imagesTr", root / "labelsTr")
    return layout, info


def read_splits_final(root: Path, ids: set[str]) -> list[dict[str, list[str]]] | None:
    path = root / "splits_final.json"
    if not path.is_file():
        return None
    try:
        folds = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(folds, list) or not all(isinstance(f, dict) and {"train", "val"} <= set(f) for f in folds):
        raise DataError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}}, one per fold")
    for k, fold in enumerate(folds):
        unknown = sorted(set(map(str, fold["train"] + fold["val"])) - ids)
        if unknown:
            raise DataError(f"{path}: fold {k} names case {unknown[0]!r}, which is not in imagesTr/labelsTr")
    return [{"train": sorted(map(str, f["train"])), "val": sorted(map(str, f["val"]))} for f in folds]
