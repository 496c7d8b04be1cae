"""Search-space files (``search_spaces/*.yaml``): schema, validation, and the resolved plan.

A file names the experiment, the models and datasets to tune, the metric, the budget, the
resources per trial, fixed settings, the space and the final stage::

    experiment: vmbench-quickstart        # MLflow experiment
    name: quickstart                      # sweep name (default: the file's stem)
    models: [vmunet, unet]                # or model: vmunet
    dataset: synthetic-isic               # or datasets: [...]
    data_root: null                       # default: the dataset's own folder
    protocol: holdout                     # holdout | paper
    metric: val_dsc                       # what trials report and the search optimises
    mode: max
    budget: {trials: 4, concurrent: 2, max_epochs: 3, grace_period: 1, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0}           # per trial; fractional GPUs allowed (0.5)
    fixed:                                # ExperimentConfig values, nested or dotted
      data: {img_size: 64}
      train.batch_size: 16
    space:                                # dotted ExperimentConfig keys
      optim.lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}
      loss.dice_weight: {type: uniform, low: 0.5, high: 2.0}
      train.batch_size: {type: choice, values: [8, 16]}
      model.overrides.drop_path_rate: {type: uniform, low: 0.0, high: 0.3}
      # uniform and int also take step (a grid from low; not with a log scale) and log: true | false
    per_model:                            # optional additions for one model
      vmunet: {fixed: {...}, space: {...}}
    final: {seeds: [1, 2], epochs: null}  # retrain the best config per seed; epochs default max_epochs
    sampler: {name: tpe, seed: 0}         # tpe | random | gp | cmaes

Every model x dataset pair is one study with the same budget. Errors name the file, the key and
what was expected (:class:`vmbench.config.ConfigError`).
"""

from __future__ import annotations

import copy
import decimal
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmbench.config import ConfigError, ExperimentConfig
from vmbench.protocols import HOLDOUT, PAPER, VOLUME, check_protocol, default_select_mode, selectable_metrics

TOP_LEVEL_KEYS = {
    "experiment", "name", "model", "models", "dataset", "datasets", "data_root", "protocol", "metric", "mode",
    "budget", "resources", "fixed", "space", "per_model", "final", "sampler", "storage_path", "description",
}
SPACE_TYPES = ("uniform", "loguniform", "int", "choice")
SAMPLERS = ("tpe", "random", "gp", "cmaes")


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


@dataclass(frozen=True)
class Budget:
    trials: int = 4
    concurrent: int = 1
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class FinalStage:
    seeds: tuple[int, ...] = (1, 2, 3)
    epochs: int | None = None  # default: budget.max_epochs


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    seed: int = 0


@dataclass
class Study:
    """One model x dataset search inside a sweep."""

    model: str
    dataset: str
    base: ExperimentConfig
    space: list[SpaceParam]
    # Fixed values of searched keys (a recipe stated in the file): evaluated as the first trial.
    start_point: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.dataset}__{self.model}"


