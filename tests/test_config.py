"""The typed experiment configuration: values out of range are refused with the dotted key."""

from __future__ import annotations

import pytest

from vmbench.config import ConfigError, ExperimentConfig


@pytest.mark.parametrize(
    ("key", "value", "bound"),
    [
        ("train.epochs", 0, ">= 1"),  # used to end in "no epoch produced the selection metric"
        ("train.epochs", -3, ">= 1"),
        ("train.batch_size", 0, ">= 1"),  # used to end in a ZeroDivisionError
        ("train.batch_size", -8, ">= 1"),
        ("train.val_interval", 0, ">= 1"),
        ("train.grad_clip", -1.0, "> 0"),  # a negative norm would flip the gradients' sign
        ("data.num_workers", -1, ">= 0"),
        ("data.img_size", 0, ">= 1"),
        ("data.img_size", [64, 0], ">= 1"),
        ("optim.lr", 0.0, "> 0"),
        ("optim.eps", -1e-8, "> 0"),
        ("optim.weight_decay", -0.01, ">= 0"),
        ("scheduler.t_max", 0, ">= 1"),
        ("loss.dice_weight", -1.0, ">= 0"),
    ],
)
def test_values_out_of_range_name_the_key(key, value, bound):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"^run\.yaml: {key}: .* is out of range \(must be {bound}\)$"):
        ExperimentConfig.from_dict({section: {name: value}}, source="run.yaml")
    with pytest.raises(ConfigError, match=rf"command line: {key}: "):  # --set and --epochs go this way
        ExperimentConfig().with_overrides({key: value}, source="command line")


def test_values_at_the_bounds_and_unset_values_pass():
    cfg = ExperimentConfig.from_dict(
        {
            "train": {"epochs": 1, "batch_size": 1, "val_interval": 1, "grad_clip": None},
            "data": {"num_workers": 0, "img_size": [1, 1]},
            "optim": {"weight_decay": 0.0, "momentum": 0.0},
            "scheduler": {"t_max": None, "eta_min": 0.0},
            "loss": {"bce_weight": 0.0},
        }
    )
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.num_workers, cfg.data.img_size) == (1, 1, 0, (1, 1))
    assert ExperimentConfig().train.epochs >= 1  # the defaults are in range


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"protocol": "cv"}, r"data\.fold: protocol 'cv' needs the fold to train \(0 \.\. 4\)$"),
        ({"protocol": "cv", "fold": 5}, r"data\.fold: 5 is out of range \(must be < data\.folds, which is 5\)$"),
        ({"protocol": "cv", "fold": 2, "folds": 2}, r"data\.fold: 2 is out of range"),
        ({"protocol": "cv", "fold": -1}, r"data\.fold: -1 is out of range \(must be >= 0\)$"),
        ({"protocol": "cv", "fold": 0, "folds": 1}, r"data\.folds: 1 is out of range \(must be >= 2\)$"),
        ({"protocol": "cv", "fold": "0"}, r"data\.fold: expected an integer"),
        ({"protocol": "holdout", "fold": 0}, r"data\.fold: only protocol 'cv' has folds \(protocol is 'holdout'\)"),
    ],
)
def test_folds_are_checked_with_the_protocol(data, message):
    with pytest.raises(ConfigError, match=rf"^run\.yaml: {message}"):
        ExperimentConfig.from_dict({"data": data}, source="run.yaml")


def test_a_fold_of_protocol_cv_reaches_the_flat_config():
    cfg = ExperimentConfig().with_overrides({"data.protocol": "cv", "data.fold": 2, "data.folds": 3})
    assert (cfg.data.fold, cfg.data.folds) == (2, 3)
    assert {k: v for k, v in cfg.flat().items() if k.startswith("data.fold")} == {"data.fold": 2, "data.folds": 3}
    assert ExperimentConfig().data.fold is None  # holdout by default: no fold


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"optim": {"name": "adamw", "nesterov": True}}, r"optim\.nesterov: Nesterov momentum is SGD's"),
        ({"optim": {"name": "sgd", "nesterov": True, "momentum": 0.0}}, r"optim\.nesterov: needs optim\.momentum > 0"),
        ({"scheduler": {"name": "cosine", "step": "iteration"}}, r"scheduler\.step: 'iteration' applies to poly only"),
        ({"scheduler": {"step": "batch"}}, r"scheduler\.step: 'batch' is not one of"),
        ({"train": {"iterations_per_epoch": 0}}, r"train\.iterations_per_epoch: 0 is out of range \(must be >= 1\)$"),
    ],
)
def test_nnunet_trainer_settings_are_checked_together(values, message):
    with pytest.raises(ConfigError, match=rf"^run\.yaml: {message}") as refused:
        ExperimentConfig.from_dict(values, source="run.yaml")
    assert "\n" not in str(refused.value)


