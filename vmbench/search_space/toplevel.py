"""Top-level keys of a search-space file that are read on their own: names, ``data_root``, declared datasets
(``datasets:`` entries with a path), ablation twins (``ablations:``), the objectives (``metric`` and
``mode``, one or several) and the paired tests' ``reference``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vmbench.ablation import ABLATION_SEP, ABLATIONS, split_model_name
from vmbench.config import ConfigError, check_choice, check_keys, config_error
from vmbench.errors import VmbenchError
from vmbench.protocols import CV, default_select_mode

def check_name(value: Any, where: str) -> str:
    """A sweep or experiment name (``where``: "FILE: name" or "--name").

    Names end up in folder names and MLflow filter strings: keep them plain.
    """
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ConfigError(f"{where}: expected a name of letters, digits, '.', '_' or '-', got {value!r}")
    return value


def data_root_anchor(space_file: str | Path) -> tuple[Path, str]:
    """The folder a relative ``data_root`` of ``space_file`` is resolved against, and its description.

    The vmbench checkout holding the file (a folder with ``pyproject.toml`` and ``vmbench/``), so
    that the shipped files' ``data_root: data/isic2018`` means ``<checkout>/data/isic2018``, as the
    datasets' default folders do; else the file's own folder. Never the working directory: under
    ``ray submit`` the driver runs in the home folder, and trials run in Ray's folders on other nodes.
    """
    folder = Path(space_file).expanduser().resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "vmbench" / "__init__.py").is_file():
            return candidate, f"the vmbench checkout {candidate} that holds the file"
    return folder, f"the file's folder {folder}"


def _resolve_root(root: Any, anchor: Path) -> Any:
    if not isinstance(root, str) or "://" in root:
        return root  # None (the dataset's default) or a URL: as given
    path = Path(root).expanduser()
    return str(path if path.is_absolute() else (anchor / path).resolve())


# ------------------------------------------------------------------------------------------------
# Reading a file


_DECLARATION_KEYS = ("name", "path", "format", "labels")


def _declared_datasets(raw: dict, space_file: str | Path | None, source: str) -> dict[str, dict[str, Any]]:
    """Register the ``datasets:`` entries that are mappings (vmbench.data.user) and leave their names
    in ``raw``; returns each one's configuration overrides (``data.root``, ``data.options.format``,
    ``data.options.labels``), which travel in every study's base configuration to the workers.
    A relative ``path`` is resolved as ``data_root`` is (:func:`data_root_anchor`)."""
    items = raw.get("datasets")
    if not isinstance(items, list) or not any(isinstance(item, dict) for item in items):
        return {}
    anchor = data_root_anchor(space_file)[0] if space_file else Path.cwd()
    declared, names = {}, []
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            names.append(item)
            continue
        declared[item.get("name")] = declare_entry(item, f"datasets[{k}]", anchor, source)
        names.append(item["name"])
    raw["datasets"] = names
    return declared


def declare_entry(item: dict, where: str, anchor: Path, source: str) -> dict[str, Any]:
    """Register one folder entry (``{name, path, format, labels}``, ``where`` its place in the file)
    and return its configuration overrides (``data.name``, ``data.root``, ``data.options.*``)."""
    from vmbench.data.user import declare_path
    from vmbench.registry import declare_dataset

    check_keys(item, _DECLARATION_KEYS, where, source)
    for key in ("name", "path"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise config_error(source, f"{where}.{key}", f"is required (a string), got {item.get(key)!r}")
    check_name(item["name"], f"{source}: {where}.name")
    path = Path(_resolve_root(item["path"], anchor))
    if not path.is_dir():
        raise config_error(source, f"{where}.path", f"{path} is not a folder")
    try:
        overrides = declare_path(path, item.get("format"), item.get("labels"), name=item["name"])
        options = {key.rsplit(".", 1)[1]: overrides[key] for key in ("data.options.format", "data.options.labels")}
        declare_dataset(item["name"], overrides["data.root"], options)
    except VmbenchError as err:
        raise config_error(source, where, str(err)) from None
    return overrides


def _apply_declarations(spec: Any, declared: dict[str, dict[str, Any]]) -> None:
    """Each study of a declared dataset (of the ``SweepSpec`` ``spec``) gets the declaration's keys."""
    for study in spec.studies:
        if study.dataset in declared:
            overrides = {k: v for k, v in declared[study.dataset].items() if k != "data.name"}
            study.base = study.base.with_overrides(overrides, source=f"{spec.source} (datasets)")


def _ablations(raw: dict, source: str) -> list[str]:
    """The top-level ``ablations:`` (a name or a list of names of vmbench.ablation.ABLATIONS)."""
    value = raw.get("ablations", [])
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise config_error(source, "ablations", f"expected a list of ablation names ({', '.join(ABLATIONS)}), "
                                                f"got {value!r}")
    for name in value:
        if name not in ABLATIONS:
            raise config_error(source, "ablations", f"unknown ablation {name!r} (known: {', '.join(ABLATIONS)})")
    return list(dict.fromkeys(value))


