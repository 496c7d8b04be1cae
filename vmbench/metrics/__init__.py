"""Evaluation metrics of the published protocols: ISIC pooled (P1) and per image (P2), Synapse 3-D (P3).

:mod:`vmbench.metrics.isic` and :mod:`vmbench.metrics.synapse` say where each definition comes
from. Inputs may be numpy arrays or torch tensors (any device).
"""

from vmbench.metrics.isic import ISIC_JACCARD_THRESHOLD, PooledConfusion, isic_challenge_per_image, isic_per_image, isic_pooled
from vmbench.metrics.synapse import (
    SynapseCaseResult,
    SynapseSummary,
    binary_dc,
    binary_hd95,
    max_surface_distance,
    summarize_synapse,
    surface_distances,
    synapse_case_metrics,
)

__all__ = [
    "isic_pooled",
    "ISIC_JACCARD_THRESHOLD",
    "PooledConfusion",
    "isic_challenge_per_image",
    "isic_per_image",
    "binary_dc",
    "binary_hd95",
    "surface_distances",
    "max_surface_distance",
    "synapse_case_metrics",
    "SynapseCaseResult",
    "summarize_synapse",
    "SynapseSummary",
]
