"""Measured latency: a per-(slot, block type) table, whole-network timings, and the check of one against the other.

A latency budget needs each candidate's inference time without building and
timing every candidate. `measure_latency_table` times, on the current device,
every palette type as the whole block it would be at each slot (body,
shortcut, the block's BN/ReLU and residual add) on an input of that slot's
shape, plus the fixed parts (stem, head); a genotype's predicted latency is
the sum over its slots plus the fixed part. Slots of the same shape share one
timing. Every timing is `torch.utils.benchmark.Timer.blocked_autorange`: it
warms up while it sizes its blocks, synchronises CUDA, sets the thread count,
and the figure kept is the median over blocks. Inputs are channels-last fp32
in eval mode under `torch.inference_mode`, as `blockswap eval` times networks.

Tables are cached per device, model, input size, batch size and thread count
(`latency_table`, under $BLOCKSWAP_CACHE or ~/.cache/blockswap), and a search
copies the table it used into its folder, so a resumed search draws the same
candidates whatever a new measurement would say. `check_latency_table` times
whole sampled networks against the table's predictions: the sum leaves out
what happens between blocks (allocator, cache misses across block
boundaries), so expect an error of a few percent; `blockswap latency` reports it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..util.errors import BlockSwapError
from ..util.rundir import read_json, write_json_atomic
from ..util.system import usable_cores
from .backbones import Backbone
from .blocks import block_type, init_weights
from .genotype import Genotype
from .networks import PostActBlock, PreActBlock, build_skeleton

__all__ = ["LatencyTable", "LatencyCheck", "CACHE_ENV", "DEFAULT_MIN_TIME", "cache_dir", "device_name",
           "check_threads", "parse_ms", "time_call", "time_network", "measure_latency_table", "latency_table",
           "check_latency_table"]

CACHE_ENV = "BLOCKSWAP_CACHE"
DEFAULT_MIN_TIME = 0.1  # seconds each timing runs for (after its warm-up)
_FORMAT = 1
ROUNDS = 3  # each block is timed in this many rounds over all blocks; the median of the rounds is kept


def parse_ms(text: str | float) -> float:
    """A latency in milliseconds, `4`, `0.8` or `4ms`; BlockSwapError unless positive and finite."""
    raw = text.strip().lower().removesuffix("ms").strip() if isinstance(text, str) else text
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise BlockSwapError(f"cannot parse latency {text!r}; use milliseconds, e.g. 4 or 0.8") from None
    if not np.isfinite(value) or value <= 0:
        raise BlockSwapError(f"latency must be a positive number of milliseconds, got {text!r}")
    return value


def cache_dir() -> Path:
    """Where measured tables are kept: $BLOCKSWAP_CACHE, else $XDG_CACHE_HOME/blockswap, else ~/.cache/blockswap."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "blockswap"


def device_name(device: torch.device) -> str:
    """The hardware behind `device`: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def time_call(fn: Callable[[], Any], threads: int, min_time: float = DEFAULT_MIN_TIME) -> float:
    """Median seconds of one call of `fn` on `threads` CPU threads (CUDA synchronised), after a warm-up."""
    from torch.utils.benchmark import Timer  # here: it imports setuptools, which processes that never time skip

    measurement = Timer("fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_time)
    return float(measurement.median)


def _images(shape: tuple[int, ...], device: torch.device) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=gen).to(device).contiguous(memory_format=torch.channels_last)


def _eval_call(module: nn.Module | Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return module(x)

    return call


def _network_call(net: nn.Module, batch_size: int, device: torch.device) -> Callable[[], Any]:
    """One eval-mode forward pass of `net` on `device` on a channels-last batch of its backbone's input shape."""
    backbone: Backbone = net.backbone  # type: ignore[assignment]
    net = net.to(device, memory_format=torch.channels_last).eval()
    size = backbone.input_size
    return _eval_call(net, _images((batch_size, backbone.in_channels, size, size), device))


