"""``vmbench train``, ``vmbench evaluate`` and ``vmbench predict``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vmbench.cli.options import (existing_file, nonnegative_int, open_fraction, positive_float, positive_int,
                                  tracking_options, writable_folder)
from vmbench.errors import ConfigError
from vmbench.io import check_output_apart, read_yaml
from vmbench.protocols import RUN_PROTOCOLS


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train one model on one dataset, tracked in MLflow (checkpoints every epoch, test at the end)")
    p.add_argument("--config", help="experiment YAML (sections data, model, optim, scheduler, loss, train)")
    p.add_argument("--model", help="registered model name (default vmunet; list: vmbench models)")
    p.add_argument("--dataset", help="registered dataset name (default synthetic-isic; list: vmbench data list), or a "
                   "dataset folder (images/ + masks/, or nnU-Net's dataset.json), registered under the folder's name")
    p.add_argument("--dataset-format", choices=("folder", "nnunet"),
                   help="how to read a --dataset folder (default: nnunet where it holds dataset.json, else folder)")
    p.add_argument("--data-root", help="dataset folder (default: the dataset's own; generated data need none)")
    p.add_argument("--protocol", choices=RUN_PROTOCOLS, help="holdout (default), paper, or cv (with --set data.fold=K)")
    p.add_argument("--img-size", type=positive_int, help="square input side (default: the dataset's)")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--seed", type=nonnegative_int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], help="mixed precision (CUDA only)")
    p.add_argument("--pretrained", help="local pretrained weights for the model's loader")
    p.add_argument("--workers", type=nonnegative_int, help="DataLoader workers")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. optim.weight_decay=0.05")
    p.add_argument("--out", help="run folder (default vmbench-runs/train/MODEL_DATASET)")
    p.add_argument("--resume", action="store_true", help="continue the run folder's training from its last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    tracking_options(p, "--experiment", "--tracking-uri", "--runs-dir", "--no-track", experiment="vmbench-train")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint: per-case CSV and summary JSON (attached to its MLflow run)")
    p.add_argument("--checkpoint", required=True, help="a vmbench checkpoint (RUN/checkpoints/best.pt)")
    p.add_argument("--dataset", help="default: the dataset the checkpoint was trained on; another registered dataset, "
                   "or a dataset folder as for train (scored as a transfer evaluation under the folder's name)")
    p.add_argument("--dataset-format", choices=("folder", "nnunet"),
                   help="how to read a --dataset folder (default: nnunet where it holds dataset.json, else folder)")
    p.add_argument("--data-root")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--protocol", choices=RUN_PROTOCOLS, help="default: the training protocol")
    p.add_argument("--out", help="output folder (default: RUN/eval/SPLIT, or RUN/eval/DATASET-SPLIT for another dataset)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    tracking_options(p, "--no-track", no_track="the results to the checkpoint's MLflow run")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="masks for images (PNG) or NIfTI volumes (NIfTI) from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("inputs", nargs="+", help="image or NIfTI files, or folders of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=open_fraction, default=0.5,
                   help="probability threshold for binary masks, strictly between 0 and 1 (default 0.5)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)


def _parse_value(text: str):
    """A --set value: YAML scalar/list syntax (numbers, true/false, null, [1, 2])."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set value {text!r} is not a YAML value: {' '.join(str(err).split())}") from None


def _load_config_file(path: str) -> dict:
    file = existing_file(path, "--config", "file")
    values = read_yaml(file)
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{file}: expected a mapping of sections (data, model, ...), got {type(values).__name__}")
    return values or {}


