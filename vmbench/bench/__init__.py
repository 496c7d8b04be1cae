"""Benchmarks: ``vmbench bench scan``, ``vmbench bench model`` and ``vmbench bench tune``.

Every figure is measured in this run, side by side, and targets are printed as ratios; nothing is
compared with stored numbers. Each case runs in a fresh process so that peak memory (peak RSS on
CPU, ``torch.cuda.max_memory_allocated`` on CUDA) belongs to that case alone.

Modules: :mod:`~vmbench.bench.measure` (peak memory, timings, fresh processes),
:mod:`~vmbench.bench.scan` (the selective scan against mambapy, HBM bytes and bandwidth on CUDA),
:mod:`~vmbench.bench.model` (training throughput of the registered models, per scan backend,
against the reference backend), :mod:`~vmbench.bench.tune` (Triton tile configurations).
"""

from vmbench.bench.measure import CaseTimeout, PeakMemory, in_fresh_process
from vmbench.bench.model import (
    REFERENCE,
    ModelCase,
    ModelGroup,
    bench_model,
    plan_model_groups,
    run_model_case,
    select_models,
    uses_selective_scan,
)
from vmbench.bench.scan import (
    MAMBAPY,
    STAGE_SHAPES,
    ScanCase,
    bench_scan,
    default_backends,
    mambapy_available,
    measure_copy_gbps,
    run_scan_case,
    scan_bytes,
)
from vmbench.bench.tune import TUNE_TOLERANCE, TuneCase, bench_tune, run_tune_case

__all__ = [
    "CaseTimeout",
    "MAMBAPY",
    "REFERENCE",
    "STAGE_SHAPES",
    "TUNE_TOLERANCE",
    "ModelCase",
    "ModelGroup",
    "PeakMemory",
    "ScanCase",
    "TuneCase",
    "bench_model",
    "bench_scan",
    "bench_tune",
    "default_backends",
    "in_fresh_process",
    "mambapy_available",
    "measure_copy_gbps",
    "plan_model_groups",
    "run_model_case",
    "run_scan_case",
    "run_tune_case",
    "scan_bytes",
    "select_models",
    "uses_selective_scan",
]
