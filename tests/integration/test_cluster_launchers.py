"""The cluster launcher files, and the proofs that run them: `ray up` over SSH and a SLURM job, here."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _pinned_ray() -> str:
    """Ray's version as pyproject.toml pins it (``ray[...]==X``)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==([\w.]+)", d.replace(" ", "")))]
    assert len(pins) == 1, deps
    return pins[0]


def _images(config: dict) -> list[str]:
    docker = config.get("docker", {})
    return [docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)]


def _image_problems(image: str) -> list[str]:
    """What is wrong with a launcher image for vmbench; rayproject/ray tags are {Ray version}-{pyXY}-{platform}."""
    repo, _, tag = image.partition(":")
    if repo != "rayproject/ray":  # ray-ml images stopped with Ray 2.50 (ray#46378)
        return [f"{image}: not Ray's own image rayproject/ray"]
    match = re.fullmatch(r"(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d{3})", tag)
    if not match:
        return [f"{image}: tag is not VERSION-pyXY-(gpu|cuXYZ)"]
    problems = []
    if match.group(1) != _pinned_ray():
        problems.append(f"{image}: Ray {match.group(1)} in the image, {_pinned_ray()} pinned in pyproject.toml")
    if (match.group(2), match.group(3)) != ("3", "11"):
        problems.append(f"{image}: the nodes run Python 3.11")
    return problems


def test_aws_image_is_rays_own_for_the_pinned_ray_and_python_311():
    images = _images(yaml.safe_load((ROOT / "cluster" / "config.yaml").read_text()))
    assert images, "cluster/config.yaml names no docker image"
    assert [p for image in images for p in _image_problems(image)] == []


def test_the_image_check_rejects_ray_ml_and_drift():
    pinned = _pinned_ray()
    assert _image_problems(f"rayproject/ray-ml:{pinned}-py311-gpu")  # what the file held before
    assert _image_problems("rayproject/ray:2.59.0-py311-gpu") or pinned == "2.59.0"
    assert _image_problems(f"rayproject/ray:{pinned}-py310-gpu")
    assert _image_problems(f"rayproject/ray:{pinned}-py311-gpu.deprecated")
    assert _image_problems(f"rayproject/ray:{pinned}-py311-cu128") == []


def test_aws_nodes_install_a_cuda_torch_and_vmbench():
    config = yaml.safe_load((ROOT / "cluster" / "config.yaml").read_text())
    setup = config["setup_commands"]
    assert any(re.search(r"pip install .*torch==\d", c) for c in setup), setup
    mount = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    assert any("pip install" in c and f"{mount}[" in c for c in setup), setup
    # ray submit runs ~/sweep.py: a checkout at ~/vmbench would shadow the vmbench package.
    assert mount.rstrip("/") not in ("/home/ray/vmbench", "~/vmbench"), mount
    # `ray submit` runs the sweep in a login shell on the head: it needs Ray's token mode there.
    assert any("RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in setup), setup
    for node_type in config["available_node_types"].values():
        assert node_type["node_config"].get("ImageId"), "Ray's default AWS image is a 2021 CUDA 11.2 AMI"


def test_services_bind_the_cluster_address_not_every_interface():
    local = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    head = local["provider"]["head_ip"]
    server = " ".join(local["head_setup_commands"])
    assert f"--host {head} " in server and "0.0.0.0" not in server
    for config in (local, yaml.safe_load((ROOT / "cluster" / "config.yaml").read_text())):
        start = " ".join(config["head_start_ray_commands"])
        assert "--dashboard-host=127.0.0.1" in start and "RAY_AUTH_MODE=token" in start


def test_ray_up_proof_writes_a_valid_concrete_file(tmp_path):
    """The proof's generated launcher file is the template with this machine's values, and valid."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import ray_up_local as proof
    finally:
        sys.path.pop(0)
    template = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    ports = {"mlflow": 15001, "gcs": 16001, "dashboard": 18001, "client": 11001, "head_agent": 12001, "worker_agent": 13001}
    config = proof.concrete_config(template, tmp_path, ports, ssh_port=2222)
    validate_config(prepare_config(copy.deepcopy(config)))
    text = yaml.safe_dump(config)
    assert "192.0.2." not in text and "0.0.0.0" not in text and ":5000" not in text and "6379" not in text
    assert config["provider"]["head_ip"] == "127.0.0.2" and config["provider"]["worker_ips"] == ["127.0.0.3"]
    assert config["auth"]["ssh_user"] == "vmbench" and "--port 15001" in " ".join(config["head_setup_commands"])
    assert not any(c.rstrip().endswith("ray stop") for c in config["worker_start_ray_commands"])


def _run_proof(script: str, timeout: int) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if done.returncode == 77:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert "passed" in done.stdout.splitlines()[-1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("/usr/sbin/sshd") is None, reason="no sshd here: apt-get install openssh-server rsync")
def test_ray_up_submit_down_over_ssh_on_this_machine():
    _run_proof("ray_up_local.py", timeout=3000)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("slurmctld") is None or shutil.which("munged") is None,
                    reason="no SLURM here: apt-get install slurm-wlm munge")
@pytest.mark.skipif(os.geteuid() != 0, reason="slurmd runs jobs as their user and needs root")
def test_sbatch_sweep_on_a_slurm_cluster_on_this_machine():
    _run_proof("slurm_local.py", timeout=3000)
