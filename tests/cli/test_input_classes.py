"""Bad inputs by class (issue 23), generated rather than listed: each class has one root rule
(docs/bad_inputs.md), and these tests throw inputs of the class at every command that meets it.

Each answer must be: a non-zero exit, one line on standard error naming the culprit (file, store,
key, option), no traceback, the inputs byte-identical afterwards, no MLflow run left RUNNING.
Commands run in-process (``vmbench.cli.main``) unless a second process is the point.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import string
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmbench.cli import main
from vmbench.errors import ConfigError, DataError
from vmbench.io import OUTPUT_MARKER, atomic_write, check_output_apart, read_yaml

TRAIN = ["train", "--model", "unet", "--dataset", "synthetic-isic", "--img-size", "32", "--epochs", "1",
         "--batch-size", "4", "--no-progress", "--set", "model.overrides.base_channels=4"]
QUICK = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_line(capsys, rc: int, *needles: str) -> str:
    """The command refused in one line naming every needle, without a traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc != 0, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (or ``root`` itself) with its SHA-256: inputs must not change."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def running_runs(uri: str) -> int:
    path = uri[len("sqlite:///"):]
    if not Path(path).exists():
        return 0
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0]
    finally:
        con.close()


def cli(argv: list[str]) -> int:
    """``vmbench ARGV`` in-process: its exit status (argparse's refusals exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny checkpoint in a run folder, and a small MLflow store of runs."""
    from mlflow_store import Store, _isic_metrics

    import vmbench
    from vmbench.config import ExperimentConfig
    from vmbench.engine import TrainState
    from vmbench.io import atomic_torch_save

    root = tmp_path_factory.mktemp("trained")
    # A checkpoint as training writes it, without the training: untrained weights predict just as well.
    config = ExperimentConfig.from_dict({"data": {"img_size": 32}, "model": {"name": "unet", "overrides": {"base_channels": 4}}})
    weights = vmbench.create_model("unet", num_classes=1, base_channels=4).state_dict()
    state = TrainState(config=config.to_dict(), epoch=1, img_size=(32, 32), preprocess={"kind": "image", "normalize": "unit", "stats": None},
                       model=weights, history=[], best_value=0.5, best_epoch=1, select_metric="val_dsc")
    atomic_torch_save(state.to_dict(with_optimizer=False), root / "run" / "checkpoints" / "best.pt")
    store = Store(root / "store")
    for seed in (0, 1):
        store.log("unet", "isic2018", "holdout", seed, _isic_metrics(0.8 + seed / 100, 60, 0.1))
    return {"root": root, "run": root / "run", "best": root / "run" / "checkpoints" / "best.pt", "uri": store.uri}


@pytest.fixture(scope="module")
def raw_synapse(tmp_path_factory):
    from vmbench.data import synth_synapse

    raw = tmp_path_factory.mktemp("raw") / "R"
    synth_synapse(raw, n_cases=2, seed=0, size=32, slices=(4, 6))
    return raw


