"""Prediction overlays (PNG) for MLflow: ground truth in green, prediction in red, overlap yellow."""

from __future__ import annotations

import io

import numpy as np
import torch


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Any normalised (C, H, W) or (H, W) array -> RGB uint8 by per-image min-max."""
    if image.ndim == 3:
        image = image[:3].transpose(1, 2, 0) if image.shape[0] in (1, 3) else image
        if image.shape[-1] == 1:
            image = image[..., 0]
    lo, hi = float(image.min()), float(image.max())
    scaled = np.zeros_like(image, dtype=np.float32) if hi <= lo else (image - lo) / (hi - lo)
    rgb = (scaled * 255).astype(np.uint8)
    return np.stack([rgb] * 3, -1) if rgb.ndim == 2 else rgb


def overlay_png(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> bytes:
    """One PNG: the image with truth (green) and prediction (red) foreground blended in."""
    from PIL import Image

    rgb = _to_uint8(image).astype(np.float32)
    colour = np.zeros_like(rgb)
    colour[..., 1] = (truth > 0) * 255
    colour[..., 0] = (prediction > 0) * 255
    mask = ((truth > 0) | (prediction > 0))[..., None]
    blended = np.where(mask, 0.55 * rgb + 0.45 * colour, rgb).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG")
    return buffer.getvalue()


@torch.no_grad()
def overlays_for(model, dataset, device, img_size, count: int = 4) -> list[tuple[str, bytes]]:
    """(name, PNG bytes) for the first ``count`` items of an evaluation split."""
    from vmbench.engine import final_logits, predict_volume

    model.eval()
    out = []
    for index in range(min(count, len(dataset))):
        item = dataset[index]
        if getattr(dataset, "is_volume", False):
            volume, label = item["image"], item["label"]
            z = int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(1)))  # the slice with most organ
            prediction = predict_volume(model, volume[z : z + 1], img_size, device)[0]
            out.append((f"{item['id']}_z{z}.png", overlay_png(volume[z], label[z], prediction)))
        else:
            logits = final_logits(model(item["image"][None].to(device)))
            if logits.shape[1] == 1:
                prediction = (torch.sigmoid(logits.float())[0, 0] >= 0.5).cpu().numpy()
            else:
                prediction = logits.float().argmax(1)[0].cpu().numpy()
            truth = item["mask"].numpy()
            truth = truth[0] if truth.ndim == 3 else truth
            out.append((f"{item['id']}.png", overlay_png(item["image"].numpy(), truth, prediction)))
    return out
