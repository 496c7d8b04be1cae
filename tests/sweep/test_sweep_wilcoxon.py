"""``budget.scheduler: wilcoxon`` without Ray running: the scheduler's decisions checked against the
Wilcoxon signed-rank test worked out with scipy (not against Optuna's pruner, which the scheduler
calls), folds trained one after another and resumed where a trial stopped, and the best trial chosen
among those that scored every fold."""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest
from scipy.stats import wilcoxon

from vmbench.sweep.folds import FOLD_EPOCH_KEY, FOLD_KEY, fit_in_turn, fold_scores, reached_epoch, trial_parts
from vmbench.sweep.wilcoxon import WilcoxonScheduler

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Optuna warns on NaN scores (never pruned)

FOLDS = 5


def _result(scores: list[float], metric: str = "val_dsc") -> dict:
    return {"epoch": 1, **{f"{metric}_fold{k}": v for k, v in enumerate(scores)}}


class _Controller:
    """What the scheduler reads of Tune's controller: every trial's status and last result."""

    def __init__(self, *trials):
        self.trials = list(trials)

    def get_trials(self):
        return self.trials


def _trial(trial_id: str, scores: list[float], status: str = "TERMINATED", metric: str = "val_dsc"):
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=_result(scores, metric))


def _decide(scheduler, running: list[float], *others, metric: str = "val_dsc") -> str:
    trial = _trial("running", running, "RUNNING", metric)
    return scheduler.on_trial_result(_Controller(trial, *others), trial, _result(running, metric))


def _p_less(running: list[float], best: list[float]) -> float:
    """One-sided Wilcoxon signed-rank p that ``running`` is below ``best`` on the same folds (scipy)."""
    return wilcoxon([a - b for a, b in zip(running, best)], alternative="less", zero_method="zsplit").pvalue


BEST = [0.80, 0.82, 0.78, 0.85, 0.81]
WORSE = [0.50, 0.52, 0.49, 0.55, 0.51]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_a_trial_worse_on_every_fold_is_stopped_once_the_test_can_say_so(n):
    scheduler = WilcoxonScheduler("val_dsc", "max", FOLDS, p_threshold=0.1)
    p = _p_less(WORSE[:n], BEST[:n])
    assert p == pytest.approx(0.5 ** n)  # the exact test: every fold worse
    expected = "STOP" if p < 0.1 else "CONTINUE"  # 4 folds: 0.0625 < 0.1; 3 folds: 0.125
    assert _decide(scheduler, WORSE[:n], _trial("best", BEST)) == expected
    assert (n, expected) != (3, "STOP")
    # A looser threshold stops after fewer folds; two folds are the fewest the test is asked with.
    assert _decide(WilcoxonScheduler("val_dsc", "max", FOLDS, 0.3), WORSE[:n], _trial("best", BEST)) == (
        "STOP" if _p_less(WORSE[:n], BEST[:n]) < 0.3 else "CONTINUE")


def test_it_compares_with_the_best_complete_trial_by_its_mean():
    top = [0.90, 0.90, 0.60, 0.90, 0.90]  # mean 0.84: the best, though not on fold 2
    flat = [0.70] * FOLDS  # mean 0.70
    running = [0.65, 0.66, 0.67, 0.64]  # below `flat` on all four folds, above `top` on fold 2
    assert _p_less(running, flat[:4]) == pytest.approx(1 / 16) and _p_less(running, top[:4]) == pytest.approx(2 / 16)
    scheduler = WilcoxonScheduler("val_dsc", "max", FOLDS, p_threshold=0.1)
    assert _decide(scheduler, running, _trial("top", top), _trial("flat", flat)) == "CONTINUE"  # 0.125 vs `top`
    assert _decide(scheduler, running, _trial("flat", flat)) == "STOP"  # 0.0625 vs `flat`, now the best


def test_losses_are_minimised():
    low, high = [0.20, 0.25, 0.22, 0.30, 0.21], [0.40, 0.45, 0.41, 0.50]
    scheduler = WilcoxonScheduler("val_loss", "min", FOLDS, p_threshold=0.1)
    assert wilcoxon([a - b for a, b in zip(high, low)], alternative="greater", zero_method="zsplit").pvalue < 0.1
    assert _decide(scheduler, high, _trial("low", low, metric="val_loss"), metric="val_loss") == "STOP"
    assert _decide(scheduler, low[:4], _trial("high", high + [0.4], metric="val_loss"), metric="val_loss") == "CONTINUE"


