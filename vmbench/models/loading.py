"""Helpers the weight loaders of every model family share (as timm's ``models/_helpers.py``).

Files are read through :func:`vmbench.checkpoints.read_checkpoint` (``weights_only=True``); these
helpers find the state dict inside what was read, reach the network inside an official wrapper
and describe a tensor whose shape does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from vmbench.checkpoints import CheckpointFormatError, describe, is_state_dict

__all__ = ["inner_module", "shape_mismatch", "state_dict_in"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def state_dict_in(obj: Any, source: Any, entries: tuple[str, ...]) -> Mapping[str, torch.Tensor]:
    """The state dict (name -> tensor) under the first of ``entries`` that holds one, else ``obj``
    itself when it is a bare state dict; :class:`CheckpointFormatError` naming ``source`` otherwise."""
    if isinstance(obj, Mapping):
        for entry in entries:
            if entry in obj and is_state_dict(obj[entry]):
                return obj[entry]
        if is_state_dict(obj):
            return obj
    found = f"a dict with keys {list(obj)[:10]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    raise CheckpointFormatError(
        f"checkpoint {describe(source)} holds neither a state dict under {' / '.join(map(repr, entries))} nor a bare "
        f"state dict (name -> tensor); found {found}"
    )


def inner_module(model: nn.Module, attr: str, kind: type[ModuleT], wrapper: str) -> ModuleT:
    """``model`` if it is a ``kind``, else ``model.<attr>`` if that is one (an official wrapper keeps
    its network in one attribute, which every checkpoint key then starts with)."""
    if isinstance(model, kind):
        return model
    inner = getattr(model, attr, None)
    if isinstance(inner, kind):
        return inner
    raise TypeError(f"expected a {wrapper} or its .{attr} ({kind.__name__}), got {type(model).__name__}")


def shape_mismatch(name: str, tensor: torch.Tensor, own: torch.Tensor) -> str | None:
    """None when ``tensor`` fits the model's ``own`` tensor, else a report line naming both shapes."""
    if tuple(tensor.shape) == tuple(own.shape):
        return None
    return f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(own.shape)}"
