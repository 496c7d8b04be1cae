"""``vmbench report``: sections, self-containment, the wording of verdicts, logging to a run, a real browser.

The store is the cross-validation store of ``tests/leaderboard/test_leaderboard.py`` (3 models x 3 folds x 2
seeds, search trials, a study JSON); verdict wording is checked on in-memory tables whose p-values
are worked out here.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow_store import CV_TEST, _exact_wilcoxon_two_sided, _frame, _isic_case, build_cv_store  # noqa: E402

from vmbench import leaderboard as lb  # noqa: E402
from vmbench import report  # noqa: E402
from vmbench.cli import main  # noqa: E402
from vmbench.report.page import SECTIONS, budget_frame  # noqa: E402
from vmbench.report.verdict import power_sentence, verdicts  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
N_FIGURES = 2 + 2 + 1 + 1  # blob plots (test, cv pool) + per-case distributions (same) + curves + Pareto


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_cv_store(tmp_path_factory.mktemp("report-store"))


@pytest.fixture(scope="module")
def page(store, tmp_path_factory) -> tuple[str, str]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    path = report.build_report(store.uri, out=out, n_boot=100, seed=1)
    return str(path), path.read_text()


class _Outline(HTMLParser):
    """Headings, the ids of sections, and every external reference a page could fetch."""

    def __init__(self):
        super().__init__()
        self.h2, self.sections, self.svgs, self.fetches, self.scripts, self._h2 = [], [], 0, [], 0, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h2":
            self._h2 = True
            self.h2.append("")
        elif tag == "section":
            self.sections.append(attrs.get("id"))
        elif tag == "svg":
            self.svgs += 1
        elif tag == "script":
            self.scripts += 1
        for key in ("src", "href", "xlink:href"):
            value = attrs.get(key) or ""
            if value and not value.startswith(("#", "data:")):  # inline images fetch nothing
                self.fetches.append(value)

    def handle_endtag(self, tag):
        if tag == "h2":
            self._h2 = False

    def handle_data(self, data):
        if self._h2:
            self.h2[-1] += data


def test_report_has_every_section_and_loads_nothing(page):
    _, text = page
    outline = _Outline()
    outline.feed(text)
    assert outline.sections == [anchor for anchor, _ in SECTIONS]
    assert outline.h2 == [heading for _, heading in SECTIONS]
    assert outline.svgs == N_FIGURES
    assert outline.scripts == 0 and outline.fetches == []
    assert "@import" not in text and "url(http" not in text and "<link" not in text
    assert "<?xml" not in text and "<!DOCTYPE svg" not in text  # SVG inlined, not embedded documents
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))  # each figure's ids are prefixed: no clashes between figures


def test_report_says_what_the_statistics_say(page):
    _, text = page
    flat = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))
    p_unet = _exact_wilcoxon_two_sided([a - b for a, b in zip(CV_TEST["unet"], CV_TEST["vmunet"])])
    # unet gains on all 6 test cases: p = 0.031, but 0.062 after Holm over 2 comparisons: no claim.
    assert f"p = {p_unet:.3f}, p = {2 * p_unet:.3f} after Holm over 2 comparisons: not significant" in flat
    assert "is better than" not in flat and "is worse than" not in flat
    assert "Underpowered: with 6 cases and 2 comparisons" in flat
    assert "unequal budgets" in flat and "search trials: att-unet 0, unet 2, vmunet 4" in flat
    assert "Protocol cv: per-case scores are averaged over 3 folds" in flat
    assert "protocol: cv" in flat and "cross-validation pool" in flat
    assert "ranks first in" in flat and "of 100 bootstraps" in flat
    # The cross-validation pool: unet ahead on every pool case, so first in every resample; caveat stated.
    assert "Cross-validation pool (6 training-pool cases" in flat and "unet (77.50 %), first in 100% of 100" in flat
    assert "lean optimistic" in flat


def _board_with(gains: dict[str, list[float]], ref: list[float], val_is_test: bool = False, seeds: int = 1):
    """An in-memory leaderboard: vmunet and challengers on len(ref) cases, ``seeds`` runs each."""
    cases = [f"c{i}" for i in range(len(ref))]
    loads, rows = {}, []
    for model, gain in {"vmunet": [0.0] * len(ref), **gains}.items():
        for _ in range(seeds):
            loads[f"run{len(rows)}"] = _isic_case(cases, [a + b for a, b in zip(ref, gain)])
            rows.append({"model": model, "metrics": {"test_dsc": 0.8}})
    frame = _frame(rows)
    frame["tags.vmbench.val_is_test"] = "true" if val_is_test else "false"
    board = lb.leaderboard(frame, per_case_loader=loads.get, with_published=False)
    ranks = lb.rankings(frame, per_case_loader=loads.get, n_boot=50, seed=0)
    (verdict,) = verdicts(lb.split_tables(board), "vmunet", ranks)
    return verdict


def test_verdict_claims_better_only_after_holm():
    ref = [0.40 + 0.03 * i for i in range(12)]
    big = [0.01 * (i + 1) for i in range(12)]  # all 12 positive: p = 2 / 4096, Holm 4 / 4096 with m = 2
    mixed = [0.02, -0.01, 0.03, 0.015, -0.05, 0.04, 0.06, -0.025, 0.035, 0.045, -0.055, 0.065]
    v = _board_with({"unet": big, "att-unet": mixed}, ref, seeds=3)
    text = " ".join(v.details)
    p_mixed = _exact_wilcoxon_two_sided(mixed)
    assert p_mixed > 0.05
    assert "unet is better than vmunet" in text and "att-unet is better" not in text
    assert "att-unet vs vmunet" in text and "not significant at 0.05" in text
    # One sentence: the test that was significant, the bootstrap share of the highest mean, the caveat that
    # explains the comparison that found nothing. unet beats vmunet on every case, and big - mixed is negative
    # on one case only (-0.01, one zero, ten at +0.01 or more): a resample's mean difference is below zero only
    # if nearly every draw is that case, so unet is first in every one of the 50 resamples.
    assert v.headline == ("isic2018 (holdout): unet is better than vmunet; unet ranks first in 100% of 50 bootstrap "
                          "resamples of the cases (caveats: low power).")
    assert any("Low power: only 12 cases" in w for w in v.warnings)
    assert v.details[0].endswith("(Kendall's tau with the full ranking: median 1.00).")
    # Every comparison significant: no low-power excuse, no "not a significant difference".
    alone = _board_with({"unet": big}, ref, seeds=3)
    assert not any("power" in w.lower() for w in alone.warnings)
    assert "not a significant difference" not in " ".join(alone.details)
    # A worse model is called worse, with the same rule.
    worse = _board_with({"unet": [-g for g in big]}, ref, seeds=3)
    assert "unet is worse than vmunet" in " ".join(worse.details)


def test_verdict_underpowered_and_optimistic():
    ref = [0.5, 0.6, 0.7, 0.8, 0.55]
    v = _board_with({"unet": [0.05, 0.04, 0.03, 0.02, 0.01]}, ref, val_is_test=True)
    # 5 cases: the smallest two-sided exact p is 2/32 = 0.0625 > 0.05, whatever the scores.
    assert "Underpowered" in " ".join(v.warnings) and "0.062" in " ".join(v.warnings)
    assert "better" not in " ".join(v.details)
    assert any(w.startswith("Optimistic protocol: 2 of 2 runs") for w in v.warnings)
    assert power_sentence(40, 1, 5, "holdout") is None
    assert "1 seed per model" in power_sentence(40, 1, 1, "holdout")


def test_budget_table_side_by_side(store):
    shown = budget_frame(lb.audit_store(store.uri))
    assert list(shown["Model"]) == ["att-unet", "unet", "vmunet"]
    assert list(shown["Trials"]) == [0, 2, 4] and "Total device-h" in shown.columns
    assert shown.loc[shown["Model"] == "vmunet", "Best config: farthest from recipe"].iloc[0].startswith("optim.lr: 0.0003")


def test_pareto_points_use_the_audited_device_hours(store):
    from vmbench.report.collect import collect
    from vmbench.report.page import pareto_points

    data = collect(store.uri, n_boot=0)
    points = pareto_points(data, "isic2018", "cv").set_index("model")
    audit = data.audit.set_index("model")
    assert points.loc["vmunet", "device_hours"] == pytest.approx(audit.loc["vmunet", "device_hours_total"])
    assert points.loc["unet", "dsc"] == pytest.approx(85.0)
    assert data.ranks is not None and data.ranks.tables[0].stability is None  # n_boot=0: no bootstrap


def test_log_report_to_run_and_cli(store, page, tmp_path, capsys):
    path, _ = page
    artifact = report.log_report_to_run(store.client, store.parent, path)
    assert artifact == "report/report.html"
    assert [f.path for f in store.client.list_artifacts(store.parent, "report")] == ["report/report.html"]
    out = tmp_path / "cli.html"
    assert main(["report", "--tracking-uri", store.uri, "--out", str(out), "--bootstrap", "20",
                 "--experiment", "bench-exp"]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["report", "--tracking-uri", store.uri, "--bootstrap", "-1"]) == 2
    err = capsys.readouterr().err
    assert "vmbench: error: --bootstrap -1" in err and err.count("\n") == 2  # 'wrote ...' and the error


def _chromium(*args: str, profile) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr",
         "--v=0", *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (the README test command installs it)")
def test_report_renders_in_headless_chromium(page, tmp_path):
    path, _ = page
    done = _chromium("--virtual-time-budget=5000", "--dump-dom", f"file://{path}", profile=tmp_path / "profile")
    dom = done.stdout
    outline = _Outline()
    outline.feed(dom)
    assert outline.h2 == [heading for _, heading in SECTIONS]
    assert outline.svgs == N_FIGURES
    # Every figure kept its drawing after parsing (paths inside each svg).
    figures = re.findall(r"<svg.*?</svg>", dom, flags=re.S)
    assert len(figures) == N_FIGURES and all(f.count("<path") > 5 for f in figures)
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Failed to load" in line]
    assert console == [], console
    shot = tmp_path / "page.png"
    _chromium(f"--screenshot={shot}", "--window-size=1400,2000", f"file://{path}", profile=tmp_path / "profile2")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_report_for_sweep_logs_on_the_parent_and_never_raises(store, tmp_path):
    from io import StringIO

    from vmbench.sweep import SweepResult

    experiment_id = store.client.get_experiment_by_name("bench-exp").experiment_id
    sweep = SweepResult(store.parent, experiment_id, store.uri, tmp_path, [], reference="vmunet")
    out = StringIO()
    path = report.report_for_sweep(sweep, tmp_path / "sweep-report.html", n_boot=20, file=out)
    assert path is not None and path.read_text().startswith("<!DOCTYPE html>")
    assert f"of sweep run {store.parent}" in out.getvalue()
    assert "report/sweep-report.html" in [f.path for f in store.client.list_artifacts(store.parent, "report")]
    # The parent also keeps the leaderboard and says the verdict: the page's headline, word for word.
    assert [f.path for f in store.client.list_artifacts(store.parent, "leaderboard")] == [
        "leaderboard/leaderboard.csv", "leaderboard/leaderboard.md"]
    note = store.client.get_run(store.parent).data.tags["mlflow.note.content"]
    headline = re.search(r'<div class="verdict"><h3>(.*?)</h3>', path.read_text()).group(1)
    assert f"- {html.unescape(headline)}" in note
    assert note.startswith("**Verdict**") and "no model differs significantly from vmunet" in note
    out = StringIO()
    gone = SweepResult(store.parent, "987654", store.uri, tmp_path, [])  # an experiment the store does not have
    assert report.report_for_sweep(gone, tmp_path / "x.html", file=out) is None
    assert out.getvalue().startswith("(report failed: ")
