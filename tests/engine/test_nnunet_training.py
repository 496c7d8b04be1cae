"""nnU-Net's trainer settings (MIC-DKFZ/nnUNet@0e495086, nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py):
Nesterov SGD, poly schedule per epoch, fixed iterations per epoch drawn with replacement, the final
epoch's weights, z-score normalisation and the nnU-Net augmentation preset."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vmbench.config import ExperimentConfig
from vmbench.data import build_dataset, synth_isic
from vmbench.data.transforms import IsicTransform, item_rng, normalize_isic
from vmbench.engine import fit
from vmbench.engine.builders import build_loss, build_optimizer, build_scheduler, selection_rule
from vmbench.engine.training import epoch_loader, load_data
from vmbench.errors import ConfigError

NNUNET_TRAINER = {
    "optim": {"name": "sgd", "lr": 1e-2, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
    "scheduler": {"name": "poly", "power": 0.9, "step": "epoch"},
}


def test_nesterov_sgd_reaches_torch():
    cfg = ExperimentConfig.from_dict(NNUNET_TRAINER)
    optimizer = build_optimizer(cfg, torch.nn.Linear(3, 2))
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["nesterov"], group["momentum"], group["weight_decay"], group["lr"]) == (True, 0.99, 3e-5, 1e-2)
    plain = build_optimizer(ExperimentConfig.from_dict({"optim": {"name": "sgd"}}), torch.nn.Linear(3, 2))
    assert plain.param_groups[0]["nesterov"] is False


def test_poly_per_epoch_follows_nnunet_formula():
    epochs = 7
    cfg = ExperimentConfig.from_dict({**NNUNET_TRAINER, "train": {"epochs": epochs}})
    optimizer = build_optimizer(cfg, torch.nn.Linear(3, 2))
    scheduler, unit = build_scheduler(cfg, optimizer, steps_per_epoch=13)
    assert unit == "epoch"
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # PolyLRScheduler.step(current_epoch) at each epoch's start: lr0 * (1 - e / E) ** 0.9
    assert seen == pytest.approx([1e-2 * (1 - e / epochs) ** 0.9 for e in range(epochs)], rel=1e-12)
    # poly without step: epoch keeps the per-iteration schedule (TransUNet / Swin-UNet)
    _, per_step = build_scheduler(ExperimentConfig.from_dict({"scheduler": {"name": "poly"}}), optimizer, 13)
    assert per_step == "step"


class IndexDataset(torch.utils.data.Dataset):
    """Returns each item's index and the augmentation epoch it was loaded under."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "epoch": self.epoch}


def _draws(iterations: int, batch_size: int, seed: int, epoch: int, n: int = 5):
    cfg = ExperimentConfig.from_dict(
        {"train": {"iterations_per_epoch": iterations, "batch_size": batch_size, "seed": seed}}
    )
    trial = SimpleNamespace(cfg=cfg, data=SimpleNamespace(train=IndexDataset(n)), drop_last=False,
                            device=torch.device("cpu"))
    batches = list(epoch_loader(trial, epoch))
    return batches, [int(i) for b in batches for i in b["index"]], [int(e) for b in batches for e in b["epoch"]]


def test_iterations_per_epoch_draw_with_replacement():
    batches, indices, aug_epochs = _draws(iterations=4, batch_size=3, seed=11, epoch=2)
    assert len(batches) == 4 and all(len(b["index"]) == 3 for b in batches)
    assert len(set(indices)) < len(indices)  # 12 draws from 5 images: repeats, as replace=True gives
    assert set(indices) <= set(range(5))
    assert len(set(aug_epochs)) == 12  # every draw, a repeated image too, gets its own augmentation
    assert _draws(4, 3, 11, 2)[1] == indices  # a function of (seed, epoch)
    assert _draws(4, 3, 11, 3)[1] != indices and _draws(4, 3, 12, 2)[1] != indices
    # A bigger training split than iterations * batch: still exactly N batches.
    assert len(_draws(iterations=2, batch_size=4, seed=0, epoch=0, n=50)[0]) == 2


def test_zscore_is_nnunet_per_channel_normalisation():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    out = normalize_isic(image, "zscore")
    x = image.astype(np.float64)
    for c in range(3):
        mean = x[:, :, c].sum() / x[:, :, c].size
        std = np.sqrt(((x[:, :, c] - mean) ** 2).sum() / x[:, :, c].size)  # population std, as numpy's default
        np.testing.assert_allclose(out[:, :, c], (x[:, :, c] - mean) / std, rtol=1e-5, atol=1e-5)
    assert out.dtype == np.float32
    constant = normalize_isic(np.full((4, 4, 3), 200, np.uint8), "zscore")
    assert np.array_equal(constant, np.zeros((4, 4, 3), np.float32))  # std 0: max(std, 1e-8), no NaN


