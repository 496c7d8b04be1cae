"""Model and dataset registries.

A model family registers its constructors with a decorator (as timm does)::

    @register_model("vmunet", family="vmunet", paper="...", input_size=(256, 256),
                    load_pretrained=load_pretrained_vmamba)
    def vmunet(num_classes=1, in_chans=3, **overrides): ...

Building a model never reads a file; a family's published pretrained weights load afterwards
through ``model_info(name).load_pretrained(model, path)`` (timm's pretrained filter-function idea:
the family knows how its checkpoint maps onto the model), which ``model.pretrained`` feeds.

Other installed packages add models through the ``vmbench.models`` entry-point group
(``baselines`` registers itself that way); they are imported the first time a registry is read.

Ablation twins: a model registered with ``mamba_parts=True`` also answers to ``<name>~no-ssm`` (the
selective scan replaced by its skip path D*u) and ``<name>~no-mamba`` (each Mamba/SS2D mixer the
identity, the residual paths kept: the "No-Mamba" control of Isensee et al., nnU-Net Revisited,
MICCAI 2024, arXiv 2404.09556). The twin is the model built as usual (same init, keys, recipe)
with :func:`ablate` applied: every module whose ``ABLATIONS`` names the ablation gets it as its
``ablation`` attribute and says through ``silenced_parameters()`` which of its weights stop acting.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import importlib.metadata
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from vmbench.ablation import ABLATIONS, ablate, split_model_name, twin_name
from vmbench.errors import UnknownAblationError, UnknownNameError
from vmbench.protocols import HOLDOUT, PAPER, EvaluationKind, evaluation_kind

_log = logging.getLogger("vmbench.registry")

__all__ = [
    "DATASETS",
    "MODELS",
    "DatasetInfo",
    "ModelInfo",
    "PublishedResult",
    "Registry",
    "UnknownNameError",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
    "register_dataset",
    "list_datasets",
    "dataset_info",
    "declare_dataset",
    "set_dataset_declarer",
]


@dataclass(frozen=True)
class PublishedResult:
    """One published row the leaderboard shows next to measured runs."""

    dataset: str
    metrics: dict[str, float]
    source: str
    protocol: str = "paper"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    factory: Callable[..., Any]
    family: str
    paper: str
    input_size: tuple[int, int]
    description: str = ""
    published: tuple[PublishedResult, ...] = ()
    recipe: dict[str, Any] = field(default_factory=dict)
    # ``load_pretrained(model, path) -> report``: the family's loader of its published pretrained
    # weights from a local file (timm's pretrained filter-function idea); None: no such weights.
    load_pretrained: Callable[[Any, str], Any] | None = None
    mamba_parts: bool = False  # has Mamba/SS2D mixers: the ablation twins <name>~<ablation> exist
    ablation: str | None = None  # set on a twin's info: what it removes (see ABLATIONS)


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: what a trial needs to know before loading it.

    ``builder(root, split, protocol, img_size, augment, seed)`` returns a torch Dataset; for
    ``evaluation == "volume"`` datasets the test split yields whole volumes.
    """

    name: str
    builder: Callable[..., Any]
    task: str  # "binary" or "multiclass"
    num_classes: int  # model output channels (1 for binary)
    in_chans: int
    img_size: tuple[int, int]
    evaluation: str  # "pooled2d" (ISIC) or "volume" (Synapse)
    class_names: tuple[str, ...] = ()
    description: str = ""
    default_root: str | None = None
    protocols: tuple[str, ...] = (HOLDOUT, PAPER)  # cv only where the builder takes fold/folds
    # The ``data.options`` keys the builder accepts (worked out at registration: its keyword
    # parameters plus what it declares it forwards through ``**kwargs``).
    options: tuple[str, ...] = ()

    @property
    def kind(self) -> EvaluationKind:
        """What validation and test report on this dataset (:mod:`vmbench.protocols`)."""
        return evaluation_kind(self.evaluation)

    @property
    def foreground_classes(self) -> tuple[str, ...]:
        """Class names that get per-class metrics (all but the background of a multi-class task)."""
        return tuple(self.class_names[1:]) if self.kind.per_class else ()

    def test_metrics(self) -> tuple[str, ...]:
        """Every ``test_<key>`` a final run on this dataset logs (per-class keys included)."""
        measures = [m for m in ("dsc", "hd95") if m in self.kind.test_metrics]  # 2D kinds have no HD95
        per_class = tuple(f"{m}_{c}" for m in measures for c in self.foreground_classes)
        return self.kind.test_metrics + per_class

    def table_metrics(self) -> tuple[str, ...]:
        """The leaderboard's default columns: headline metrics, per-class DSC, then strict variants."""
        keys = [k for k in self.kind.table_metrics if not k.endswith("_strict")]
        keys += [f"dsc_{c}" for c in self.foreground_classes]
        return tuple(keys + [k for k in self.kind.table_metrics if k.endswith("_strict")])


