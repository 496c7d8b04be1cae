"""A search-space file as a :class:`SweepSpec`: its sections checked, one :class:`Study` per model x dataset."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbench.config import (
    ConfigError,
    ExperimentConfig,
    build_section,
    check_bound,
    check_choice,
    check_keys,
    check_mapping,
    check_value,
    config_error,
)
from vmbench.io import read_yaml
from vmbench.protocols import CV, HOLDOUT, PAPER, VOLUME, check_protocol, selectable_metrics
from vmbench.ablation import split_model_name
from vmbench.search_space.params import SpaceParam, check_space_against, inside, parse_space
from vmbench.search_space.transfer import TransferTarget, parse_transfer, transfer_lines
from vmbench.search_space.toplevel import (COST_OBJECTIVES, _ablations, _apply_declarations, _declared_datasets,
                                          _check_scheduler, _objectives, _reference, _resolve_root, _with_twins,
                                          check_name, data_root_anchor, scheduler_text)

__all__ = [
    "CV_MEAN", "CV_ONE_FOLD", "CV_SEARCH_MODES", "Budget", "FinalStage", "Resources", "SamplerSpec", "Study",
    "SweepSpec", "load_spec", "parse_spec",
]

TOP_LEVEL_KEYS = {
    "experiment", "name", "model", "models", "dataset", "datasets", "data_root", "protocol", "metric", "mode",
    "budget", "resources", "fixed", "space", "per_model", "final", "sampler", "storage_path", "description",
    "folds", "cv_search", "ablations", "reference", "transfer",
}
SAMPLERS = ("tpe", "random", "gp", "cmaes")
# Protocol cv: what the search stage tunes on. one-fold: fold 0 alone, a cheap proxy (the default);
# mean: every trial trains every fold in step and reports the mean of the folds' metrics per epoch.
CV_ONE_FOLD, CV_MEAN = "one-fold", "mean"
CV_SEARCH_MODES = (CV_ONE_FOLD, CV_MEAN)
# Set by the sweep from `folds` and `cv_search`, never by hand.
FOLD_KEYS = ("data.fold", "data.folds")
# Config keys the sweep sets itself: a value in fixed or space would be replaced without a word.
SWEEP_SET_KEYS = {
    **{key: "use the top-level folds (protocol cv) instead" for key in FOLD_KEYS},
    "model.name": "use the top-level models instead",
    "data.name": "use the top-level datasets instead",
    "data.protocol": "use the top-level protocol instead",
    "train.epochs": "use budget.max_epochs (search) and final.epochs (final stage) instead",
    "train.val_interval": "trials report their metric every epoch",
    "train.progress": "trials run without progress bars",
}
# Budgets beyond these would never finish (and are most likely a typo): refused, not planned.
MAX_TRIALS = 10_000
MAX_EPOCHS = 100_000


# The file's sections, checked by the configuration's own validator (vmbench.config.build_section:
# types, unknown keys, _choices, _minimums, then _check_together).


def _beyond(source: str, key: str, value: int, limit: int, what: str) -> None:
    if value > limit:
        raise config_error(source, key, f"{value} is beyond what {what} can finish (at most {limit:,}); is it a typo?")


@dataclass(frozen=True)
class Budget:
    trials: int = 4
    concurrent: int = 1
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: int = 2  # ASHA keeps 1/reduction_factor of the trials at each rung
    scheduler: str = "auto"  # asha (stops weak trials early), fifo (none), auto: asha for one objective; wilcoxon
    p_threshold: float = 0.1  # scheduler wilcoxon: Optuna's WilcoxonPruner's p_threshold (its default)

    _minimums = {"trials": 1, "concurrent": 1, "max_epochs": 1, "grace_period": 1, "reduction_factor": 2}
    _choices = {"scheduler": ("auto", "asha", "fifo", "wilcoxon")}

    def _check_together(self, prefix: str, source: str) -> None:
        if self.grace_period > self.max_epochs:
            raise config_error(source, f"{prefix}.grace_period", f"({self.grace_period}) exceeds {prefix}.max_epochs "
                                                                 f"({self.max_epochs})")
        _beyond(source, f"{prefix}.trials", self.trials, MAX_TRIALS, "a sweep")
        _beyond(source, f"{prefix}.max_epochs", self.max_epochs, MAX_EPOCHS, "a sweep")


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0

    _minimums = {"cpu": 0, "gpu": 0}

    def _check_together(self, prefix: str, source: str) -> None:
        if self.gpu > 1 and not self.gpu.is_integer():  # Ray takes a fraction of one GPU or whole GPUs
            raise config_error(source, f"{prefix}.gpu", f"fractions are allowed below 1 only, got {self.gpu:g}")


@dataclass(frozen=True)
class FinalStage:
    seeds: tuple[int, ...] = (1, 2, 3)
    epochs: int | None = None  # default: budget.max_epochs

    _minimums = {"epochs": 1}

    def _check_together(self, prefix: str, source: str) -> None:
        if not self.seeds:
            raise config_error(source, f"{prefix}.seeds", "expected a non-empty list of integers, got []")
        if self.epochs is not None:
            _beyond(source, f"{prefix}.epochs", self.epochs, MAX_EPOCHS, "a run")


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    seed: int = 0

    _choices = {"name": SAMPLERS}
    _minimums = {"seed": 0}


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
        """``dataset__model``: names folders, Ray experiments and MLflow metrics (``best_<metric>__<key>``),
        which refuse "~" and ":", so an ablation twin's ``vmunet~no-ssm`` is spelt ``vmunet.no-ssm`` here
        and a factory ``pkg.mod:build`` ``pkg.mod.build``."""
        return f"{self.dataset}__{re.sub(r'[^A-Za-z0-9_.-]', '.', self.model)}"


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
    folds: int | None = None  # protocol cv only
    cv_search: str | None = None  # protocol cv only: CV_ONE_FOLD or CV_MEAN
    data_root_note: str = ""  # how a relative data_root was resolved (shown in the plan)
    ablations: list[str] = field(default_factory=list)  # the top-level ablations: (twins are in models)
    # Every objective and its mode (metric: [a, b], mode: [max, min]); metric/mode are the first,
    # the one the final stage's configuration is chosen on among the Pareto-optimal trials.
    objectives: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    # The model every other is tested against (paired, Holm) in the tables and the report at the end
    # of the sweep: the file's `reference`, else vmunet when it is swept, else the first model.
    reference: str | None = None
    # Further datasets every final run is scored on, with no retraining (the `transfer:` key).
    transfer: list[TransferTarget] = field(default_factory=list)
    studies: list[Study] = field(default_factory=list)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def scheduler(self) -> str:
        """ASHA, or FIFO (every trial runs its whole budget) when it is asked for or several objectives are."""
        chosen = self.budget.scheduler
        return chosen if chosen != "auto" else ("fifo" if self.multi_objective else "asha")

    @property
    def search_folds(self) -> int:
        """Models each search trial trains: every fold under cv_search mean, else one."""
        return self.folds if self.cv_search == CV_MEAN else 1

    @property
    def search_steps(self) -> int:
        """The ``epoch`` of a full-budget trial's last report: max_epochs, per fold under scheduler wilcoxon."""
        return self.budget.max_epochs * (self.folds if self.scheduler == "wilcoxon" else 1)

    @property
    def final_folds(self) -> list[int | None]:
        """The folds of the final stage: every fold under protocol cv, else [None]."""
        return list(range(self.folds)) if self.protocol == CV else [None]

    def content_hash(self) -> str:
        """Hash of what defines the search: a resumed sweep must match it."""
        payload = {
            "models": self.models, "datasets": self.datasets, "protocol": self.protocol, "metric": self.metric,
            "mode": self.mode,
            # New keys enter only when set, so that a sweep started before them still resumes.
            **({"objectives": list(self.objectives), "modes": list(self.modes)} if self.multi_objective else {}),
            "budget": {k: v for k, v in self.budget.__dict__.items()  # defaults left out: older sweeps resume
                       if (k, v) not in (("scheduler", "auto"), ("p_threshold", 0.1))}, "fixed": self.fixed,
            "space": [p.__dict__ for p in self.space], "per_model": self.per_model, "sampler": self.sampler.__dict__,
        }
        if self.protocol == CV:  # only then, so that the hashes of other sweeps stay what they were
            payload.update(folds=self.folds, cv_search=self.cv_search)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _cv_lines(self) -> list[str]:
        if self.protocol != CV:
            return []
        search = (f"search on fold 0 only (cv_search {CV_ONE_FOLD}: a cheap proxy)" if self.cv_search == CV_ONE_FOLD
                  else f"search on the mean over the {self.folds} folds (cv_search {CV_MEAN}: each trial trains every "
                       f"fold, {self.folds}x the cost)")
        return [f"  cross-validation: {self.folds} folds (nnU-Net's: KFold(shuffle, seed 12345) over the sorted ids of "
                f"the training pool; the test split untouched); {search}"]

    def _ablation_lines(self) -> list[str]:
        if not self.ablations:
            return []
        twins = [m for m in self.models if split_model_name(m)[1] in self.ablations]
        return [f"  ablations {', '.join(self.ablations)}: twins {', '.join(twins)}, each searched and retrained with "
                "its model's space, budget, recipe and final stage"]

    def _objective_text(self) -> str:
        if not self.multi_objective:
            return f"{self.metric} ({self.mode})"
        pairs = ", ".join(f"{m} ({d})" for m, d in zip(self.objectives, self.modes))
        return (f"{pairs} together (Pareto front; the final stage retrains the Pareto-optimal trial best on "
                f"{self.metric})")

    def _scheduler_text(self) -> str:
        if self.scheduler != "asha":  # fifo or wilcoxon
            return scheduler_text(self)
        return f"ASHA grace {self.budget.grace_period}, reduction {self.budget.reduction_factor}"

    def plan(self) -> str:
        """Human-readable resolved configuration and plan (``vmbench sweep --dry-run``)."""
        final_epochs = self.final.epochs or self.budget.max_epochs
        folds = self.final_folds
        retrained = (f"on each of the {self.folds} folds x seeds {list(self.final.seeds)} "
                     f"({self.folds * len(self.final.seeds)} runs)" if self.protocol == CV
                     else f"with seeds {list(self.final.seeds)}")
        also = " and on its fold's validation split" if self.protocol == CV else ""
        lines = [
            f"sweep {self.name!r} from {self.source} (MLflow experiment {self.experiment!r})",
            f"  protocol {self.protocol}; optimise {self._objective_text()}; sampler {self.sampler.name} "
            f"seed {self.sampler.seed}",
            f"  paired tests against: {self.reference or 'none (no reference: reference: none)'}",
            *self._cv_lines(),
            f"  budget per study: {self.budget.trials} trials, {self.budget.concurrent} at once, up to "
            f"{self.budget.max_epochs} epochs ({self._scheduler_text()})",
            f"  resources per trial: {self.resources.cpu:g} CPU, {self.resources.gpu:g} GPU",
            f"  final stage: best configuration retrained {retrained} for {final_epochs} epochs, evaluated on the "
            f"test split{also}",
        ]
        if self.data_root_note:
            lines.append(f"  {self.data_root_note}")
        lines += self._ablation_lines() + transfer_lines(self.transfer)
        search_epochs = self.budget.trials * self.budget.max_epochs * self.search_folds
        for study in self.studies:
            lines.append(f"study {study.dataset} x {study.model}: at most {search_epochs} search epochs + "
                         f"{len(folds) * len(self.final.seeds) * final_epochs} final epochs")
            for key, value in study.base.flat().items():
                lines.append(f"    {key} = {value!r}")
            for param in study.space:
                lines.append(f"    search {param.key}: {param.describe()}")
            if study.start_point:
                lines.append(f"    first trial (the fixed recipe): {study.start_point}")
        return "\n".join(lines)


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


