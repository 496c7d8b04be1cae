"""A search space names the paired tests' reference (`reference:`), used at the end of the sweep."""

from __future__ import annotations

import pytest

from vmbench.errors import ConfigError
from vmbench.search_space import parse_spec

BASE = {"name": "ref", "dataset": "synthetic-isic",
        "budget": {"trials": 1, "max_epochs": 1}, "final": {"seeds": [1]}}


def spec(**changes):
    return parse_spec({**BASE, "models": ["unet", "att-unet"], **changes}, source="ref.yaml")


def test_the_reference_is_the_files_else_vmunet_else_the_first_model():
    assert spec(reference="att-unet").reference == "att-unet"
    assert spec().reference == "unet"  # a new model against unet: the test is still run
    assert spec(models=["unet", "vmunet"]).reference == "vmunet"
    assert spec(reference="none").reference is None
    assert "paired tests against: att-unet" in spec(reference="att-unet").plan()


@pytest.mark.parametrize("value, message", [("vmunet", "'vmunet' is not one of the sweep's models (unet, att-unet)"),
                                            (3, "expected a model name or none, got 3")])
def test_a_bad_reference_is_one_line_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=r"ref.yaml: reference: " + message.replace("(", r"\(").replace(")", r"\)")):
        spec(reference=value)
