"""Generated stand-ins for ISIC and Synapse: real (if easy) learning problems, same file layouts.

Both generators are deterministic: the same arguments give byte-identical files (JPEG/PNG through
Pillow, NIfTI gzipped with a zero timestamp). Each image or case draws from its own generator keyed
by (seed, index or case number), so a larger ``n`` adds samples without changing the first ones
(their ids and pixels; which split an image falls in depends on ``n``).

``synth_isic``     dermoscopy-like RGB images with one lesion (irregular border from radial Fourier
                   noise on a polar radius plus fine boundary noise, sometimes a satellite blob),
                   skin colour and texture, darker lesion with mottling, globules and a soft edge,
                   hair-like dark curves over lesion and skin, vignetting, sometimes the dark
                   corners of a dermoscope, noise; sizes 200-320 px per side. Masks 0/255 PNG of
                   the image's size. Written in the ISIC challenge layout (2017 or 2018 names,
                   Training/Validation/Test = 70/10/20, with the superpixel, CSV, ATTRIBUTION and
                   LICENSE distractors of the real archives) or the VM-UNet prepared layout (7:3).
``synth_synapse``  abdominal-CT-like volumes in Hounsfield units, raw BTCV style
                   (``img0005.nii.gz`` / ``label0005.nii.gz`` with the official case ids): a body
                   ellipse with fat, muscle wall, spine and unlabelled bowel loops, and BTCV organ
                   ids 1, 2, 3, 4, 6, 7, 8, 11 (the 8 kept organs) plus 5, 9, 12 (esophagus, IVC,
                   right adrenal: dropped by the remap) at plausible relative positions and z
                   ranges (so some slices lack some organs), with texture, deformed shapes and
                   noise. The affine carries a voxel spacing. ``prepare_synapse`` turns them into
                   the TransUNet layout.

The generators live in :mod:`vmbench.data.generated_isic` and :mod:`vmbench.data.generated_synapse`; this
module registers the two datasets. ``synthetic_isic_root`` / ``synthetic_synapse_root`` generate into the cache folder
(``$VMBENCH_CACHE`` or ``~/.cache/vmbench``), in a subfolder keyed by generator version, size and
seed, on first use; generation happens in a temporary folder renamed when complete.
"""

from __future__ import annotations

from typing import Sequence

from vmbench.data.isic import ISIC_DATASET_INFO, build_isic
from vmbench.data.synapse import SYNAPSE_DATASET_INFO, build_synapse
from vmbench.data.generated_isic import synth_isic, synthetic_isic_root
from vmbench.data.generated_synapse import synth_synapse, synthetic_synapse_root
from vmbench.registry import register_dataset

__all__ = [
    "synth_isic",
    "synth_synapse",
    "synthetic_isic_root",
    "synthetic_synapse_root",
]




@register_dataset(
    "synthetic-isic",
    **ISIC_DATASET_INFO,
    description=(
        "Generated dermoscopy-like lesions in the ISIC2018 challenge layout (root=None generates "
        "into the vmbench cache); same loader, splits and protocols as isic2018."
    ),
)
def synthetic_isic(
    root=None,
    split="train",
    protocol="holdout",
    img_size=(256, 256),
    augment=None,
    seed=0,
    *,
    n: int = 200,
    data_seed: int = 0,
    layout: str = "challenge",
    year: int = 2018,
    **kwargs,
):
    if root is None:
        root = synthetic_isic_root(n=n, seed=data_seed, layout=layout, year=year)
    return build_isic(root, split, protocol, img_size, augment, seed, year=year, name="synthetic-isic", **kwargs)


@register_dataset(
    "synthetic-synapse",
    **SYNAPSE_DATASET_INFO,
    description=(
        "Generated abdominal-CT-like volumes with the official Synapse case ids, prepared into the "
        "TransUNet layout (root=None generates into the vmbench cache); organ ids follow mapping (B) "
        "by construction. Same loader, splits and protocols as synapse."
    ),
)
def synthetic_synapse(
    root=None,
    split="train",
    protocol="holdout",
    img_size=(224, 224),
    augment=None,
    seed=0,
    *,
    n_cases: int = 30,
    data_seed: int = 0,
    size: int = 128,
    slices: Sequence[int] = (16, 40),
    **kwargs,
):
    if root is None:
        root = synthetic_synapse_root(n_cases=n_cases, seed=data_seed, size=size, slices=tuple(slices))
    return build_synapse(root, split, protocol, img_size, augment, seed, name="synthetic-synapse", **kwargs)