def test_nothing_stops_without_evidence():
    scheduler = WilcoxonScheduler("val_dsc", "max", FOLDS, p_threshold=0.1)
    best = _trial("best", BEST)
    assert _decide(scheduler, BEST[:4], best) == "CONTINUE"  # the same scores: no difference at all
    assert _decide(scheduler, [0.79, 0.83, 0.77, 0.86], best) == "CONTINUE"  # mixed signs: p = 0.3125 by scipy
    assert _p_less([0.79, 0.83, 0.77, 0.86], BEST[:4]) > 0.1
    assert _decide(scheduler, WORSE[:4]) == "CONTINUE"  # no trial scored every fold yet: nothing to beat
    # Neither an errored trial nor one stopped before its last fold is a complete trial.
    assert _decide(scheduler, WORSE[:4], _trial("err", BEST, status="ERROR"), _trial("part", BEST[:4])) == "CONTINUE"
    assert _decide(scheduler, WORSE[:4], _trial("nan", [float("nan")] * FOLDS)) == "CONTINUE"
    assert _decide(scheduler, [float("nan")] * 4, best) == "CONTINUE"  # Optuna never prunes on NaN
    trial = _trial("running", WORSE, "RUNNING")
    assert scheduler.on_trial_result(_Controller(trial, best), trial, _result(WORSE)) == "CONTINUE"  # all folds: done
    assert scheduler.on_trial_result(_Controller(trial, best), trial, {"epoch": 3, "val_dsc": 0.1}) == "CONTINUE"


def test_fold_scores_read_the_reported_keys():
    assert fold_scores({"val_dsc_fold0": 0.5, "val_dsc_fold2": 0.7, "val_dsc": 0.6, "fold": 2}, "val_dsc", 3) == {
        0: 0.5, 2: 0.7}


def test_pick_best_prefers_trials_that_scored_every_fold():
    from vmbench.search_space import parse_spec
    from vmbench.sweep.driver import pick_best

    spec = parse_spec({"experiment": "t", "models": ["unet"], "dataset": "synthetic-isic", "protocol": "cv", "folds": 3,
                       "cv_search": "mean", "budget": {"trials": 2, "max_epochs": 2, "scheduler": "wilcoxon"},
                       "space": {"optim.lr": {"type": "choice", "values": [0.001, 0.01]}}}, source="x.yaml")

    def result(lr, epoch, value):
        return SimpleNamespace(metrics={"epoch": epoch, "val_dsc": value, "trial_id": str(lr)}, error=None,
                               config={"optim.lr": lr}, path=f"/t/{lr}")

    # Stopped after 2 of 3 folds (epoch 4 of 6): its last val_dsc (0.95) is one fold's, not the mean.
    best, info = pick_best([result(0.001, 6, 0.70), result(0.01, 4, 0.95)], spec.studies[0], spec)
    assert best == {"optim.lr": 0.001} and info["full_budget"] and info["value"] == 0.70


# ------------------------------------------------------------------------------------------ folds in turn


def tiny_cfg(folds: int = 2):
    from vmbench.config import ExperimentConfig

    return ExperimentConfig.from_dict({
        "model": {"name": "unet", "overrides": {"base_channels": 4}},
        "data": {"name": "synthetic-isic", "img_size": 32, "options": {"n": 24}, "protocol": "cv", "fold": 0,
                 "folds": folds},
        "train": {"epochs": 2, "batch_size": 8, "progress": False, "seed": 3},
    })


class _Stop(Exception):
    pass


def _recorder(reports: list, stop_after: int | None = None):
    def report(epoch, metrics, histories, training, kept):
        reports.append({"epoch": epoch, "metrics": dict(metrics), "epochs": sum(len(h) for h in histories),
                        "kept": [(name, last.name, best.name if best else None) for name, last, best in kept],
                        "fold": training.cfg.data.fold})
        if stop_after is not None and epoch >= stop_after:
            raise _Stop  # the trial is lost here (a node gone, a retry); Tune restores its last checkpoint
    return report


