"""Evaluating a trained network: CIFAR-10 test error, parameters, MACs and latency.

The figures the paper reports for each student (test error, parameter count with
pruned weights not counted, MACs for one 32x32 image), plus the inference
latency a deployment cares about, timed on the current device: milliseconds
per image at batch 1 and images per second at batch 128 (median of repeats,
after warm-up, with the device synchronised around each timed call).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import load_network
from .data import ImageSet, load_split
from .folders import FolderSplit, check_classes, default_loader_workers
from .precision import autocast, resolve_precision
from .pruning import nonzero_params

__all__ = ["EvalReport", "error_sums", "time_forward", "evaluate_checkpoint"]


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
    latency_ms_batch1: float
    images_per_s_batch128: float
    device: str
    precision: str

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def error_sums(
    model: nn.Module,
    data: ImageSet | FolderSplit,
    batch_size: int = 500,
    precision: str = "fp32",
    channels_last: bool = False,
) -> Tensor:
    """[summed cross-entropy, misclassified images, images] over `data` in eval mode, on data's device.

    Sums rather than means, so processes holding shards can all-reduce them.
    """
    was_training = model.training
    model.eval()
    device = data.device
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    try:
        for x, y in data.eval_batches(batch_size):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum")
            sums[1] += (logits.argmax(1) != y).sum()
            sums[2] += len(y)
    finally:
        model.train(was_training)
    return sums


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_forward(model: nn.Module, x: Tensor, precision: str = "fp32", warmup: int = 3, repeats: int = 20) -> float:
    """Median seconds of one eval-mode forward pass on `x`."""
    model.eval()
    times = []
    for i in range(warmup + repeats):
        _synchronize(x.device)
        start = time.perf_counter()
        with autocast(x.device, precision):
            model(x)
        _synchronize(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def evaluate_checkpoint(
    path: str | Path,
    data_dir: str | Path,
    device: torch.device,
    precision: str = "auto",
    batch_size: int = 500,
    test_subset: int | None = None,
    repeats: int = 20,
    loader_workers: int | None = None,
) -> EvalReport:
    """Test error, non-zero parameters, MACs and latency of the network stored in `path`.

    The test images are CIFAR-10's test set, or the `val/` split of an image
    folder (decoded by `loader_workers` processes, default `default_loader_workers()`).
    """
    precision = resolve_precision(precision, device)
    model, genotype, _ = load_network(path, map_location="cpu")
    model = model.to(device, memory_format=torch.channels_last).eval()
    workers = default_loader_workers() if loader_workers is None else loader_workers
    test = load_split(data_dir, False, genotype.backbone.input_size, workers)
    check_classes(genotype.backbone, test, data_dir)
    if test_subset is not None:
        test = test.subset(test_subset)
    loss, errors, n = error_sums(model, test.to(device), batch_size, precision, channels_last=True).tolist()
    size = genotype.backbone.input_size
    one = torch.randn(1, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    batch = torch.randn(128, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    return EvalReport(
        checkpoint=str(path),
        model=genotype.backbone.name,
        blocks=list(genotype.blocks),
        test_error_pct=100.0 * errors / n,
        test_loss=loss / n,
        test_images=int(n),
        params=nonzero_params(model),
        macs=genotype.macs(),
        latency_ms_batch1=1000.0 * time_forward(model, one, precision, repeats=repeats),
        images_per_s_batch128=128 / time_forward(model, batch, precision, repeats=max(1, repeats // 4)),
        device=str(device),
        precision=precision,
    )