def test_nnunet_preset_changes_images_and_keeps_masks_binary():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    mask = np.zeros((48, 40), np.uint8)
    mask[10:30, 8:25] = 1
    plain = IsicTransform((32, 32), augment=False, normalize="zscore")
    preset = IsicTransform((32, 32), augment=True, normalize="zscore", preset="nnunet")
    x0, _ = plain(image, mask, item_rng(0, 0, 0))
    flips = [x0, x0[:, ::-1], x0[:, :, ::-1], x0[:, ::-1, ::-1]]
    beyond_flips = 0
    for index in range(12):
        x, m = preset(image, mask, item_rng(1, 0, index))
        assert x.shape == (3, 32, 32) and m.shape == (1, 32, 32)
        assert set(np.unique(m)) <= {0.0, 1.0}
        beyond_flips += all(not np.allclose(x, f, atol=1e-4) for f in flips)
    # Rotation, scaling and the intensity transforms (p 0.1 .. 0.3 each) change most samples.
    assert beyond_flips >= 3
    # The same (seed, epoch, index): the same augmentation.
    a, b = preset(image, mask, item_rng(1, 0, 5)), preset(image, mask, item_rng(1, 0, 5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize(("option", "value"), [("augmentation", "nnUNet-3d"), ("normalize", "zcore")])
def test_bad_data_option_is_one_line_naming_it(tmp_path, option, value):
    # Refused before the (here missing) data folder is read.
    with pytest.raises(ConfigError, match=rf"^data\.options\.{option}: '{value}' is not one of ") as refused:
        build_dataset("synthetic-isic", root=tmp_path / "missing", split="train", **{option: value})
    assert "\n" not in str(refused.value)


def test_losses_of_the_other_task_are_config_errors():
    cfg = ExperimentConfig.from_dict({"loss": {"name": "nnunet_dice_ce"}})
    with pytest.raises(ConfigError, match=r"^loss\.name: 'nnunet_dice_ce' is for multiclass outputs .*nnunet_dice_bce"):
        build_loss(cfg, "binary", 1)


def test_last_selection_refuses_a_mode():
    cfg = ExperimentConfig.from_dict({"train": {"select_metric": "last", "select_mode": "min"}})
    with pytest.raises(ConfigError, match=r"^train\.select_mode is 'min' but train\.select_metric 'last'"):
        selection_rule(cfg, val_is_test=False, has_val=True)


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic")
    synth_isic(root, n=20, seed=1, layout="challenge", year=2018)
    return root


def test_nnunet_trainer_end_to_end(isic_root, tmp_path):
    epochs, iterations, batch = 2, 1, 2
    cfg = ExperimentConfig.from_dict(
        {
            **NNUNET_TRAINER,
            "data": {"name": "synthetic-isic", "root": str(isic_root), "img_size": 32,
                     "options": {"normalize": "zscore", "augmentation": "nnunet"}},
            "model": {"name": "vmunet", "overrides": {"dims": [8, 16, 32, 64], "d_state": 4}},
            "loss": {"name": "nnunet_dice_bce"},
            "train": {"epochs": epochs, "batch_size": batch, "iterations_per_epoch": iterations,
                      "select_metric": "last", "val_interval": epochs, "progress": False, "seed": 3},
        }
    )
    # The data options reach the training split's transform (and z-scoring the evaluation splits).
    data = load_data(cfg, "pooled2d", (32, 32))
    assert data.train.transform.preset == "nnunet" and data.train.transform.normalize == "zscore"
    assert data.val.transform.normalize == "zscore" and not data.val.transform.augment
    assert type(build_loss(cfg, "binary", 1)).__name__ == "NnUNetDiceBCELoss"
    result = fit(cfg, tmp_path, evaluate_test=False)
    lrs = [h["lr"] for h in result.history]
    assert lrs == pytest.approx([1e-2 * (1 - e / epochs) ** 0.9 for e in range(epochs)], rel=1e-9)
    assert result.best_epoch == epochs and result.select_metric == "last"
    assert [h["epoch"] for h in result.history] == [1, 2] and "val_dsc" in result.history[-1]
