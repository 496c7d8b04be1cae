"""``vmbench bench model``'s training step on models whose forward returns several heads."""

from __future__ import annotations

import torch

import vmbench
from vmbench.bench import ModelCase, run_model_case


class TwoHeads(torch.nn.Module):
    """Returns (auxiliary, final) logits while training, as TransFuse returns (map_x, map_1, map_2)."""

    deep_supervision_weights = (0.25, 0.75)

    def __init__(self):
        super().__init__()
        self.aux = torch.nn.Conv2d(3, 1, 1)
        self.final = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x):
        return (self.aux(x), self.final(x)) if self.training else self.final(x)


def test_bench_model_trains_a_deep_supervision_model(monkeypatch):
    built = []
    monkeypatch.setattr(vmbench, "create_model", lambda name, **kw: built.append(TwoHeads()) or built[-1])
    result = run_model_case(ModelCase(model="two-heads", size=16, batch=2, steps=1))
    assert result["images_per_s"] > 0
    # Both heads were trained (each got a gradient), as the training engine trains them.
    assert all(p.grad is not None for p in built[0].parameters())