@pytest.mark.slow  # 2 folds x 2 epochs, twice (at once, then stopped and resumed): about 20 s on 2 loaded cores
def test_folds_in_turn_report_each_folds_score_and_resume_where_they_stopped(tmp_path):
    from vmbench.rundir import RunDir

    # The metric is val_loss: models this small score a DSC of 0 on every fold after 2 epochs.
    parts = trial_parts(tiny_cfg(), "mean", RunDir(tmp_path / "whole"))
    for part in parts:
        part.run_dir.checkpoints.mkdir(parents=True)
    reports: list = []
    fit_in_turn(parts, _recorder(reports), "val_loss")
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4]  # fold k's epoch e is k x 2 + e
    assert [(r["metrics"][FOLD_KEY], r["metrics"][FOLD_EPOCH_KEY], r["fold"]) for r in reports] == [
        (0, 1, 0), (0, 2, 0), (1, 1, 1), (1, 2, 1)]
    assert [r["epochs"] for r in reports] == [1, 2, 3, 4]  # the cost: every fold's epochs so far
    assert [len(r["kept"]) for r in reports] == [1, 1, 2, 2] and reports[0]["kept"][0][:2] == ("fold0", "last.pt")
    fold0, fold1 = reports[1]["metrics"]["val_loss"], reports[3]["metrics"]["val_loss_fold1"]
    assert "val_loss_fold0" not in reports[0]["metrics"]  # fold 0 is not finished at its first epoch
    assert all(r["metrics"]["val_loss_fold0"] == fold0 for r in reports[1:]) and "val_loss_fold1" not in reports[2]["metrics"]
    # The last report is what an in-step trial reports at its end: the trial's metric is the folds' mean.
    assert reports[3]["metrics"]["val_loss"] == pytest.approx(statistics.fmean([fold0, fold1])) and fold0 != fold1

    # Lost after fold 1's first epoch (epoch 3), then run again on the same files: fold 0 is not trained
    # again (its score comes from its checkpoint), fold 1 resumes at its second epoch.
    again = trial_parts(tiny_cfg(), "mean", RunDir(tmp_path / "lost"))
    for part in again:
        part.run_dir.checkpoints.mkdir(parents=True)
    first: list = []
    with pytest.raises(_Stop):
        fit_in_turn(again, _recorder(first, stop_after=3), "val_loss")
    assert reached_epoch(again, in_turn=True) == 3
    resumed: list = []
    fit_in_turn(again, _recorder(resumed), "val_loss")
    assert [r["epoch"] for r in resumed] == [4] and resumed[0]["epochs"] == 4
    for key in ("val_loss", "val_loss_fold0", "val_loss_fold1"):  # the same trajectory as without the loss
        assert resumed[0]["metrics"][key] == pytest.approx(reports[3]["metrics"][key], rel=1e-5)


def test_a_trial_restored_between_folds_gets_the_folds_it_began(tmp_path, monkeypatch):
    """The Tune checkpoint of a trial training its folds in turn holds the folds begun: every file is
    restored though later folds have none, and the trial resumes at the epoch it reached."""
    from ray import tune

    from vmbench.rundir import RunDir
    from vmbench.sweep.trainable import _restore_checkpoint

    saved = tmp_path / "saved"
    for fold in (0, 1):
        (saved / f"fold{fold}").mkdir(parents=True)
        for name in ("last.pt", "best.pt"):
            (saved / f"fold{fold}" / name).write_bytes(f"{name} {fold}".encode())
    parts = trial_parts(tiny_cfg(3), "mean", RunDir(tmp_path / "work"))
    assert not _restore_checkpoint(tune.Checkpoint.from_directory(saved), parts)  # not every fold: in step, start over
    assert [p.run_dir.last.exists() for p in parts] == [True, True, False]
    assert (tmp_path / "work" / "fold1" / "checkpoints" / "best.pt").read_bytes() == b"best.pt 1"
    # Fold 0 finished (2 epochs), fold 1 at its first: the trial had reported epoch 3.
    epochs = {parts[0].run_dir.last: 2, parts[1].run_dir.last: 1}
    monkeypatch.setattr("vmbench.engine.load_state", lambda path: SimpleNamespace(epoch=epochs[path]))
    assert reached_epoch(parts, in_turn=True) == 3
    assert reached_epoch(parts, in_turn=False) == 2  # in step every part is at the first one's epoch
