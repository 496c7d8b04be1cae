"""Reading batches: one-line data errors from loader workers, targets, progress bars."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch.utils.data import DataLoader

from vmbench.errors import DataError

__all__ = ["iterate", "progress_bar", "target_tensor"]


def _reraise_data_error(err: Exception) -> None:
    """DataLoader workers re-raise with a multi-line wrapper: keep the original one-line message."""
    text = str(err)
    marker = "DataError: "
    if marker in text:
        raise DataError(text.rsplit(marker, 1)[1].strip()) from None
    raise err


def iterate(loader: DataLoader) -> Iterable[dict[str, Any]]:
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except DataError as err:
            _reraise_data_error(err)
        yield batch


def target_tensor(batch: dict[str, Any], task: str, device: torch.device) -> torch.Tensor:
    mask = batch["mask"].to(device, non_blocking=True)
    return mask.float() if task == "binary" else mask.long()


def progress_bar(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
