"""``vmbench models check NAME``: does a model keep vmbench's contract? One screen, exit 2 if not.

The contract (``vmbench.registry.register_model``): ``factory(num_classes, in_chans, **overrides)``
returns a module mapping float32 (B, in_chans, H, W) to logits (B, num_classes, H, W) (deep
supervision: a list whose first entry is that), raises ``ModelInputError`` for a size it cannot
take, and trains: a few CPU steps on one fixed batch lower the loss.
"""

from __future__ import annotations

import argparse
import time

from vmbench.cli.options import positive_int

PROBE_SIZES = ((64, 64), (96, 96), (128, 128), (96, 128), (100, 100), (256, 256))
STEPS = 5


def add_parsers(models_parser) -> None:
    sub = models_parser.add_subparsers(dest="models_command", metavar="check")
    p = sub.add_parser("check", help="check a model's contract: logits shapes for 1 and C classes, the input "
                       "sizes it accepts, a CPU training step that lowers the loss")
    p.add_argument("name", help="a registered model, or package.module:factory")
    p.add_argument("--classes", type=positive_int, default=3, help="C for the multi-class shape check (default 3)")
    p.add_argument("--in-chans", type=positive_int, default=3)
    p.set_defaults(func=cmd_models_check)


def _short(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:150]


def cmd_models_check(args: argparse.Namespace) -> int:
    import torch

    import vmbench
    from vmbench.engine.outputs import final_logits
    from vmbench.errors import ModelInputError

    info = vmbench.model_info(args.name)  # unknown or unimportable: one line
    native = tuple(info.input_size)
    print(f"{info.name} ({info.family}; native input {native[0]}x{native[1]}, in_chans {args.in_chans})")
    torch.manual_seed(0)
    failures = 0

    def report(ok: bool, text: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} {text}")

    def forward(model, size, batch: int = 2):
        with torch.no_grad():
            return final_logits(model(torch.randn(batch, args.in_chans, *size)))

    # 1. logits shapes for 1 and C classes at the native size.
    models = {}
    for classes in (1, args.classes):
        try:
            models[classes] = vmbench.create_model(args.name, num_classes=classes, in_chans=args.in_chans).eval()
            out = forward(models[classes], native)
            want = (2, classes, *native)
            report(tuple(out.shape) == want, f"{classes} class(es): logits {tuple(out.shape)} (want {want})")
            if out.dtype != torch.float32 or not torch.isfinite(out).all():
                report(False, f"{classes} class(es): logits must be finite float32, got {out.dtype}")
        except Exception as err:  # the model's own code: its failure is the finding
            report(False, f"{classes} class(es): {_short(err)}")
    # 2. sizes it accepts (a refusal must be ModelInputError, not a crash deep in a layer).
    model = models.get(1)
    if model is not None:
        accepted, refused = [], []
        for size in sorted(set(PROBE_SIZES) | {native}):
            try:
                out = forward(model, size, batch=1)
            except ModelInputError:
                refused.append(f"{size[0]}x{size[1]}")
                continue
            except Exception as err:  # should have been a ModelInputError
                report(False, f"{size[0]}x{size[1]}: crashed instead of raising ModelInputError ({_short(err)})")
                continue
            if tuple(out.shape[-2:]) == size:
                accepted.append(f"{size[0]}x{size[1]}")
            else:
                report(False, f"{size[0]}x{size[1]}: logits {tuple(out.shape[-2:])}, not the input size")
        report(bool(accepted), f"sizes accepted: {', '.join(accepted) or 'none'}"
               + (f"; refused with ModelInputError: {', '.join(refused)}" if refused else ""))
    # 3. a CPU training step lowers the loss (fixed batch, Adam).
    try:
        size = min(((64, 64), native), key=lambda s: s[0] * s[1])
        model = vmbench.create_model(args.name, num_classes=1, in_chans=args.in_chans).train()
        x = torch.randn(2, args.in_chans, *size)
        y = (torch.rand(2, 1, *size) > 0.5).float()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        start, losses = time.perf_counter(), []
        for _ in range(STEPS):
            optimizer.zero_grad()
            loss = loss_fn(final_logits(model(x)), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        seconds = (time.perf_counter() - start) / STEPS
        report(losses[-1] < losses[0], f"training on CPU at {size[0]}x{size[1]}: loss {losses[0]:.4f} -> "
               f"{losses[-1]:.4f} in {STEPS} steps ({seconds:.2f} s/step)")
    except Exception as err:  # the model's own code: its failure is the finding
        report(False, f"training step: {_short(err)}")
    params = sum(p.numel() for p in models[1].parameters()) if 1 in models else 0
    print(f"{'contract kept' if not failures else f'{failures} check(s) failed'} ({params:,} parameters)")
    return 0 if not failures else 2
