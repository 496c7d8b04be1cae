"""The one way vmbench imports albumentations.

Kept in a module of its own so that :mod:`vmbench.data.transforms` and
:mod:`vmbench.data.nnunet_augment` both import it, and the presets module need not import the
transforms module that uses it (an import circle before).
"""

from __future__ import annotations

import os

__all__ = ["albumentations"]


def albumentations():
    """The albumentations module, imported with its update check off: albumentations asks PyPI for
    a newer version on import unless told not to, which a training run (or a node without network
    access) must not do."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    return A
