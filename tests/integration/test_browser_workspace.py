"""What a user sees, in headless Chromium: the MLflow UI of a running ``vmbench ui`` over two tracked
``vmbench train`` runs and a sweep parent run, and the HTML report of the same store.

Screenshots are kept under each test's ``tmp_path`` (the paths are printed: ``pytest -s`` shows them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vmbench import tracking as T
from vmbench.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (the README test command installs it)")]
TINY_VMUNET = ["--set", "model.overrides.dims=[8, 16, 32, 64]", "--set", "model.overrides.d_state=4"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Two single runs (vmunet, unet) on a generated ISIC stand-in, as `vmbench train` records them, and a
    sweep parent run with the leaderboard and verdict that `vmbench sweep` records at its end."""
    from vmbench.data import synth_isic
    from vmbench.report import build_report, record_on_parent

    root = tmp_path_factory.mktemp("workspace")
    synth_isic(root / "isic", n=30, seed=1, layout="challenge", year=2018)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for model, extra in (("vmunet", TINY_VMUNET), ("unet", [])):
        assert main(["train", "--model", model, "--dataset", "synthetic-isic", "--data-root", str(root / "isic"),
                     "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--out", str(root / model),
                     "--no-progress", "--tracking-uri", uri, *extra]) == 0
    client = T.client(uri)
    experiment_id = client.get_experiment_by_name("vmbench-train").experiment_id
    parent = T.open_sweep_run(client, experiment_id, sweep="quick", experiment="vmbench-train", source="quick.yaml",
                              space_hash="0", resume=False, tags={}, plan="")
    data: list = []
    report = build_report(uri, ["vmbench-train"], root / "report.html", n_boot=200, data_out=data)
    record_on_parent(client, parent, data[0])
    client.set_terminated(parent)
    return {"uri": uri, "experiment_id": experiment_id, "parent": parent, "report": report, "client": client}


def _chromium(url: str, profile: Path, *args: str) -> str:
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1600,1000", *args, url],
        capture_output=True, text=True, timeout=180,
    )
    return done.stdout


