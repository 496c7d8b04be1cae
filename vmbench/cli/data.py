"""``vmbench data synth|prepare|list``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vmbench.cli.options import nonnegative_int, positive_int, writable_folder
from vmbench.errors import ConfigError

MAPPING_HELP = (
    "which organ each of the 8 Synapse label ids means (BTCV ids in brackets). "
    "A (default; SAMed's re-creation of the preprocessing): 1 spleen [1], 2 right kidney [2], 3 left kidney [3], "
    "4 gallbladder [4], 5 liver [6], 6 stomach [7], 7 aorta [8], 8 pancreas [11]. "
    "B (the papers' table order): 1 aorta [8], 2 gallbladder [4], 3 left kidney [3], 4 right kidney [2], "
    "5 liver [6], 6 pancreas [11], 7 spleen [1], 8 stomach [7]. Other BTCV organs become background."
)


def add_parsers(sub) -> None:
    data = sub.add_parser("data", help="generate, prepare and list datasets").add_subparsers(
        dest="data_command", required=True, metavar="WHAT"
    )
    p = data.add_parser("synth", help="write generated data in the real ISIC or raw Synapse (NIfTI) layout")
    p.add_argument("kind", choices=["isic", "synapse"])
    p.add_argument("--out", required=True, help="an empty (or new) folder")
    p.add_argument("--n", type=positive_int, default=100, help="images (isic, >= 3) or cases (synapse, <= 30)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--layout", choices=["challenge", "prepared"],
                   help="isic only: the official archive folders (default), or VM-UNet's prepared train/val folders")
    p.add_argument("--year", type=int, choices=[2017, 2018], help="isic only (default 2018)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=cmd_data_synth)

    p = data.add_parser("prepare", help="raw BTCV NIfTI -> the TransUNet Synapse layout")
    p.add_argument("kind", choices=["synapse"])
    p.add_argument("--raw", required=True, help="folder with img0001.nii.gz / label0001.nii.gz (or img/ label/)")
    p.add_argument("--out", required=True, help="the prepared folder to write (train_npz/, test_vol_h5/, lists/)")
    p.add_argument("--mapping", choices=["A", "B"], default="A", help=MAPPING_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.set_defaults(func=cmd_data_prepare)

    p = data.add_parser("list", help="registered datasets")
    p.set_defaults(func=cmd_data_list)

    p = data.add_parser("check", help="check a dataset folder (pairs, files, sizes, mask values, leaks) and print "
                        "its fingerprint; exit 2 when it finds errors")
    p.add_argument("path", help="a dataset folder: images/ + masks/ (or masks/0/), or nnU-Net's dataset.json layout")
    p.add_argument("--format", choices=("folder", "nnunet"), help="default: nnunet where dataset.json exists, else folder")
    p.add_argument("--split-seed", type=nonnegative_int, default=0, help="the holdout split's seed (data.options.split_seed)")
    p.set_defaults(func=cmd_data_check)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from vmbench.data import synth_isic, synth_synapse

    out = writable_folder(args.out, "--out")
    if args.kind == "isic":
        layout, year = args.layout or "challenge", args.year or 2018
        report = synth_isic(out, n=args.n, seed=args.seed, layout=layout, year=year,
                            overwrite=args.overwrite, progress=True)
        counts = ", ".join(f"{split} {n}" for split, n in report["counts"].items())
        print(f"wrote {args.n} generated ISIC{year}-like images ({layout} layout: {counts}) to {out}")
    else:
        for option, value in (("--layout", args.layout), ("--year", args.year)):
            if value is not None:
                raise ConfigError(f"{option} {value}: applies to isic only; leave it out for synapse")
        report = synth_synapse(out, n_cases=args.n, seed=args.seed, overwrite=args.overwrite, progress=True)
        print(f"wrote {len(report['cases'])} generated CT cases (raw BTCV NIfTI layout) to {out}; "
              f"next: vmbench data prepare synapse --raw {out} --out DIR")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from vmbench.data import prepare_synapse

    from tqdm.auto import tqdm

    raw = Path(args.raw)
    if raw.exists() and not raw.is_dir():
        raise ConfigError(f"--raw {raw}: is a file, not a folder of raw BTCV NIfTI volumes")
    out = writable_folder(args.out, "--out")
    with tqdm(desc=f"preparing {out.name}", unit="case", leave=False, disable=None) as bar:
        report = prepare_synapse(args.raw, out, mapping=args.mapping, overwrite=args.overwrite,
                                 progress=lambda case: bar.update(1))
    print(report.summary())
    for label, items in (("not in the official lists, skipped", report.skipped), ("listed but missing", report.missing)):
        if items:
            print(f"{label}: {', '.join(items)}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    import vmbench

    for name in vmbench.list_datasets():
        info = vmbench.dataset_info(name)
        size = "x".join(map(str, info.img_size))
        protocols = ",".join(info.protocols)
        print(f"{name:<18} {info.task:<10} {info.num_classes:>2} cl.  {size:<8} {info.evaluation:<9} {protocols:<18} "
              f"{info.description}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from vmbench.data.check import check_dataset

    report = check_dataset(args.path, args.format, split_seed=args.split_seed)
    print("\n".join(report.lines()))
    return 0 if report.ok else 2
