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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import load_split
from ..data.imagefolder import check_classes, default_loader_workers
from ..space.latency import DEFAULT_MIN_TIME, device_name, time_network
from ..train.pruning import nonzero_params
from ..train.training import error_sums
from ..util.errors import BlockSwapError
from ..util.precision import autocast, resolve_precision
from ..weights.teachers import load_network

__all__ = ["EvalReport", "latency_rows", "evaluate_checkpoint"]


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
    for what, values in (("batch size", batch_sizes), ("thread count", threads)):
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise BlockSwapError(f"latency {what}s must be positive whole numbers, got {list(values)!r}")
    if not (isinstance(min_time, (int, float)) and min_time > 0):
        raise BlockSwapError(f"the time each latency is measured for must be positive seconds, got {min_time!r}")


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


def evaluate_checkpoint(
    path: str | Path,
    data_dir: str | Path,
    device: torch.device,
    precision: str = "auto",
    batch_size: int = 500,
    test_subset: int | None = None,
    latency_batch_sizes: Sequence[int] = (1, 128),
    latency_threads: Sequence[int] | None = None,
    min_time: float = DEFAULT_MIN_TIME,
    loader_workers: int | None = None,
) -> EvalReport:
    """Test error, non-zero parameters, MACs and latency of the network stored in `path`.

    The test images are CIFAR-10's test set, or the `val/` split of an image
    folder (decoded by `loader_workers` processes, default `default_loader_workers()`).
    Latency is timed at every batch size of `latency_batch_sizes` with every
    thread count of `latency_threads` (default: the threads torch uses now).
    """
    precision = resolve_precision(precision, device)
    threads = [torch.get_num_threads()] if latency_threads is None else list(latency_threads)
    _check_latency_settings(latency_batch_sizes, threads, min_time)
    model, genotype, _ = load_network(path, map_location="cpu")
    model = model.to(device, memory_format=torch.channels_last).eval()
    workers = default_loader_workers() if loader_workers is None else loader_workers
    test = load_split(data_dir, False, genotype.backbone.input_size, workers)
    check_classes(genotype.backbone, test, data_dir)
    if test_subset is not None:
        test = test.subset(test_subset)
    loss, errors, n = error_sums(model, test.to(device), batch_size, precision, channels_last=True).tolist()
    return EvalReport(
        checkpoint=str(path),
        model=genotype.backbone.name,
        blocks=list(genotype.blocks),
        test_error_pct=100.0 * errors / n,
        test_loss=loss / n,
        test_images=int(n),
        params=nonzero_params(model),
        macs=genotype.macs(),
        latency=latency_rows(model, device, latency_batch_sizes, threads, precision, min_time),
        device=str(device),
        device_name=device_name(device),
        precision=precision,
    )
