"""Every CUDA path of blockswap in one command: each part timed and guarded, the findings as one JSON object.

    python3 benchmarks/gpu_check.py                                  # --device cuda: about 5-8 minutes on one H100
    python3 benchmarks/gpu_check.py --tiny --device cpu --out F      # every part shrunk: a dry run in a minute or two

Parts (the `parts` of the JSON, in the order they run; WRN-40-2 at 400K unless --tiny shrinks them):

- `environment`: device, driver (`nvidia-smi`), torch, CUDA, cuDNN and library versions;
- `scoring`: the fast and reference Fisher scorers on the same 30 candidates: seconds per candidate,
  Spearman between them, largest relative difference;
- `search`: a 1,000-candidate screened search (`run_search`, one process): wall time and the pick;
- `training`: teacher (CE) and student (attention transfer) steps: images/s in fp32 and bf16 autocast, finite loss;
- `torchrun`: `torchrun --nproc-per-node 1` (nccl; gloo on CPU): DDP steps, `train` and a search inside the
  process group, the CLI search under torchrun; rows compared with a single process's;
- `detection`: Mask R-CNN on a ResNet-18 student: one training step, one eval forward;
- `export`: a 1-epoch training run on the device, its `last.pt` exported to ONNX and checked on the CPU;
- `latency`: block latency tables at two batch sizes, checked against whole networks;
- `search_workers`: the `search` part with several worker processes sharing the device
  (`run_search(workers=W)`), if the time left allows.

Each part records `status` ("ok", "skipped" with a `reason`, or "failed" with `error`: type, one-line
message, traceback tail; or with `problems`, checks that did not hold) and `seconds`; one failure never
stops the rest. The JSON file is rewritten after every part, so a run cut short keeps what it measured.
Images are the embedded CIFAR-10 sample; training runs use `--data-dir` or a CIFAR-10 folder built from
that sample (800 training, 200 test images). Exit status 1 when a part failed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.metadata
import importlib.util
import json
import math
import os
import pickle
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # the checkout's package, whatever is installed

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import blockswap as bs
from blockswap.data import probe_images
from blockswap.search.pool import build_candidate, score_genotype
from blockswap.space.latency import DEFAULT_MIN_TIME, device_name
from blockswap.train.training import TapsModule, train_step
from blockswap.util.precision import bf16_supported, resolve_precision
from blockswap.util.system import usable_cores

DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu_check.json"
TRACE_LINES = 12  # lines of traceback kept per failure
LIBRARIES = ("numpy", "scipy", "numba", "tqdm", "pillow", "torchvision", "onnx", "onnxscript", "onnxruntime")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
SEED = 0


@dataclass(frozen=True)
class Sizes:
    """How large each part runs: as the issue asks for it, or shrunk by --tiny."""

    model: str  # teacher of scoring, search, training, torchrun and export
    budget: int  # their student budget (parameters)
    score_candidates: int
    probe_batch: int  # images the scoring part scores each candidate on
    search_samples: int
    search_batch: int  # the search's probe batch (SearchConfig.batch_size)
    screen_batch: int
    search_workers: int  # worker processes of `search_workers`, at most the usable cores
    search_cap_s: float  # a search still running after this long is stopped and reported unfinished
    train_batch: int
    warmup_steps: int
    timed_steps: int
    shard_samples: int  # candidates of the torchrun searches
    ddp_batch: int
    detection_budget: int  # ResNet-18 student
    detection_size: int  # pixels of the square detection images
    export_subset: int  # training images of the 1-epoch run exported
    export_batch: int
    latency_model: str
    latency_batches: tuple[int, int]
    latency_min_time: float
    latency_students: int
    need_scale: float  # multiplies the seconds a part needs left before it starts


FULL = Sizes(model="wrn-40-2", budget=400_000, score_candidates=30, probe_batch=128, search_samples=1000,
             search_batch=128, screen_batch=16, search_workers=4, search_cap_s=180, train_batch=128, warmup_steps=5,
             timed_steps=30, shard_samples=20, ddp_batch=128, detection_budget=3_000_000, detection_size=512,
             export_subset=512, export_batch=128, latency_model="wrn-40-2", latency_batches=(1, 128),
             latency_min_time=DEFAULT_MIN_TIME, latency_students=4, need_scale=1.0)
TINY = Sizes(model="wrn-10-1", budget=40_000, score_candidates=3, probe_batch=32, search_samples=8, search_batch=32,
             screen_batch=8, search_workers=2, search_cap_s=120, train_batch=16, warmup_steps=1, timed_steps=2,
             shard_samples=4, ddp_batch=16, detection_budget=3_000_000, detection_size=128, export_subset=64,
             export_batch=32, latency_model="wrn-10-1", latency_batches=(1, 8), latency_min_time=0.002,
             latency_students=1, need_scale=0.0)
NEED_S = {"environment": 0, "scoring": 20, "search": 60, "training": 30, "torchrun": 45, "detection": 20,
          "export": 40, "latency": 40, "search_workers": 0}  # search_workers needs the search part's wall time


class Skipped(Exception):
    """A part or step that cannot run here; the message is the reason recorded."""


class CommandError(Exception):
    """A child process that exited non-zero; keeps the end of its output."""

    def __init__(self, message: str, output_tail: list[str]) -> None:
        super().__init__(message)
        self.output_tail = output_tail


def _error(e: BaseException) -> dict[str, Any]:
    """Type, first line of the message and the traceback's last lines (a child's output for a CommandError)."""
    lines = str(e).strip().splitlines()
    trace = "".join(traceback.format_exception(e)).splitlines()[-TRACE_LINES:]
    return {"type": type(e).__name__, "message": lines[0] if lines else "",
            "traceback": getattr(e, "output_tail", trace)}


def _failures(value: Any, path: str = "") -> list[str]:
    """Paths of the nested results inside `value` whose status is "failed"."""
    if not isinstance(value, dict):
        return []
    own = [path] if path and value.get("status") == "failed" else []
    return own + [f for k, v in value.items() for f in _failures(v, f"{path}.{k}" if path else k)]


def attempt(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """fn(*args)'s result with `status` and `seconds`: "failed" when it raised, reported problems or holds a failed
    step; "skipped" when it raised Skipped. Library prints go to stderr, so stdout stays one JSON object."""
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = fn(*args)
        problems = [*result.pop("problems", []), *(f"{p} failed" for p in _failures(result))]
        result = {"status": "failed" if problems else "ok", **({"problems": problems} if problems else {}), **result}
    except Skipped as e:
        result = {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - recorded, and the next part runs
        result = {"status": "failed", "error": _error(e)}
    finally:
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    return {**result, "seconds": round(time.perf_counter() - start, 2)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (no tie correction: scores of distinct candidates do not tie)."""
    ranks = [np.argsort(np.argsort(v)) for v in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def _child_env() -> dict[str, str]:
    """The environment of the torchrun children: this checkout first on the path, loopback for gloo and nccl."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run a child process in its own process group (all of it killed on timeout); CommandError when it fails."""
    with subprocess.Popen(cmd, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as child:
        try:
            output, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # torchrun's workers too
            output = child.communicate()[0]
            raise CommandError(f"killed after {timeout:.0f} s", output.strip().splitlines()[-TRACE_LINES:]) from None
    if child.returncode != 0:
        tail = output.strip().splitlines()[-TRACE_LINES:]
        raise CommandError(f"exit {child.returncode}: {tail[-1] if tail else 'no output'}", tail)
    return {"returncode": 0}


class Clock:
    """The check's deadline: what is left of --time-limit."""

    def __init__(self, limit_s: float) -> None:
        self.end = time.perf_counter() + limit_s

    def left(self) -> float:
        return self.end - time.perf_counter()


def sample_cifar_folder(root: Path) -> str:
    """A CIFAR-10 folder made of the embedded sample: its first 800 images as five training batches, the last 200
    as the test batch (protocol 4 pickles, as the official files)."""
    sample = bs.load_embedded_sample()
    data, labels = sample.images.reshape(len(sample), -1).numpy(), sample.labels.tolist()
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    parts = {f"data_batch_{i + 1}": range(160 * i, 160 * (i + 1)) for i in range(5)}
    parts["test_batch"] = range(800, len(sample))
    for name, rows in parts.items():
        batch = {"data": data[rows.start:rows.stop], "labels": labels[rows.start:rows.stop]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    return str(root)


def _pair(s: Sizes) -> tuple[bs.Genotype, bs.Genotype]:
    """The teacher (all Conv) and the seeded student inside the budget that training, torchrun and export use."""
    backbone = bs.get_backbone(s.model)
    return bs.Genotype.uniform(backbone), bs.sample_genotypes(backbone, s.budget, 1, seed=SEED)[0]


def _on(genotype: bs.Genotype, device: torch.device, index: int = 0) -> nn.Module:
    """The seeded network on the device, channels-last as training keeps it."""
    return build_candidate(genotype, SEED, index).to(device, memory_format=torch.channels_last)


def _batches(device: torch.device, batch: int, n: int) -> list[tuple[Tensor, Tensor]]:
    """n augmented batches of the embedded CIFAR-10 sample on the device, channels-last."""
    images = bs.load_embedded_sample().to(device)
    return [(x.contiguous(memory_format=torch.channels_last), y)
            for x, y in (images.probe_batch(batch, SEED + k) for k in range(n))]


def _sgd(net: nn.Module) -> torch.optim.SGD:
    recipe = bs.Recipe()
    return torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


# 8. environment ---------------------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict[str, Any]:
    """Versions, the device and the driver as nvidia-smi reports them."""
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libraries[name] = None
    usable = device.type != "cuda" or torch.cuda.is_available()
    info: dict[str, Any] = {
        "device": str(device), "device_name": device_name(device) if usable else None,
        "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "blockswap": bs.__version__, "cpu_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(), "bf16_native": bf16_supported(device), "libraries": libraries}
    if device.type == "cuda" and usable:
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count}
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi], capture_output=True, text=True, timeout=30, check=False)
        info["nvidia_smi"] = (done.stdout or done.stderr).rstrip().splitlines()
    else:
        info["nvidia_smi"] = None
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False) if shutil.which("git") else None
    info["commit"] = commit.stdout.strip() if commit is not None and commit.returncode == 0 else None
    return info


