"""A search space's ``ablations:``: each Mamba model's twins as further studies with its space and budget."""

from __future__ import annotations

import pytest
from mlflow.utils.validation import validate_param_and_metric_name

from vmbench.config import ConfigError
from vmbench.search_space import parse_spec

SPACE = {
    "models": ["vmunet", "unet", "umamba-bot"],
    "dataset": "synthetic-isic",
    "budget": {"trials": 3, "max_epochs": 2},
    "fixed": {"data.img_size": 128, "train.batch_size": 4},
    "space": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
    "per_model": {"umamba-bot": {"fixed": {"train.batch_size": 2}}},
    "final": {"seeds": [1, 2]},
    "ablations": ["no-ssm", "no-mamba"],
}


def test_twins_follow_their_model_with_its_space_budget_recipe_and_final_stage():
    spec = parse_spec(dict(SPACE), source="s.yaml")
    assert spec.models == ["vmunet", "vmunet~no-ssm", "vmunet~no-mamba", "unet",
                           "umamba-bot", "umamba-bot~no-ssm", "umamba-bot~no-mamba"]
    studies = {s.model: s for s in spec.studies}
    for base in ("vmunet", "umamba-bot"):
        for twin in (f"{base}~no-ssm", f"{base}~no-mamba"):
            flat, twin_flat = studies[base].base.flat(), studies[twin].base.flat()
            assert twin_flat.pop("model.name") == twin and flat.pop("model.name") == base
            assert twin_flat == flat  # the recipe, per_model's included (batch 2 for umamba-bot)
            assert studies[twin].space == studies[base].space
            assert studies[twin].start_point == studies[base].start_point
    assert studies["umamba-bot~no-mamba"].base.train.batch_size == 2
    plan = spec.plan()
    assert "study synthetic-isic x vmunet~no-mamba: at most 6 search epochs + 4 final epochs" in plan
    assert ("ablations no-ssm, no-mamba: twins vmunet~no-ssm, vmunet~no-mamba, umamba-bot~no-ssm, "
            "umamba-bot~no-mamba, each searched and retrained with its model's space, budget, recipe and final "
            "stage") in plan
    # The hash a resumed sweep must match changes with the twins; without ablations it is what it was.
    plain = dict(SPACE)
    del plain["ablations"]
    assert parse_spec(plain, source="s.yaml").content_hash() != spec.content_hash()


def test_study_keys_spell_the_twin_so_that_folders_and_mlflow_metric_names_take_it():
    spec = parse_spec(dict(SPACE, models=["vmunet"], per_model={}, ablations="no-ssm"), source="s.yaml")
    keys = [s.key for s in spec.studies]
    assert keys == ["synthetic-isic__vmunet", "synthetic-isic__vmunet.no-ssm"]
    assert not validate_param_and_metric_name("best_val_dsc__synthetic-isic__vmunet~no-ssm")  # why "~" is mapped
    assert all(validate_param_and_metric_name(f"best_val_dsc__{k}") for k in keys)


def test_twins_named_in_models_need_no_ablations_key():
    spec = parse_spec(dict(SPACE, models=["umamba-bot", "umamba-bot~no-mamba"], ablations=[]), source="s.yaml")
    assert [s.model for s in spec.studies] == ["umamba-bot", "umamba-bot~no-mamba"]
    assert spec.studies[1].base.train.batch_size == 2  # per_model of its model


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"models": ["unet", "resenc-unet-m"], "per_model": {}},
         r"^s\.yaml: ablations: none of the models \(unet, resenc-unet-m\) has a Mamba part to remove; add a Mamba "
         r"model \(vmbench models --ablations\) or remove ablations$"),
        ({"ablations": ["no-scan"]}, r"^s\.yaml: ablations: unknown ablation 'no-scan' \(known: no-ssm, no-mamba\)$"),
        ({"ablations": {"no-ssm": True}}, r"^s\.yaml: ablations: expected a list of ablation names"),
        ({"models": ["unet~no-ssm"], "per_model": {}, "ablations": []}, r"^s\.yaml: models: model 'unet' has no Mamba part"),
    ],
)
def test_a_bad_ablation_is_one_line(changes, message):
    with pytest.raises(ConfigError, match=message) as refused:
        parse_spec(dict(SPACE, **changes), source="s.yaml")
    assert "\n" not in str(refused.value)
