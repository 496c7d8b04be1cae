"""The README's set-up commands and CI stay in step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_has_exactly_two_setup_commands():
    commands = setup_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "vmbench" in main_job and "pytest" in tests
    for command in commands:
        assert "torch==2.13.0" in command  # a CPU wheel where one is available


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup_commands()[1] in ci.splitlines()


def test_no_torchvision_or_timm_dependency():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "torchvision" not in pyproject and "timm" not in pyproject
