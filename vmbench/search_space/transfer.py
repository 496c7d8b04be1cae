"""The top-level ``transfer:`` key: further datasets every final run is scored on, with no retraining.

U-Bench (Tang et al. 2025) adds a zero-shot axis to its benchmark: a model trained on one dataset is
scored on another of the same task. A search space asks for it with::

    transfer: [isic2017, {name: polyps-b, path: data/polyps_b, format: folder}]

An entry is a registered dataset's name (read from its default folder), a dataset the file declares
under ``datasets:`` (its folder), or a folder declared as a ``datasets:`` entry is. Every target must
have the classes and evaluation of every swept dataset (a binary lesion model cannot be scored on 8
organs); a target that is also swept scores the other datasets' models only. The final runs write
``eval/<target>-test/`` and log ``eval_<target>-test_*`` metrics, tagged
:func:`vmbench.tracking.transfer_tag`; ``vmbench leaderboard`` and the report show them as
transfer tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbench.config import config_error
from vmbench.errors import UnknownNameError
from vmbench.search_space.toplevel import data_root_anchor, declare_entry

TRANSFER_SPLIT = "test"


@dataclass(frozen=True)
class TransferTarget:
    """A dataset the final runs are also scored on: its name, folder (None: its default) and a
    declared dataset's ``data.options`` (format, labels), which the workers register it with."""

    name: str
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def evaluation_name(self) -> str:
        """The run's evaluation name: ``eval/<it>/`` and the ``eval_<it>_*`` metrics."""
        return f"{self.name}-{TRANSFER_SPLIT}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "root": self.root, "options": dict(self.options)}


def parse_transfer(raw: dict, datasets: list[str], declared: dict[str, dict[str, Any]],
                   space_file: str | Path | None, source: str, check_registry: bool = True) -> list[TransferTarget]:
    """The checked ``transfer:`` entries of a file (``datasets``: the swept datasets; ``declared``:
    the overrides of those the file declares; ``check_registry``: names and kinds checked against
    the registry, as the swept datasets are)."""
    items = raw.get("transfer", [])
    items = [items] if isinstance(items, (str, dict)) else items
    if not isinstance(items, list):
        raise config_error(source, "transfer", f"expected a list of dataset names or folder entries, got {items!r}")
    anchor = data_root_anchor(space_file)[0] if space_file else Path.cwd()
    targets: list[TransferTarget] = []
    for k, item in enumerate(items):
        where = f"transfer[{k}]"
        if isinstance(item, dict):
            overrides = declare_entry(item, where, anchor, source)
        elif isinstance(item, str) and item:
            overrides = declared.get(item) or (_registered(item, where, source) if check_registry
                                               else {"data.name": item})
        else:
            raise config_error(source, where, f"expected a dataset name or {{name, path, format, labels}}, got {item!r}")
        name = overrides["data.name"]
        if name in {t.name for t in targets}:
            raise config_error(source, where, f"{name!r} is listed twice")
        if datasets == [name]:
            raise config_error(source, where, f"{name!r} is the dataset the sweep trains on: its test split is scored "
                                              "already; list other datasets")
        if check_registry:
            _check_same_kind(name, datasets, where, source)
        options = {key.rsplit(".", 1)[1]: v for key, v in overrides.items() if key.startswith("data.options.")}
        targets.append(TransferTarget(name, overrides.get("data.root"), options))
    return targets


def _registered(name: str, where: str, source: str) -> dict[str, Any]:
    import vmbench

    try:
        vmbench.dataset_info(name)
    except UnknownNameError as error:
        raise config_error(source, where, f"{error} (or declare a folder: {{name, path, format, labels}})") from None
    return {"data.name": name}


def _check_same_kind(target: str, datasets: list[str], where: str, source: str) -> None:
    """A model is scored only on data of its own kind: same output channels, same evaluation."""
    import vmbench

    want = vmbench.dataset_info(target)
    for dataset in datasets:
        have = vmbench.dataset_info(dataset)
        if (have.num_classes, have.evaluation) != (want.num_classes, want.evaluation):
            raise config_error(source, where, f"{target} ({want.num_classes} output channel(s), {want.evaluation} "
                                              f"evaluation) cannot score models trained on {dataset} "
                                              f"({have.num_classes} output channel(s), {have.evaluation} evaluation); "
                                              "transfer needs datasets of the same kind")


def transfer_lines(targets: list[TransferTarget]) -> list[str]:
    """The dry-run plan's line for the key."""
    if not targets:
        return []
    named = ", ".join(f"{t.name} ({t.root})" if t.root else t.name for t in targets)
    return [f"  transfer: every final run is also scored, with no retraining, on the {TRANSFER_SPLIT} split of "
            f"{named} (a swept dataset scores the other datasets' models only)"]