# 1. scoring -------------------------------------------------------------------------------------------------------

def scoring(device: torch.device, s: Sizes) -> dict[str, Any]:
    """Fast and reference scorers on the same candidates and batch, interleaved; times include building each."""
    genotypes = bs.sample_genotypes(bs.get_backbone(s.model), s.budget, s.score_candidates + 1, seed=SEED)
    x, y = probe_images(None).probe_batch(s.probe_batch, SEED)
    batch = (x.to(device), y.to(device))
    scorers = {"fast": bs.make_scorer("fast"), "reference": bs.make_scorer("reference")}
    warm = s.score_candidates  # an extra candidate, untimed: the first calls load kernels per shape
    start = time.perf_counter()
    for scorer in scorers.values():
        score_genotype(genotypes[warm], warm, SEED, batch, scorer)
    warm_up_s = time.perf_counter() - start
    totals: dict[str, list[float]] = {name: [] for name in scorers}
    seconds = dict.fromkeys(scorers, 0.0)
    for i in range(s.score_candidates):
        for name, scorer in scorers.items():
            start = time.perf_counter()
            totals[name].append(score_genotype(genotypes[i], i, SEED, batch, scorer).total)  # a float: synchronised
            seconds[name] += time.perf_counter() - start
    fast, ref = np.array(totals["fast"]), np.array(totals["reference"])
    finite = bool(np.isfinite(fast).all() and np.isfinite(ref).all())
    per = {name: sec / s.score_candidates for name, sec in seconds.items()}
    return {"fast_s_per_candidate": round(per["fast"], 4), "reference_s_per_candidate": round(per["reference"], 4),
            "speedup": round(per["reference"] / per["fast"], 3),
            "spearman": round(_spearman(totals["reference"], totals["fast"]), 4) if finite else None,
            "max_rel_diff": float(np.max(np.abs(fast / ref - 1))) if finite else None,
            "warm_up_s": round(warm_up_s, 2), "candidates": s.score_candidates, "model": s.model, "budget": s.budget,
            "probe_batch": s.probe_batch, "problems": [] if finite else ["a score is not finite"]}


