"""The report draws a multi-objective search's Pareto front: the search trials on their objectives, the
trials the driver tagged Pareto-optimal ringed; sweeps of one objective add nothing.

The store is logged by hand (:mod:`mlflow_store`), as the sweep driver leaves it: a parent run per
sweep with its objectives (``vmbench.objectives``), search runs with their last objective values and
``vmbench.pareto = true`` on each study's front. The fronts below are worked out by hand.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow_store import Store, _isic_case, _isic_metrics  # noqa: E402

from vmbench import tracking  # noqa: E402
from vmbench.leaderboard.store import load_runs  # noqa: E402
from vmbench.report import build_report, figures  # noqa: E402
from vmbench.report.search_front import objectives_from_plan, search_fronts  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

# (val_dsc, latency_ms, on the front). unet: (0.70, 15) is beaten by (0.80, 10); vmunet: (0.86, 35)
# by (0.88, 30). Every other trial is better than each other one on one of the two objectives.
TWO = {
    "unet": [(0.80, 10.0, True), (0.85, 20.0, True), (0.70, 15.0, False), (0.90, 40.0, True), (0.60, 5.0, True)],
    "vmunet": [(0.88, 30.0, True), (0.86, 35.0, False), (0.91, 50.0, True)],
}
# (val_dsc, latency_ms, n_params, on the front): (0.84, 12, 9) is beaten by (0.85, 10, 8) on all three;
# (0.70, 30, 1) is optimal only through n_params, so in the val_dsc-latency panel it is no corner.
THREE = [(0.85, 10.0, 8.0, True), (0.84, 12.0, 9.0, False), (0.90, 20.0, 5.0, True), (0.70, 30.0, 1.0, True)]
OLD_PLAN = ("sweep 'old' from old.yaml (MLflow experiment 'bench-exp')\n  protocol holdout; optimise val_dsc (max), "
            "gmacs (min) together (Pareto front; the final stage retrains the Pareto-optimal trial best on val_dsc); "
            "sampler tpe seed 0")


def _parent(s: Store, sweep: str, objectives: str | None) -> str:
    tags = {tracking.TAG_KIND: "sweep", tracking.TAG_SWEEP: sweep}
    if objectives is not None:
        tags[tracking.TAG_OBJECTIVES] = objectives
    run_id = s.client.create_run(s.exp, tags=tags).info.run_id
    s.client.set_terminated(run_id)
    return run_id


def _search(s: Store, parent: str, sweep: str, model: str, dataset: str, i: int, metrics: dict, pareto: bool,
            status: str = "FINISHED") -> str:
    tags = {tracking.TAG_PARENT: parent, tracking.TAG_SWEEP: sweep, tracking.TAG_STUDY: f"{dataset}__{model}",
            tracking.TAG_OUTCOME: "completed" if status == "FINISHED" else "failed"}
    if pareto:
        tags[tracking.TAG_PARETO] = "true"
    return s.log(model, dataset, "holdout", i, metrics, stage="search", status=status, tags=tags,
                 params={"search.optim.lr": 1e-3 * (i + 1)})


def _finals(s: Store) -> None:
    ids = [f"C{i}" for i in range(6)]
    for model, dsc in (("unet", 0.80), ("vmunet", 0.83)):
        s.log(model, "isic2018", "holdout", 1, _isic_metrics(dsc, 60, 0.1), per_case=_isic_case(ids, [dsc] * 6))


def build_front_store(root) -> tuple[Store, dict[str, set[str]]]:
    """Sweep s1 (two objectives, two models), s2 (three), s3 (from before the objectives tag: the plan
    says them), s4 (one objective). Returns the store and each sweep's Pareto-tagged run ids."""
    s = Store(root)  # its parent is sweep s1's
    s.client.set_tag(s.parent, tracking.TAG_OBJECTIVES, tracking.objectives_tag(("val_dsc", "latency_ms"), ("max", "min")))
    _finals(s)
    tagged: dict[str, set[str]] = {"s1": set(), "s2": set(), "s3": set(), "s4": set()}
    for model, trials in TWO.items():
        for i, (dsc, latency, pareto) in enumerate(trials):
            run = _search(s, s.parent, "s1", model, "isic2018", i, {"val_dsc": dsc, "latency_ms": latency}, pareto)
            tagged["s1"] |= {run} if pareto else set()
    # Neither a failed trial nor one without every objective is drawn.
    _search(s, s.parent, "s1", "unet", "isic2018", 7, {"val_dsc": 0.99, "latency_ms": 1.0}, False, status="FAILED")
    _search(s, s.parent, "s1", "unet", "isic2018", 8, {"val_dsc": 0.95}, False)

    s2 = _parent(s, "s2", "val_dsc:max,latency_ms:min,n_params:min")
    for i, (dsc, latency, params, pareto) in enumerate(THREE):
        run = _search(s, s2, "s2", "unet", "synthetic-isic", i, {"val_dsc": dsc, "latency_ms": latency,
                                                                 "n_params": params}, pareto)
        tagged["s2"] |= {run} if pareto else set()

    s3 = _parent(s, "s3", None)
    s.client.log_dict(s3, {"plan": OLD_PLAN}, "sweep_plan.json")
    for i, (dsc, gmacs, pareto) in enumerate([(0.8, 2.0, True), (0.7, 3.0, False)]):
        run = _search(s, s3, "s3", "unet", "synthetic-synapse", i, {"val_dsc": dsc, "gmacs": gmacs}, pareto)
        tagged["s3"] |= {run} if pareto else set()

    s4 = _parent(s, "s4", "val_dsc:max")
    for i in range(3):
        _search(s, s4, "s4", "unet", "kvasir", i, {"val_dsc": 0.5 + 0.1 * i, "latency_ms": 10.0 - i}, False)
    return s, tagged


