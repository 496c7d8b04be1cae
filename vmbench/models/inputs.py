"""Input checks shared by vmbench's models: a one-line :class:`ModelInputError` instead of a silent
crop or a shape error deep inside the network."""

from __future__ import annotations

import torch

from vmbench.errors import ModelInputError

__all__ = ["check_image_batch", "check_input_size"]

_AXES = {2: ("height", "width"), 3: ("depth", "height", "width")}


def check_image_batch(
    x: object,
    *,
    model: str,
    in_chans: int,
    multiple: int,
    square: bool = False,
    gray_to_rgb: bool = False,
    spatial_dims: int = 2,
) -> torch.Tensor:
    """``x`` if it is (batch, in_chans, *sides) with every side a positive multiple of ``multiple``.

    ``gray_to_rgb``: a 1-channel batch for a 3-channel model is repeated to 3 channels (returned
    as an expanded view). ``square``: all sides must be equal. Anything else raises
    :class:`ModelInputError` naming the model, what it needs and the nearest sizes that work.
    """
    axes = _AXES[spatial_dims]
    if not isinstance(x, torch.Tensor) or x.dim() != spatial_dims + 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ModelInputError(f"{model} expects a (batch, channels, {', '.join(axes)}) tensor, got {shape}")
    channels = x.shape[1]
    if channels != in_chans:
        if gray_to_rgb and channels == 1 and in_chans == 3:
            x = x.expand(-1, 3, *x.shape[2:])
        else:
            also = " (or 1, repeated to 3)" if gray_to_rgb and in_chans == 3 else ""
            raise ModelInputError(
                f"{model} was built for {in_chans} input channels{also}, got {channels} (input shape {tuple(x.shape)})"
            )
    sides = tuple(x.shape[2:])
    text = "x".join(map(str, sides))
    bad = []
    for name, side in zip(axes, sides):
        if side <= 0 or side % multiple:
            lower = side // multiple * multiple
            options = f"{lower} or {lower + multiple}" if lower > 0 else f"{multiple}"
            bad.append(f"{name} {side} is not (nearest: {options})")
    if bad:
        raise ModelInputError(
            f"{model} needs every input side divisible by {multiple}; got {text}: {'; '.join(bad)}. "
            "Resize or pad the input: it is never cropped."
        )
    if square and len(set(sides)) != 1:
        raise ModelInputError(f"{model} needs a square input, got {text}. Resize or pad the input.")
    return x


class _InputAccepted(Exception):
    """Raised by :func:`check_input_size`'s hooks: the model's own checks have passed."""


def check_input_size(model: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """Run ``model``'s own input checks on a meta tensor of ``shape``, and nothing else.

    ``model`` should be built on the meta device (``with torch.device("meta")``), so that neither
    building nor checking allocates. Its forward runs until it calls its first submodule: every
    registered model checks its input before that (the test suite holds each one to it), so a size
    the model cannot take raises its :class:`ModelInputError` and an accepted one computes nothing.
    A model built for a fixed size (Swin-UNet, TransFuse) refuses a bad one while being built.
    """
    root = model

    def stop(module, args):
        if module is not root:
            raise _InputAccepted

    handles = [m.register_forward_pre_hook(stop) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(torch.empty(shape, device="meta"))
    except _InputAccepted:
        pass
    finally:
        for handle in handles:
            handle.remove()