# ------------------------------------------------------------------------------------------------
# Relative data roots


def load_spec(path: str | Path, *, check_registry: bool = True) -> SweepSpec:
    path = Path(path)
    source = str(path)
    if path.is_dir():
        raise ConfigError(f"--space {path}: is a folder; give a search-space YAML file (e.g. search_spaces/quickstart.yaml)")
    if not path.is_file():
        raise ConfigError(f"--space {path}: no such search-space file")
    raw = read_yaml(path)
    return parse_spec(raw, source=source, default_name=path.stem, check_registry=check_registry, space_file=path)


def _names(raw: dict, single: str, plural: str, source: str) -> list[str]:
    if single in raw and plural in raw:
        raise config_error(source, plural, f"give either {single} or {plural}, not both")
    value = raw.get(plural, [raw[single]] if single in raw else None)
    if value is None:
        raise config_error(source, single, "is required")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise config_error(source, plural, f"expected a non-empty list of names, got {value!r}")
    return list(dict.fromkeys(value))


def _check_registered(models: list[str], datasets: list[str], protocol: str, source: str) -> None:
    import vmbench
    from vmbench.errors import UnknownNameError

    for key, items, lookup in (("models", models, vmbench.model_info), ("datasets", datasets, vmbench.dataset_info)):
        for item in items:
            try:
                lookup(item)
            except UnknownNameError as error:
                raise config_error(source, key, str(error)) from None
    for dataset in datasets:
        supported = vmbench.dataset_info(dataset).protocols
        if protocol not in supported:
            raise config_error(source, "protocol", f"dataset {dataset!r} does not support protocol {protocol!r} "
                                                   f"(it supports {', '.join(supported)})")


