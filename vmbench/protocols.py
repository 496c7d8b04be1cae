"""The one vocabulary of evaluation protocols and metrics.

Every module that names a protocol (config, search spaces, data builders, the command line, the
leaderboard) or a metric (validation, selection, tables, units) reads it from here, and a
dataset's metric set follows from its registered evaluation kind (:class:`EvaluationKind`) and
class names (``DatasetInfo``).

Protocols (Ruan & Xiang 2024, VM-UNet ``engine.py``; Zhang et al. 2021, TransFuse ``test_isic.py``;
Chen et al. 2021, TransUNet ``utils.py`` ``test_single_volume``):

* ``holdout``: checkpoints are selected on a validation split disjoint from the test split;
* ``paper``: the published protocol of the dataset, leaks included (ISIC "P1": one pooled confusion
  matrix over all test pixels, selection on the test split; Synapse "P3": per-case 3-D DSC/HD95);
* ``cv``: k-fold cross-validation over the training pool (every image or case that is not in the
  test split), folds made as nnU-Net makes them (Isensee et al. 2021; MIC-DKFZ/nnUNet@0e495086
  ``nnunetv2/utilities/crossval_split.py``); each fold selects on its own validation part and every
  fold's model is scored on the untouched test split;
* ``paper-p2``: TransFuse's ISIC2017 protocol (per-image mean at 192x256 on the official 600-image
  test set). vmbench does not run it; published rows under it get a table of their own, since the
  three published protocols are not comparable with each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmbench.errors import ConfigError

__all__ = [
    "EVALUATIONS",
    "CV",
    "HOLDOUT",
    "PAPER",
    "PAPER_P2",
    "MULTICLASS_2D",
    "POOLED_2D",
    "PROTOCOLS",
    "RUN_PROTOCOLS",
    "VOLUME",
    "EvaluationKind",
    "Protocol",
    "check_protocol",
    "default_select_mode",
    "evaluation_kind",
    "metric_column",
    "metric_label",
    "metric_unit",
    "selectable_metrics",
]


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    runnable: bool  # vmbench trains and evaluates under it (else only published rows carry it)


HOLDOUT, PAPER, CV, PAPER_P2 = "holdout", "paper", "cv", "paper-p2"

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(HOLDOUT, "checkpoint selected on a validation split disjoint from test", True),
        Protocol(
            PAPER,
            "the papers' protocol (ISIC P1 pooled confusion matrix / Synapse P3), papers' selection rule",
            True,
        ),
        Protocol(
            CV,
            "k-fold cross-validation on the training pool (nnU-Net folds); every fold's model scored on the test split",
            True,
        ),
        Protocol(
            PAPER_P2,
            "TransFuse's ISIC protocol P2: per-image mean over the official 600-image ISIC2017 test set at 192x256",
            False,
        ),
    )
}
# The protocols a run can be configured with (config, search spaces, ``--protocol`` options).
RUN_PROTOCOLS: tuple[str, ...] = tuple(name for name, p in PROTOCOLS.items() if p.runnable)


def check_protocol(name: object, where: str) -> str:
    """``name`` if vmbench can run it, else a :class:`ConfigError` naming ``where``."""
    if name not in RUN_PROTOCOLS:
        raise ConfigError(f"{where}: protocol {name!r} is not one of {', '.join(RUN_PROTOCOLS)}")
    return str(name)


# ------------------------------------------------------------------------------------------------
# Evaluation kinds: what a dataset's validation and test report

POOLED_2D, VOLUME = "pooled2d", "volume"
MULTICLASS_2D = "multiclass2d"  # 2D images with several classes (user datasets): per-image mean Dice per class


@dataclass(frozen=True)
class EvaluationKind:
    """What runs on a dataset of this kind report.

    ``val_metrics`` are logged as ``val_<name>`` every validation; ``test_metrics`` as
    ``test_<name>`` by final runs (per-class keys ``dsc_<class>``/``hd95_<class>`` come on top for
    multi-class datasets); ``table_metrics`` are the leaderboard's default columns, in order, and
    ``headline`` what the command line prints after training or evaluation.
    """

    name: str
    val_metrics: tuple[str, ...]
    test_metrics: tuple[str, ...]
    table_metrics: tuple[str, ...]
    headline: tuple[str, ...]
    per_class: bool  # per-class dsc_<class> (and hd95_<class>) columns


EVALUATIONS: dict[str, EvaluationKind] = {
    POOLED_2D: EvaluationKind(
        POOLED_2D,
        val_metrics=("loss", "dsc", "miou", "acc", "sen", "spe", "per_image_dice", "per_image_iou"),
        test_metrics=("miou", "dsc", "acc", "spe", "sen", "per_image_dice", "per_image_iou", "per_image_acc",
                      "jaccard", "threshold_jaccard"),
        table_metrics=("miou", "dsc", "acc", "spe", "sen", "per_image_dice"),
        headline=("dsc", "miou", "acc", "spe", "sen", "per_image_dice"),
        per_class=False,
    ),
    # Volumes skip HD95 during training (minutes per pass) and have no validation loss (slices are
    # predicted one by one at the test's resolution).
    VOLUME: EvaluationKind(
        VOLUME,
        val_metrics=("dsc", "dsc_strict"),
        test_metrics=("dsc", "hd95", "dsc_strict", "hd95_strict"),
        table_metrics=("dsc", "hd95", "dsc_strict", "hd95_strict"),
        headline=("dsc", "hd95", "dsc_strict", "hd95_strict"),
        per_class=True,
    ),
    # Multi-class 2D images: Dice per image and class, averaged over the images where the class is in
    # the truth or the prediction (an image with neither says nothing about that class), then over
    # classes (nnU-Net's foreground mean); no HD95 on 2D images.
    MULTICLASS_2D: EvaluationKind(
        MULTICLASS_2D,
        val_metrics=("loss", "dsc"),
        test_metrics=("dsc",),
        table_metrics=("dsc",),
        headline=("dsc",),
        per_class=True,
    ),
}


def evaluation_kind(name: str) -> EvaluationKind:
    try:
        return EVALUATIONS[name]
    except KeyError:
        raise ConfigError(f"evaluation kind {name!r} is not one of {', '.join(EVALUATIONS)}") from None


def selectable_metrics(evaluation: str, has_val: bool) -> tuple[str, ...]:
    """The metric names a training run reports (selection and search metrics must be one of them)."""
    names = evaluation_kind(evaluation).val_metrics
    return ("train_loss",) + (tuple(f"val_{n}" for n in names) if has_val else ())


def default_select_mode(metric: str) -> str:
    """'min' for losses and distances, 'max' for overlaps."""
    return "min" if metric.endswith("loss") or "hd95" in metric else "max"


# ------------------------------------------------------------------------------------------------
# Units and labels. MLflow stores fractions in [0, 1] and HD95 in voxels; tables show percent.

_LABELS = {
    "miou": "mIoU",
    "dsc": "DSC",
    "acc": "Acc",
    "spe": "Spe",
    "sen": "Sen",
    "per_image_dice": "DSC/img",
    "per_image_iou": "IoU/img",
    "per_image_acc": "Acc/img",
    "jaccard": "ISIC J",  # the ISIC Challenge's per-image Jaccard, macro-averaged
    "threshold_jaccard": "ISIC J>=.65",  # ISIC 2018 Task 1's ranking metric
    "hd95": "HD95",
    "dsc_strict": "DSC strict",
    "hd95_strict": "HD95 strict",
}
# Short column labels of the Synapse organs (the published tables' column order and names).
CLASS_LABELS = {
    "aorta": "Aorta",
    "gallbladder": "Gallbl.",
    "kidney_l": "Kid L",
    "kidney_r": "Kid R",
    "liver": "Liver",
    "pancreas": "Pancr.",
    "spleen": "Spleen",
    "stomach": "Stom.",
}
_FRACTIONS = set(EVALUATIONS[POOLED_2D].test_metrics) | {"dsc", "dsc_strict"}


def metric_unit(key: str) -> str:
    """'vox' for HD95 (voxels), 'pct' for fraction metrics shown in percent, '' for others."""
    if key.startswith("hd95"):
        return "vox"
    if key in _FRACTIONS or key.startswith(("dsc_", "per_image_", "iou", "miou")):
        return "pct"
    return ""


def metric_column(key: str) -> str:
    """Column prefix of a metric in the leaderboard frame: ``dsc`` -> ``dsc_pct``."""
    unit = metric_unit(key)
    return f"{key}_{unit}" if unit else key


def metric_label(key: str) -> str:
    if key in _LABELS:
        base = _LABELS[key]
    elif key.startswith("dsc_") and key[4:] in CLASS_LABELS:
        base = CLASS_LABELS[key[4:]]
    elif key.startswith("hd95_") and key[5:] in CLASS_LABELS:
        base = "HD95 " + CLASS_LABELS[key[5:]]
    else:
        base = key
    unit = {"pct": "%", "vox": "vox"}.get(metric_unit(key), "")
    return f"{base} {unit}".strip()
