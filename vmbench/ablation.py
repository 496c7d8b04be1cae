"""Ablation twins: a model with one part removed, built by the registry from ``MODEL~ABLATION``.

``no-ssm`` replaces the selective scan by its skip path; ``no-mamba`` replaces every Mamba/SS2D mixer
by the identity (nnU-Net Revisited's No-Mamba control, Isensee et al., MICCAI 2024,
arXiv:2404.09556). The mixers declare which ablations they take (``ABLATIONS``) and which of their
parameters stop acting (``silenced_parameters``); this module names the ablations, parses twin names
and switches a built model.
"""

from __future__ import annotations

from typing import Any

from vmbench.errors import UnknownAblationError

__all__ = ["ABLATIONS", "ABLATION_SEP", "NO_MAMBA", "NO_SSM", "ablate", "silenced_parameter_count",
           "split_model_name", "twin_name"]

# Ablation twins: "<model>~<ablation>". "~" cannot appear in MLflow metric names: a sweep's study
# key spells it "." (vmbench.search_space.Study.key).
ABLATION_SEP = "~"
NO_SSM, NO_MAMBA = "no-ssm", "no-mamba"
ABLATIONS = {
    NO_SSM: "selective scan replaced by its skip path D*u (x_proj, dt_proj and A_log no longer act); "
            "projections, depthwise conv and gating kept",
    NO_MAMBA: "every Mamba/SS2D mixer replaced by identity, residual paths kept "
              "(nnU-Net Revisited's No-Mamba control)",
}


def split_model_name(name: str) -> tuple[str, str | None]:
    """``"vmunet~no-ssm"`` -> ``("vmunet", "no-ssm")``; a plain name -> ``(name, None)``."""
    base, sep, ablation = name.partition(ABLATION_SEP)
    if not sep:
        return name, None
    if ablation not in ABLATIONS:
        raise UnknownAblationError(f"model {name!r}: unknown ablation {ablation!r} after {ABLATION_SEP!r} "
                                   f"(known: {', '.join(ABLATIONS)})")
    return base, ablation


def twin_name(name: str, ablation: str) -> str:
    return f"{name}{ABLATION_SEP}{ablation}"


def ablate(model: Any, ablation: str, name: str = "the model") -> Any:
    """Switch ``ablation`` on in every module of ``model`` that takes it (``ablation in
    module.ABLATIONS``); returns ``model``. Weights, keys and init are untouched."""
    parts = [m for m in model.modules() if ablation in getattr(m, "ABLATIONS", ())]
    if not parts:  # a registration bug (mamba_parts=True on a model without such modules)
        raise RuntimeError(f"{name}: no module takes the ablation {ablation!r}")
    for module in parts:
        module.ablation = ablation
    return model


def silenced_parameter_count(model: Any) -> int:
    """Parameter entries of ``model`` that its ablation stopped from acting (0 for a full model)."""
    seen = {id(p): p.numel() for m in model.modules() for p in getattr(m, "silenced_parameters", list)()}
    return sum(seen.values())