class Registry:
    """A name -> entry table with plug-in loading and helpful unknown-name errors.

    ``key`` spells a name as the table stores it (losses: case-insensitive, ``-`` as ``_``);
    registration, look-up and close matches all go through it. None: names are taken as given.
    """

    def __init__(self, kind: str, entry_point_group: str | None, builtin_modules: tuple[str, ...],
                 key: Callable[[str], str] | None = None, resolver: Callable[[str], bool] | None = None):
        self.kind = kind
        self._entry_point_group = entry_point_group
        self._builtin_modules = builtin_modules
        self._key = key
        # ``resolver(name) -> bool``: registers a name not in the table (``package.module:factory``).
        self._resolver = resolver
        self._entries: dict[str, Any] = {}
        self._loaded = False
        self._lock = threading.RLock()
        self.broken: dict[str, str] = {}  # plug-in entry point -> why it did not load

    def _spelt(self, name: str) -> str:
        return self._key(name) if self._key else name

    def add(self, name: str, entry: Any) -> None:
        name = self._spelt(name)
        with self._lock:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # set first: plug-ins import vmbench, which may read the registry
            for module in self._builtin_modules:
                importlib.import_module(module)
            if self._entry_point_group:
                for ep in importlib.metadata.entry_points(group=self._entry_point_group):
                    self._load_plugin(ep)

    def _load_plugin(self, ep: Any) -> None:
        """Import one plug-in. A broken one is one warning line naming it, and the commands that do
        not use it keep working (a third-party bug must not stop ``train --model unet``)."""
        try:
            ep.load()
        except Exception as err:  # any error of foreign code: named, not propagated
            why = " ".join(f"{type(err).__name__}: {err}".split())
            self.broken[ep.name] = why
            _log.warning("vmbench: %s plug-in %r (%s, entry-point group %s) was skipped: %s",
                         self.kind, ep.name, ep.value, self._entry_point_group, why)

    def get(self, name: str) -> Any:
        self._ensure_loaded()
        key = self._spelt(name)
        if key not in self._entries and self._resolver is not None and self._resolver(name):
            key = self._spelt(name)
        try:
            return self._entries[key]
        except KeyError:
            close = difflib.get_close_matches(key, self._entries, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            known = ", ".join(sorted(self._entries))
            broken = f"; plug-ins that failed to load: {', '.join(sorted(self.broken))}" if self.broken else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {known}){broken}") from None

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return self._spelt(name) in self._entries


