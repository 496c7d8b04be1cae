"""The ``vmbench`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from vmbench.registry import UnknownNameError

# Errors whose message is already a complete, user-facing sentence: print it, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UnknownNameError, ValueError, FileNotFoundError, RuntimeError)


def _shape(text: str) -> tuple[int, int]:
    try:
        channels, length = (int(p) for p in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} must be CHANNELS:LENGTH, e.g. 768:4096") from None
    return channels, length


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    import vmbench

    rows = []
    for name in vmbench.list_models():
        info = vmbench.model_info(name)
        # Built on the meta device: counts parameters without allocating or initialising them.
        with torch.device("meta"):
            model = vmbench.create_model(name, num_classes=args.num_classes)
        params = sum(p.numel() for p in model.parameters())
        paper = info.paper if len(info.paper) <= 72 else info.paper[:71] + "…"
        rows.append((name, info.family, f"{params:,}", "x".join(map(str, info.input_size)), paper))
    header = ("model", "family", f"params ({args.num_classes} cl.)", "input", "paper")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths + [0])).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths + [0])).rstrip())
    return 0


def cmd_bench_scan(args: argparse.Namespace) -> int:
    from vmbench.bench import STAGE_SHAPES, bench_scan

    bench_scan(
        backends=args.backend,
        shapes=tuple(args.shapes) if args.shapes else STAGE_SHAPES,
        batch=args.batch_size,
        device=args.device,
        repeats=args.repeats,
        compare_mambapy=not args.no_mambapy,
        threads=args.threads,
    )
    return 0


def cmd_bench_model(args: argparse.Namespace) -> int:
    from vmbench.bench import bench_model

    amp_modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.bf16]
    bench_model(
        model=args.model,
        sizes=tuple(args.sizes),
        batch=args.batch_size,
        steps=args.steps,
        device=args.device,
        backends=args.backend,
        amp_modes=amp_modes,
        threads=args.threads,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from vmbench import __version__

    parser = argparse.ArgumentParser(prog="vmbench", description="Benchmark medical image segmentation models.")
    parser.add_argument("--version", action="version", version=f"vmbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (e.g. the scan backend chosen)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list registered models with parameter counts and native input sizes")
    p.add_argument("--num-classes", type=int, default=1, help="classes for the parameter count (default 1)")
    p.set_defaults(func=cmd_models)

    bench = sub.add_parser("bench", help="speed and memory benchmarks").add_subparsers(
        dest="bench_command", required=True, metavar="WHAT"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    common.add_argument(
        "--backend", action="append", help="selective-scan backend to measure (repeatable; default: all available)"
    )
    common.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")

    p = bench.add_parser(
        "scan", parents=[common], help="selective scan fwd and fwd+bwd time and peak memory per backend vs mambapy"
    )
    p.add_argument("--shapes", type=_shape, nargs="+", help="CHANNELS:LENGTH pairs (default: VM-UNet's 4 stages)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per case; the best is reported")
    p.add_argument("--no-mambapy", action="store_true", help="skip the mambapy pscan comparison")
    p.set_defaults(func=cmd_bench_scan)

    p = bench.add_parser("model", parents=[common], help="training images/s and peak memory of a model")
    p.add_argument("--model", default="vmunet")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="square input sides (default 64 256)")
    p.add_argument("--batch-size", type=int, help="default: 32 on CUDA; 8 (64px) or 2 (larger) on CPU")
    p.add_argument("--steps", type=int, default=3, help="timed training steps after one warm-up step")
    p.add_argument("--bf16", choices=["off", "on", "both"], default="off", help="bf16 autocast")
    p.set_defaults(func=cmd_bench_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if args.verbose:  # show where it came from
            raise
        print(f"vmbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vmbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
