"""benchmarks/gpu_check.py runs every part end to end in its --tiny form on the CPU (no part fails there)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # as tests/test_benchmarks.py: `pytest -m "not slow"` skips it; CI runs it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
PARTS = ["environment", "scoring", "search", "training", "torchrun", "detection", "export", "latency", "search_workers"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The JSON a tiny CPU run prints, checked to be the file it writes."""
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert printed == json.loads(out.read_text())
    return printed


def test_every_part_is_ok_or_skipped_with_a_reason_and_timed(report: dict) -> None:
    parts = report["parts"]
    assert list(parts) == PARTS
    for name, part in parts.items():
        assert part["status"] in ("ok", "skipped"), (name, part)
        assert part["status"] == "ok" or part["reason"], (name, part)
        assert isinstance(part["seconds"], float) and part["seconds"] >= 0, (name, part)
    assert report["tiny"] and report["device"] == "cpu" and report["total_s"] > 0


def test_parts_that_run_everywhere_report_their_figures(report: dict) -> None:
    parts = report["parts"]
    env = parts["environment"]
    assert env["torch"] and env["device"] == "cpu" and "numpy" in env["libraries"]
    scoring = parts["scoring"]
    assert scoring["spearman"] is not None and scoring["max_rel_diff"] < 1e-2  # same candidates, weights and batch
    assert scoring["fast_s_per_candidate"] > 0 and scoring["reference_s_per_candidate"] > 0
    search = parts["search"]
    assert 0 <= search["pick"]["index"] < search["samples"] and search["wall_s"] > 0
    training = parts["training"]
    for key in ("teacher_fp32", "teacher_bf16", "student_fp32", "student_bf16"):
        step = training[key]
        assert step["status"] == "ok" and step["finite"] and step["images_per_s"] > 0, key
        assert math.isfinite(step["loss_last"])
    torchrun = parts["torchrun"]
    assert torchrun["backend"] == "gloo" and torchrun["rank"]["world_size"] == 1
    assert torchrun["rank"]["ddp_steps"]["steps"] == 2 and torchrun["rank"]["train"]["processes"] == 1
    for where in (torchrun["cli_search"], torchrun["rank"]["group_search"]):
        assert where["rows"]["rows_equal"]  # CPU scores are the same bytes for any split
    latency = parts["latency"]
    assert {"batch_1", "batch_8"} <= set(latency)
    assert all(net["measured_ms"] > 0 for net in latency["batch_1"]["networks"])


def test_optional_parts_say_why_they_skip(report: dict) -> None:
    parts = report["parts"]
    if parts["detection"]["status"] == "skipped":
        assert parts["detection"]["reason"] == "torchvision not installed"
    else:
        assert all(math.isfinite(v) for v in parts["detection"]["losses"].values())
    if parts["export"]["status"] == "skipped":
        assert parts["export"]["reason"].endswith("not installed")
    else:
        assert parts["export"]["onnx"]["max_abs_diff"] <= parts["export"]["onnx"]["tolerance"]
    if parts["search_workers"]["status"] == "ok":
        assert parts["search_workers"]["same_pick"] and parts["search_workers"]["same_rows"]