def _with_twins(models: list[str], ablations: list[str], source: str) -> list[str]:
    """``models`` with each Mamba model followed by its ablation twins (``model~ablation``)."""
    if not ablations:
        return models
    import vmbench
    from vmbench.errors import UnknownNameError

    out = []
    for model in models:
        out.append(model)
        try:
            info = vmbench.model_info(model)
        except UnknownNameError as error:
            raise config_error(source, "models", str(error)) from None
        if info.mamba_parts and split_model_name(model)[1] is None:
            out += [f"{model}{ABLATION_SEP}{a}" for a in ablations]
    if len(out) == len(models):
        raise config_error(source, "ablations", f"none of the models ({', '.join(models)}) has a Mamba part to remove; "
                                                "add a Mamba model (vmbench models --ablations) or remove ablations")
    return list(dict.fromkeys(out))


COST_OBJECTIVES = ("n_params", "gmacs", "latency_ms", "peak_mem_mb")


def _objectives(raw: dict, source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``metric`` (one name or a list) and ``mode`` (one or a list of the same length; default per
    metric: min for losses, distances and costs, max otherwise)."""
    metric = raw.get("metric", "val_dsc")
    metrics = [metric] if isinstance(metric, str) else metric
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise config_error(source, "metric", f"expected a metric name or a list of them, got {metric!r}")
    if len(set(metrics)) != len(metrics):
        raise config_error(source, "metric", f"lists {metrics!r} with a repeat")
    default = [("min" if m in COST_OBJECTIVES else default_select_mode(m)) for m in metrics]
    mode = raw.get("mode", default if len(metrics) > 1 else default[0])
    modes = [mode] if isinstance(mode, str) else mode
    if not isinstance(modes, list) or len(modes) != len(metrics):
        raise config_error(source, "mode", f"expected {len(metrics)} of min/max (one per metric), got {mode!r}")
    for k, value in enumerate(modes):
        check_choice(value, ("min", "max"), f"mode[{k}]" if len(modes) > 1 else "mode", source)
    if len(metrics) > 1 and (raw.get("budget") or {}).get("scheduler") == "asha":
        raise config_error(source, "budget.scheduler", "asha stops trials on one metric, and this space optimises "
                                                       f"{len(metrics)} ({', '.join(metrics)}); use fifo (or leave it out)")
    return tuple(metrics), tuple(modes)


WILCOXON = "wilcoxon"  # budget.scheduler: Optuna's WilcoxonPruner on the folds' scores (vmbench.sweep.wilcoxon)


def _check_scheduler(spec: Any, budget: Any) -> None:
    """``budget.scheduler: wilcoxon`` needs protocol cv with cv_search mean and one objective, and
    ``budget.p_threshold`` (``budget``: the file's mapping) goes with it only; ``spec``: the SweepSpec."""
    source, chosen = spec.source, spec.budget.scheduler
    if chosen != WILCOXON:
        if isinstance(budget, dict) and "p_threshold" in budget:
            raise config_error(source, "budget.p_threshold", f"only budget.scheduler: wilcoxon uses it (scheduler is "
                                                             f"{chosen!r})")
        return
    why = "wilcoxon stops a trial on its folds' scores, trained one after another: it needs protocol cv with cv_search: mean"
    if spec.protocol != CV:
        raise config_error(source, "budget.scheduler", f"{why} (protocol is {spec.protocol!r})")
    if spec.search_folds == 1:  # cv_search one-fold: a trial scores one fold, nothing to test
        raise config_error(source, "budget.scheduler", f"{why} (cv_search is {spec.cv_search!r})")
    if spec.multi_objective:
        raise config_error(source, "budget.scheduler", f"wilcoxon compares trials on one metric, and this space optimises "
                                                       f"{len(spec.objectives)} ({', '.join(spec.objectives)}); use fifo "
                                                       "(or leave it out)")
    if not 0 < spec.budget.p_threshold <= 1:
        raise config_error(source, "budget.p_threshold", f"expected a p-value in (0, 1], got {spec.budget.p_threshold:g}")


def scheduler_text(spec: Any) -> str:
    """The plan's words for the schedulers other than ASHA: fifo and wilcoxon."""
    if spec.scheduler != WILCOXON:
        return "every trial runs its whole budget: no early stopping"
    p, folds = spec.budget.p_threshold, spec.folds
    # The exact one-sided test on n folds all worse gives p = 1/2^n: its smallest value.
    first = next((n for n in range(2, folds + 1) if 0.5 ** n < p), None)
    when = (f"so at p_threshold {p:g} a trial can be stopped once {first} of its {folds} folds are scored" if first else
            f"which {folds} folds cannot reach at p_threshold {p:g} (smallest p: 1/2^{folds} = {0.5 ** folds:g}) "
            "unless scores tie: raise p_threshold or the folds")
    return (f"Optuna's WilcoxonPruner: each trial trains its folds one after another and is stopped after a fold "
            f"once its fold scores are significantly worse than the best complete trial's on the same folds "
            f"(one-sided Wilcoxon signed-rank p < {p:g}; the exact p of n folds all worse is 1/2^n), {when}")


def _reference(raw: dict, models: list[str], source: str) -> str | None:
    """``reference``: one of the sweep's models, or ``none`` for no paired test (see SweepSpec)."""
    value = raw.get("reference")
    if value is None:
        return "vmunet" if "vmunet" in models else models[0]
    if not isinstance(value, str):
        raise config_error(source, "reference", f"expected a model name or none, got {value!r}")
    if value.lower() == "none":
        return None
    if value not in models:
        raise config_error(source, "reference", f"{value!r} is not one of the sweep's models ({', '.join(models)})")
    return value
