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
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from vmbench.errors import UnknownNameError
from vmbench.protocols import HOLDOUT, PAPER, EvaluationKind, evaluation_kind

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
        per_class = tuple(f"{m}_{c}" for m in ("dsc", "hd95") for c in self.foreground_classes)
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
                 key: Callable[[str], str] | None = None):
        self.kind = kind
        self._entry_point_group = entry_point_group
        self._builtin_modules = builtin_modules
        self._key = key
        self._entries: dict[str, Any] = {}
        self._loaded = False
        self._lock = threading.RLock()

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
                    try:
                        ep.load()
                    except Exception as err:  # a broken plug-in must say which one it is
                        raise ImportError(
                            f"{self.kind} plug-in {ep.name!r} ({ep.value}) from entry-point group "
                            f"{self._entry_point_group!r} failed to import: {err}"
                        ) from err

    def get(self, name: str) -> Any:
        self._ensure_loaded()
        key = self._spelt(name)
        try:
            return self._entries[key]
        except KeyError:
            close = difflib.get_close_matches(key, self._entries, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            known = ", ".join(sorted(self._entries))
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {known})") from None

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return self._spelt(name) in self._entries


MODELS = Registry("model", "vmbench.models", ("vmbench.models",))


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
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a model constructor ``f(num_classes, in_chans, **overrides)``.

    ``load_pretrained(model, path) -> report``: the family's loader of its pretrained weights from a
    local path (the report's ``str`` is what gets logged); leave it None when there are none. Say
    in ``description`` what the path must name.
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
            ),
        )
        return factory

    return decorator


def create_model(name: str, num_classes: int = 1, in_chans: int = 3, **overrides: Any):
    """Build a registered model; ``overrides`` go to the constructor (e.g. ``drop_path_rate``).

    Reads no file: pretrained weights load through ``model_info(name).load_pretrained``.
    """
    info: ModelInfo = MODELS.get(name)
    return info.factory(num_classes=num_classes, in_chans=in_chans, **overrides)


def list_models() -> list[str]:
    return MODELS.names()


def model_info(name: str) -> ModelInfo:
    return MODELS.get(name)


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
    """

    evaluation_kind(evaluation)  # an unknown kind fails at registration, not at the first table

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