@contextmanager
def tmpfs(path: Path, size: str = "64k"):
    """A small file system at ``path`` (root only): a full disk, or with ``ro`` a read-only one."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# ------------------------------------------------------------------------------------------------
# 1. Never destroy what the user has


segment = st.text(alphabet=string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=6)


@QUICK
@given(base=st.lists(segment, min_size=1, max_size=3), tail=st.lists(segment, max_size=3),
       relation=st.sampled_from(["equal", "inside", "contains", "apart", "symlink"]))
def test_output_folder_apart_from_inputs(tmp_path, base, tail, relation):
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example (the fixture is shared)
    source = tmp_path.joinpath(*base)
    other = tmp_path / "elsewhere" / Path(*tail) if tail else tmp_path / "elsewhere"
    out = {"equal": source, "inside": source.joinpath(*tail) if tail else source / "x",
           "contains": tmp_path / base[0] if len(base) > 1 else tmp_path, "apart": other,
           "symlink": tmp_path / "link"}[relation]
    if relation == "symlink":
        source.mkdir(parents=True, exist_ok=True)
        if not out.is_symlink():
            out.symlink_to(source)
    if relation == "apart":
        assert check_output_apart(out, [source]) == out
        return
    with pytest.raises(ConfigError, match="--out"):
        check_output_apart(out, [source])


def test_prepare_into_its_raw_folder_keeps_the_raw_volumes(capsys, raw_synapse):
    before = digest(raw_synapse)
    for out in (raw_synapse, raw_synapse / "prepared", raw_synapse.parent):
        rc = cli(["data", "prepare", "synapse", "--raw", str(raw_synapse), "--out", str(out), "--overwrite"])
        one_line(capsys, rc, "raw folder", str(out))
    assert digest(raw_synapse) == before


def test_overwrite_replaces_only_what_vmbench_wrote(capsys, tmp_path, raw_synapse):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    before = digest(mine)
    for argv in (["data", "synth", "isic", "--out", str(mine), "--n", "3", "--overwrite"],
                 ["data", "prepare", "synapse", "--raw", str(raw_synapse), "--out", str(mine), "--overwrite"]):
        one_line(capsys, cli(argv), str(mine), OUTPUT_MARKER)
    assert digest(mine) == before
    ours = tmp_path / "ours"  # written by vmbench: --overwrite may replace it, and it carries the marker
    assert main(["data", "synth", "isic", "--out", str(ours), "--n", "3"]) == 0
    assert (ours / OUTPUT_MARKER).is_file()
    assert main(["data", "synth", "isic", "--out", str(ours), "--n", "4", "--overwrite"]) == 0


def test_predict_never_writes_among_its_inputs(capsys, tmp_path, trained):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 120, 90)).save(folder / "case1.png")
    Image.new("L", (40, 40), 255).save(folder / "case1_mask.png")  # the user's own mask, an input too
    before = digest(folder)
    ckpt = str(trained["best"])
    cases = [([str(folder)], folder), ([str(folder)], folder / "sub"), ([str(folder / "case1.png"),
             str(folder / "case1_mask.png")], folder)]
    for inputs, out in cases:
        rc = cli(["predict", "--checkpoint", ckpt, *inputs, "--out", str(out)])
        one_line(capsys, rc, "--out")
    assert digest(folder) == before
    assert not (folder / "sub").exists()


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_atomic_write_refuses_what_is_not_a_regular_file(tmp_path, kind):
    target = {"device": Path("/dev/full"), "fifo": tmp_path / "pipe.csv", "folder": tmp_path / "dir.csv"}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    before = os.stat(target)
    with pytest.raises(DataError, match="not a regular file"):
        atomic_write(target, "x")
    after = os.stat(target)
    assert (before.st_mode, before.st_ino) == (after.st_mode, after.st_ino)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]  # no temporary left


def test_leaderboard_out_device_keeps_the_device(capsys, trained):
    rc = cli(["leaderboard", "--tracking-uri", trained["uri"], "--out", "/dev/full",
               "--format", "csv"])
    one_line(capsys, rc, "/dev/full", "not a regular file")
    assert Path("/dev/full").is_char_device()


# ------------------------------------------------------------------------------------------------
# 2. One writer at a time


def test_second_writer_of_a_run_folder_is_told_who_holds_it(capsys, tmp_path, trained):
    from vmbench.rundir import RunDir

    out = tmp_path / "run"
    with RunDir(out).lock():  # as a training in progress holds it
        rc = cli(TRAIN + ["--no-track", "--out", str(out)])
        line = one_line(capsys, rc, str(out), f"pid {os.getpid()}", "since")
        assert "train" in line or "pytest" in line or "vmbench" in line
        rc = cli(["evaluate", "--checkpoint", str(out / "checkpoints" / "best.pt"), "--no-track"])
        assert rc != 0
        capsys.readouterr()
    assert not (out / "checkpoints").exists()


def test_two_processes_on_a_new_store_both_work(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    code = ("import sys; from vmbench import tracking as T; from vmbench.tracking.store import prepare_store\n"
            "prepare_store(sys.argv[1]); c = T.client(sys.argv[1]); print(T.get_or_create_experiment(c, 'race'))")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ids = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(ids) == 1, outs  # one experiment, created once, seen by both
    con = sqlite3.connect(tmp_path / "new" / "mlflow.db")
    tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"alembic_version", "experiments", "runs"} <= tables


# ------------------------------------------------------------------------------------------------
# 4. Read-only commands only read


def foreign_files(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    optuna = root / "optuna.db"
    con = sqlite3.connect(optuna)
    con.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
    con.execute("INSERT INTO studies VALUES (1, 'sweep__isic__unet')")
    con.commit()
    con.close()
    (root / "empty.db").write_bytes(b"")
    (root / "text.db").write_text("not sqlite at all\n")
    return {"optuna": optuna, "empty": root / "empty.db", "text": root / "text.db"}


@pytest.mark.parametrize("command", ["leaderboard", "report", "ui"])
def test_read_only_commands_leave_a_foreign_file_untouched(capsys, tmp_path, command):
    for name, path in foreign_files(tmp_path / "files").items():
        before = digest(path)
        argv = [command, "--tracking-uri", f"sqlite:///{path}"]
        if command == "report":
            argv += ["--out", str(tmp_path / "r.html")]
        one_line(capsys, cli(argv), str(path))
        assert digest(path) == before, name
    assert not (tmp_path / "r.html").exists()


def test_truncated_store_is_one_line(capsys, tmp_path, trained):
    store = Path(trained["uri"][len("sqlite:///"):])
    cut = tmp_path / "cut.db"
    cut.write_bytes(store.read_bytes()[:6000])
    before = digest(cut)
    one_line(capsys, cli(["leaderboard", "--tracking-uri", f"sqlite:///{cut}"]), str(cut))
    rc = cli(TRAIN + ["--out", str(tmp_path / "run"), "--tracking-uri", f"sqlite:///{cut}"])
    one_line(capsys, rc, str(cut))
    assert digest(cut) == before


def test_store_on_a_read_only_mount_is_readable(capsys, tmp_path, trained):
    store = Path(trained["uri"][len("sqlite:///"):])
    with tmpfs(tmp_path / "ro", "8m") as mount:
        (mount / "mlflow.db").write_bytes(store.read_bytes())
        if subprocess.run(["mount", "-o", "remount,ro", str(mount)]).returncode != 0:
            pytest.skip("cannot remount read-only")
        rc = cli(["leaderboard", "--tracking-uri", f"sqlite:///{mount / 'mlflow.db'}", "--format", "csv"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert "unet" in out


# ------------------------------------------------------------------------------------------------
# 5. No hangs, no unbounded memory; 7. nothing silently wrong (YAML)


@QUICK
@given(keys=st.lists(st.sampled_from(["data", "model", "optim", "train", "loss"]), min_size=1, max_size=4,
                     unique=True), dup=st.integers(0, 3), nested=st.booleans())
def test_duplicate_yaml_keys_are_refused_with_line_and_key(tmp_path, keys, dup, nested):
    dup_key = keys[dup % len(keys)]
    lines = [f"{k}:\n  x: 1" for k in keys]
    if nested:  # the duplicate inside a section
        lines[dup % len(keys)] = f"{dup_key}:\n  epochs: 1\n  epochs: 300"
        key, line = "epochs", sum(block.count("\n") + 1 for block in lines[:dup % len(keys)]) + 3
    else:
        lines.append(f"{dup_key}:\n  epochs: 300")
        key, line = dup_key, sum(block.count("\n") + 1 for block in lines[:-1]) + 1
    path = tmp_path / "cfg.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert str(path) in str(info.value) and f"line {line}" in str(info.value) and repr(key) in str(info.value)


@pytest.mark.parametrize("kind", ["alias-bomb", "huge"])
def test_yaml_is_bounded(capsys, tmp_path, kind):
    path = tmp_path / f"{kind}.yaml"
    if kind == "alias-bomb":
        rows = ["a: &a [x, x, x, x, x, x, x, x, x]"]
        rows += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(12)]
        path.write_text("\n".join(rows) + "\n")
    else:
        path.write_text("x: " + "y" * (2 << 20) + "\n")
    for argv in (TRAIN + ["--no-track", "--config", str(path)], ["sweep", "--space", str(path), "--dry-run"]):
        one_line(capsys, cli(argv), str(path))


def test_tracking_uri_from_the_environment_is_checked_like_the_option(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    for argv in (TRAIN + ["--out", str(tmp_path / "run")], ["leaderboard"]):
        one_line(capsys, cli(argv), "MLFLOW_TRACKING_URI", "within 5 s")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# 6. Errors by class, at one place


class _NotMlflow(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802  (http.server's name)
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def not_mlflow():
    server = HTTPServer(("127.0.0.1", 0), _NotMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("uri", ["ftp://example.org/store", "postgresql://u@127.0.0.1:1/db", "gopher://x", "NOT_MLFLOW"])
def test_tracking_uris_that_cannot_be_a_store(capsys, tmp_path, uri, not_mlflow):
    uri = not_mlflow if uri == "NOT_MLFLOW" else uri
    for argv in (TRAIN + ["--out", str(tmp_path / "run"), "--tracking-uri", uri], ["leaderboard", "--tracking-uri", uri]):
        one_line(capsys, cli(argv), uri)
    assert not (tmp_path / "run").exists()


def test_empty_experiment_is_one_line(capsys, tmp_path):
    one_line(capsys, cli(TRAIN + ["--out", str(tmp_path / "r"), "--experiment", ""]), "--experiment")
    one_line(capsys, cli(["leaderboard", "--experiment", " "]), "--experiment")


@QUICK
@given(seed=st.one_of(st.integers(min_value=2**63), st.integers(max_value=-1)))
def test_seed_out_of_range_names_the_key(capsys, tmp_path, seed):
    rc = cli(TRAIN + ["--no-track", "--out", str(tmp_path / "r"), "--set", f"train.seed={seed}"])
    one_line(capsys, rc, "train.seed")


@QUICK
@given(key=st.sampled_from(["train.epochs", "optim.lr", "data.img_size", "train.seed"]), sub=segment)
def test_dotted_key_below_a_scalar_names_the_key(capsys, tmp_path, key, sub):
    rc = cli(TRAIN + ["--no-track", "--out", str(tmp_path / "r"), "--set", f"{key}.{sub}=1"])
    one_line(capsys, rc, f"{key}.{sub}")


def test_over_long_out_path_is_one_line(capsys, tmp_path):
    out = tmp_path / ("x" * 300) / "run"
    one_line(capsys, cli(TRAIN + ["--no-track", "--out", str(out)]), "too long")


@pytest.mark.parametrize("damage", ["config-not-a-dict", "config-without-data", "epoch-text", "nan-weights"])
def test_damaged_checkpoint_is_one_line(capsys, tmp_path, trained, damage):
    import torch

    state = torch.load(trained["best"], weights_only=True)
    if damage == "config-not-a-dict":
        state["config"] = [1, 2]
    elif damage == "config-without-data":
        state["config"] = {"model": state["config"]["model"]}
    elif damage == "epoch-text":
        state["epoch"] = "first"
    else:
        name = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    before = digest(path)
    rc = cli(["evaluate", "--checkpoint", str(path), "--no-track", "--out", str(tmp_path / "eval"), "--no-progress"])
    one_line(capsys, rc, str(path))
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    one_line(capsys, cli(["predict", "--checkpoint", str(path), str(image), "--out", str(tmp_path / "pred")]), str(path))
    assert digest(path) == before
    assert not (tmp_path / "eval").exists() and not (tmp_path / "pred").exists()


# ------------------------------------------------------------------------------------------------
# 6. A full disk, for every command that writes


def writing_commands(full: Path, trained, raw_synapse) -> dict[str, list[str]]:
    image = trained["root"] / "img.png"
    if not image.exists():
        from PIL import Image

        Image.new("RGB", (32, 32), (180, 90, 60)).save(image)
    return {
        "synth-isic": ["data", "synth", "isic", "--out", str(full / "isic"), "--n", "40"],
        "synth-synapse": ["data", "synth", "synapse", "--out", str(full / "syn"), "--n", "3"],
        "prepare": ["data", "prepare", "synapse", "--raw", str(raw_synapse), "--out", str(full / "prep")],
        "train": TRAIN + ["--no-track", "--out", str(full / "run")],
        "train-tracked": TRAIN + ["--out", str(full / "run2"), "--runs-dir", str(full / "runs"),
                                  "--tracking-uri", f"sqlite:///{full / 'runs' / 'mlflow.db'}"],
        "evaluate": ["evaluate", "--checkpoint", str(trained["best"]), "--no-track", "--no-progress",
                     "--out", str(full / "eval")],
        "predict": ["predict", "--checkpoint", str(trained["best"]), *[str(image)] * 1, "--out", str(full / "pred")],
        "leaderboard": ["leaderboard", "--tracking-uri", trained["uri"],
                        "--out", str(full / ("x" * 8) / "board.csv")],
        "report": ["report", "--tracking-uri", trained["uri"], "--out", str(full / "report.html")],
    }


TRAINING = ("train", "train-tracked", "evaluate")  # each trains or builds a data set: seconds each


@pytest.mark.parametrize("group", ["fast", pytest.param("training", marks=pytest.mark.slow)])
def test_disk_full_is_one_line_for_every_writing_command(capsys, tmp_path, trained, raw_synapse, group):
    before = digest(trained["run"])
    store = Path(trained["uri"][len("sqlite:///"):])
    with tmpfs(tmp_path / "full", "64k") as full:
        filler = full / "filler"
        for name, argv in writing_commands(full, trained, raw_synapse).items():
            if (name in TRAINING) != (group == "training"):
                continue
            # Fill the disk: each command fails on its first write of data.
            filler.unlink(missing_ok=True)
            with open(filler, "wb") as fh:
                try:
                    fh.write(b"\0" * (64 << 10))
                except OSError as err:
                    assert err.errno == errno.ENOSPC
            rc = cli(argv)
            err = capsys.readouterr().err
            lines = [line for line in err.splitlines() if line.strip() and "INFO" not in line]
            assert rc == 2, (name, err)
            assert "Traceback" not in err, (name, err)
            assert len(lines) == 1 and ("no space left" in lines[0] or "disk is full" in lines[0]), (name, err)
            assert str(full) in lines[0], (name, lines[0])
    assert digest(trained["run"]) == before
    assert running_runs(trained["uri"]) == 0 and store.exists()


# ------------------------------------------------------------------------------------------------
# 7. --dry-run checks what every trial will


SPACE = {"experiment": "classes", "model": "unet", "dataset": "synthetic-isic",
         "budget": {"trials": 2, "max_epochs": 1}, "fixed": {"data": {"img_size": 32}},
         "space": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}}, "final": {"seeds": [1]}}


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(big=st.integers(min_value=2**63, max_value=2**80))
@pytest.mark.parametrize("case", ["final-seed", "fixed-seed", "searched-seed", "data-option", "override"])
def test_dry_run_checks_what_every_trial_will(capsys, tmp_path, case, big):
    space = json.loads(json.dumps(SPACE))
    needle = {"final-seed": "final.seeds", "fixed-seed": "train.seed", "searched-seed": "space.train.seed",
              "data-option": "space.data.options.no_such", "override": "no_such_arg"}[case]
    if case == "final-seed":
        space["final"]["seeds"] = [1, big]
    elif case == "fixed-seed":
        space["fixed"]["train"] = {"seed": big}
    elif case == "searched-seed":
        space["space"]["train.seed"] = {"type": "choice", "values": [1, big]}
    elif case == "data-option":
        space["space"]["data.options.no_such"] = {"type": "choice", "values": [1, 2]}
    else:
        space["space"]["model.overrides.no_such_arg"] = {"type": "int", "low": 1, "high": 3}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    one_line(capsys, cli(["sweep", "--space", str(path), "--dry-run"]), str(path), needle)
