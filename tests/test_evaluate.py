"""`blockswap eval`: the reported error, parameters and MACs are the network's real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from blockswap import Backbone, Genotype
from blockswap.cli import main
from blockswap.deploy.evaluate import EvalConfig, evaluate_checkpoint
from blockswap.weights.checkpoint import save_atomic


def test_eval_reproduces_the_training_run(cifar_root: Path, tiny_teacher: Path) -> None:
    final = json.loads((tiny_teacher / "final.json").read_text())
    config = EvalConfig(checkpoint=tiny_teacher / "last.pt", data_dir=cifar_root, precision="fp32", test_subset=200,
                        latency_batch_sizes=(1, 4), min_time=0.01)  # the run tested on the first 200 images too
    report = evaluate_checkpoint(config, torch.device("cpu"))
    assert report.test_images == 200
    assert report.test_error_pct == final["test_error_pct"]
    assert report.test_loss == pytest.approx(final["test_loss"], rel=1e-5)
    assert report.params == final["params"] == 77_850
    assert [row["batch_size"] for row in report.latency] == [1, 4] and all(r["ms"] > 0 for r in report.latency)


def test_reported_macs_match_counted_flops(cifar_root: Path, tmp_path: Path) -> None:
    genotype = Genotype(Backbone.from_name("wrn-10-1"), ("DConvA2", "G4B2", "ConvB2"))
    torch.manual_seed(0)
    model = genotype.build().eval()
    save_atomic({"genotype": genotype.to_dict(), "state_dict": model.state_dict()}, tmp_path / "w.pt")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    report = evaluate_checkpoint(EvalConfig(checkpoint=tmp_path / "w.pt", data_dir=cifar_root, test_subset=50,
                                            min_time=0.01), torch.device("cpu"))
    assert report.macs == counter.get_total_flops() // 2  # one multiply-accumulate = two FLOPs
    assert report.params == genotype.params() == sum(p.numel() for p in model.parameters())
    assert report.blocks == list(genotype.blocks)


def test_cli_eval_prints_json(cifar_root: Path, tiny_teacher: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["eval", "--checkpoint", str(tiny_teacher / "best.pt"), "--data-dir", str(cifar_root),
                 "--test-subset", "100", "--min-time", "0.01", "--latency-batch-sizes", "1,2",
                 "--latency-threads", "1,2"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"test_error_pct", "params", "macs", "latency", "device_name"}
    assert [(r["batch_size"], r["threads"]) for r in report["latency"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for row in report["latency"]:
        assert row["ms"] > 0 and row["images_per_s"] == pytest.approx(1000 * row["batch_size"] / row["ms"])
    assert report["model"] == "wrn-10-1" and report["test_images"] == 100


def test_cli_eval_missing_checkpoint(cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data-dir", str(cifar_root)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
