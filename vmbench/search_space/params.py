"""The ``space:`` entries of a search-space file: parsing, checks, and their Optuna form.

Each entry is a dotted ExperimentConfig key with a range (``uniform``, ``loguniform``, ``int``;
``step`` and ``log`` optional) or a ``choice``. Errors name the file and the key
(:class:`vmbench.config.ConfigError`).
"""

from __future__ import annotations

import decimal
import json
from dataclasses import dataclass
from typing import Any

from vmbench.config import (
    ConfigError,
    ExperimentConfig,
    check_bound,
    check_choice,
    check_keys,
    check_mapping,
    check_value,
    config_error,
)

__all__ = ["SPACE_TYPES", "SpaceParam", "check_space_against", "decode_sample", "inside", "optuna_distributions",
           "parse_space"]

SPACE_TYPES = ("uniform", "loguniform", "int", "choice")


@dataclass(frozen=True)
class SpaceParam:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()
    step: float | None = None  # ints: always set (default 1); floats: None = continuous
    log: bool = False

    def describe(self) -> str:
        if self.type == "choice":
            return f"choice {list(self.values)}"
        text = f"{self.type} [{self.low:g}, {self.high:g}]" + (f" step {self.step:g}" if self.step else "")
        # loguniform says so in its name; a log flag on uniform or int must show.
        return text + (" (log)" if self.log and self.type != "loguniform" else "")


# ------------------------------------------------------------------------------------------------
# The space


def _on_grid(low: float, step: float, value: float) -> bool:
    """Whether value is low + k * step; decimal arithmetic so 0.1-style steps divide exactly."""
    offset = decimal.Decimal(str(value)) - decimal.Decimal(str(low))
    return offset % decimal.Decimal(str(step)) == 0


def parse_space(values: Any, source: str, where: str) -> list[SpaceParam]:
    params = []
    for key, spec in check_mapping(values, where.rstrip("."), source).items():
        name = f"{where}{key}"
        spec = check_mapping(spec, name, source)
        kind = check_choice(spec.get("type"), SPACE_TYPES, f"{name}.type", source)
        if kind == "choice":
            check_keys(spec, ("type", "values"), name, source)
            options = spec.get("values")
            if not isinstance(options, list) or not options:
                raise config_error(source, f"{name}.values", "expected a non-empty list")
            params.append(SpaceParam(key, kind, values=tuple(options)))
            continue
        check_keys(spec, ("type", "low", "high", "step", "log"), name, source)
        if "low" not in spec or "high" not in spec:
            raise config_error(source, name, "needs low and high")
        if kind == "int":
            low, high = (check_value(spec[end], int, f"{name}.{end}", source) for end in ("low", "high"))
            step = check_bound(check_value(spec.get("step", 1), int, f"{name}.step", source), 1, ">=", f"{name}.step",
                               source)
        else:
            low, high = (check_value(spec[end], float, f"{name}.{end}", source) for end in ("low", "high"))
            step = check_bound(check_value(spec.get("step"), float | None, f"{name}.step", source), 0, ">",
                               f"{name}.step", source)
        if not low < high:
            raise config_error(source, name, f"empty range: low ({low:g}) must be < high ({high:g})")
        log = check_value(spec.get("log", kind == "loguniform"), bool, f"{name}.log", source)
        if kind == "loguniform" and not log:
            raise config_error(source, f"{name}.log", "a loguniform range is always log scale: use type uniform for "
                                                      "a linear one")
        if log and low <= 0:
            raise config_error(source, f"{name}.low", f"a log-scale range needs low > 0, got {low:g}")
        _check_step(kind, low, high, step, log, source, name)
        params.append(SpaceParam(key, kind, low=low, high=high, step=step, log=log))
    return params


def _check_step(kind: str, low: float, high: float, step: float | None, log: bool, source: str, name: str) -> None:
    """What Optuna would otherwise reject (or quietly change) only when the first trial is sampled."""
    if step is None or (kind == "int" and step == 1):
        return
    if log:
        raise config_error(source, f"{name}.step", f"step {step:g} cannot be combined with a log scale (Optuna "
                                                   "samples log-scale ranges without steps): drop step or the log scale")
    if not _on_grid(low, step, high):
        # Optuna would lower high to the last multiple with only a warning: say it here.
        raise config_error(source, f"{name}.step", f"high - low ({high:g} - {low:g}) is not a multiple of {step:g}")


def check_space_against(base: ExperimentConfig, space: list[SpaceParam], source: str, where: str) -> None:
    """Every key must exist and accept the range's ends (or every choice)."""
    for param in space:
        samples = list(param.values) if param.type == "choice" else [param.low, param.high]
        if param.type == "int":
            samples = [int(s) for s in samples]
        for sample in samples:
            try:
                base.with_overrides({param.key: sample}, source=source)
            except ConfigError as error:
                raise ConfigError(f"{error} (in {where}{param.key})") from None


def inside(param: SpaceParam, value: Any) -> bool:
    """Whether ``value`` is one Optuna can evaluate for ``param`` (a fixed recipe as the first trial)."""
    if param.type == "choice":
        return value in param.values
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if param.step is not None and not _on_grid(param.low, param.step, value):
        return False  # Optuna would not accept it as the first trial's value
    return param.low <= value <= param.high


def _is_primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def optuna_distributions(space: list[SpaceParam]) -> dict[str, Any]:
    """The space as Optuna distributions (keys stay dotted).

    Optuna's categorical choices must be primitives: a choice among lists (e.g. depths) is
    offered as their JSON text and decoded by :func:`decode_sample`.
    """
    import optuna.distributions as d

    out: dict[str, Any] = {}
    for p in space:
        if p.type == "choice":
            options = list(p.values)
            if not all(_is_primitive(v) for v in options):
                options = [json.dumps(v) for v in options]
            out[p.key] = d.CategoricalDistribution(options)
        elif p.type == "int":
            out[p.key] = d.IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[p.key] = d.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def decode_sample(space: list[SpaceParam], sample: dict[str, Any]) -> dict[str, Any]:
    """Undo the JSON encoding of non-primitive choices; ints stay ints."""
    decoded = dict(sample)
    for p in space:
        if p.key not in decoded:
            continue
        if p.type == "choice" and not all(_is_primitive(v) for v in p.values):
            decoded[p.key] = json.loads(decoded[p.key])
        elif p.type == "int":
            decoded[p.key] = int(decoded[p.key])
    return decoded
