"""The loss registry: each loss declares its name, its task and its ``loss:`` configuration keys.

A loss registers its factory where it is defined, as models and datasets do::

    @register_loss("bce_dice", task="binary", options=("bce_weight", "dice_weight"))
    def _bce_dice(num_classes, **kw): ...

so the engine reads one declaration (:func:`loss_info`) instead of keeping tables of its own
beside the registry. The table is a :class:`vmbench.registry.Registry`: an unknown name raises
:class:`vmbench.errors.UnknownNameError` with close matches, as an unknown model or dataset does.
Names are case-insensitive and ``-`` is ``_`` (``CE-Dice`` is ``ce_dice``).

This module imports no loss: the loss modules import it to register, so it stays at the bottom
of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable

from vmbench.config import LossConfig
from vmbench.registry import Registry

__all__ = [
    "LOSSES",
    "LOSS_CONFIG_KEYS",
    "LossInfo",
    "list_losses",
    "loss_info",
    "loss_key",
    "loss_task",
    "losses_for",
    "register_loss",
]

#: The tasks a loss may be written for: one logit channel, or class logits.
TASKS = ("binary", "multiclass")

#: The keys of the ``loss:`` section a loss may take (``name`` picks the loss itself).
LOSS_CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in fields(LossConfig) if f.name != "name")


@dataclass(frozen=True)
class LossInfo:
    """A registered loss. ``factory(num_classes, **kwargs) -> nn.Module``; ``task``: ``"binary"``
    (one logit channel), ``"multiclass"`` (class logits) or None (either); ``options``: the keys of
    the ``loss:`` configuration section the engine passes to the factory, and no others."""

    name: str
    factory: Callable[..., Any]
    task: str | None = None
    options: tuple[str, ...] = ()


def loss_key(name: str) -> str:
    """The registry key of a loss name: case-insensitive, ``-`` the same as ``_``."""
    return str(name).strip().lower().replace("-", "_")


# No modules to load on first read: importing this module runs vmbench/losses/__init__.py, which
# imports every loss module and so registers the built-in losses. No entry-point group either: no
# plug-in (baselines included) brings losses of its own yet.
LOSSES = Registry("loss", None, (), key=loss_key)


def register_loss(
    name: str, task: str | None = None, options: Iterable[str] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``factory(num_classes, **kwargs) -> nn.Module`` under ``name``.

    ``task``: the outputs it is written for (see :class:`LossInfo`); :func:`vmbench.losses.build_loss`
    refuses a ``num_classes`` of the other kind. ``options``: the ``loss:`` configuration keys it
    takes; a key the configuration does not have fails here, at import, not at the first run.
    """
    if task not in (None, *TASKS):
        raise ValueError(f"register_loss({name!r}): task must be one of {', '.join(TASKS)} or None, got {task!r}")
    if isinstance(options, str):  # ("bce_weight") without the comma would be read letter by letter
        raise TypeError(f"register_loss({name!r}): options must be a tuple of keys, got the string {options!r}")
    options = tuple(options)
    unknown = [o for o in options if o not in LOSS_CONFIG_KEYS]
    if unknown:
        raise ValueError(f"register_loss({name!r}): {', '.join(map(repr, unknown))} not in the loss: "
                         f"configuration section ({', '.join(LOSS_CONFIG_KEYS)})")
    key = loss_key(name)

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        LOSSES.add(key, LossInfo(name=key, factory=factory, task=task, options=options))
        return factory

    return deco


def loss_info(name: str) -> LossInfo:
    """The registration of a loss; ``UnknownNameError`` (with close matches) for an unknown name."""
    return LOSSES.get(name)


def list_losses() -> list[str]:
    return LOSSES.names()


def loss_task(name: str) -> str | None:
    """The task a registered loss is written for (see :func:`register_loss`), None for either."""
    return loss_info(name).task


def losses_for(task: str) -> list[str]:
    """The registered losses that train outputs of ``task`` (theirs or either)."""
    return [k for k in list_losses() if loss_task(k) in (None, task)]
