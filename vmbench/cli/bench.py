"""``vmbench bench scan|tune|model``: speed and memory, measured side by side in one run."""

from __future__ import annotations

import argparse

from vmbench.bench.model import REFERENCE_TIMEOUT_S
from vmbench.cli.options import bench_device, positive_float, positive_int, shape


def add_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="speed and memory benchmarks").add_subparsers(
        dest="bench_command", required=True, metavar="WHAT"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", type=bench_device, default="cpu", help="cpu or cuda[:N] (default cpu)")
    common.add_argument("--backend", action="append",
                        help="selective-scan backend to measure: cuda, triton, torch, reference (repeatable; default: all available)")
    common.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")

    p = bench.add_parser("scan", parents=[common],
                         help="selective scan fwd and fwd+bwd time and peak memory per backend vs mambapy")
    p.add_argument("--shapes", type=shape, nargs="+", help="CHANNELS:LENGTH pairs (default: VM-UNet's 4 stages)")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--repeats", type=positive_int, default=2, help="timed runs per case; the best is reported")
    p.add_argument("--no-mambapy", action="store_true", help="skip the mambapy pscan comparison")
    p.add_argument("--peak-gbps", type=positive_float, help="CUDA: peak memory bandwidth for the %%peak and floor "
                   "columns (default: a device-to-device copy measured in the same run)")
    p.set_defaults(func=cmd_bench_scan)

    p = bench.add_parser("tune", help="time Triton scan tile configurations on this GPU and print the fastest setting")
    p.add_argument("--device", type=bench_device, default="cuda", help="cuda[:N] (default cuda; cpu only under TRITON_INTERPRET=1)")
    p.add_argument("--config", action="append", help="a VMBENCH_TRITON_SCAN_CONFIG text to try, e.g. "
                   "'block_t=16,bwd_warps=8' (repeatable; default: vmbench's candidate list); the defaults always run")
    p.add_argument("--shapes", type=shape, nargs="+", help="CHANNELS:LENGTH pairs (default: VM-UNet's 4 stages)")
    p.add_argument("--batch-size", type=positive_int, help="default 32 on CUDA (VM-UNet's training batch), 1 on CPU")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per case; the best is reported")
    p.set_defaults(func=cmd_bench_tune)

    p = bench.add_parser("model", parents=[common], help="training images/s and peak memory of models, per scan "
                         "backend, with ratios to the reference backend",
                         description="Training steps (forward, backward, AdamW) of registered models, each case in a "
                         "fresh process. The Mamba models run once per scan backend with time and memory ratios to "
                         "the reference backend; unless named with --backend, the reference (a slow Python loop) "
                         "runs only at sizes up to 64 px.")
    p.add_argument("--model", action="append", help="a registered model (vmbench models), or all (repeatable; default "
                   "vmunet); the Mamba models run once per --backend, the others once")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[64, 256], help="square input sides (default 64 "
                   "256); a size a model cannot take is skipped with its reason, and a model that takes none of them "
                   "runs at its registered input size")
    p.add_argument("--batch-size", type=positive_int, help="default: 32 on CUDA; on CPU 8 (<= 64 px) or 2, and for "
                   "the Mamba models 2 or 1 when the reference backend runs")
    p.add_argument("--steps", type=positive_int, default=3, help="timed training steps after one warm-up step (the "
                   "reference backend: 1)")
    p.add_argument("--bf16", choices=["off", "on", "both"], default="off", help="bf16 autocast")
    p.add_argument("--no-fallback", action="store_true", help="a model that takes none of --sizes is only reported "
                   "as skipped, not measured at its registered input size")
    p.add_argument("--reference-timeout", type=positive_float, default=REFERENCE_TIMEOUT_S, help="seconds after which "
                   "a reference case is stopped and reported so (default %(default)g; its backward is quadratic in the "
                   "sequence length)")
    p.set_defaults(func=cmd_bench_model)


def cmd_bench_scan(args: argparse.Namespace) -> int:
    from vmbench.bench import STAGE_SHAPES, bench_scan

    bench_scan(
        backends=args.backend, shapes=tuple(args.shapes) if args.shapes else STAGE_SHAPES, batch=args.batch_size,
        device=args.device, repeats=args.repeats, compare_mambapy=not args.no_mambapy, threads=args.threads,
        peak_gbps=args.peak_gbps,
    )
    return 0


def cmd_bench_tune(args: argparse.Namespace) -> int:
    from vmbench.bench import STAGE_SHAPES, bench_tune

    bench_tune(configs=args.config, shapes=tuple(args.shapes) if args.shapes else STAGE_SHAPES, batch=args.batch_size,
               device=args.device, repeats=args.repeats)
    return 0


def cmd_bench_model(args: argparse.Namespace) -> int:
    from vmbench.bench import bench_model

    amp_modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.bf16]
    bench_model(model=args.model or ["vmunet"], sizes=tuple(args.sizes), batch=args.batch_size, steps=args.steps,
                device=args.device, backends=args.backend, amp_modes=amp_modes, threads=args.threads,
                fallback=not args.no_fallback, reference_timeout=args.reference_timeout)
    return 0