@dataclass
class SweepSpec:
    name: str
    experiment: str
    models: list[str]
    datasets: list[str]
    protocol: str
    data_root: str | None
    metric: str
    mode: str
    budget: Budget
    resources: Resources
    final: FinalStage
    sampler: SamplerSpec
    fixed: dict[str, Any]
    space: list[SpaceParam]
    per_model: dict[str, dict[str, Any]]
    source: str
    storage_path: str | None = None
    description: str = ""
    studies: list[Study] = field(default_factory=list)

    def content_hash(self) -> str:
        """Hash of what defines the search: a resumed sweep must match it."""
        payload = {
            "models": self.models, "datasets": self.datasets, "protocol": self.protocol, "metric": self.metric,
            "mode": self.mode, "budget": self.budget.__dict__, "fixed": self.fixed,
            "space": [p.__dict__ for p in self.space], "per_model": self.per_model, "sampler": self.sampler.__dict__,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def plan(self) -> str:  # noqa: C901 - a flat list of lines
        """Human-readable resolved configuration and plan (``vmbench sweep --dry-run``)."""
        lines = [
            f"sweep {self.name!r} from {self.source} (MLflow experiment {self.experiment!r})",
            f"  protocol {self.protocol}; optimise {self.metric} ({self.mode}); sampler {self.sampler.name} "
            f"seed {self.sampler.seed}",
            f"  budget per study: {self.budget.trials} trials, {self.budget.concurrent} at once, up to "
            f"{self.budget.max_epochs} epochs (ASHA grace {self.budget.grace_period}, "
            f"reduction {self.budget.reduction_factor})",
            f"  resources per trial: {self.resources.cpu:g} CPU, {self.resources.gpu:g} GPU",
            f"  final stage: best configuration retrained with seeds {list(self.final.seeds)} for "
            f"{self.final.epochs or self.budget.max_epochs} epochs, evaluated on the test split",
        ]
        max_epochs = self.budget.trials * self.budget.max_epochs
        for study in self.studies:
            lines.append(f"study {study.dataset} x {study.model}: at most {max_epochs} search epochs + "
                         f"{len(self.final.seeds) * (self.final.epochs or self.budget.max_epochs)} final epochs")
            for key, value in study.base.flat().items():
                lines.append(f"    {key} = {value!r}")
            for param in study.space:
                lines.append(f"    search {param.key}: {param.describe()}")
            if study.start_point:
                lines.append(f"    first trial (the fixed recipe): {study.start_point}")
        return "\n".join(lines)


def _err(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {message}")


def _number(value: Any, source: str, key: str) -> float:
    # PyYAML reads 1e-4 (no dot) as a string: accept numeric strings for numbers.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(source, key, f"expected a number, got {value!r}")
    return float(value)


def _integer(value: Any, source: str, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(source, key, f"expected an integer, got {value!r}")
    if value < minimum:
        raise _err(source, key, f"must be >= {minimum}, got {value}")
    return value


def _flag(value: Any, source: str, key: str) -> bool:
    # bool("false") is True: only YAML's true/false may switch a flag.
    if not isinstance(value, bool):
        raise _err(source, key, f"expected true or false, got {value!r}")
    return value


def _on_grid(low: float, step: float, value: float) -> bool:
    """Whether value is low + k * step; decimal arithmetic so 0.1-style steps divide exactly."""
    offset = decimal.Decimal(str(value)) - decimal.Decimal(str(low))
    return offset % decimal.Decimal(str(step)) == 0


def check_name(value: Any, where: str) -> str:
    """A sweep or experiment name (``where``: "FILE: name" or "--name").

    Names end up in folder names and MLflow filter strings: keep them plain.
    """
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ConfigError(f"{where}: expected a name of letters, digits, '.', '_' or '-', got {value!r}")
    return value


def _mapping(value: Any, source: str, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(source, key, f"expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(values: dict, allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise _err(source, f"{where}{unknown[0]}", f"unknown key (known: {', '.join(sorted(allowed))})")


def _dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections and dotted keys -> dotted keys (model.overrides values stay whole)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and full not in ("model.overrides", "data.options") and not full.startswith(
            ("model.overrides.", "data.options.")
        ):
            out.update(_dotted(value, full + "."))
        elif isinstance(value, dict):
            for sub, v in value.items():
                out[f"{full}.{sub}"] = v
        else:
            out[full] = value
    return out


def _parse_space(values: Any, source: str, where: str) -> list[SpaceParam]:
    params = []
    for key, spec in _mapping(values, source, where.rstrip(".")).items():
        name = f"{where}{key}"
        spec = _mapping(spec, source, name)
        kind = spec.get("type")
        if kind not in SPACE_TYPES:
            raise _err(source, f"{name}.type", f"expected one of {', '.join(SPACE_TYPES)}, got {kind!r}")
        if kind == "choice":
            _check_keys(spec, {"type", "values"}, source, f"{name}.")
            options = spec.get("values")
            if not isinstance(options, list) or not options:
                raise _err(source, f"{name}.values", "expected a non-empty list")
            params.append(SpaceParam(key, kind, values=tuple(options)))
            continue
        _check_keys(spec, {"type", "low", "high", "step", "log"}, source, f"{name}.")
        if "low" not in spec or "high" not in spec:
            raise _err(source, name, "needs low and high")
        if kind == "int":
            low = _integer(spec["low"], source, f"{name}.low", -(2**62))
            high = _integer(spec["high"], source, f"{name}.high", -(2**62))
            step = _integer(spec.get("step", 1), source, f"{name}.step", 1)
        else:
            low, high = _number(spec["low"], source, f"{name}.low"), _number(spec["high"], source, f"{name}.high")
            step = _number(spec["step"], source, f"{name}.step") if "step" in spec else None
            if step is not None and step <= 0:
                raise _err(source, f"{name}.step", f"must be > 0, got {step:g}")
        if not low < high:
            raise _err(source, name, f"empty range: low ({low:g}) must be < high ({high:g})")
        log = _flag(spec.get("log", kind == "loguniform"), source, f"{name}.log")
        if kind == "loguniform" and not log:
            raise _err(source, f"{name}.log", "a loguniform range is always log scale: use type uniform for a linear one")
        if log and low <= 0:
            raise _err(source, f"{name}.low", f"a log-scale range needs low > 0, got {low:g}")
        _check_step(kind, low, high, step, log, source, name)
        params.append(SpaceParam(key, kind, low=low, high=high, step=step, log=log))
    return params


def _check_step(kind: str, low: float, high: float, step: float | None, log: bool, source: str, name: str) -> None:
    """What Optuna would otherwise reject (or quietly change) only when the first trial is sampled."""
    if step is None or (kind == "int" and step == 1):
        return
    if log:
        raise _err(source, f"{name}.step", f"step {step:g} cannot be combined with a log scale (Optuna samples "
                                           "log-scale ranges without steps): drop step or the log scale")
    if not _on_grid(low, step, high):
        # Optuna would lower high to the last multiple with only a warning: say it here.
        raise _err(source, f"{name}.step", f"high - low ({high:g} - {low:g}) is not a multiple of {step:g}")


def _check_space_against(base: ExperimentConfig, space: list[SpaceParam], source: str, where: str) -> None:
    """Every key must exist and accept the range's ends (or every choice)."""
    for param in space:
        samples = list(param.values) if param.type == "choice" else [param.low, param.high]
        if param.type == "int":
            samples = [int(s) for s in samples]
        for sample in samples:
            try:
                base.with_overrides({param.key: sample}, source=source)
            except ConfigError as err:
                raise ConfigError(f"{err} (in {where}{param.key})") from None


def load_spec(path: str | Path, *, check_registry: bool = True) -> SweepSpec:
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"search-space file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(err).split())}") from None
    return parse_spec(raw, source=source, default_name=path.stem, check_registry=check_registry)


def parse_spec(raw: Any, source: str = "sweep", default_name: str = "sweep", check_registry: bool = True) -> SweepSpec:
    raw = copy.deepcopy(_mapping(raw, source, "(top level)"))
    _check_keys(raw, TOP_LEVEL_KEYS, source, "")

    def names(single: str, plural: str) -> list[str]:
        if single in raw and plural in raw:
            raise _err(source, plural, f"give either {single} or {plural}, not both")
        value = raw.get(plural, [raw[single]] if single in raw else None)
        if value is None:
            raise _err(source, single, "is required")
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise _err(source, plural, f"expected a non-empty list of names, got {value!r}")
        return list(dict.fromkeys(value))

    models, datasets = names("model", "models"), names("dataset", "datasets")
    if check_registry:
        import vmbench
        from vmbench.registry import UnknownNameError

        for key, items, lookup in (("models", models, vmbench.model_info), ("datasets", datasets, vmbench.dataset_info)):
            for item in items:
                try:
                    lookup(item)
                except UnknownNameError as err:
                    raise _err(source, key, str(err)) from None

    protocol = check_protocol(raw.get("protocol", HOLDOUT), f"{source}: protocol")
    metric = raw.get("metric", "val_dsc")
    if not isinstance(metric, str):
        raise _err(source, "metric", f"expected a metric name, got {metric!r}")
    mode = raw.get("mode", default_select_mode(metric))
    if mode not in ("min", "max"):
        raise _err(source, "mode", f"expected min or max, got {mode!r}")

    budget_raw = _mapping(raw.get("budget"), source, "budget")
    _check_keys(budget_raw, set(Budget.__dataclass_fields__), source, "budget.")
    budget = Budget(**{k: _integer(v, source, f"budget.{k}", 1) for k, v in budget_raw.items()})
    if budget.grace_period > budget.max_epochs:
        raise _err(source, "budget.grace_period", f"({budget.grace_period}) exceeds budget.max_epochs ({budget.max_epochs})")
    if budget_raw.get("reduction_factor", 2) < 2:
        raise _err(source, "budget.reduction_factor", "must be >= 2")

    res_raw = _mapping(raw.get("resources"), source, "resources")
    _check_keys(res_raw, {"cpu", "gpu"}, source, "resources.")
    resources = Resources(**{k: _number(v, source, f"resources.{k}") for k, v in res_raw.items()})
    if resources.cpu < 0 or resources.gpu < 0:
        raise _err(source, "resources", "cpu and gpu must be >= 0")
    if resources.gpu > 1 and not float(resources.gpu).is_integer():
        raise _err(source, "resources.gpu", f"fractions are allowed below 1 only, got {resources.gpu:g}")

    final_raw = _mapping(raw.get("final"), source, "final")
    _check_keys(final_raw, {"seeds", "epochs"}, source, "final.")
    seeds = final_raw.get("seeds", [1, 2, 3])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise _err(source, "final.seeds", f"expected a non-empty list of integers, got {seeds!r}")
    final_epochs = final_raw.get("epochs")
    if final_epochs is not None:
        final_epochs = _integer(final_epochs, source, "final.epochs", 1)
    final = FinalStage(tuple(seeds), final_epochs)

    sampler_raw = _mapping(raw.get("sampler"), source, "sampler")
    _check_keys(sampler_raw, {"name", "seed"}, source, "sampler.")
    sampler = SamplerSpec(sampler_raw.get("name", "tpe"), _integer(sampler_raw.get("seed", 0), source, "sampler.seed", 0))
    if sampler.name not in SAMPLERS:
        raise _err(source, "sampler.name", f"expected one of {', '.join(SAMPLERS)}, got {sampler.name!r}")

    fixed = _dotted(_mapping(raw.get("fixed"), source, "fixed"))
    space = _parse_space(raw.get("space"), source, "space.")
    per_model_raw = _mapping(raw.get("per_model"), source, "per_model")
    per_model: dict[str, dict[str, Any]] = {}
    for model_name, extra in per_model_raw.items():
        if model_name not in models:
            raise _err(source, f"per_model.{model_name}", f"is not one of the sweep's models ({', '.join(models)})")
        extra = _mapping(extra, source, f"per_model.{model_name}")
        _check_keys(extra, {"fixed", "space"}, source, f"per_model.{model_name}.")
        per_model[model_name] = {
            "fixed": _dotted(_mapping(extra.get("fixed"), source, f"per_model.{model_name}.fixed")),
            "space": _parse_space(extra.get("space"), source, f"per_model.{model_name}.space."),
        }

    name = raw.get("name", default_name)
    experiment = raw.get("experiment", "vmbench")
    for key, value in (("name", name), ("experiment", experiment)):
        check_name(value, f"{source}: {key}")
    data_root = raw.get("data_root")
    if data_root is not None and not isinstance(data_root, str):
        raise _err(source, "data_root", f"expected a folder path, got {data_root!r}")

    spec = SweepSpec(
        name=name, experiment=experiment, models=models, datasets=datasets, protocol=protocol, data_root=data_root,
        metric=metric, mode=mode, budget=budget, resources=resources, final=final, sampler=sampler, fixed=fixed,
        space=space, per_model={k: {"fixed": v["fixed"], "space": v["space"]} for k, v in per_model.items()},
        source=source, storage_path=raw.get("storage_path"), description=str(raw.get("description", "")),
    )
    for dataset in datasets:
        for model in models:
            spec.studies.append(_build_study(spec, model, dataset))
    return spec


def _build_study(spec: SweepSpec, model: str, dataset: str) -> Study:
    source = spec.source
    extra = spec.per_model.get(model, {"fixed": {}, "space": []})
    overrides = {**spec.fixed, **extra["fixed"]}
    overrides.update({
        "model.name": model,
        "data.name": dataset,
        "data.protocol": spec.protocol,
        "train.epochs": spec.budget.max_epochs,
        "train.val_interval": 1,  # trials report the metric every epoch
        "train.progress": False,
    })
    if spec.data_root is not None:
        overrides["data.root"] = spec.data_root
    base = ExperimentConfig().with_overrides(overrides, source=f"{source} (fixed)")
    _check_metric(spec, dataset)
    space = [p for p in spec.space if p.key not in {q.key for q in extra["space"]}] + list(extra["space"])
    _check_space_against(base, space, source, "space.")
    start_point = {}
    for param in space:
        if param.key in overrides:
            value = overrides[param.key]
            if not _inside(param, value):
                raise _err(source, param.key, f"the fixed value {value!r} is outside its search space ({param.describe()})")
            start_point[param.key] = value
    return Study(model, dataset, base, space, start_point)


def _check_metric(spec: SweepSpec, dataset: str) -> None:
    """The metric must be one the trials report: Tune only finds out after the first epoch, and aborts."""
    import vmbench

    evaluation = vmbench.dataset_info(dataset).evaluation
    # Holdout always has a validation split; under the paper protocol ISIC validates on its test
    # split and Synapse has none.
    has_val = spec.protocol != PAPER or evaluation != VOLUME
    if spec.metric.startswith("val_") and not has_val:
        raise _err(spec.source, "metric", f"{spec.metric!r} needs a validation split, but {dataset} under the paper "
                                          "protocol has none (use train_loss, as VM-UNet's Synapse recipe)")
    choices = selectable_metrics(evaluation, has_val)
    if spec.metric not in choices:
        raise _err(spec.source, "metric", f"{spec.metric!r} is not reported by trials on {dataset} "
                                          f"(protocol {spec.protocol}); choose one of {', '.join(choices)}")


def _inside(param: SpaceParam, value: Any) -> bool:
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


__all__ = [
    "Budget", "FinalStage", "Resources", "SamplerSpec", "SpaceParam", "Study", "SweepSpec", "check_name",
    "decode_sample", "load_spec", "optuna_distributions", "parse_spec",
]
