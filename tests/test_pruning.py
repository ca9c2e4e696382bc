"""Pruning baselines: exact non-zero budgets, and masks that survive training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import blockswap as bs
from blockswap import Backbone, Genotype
from blockswap.cli import main
from blockswap.scoring.importance import MagnitudeImportance, SnipImportance
from blockswap.train.pruning import PRUNE_IMPORTANCE, PRUNE_METHODS, Pruner, nonzero_params, prunable_weights
from blockswap.train.training import TrainConfig, train
from blockswap.util.errors import BlockSwapError
from blockswap.weights.checkpoint import read_checkpoint

WRN10 = Genotype.uniform(Backbone.from_name("wrn-10-1"))  # 77,850 parameters, 490 of them BN and bias


def _fresh(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return WRN10.build()


def test_nonzero_params_counts_dense_parameters_in_full() -> None:
    model = _fresh()
    assert nonzero_params(model) == WRN10.params() == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model.fc.weight[0].zero_()  # 64 weights
        model.fc.bias.zero_()  # biases are not prunable: they count even when zero
    assert nonzero_params(model) == WRN10.params() - 64


@pytest.mark.parametrize("budget", [5_000, 40_000, 77_000])
def test_magnitude_pruning_hits_the_budget_exactly(budget: int) -> None:
    model = _fresh()
    pruner = Pruner.to_budget(model, MagnitudeImportance(), budget)
    assert nonzero_params(model) == budget
    kept, pruned = [], []
    original = _fresh()
    for name, w in prunable_weights(original).items():
        kept.append(w.detach().abs()[pruner.masks[name]])
        pruned.append(w.detach().abs()[~pruner.masks[name]])
    assert torch.cat(kept).min() >= torch.cat(pruned).max()  # the largest magnitudes survive, network-wide


def test_snip_importance_is_weight_times_gradient_and_keeps_the_model_state() -> None:
    model = _fresh().eval()
    model.fc.bias.requires_grad_(False)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    scores = SnipImportance()(model, (x, y))
    assert not model.training and not model.fc.bias.requires_grad and model.fc.weight.grad is None
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert torch.allclose(scores["fc.weight"], (model.fc.weight * model.fc.weight.grad).abs())
    model.zero_grad(set_to_none=True)
    Pruner.to_budget(model, SnipImportance(), 30_000, (x, y))
    assert nonzero_params(model) == 30_000
    with pytest.raises(BlockSwapError, match="needs a batch"):
        Pruner.to_budget(_fresh(), SnipImportance(), 30_000)


def test_the_snip_proxy_sums_the_pruning_importance_exactly() -> None:
    """One SNIP: the proxy's total is the sum of the importance pruning ranks by, to the last bit."""
    model = _fresh()
    batch = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    scores = SnipImportance()(model, batch)
    assert list(scores) == list(prunable_weights(model))
    total = sum(s.sum().item() for s in scores.values())
    assert bs.make_scorer("snip")(model, batch).total == total


def test_each_pruning_method_names_its_importance() -> None:
    assert PRUNE_METHODS == ("l1", "snip")
    assert PRUNE_IMPORTANCE["l1"].trained and not PRUNE_IMPORTANCE["l1"].needs_data
    assert PRUNE_IMPORTANCE["snip"].needs_data and not PRUNE_IMPORTANCE["snip"].trained


def test_budget_outside_the_prunable_range_is_an_error() -> None:
    model = _fresh()
    dense = WRN10.params() - sum(w.numel() for w in prunable_weights(model).values())
    assert dense == 490
    for budget in (dense, WRN10.params()):
        with pytest.raises(BlockSwapError, match="must lie between"):
            Pruner.to_budget(model, MagnitudeImportance(), budget)


def test_snip_masks_stay_zero_through_training(cifar_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(genotype=WRN10.to_dict(), data_dir=str(cifar_root), epochs=2, batch_size=32,
                         train_subset=128, test_subset=50, prune="snip", prune_budget=20_000)
    counts = []
    final = train(config, tmp_path, progress=False, on_epoch=lambda row, net: counts.append(nonzero_params(net)))
    assert counts == [20_000, 20_000] and final["params"] == 20_000
    saved = read_checkpoint(tmp_path / "checkpoint.pt")
    for name, mask in saved["masks"].items():
        weight = saved["state_dict"][name]
        assert torch.all(weight[~mask] == 0), name
        assert torch.all(weight[mask] != 0), name  # kept weights trained, none collapsed to zero


def test_l1_pruned_teacher_student_from_cli(cifar_root: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    code = main(["train", "student", "--prune", "l1", "--budget", "30k", "--teacher", str(tiny_teacher / "last.pt"),
                 "--data-dir", str(cifar_root), "--epochs", "1", "--batch-size", "32", "--train-subset", "64",
                 "--test-subset", "50", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["params"] == 30_000 and final["pruning"] == {"method": "l1", "budget": 30_000}
    assert final["blocks"] == list(WRN10.blocks)