# 2. search --------------------------------------------------------------------------------------------------------

def _search_config(s: Sizes) -> bs.SearchConfig:
    return bs.SearchConfig(model=s.model, budget=s.budget, samples=s.search_samples, batch_size=s.search_batch,
                           screen_batch=s.screen_batch)


class _TimeCap(Exception):
    """Raised from a search's on_scored once the search has run past its cap."""


def _searched(config: bs.SearchConfig, out: Path, device: torch.device, workers: int,
              cap_s: float) -> dict[str, Any]:
    """Run the search, stopped once it has run `cap_s`; wall time and the pick (or how far it got)."""
    start, scorings = time.perf_counter(), 0

    def stop_at_cap(candidate: bs.Candidate) -> None:
        nonlocal scorings
        scorings += 1
        if time.perf_counter() - start > cap_s:
            raise _TimeCap

    try:
        result = bs.run_search(config, out, device=device, progress=False, workers=workers, on_scored=stop_at_cap)
    except _TimeCap:
        wall = time.perf_counter() - start
        stopped = (f"stopped at the {cap_s:g} s cap after {scorings} of its {config.samples + config.rescored()} "
                   f"scorings ({config.samples} screened, {config.rescored()} re-scored)")
        return {"finished": False, "wall_s": round(wall, 2), "scorings": scorings, "samples": config.samples,
                "workers": workers, "problems": [stopped]}
    wall = time.perf_counter() - start
    best = result.best
    return {"finished": True, "wall_s": round(wall, 2), "search_s": round(result.seconds, 2),
            "s_per_candidate": round(wall / config.samples, 4), "samples": config.samples, "workers": workers,
            "screened": result.screened_now, "rescored": result.scored_now, "non_finite": result.non_finite,
            "pick": {"index": best.index, "score": best.score, "params": best.params,
                     "blocks": list(best.genotype.blocks)}}