@pytest.fixture(scope="module")
def front_store(tmp_path_factory):
    return build_front_store(tmp_path_factory.mktemp("front-store"))


def _marked(svg: str, panel: int) -> int:
    """Markers drawn as Pareto-optimal in one panel: the ``<use>`` of every ``pareto-<panel>-*`` group."""
    root = ET.fromstring(svg)
    groups = [e for e in root.iter() if re.fullmatch(rf"f\d+-pareto-{panel}-\d+", e.get("id", ""))]
    return sum(1 for g in groups for e in g.iter() if e.tag.endswith("}use"))


def test_objectives_tag_and_plan_text():
    assert tracking.parse_objectives_tag("val_dsc:max,latency_ms:min") == (("val_dsc", "latency_ms"), ("max", "min"))
    for bad in (None, "", "val_dsc", "val_dsc:up", ":max"):
        assert tracking.parse_objectives_tag(bad) == ((), ())
    assert objectives_from_plan(OLD_PLAN) == (("val_dsc", "gmacs"), ("max", "min"))
    assert objectives_from_plan("  protocol holdout; optimise val_dsc (max); sampler tpe seed 0") == ((), ())


def test_the_plan_text_the_report_falls_back_on_is_the_specs():
    """A sweep from before the objectives tag is read from its plan: the wording must stay parseable."""
    from vmbench.search_space import parse_spec

    spec = parse_spec({"experiment": "mo", "models": ["unet"], "dataset": "synthetic-isic", "metric":
                       ["val_dsc", "n_params", "latency_ms"], "budget": {"trials": 1}}, source="mo.yaml")
    assert objectives_from_plan(spec.plan()) == (("val_dsc", "n_params", "latency_ms"), ("max", "min", "min"))


def test_search_fronts_select_the_tagged_trials_of_multi_objective_sweeps(front_store):
    s, tagged = front_store
    fronts = search_fronts(s.uri, load_runs(s.uri, stage="all"))
    assert [(f.dataset, f.objectives, f.modes) for f in fronts] == [
        ("isic2018", ("val_dsc", "latency_ms"), ("max", "min")),
        ("synthetic-isic", ("val_dsc", "latency_ms", "n_params"), ("max", "min", "min")),
        ("synthetic-synapse", ("val_dsc", "gmacs"), ("max", "min")),  # from the plan: no tag on that sweep
    ]  # kvasir's sweep has one objective: no front
    two, three, old = fronts
    assert len(two.points) == 8 and two.n_pareto == 6  # the failed and the incomplete trial left out
    assert set(two.points.loc[two.points["pareto"], "run_id"]) == tagged["s1"]
    assert sorted(two.points["series"].unique()) == ["unet", "vmunet"]
    unet = two.points[two.points["model"] == "unet"].sort_values("latency_ms")
    assert list(unet["val_dsc"]) == [0.60, 0.80, 0.70, 0.85, 0.90]  # the last values logged, as the driver compared
    assert set(three.points.loc[three.points["pareto"], "run_id"]) == tagged["s2"] and three.n_pareto == 3
    assert set(old.points.loc[old.points["pareto"], "run_id"]) == tagged["s3"] and len(old.points) == 2