def _cv_settings(raw: dict, protocol: str, source: str) -> tuple[int | None, str | None]:
    """``folds`` and ``cv_search``: under protocol cv only, with defaults 5 and one-fold."""
    if protocol != CV:
        for key in ("folds", "cv_search"):
            if key in raw:
                raise config_error(source, key, f"only protocol cv has folds (protocol is {protocol!r}); "
                                                f"set protocol: cv or remove {key}")
        return None, None
    folds = check_bound(check_value(raw.get("folds", 5), int, "folds", source), 2, ">=", "folds", source)
    return folds, check_choice(raw.get("cv_search", CV_ONE_FOLD), CV_SEARCH_MODES, "cv_search", source)


def _per_model(raw: dict, models: list[str], source: str) -> dict[str, dict[str, Any]]:
    per_model: dict[str, dict[str, Any]] = {}
    for model_name, extra in check_mapping(raw.get("per_model"), "per_model", source).items():
        if model_name not in models:
            raise config_error(source, f"per_model.{model_name}",
                               f"is not one of the sweep's models ({', '.join(models)})")
        extra = check_mapping(extra, f"per_model.{model_name}", source)
        check_keys(extra, ("fixed", "space"), f"per_model.{model_name}", source)
        per_model[model_name] = {
            "fixed": _dotted(check_mapping(extra.get("fixed"), f"per_model.{model_name}.fixed", source)),
            "space": parse_space(extra.get("space"), source, f"per_model.{model_name}.space."),
        }
    return per_model


