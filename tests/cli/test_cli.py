"""The ``vmbench`` command line."""

from __future__ import annotations

import re

from vmbench.cli import main


def test_bench_scan_prints_ratios_against_mambapy(capsys):
    assert main(["bench", "scan", "--shapes", "96:64", "48:128", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"\s*\(\d+, \d+\)", line)]
    assert len(rows) == 4  # two shapes x (torch, mambapy)
    torch_rows = [r for r in rows if " torch " in r]
    assert len(torch_rows) == 2 and all(re.search(r"\d+\.\d+x\s+\d+\.\d+x$", r) for r in torch_rows)
    assert re.search(r"mambapy .* 1\.00x\s+1\.00x$", out, re.M)


def test_unavailable_backend_is_one_clear_line(capsys):
    assert main(["bench", "scan", "--backend", "cuda", "--shapes", "96:64", "--no-mambapy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmbench: error: selective-scan backend 'cuda'") and "\n" not in err


def test_tune_without_a_gpu_or_the_interpreter_is_one_clear_line(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["bench", "tune", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmbench: error: selective-scan backend 'triton'") and "CUDA device" in err
    assert "\n" not in err


def test_bad_shape_argument(capsys):
    try:
        main(["bench", "scan", "--shapes", "96x64"])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "CHANNELS:LENGTH" in capsys.readouterr().err


def test_models_lists_vmunet_and_baselines_with_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    # Parameter counts (1 class, 3 input channels) of the official code built on CPU (VM-UNet, baselines papers' repos).
    assert "27,427,561" in rows["vmunet"] and "256x256" in rows["vmunet"]
    assert "7,765,985" in rows["unet"]
    assert "34,878,573" in rows["att-unet"]
    assert "224x224" in rows["swin-unet"]
    assert "26,248,725" in rows["transfuse-s"] and "192x256" in rows["transfuse-s"]
    assert "34,527,041" in rows["unet-classic"]
    assert main(["models", "--num-classes", "9"]) == 0
    rows9 = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "27,427,761" in rows9["vmunet"] and "27,168,900" in rows9["swin-unet"]


def _subcommand_paths(parser, prefix=()):
    """Every (sub)command path of the parser, discovered from argparse itself."""
    import argparse

    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _subcommand_paths(sub, prefix + (name,))
    return paths


def test_every_help_page_and_the_version(capsys):
    import pytest

    from vmbench import __version__
    from vmbench.cli import build_parser

    paths = _subcommand_paths(build_parser())
    assert ("leaderboard",) in paths and ("bench", "scan") in paths and ("data", "synth") in paths
    for argv in [["--help"], ["-h"], *[[*path, "--help"] for path in paths if path]]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        out = capsys.readouterr()
        assert exit_.value.code == 0, (argv, out.err)
        assert out.out.startswith("usage: vmbench"), argv
        assert "%%" not in out.out and "%(" not in out.out, (argv, out.out)
        assert "see docs" not in out.out, argv  # every option is explained where it is offered
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"vmbench {__version__}"


def test_an_mlflow_error_is_one_line_naming_the_store(capsys, monkeypatch, tmp_path):
    import pytest

    exceptions = pytest.importorskip("mlflow.exceptions")

    def refuse(*args, **kwargs):
        raise exceptions.MlflowException("RESOURCE_DOES_NOT_EXIST: no such run\nthe server's own details")

    monkeypatch.setattr("vmbench.cli.leaderboard.load_runs", refuse)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["leaderboard", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err == f"vmbench: error: MLflow store {uri}: RESOURCE_DOES_NOT_EXIST: no such run\n"


def test_tracking_options_are_declared_once():
    """--tracking-uri, --runs-dir, --experiment and --no-track: added by tracking_options only, so each
    command offers them with the same help."""
    import ast
    from pathlib import Path

    import vmbench
    from vmbench.cli.options import TRACKING_OPTIONS

    found = []
    for path in Path(vmbench.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                    and any(isinstance(a, ast.Constant) and a.value in TRACKING_OPTIONS for a in node.args)):
                found.append(f"{path}:{node.lineno}")
    assert not found, f"declare these with vmbench.cli.options.tracking_options: {found}"