def import_factory(name: str) -> bool:
    """Register ``package.module:factory`` (a model factory imported without packaging it) under that
    name; False for a name of another form. The module is looked up on ``sys.path``, then in the
    working directory. A failure is one :class:`UnknownNameError` line naming the module."""
    import sys

    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        return False
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name.split(".")[0] or "" in sys.path:
                raise
            sys.path.append("")  # the working directory, where a user's own module usually sits
            module = importlib.import_module(module_name)
    except Exception as err:  # foreign code: its error becomes one line naming it
        raise UnknownNameError(f"model {name!r}: cannot import {module_name} ({type(err).__name__}: {err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UnknownNameError(f"model {name!r}: {module_name} has no callable {attr!r}")
    size = getattr(factory, "input_size", (256, 256))
    register_model(name, family="external", paper=f"{module_name}.{attr}", input_size=tuple(size),
                   description=f"imported from {module_name}")(factory)
    return True


MODELS = Registry("model", "vmbench.models", ("vmbench.models",), resolver=import_factory)

def register_model(
    name: str,
    *,
    family: str,
    paper: str,
    input_size: tuple[int, int],
    description: str = "",
    published: tuple[PublishedResult, ...] = (),
    recipe: dict[str, Any] | None = None,
    load_pretrained: Callable[[Any, str], Any] | None = None,
    mamba_parts: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a model constructor ``f(num_classes, in_chans, **overrides)``.

    ``load_pretrained(model, path) -> report``: the family's loader of its pretrained weights from a
    local path (the report's ``str`` is what gets logged); leave it None when there are none. Say
    in ``description`` what the path must name. ``mamba_parts``: the model's mixers take
    :data:`ABLATIONS` (see :func:`ablate`), so its ablation twins exist.
    """
    if load_pretrained is not None and not callable(load_pretrained):
        got = type(load_pretrained).__name__
        raise TypeError(f"register_model({name!r}): load_pretrained must be callable, got {got}")

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        MODELS.add(
            name,
            ModelInfo(
                name=name,
                factory=factory,
                family=family,
                paper=paper,
                input_size=tuple(input_size),
                description=description,
                published=tuple(published),
                recipe=dict(recipe or {}),
                load_pretrained=load_pretrained,
                mamba_parts=bool(mamba_parts),
            ),
        )
        return factory

    return decorator


def create_model(name: str, num_classes: int = 1, in_chans: int = 3, **overrides: Any):
    """Build a registered model; ``overrides`` go to the constructor (e.g. ``drop_path_rate``).

    Reads no file: pretrained weights load through ``model_info(name).load_pretrained``. An
    ablation twin's name (``vmunet~no-ssm``) builds the model with that part removed.
    """
    info = model_info(name)
    return info.factory(num_classes=num_classes, in_chans=in_chans, **overrides)


def list_models(ablations: bool = False) -> list[str]:
    """Registered model names; ``ablations``: each Mamba model followed by its twins."""
    names = MODELS.names()
    if not ablations:
        return names
    return [twin for name in names
            for twin in (name, *(twin_name(name, a) for a in ABLATIONS if MODELS.get(name).mamba_parts))]


def model_info(name: str) -> ModelInfo:
    """The registered model's info; a twin's is its model's with the twin's name, its ``ablation``,
    a factory that ablates, and no published rows (no paper reported the twin)."""
    base, ablation = split_model_name(name)
    info: ModelInfo = MODELS.get(base)
    if ablation is None:
        return info
    if not info.mamba_parts:
        twins = ", ".join(n for n in MODELS.names() if MODELS.get(n).mamba_parts)
        raise UnknownAblationError(f"model {base!r} has no Mamba part, so {name!r} has nothing to remove "
                                   f"(ablation twins exist for: {twins})")
    return dataclasses.replace(
        info, name=name, factory=_twin_factory(info.factory, ablation, base), ablation=ablation, published=(),
        description=f"{base} ablation twin: {ABLATIONS[ablation]}",
    )


def _twin_factory(factory: Callable[..., Any], ablation: str, base: str) -> Callable[..., Any]:
    @functools.wraps(factory)  # keeps the signature the engine inspects (img_size)
    def build(*args: Any, **kwargs: Any) -> Any:
        return ablate(factory(*args, **kwargs), ablation, base)

    return build


DATASETS = Registry("dataset", "vmbench.datasets", ("vmbench.data",))


def register_dataset(
    name: str,
    *,
    task: str,
    num_classes: int,
    in_chans: int,
    img_size: tuple[int, int],
    evaluation: str,
    class_names: tuple[str, ...] = (),
    description: str = "",
    default_root: str | None = None,
    protocols: tuple[str, ...] = (HOLDOUT, PAPER),
    forwarded_options: tuple[str, ...] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a dataset builder ``f(root, split, protocol, img_size, augment, seed, **options)``.

    The builder's keyword parameters after those six are its ``data.options`` (``fold`` and
    ``folds`` excepted: the engine passes them under protocol cv). A builder that takes
    ``**kwargs`` names the options it forwards with ``forwarded_options``; one that does not is
    refused here, so a misspelt option is one clear error at the first use, not a TypeError.

    Plug-in interface (packages adding datasets through the ``vmbench.datasets`` entry-point
    group: ``[project.entry-points."vmbench.datasets"] mydata = "mypkg.data"``, a module that
    calls this decorator on import): ``task`` "binary" (``num_classes`` 1) or "multiclass"
    (``num_classes`` = classes with the background, ``class_names`` one per class);
    ``evaluation`` a kind of :mod:`vmbench.protocols` ("pooled2d" binary 2D, "multiclass2d",
    "volume"); the builder returns a ``torch.utils.data.Dataset`` with attributes ``name`` (the
    registered name), ``split``, ``protocol``, ``is_volume``, ``val_is_test``, ``img_size``,
    ``set_epoch(epoch)`` (2D) and items ``{"image": float32 (C, H, W), "mask": float32 (1, H, W)
    binary or int64 (H, W) class ids, "id": str}``; 2D datasets may add ``native_mask(i)`` and
    ``native_size(i)`` (the mask at the file's own size). These are checked here and when a split
    is built (:func:`vmbench.data.build_dataset`), each failure one line naming the dataset.
    """

    evaluation_kind(evaluation)  # an unknown kind fails at registration, not at the first table
    _check_dataset_fields(name, task, num_classes, in_chans, img_size, class_names, protocols)

    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        options = dataset_options(name, builder, forwarded_options)
        DATASETS.add(
            name,
            DatasetInfo(
                name=name,
                builder=builder,
                task=task,
                num_classes=num_classes,
                in_chans=in_chans,
                img_size=tuple(img_size),
                evaluation=evaluation,
                class_names=tuple(class_names),
                description=description,
                default_root=default_root,
                protocols=tuple(protocols),
                options=options,
            ),
        )
        return builder

    return decorator


def _check_dataset_fields(name: str, task: str, num_classes: Any, in_chans: Any, img_size: Any,
                          class_names: Any, protocols: Any) -> None:
    """The plug-in contract of :func:`register_dataset`, checked before anything is registered."""
    def bad(what: str) -> TypeError:
        return TypeError(f"register_dataset({name!r}): {what}")

    if not isinstance(name, str) or not name:
        raise TypeError(f"register_dataset: the name must be a non-empty string, got {name!r}")
    if task not in ("binary", "multiclass"):
        raise bad(f"task must be 'binary' or 'multiclass', got {task!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise bad(f"num_classes must be a positive int, got {num_classes!r}")
    if task == "binary" and num_classes != 1:
        raise bad(f"a binary task has one output channel (num_classes=1), got {num_classes}")
    if task == "multiclass" and num_classes < 2:
        raise bad("a multiclass task needs num_classes >= 2 (the background included)")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise bad(f"in_chans must be a positive int, got {in_chans!r}")
    try:
        ok = len(img_size) == 2 and all(isinstance(v, int) and v > 0 for v in img_size)
    except TypeError:
        ok = False
    if not ok:
        raise bad(f"img_size must be a (height, width) pair of positive ints, got {img_size!r}")
    if task == "multiclass" and class_names and len(class_names) != num_classes:
        raise bad(f"{len(class_names)} class_names for {num_classes} classes (name the background too)")
    from vmbench.protocols import check_protocol

    for protocol in protocols:
        check_protocol(protocol, f"register_dataset({name!r}) protocols")


# Datasets declared in a configuration (``data.options.format``): registered when the configuration
# is built, in every process, by the handler vmbench.data.user installs.
_declarer: Callable[[str, Any, dict[str, Any]], Any] | None = None


def set_dataset_declarer(handler: Callable[[str, Any, dict[str, Any]], Any]) -> None:
    """Install ``handler(name, root, options) -> DatasetInfo`` (vmbench.data.user does)."""
    global _declarer
    _declarer = handler


def declare_dataset(name: str, root: Any, options: dict[str, Any]) -> "DatasetInfo":
    """Register the dataset a configuration declares (``data.name``, ``data.root``,
    ``data.options.format``/``labels``); the same declaration again is a no-op."""
    DATASETS._ensure_loaded()  # imports vmbench.data, which installs the handler
    if _declarer is None:
        raise RuntimeError("no dataset declarer installed (vmbench.data.user was not imported)")
    return _declarer(name, root, options)


# The builder's positional parameters, and those the engine sets from the configuration.
_BUILDER_ARGUMENTS = ("root", "split", "protocol", "img_size", "augment", "seed", "fold", "folds")


def dataset_options(name: str, builder: Callable[..., Any], forwarded: tuple[str, ...] | None) -> tuple[str, ...]:
    """The ``data.options`` keys of a dataset builder (see :func:`register_dataset`)."""
    import inspect

    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError) as err:
        raise TypeError(f"dataset {name!r}: its builder {builder!r} has no readable signature ({err})") from None
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    if takes_kwargs and forwarded is None:
        raise TypeError(f"dataset {name!r}: its builder takes **kwargs; declare the options it forwards "
                        "with register_dataset(..., forwarded_options=(...))")
    own = [p.name for p in params if p.name not in _BUILDER_ARGUMENTS
           and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    return tuple(dict.fromkeys([*own, *(forwarded or ())]))


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS.get(name)