def test_the_figure_rings_every_pareto_trial_in_every_panel(front_store):
    s, _ = front_store
    two, three, _ = search_fronts(s.uri, load_runs(s.uri, stage="all"))
    svg = figures.search_front(two.points, two.objectives, two.modes, "two")
    assert _marked(svg, 0) == 6 and _marked(svg, 1) == 0  # one panel: val_dsc against latency_ms
    # Glyphs are paths; matplotlib keeps each text as a comment beside them.
    assert "<!-- val_dsc (max) -->" in svg and "<!-- latency_ms (min) -->" in svg
    svg = figures.search_front(three.points, three.objectives, three.modes, "three")
    assert _marked(svg, 0) == 3 and _marked(svg, 1) == 3  # objective 1 against each other one
    assert "<!-- n_params (min) -->" in svg


def test_front_corners_per_panel():
    import numpy as np

    # val_dsc against latency of THREE's tagged trials: (0.70, 30) is slower and worse than (0.90, 20).
    x, y = np.array([10.0, 20.0, 30.0]), np.array([0.85, 0.90, 0.70])
    fx, fy = figures._front_2d(x, y, "min", "max")
    assert list(fx) == [10.0, 20.0] and list(fy) == [0.85, 0.90]
    fx, fy = figures._front_2d(x, y, "max", "max")  # more is better on x: now (10, 0.85) is beaten by (20, 0.90)
    assert list(fx) == [20.0, 30.0] and list(fy) == [0.90, 0.70]


def test_the_report_shows_the_front_in_its_pareto_section(front_store, tmp_path):
    s, _ = front_store
    text = build_report(s.uri, out=tmp_path / "r.html", n_boot=0).read_text()
    section = text[text.index('<section id="pareto">'):text.index('<section id="budget">')]
    final_plots = section.index("test DSC (%) against cost")
    heading = section.index("The search's Pareto front (multi-objective sweeps)")
    assert final_plots < heading  # after the final models' plots
    assert section.count("<h4>") == 3 and section.count("<svg") == 4
    assert "isic2018 | protocol: holdout | search trials on val_dsc (max), latency_ms (min)" in section
    assert "8 search trials that finished with every objective logged; 6 Pareto-optimal" in section


def test_a_single_objective_store_gets_no_search_front(tmp_path):
    s = Store(tmp_path)
    s.client.set_tag(s.parent, tracking.TAG_OBJECTIVES, "val_dsc:max")
    _finals(s)
    for i in range(3):
        _search(s, s.parent, "s1", "unet", "isic2018", i, {"val_dsc": 0.5 + 0.1 * i, "latency_ms": 1.0 + i}, False)
    assert search_fronts(s.uri, load_runs(s.uri, stage="all")) == []
    text = build_report(s.uri, out=tmp_path / "r.html", n_boot=0).read_text()
    assert "Pareto front (multi-objective" not in text and "<h4>" not in text
    section = text[text.index('<section id="pareto">'):text.index('<section id="budget">')]
    assert section.count("<svg") == 1  # the final models' plot only


def test_the_sweep_records_its_objectives_on_the_parent_run(tmp_path):
    from vmbench.search_space import parse_spec
    from vmbench.sweep.driver import _open_parent_run

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("mo", artifact_location=(tmp_path / "art").as_uri())
    spec = parse_spec({"experiment": "mo", "name": "mo", "models": ["unet"], "dataset": "synthetic-isic",
                       "metric": ["val_dsc", "latency_ms"], "budget": {"trials": 1}}, source="mo.yaml")
    run = client.get_run(_open_parent_run(client, exp, spec, resume=False))
    assert run.data.tags[tracking.TAG_OBJECTIVES] == "val_dsc:max,latency_ms:min"