def test_nnunet_trainer_settings_pass():
    cfg = ExperimentConfig.from_dict(
        {
            "optim": {"name": "sgd", "lr": 1e-2, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
            "scheduler": {"name": "poly", "power": 0.9, "step": "epoch"},
            "train": {"iterations_per_epoch": 250, "select_metric": "last"},
        }
    )
    assert (cfg.optim.nesterov, cfg.scheduler.step, cfg.train.iterations_per_epoch) == (True, "epoch", 250)
    assert ExperimentConfig().train.iterations_per_epoch is None and ExperimentConfig().optim.nesterov is False


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_named(value):
    with pytest.raises(ConfigError, match=r"run\.yaml: optim\.lr: expected a finite number"):
        ExperimentConfig.from_dict({"optim": {"lr": value}}, source="run.yaml")


def test_numbers_written_like_1e_4_are_numbers():
    # PyYAML reads 1e-4 (no dot) as text, in a --config file and in `--set optim.lr=1e-4` alike.
    assert ExperimentConfig.from_dict({"optim": {"lr": "1e-4"}}).optim.lr == pytest.approx(1e-4)
    assert ExperimentConfig().with_overrides({"optim.lr": "3e-4"}).optim.lr == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match=r"^run\.yaml: optim\.lr: expected a number, got 'fast'$"):
        ExperimentConfig.from_dict({"optim": {"lr": "fast"}}, source="run.yaml")
    with pytest.raises(ConfigError, match=r"^run\.yaml: optim\.lr: expected a finite number, got nan$"):
        ExperimentConfig.from_dict({"optim": {"lr": "nan"}}, source="run.yaml")


def test_an_unknown_key_of_a_section_names_the_section_and_the_known_keys():
    with pytest.raises(ConfigError, match=r"^run\.yaml: data\.imgsize: unknown key \(known: name, root, protocol, "):
        ExperimentConfig.from_dict({"data": {"imgsize": 32}}, source="run.yaml")


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("budget", {"trails": 3}, r"budget\.trails: unknown key \(known: trials, concurrent, max_epochs, "),
        ("budget", {"trials": 2.5}, r"budget\.trials: expected an integer, got 2\.5$"),
        ("budget", {"reduction_factor": 1}, r"budget\.reduction_factor: 1 is out of range \(must be >= 2\)$"),
        ("budget", {"trials": 10**6}, r"budget\.trials: 1000000 is beyond what a sweep can finish"),
        ("resources", {"gpu": -0.5}, r"resources\.gpu: -0\.5 is out of range \(must be >= 0\)$"),
        ("resources", "all", r"resources: expected a mapping, got str$"),
        ("final", {"seeds": [1, "x"]}, r"final\.seeds\[1\]: expected an integer, got 'x'$"),
        ("final", {"seeds": 3}, r"final\.seeds: expected a list, got 3$"),
        ("final", {"epochs": 0}, r"final\.epochs: 0 is out of range \(must be >= 1\)$"),
        ("sampler", {"seed": -1}, r"sampler\.seed: -1 is out of range \(must be >= 0\)$"),
        ("sampler", {"name": "bayes"}, r"sampler\.name: 'bayes' is not one of 'tpe', 'random', 'gp', 'cmaes'$"),
    ],
)
def test_search_space_sections_are_checked_by_the_configuration_validator(section, values, message):
    from vmbench.config import build_section
    from vmbench.search_space import Budget, FinalStage, Resources, SamplerSpec

    cls = {"budget": Budget, "resources": Resources, "final": FinalStage, "sampler": SamplerSpec}[section]
    with pytest.raises(ConfigError, match=rf"^space\.yaml: {message}") as refused:
        build_section(cls, values, section, "space.yaml")
    assert "\n" not in str(refused.value)


def test_search_space_sections_keep_their_types():
    from vmbench.config import build_section
    from vmbench.search_space import FinalStage, Resources

    assert build_section(Resources, {"cpu": 2, "gpu": "5e-1"}, "resources", "s") == Resources(2.0, 0.5)
    assert build_section(FinalStage, {"seeds": [3, 4]}, "final", "s") == FinalStage((3, 4), None)
    assert build_section(FinalStage, None, "final", "s") == FinalStage()  # an absent section: the defaults