def _visible_text(dom: str) -> str:
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def _look(url: str, tmp_path: Path, name: str) -> str:
    """The page's text after the UI rendered it, and a screenshot of it kept as NAME.png."""
    profile = tmp_path / f"profile-{name}"  # fresh: nothing remembered from an earlier visit
    text = _visible_text(_chromium(url, profile, "--virtual-time-budget=20000", "--dump-dom"))
    shot = tmp_path / f"{name}.png"
    _chromium(url, profile, "--virtual-time-budget=20000", f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    return text


def test_mlflow_ui_opens_the_runs_view_with_datasets_models_and_descriptions(workspace, tmp_path):
    client, experiment_id = workspace["client"], workspace["experiment_id"]
    experiment = client.get_experiment(experiment_id)
    assert experiment.tags[T.TAG_EXPERIMENT_KIND] == T.EXPERIMENT_KIND_TRAINING
    trained = {r.data.tags[T.TAG_MODEL]: r for r in client.search_runs([experiment_id]) if T.TAG_MODEL in r.data.tags}
    unet = trained["unet"]
    # The digest is the content hash of what the split reads, worked out here from the files themselves: SHA-256
    # over the test ids, then each image's and mask's own SHA-256 in path order (first 16 hex digits).
    isic = Path(workspace["uri"].removeprefix("sqlite:///")).parent / "isic"
    images = sorted((isic / "ISIC2018_Task1-2_Test_Input").glob("*.jpg"))
    expected = hashlib.sha256("\n".join(p.stem for p in images).encode())
    for path in sorted(images + sorted((isic / "ISIC2018_Task1_Test_GroundTruth").glob("*.png"))):
        expected.update(hashlib.sha256(path.read_bytes()).hexdigest().encode())
    digests = {(model, d.tags[0].value): (d.dataset.name, d.dataset.digest)
               for model, r in trained.items() for d in r.inputs.dataset_inputs}
    assert digests[("unet", "test")] == ("synthetic-isic-holdout-test", expected.hexdigest()[:16])
    assert digests[("vmunet", "test")] == digests[("unet", "test")]  # the same data, the same digest
    assert digests[("unet", "train")][1] != digests[("unet", "test")][1]
    process = subprocess.Popen([sys.executable, "-m", "vmbench.cli", "ui", "--tracking-uri", workspace["uri"],
                                "--sweep", "quick"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = [process.stdout.readline() for _ in range(3)]
        base = lines[0].split(" at ")[1].split()[0]
        runs_url = lines[1].split(" runs ")[1].strip()
        parent_url = lines[2].split(" report) ")[1].strip()
        # The sweep's own saved view (its runs only, the metric columns), made when the sweep started.
        assert runs_url == (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                            "&viewStateShareKey=vmbench-sweep-quick")
        assert parent_url == f"{base}/#/experiments/{experiment_id}/runs/{workspace['parent']}?workflowType=machine_learning"

        from vmbench.ui import runs_url as all_runs

        runs = _look(all_runs(base, experiment_id), tmp_path, "runs-view")
        # The model-training runs table, not the GenAI start page; vmbench's saved view with metric columns.
        assert "Send your first trace" not in runs and "Agent versions" not in runs
        # The two single runs and the sweep's parent run, in vmbench's saved view: metric columns, best test DSC first.
        assert "vmbench: test metrics" in runs and "3 matching runs" in runs and "Sort: test_dsc" in runs, runs[:3000]
        assert re.search(r"Dataset .*test_dsc", runs), runs[:3000]
        # The Dataset column: each run's train and test splits with the content digest.
        train = next(d for d in unet.inputs.dataset_inputs if d.tags[0].value == "train").dataset
        assert f"{train.name} ({train.digest})" in runs

        run = _look(f"{base}/#/experiments/{experiment_id}/runs/{unet.info.run_id}?workflowType=machine_learning",
                    tmp_path, "final-run")
        assert "Description" in run and "single vmbench train run (not tuned)" in run and "Outcome: test dsc" in run
        assert "System metrics" in run and "system/cpu_utilization_percentage" in run
        # The logged model: listed, and the test metrics linked to it.
        (model,) = client.search_logged_models(experiment_ids=[experiment_id],
                                               filter_string=f"source_run_id = '{unet.info.run_id}'")
        assert model.name == "unet-synthetic-isic-seed42" and model.status.to_proto() == 2  # READY
        assert re.search(r"test_dsc [0-9.]+ unet-synthetic-isic-seed42", run)
        assert re.search(r"Logged models \(1\) .* unet-synthetic-isic-seed42 Ready", run), run[:4000]

        parent = _look(parent_url, tmp_path, "sweep-parent")
        assert "Verdict" in parent and "synthetic-isic (holdout):" in parent
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


# Boxes of every text group of the cost figures (matplotlib writes each label as <g id="..text_N">):
# pairs that overlap or touch, and boxes outside their figure, written into the page for --dump-dom to carry out.
_BOX_SCRIPT = """<script>
window.addEventListener('load', () => {
  const out = {figures: 0, overlaps: [], outside: []};
  for (const svg of document.querySelectorAll('#pareto svg')) {
    out.figures += 1;
    const frame = svg.getBoundingClientRect();
    const boxes = [...svg.querySelectorAll('g[id*="text_"]')]
      .filter(g => !g.parentElement.closest('g[id*="text_"]'))
      .map(g => [g.id, g.getBoundingClientRect()]).filter(([, r]) => r.width > 0);
    for (const [id, r] of boxes) {
      if (r.left < frame.left - 1 || r.right > frame.right + 1 || r.top < frame.top - 1 || r.bottom > frame.bottom + 1)
        out.outside.push(id);
    }
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
      const [a, p] = boxes[i], [b, q] = boxes[j];
      const w = Math.min(p.right, q.right) - Math.max(p.left, q.left), h = Math.min(p.bottom, q.bottom) - Math.max(p.top, q.top);
      if (w > -2 && h > 1) out.overlaps.push([a, b]);  // side by side closer than 2 px reads as one label
    }
  }
  const pre = document.createElement('pre'); pre.id = 'boxes'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_report_in_chromium_has_one_verdict_sentence_and_readable_cost_plots(workspace, tmp_path):
    from vmbench.report.page import SECTIONS

    page = Path(workspace["report"]).read_text()
    probe = tmp_path / "report-probe.html"
    probe.write_text(page.replace("</body>", _BOX_SCRIPT + "</body>"))
    dom = _chromium(f"file://{probe}", tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom")
    boxes = json.loads(re.search(r'<pre id="boxes">(.*?)</pre>', dom).group(1))
    assert boxes["figures"] == 1 and boxes["overlaps"] == [] and boxes["outside"] == []
    text = _visible_text(dom)
    for _, heading in SECTIONS:
        assert heading in text
    # The single runs are reported as the leaderboard shows them, labelled not tuned.
    assert "No finished final runs" not in text and "single `vmbench train` runs (not tuned)" in text
    headlines = re.findall(r'<div class="verdict"><h3>(.*?)</h3>', page)
    assert len(headlines) == 1 and headlines[0].startswith("synthetic-isic (holdout): ")
    verdict = page.split('<div class="verdict">')[1].split("</div>")[0]
    if " is better than " in headlines[0] or " is worse than " in headlines[0]:  # never contradicted below
        assert "not a significant difference" not in verdict and "Low power" not in verdict
    shot = tmp_path / "report.png"
    _chromium(f"file://{workspace['report']}", tmp_path / "profile2", f"--screenshot={shot}",
              "--window-size=1400,6000")
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
