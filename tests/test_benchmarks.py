"""The benchmark scripts run end to end on a small network and report consistent figures (never timing limits)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from torch import nn

import blockswap as bs
from blockswap.data import probe_images
from blockswap.search.pool import build_candidate

pytestmark = pytest.mark.slow  # `pytest -m "not slow"` skips them; `.ci/run` runs everything

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SMALL = ["--model", "wrn-16-1", "--budget", "50k", "--json"]


def _run(script: str, *args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _floor_module() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))  # scoring_floor imports search_speed beside it
    try:
        return importlib.import_module("scoring_floor")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_search_speed_reports_both_scorers_and_their_agreement() -> None:
    result = _run("search_speed.py", *SMALL, "--candidates", "3", "--workers", "2")
    assert {"reference_s_per_candidate", "fast_s_per_candidate", "speedup", "spearman"} <= result.keys()
    assert result["speedup"] == pytest.approx(result["reference_s_per_candidate"] / result["fast_s_per_candidate"])
    assert result["max_rel_diff"] < 1e-2  # the same candidates, weights and batch: the scores agree
    assert result["candidates"] == 3 and result["workers"] == 2


def test_scoring_floor_figures_follow_from_its_timings() -> None:
    result = _run("scoring_floor.py", *SMALL, "--candidates", "1")
    conv = result["conv_s_per_candidate"]
    assert conv == pytest.approx(result["conv_forward_s_per_candidate"] + result["conv_input_grad_s_per_candidate"])
    assert result["conv_input_grad_s_per_candidate"] > 0  # the backward reached some convolutions
    assert result["search_1000_floor_s"] == pytest.approx(1000 * conv / result["cores"])
    assert result["speedup_ceiling"] == pytest.approx(result["reference_s_per_candidate"] / (conv / result["cores"]))
    assert result["conv_share"] == pytest.approx(conv / result["fast_one_thread_s_per_candidate"])


@pytest.mark.usefixtures("one_thread")
def test_scoring_floor_records_every_conv_and_which_ones_the_backward_reaches() -> None:
    floor = _floor_module()
    genotype = bs.sample_genotypes(bs.Backbone.from_name("wrn-16-1"), 50_000, 1, seed=0)[0]
    net = build_candidate(genotype, 0, 0)
    calls = floor.record_convs(net, probe_images(None).probe_batch(16, 0))
    names = {id(m): name for name, m in net.named_modules()}
    recorded = [names[id(c.conv)] for c in calls]
    assert recorded == [name for name, m in net.named_modules() if type(m).__name__ == "Conv2d"]
    before_first_probe = {name for name in recorded if name == "conv1" or name.startswith("stages.0.0.")}
    assert before_first_probe and {names[id(c.conv)] for c in calls if not c.backward} == before_first_probe
    assert all(c.shape[0] == 16 and c.shape[1] == c.conv.in_channels for c in calls)


def test_scoring_floor_refuses_what_it_cannot_replay() -> None:
    floor = _floor_module()
    batch = (torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    twice = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    same = nn.Conv2d(3, 3, 3, padding="same", bias=False)
    for body, message in ((nn.Sequential(twice, twice), "ran twice"), (same, "numeric zero padding")):
        model = _Net(body)
        with pytest.raises(ValueError, match=message):
            floor.record_convs(model, batch)


class _Net(nn.Module):
    """The smallest model `FastFisherScorer` scores: one probe (the body's output) and 10 logits."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, nn.Linear(3, 10)

    def forward_taps(self, x: torch.Tensor) -> SimpleNamespace:
        probe = self.body(x)
        return SimpleNamespace(logits=self.head(probe.mean((2, 3))), probes=[probe])


def test_screening_benchmark_reports_a_consistent_comparison() -> None:
    out = _run("screening.py", *SMALL, "--candidates", "6", "--rescore-fraction", "0.5")
    assert {"full_s", "screened_s", "speedup", "same_pick", "full_pick_screen_rank"} <= set(out)
    assert out["speedup"] == pytest.approx(out["full_s"] / out["screened_s"])
    assert out["rescored"] == 3 and 1 <= out["full_pick_screen_rank"] <= 6
    if out["full_pick_screen_rank"] <= out["rescored"]:  # the paper's pick survived the screen: it is the pick
        assert out["same_pick"]


def test_decode_benchmark_times_the_same_views_every_way() -> None:
    out = _run("decode.py", "--json", "--images", "6", "--rounds", "1", "--width", "640", "--height", "480")
    assert {"pillow_full_img_s", "pillow_draft_img_s", "draft_speedup"} <= set(out)
    assert out["draft_speedup"] == pytest.approx(out["pillow_draft_img_s"] / out["pillow_full_img_s"])
    assert out["images"] == 6 and out["source"] == "640x480 JPEG q90"


def test_latency_prediction_reports_errors_against_its_own_timings() -> None:
    report = _run("latency_prediction.py", "--model", "wrn-10-1", "--students", "1", "--repeats", "2",
                  "--min-time", "0.002", "--json")
    predicted, measured, errors = report["predicted_ms"], report["measured_ms"], report["error_pct"]
    assert len(predicted) == 2 and len(measured) == len(errors) == 2  # teacher + 1 student, 2 repeats
    for row_m, row_e in zip(measured, errors):
        for p, m, e in zip(predicted, row_m, row_e):
            assert m > 0 and abs(e - 100 * (p - m) / m) < 0.2  # rounded to 0.1 in the report
    flat = [abs(e) for row in errors for e in row]
    assert abs(report["mean_abs_error_pct"] - sum(flat) / len(flat)) < 0.2
