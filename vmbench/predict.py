"""``vmbench predict``: masks for new images and volumes from a trained checkpoint.

Images (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.tif``) get a PNG mask (0/255 for binary
models, class ids otherwise) at their original size. NIfTI volumes (``.nii``, ``.nii.gz``, raw CT
in HU) get a NIfTI label map with the input's affine and header, after the same HU window and
slice-wise inference as the Synapse evaluation. Outputs are written atomically (vmbench.io).
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vmbench.engine import final_logits, model_from_checkpoint, predict_volume, resolve_device
from vmbench.errors import DataError
from vmbench.io import atomic_write, check_output_apart

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Prediction:
    source: Path
    output: Path
    kind: str  # "image" or "volume"
    shape: tuple[int, ...]
    foreground_fraction: float


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(VOLUME_SUFFIXES):
        return "volume"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    raise DataError(
        f"{path}: unsupported input type (images: {', '.join(IMAGE_SUFFIXES)}; volumes: {', '.join(VOLUME_SUFFIXES)})"
    )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", *IMAGE_SUFFIXES, ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _image_preprocessor(preprocess: dict, img_size):
    from vmbench.data.transforms import IsicTransform

    stats = tuple(preprocess["stats"]) if preprocess.get("stats") else None
    return IsicTransform(img_size, augment=False, normalize=preprocess["normalize"], stats=stats)


@torch.no_grad()
def predict_image(model, path: Path, preprocess: dict, img_size, device, threshold: float, task: str) -> np.ndarray:
    import cv2
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            image = np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{path}: cannot read image ({err})") from None
    height, width = image.shape[:2]
    x, _ = _image_preprocessor(preprocess, img_size)(image, np.zeros((height, width), np.uint8), np.random.default_rng(0))
    logits = final_logits(model(torch.from_numpy(x)[None].to(device))).float()
    # Probabilities are resized back to the original size (bilinear), then thresholded.
    if task == "binary":
        prob = torch.sigmoid(logits)[0, 0].cpu().numpy()
        prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
        return (prob >= threshold).astype(np.uint8) * 255
    probs = torch.softmax(logits, dim=1)[0].cpu().numpy().transpose(1, 2, 0)
    probs = cv2.resize(probs, (width, height), interpolation=cv2.INTER_LINEAR)
    return probs.argmax(-1).astype(np.uint8)


def predict_nifti(model, path: Path, out_path: Path, img_size, device) -> tuple[tuple[int, ...], float]:
    import nibabel as nib

    from vmbench.data.synapse_prepare import hu_to_unit, load_nifti

    img, hu = load_nifti(path)  # the reader `vmbench data prepare synapse` uses
    volume = hu_to_unit(hu).transpose(2, 1, 0)  # nibabel (x, y, z) -> (z, y, x), as prepare_synapse
    labels = predict_volume(model, volume, img_size, device).transpose(2, 1, 0).astype(np.uint8)
    header = img.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(labels, img.affine, header)
    # Serialised here rather than by nib.save, which picks the format from the (temporary) file name.
    atomic_write(out_path, gzip.compress(out.to_bytes(), compresslevel=1))
    return labels.shape, float((labels > 0).mean())


def _input_files(inputs) -> list[Path]:
    """Files given, and the supported files of folders given."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES + VOLUME_SUFFIXES))
            if not found:
                raise DataError(f"{item}: folder holds no images or NIfTI volumes")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return files


def _output_paths(kinds: dict[Path, str], out_dir: Path) -> dict[Path, Path]:
    """Where each input's prediction goes; refused when two would go to the same file."""
    out_paths = {p: out_dir / f"{_stem(p)}{'_mask.png' if k == 'image' else '_pred.nii.gz'}" for p, k in kinds.items()}
    by_output: dict[Path, list[Path]] = {}
    for path, out_path in out_paths.items():
        by_output.setdefault(out_path, []).append(path)
    inputs = {p.resolve(): p for p in kinds}
    taken = next((out for out in out_paths.values() if out.resolve() in inputs), None)
    if taken is not None:  # writing it would destroy an input (and read the prediction back as one)
        raise DataError(f"--out {out_dir}: the prediction {taken} would replace the input {inputs[taken.resolve()]}; "
                        "write to another folder")
    clashes = {out: paths for out, paths in by_output.items() if len(paths) > 1}
    if clashes:  # one prediction would overwrite another
        out, paths = next(iter(clashes.items()))
        raise DataError(
            f"{' and '.join(map(str, paths))} would both be written to {out}: rename one, or predict them "
            "into different --out folders"
        )
    return out_paths


def predict_paths(checkpoint, inputs, out_dir, device="auto", threshold: float = 0.5) -> list[Prediction]:
    """Predict every input (files, or folders of supported files) into ``out_dir``."""
    from PIL import Image

    import vmbench

    # An output folder apart from every input folder: predictions never land among the inputs.
    check_output_apart(out_dir, [p for p in map(Path, inputs) if p.is_dir()], "--out", "input folder")
    kinds = {p: _kind(p) for p in _input_files(inputs)}  # check every input before writing anything
    device = resolve_device(device, where="device")
    model, cfg, state = model_from_checkpoint(checkpoint, device)
    trained_on = state.preprocess.get("kind")
    if any(k == "image" for k in kinds.values()) and trained_on != "image":
        raise DataError(f"{checkpoint}: this model was trained on volumes ({cfg.data.name}); give NIfTI volumes")
    if any(k == "volume" for k in kinds.values()) and trained_on != "volume":
        raise DataError(f"{checkpoint}: this model was trained on 2D images ({cfg.data.name}); give images")
    out_paths = _output_paths(kinds, Path(out_dir))
    task = vmbench.dataset_info(cfg.data.name).task
    results = []
    for path, kind in kinds.items():
        out_path = out_paths[path]
        if kind == "image":
            mask = predict_image(model, path, state.preprocess, state.img_size, device, threshold, task)
            png = io.BytesIO()
            Image.fromarray(mask).save(png, format="PNG")
            out_path.parent.mkdir(parents=True, exist_ok=True)  # only once there is something to write
            atomic_write(out_path, png.getvalue())
            results.append(Prediction(path, out_path, kind, mask.shape, float((mask > 0).mean())))
        else:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            shape, fraction = predict_nifti(model, path, out_path, state.img_size, device)
            results.append(Prediction(path, out_path, kind, shape, fraction))
    return results