def parse_spec(raw: Any, source: str = "sweep", default_name: str = "sweep", check_registry: bool = True,
               space_file: str | Path | None = None) -> SweepSpec:
    """A checked :class:`SweepSpec`; ``space_file`` anchors a relative ``data_root`` (see
    :func:`data_root_anchor`); without it (a mapping built in code) the working directory does."""
    raw = copy.deepcopy(check_mapping(raw, "(top level)", source))
    check_keys(raw, sorted(TOP_LEVEL_KEYS), "", source)
    declared = _declared_datasets(raw, space_file, source)
    models, datasets = _names(raw, "model", "models", source), _names(raw, "dataset", "datasets", source)
    ablations = _ablations(raw, source)
    models = _with_twins(models, ablations, source)
    protocol = check_protocol(raw.get("protocol", HOLDOUT), f"{source}: protocol")
    if check_registry:
        _check_registered(models, datasets, protocol, source)
    folds, cv_search = _cv_settings(raw, protocol, source)
    objectives, modes = _objectives(raw, source)
    metric, mode = objectives[0], modes[0]
    name = raw.get("name", default_name)
    experiment = raw.get("experiment", "vmbench")
    for key, value in (("name", name), ("experiment", experiment)):
        check_name(value, f"{source}: {key}")
    data_root = raw.get("data_root")
    if data_root is not None and not isinstance(data_root, str):
        raise config_error(source, "data_root", f"expected a folder path, got {data_root!r}")
    anchor, anchor_text = data_root_anchor(space_file) if space_file else (Path.cwd(), "the working directory")
    note = ""
    if data_root is not None and "://" not in data_root and not Path(data_root).expanduser().is_absolute():
        note = f"data_root {data_root} -> {_resolve_root(data_root, anchor)} (relative to {anchor_text})"
    spec = SweepSpec(
        name=name, experiment=experiment, models=models, datasets=datasets, protocol=protocol, data_root=data_root,
        metric=metric, mode=mode, budget=build_section(Budget, raw.get("budget"), "budget", source),
        resources=build_section(Resources, raw.get("resources"), "resources", source),
        final=build_section(FinalStage, raw.get("final"), "final", source),
        sampler=build_section(SamplerSpec, raw.get("sampler"), "sampler", source),
        fixed=_dotted(check_mapping(raw.get("fixed"), "fixed", source)),
        space=parse_space(raw.get("space"), source, "space."), per_model=_per_model(raw, models, source),
        source=source, storage_path=raw.get("storage_path"), description=str(raw.get("description", "")),
        folds=folds, cv_search=cv_search, data_root_note=note, ablations=ablations,
        objectives=objectives, modes=modes, reference=_reference(raw, models, source),
        transfer=parse_transfer(raw, datasets, declared, space_file, source, check_registry),
    )
    _check_scheduler(spec, raw.get("budget"))
    for dataset in datasets:
        for model in models:
            spec.studies.append(_build_study(spec, model, dataset, anchor))
    _apply_declarations(spec, declared)
    return spec