_FLAGS = (
    ("model", "model.name"), ("dataset", "data.name"), ("data_root", "data.root"), ("protocol", "data.protocol"),
    ("img_size", "data.img_size"), ("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
    ("lr", "optim.lr"), ("seed", "train.seed"), ("device", "train.device"), ("amp", "train.amp"),
    ("pretrained", "model.pretrained"), ("workers", "data.num_workers"),
)


def _dataset_folder(args: argparse.Namespace) -> dict:
    """The overrides declaring ``--dataset PATH`` (a folder, not a registered name; vmbench.data.user)."""
    fmt = getattr(args, "dataset_format", None)
    dataset = args.dataset
    if dataset is None or (fmt is None and not ("/" in dataset or Path(dataset).is_dir())):
        if fmt is not None:
            raise ConfigError("--dataset-format: give the dataset folder with --dataset PATH")
        return {}
    if args.data_root is not None:
        raise ConfigError(f"--data-root: --dataset {dataset} is already the dataset's folder; drop --data-root")
    import vmbench

    if dataset in vmbench.list_datasets():
        raise ConfigError(f"--dataset {dataset}: both a registered dataset and a folder here; write ./{dataset} "
                          "for the folder")
    from vmbench.data.user import declare_path

    args.dataset = None  # the declaration names the dataset (after the folder)
    return declare_path(dataset, fmt)


def train_config_from_args(args: argparse.Namespace):
    """The ExperimentConfig of ``vmbench train`` (defaults < --config file < flags < --set) and its
    run folder (--out, else the --config file's ``out_dir``, else vmbench-runs/train/MODEL_DATASET)."""
    from vmbench.config import RUN_FOLDER_KEY, ExperimentConfig
    from vmbench.rundir import RunDir

    base = _load_config_file(args.config) if args.config else {}
    cfg = ExperimentConfig.from_dict(base, source=args.config or "defaults")
    overrides = {key: getattr(args, flag) for flag, key in _FLAGS if getattr(args, flag) is not None}
    overrides.update(_dataset_folder(args))
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.weight_decay=0.05")
        overrides[key.strip()] = _parse_value(value)
    if args.no_progress:
        overrides["train.progress"] = False
    cfg = cfg.with_overrides(overrides, source="command line")
    import vmbench

    vmbench.model_info(cfg.model.name)  # a misspelt name fails here, before the engine makes the run folder
    if cfg.data.root is not None and Path(cfg.data.root).is_file():
        raise ConfigError(f"--data-root {cfg.data.root} (data.root): is a file, not a dataset folder")
    from vmbench.search_space import check_config_input

    # The model's own rules on a meta-device copy: a size it cannot take names the option, not a layer.
    check_config_input(cfg, "command line", "data.img_size (--img-size)")
    out = args.out or base.get(RUN_FOLDER_KEY)
    return cfg, RunDir(out or Path("vmbench-runs") / "train" / f"{cfg.model.name}_{cfg.data.name}")


def _check_run_folder(cfg, run_dir, resume: bool) -> str:
    """The message to print before training; refuses a folder that holds another run or nothing to resume."""
    from vmbench.engine import load_state

    out = writable_folder(run_dir.root, "--out")
    last = run_dir.last
    if not resume:
        if last.exists():
            raise ConfigError(f"--out {out} already holds a run ({last}); pass --resume to continue it, or --out for a new folder")
        return f"training {cfg.model.name} on {cfg.data.name} ({cfg.data.protocol} protocol) -> {out}"
    if not last.exists():
        raise ConfigError(f"--resume: {last} does not exist, so there is nothing to resume (drop --resume to start)")
    done = load_state(last).epoch
    if done >= cfg.train.epochs:
        return f"{out}: all {cfg.train.epochs} epochs are done (last.pt at epoch {done}); evaluating the selected checkpoint"
    return f"resuming {cfg.model.name} on {cfg.data.name} from epoch {done} of {cfg.train.epochs} ({last})"


def cmd_train(args: argparse.Namespace) -> int:
    from vmbench.engine import fit
    from vmbench.engine.builders import LAST
    from vmbench.search_space import check_seed

    cfg, run_dir = train_config_from_args(args)
    check_seed(cfg.train.seed, "train.seed", "command line")
    writable_folder(run_dir.root, "--out")  # before the lock makes the folder
    # One writer per run folder: a second train/evaluate into it refuses, naming the holder; the
    # folder is checked again under the lock (another run may have finished into it meanwhile).
    with run_dir.lock("--out"):
        print(_check_run_folder(cfg, run_dir, args.resume))
        if args.no_track:
            result = fit(cfg, run_dir, resume=args.resume)
        else:
            from vmbench.engine.tracked import train_tracked

            result, tracked = train_tracked(cfg, run_dir, tracking_uri=args.tracking_uri, experiment=args.experiment,
                                            runs_dir=args.runs_dir, resume=args.resume)
            print(f"MLflow run {tracked.run.run_id} in experiment {tracked.experiment!r} ({tracked.tracking_uri}); "
                  "compare with `vmbench leaderboard`, browse with `vmbench ui`")
    if result.select_metric == LAST:
        print(f"kept the final epoch {result.best_epoch} (train.select_metric: last) ({result.best_checkpoint})")
    else:
        print(f"best epoch {result.best_epoch}: {result.select_metric} = {result.best_value:.4f} ({result.best_checkpoint})")
    if result.test is not None:
        print("test:", json.dumps(headline(cfg.data.name, result.test)))
        print(f"per-case table and summary: {run_dir.eval_dir('test')}")
    return 0


def headline(dataset: str, summary: dict) -> dict:
    """The dataset's headline metrics (vmbench.protocols), rounded for the terminal."""
    import vmbench

    keys = vmbench.dataset_info(dataset).kind.headline
    return {k: round(float(summary[k]), 4) for k in keys if k in summary}


def cmd_evaluate(args: argparse.Namespace) -> int:
    import contextlib

    from vmbench.config import ExperimentConfig
    from vmbench.engine import evaluate_checkpoint, load_state
    from vmbench.rundir import RunDir

    checkpoint = existing_file(args.checkpoint, "--checkpoint", "checkpoint file")
    state = load_state(checkpoint)  # a bad file fails here, before any folder is made
    trained = ExperimentConfig.from_dict(state.config, source=str(checkpoint))  # registers a declared dataset
    trained_on = trained.data.name
    given = args.dataset
    declared = _evaluation_dataset(args, trained)
    dataset = declared.get("data.name") or args.dataset or trained_on
    _check_same_task(trained_on, dataset, checkpoint, given)
    transfer = dataset != trained_on
    name = f"{dataset}-{args.split}" if transfer else args.split
    run_dir = RunDir.of_checkpoint(checkpoint)
    out = writable_folder(args.out or run_dir.eval_dir(name), "--out")
    # Scores never land among the images they score (nor around them).
    check_output_apart(out, _data_folders(declared.get("data.root", args.data_root), dataset), "--out", "dataset folder")
    # Writing into the run folder (its eval/, its MLflow run) takes the run folder's lock: never
    # while a training writes it. A checkpoint outside a run folder, evaluated elsewhere, needs none.
    writes_run = run_dir.checkpoints == checkpoint.parent and (
        args.out is None or (not args.no_track and run_dir.pointer.exists()))
    with run_dir.lock("--checkpoint's run folder") if writes_run else contextlib.nullcontext():
        result = evaluate_checkpoint(
            checkpoint, dataset=dataset if declared else args.dataset,
            root=declared.get("data.root", args.data_root), split=args.split, protocol=args.protocol,
            out_dir=out, device=args.device, progress=not args.no_progress,
            options=_options(declared) if declared and transfer else None,
        )
        print(json.dumps(headline(dataset, result.summary)))
        print(f"wrote {out / 'per_case.csv'} and {out / 'summary.json'}")
        if not args.no_track:
            from vmbench.engine.tracked import attach_evaluation
            from vmbench.tracking import transfer_tag

            pointer = attach_evaluation(run_dir, name, result.summary, out, transfer=transfer)
            if pointer is not None:
                kind = f" (a transfer evaluation: tag {transfer_tag(name)})" if transfer else ""
                print(f"attached to MLflow run {pointer['run_id']} as eval_{name}_* metrics and eval/{name}/ "
                      f"artifacts{kind}")
            else:
                print(f"not attached to an MLflow run: {run_dir.pointer} does not exist (a run trained with "
                      "--no-track, a sweep's final run from before run folders named their run, or a checkpoint outside its "
                      "run folder)")
    return 0


def _data_folders(root: str | None, dataset: str) -> list[Path]:
    """The folder ``dataset`` is read from: ``root``, else its registered default (when it exists)."""
    import vmbench

    folder = root or vmbench.dataset_info(dataset).default_root
    return [Path(folder)] if folder and Path(folder).is_dir() else []


def _evaluation_dataset(args: argparse.Namespace, trained) -> dict:
    """``--dataset PATH`` declared as ``vmbench train --dataset PATH`` declares it and registered under
    the folder's name in this process (so its classes can be checked); {} for a registered name.
    ``trained``: the checkpoint's ExperimentConfig (its own declared dataset is registered already)."""
    declared = _dataset_folder(args)
    if not declared:
        return {}
    name = declared["data.name"]
    if name == trained.data.name:
        if str(Path(trained.data.root or "").resolve()) == declared["data.root"]:
            return declared  # the checkpoint's own folder: not a transfer
        # Two folders of one name would file the results as the dataset the model was trained on.
        raise ConfigError(f"--dataset {declared['data.root']}: named {name!r} after its folder, as is the dataset "
                          f"the checkpoint was trained on ({trained.data.root}); rename one of the folders")
    from vmbench.data.user import register_user_dataset

    register_user_dataset(name, declared["data.root"], _options(declared))
    return declared


def _options(declared: dict) -> dict:
    """``data.options`` of a declaration (its format and labels)."""
    prefix = "data.options."
    return {k[len(prefix):]: v for k, v in declared.items() if k.startswith(prefix)}


def _check_same_task(trained_on: str, dataset: str, checkpoint: Path, given: str | None = None) -> None:
    """A model evaluates only on data of its own kind: same classes, same 2D or volume evaluation."""
    import vmbench

    have, want = vmbench.dataset_info(trained_on), vmbench.dataset_info(dataset)
    if (have.num_classes, have.evaluation) != (want.num_classes, want.evaluation):
        raise ConfigError(
            f"--dataset {given or dataset}: {checkpoint} was trained on {trained_on} ({have.num_classes} output "
            f"channel(s), {have.evaluation} evaluation), which cannot be evaluated on {dataset} ({want.num_classes} "
            f"output channel(s), {want.evaluation} evaluation); give a dataset of the same kind"
        )


def cmd_predict(args: argparse.Namespace) -> int:
    from vmbench.predict import predict_paths

    checkpoint = existing_file(args.checkpoint, "--checkpoint", "checkpoint file")
    out = writable_folder(args.out, "--out")
    for p in predict_paths(checkpoint, args.inputs, out, device=args.device, threshold=args.threshold):
        print(f"{p.source} -> {p.output} ({p.kind}, foreground {p.foreground_fraction:.1%})")
    return 0
