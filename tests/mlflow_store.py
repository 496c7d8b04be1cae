"""A small MLflow store for the leaderboard and report tests: runs logged with ``MlflowClient`` into an
SQLite file under a temporary folder, with the tags, metrics and per-case artifacts of vmbench's
tracking contract (:mod:`vmbench.tracking`), and the protocol-cv store whose statistics the tests
work out by hand."""

from __future__ import annotations

import itertools
from pathlib import Path

import mlflow
import pandas as pd

from vmbench import tracking


class Store:
    def __init__(self, root: Path):
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = mlflow.MlflowClient(self.uri)
        self.exp = tracking.get_or_create_experiment(self.client, "bench-exp", (root / "art").as_uri())
        self.parent = self.client.create_run(
            self.exp, tags={tracking.TAG_KIND: "sweep", tracking.TAG_SWEEP: "s1"}
        ).info.run_id
        self.client.set_terminated(self.parent)

    def log(
        self,
        model: str,
        dataset: str,
        protocol: str,
        seed: int,
        metrics: dict[str, float],
        *,
        status: str = "FINISHED",
        stage: str = "final",
        per_case: pd.DataFrame | None = None,
        val_is_test: bool = False,
        hardware: str = "NVIDIA H100 (cuda:0)",
        experiment: str | None = None,
        fold: int | None = None,
        folds: int | None = None,
        val_per_case: pd.DataFrame | None = None,
        history: dict[str, list[float]] | None = None,
        params: dict[str, object] | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """One trial run; ``history``: key -> per-epoch values logged at steps 1, 2, ...; ``params``
        replace the default ones; ``tags`` are added (e.g. the outcome of a search trial)."""
        from mlflow.entities import Metric, Param

        exp = self.exp if experiment is None else tracking.get_or_create_experiment(
            self.client, experiment, (self.root / "art").as_uri()
        )
        run_tags = {
            tracking.TAG_KIND: "trial",
            tracking.TAG_STAGE: stage,
            tracking.TAG_MODEL: model,
            tracking.TAG_DATASET: dataset,
            tracking.TAG_PROTOCOL: protocol,
            tracking.TAG_SEED: str(seed),
            tracking.TAG_SWEEP: "s1",
            tracking.TAG_VAL_IS_TEST: "true" if val_is_test else "false",
            tracking.TAG_HARDWARE: hardware,
            tracking.TAG_PARENT: self.parent,
            tracking.TAG_STUDY: f"{dataset}__{model}",
            **({tracking.TAG_FOLD: str(fold), tracking.TAG_FOLDS: str(folds)} if fold is not None else {}),
            **(tags or {}),
        }
        run_id = self.client.create_run(exp, tags=run_tags).info.run_id
        metric_items = [Metric(k, float(v), 0, 0) for k, v in metrics.items()]
        for key, values in (history or {}).items():
            metric_items += [Metric(key, float(v), 0, step) for step, v in enumerate(values, start=1)]
        default_params = {"optim.lr": "0.001", "model.name": model, "train.seed": str(seed)}
        self.client.log_batch(
            run_id,
            metrics=metric_items,
            params=[Param(k, str(v)) for k, v in (params if params is not None else default_params).items()],
        )
        for table, artifact in ((per_case, tracking.PER_CASE_ARTIFACT), (val_per_case, tracking.PER_CASE_VAL_ARTIFACT)):
            if table is not None:
                folder = self.root / "upload" / run_id / Path(artifact).parent
                folder.mkdir(parents=True)
                table.to_csv(folder / Path(artifact).name, index=False)
                self.client.log_artifact(run_id, str(folder / Path(artifact).name), artifact_path=str(Path(artifact).parent))
        self.client.set_terminated(run_id, status=status)
        return run_id

    def log_study(self, study: str, best: dict[str, object]) -> None:
        """The sweep parent's ``studies/<study>.json``, as the sweep driver writes it."""
        self.client.log_dict(self.parent, {"best": best, "trials": {}, "final": []}, f"studies/{study}.json")


COST = {"n_params": 27_427_561, "gmacs": 4.11, "latency_ms": 12.0, "peak_mem_mb": 900.0, "epochs": 300}

# Per-case ISIC dice (fractions). vmunet: two seeds; unet: one seed, every case better by a
# distinct amount, ids in another order, plus one case the reference lacks.

def _isic_case(ids, dice):
    return pd.DataFrame({"id": ids, "dice": dice, "iou": [d * 0.9 for d in dice], "acc": [0.95] * len(ids)})


def _isic_metrics(dsc: float, train_time: float, device_hours: float) -> dict[str, float]:
    return {
        "test_dsc": dsc, "test_miou": dsc - 0.1, "test_acc": 0.95, "test_spe": 0.97, "test_sen": 0.9,
        "test_per_image_dice": dsc - 0.02, "train_time_s": train_time, "device_hours": device_hours, **COST,
    }


# Synapse: per case and organ rows; the per-case DSC is the mean over organs of `dice`.


def _exact_wilcoxon_two_sided(d: list[float]) -> float:
    """Enumerate all 2^n sign patterns of the ranks of |d| (no ties, no zeros)."""
    order = sorted(range(len(d)), key=lambda i: abs(d[i]))
    ranks = [0] * len(d)
    for r, i in enumerate(order, start=1):
        ranks[i] = r
    w_plus = sum(r for r, x in zip(ranks, d) if x > 0)
    patterns = [sum(r for r, s in zip(range(1, len(d) + 1), signs) if s) for signs in itertools.product((0, 1), repeat=len(d))]
    low = sum(w <= w_plus for w in patterns) / len(patterns)
    high = sum(w >= w_plus for w in patterns) / len(patterns)
    return min(1.0, 2 * min(low, high))


def _frame(rows: list[dict]) -> pd.DataFrame:
    """A ``load_runs``-shaped frame, one run per dict (model, dataset, stage, status, outcome, metrics)."""
    records = []
    for i, r in enumerate(rows):
        record = {
            "run_id": f"run{i}",
            "status": r.get("status", "FINISHED"),
            f"tags.{tracking.TAG_KIND}": "trial",
            f"tags.{tracking.TAG_STAGE}": r.get("stage", "final"),
            f"tags.{tracking.TAG_MODEL}": r.get("model", "vmunet"),
            f"tags.{tracking.TAG_DATASET}": r.get("dataset", "isic2018"),
            f"tags.{tracking.TAG_PROTOCOL}": "holdout",
            f"tags.{tracking.TAG_SEED}": str(i),
            f"tags.{tracking.TAG_OUTCOME}": r.get("outcome"),
        }
        record.update({f"metrics.{k}": float(v) for k, v in r.get("metrics", {}).items()})
        records.append(record)
    return pd.DataFrame.from_records(records)


CV_FOLDS, CV_SEEDS = 3, (0, 1)

CV_TEST_IDS = ["T1", "T2", "T3", "T4", "T5", "T6"]

CV_POOL_IDS = ["P1", "P2", "P3", "P4", "P5", "P6"]  # fold f validates P(2f+1) and P(2f+2)

CV_TEST = {  # per-case test dice averaged over folds and seeds
    "vmunet": [0.70, 0.80, 0.60, 0.90, 0.50, 0.75],
    "unet": [0.71, 0.82, 0.63, 0.94, 0.55, 0.81],  # +0.01 ... +0.06: all better
    "att-unet": [0.72, 0.79, 0.63, 0.86, 0.55, 0.81],  # +0.02 -0.01 +0.03 -0.04 +0.05 +0.06
}

CV_VAL = {  # per-case validation dice averaged over seeds
    "vmunet": [0.60, 0.70, 0.80, 0.65, 0.75, 0.85],
    "unet": [0.65, 0.75, 0.85, 0.70, 0.80, 0.90],
    "att-unet": [0.58, 0.68, 0.78, 0.63, 0.73, 0.83],
}

CV_DSC = {"vmunet": 0.80, "unet": 0.83, "att-unet": 0.78}  # test_dsc = this + 0.01 fold + 0.02 seed

CV_SEARCH = {  # model -> (outcome, status, per-epoch seconds) of each search trial
    "vmunet": [("completed", "FINISHED", [10, 10, 10]), ("completed", "FINISHED", [10, 10, 10]),
               ("pruned", "FINISHED", [10]), ("failed", "FAILED", [10, 20])],
    "unet": [("completed", "FINISHED", [5, 5, 5]), ("completed", "FINISHED", [5, 5, 5])],
}

CV_FINAL_COST = {"train_time_s": 36.0, "device_hours": 0.02, "epochs": 3}  # 2 devices per run

def _offset(fold: int, seed: int) -> float:
    """Per-run noise that averages to 0 over the 3 folds and 2 seeds."""
    return 0.01 * (fold - 1) + 0.005 * (2 * seed - 1)


def build_cv_store(root: Path) -> Store:
    """Protocol cv on isic2018: 3 models x 3 folds x 2 seeds of final runs (test and validation
    per-case files, learning curves), search trials with epoch-time histories, one study JSON."""
    s = Store(root)
    for model in CV_TEST:
        for fold in range(CV_FOLDS):
            for seed in CV_SEEDS:
                noise = _offset(fold, seed)
                test = _isic_case(CV_TEST_IDS, [v + noise for v in CV_TEST[model]])
                val_ids = CV_POOL_IDS[2 * fold: 2 * fold + 2]
                val_values = CV_VAL[model][2 * fold: 2 * fold + 2]
                val = _isic_case(val_ids, [v + 0.01 * (2 * seed - 1) for v in val_values])
                metrics = _isic_metrics(CV_DSC[model] + 0.01 * fold + 0.02 * seed, 0, 0)
                metrics.update(CV_FINAL_COST)
                history = {"val_dsc": [0.5, 0.6, 0.7 + 0.01 * fold], "train_loss": [1.0, 0.7, 0.5],
                           "epoch_time_s": [12.0, 12.0, 12.0]}
                params = {"optim.lr": 0.002, "model.name": model, "train.seed": seed}
                s.log(model, "isic2018", "cv", seed, metrics, per_case=test, val_per_case=val, fold=fold,
                      folds=CV_FOLDS, history=history, params=params)
    for model, trials in CV_SEARCH.items():
        for i, (outcome, status, seconds) in enumerate(trials):
            params = {"optim.lr": 1e-3, "search.optim.lr": 1e-3 * (i + 1), "search.model.overrides.drop_path_rate": 0.1}
            s.log(model, "isic2018", "cv", i, {"val_dsc": 0.7}, stage="search", status=status,
                  history={"epoch_time_s": seconds, "val_dsc": [0.6] * len(seconds)}, params=params,
                  tags={tracking.TAG_OUTCOME: outcome})
    s.log_study("isic2018__vmunet", {"optim.lr": 3e-4, "model.overrides.drop_path_rate": 0.1})
    return s


# The ablation store: isic2018 holdout on 10 cases, unet the reference, vmunet with its two twins and
# a ResEnc baseline. Per-case dice is AB_REF plus each model's gains (no ties, no zeros, in every
# comparison the tests make).
AB_IDS = [f"C{i}" for i in range(10)]
AB_REF = [0.40 + 0.05 * i for i in range(10)]
AB_GAIN = {  # per-case dice minus the reference's
    "vmunet": [0.0111, 0.0223, 0.0135, 0.0247, 0.0159, 0.0262, 0.0174, 0.0286, 0.0198, 0.0305],  # all better
}
AB_TWIN_GAIN = {  # per-case dice minus vmunet's
    "vmunet~no-ssm": [-0.0213, -0.0327, -0.0431, -0.0549, -0.0253, -0.0361, -0.0477, -0.0583, -0.0288, -0.0619],
    "vmunet~no-mamba": [0.0121, -0.0233, 0.0347, -0.0451, 0.0163, -0.0279, 0.0383, -0.0497, 0.0119, -0.0521],
    "resenc-unet-m": [0.0057, -0.0161, 0.0273, -0.0089, 0.0191, -0.0317, 0.0123, -0.0239, 0.0341, -0.0453],
}
AB_COST = {  # test_dsc, n_params, gmacs, peak_mem_mb
    "unet": (0.78, 7_800_000, 13.0, 700.0),
    "vmunet": (0.82, 27_427_561, 4.11, 900.0),
    "vmunet~no-ssm": (0.76, 27_427_561, 4.11, 880.0),
    "vmunet~no-mamba": (0.81, 27_427_561, 4.11, 600.0),
    "resenc-unet-m": (0.80, 20_000_000, 30.0, 3000.0),
}


def ablation_scores() -> dict[str, list[float]]:
    """Each model's per-case dice (its seeds' mean)."""
    vm = [r + g for r, g in zip(AB_REF, AB_GAIN["vmunet"])]
    return {"unet": AB_REF, "vmunet": vm, **{m: [v + g for v, g in zip(vm, gain)] for m, gain in AB_TWIN_GAIN.items()}}


def build_ablation_store(root: Path) -> Store:
    """unet, vmunet (two seeds, ±0.01 per case), vmunet~no-ssm, vmunet~no-mamba, resenc-unet-m (one seed each)."""
    s = Store(root)
    for model, scores in ablation_scores().items():
        dsc, n_params, gmacs, peak = AB_COST[model]
        metrics = {**_isic_metrics(dsc, 60, 0.1), "n_params": n_params, "gmacs": gmacs, "peak_mem_mb": peak}
        noises = (-0.01, 0.01) if model == "vmunet" else (0.0,)
        for seed, noise in enumerate(noises):
            s.log(model, "isic2018", "holdout", seed, metrics, per_case=_isic_case(AB_IDS, [v + noise for v in scores]))
    return s


_ABLATION_STORES: dict[Path, Store] = {}


def ablation_store(tmp_path_factory) -> Store:
    """One ablation store per test session, shared by the leaderboard and report tests."""
    root = tmp_path_factory.getbasetemp() / "ablation-store"
    if root not in _ABLATION_STORES:
        root.mkdir()
        _ABLATION_STORES[root] = build_ablation_store(root)
    return _ABLATION_STORES[root]


def holm_by_hand(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment written out: sort, multiply by m, m-1, ..., running max, cap at 1."""
    order = sorted(pvalues, key=pvalues.get)
    adjusted, running = {}, 0.0
    for rank, key in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[key]))
        adjusted[key] = running
    return adjusted


def ablation_diff(a: str, b: str) -> list[float]:
    """Per-case differences of two models of the ablation store (model a minus model b)."""
    scores = ablation_scores()
    return [x - y for x, y in zip(scores[a], scores[b])]