def _median_ms_of_rounds(calls: list[Callable[[], Any]], threads: int, min_time: float, bar: tqdm) -> list[float]:
    """Milliseconds per call of each of `calls`: timed in ROUNDS rounds over all of them, the median of its rounds.

    Rounds over every call share a slow spell of the machine among them instead of landing it on a few.
    """
    rounds: list[list[float]] = [[] for _ in calls]
    for _ in range(ROUNDS):
        for call, values in zip(calls, rounds):
            values.append(1000.0 * time_call(call, threads, min_time / ROUNDS))
            bar.update(1 / ROUNDS)
    return [float(np.median(values)) for values in rounds]


def time_network(net: nn.Module, batch_size: int, device: torch.device, threads: int,
                 min_time: float = DEFAULT_MIN_TIME,
                 wrap: Callable[[Callable[[], Any]], Callable[[], Any]] | None = None) -> float:
    """Median milliseconds of one eval-mode forward pass of `net` on a channels-last batch on `device`.

    The input's size and channels are the network's backbone's; `wrap` turns the call into another (e.g. under
    autocast).
    """
    call = _network_call(net, batch_size, device)
    return 1000.0 * time_call(wrap(call) if wrap else call, threads, min_time)


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds of each block type at each slot of a backbone, and of the fixed parts, on one device and batch."""

    backbone: Backbone
    batch_size: int
    threads: int
    device: str  # the device type: "cpu" or "cuda"
    device_name: str  # the hardware: CPU model name or GPU name
    torch_version: str
    fixed_ms: float  # stem and head
    ms: dict[str, tuple[float | None, ...]] = field(default_factory=dict)  # type -> per slot (None: not buildable)
    measured_at: str = ""

    @property
    def context(self) -> str:
        """Where the table holds, as errors and reports say it."""
        threads = "" if self.device == "cuda" else f", {self.threads} thread{'s' * (self.threads != 1)}"
        return f"at batch {self.batch_size} on {self.device} ({self.device_name}{threads})"

    def key(self) -> str:
        """What makes two measurements interchangeable: device, torch, backbone (input size too), batch, threads."""
        data = json.dumps([self.device, self.device_name, self.torch_version, self.backbone.to_dict(),
                           self.batch_size, self.threads], sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def matrix(self, backbone: Backbone, type_names: Iterable[str]) -> np.ndarray:
        """(slots, types) ms in `type_names` order, -1 where a type cannot be built; refuses another backbone."""
        if backbone != self.backbone:
            raise BlockSwapError(f"the latency table is for {self.backbone.name} ({self.backbone.to_dict()}), "
                                 f"not {backbone.name}")
        names = list(type_names)
        missing = [n for n in names if n not in self.ms]
        if missing:
            raise BlockSwapError(f"the latency table has no timings for block type(s) {', '.join(missing)}; "
                                 "measure them (blockswap latency --palette ...)")
        return np.array([[-1.0 if v is None else v for v in self.ms[n]] for n in names]).T

    def predict(self, genotype: Genotype) -> float:
        """Predicted milliseconds of the whole network: the fixed part plus each slot's block."""
        names = list(dict.fromkeys(genotype.blocks))
        columns = [names.index(name) for name in genotype.blocks]
        values = self.matrix(genotype.backbone, names)[np.arange(genotype.backbone.num_blocks), columns]
        if (values < 0).any():
            raise BlockSwapError(f"genotype {genotype} has a block type its slot cannot hold")
        return float(self.fixed_ms + values.sum())

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "backbone": self.backbone.to_dict(), "batch_size": self.batch_size,
                "threads": self.threads, "device": self.device, "device_name": self.device_name,
                "torch_version": self.torch_version, "measured_at": self.measured_at, "fixed_ms": self.fixed_ms,
                "ms": {name: list(values) for name, values in self.ms.items()}}

    @classmethod
    def from_dict(cls, data: Any, source: str = "latency table") -> LatencyTable:
        """The table `to_dict` wrote; BlockSwapError naming `source` when it is not one."""
        try:
            if data["format"] != _FORMAT:
                raise BlockSwapError(f"{source}: format {data['format']!r} is not {_FORMAT}; measure it again")
            backbone = Backbone.from_dict(data["backbone"])
            ms = {str(k): tuple(None if v is None else float(v) for v in values) for k, values in data["ms"].items()}
            if any(len(v) != backbone.num_blocks for v in ms.values()):
                raise BlockSwapError(f"{source}: a type's timings do not match {backbone.name}'s "
                                     f"{backbone.num_blocks} slots")
            fixed = float(data["fixed_ms"])
            bad = [k for k, v in ms.items() if any(t is not None and not (math.isfinite(t) and t > 0) for t in v)]
            if bad or not (math.isfinite(fixed) and fixed >= 0):
                raise BlockSwapError(f"{source}: a timing is negative, zero or not finite "
                                     f"({bad[0] if bad else 'fixed_ms'}); no measurement gives that: measure "
                                     "it again")
            return cls(backbone, int(data["batch_size"]), int(data["threads"]), str(data["device"]),
                       str(data["device_name"]), str(data["torch_version"]), fixed, ms,
                       str(data.get("measured_at", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BlockSwapError(f"{source} is not a latency table ({type(e).__name__}: {e})") from None

    def save(self, path: str | Path) -> None:
        """Write the table as JSON (atomically, creating the folder)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        return cls.from_dict(read_json(Path(path), "latency table"), str(path))


def _block(backbone: Backbone, slot: int, name: str) -> nn.Module:
    """The whole block `name` would be at `slot` (body, shortcut, BN/ReLU, add), SPEC-initialised, in eval mode."""
    shape = backbone.block_shapes()[slot]
    body = block_type(name).build(shape.c_in, shape.c_out, shape.stride, backbone.post_activation)
    block = (PostActBlock if backbone.post_activation else PreActBlock)(body, shape)
    init_weights(block)
    return block.eval()


def _fixed_ms(backbone: Backbone, device: torch.device, batch_size: int, threads: int, min_time: float) -> float:
    """Milliseconds of the stem and of the head of the network, timed apart on inputs of their shapes."""
    net = build_skeleton(backbone).to(device, memory_format=torch.channels_last).eval()
    stem_in = _images((batch_size, backbone.in_channels, backbone.input_size, backbone.input_size), device)
    last = backbone.block_shapes()[-1]
    head_in = _images((batch_size, last.c_out, last.size_out, last.size_out), device)
    return 1000.0 * (time_call(_eval_call(net.forward_stem, stem_in), threads, min_time)
                     + time_call(_eval_call(net.forward_head, head_in), threads, min_time))


def check_threads(threads: Iterable[int]) -> None:
    """Refuse a timing thread count that is not a positive whole number, or above this machine's usable cores:
    more threads than cores time their contention, not the network."""
    cores = usable_cores()
    for n in threads:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BlockSwapError(f"latency threads must be a positive whole number, got {n!r}")
        if n > cores:
            raise BlockSwapError(f"latency threads {n} is more than the {cores} CPU cores this process may use; time "
                                 f"with at most {cores} (more threads than cores measure their contention)")


def measure_latency_table(
    backbone: Backbone,
    types: Iterable[str],
    device: torch.device,
    batch_size: int = 1,
    threads: int = 1,
    min_time: float = DEFAULT_MIN_TIME,
    progress: bool = True,
    known: LatencyTable | None = None,
) -> LatencyTable:
    """Time every type of `types` at every slot of `backbone` (once per distinct slot shape) on `device`.

    Types `known` already holds keep its timings, so a table grows by what is missing.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BlockSwapError(f"latency batch size must be a positive whole number, got {batch_size!r}")
    check_threads([threads])
    names = list(dict.fromkeys(types))
    for name in names:
        block_type(name)
    shapes = backbone.block_shapes()
    todo = [name for name in names if known is None or name not in known.ms]
    jobs = sorted({(shapes[i], name) for name in todo for i in range(len(shapes))
                   if block_type(name).is_valid(shapes[i].c_in, shapes[i].c_out, shapes[i].stride)},
                  key=lambda job: (shapes.index(job[0]), names.index(job[1])))
    with torch.random.fork_rng(devices=[]), tqdm(total=len(jobs) + (known is None), desc="timing blocks",
                                                 unit="block", disable=not progress, dynamic_ncols=True) as bar:
        torch.manual_seed(0)
        fixed = known.fixed_ms if known is not None else _fixed_ms(backbone, device, batch_size, threads, min_time)
        bar.update(known is None)
        calls = []
        for shape, name in jobs:
            block = _block(backbone, shapes.index(shape), name).to(device, memory_format=torch.channels_last)
            calls.append(_eval_call(block, _images((batch_size, shape.c_in, shape.size_in, shape.size_in), device)))
        timings = dict(zip(jobs, _median_ms_of_rounds(calls, threads, min_time, bar)))
    ms = dict(known.ms) if known is not None else {}
    for name in todo:
        ms[name] = tuple(timings.get((s, name)) for s in shapes)
    return LatencyTable(backbone, batch_size, threads, device.type, device_name(device), torch.__version__, fixed,
                        ms, known.measured_at if known is not None and not todo
                        else datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _cache_path(table: LatencyTable) -> Path:
    return cache_dir() / "latency" / f"{table.backbone.name}-b{table.batch_size}-t{table.threads}-{table.key()}.json"


def latency_table(
    backbone: Backbone,
    types: Iterable[str],
    device: torch.device,
    batch_size: int = 1,
    threads: int = 1,
    min_time: float = DEFAULT_MIN_TIME,
    refresh: bool = False,
    progress: bool = True,
) -> tuple[LatencyTable, Path]:
    """The cached table for this device, backbone, batch and thread count, measuring what it lacks; and its file.

    `refresh` measures everything again. A cache file that cannot be read, or that was measured on another
    device, CPU/GPU model or torch version (a file copied from elsewhere), is measured again and replaced.
    """
    probe = LatencyTable(backbone, batch_size, threads, device.type, device_name(device), torch.__version__, 0.0)
    path = _cache_path(probe)
    known = None
    if path.is_file() and not refresh:
        try:
            known = LatencyTable.load(path)
        except (BlockSwapError, OSError):
            known = None
        if known is not None and known.key() != probe.key():  # measured on another device or torch: not ours
            known = None
    names = list(types)
    if known is not None and all(n in known.ms for n in names):
        return known, path
    check_threads([threads])
    try:  # before measuring: minutes of timings would otherwise end in an error about the folder
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise BlockSwapError(f"cannot keep latency tables in {path.parent} ({e.strerror}): set ${CACHE_ENV} to a "
                             "folder you can write") from e
    table = measure_latency_table(backbone, names, device, batch_size, threads, min_time, progress, known)
    table.save(path)
    return table, path


@dataclass(frozen=True)
class LatencyCheck:
    """One whole network timed against the table's prediction."""

    genotype: Genotype
    predicted_ms: float
    measured_ms: float

    @property
    def error_pct(self) -> float:
        """(predicted - measured) / measured, in percent: positive when the table overestimates."""
        return 100.0 * (self.predicted_ms - self.measured_ms) / self.measured_ms

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": list(self.genotype.blocks), "predicted_ms": self.predicted_ms,
                "measured_ms": self.measured_ms, "error_pct": self.error_pct}


def check_latency_table(table: LatencyTable, genotypes: Iterable[Genotype], device: torch.device,
                        min_time: float = 5 * DEFAULT_MIN_TIME, progress: bool = True) -> list[LatencyCheck]:
    """Time each genotype's whole network on `device` as the table was measured, beside the table's prediction.

    Networks are timed in rounds over all of them (median of the rounds), so a slow spell of the machine
    spreads over every network instead of landing on one.
    """
    genotypes = list(genotypes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        calls = [_network_call(g.build(), table.batch_size, device) for g in genotypes]
    with tqdm(total=len(calls), desc="timing whole networks", unit="net", disable=not progress,
              dynamic_ncols=True) as bar:
        measured = _median_ms_of_rounds(calls, table.threads, min_time, bar)
    return [LatencyCheck(g, table.predict(g), ms) for g, ms in zip(genotypes, measured)]
