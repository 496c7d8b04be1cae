"""Array helpers of the metrics: numpy or torch inputs, shape checks, ratios that are 0 on 0."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _is_torch(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


def _to_numpy(x: Any) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _squeezed_shape(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) for s in shape if s != 1)


def _check_same_shape(a: Any, b: Any, what: str = "probs and masks") -> None:
    sa, sb = tuple(a.shape), tuple(b.shape)
    if sa != sb and _squeezed_shape(sa) != _squeezed_shape(sb):
        raise ValueError(f"{what} have different shapes: {sa} vs {sb}")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den != 0 else 0.0
