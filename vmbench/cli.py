"""The ``vmbench`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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
        peak_gbps=args.peak_gbps,
    )
    return 0


def cmd_bench_tune(args: argparse.Namespace) -> int:
    from vmbench.bench import STAGE_SHAPES, bench_tune

    bench_tune(
        configs=args.config,
        shapes=tuple(args.shapes) if args.shapes else STAGE_SHAPES,
        batch=args.batch_size,
        device=args.device,
        repeats=args.repeats,
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


def _parse_value(text: str):
    """A --set value: YAML scalar/list syntax (numbers, true/false, null, [1, 2])."""
    import yaml

    return yaml.safe_load(text)


def _load_config_file(path: str) -> dict:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {file} does not exist")
    try:
        values = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{file}: not valid YAML: {str(err).splitlines()[0]}") from None
    return values or {}


def train_config_from_args(args: argparse.Namespace):
    from vmbench.config import ExperimentConfig

    base = _load_config_file(args.config) if args.config else {}
    cfg = ExperimentConfig.from_dict(base, source=args.config or "defaults")
    overrides = {}
    for flag, key in (
        ("model", "model.name"),
        ("dataset", "data.name"),
        ("data_root", "data.root"),
        ("protocol", "data.protocol"),
        ("img_size", "data.img_size"),
        ("epochs", "train.epochs"),
        ("batch_size", "train.batch_size"),
        ("lr", "optim.lr"),
        ("seed", "train.seed"),
        ("device", "train.device"),
        ("amp", "train.amp"),
        ("pretrained", "model.pretrained"),
        ("workers", "data.num_workers"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.weight_decay=0.05")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value)
    if args.no_progress:
        overrides["train.progress"] = False
    cfg = cfg.with_overrides(overrides, source="command line")
    out = args.out or (base.get("out_dir") if args.config else None)
    cfg.out_dir = str(out or Path("vmbench-runs") / "train" / f"{cfg.model.name}_{cfg.data.name}")
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from vmbench.engine import fit

    cfg = train_config_from_args(args)
    last = Path(cfg.out_dir) / "checkpoints" / "last.pt"
    if last.exists() and not args.resume:
        raise ValueError(f"{cfg.out_dir} already holds a run ({last}); pass --resume to continue it or --out for a new folder")
    print(f"training {cfg.model.name} on {cfg.data.name} ({cfg.data.protocol} protocol) -> {cfg.out_dir}")
    result = fit(cfg, resume=args.resume)
    print(f"best epoch {result.best_epoch}: {result.select_metric} = {result.best_value:.4f} ({result.best_checkpoint})")
    if result.test is not None:
        print("test:", json.dumps(_headline(result.test)))
        print(f"per-case table and summary: {Path(cfg.out_dir) / 'eval' / 'test'}")
    return 0


def _headline(summary: dict) -> dict:
    keys = ("dsc", "miou", "hd95", "acc", "spe", "sen", "per_image_dice", "dsc_strict", "hd95_strict")
    return {k: round(float(summary[k]), 4) for k in keys if k in summary}


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from vmbench.engine import evaluate_checkpoint

    from vmbench.engine import load_checkpoint

    checkpoint = Path(args.checkpoint)
    dataset = args.dataset or load_checkpoint(checkpoint)["config"]["data"]["name"]
    out = Path(args.out) if args.out else checkpoint.parent.parent / "eval" / f"{dataset}-{args.split}"
    result = evaluate_checkpoint(
        checkpoint, dataset=args.dataset, root=args.data_root, split=args.split, protocol=args.protocol,
        out_dir=out, device=args.device, progress=not args.no_progress,
    )
    print(json.dumps(_headline(result.summary)))
    print(f"wrote {out / 'per_case.csv'} and {out / 'summary.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from vmbench.predict import predict_paths

    for p in predict_paths(args.checkpoint, args.inputs, args.out, device=args.device, threshold=args.threshold):
        print(f"{p.source} -> {p.output} ({p.kind}, foreground {p.foreground_fraction:.1%})")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from vmbench.data import synth_isic, synth_synapse

    if args.kind == "isic":
        synth_isic(args.out, n=args.n, seed=args.seed, layout=args.layout, year=args.year)
    else:
        synth_synapse(args.out, n_cases=args.n, seed=args.seed)
    print(f"wrote generated {args.kind} data to {args.out}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from vmbench.data import prepare_synapse

    report = prepare_synapse(args.raw, args.out, mapping=args.mapping, overwrite=args.overwrite)
    print(report)
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    import vmbench

    for name in vmbench.list_datasets():
        info = vmbench.dataset_info(name)
        size = "x".join(map(str, info.img_size))
        print(f"{name:<18} {info.task:<10} {info.num_classes:>2} cl.  {size:<8} {info.evaluation:<9} {info.description}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from vmbench.search_space import check_name, load_spec

    spec = load_spec(args.space)
    if args.name is not None:
        # The same rule as the file's name field: it becomes folder names and MLflow filters.
        spec.name = check_name(args.name, "--name")
    if args.dry_run:
        print(spec.plan())
        return 0
    from vmbench.sweep import run_sweep

    outcomes = run_sweep(
        spec,
        tracking_uri=args.tracking_uri,
        runs_dir=args.runs_dir,
        storage_path=args.storage_path,
        resume=args.resume,
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
    )
    failed = 0
    for outcome in outcomes:
        finished = sum(f["status"] == "FINISHED" for f in outcome.final)
        failed += len(outcome.final) - finished
        print(
            f"{outcome.study}: best {spec.metric} {outcome.best_value:.4f} with {outcome.best}; "
            f"{outcome.trials['total']} trials ({outcome.trials['errors']} failed); "
            f"final runs {finished}/{len(outcome.final)}"
        )
    if not args.no_leaderboard:
        try:
            from vmbench import leaderboard
        except ImportError as err:  # the leaderboard module is optional at this point of the pipeline
            print(f"(leaderboard unavailable: {err})")
        else:
            leaderboard.print_for_sweep(args.tracking_uri, spec.experiment, runs_dir=args.runs_dir)
    return 1 if failed else 0


def cmd_ui(args: argparse.Namespace) -> int:
    from vmbench.ui import serve

    return serve(args.tracking_uri, args.runs_dir, args.host, args.port, args.allowed_hosts)


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
    p.add_argument(
        "--peak-gbps", type=float, help="CUDA: peak memory bandwidth for the %%peak and floor columns "
        "(default: a device-to-device copy measured in the same run)"
    )
    p.set_defaults(func=cmd_bench_scan)

    p = bench.add_parser(
        "tune", help="time Triton scan tile configurations on this GPU and print the fastest setting"
    )
    p.add_argument("--device", default="cuda", help="cuda[:N] (default cuda; cpu only under TRITON_INTERPRET=1)")
    p.add_argument(
        "--config", action="append", help="a VMBENCH_TRITON_SCAN_CONFIG text to try, e.g. "
        "'block_t=16,bwd_warps=8' (repeatable; default: vmbench's candidate list); the defaults always run"
    )
    p.add_argument("--shapes", type=_shape, nargs="+", help="CHANNELS:LENGTH pairs (default: VM-UNet's 4 stages)")
    p.add_argument("--batch-size", type=int, help="default 32 on CUDA (VM-UNet's training batch), 1 on CPU")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case; the best is reported")
    p.set_defaults(func=cmd_bench_tune)

    p = bench.add_parser("model", parents=[common], help="training images/s and peak memory of a model")
    p.add_argument("--model", default="vmunet")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="square input sides (default 64 256)")
    p.add_argument("--batch-size", type=int, help="default: 32 on CUDA; 8 (64px) or 2 (larger) on CPU")
    p.add_argument("--steps", type=int, default=3, help="timed training steps after one warm-up step")
    p.add_argument("--bf16", choices=["off", "on", "both"], default="off", help="bf16 autocast")
    p.set_defaults(func=cmd_bench_model)

    p = sub.add_parser("sweep", help="tune models with Ray Tune + Optuna + ASHA, then retrain the best per seed")
    p.add_argument("--space", required=True, help="search-space YAML (see search_spaces/)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and plan, run nothing")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    p.add_argument("--name", help="sweep name (default: the file's name field or stem)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or vmbench-runs/mlflow.db)")
    p.add_argument("--runs-dir", default="vmbench-runs", help="local folder for the default store and runs")
    p.add_argument("--storage-path", help="Ray Tune storage (shared: NFS path or s3://...) for clusters")
    p.add_argument("--address", help="attach to a running Ray cluster: auto or HOST:PORT (default: start one here)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance")
    p.add_argument("--num-gpus", type=float, help="GPUs of the local Ray instance")
    p.add_argument("--no-leaderboard", action="store_true", help="do not print the leaderboard at the end")
    p.set_defaults(func=cmd_sweep)

    from vmbench import leaderboard

    leaderboard.add_parser(sub)

    p = sub.add_parser("ui", help="the MLflow UI over vmbench's runs (127.0.0.1, a free port)")
    p.add_argument("--tracking-uri", help="default $MLFLOW_TRACKING_URI or vmbench-runs/mlflow.db")
    p.add_argument("--runs-dir", default="vmbench-runs")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    p.add_argument("--port", type=int, help="default: a free port")
    p.add_argument("--allowed-hosts", help="Host headers to accept when served under a DNS name (MLflow option)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("train", help="train one model on one dataset (checkpoints every epoch, test at the end)")
    p.add_argument("--config", help="experiment YAML (sections data, model, optim, scheduler, loss, train)")
    p.add_argument("--model", help="registered model name (default vmunet)")
    p.add_argument("--dataset", help="registered dataset name (default synthetic-isic)")
    p.add_argument("--data-root", help="dataset folder (default: the dataset's own)")
    p.add_argument("--protocol", choices=["holdout", "paper"])
    p.add_argument("--img-size", type=int, help="square input side (default: the dataset's)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"])
    p.add_argument("--pretrained", help="local pretrained weights for the model's loader")
    p.add_argument("--workers", type=int, help="DataLoader workers")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. optim.weight_decay=0.05")
    p.add_argument("--out", help="run folder (default vmbench-runs/train/MODEL_DATASET)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint: per-case CSV and summary JSON")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-root")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--protocol", choices=["holdout", "paper"], help="default: the training protocol")
    p.add_argument("--out", help="output folder (default: next to the checkpoint's run)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="masks for images (PNG) or NIfTI volumes (NIfTI) from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("inputs", nargs="+", help="image or NIfTI files, or folders of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold for binary masks")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)

    data = sub.add_parser("data", help="generate, prepare and list datasets").add_subparsers(
        dest="data_command", required=True, metavar="WHAT"
    )
    p = data.add_parser("synth", help="write generated data in the real ISIC or raw Synapse (NIfTI) layout")
    p.add_argument("kind", choices=["isic", "synapse"])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=100, help="images (isic) or cases (synapse)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=["challenge", "prepared"], default="challenge", help="isic only")
    p.add_argument("--year", type=int, choices=[2017, 2018], default=2018, help="isic only")
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("prepare", help="raw BTCV NIfTI -> the TransUNet Synapse layout")
    p.add_argument("kind", choices=["synapse"])
    p.add_argument("--raw", required=True, help="folder with img0001.nii.gz / label0001.nii.gz (or img/ label/)")
    p.add_argument("--out", required=True)
    p.add_argument("--mapping", choices=["A", "B"], default="A", help="organ label order (see docs)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_data_prepare)
    p = data.add_parser("list", help="registered datasets")
    p.set_defaults(func=cmd_data_list)
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
