"""``budget.scheduler: wilcoxon`` and ``budget.p_threshold`` in a search-space file: where they are allowed,
what the plan says, and the search's identity (content hash) of spaces without them unchanged."""

from __future__ import annotations

import pytest

from vmbench.config import ConfigError
from vmbench.search_space import parse_spec

CV = {
    "experiment": "t",
    "name": "t",
    "models": ["unet"],
    "dataset": "synthetic-isic",
    "protocol": "cv",
    "folds": 3,
    "cv_search": "mean",
    "budget": {"trials": 2, "concurrent": 1, "max_epochs": 2, "scheduler": "fifo"},
    "space": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}},
}
WILCOXON = {**CV, "folds": 5, "budget": {**CV["budget"], "scheduler": "wilcoxon"}}


def _without(raw: dict, *keys: str) -> dict:
    return {k: v for k, v in raw.items() if k not in keys}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({**_without(WILCOXON, "folds", "cv_search"), "protocol": "holdout"},
         r"x\.yaml: budget\.scheduler: wilcoxon stops a trial on its folds' scores.*needs protocol cv with "
         r"cv_search: mean \(protocol is 'holdout'\)$"),
        ({**WILCOXON, "cv_search": "one-fold"}, r"budget\.scheduler: .* \(cv_search is 'one-fold'\)$"),
        (_without(WILCOXON, "cv_search"), r"budget\.scheduler: .* \(cv_search is 'one-fold'\)$"),  # the default
        ({**WILCOXON, "metric": ["val_dsc", "n_params"]},
         r"budget\.scheduler: wilcoxon compares trials on one metric, and this space optimises 2 \(val_dsc, n_params\)"),
        ({**CV, "budget": {"p_threshold": 0.2}},
         r"budget\.p_threshold: only budget\.scheduler: wilcoxon uses it \(scheduler is 'auto'\)"),
        ({**CV, "budget": {"scheduler": "asha", "p_threshold": 0.1}}, r"budget\.p_threshold: only .*'asha'"),
        ({**WILCOXON, "budget": {"scheduler": "wilcoxon", "p_threshold": 0}},
         r"budget\.p_threshold: expected a p-value in \(0, 1\], got 0$"),
        ({**WILCOXON, "budget": {"scheduler": "wilcoxon", "p_threshold": 1.5}}, r"budget\.p_threshold: .*got 1\.5$"),
        ({**WILCOXON, "budget": {"scheduler": "wilcoxons"}}, r"budget\.scheduler: 'wilcoxons' is not one of"),
    ],
)
def test_wilcoxon_is_refused_where_it_cannot_work_in_one_line(raw, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_spec(raw, source="x.yaml")
    assert "\n" not in str(info.value)


def test_wilcoxon_budget_and_plan():
    spec = parse_spec(WILCOXON, source="x.yaml")
    assert (spec.scheduler, spec.budget.p_threshold) == ("wilcoxon", 0.1)  # Optuna's default
    assert spec.search_steps == 10  # 2 epochs of each of 5 folds: a full-budget trial's last report
    assert parse_spec(CV, source="x.yaml").search_steps == 2  # the folds in step: one epoch counts once
    plan = spec.plan()
    assert "Optuna's WilcoxonPruner: each trial trains its folds one after another" in plan
    # 1/2^4 = 0.0625 < 0.1 <= 1/2^3: the exact test can first reject after 4 folds.
    assert "so at p_threshold 0.1 a trial can be stopped once 4 of its 5 folds are scored" in plan
    three = parse_spec({**WILCOXON, "folds": 3}, source="x.yaml").plan()
    assert "which 3 folds cannot reach at p_threshold 0.1 (smallest p: 1/2^3 = 0.125)" in three
    loose = parse_spec({**WILCOXON, "folds": 3, "budget": {"scheduler": "wilcoxon", "p_threshold": 0.3}}, source="x.yaml")
    assert "at p_threshold 0.3 a trial can be stopped once 2 of its 3 folds are scored" in loose.plan()


def test_the_search_identity_of_spaces_without_it_is_unchanged():
    # Computed with the code before budget.scheduler wilcoxon and budget.p_threshold existed: a sweep
    # started then must still resume (--resume compares this hash).
    assert parse_spec(CV, source="x.yaml").content_hash() == "d2ce0ed041012c03"
    hashes = {parse_spec(raw, source="x.yaml").content_hash() for raw in (
        {**CV, "folds": 5},
        WILCOXON,
        {**WILCOXON, "budget": {**WILCOXON["budget"], "p_threshold": 0.2}},
    )}
    assert len(hashes) == 3  # the scheduler and a p_threshold other than the default are part of the search
    default = {**WILCOXON, "budget": {**WILCOXON["budget"], "p_threshold": 0.1}}
    assert parse_spec(default, source="x.yaml").content_hash() == parse_spec(WILCOXON, source="x.yaml").content_hash()
