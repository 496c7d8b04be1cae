"""``vmbench models``: the registered models with their parameter counts and input sizes."""

from __future__ import annotations

import argparse

from vmbench.cli.options import positive_int


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="list registered models with parameter counts and native input sizes")
    p.add_argument("--num-classes", type=positive_int, default=1, help="classes for the parameter count (default 1)")
    p.set_defaults(func=cmd_models)


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
