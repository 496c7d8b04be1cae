"""What each study's model can take, checked before a sweep starts (and by ``--dry-run``).

A fixed ``data.img_size`` the model cannot take would fail every trial one by one on the cluster;
each size the sweep can use (the fixed one, and every value a ``space`` entry of ``data.img_size``
offers) is checked here with the model's own input rules (:func:`vmbench.models.inputs.check_input_size`),
on a model built on the meta device: nothing is allocated or computed.
"""

from __future__ import annotations

from typing import Any

from vmbench.config import config_error
from vmbench.search_space.params import SpaceParam

__all__ = ["SEED_MAX", "check_config_input", "check_searched_values", "check_seed", "check_study_inputs"]

SEED_MAX = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer

IMG_SIZE = "data.img_size"
_MAX_SIZES = 64  # an int range of sizes is checked value by value up to this many, else at its ends
_MAX_VALUES = 256  # a searched int range: checked at up to this many points, both ends and evenly inside
_MAX_MODEL_VALUES = 16  # a searched model.overrides value builds a (meta) model per point: fewer


def _sizes(spec, study) -> list[tuple[Any, str]]:
    """(size, the key it comes from) for every size the study's trials can be given."""
    for param in study.space:
        if param.key == IMG_SIZE:
            own = any(p.key == IMG_SIZE for p in spec.per_model.get(study.model, {}).get("space", []))
            where = f"per_model.{study.model}.space.{IMG_SIZE}" if own else f"space.{IMG_SIZE}"
            return [(value, where) for value in _values(param)]
    return [(study.base.data.img_size, f"fixed {IMG_SIZE}")]


def _values(param: SpaceParam) -> list[Any]:
    if param.type == "choice":
        return list(param.values)
    if param.type == "int":
        grid = range(int(param.low), int(param.high) + 1, int(param.step or 1))
        return list(grid) if len(grid) <= _MAX_SIZES else [grid[0], grid[-1]]
    return [param.low, param.high]  # a float range: the config check has refused it already


def check_config_input(cfg, source: str, where: str = IMG_SIZE) -> None:
    """A one-line ConfigError (``SOURCE: WHERE: ...``) when ``cfg``'s model cannot take its input size,
    or its constructor refuses one of ``model.overrides``; the model is built on the meta device."""
    import torch

    import vmbench
    from vmbench.engine.builders import build_model, image_size
    from vmbench.errors import ModelInputError
    from vmbench.models.inputs import check_input_size

    info = vmbench.dataset_info(cfg.data.name)
    hw = image_size(cfg, info)
    size = cfg.data.img_size
    shown = size if size is not None else f"{hw[0]}x{hw[1]} (the dataset's own)"
    try:
        with torch.device("meta"):
            model = build_model(cfg, info.num_classes, hw, load_pretrained=False)
        check_input_size(model.eval(), (2, 3, *hw))
    except ModelInputError as error:
        raise config_error(source, where, f"{shown} cannot be used with model {cfg.model.name!r}: {error}") from None
    except TypeError as error:  # the constructor's own refusal of an argument it does not have
        if "unexpected keyword argument" not in str(error):
            raise
        raise config_error(source, "model.overrides", f"model {cfg.model.name!r} does not take it ({error})") from None


def check_study_inputs(spec) -> None:
    """Every size each study can give its model (fixed or searched), checked by :func:`check_config_input`."""
    for study in spec.studies:
        for size, where in _sizes(spec, study):
            check_config_input(study.base.with_overrides({IMG_SIZE: size}, source=spec.source), spec.source, where)
    check_searched_values(spec)


def check_seed(value: Any, key: str, source: str) -> None:
    """A seed every generator takes: a whole number 0 .. 2**63-1 (one line naming the key otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise config_error(source, key, f"{value!r} is out of range: a seed is a whole number 0 .. 2**63-1")


def _points(param: SpaceParam, limit: int) -> list[Any]:
    """The values a trial can be given, or up to ``limit`` of them (ends included, evenly inside)."""
    if param.type == "choice":
        return list(param.values)
    if param.type == "int":
        grid = range(int(param.low), int(param.high) + 1, int(param.step or 1))
        if len(grid) <= limit:
            return list(grid)
        return sorted({grid[round(i * (len(grid) - 1) / (limit - 1))] for i in range(limit)})
    return [param.low, (param.low + param.high) / 2, param.high]


def check_searched_values(spec) -> None:
    """What every trial will be given, checked as the trial would (``--dry-run`` runs this too): the
    seeds (fixed, searched, final), each searched value as a configuration value, each searched
    ``model.overrides.*`` value by the model's constructor (meta device), each ``data.options.*`` key
    against the dataset's declared options."""
    import vmbench

    for i, seed in enumerate(spec.final.seeds):
        check_seed(seed, f"final.seeds[{i}]", spec.source)
    for study in spec.studies:
        check_seed(study.base.train.seed, "train.seed", f"{spec.source} (fixed)")
        for param in study.space:
            if param.key == IMG_SIZE:
                continue  # check_study_inputs: every size with the model's own rules
            where = f"space.{param.key}"
            model_key = param.key.startswith("model.overrides.")
            for value in _points(param, _MAX_MODEL_VALUES if model_key else _MAX_VALUES):
                source = f"{spec.source} ({where} = {value!r})"
                cfg = study.base.with_overrides({param.key: value}, source=source)
                if param.key == "train.seed":
                    check_seed(value, where, spec.source)
                elif model_key:
                    check_config_input(cfg, spec.source, where)
                elif param.key.startswith("data.options."):
                    option = param.key.split(".", 2)[2].split(".", 1)[0]
                    accepted = vmbench.dataset_info(cfg.data.name).options
                    if option not in accepted:
                        raise config_error(spec.source, where, f"{option!r} is not an option of dataset "
                                           f"{cfg.data.name!r} (accepted: {', '.join(accepted) or 'none'})")
