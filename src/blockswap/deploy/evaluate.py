"""Evaluating a trained network: CIFAR-10 test error, parameters, MACs and latency.

The figures the paper reports for each student (test error, parameter count with
pruned weights not counted, MACs for one 32x32 image), plus the inference
latency a deployment cares about, timed on the current device at the batch
sizes and CPU thread counts asked for: milliseconds per batch and images per
second, each the median over blocks of repeated calls after a warm-up
(`blockswap.space.latency.time_network`, as the latency tables are measured).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..data import load_split, take_subset
from ..data.imagefolder import check_classes, default_loader_workers
from ..space.latency import DEFAULT_MIN_TIME, check_threads, device_name, time_network
from ..train.pruning import nonzero_params
from ..train.training import error_sums
from ..util.options import (
    check_fields,
    each,
    option,
    positive,
    positive_int,
    positive_seconds,
    whole_numbers,
)
from ..util.precision import PRECISIONS, autocast, resolve_precision
from ..weights.teachers import RECORD_IT, load_network

__all__ = ["EvalConfig", "EvalReport", "latency_rows", "evaluate_checkpoint"]

_POSITIVE_INTS = each(positive_int, "one or more positive whole numbers")


@dataclass
class EvalConfig:
    """What `evaluate_checkpoint` measures: the network of a weight file, on which test images, and how it is timed."""

    checkpoint: str = field(metadata=option(
        "weight file: best.pt, last.pt or checkpoint.pt of `blockswap train`, or a bare BasicBlock ResNet's"))
    data_dir: str = field(metadata=option(
        "folder holding cifar-10-batches-py (downloaded there, MD5-checked, if missing), or an image folder (its "
        "val/ split is the test set)"))
    precision: str = field(default="auto", metadata=option(
        "auto: bf16 autocast on CUDA and on CPUs with AVX512-BF16/AMX, else fp32", choices=PRECISIONS))
    batch_size: int = field(default=500, metadata=option(
        "test images per forward pass of the error measurement", check=positive_int))
    test_subset: int | None = field(default=None, metadata=option(
        "first N test images only", check=positive_int))
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 128], metadata=option(
        "comma-separated batch sizes the latency is timed at", parse=whole_numbers, metavar="N,N",
        check=_POSITIVE_INTS))
    latency_threads: list[int] | None = field(default=None, metadata=option(
        "comma-separated CPU thread counts the latency is timed with (default: the threads torch uses here)",
        parse=whole_numbers, metavar="N,N", check=_POSITIVE_INTS))
    min_time: float = field(default=DEFAULT_MIN_TIME, metadata=option(
        "seconds each timing runs for after its warm-up; longer is steadier", parse=positive_seconds, check=positive))

    def __post_init__(self) -> None:
        """Refuse settings that cannot be measured, before any work is done, naming the first bad one."""
        self.checkpoint, self.data_dir = str(self.checkpoint), str(self.data_dir)
        check_fields(self)
        self.latency_batch_sizes = list(self.latency_batch_sizes)
        if self.latency_threads is not None:
            self.latency_threads = list(self.latency_threads)


@dataclass(frozen=True)
class EvalReport:
    """What `blockswap eval` prints as JSON."""

    checkpoint: str
    model: str
    blocks: list[str]
    test_error_pct: float
    test_loss: float
    test_images: int
    params: int
    macs: int
    latency: list[dict[str, float]]  # one row per (batch size, threads): batch_size, threads, ms, images_per_s
    device: str
    device_name: str
    precision: str

    def to_dict(self) -> dict:
        return asdict(self)


def _check_latency_settings(batch_sizes: Sequence[int], threads: Sequence[int], min_time: float) -> None:
    """Refuse latency settings that cannot be timed, before any work is done."""
    _POSITIVE_INTS("latency batch sizes", list(batch_sizes))
    _POSITIVE_INTS("latency thread counts", list(threads))
    positive("min_time", min_time)


def latency_rows(model: nn.Module, device: torch.device, batch_sizes: Sequence[int], threads: Sequence[int],
                 precision: str = "fp32", min_time: float = DEFAULT_MIN_TIME) -> list[dict[str, float]]:
    """Median milliseconds per batch and images per second of `model` for every batch size and thread count."""
    _check_latency_settings(batch_sizes, threads, min_time)

    def under_precision(call: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with autocast(device, precision):
                return call()
        return run

    rows = []
    for n in batch_sizes:
        for t in threads:
            ms = time_network(model, n, device, t, min_time, wrap=under_precision)
            rows.append({"batch_size": n, "threads": t, "ms": ms, "images_per_s": 1000.0 * n / ms})
    return rows


def evaluate_checkpoint(config: EvalConfig, device: torch.device | None = None,
                        loader_workers: int | None = None) -> EvalReport:
    """Test error, non-zero parameters, MACs and latency of the network in `config.checkpoint`, on `device`
    (default: cuda if available).

    The test images are CIFAR-10's test set, or the `val/` split of an image
    folder (decoded by `loader_workers` processes, default `default_loader_workers()`).
    Latency is timed at every batch size of `config.latency_batch_sizes` with every
    thread count of `config.latency_threads` (default: the threads torch uses now).
    """
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(config.precision, device)
    threads = [torch.get_num_threads()] if config.latency_threads is None else config.latency_threads
    check_threads(config.latency_threads or [])
    model, genotype, _ = load_network(config.checkpoint, map_location="cpu", unnamed=RECORD_IT)
    model = model.to(device, memory_format=torch.channels_last).eval()
    workers = default_loader_workers() if loader_workers is None else loader_workers
    test = load_split(config.data_dir, False, genotype.backbone.input_size, workers)
    check_classes(genotype.backbone, test, config.data_dir)
    test = take_subset(test, config.test_subset, "--test-subset", config.data_dir)
    loss, errors, n = error_sums(model, test.to(device), config.batch_size, precision, channels_last=True).tolist()
    return EvalReport(
        checkpoint=config.checkpoint,
        model=genotype.backbone.name,
        blocks=list(genotype.blocks),
        test_error_pct=100.0 * errors / n,
        test_loss=loss / n,
        test_images=int(n),
        params=nonzero_params(model),
        macs=genotype.macs(),
        latency=latency_rows(model, device, config.latency_batch_sizes, threads, precision, config.min_time),
        device=str(device),
        device_name=device_name(device),
        precision=precision,
    )