# ------------------------------------------------------------------------------------------------
# Datasets declared in the file: datasets: [{name: polyps, path: data/polyps, format: folder, labels: {...}}]

def _model_extra(spec: SweepSpec, model: str) -> dict[str, Any]:
    """The model's per_model entry; a twin without its own takes its model's (the same recipe)."""
    for name in (model, split_model_name(model)[0]):
        if name in spec.per_model:
            return spec.per_model[name]
    return {"fixed": {}, "space": []}


def _build_study(spec: SweepSpec, model: str, dataset: str, anchor: Path) -> Study:
    source = spec.source
    extra = _model_extra(spec, model)
    overrides = {**spec.fixed, **extra["fixed"]}
    space = [p for p in spec.space if p.key not in {q.key for q in extra["space"]}] + list(extra["space"])
    for key, instead in SWEEP_SET_KEYS.items():
        if key in overrides or key in {p.key for p in space}:
            raise config_error(source, key, f"is set by the sweep: {instead}")
    if not space and spec.budget.trials > 1:
        raise config_error(source, "space", f"has no entries for {model} on {dataset}, so its {spec.budget.trials} "
                                            "trials would all train the same configuration: add space entries, or set "
                                            "budget.trials: 1")
    overrides.update({
        "model.name": model,
        "data.name": dataset,
        "data.protocol": spec.protocol,
        "train.epochs": spec.budget.max_epochs,
        "train.val_interval": 1,  # trials report the metric every epoch
        "train.progress": False,
    })
    if spec.protocol == CV:  # the search's base fold; cv_search mean trains the others beside it
        overrides.update({"data.fold": 0, "data.folds": spec.folds})
    if spec.data_root is not None:
        overrides["data.root"] = spec.data_root
    if "data.root" in overrides:
        overrides["data.root"] = _resolve_root(overrides["data.root"], anchor)
    base = ExperimentConfig().with_overrides(overrides, source=f"{source} (fixed)")
    _check_metric(spec, dataset)
    check_space_against(base, space, source, "space.")
    start_point = {}
    for param in space:
        if param.key in overrides:
            value = overrides[param.key]
            if not inside(param, value):
                raise config_error(source, param.key,
                                   f"the fixed value {value!r} is outside its search space ({param.describe()})")
            start_point[param.key] = value
    return Study(model, dataset, base, space, start_point)


def _check_metric(spec: SweepSpec, dataset: str) -> None:
    """The metric must be one the trials report: Tune only finds out after the first epoch, and aborts."""
    import vmbench

    evaluation = vmbench.dataset_info(dataset).evaluation
    # Holdout and cv always have a validation split; under the paper protocol ISIC validates on
    # its test split and Synapse has none.
    has_val = spec.protocol != PAPER or evaluation != VOLUME
    if spec.metric.startswith("val_") and not has_val:
        raise config_error(spec.source, "metric", f"{spec.metric!r} needs a validation split, but {dataset} under "
                                                  "the paper protocol has none (use train_loss, as VM-UNet's Synapse "
                                                  "recipe)")
    choices = selectable_metrics(evaluation, has_val)
    costs = COST_OBJECTIVES if spec.multi_objective else ()
    for metric in spec.objectives or (spec.metric,):
        if metric not in choices and metric not in costs:
            raise config_error(spec.source, "metric", f"{metric!r} is not reported by trials on {dataset} "
                                                      f"(protocol {spec.protocol}); choose one of "
                                                      f"{', '.join(choices + costs)}")


# Cost objectives a multi-objective search may trade accuracy against: measured once per trial on
# its own hardware at the evaluation size (parameters, GMACs, latency) or over its training (peak
# memory), and reported with every epoch's metrics.