def search(device: torch.device, s: Sizes, work: Path, state: dict[str, Any]) -> dict[str, Any]:
    """A screened search in this process (the CLI's default of one worker on CUDA)."""
    config = _search_config(s)
    result = _searched(config, work / "search", device, 1, s.search_cap_s)
    if result["finished"]:
        state["search"] = result
    return {**result, "model": s.model, "budget": s.budget, "screen_batch": config.screen_batch,
            "probe_batch": config.batch_size}


def search_workers(device: torch.device, s: Sizes, work: Path, state: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """The same search with several spawned workers, each scoring on the device; skipped when time is short."""
    single = state.get("search")
    if single is None:
        raise Skipped("the search part did not finish: nothing to compare with")
    workers = min(s.search_workers, usable_cores())
    if workers < 2:
        raise Skipped(f"{usable_cores()} usable CPU core: no second worker")
    if clock.left() < single["wall_s"]:
        raise Skipped(f"time limit: {clock.left():.0f} s left, the one-worker search took {single['wall_s']:.0f} s")
    result = _searched(_search_config(s), work / "search-workers", device, workers, s.search_cap_s)
    if not result["finished"]:
        return result
    rows = [(work / folder / "candidates.csv").read_bytes() for folder in ("search", "search-workers")]
    return {**result, "speedup": round(single["wall_s"] / result["wall_s"], 3),
            "same_pick": result["pick"]["index"] == single["pick"]["index"], "same_rows": rows[0] == rows[1],
            "note": "run_search(workers=W) spawns W processes; each moves the probe batch to the device and scores "
                    "there (the CLI's default on CUDA is 1 worker)"}


# 3. training ------------------------------------------------------------------------------------------------------

def _throughput(student: bs.Genotype, teacher: bs.Genotype | None, batches: list[tuple[Tensor, Tensor]],
                precision: str, device: torch.device, s: Sizes) -> dict[str, Any]:
    """Images/s of train_step after warm-up steps, with the loss of every step checked finite."""
    net = _on(student, device)
    frozen = None if teacher is None else _on(teacher, device, 1).eval().requires_grad_(False)
    model, optimizer, distill = TapsModule(net), _sgd(net), bs.DistillConfig()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    for step in range(s.warmup_steps + s.timed_steps):
        if step == s.warmup_steps:
            _sync(device)
            start = time.perf_counter()
        x, y = batches[step % len(batches)]
        parts, _ = train_step(model, frozen, optimizer, x, y, distill, precision)
        losses.append(parts.total.detach())
    _sync(device)
    seconds = time.perf_counter() - start
    values = torch.stack(losses).float().cpu()
    finite = bool(values.isfinite().all())
    result = {"images_per_s": round(s.timed_steps * s.train_batch / seconds, 1),
              "ms_per_step": round(1000 * seconds / s.timed_steps, 2), "loss_first": float(values[0]),
              "loss_last": float(values[-1]), "finite": finite,
              "problems": [] if finite else [f"non-finite loss: {values.tolist()}"]}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def training(device: torch.device, s: Sizes) -> dict[str, Any]:
    """Teacher alone (cross-entropy) and student with attention transfer, fp32 and bf16 autocast."""
    teacher, student = _pair(s)
    batches = _batches(device, s.train_batch, 4)
    result: dict[str, Any] = {"teacher_model": s.model, "teacher_params": teacher.params(),
                              "student_params": student.params(), "student_blocks": list(student.blocks),
                              "batch": s.train_batch, "warmup_steps": s.warmup_steps, "timed_steps": s.timed_steps,
                              "bf16_native": bf16_supported(device)}
    for role, (net, taught_by) in {"teacher": (teacher, None), "student": (student, teacher)}.items():
        for precision in ("fp32", "bf16"):
            result[f"{role}_{precision}"] = attempt(_throughput, net, taught_by, batches,
                                                    resolve_precision(precision, device), device, s)
        fp32, bf16 = result[f"{role}_fp32"], result[f"{role}_bf16"]
        if fp32["status"] == bf16["status"] == "ok":
            result[f"{role}_bf16_speedup"] = round(bf16["images_per_s"] / fp32["images_per_s"], 3)
    return result


# 4. torchrun ------------------------------------------------------------------------------------------------------

def _shard_config(s: Sizes) -> bs.SearchConfig:
    return bs.SearchConfig(model=s.model, budget=s.budget, samples=s.shard_samples, batch_size=s.search_batch,
                           screen=False)


def _ddp_steps(device: torch.device, s: Sizes) -> dict[str, Any]:
    """Two attention-transfer steps of the student under DistributedDataParallel, then an all-reduce of the loss."""
    teacher, student = _pair(s)
    net = _on(student, device)
    model = DistributedDataParallel(TapsModule(net), device_ids=[device.index] if device.type == "cuda" else None)
    frozen = _on(teacher, device, 1).eval().requires_grad_(False)
    optimizer, precision = _sgd(net), resolve_precision("auto", device)
    losses = [float(train_step(model, frozen, optimizer, x, y, bs.DistillConfig(), precision)[0].total)
              for x, y in _batches(device, s.ddp_batch, 2)]
    total = torch.tensor(sum(losses), device=device)
    torch_dist.all_reduce(total)
    finite = all(math.isfinite(v) for v in losses) and all(
        p.grad is None or bool(p.grad.isfinite().all()) for p in net.parameters())
    return {"steps": len(losses), "batch": s.ddp_batch, "precision": precision, "losses": losses,
            "all_reduced": float(total), "problems": [] if finite else ["non-finite loss or gradient"]}


def _group_train(device: torch.device, s: Sizes, data_dir: str, out: Path) -> dict[str, Any]:
    """`train` inside the process group: the teacher for one epoch of two steps, its sums all-reduced."""
    config = bs.TrainConfig(genotype=_pair(s)[0], data_dir=data_dir, epochs=1, batch_size=s.ddp_batch,
                            train_subset=2 * s.ddp_batch, test_subset=200)
    final = bs.train(config, out, device=device, progress=False, group=torch_dist.group.WORLD, loader_workers=0)
    return {"test_error_pct": final["test_error_pct"], "seconds": round(final["seconds"], 2),
            **{k: final[k] for k in ("processes", "device", "precision")}}


def _group_search(device: torch.device, s: Sizes, out: Path) -> dict[str, Any]:
    """`run_search` inside the process group: part files, gathered rows, merged candidates.csv."""
    result = bs.run_search(_shard_config(s), out, device=device, progress=False, workers=1,
                           group=torch_dist.group.WORLD)
    return {"pick": result.best.index, "search_s": round(result.seconds, 2)}


def rank_work(work: Path, device: torch.device, s: Sizes, data_dir: str) -> None:
    """Inside torchrun: join the group explicitly (blockswap forms none for one process), run the group steps."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    result: dict[str, Any] = {"backend": torch_dist.get_backend(), "world_size": torch_dist.get_world_size()}
    try:
        result["ddp_steps"] = attempt(_ddp_steps, device, s)
        result["train"] = attempt(_group_train, device, s, data_dir, work / "group-train")
        result["group_search"] = attempt(_group_search, device, s, work / "group-search")
    finally:
        torch_dist.destroy_process_group()
    (work / "rank.json").write_text(json.dumps(result))


def _rows_compared(path: Path, single: Path) -> dict[str, Any]:
    """Whether a candidates.csv is the single-process one byte for byte; the largest relative score gap if not."""
    if path.read_bytes() == single.read_bytes():
        return {"rows_equal": True}
    rows = []
    for p in (path, single):
        with p.open(newline="") as f:
            rows.append({r["index"]: r["score"] for r in csv.DictReader(f)})
    gaps = [abs(float(score) / float(rows[1][i]) - 1) for i, score in rows[0].items() if rows[1].get(i)]
    return {"rows_equal": False, "row_counts": [len(r) for r in rows], "max_rel_score_diff": max(gaps, default=None),
            "problems": ["candidates.csv differs from the single-process search's"]}


def torchrun(device: torch.device, s: Sizes, work: Path, data_dir: str, tiny: bool, clock: Clock) -> dict[str, Any]:
    """torchrun with one process: group steps in this script's rank mode, the CLI search; rows against one process."""
    work.mkdir(parents=True)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    dev = device.type if device.index is None else f"{device.type}:{device.index}"
    config = _shard_config(s)
    result: dict[str, Any] = {"backend": "nccl" if device.type == "cuda" else "gloo", "samples": config.samples,
                              "note": "with WORLD_SIZE 1 the blockswap CLI forms no process group; the group steps "
                                      "run in this script's rank mode, which joins one"}
    rank_cmd = [*launch, str(Path(__file__).resolve()), "--rank-work", str(work), "--device", dev,
                "--data-dir", data_dir, *(["--tiny"] if tiny else [])]
    result["rank"] = attempt(_run, rank_cmd, min(300.0, max(clock.left(), 30.0)))
    if (work / "rank.json").is_file():
        result["rank"].update(json.loads((work / "rank.json").read_text()))
    cli_out = work / "cli-search"
    cli_cmd = [*launch, "-m", "blockswap", "search", "--model", s.model, "--budget", str(s.budget), "--samples",
               str(config.samples), "--batch-size", str(config.batch_size), "--no-screen", "--device", dev,
               "--workers", "1", "--out", str(cli_out), "--quiet"]
    result["cli_search"] = attempt(_run, cli_cmd, min(300.0, max(clock.left(), 30.0)))
    single = work / "single-search"
    result["single_search"] = attempt(lambda: {"pick": bs.run_search(config, single, device=device, progress=False,
                                                                      workers=1).best.index})
    if result["single_search"]["status"] == "ok":
        for name, path in (("cli_search", cli_out), ("group_search", work / "group-search")):
            where = result["cli_search"] if name == "cli_search" else result["rank"].get("group_search", {})
            if where.get("status") == "ok":
                where["rows"] = attempt(_rows_compared, path / "candidates.csv", single / "candidates.csv")
    return result


# 5. detection -----------------------------------------------------------------------------------------------------

def _detection_data(device: torch.device, size: int) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Two random images in [0, 1], each with two boxes, labels and box-shaped masks."""
    g = torch.Generator().manual_seed(SEED)
    images = [torch.rand(3, size, size, generator=g).to(device) for _ in range(2)]
    targets = []
    corners = ([[0.06, 0.08, 0.47, 0.55], [0.39, 0.31, 0.94, 0.86]], [[0.16, 0.16, 0.7, 0.78], [0, 0.5, 0.31, 1]])
    for fractions in corners:
        boxes = torch.tensor(fractions) * (size - 1)
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            m[y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes.to(device), "labels": torch.tensor([1, 2], device=device),
                        "masks": masks.to(device)})
    return images, targets


def detection(device: torch.device, s: Sizes) -> dict[str, Any]:
    """Mask R-CNN on a ResNet-18 student: one SGD step on two images, then one eval forward."""
    if importlib.util.find_spec("torchvision") is None:
        raise Skipped("torchvision not installed")
    from blockswap.deploy.detection import mask_rcnn

    genotype = bs.sample_genotypes(bs.get_backbone("resnet18"), s.detection_budget, 1, seed=SEED)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = mask_rcnn(genotype, num_classes=5, min_size=s.detection_size, max_size=s.detection_size)
    model = model.to(device).train()
    images, targets = _detection_data(device, s.detection_size)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9,
                                weight_decay=1e-4)
    start = time.perf_counter()
    losses = model(images, targets)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    _sync(device)
    step_s = time.perf_counter() - start
    values = {k: float(v) for k, v in losses.items()}
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        predictions = model(images)
    _sync(device)
    eval_s = time.perf_counter() - start
    problems = [] if all(math.isfinite(v) for v in values.values()) else ["non-finite loss"]
    if any(set(p) != {"boxes", "labels", "scores", "masks"} for p in predictions):
        problems.append(f"prediction keys {sorted(predictions[0])}")
    return {"backbone_params": genotype.params(), "blocks": list(genotype.blocks), "image_size": s.detection_size,
            "losses": values, "train_step_s": round(step_s, 3), "eval_forward_s": round(eval_s, 3),
            "detections": [len(p["boxes"]) for p in predictions], "problems": problems}


# 6. export --------------------------------------------------------------------------------------------------------

def export(device: torch.device, s: Sizes, work: Path, data_dir: str) -> dict[str, Any]:
    """Train the student one epoch on the device, then export its last.pt to ONNX and run it with onnxruntime."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise Skipped(f"{', '.join(missing)} not installed")
    student = _pair(s)[1]
    config = bs.TrainConfig(genotype=student, data_dir=data_dir, epochs=1, batch_size=s.export_batch,
                            train_subset=s.export_subset, test_subset=200)
    final = bs.train(config, work / "export-run", device=device, progress=False, loader_workers=0)
    report = bs.export_checkpoint(work / "export-run" / "last.pt", "onnx", work / "student.onnx")
    onnx = report.to_dict()
    return {"train": {"test_error_pct": final["test_error_pct"], "seconds": round(final["seconds"], 2),
                      **{k: final[k] for k in ("device", "precision", "params")}},
            "onnx": {**{k: onnx[k] for k in ("max_abs_diff", "tolerance", "checked_batch", "bytes", "input_shape")},
                     "seconds": round(onnx["seconds"], 2)},
            "problems": [] if report.max_abs_diff <= report.tolerance else ["ONNX parity above tolerance"]}


# 7. latency -------------------------------------------------------------------------------------------------------

def _latency_at(backbone: bs.Backbone, genotypes: list[bs.Genotype], device: torch.device, batch: int,
                min_time: float) -> dict[str, Any]:
    """A block table measured afresh at `batch`, and whole networks timed against its predictions."""
    start = time.perf_counter()
    table = bs.measure_latency_table(backbone, bs.PALETTE_NAMES, device, batch, 1, min_time, progress=False)
    table_s = time.perf_counter() - start
    checks = bs.check_latency_table(table, genotypes, device, 5 * min_time, progress=False)
    errors = [c.error_pct for c in checks]
    return {"table_s": round(table_s, 2), "fixed_ms": round(table.fixed_ms, 4),
            "networks": [{"name": "teacher" if i == 0 else f"student {i}", "predicted_ms": round(c.predicted_ms, 4),
                          "measured_ms": round(c.measured_ms, 4), "error_pct": round(c.error_pct, 1)}
                         for i, c in enumerate(checks)],
            "mean_abs_error_pct": round(float(np.mean(np.abs(errors))), 1),
            "bias_pct": round(float(np.mean(errors)), 1)}


def latency(device: torch.device, s: Sizes) -> dict[str, Any]:
    """Latency tables at two batch sizes (fresh, not the cache), each checked on the teacher and random students."""
    backbone = bs.get_backbone(s.latency_model)
    genotypes = [bs.Genotype.uniform(backbone), *bs.uniform_genotypes(backbone, s.latency_students, seed=SEED)]
    result: dict[str, Any] = {"model": s.latency_model, "min_time_s": s.latency_min_time}
    for batch in s.latency_batches:
        result[f"batch_{batch}"] = attempt(_latency_at, backbone, genotypes, device, batch, s.latency_min_time)
    return result


# driver -----------------------------------------------------------------------------------------------------------

def _write(path: Path, report: dict[str, Any]) -> None:
    """The report, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def check(device: torch.device, s: Sizes, tiny: bool, out: Path, data_dir: str | None,
          limit_s: float) -> dict[str, Any]:
    """Run every part in turn, the report rewritten after each; returns the report."""
    clock, state = Clock(limit_s), {}
    started = time.perf_counter()
    report: dict[str, Any] = {"check": "gpu_check", "tiny": tiny, "device": str(device), "time_limit_s": limit_s,
                              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "parts": {}}
    unusable = (f"--device {device} but torch {torch.__version__} sees no CUDA device"
                if device.type == "cuda" and not torch.cuda.is_available() else None)
    if unusable:
        report["error"] = unusable
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        data = data_dir or sample_cifar_folder(work / "cifar-sample")
        report["training_data"] = data_dir or "CIFAR-10 folder built from the embedded sample (800 train, 200 test)"
        parts: dict[str, tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]] = {
            "environment": (environment, (device,)),
            "scoring": (scoring, (device, s)),
            "search": (search, (device, s, work, state)),
            "training": (training, (device, s)),
            "torchrun": (torchrun, (device, s, work / "torchrun", data, tiny, clock)),
            "detection": (detection, (device, s)),
            "export": (export, (device, s, work, data)),
            "latency": (latency, (device, s)),
            "search_workers": (search_workers, (device, s, work, state, clock)),
        }
        for name, (fn, args) in parts.items():
            need = NEED_S[name] * s.need_scale
            if unusable and name != "environment":
                report["parts"][name] = {"status": "skipped", "reason": unusable, "seconds": 0.0}
            elif clock.left() < need:
                report["parts"][name] = {"status": "skipped", "seconds": 0.0,
                                         "reason": f"time limit: {max(clock.left(), 0):.0f} s left, needs ~{need:.0f}"}
            else:
                report["parts"][name] = attempt(fn, *args)
            report["total_s"] = round(time.perf_counter() - started, 1)
            _write(out, report)
            print(f"gpu_check: {name} {report['parts'][name]['status']} in {report['parts'][name]['seconds']} s",
                  file=sys.stderr, flush=True)
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, cpu ...")
    p.add_argument("--tiny", action="store_true", help="shrink every part (small models, few candidates and steps)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file (default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder for the training runs (default: one built from "
                   "the embedded sample)")
    p.add_argument("--time-limit", type=float, default=480.0,
                   help="seconds; a part that would start with less than it needs left is skipped (default 480)")
    p.add_argument("--rank-work", type=Path, default=None, help=argparse.SUPPRESS)  # this script under torchrun
    args = p.parse_args()
    sizes = TINY if args.tiny else FULL
    if args.rank_work is not None:
        rank_work(args.rank_work, torch.device(args.device), sizes, args.data_dir)
        return 0
    report = check(torch.device(args.device), sizes, args.tiny, args.out, args.data_dir, args.time_limit)
    print(json.dumps(report))
    return 1 if "error" in report or any(part["status"] == "failed" for part in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
