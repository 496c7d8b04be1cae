"""``vmbench models``: the registered models with their parameter counts and input sizes."""

from __future__ import annotations

import argparse

from vmbench.cli import model_check
from vmbench.cli.options import positive_int


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="list registered models with parameter counts and native input sizes")
    p.add_argument("--num-classes", type=positive_int, default=1, help="classes for the parameter count (default 1)")
    p.add_argument("--ablations", action="store_true",
                   help="also list each Mamba model's ablation twins (<model>~no-ssm, <model>~no-mamba) with the "
                        "parameters that still act")
    p.set_defaults(func=cmd_models)
    model_check.add_parsers(p)  # vmbench models check NAME


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], last_free: bool = True) -> None:
    fixed = len(header) - 1 if last_free else len(header)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(fixed)] + [0] * (len(header) - fixed)
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    import vmbench
    from vmbench.ablation import ABLATIONS, silenced_parameter_count

    rows, twins = [], []
    for name in vmbench.list_models(ablations=args.ablations):
        info = vmbench.model_info(name)
        # Built on the meta device: counts parameters without allocating or initialising them.
        with torch.device("meta"):
            model = vmbench.create_model(name, num_classes=args.num_classes)
        params = sum(p.numel() for p in model.parameters())
        if info.ablation:
            silenced = silenced_parameter_count(model)
            twins.append((name, f"{params:,}", f"{silenced:,}", f"{params - silenced:,}", ABLATIONS[info.ablation]))
            continue
        paper = info.paper if len(info.paper) <= 72 else info.paper[:71] + "…"
        rows.append((name, info.family, f"{params:,}", "x".join(map(str, info.input_size)), paper))
    _table(("model", "family", f"params ({args.num_classes} cl.)", "input", "paper"), rows)
    if twins:
        print()
        print("Ablation twins: the model's weights, keys, init and recipe; the removed part's parameters stay in the "
              "state dict but no longer act (the model's own unused parameters are not subtracted).")
        _table(("twin", "params", "silenced", "acting", "removed"), twins)
    return 0
