"""Exporting a trained network for deployment as ONNX or TorchScript, with a parity check on the file written.

ONNX goes through `torch.onnx.export(..., dynamo=True)`, the maintained
exporter (it needs the `onnx` and `onnxscript` packages), with a dynamic batch
axis: input "images", output "logits". The model is serialised into one file
(weights inside, no `.data` beside it; a BlockSwap network is far below ONNX's
2 GB limit). TorchScript goes through `torch.jit.trace`, not `torch.jit.script`:
scripting fails on the networks' Python-level structure (the `Backbone`
attribute, loops over Python lists of stages), while tracing is exact for them
because no network here has data-dependent control flow; every input runs the
same operations. torch now marks TorchScript deprecated in favour of
`torch.export`, but it is still the format libtorch (C++) loads.

Both formats are written in eval mode on the CPU, atomically (a kill never leaves
half a file), then read back and run (onnxruntime on the CPU, `torch.jit.load`)
on a seeded batch whose size differs from the batch the export saw, which
proves the batch axis is dynamic; the largest absolute difference from
PyTorch's eval-mode logits is reported and must not exceed the tolerance.
onnx, onnxruntime and onnxscript are the `export` extra, imported only here,
inside functions: the rest of the package never needs them.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..space.networks import BlockNetwork
from ..util.errors import BlockSwapError
from ..util.rundir import atomic_file
from ..weights.teachers import RECORD_IT, load_network

__all__ = ["FORMATS", "INPUT_NAME", "OUTPUT_NAME", "ExportReport", "export_checkpoint", "export_network"]

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
_INSTALL = "pip install 'blockswap[export]'"
_RUNTIMES = {"onnx": "onnxruntime", "torchscript": "torchscript"}


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how closely the written file reproduces PyTorch's outputs."""

    checkpoint: str | None
    format: str
    out: str
    model: str
    blocks: list[str]
    input_shape: list[int]
    example_batch: int
    checked_batch: int
    max_abs_diff: float
    tolerance: float
    seconds: float
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON values."""
        return asdict(self)

    def summary(self) -> str:
        """The one line `blockswap export` prints: the file, its size, and the parity it reached."""
        return (f"wrote {self.out} ({self.bytes:,} bytes, {self.format}) in {self.seconds:.1f} s; "
                f"max |{_RUNTIMES[self.format]} - torch| = {self.max_abs_diff:.1e} "
                f"(tolerance {_exact(self.tolerance)}) at batch {self.checked_batch}")


def _exact(value: float) -> str:
    """The shortest scientific notation that reads back as `value` (1e-04, 2.5e-05), so no tolerance is misquoted."""
    return next(text for text in (f"{value:.{digits}e}" for digits in range(17)) if float(text) == value)


def _check_settings(fmt: str, batch: int, tolerance: float) -> None:
    """Refuse an unknown format, a batch that is not a positive whole number, a tolerance that is not >= 0."""
    if fmt not in FORMATS:
        raise BlockSwapError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise BlockSwapError(f"the parity-check batch must be a positive whole number, got {batch!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
            math.isfinite(tolerance) and tolerance >= 0):
        raise BlockSwapError(f"the tolerance must be a finite number >= 0, got {tolerance!r}")


def _onnx_packages() -> Any:
    """onnxruntime, once onnx and onnxscript (which the exporter needs) import too; else the install hint."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise BlockSwapError(f"ONNX export needs {', '.join(missing)} (not installed): {_INSTALL}")
    return importlib.import_module("onnxruntime")


def _check_target(out: str | Path, force: bool, reads: str | Path | None = None) -> Path:
    """The file to write. Refused: a folder, the weight file being exported (always), and any existing file unless
    `force` (it may be another run's weights)."""
    if not str(out).strip():
        raise BlockSwapError("--out is empty; name the file to write")
    out = Path(out)
    if out.is_dir():
        raise BlockSwapError(f"--out {out} is a folder; name the file to write")
    if reads is not None and out.exists() and out.resolve() == Path(reads).resolve():
        raise BlockSwapError(f"--out {out} is the weight file being exported; name another file")
    if out.exists() and not force:
        raise BlockSwapError(f"--out {out} exists; name a new file, or pass --force to replace it")
    return out


def _target(out: str | Path, force: bool) -> Path:
    """The checked file to write, its folder created."""
    out = _check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's notices a user cannot act on (torchvision ops it skips, deprecations inside torch)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _write_onnx(model: nn.Module, example: Tensor, out: Path) -> None:
    """Export with a dynamic batch axis, serialised into one file (weights inside)."""
    with _quiet_exporter():
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
    data = program.model_proto.SerializeToString()
    with atomic_file(out, "wb") as f:
        f.write(data)


def _run_onnx(out: Path, images: Tensor) -> Tensor:
    """The written file's outputs in onnxruntime on the CPU."""
    session = _onnx_packages().InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])


def _write_torchscript(model: nn.Module, example: Tensor, out: Path) -> None:
    """Trace (the networks have no data-dependent control flow) and save."""
    traced = torch.jit.trace(model, example, check_trace=False)  # the parity check runs at another batch
    with atomic_file(out, "wb") as f:
        torch.jit.save(traced, f)


def _run_torchscript(out: Path, images: Tensor) -> Tensor:
    """The written file's outputs, read back with `torch.jit.load`."""
    return torch.jit.load(str(out), map_location="cpu")(images)


_WRITERS: dict[str, Callable[[nn.Module, Tensor, Path], None]] = {"onnx": _write_onnx,
                                                                   "torchscript": _write_torchscript}
_RUNNERS: dict[str, Callable[[Path, Tensor], Tensor]] = {"onnx": _run_onnx, "torchscript": _run_torchscript}


def export_network(
    model: nn.Module,
    example_input: Tensor,
    fmt: str,
    out: str | Path,
    *,
    check_batch: int,
    tolerance: float = 1e-4,
    seed: int = 0,
    force: bool = False,
) -> ExportReport:
    """Write a CPU `model` in eval mode as `fmt` to `out`, then check the file against PyTorch at `check_batch`.

    The export sees `example_input`; the check runs the written file on
    `check_batch` seeded random images of the same shape, a batch size the
    export did not see. A largest absolute difference above `tolerance` (or a
    file that cannot run at that batch) raises BlockSwapError and keeps the
    file for inspection. The model's training mode is restored afterwards. An existing `out` is replaced only
    with `force`.
    """
    _check_settings(fmt, check_batch, tolerance)
    if fmt == "onnx":
        _onnx_packages()  # before anything is built or written
    if example_input.dim() < 2 or example_input.shape[0] == check_batch:
        raise BlockSwapError(f"the check batch ({check_batch}) must differ from the example input's batch "
                             f"(shape {list(example_input.shape)}), to show that the batch axis is dynamic")
    if any(t.device.type != "cpu" for t in chain(model.parameters(), model.buffers(), [example_input])):
        raise BlockSwapError("export runs on the CPU: move the model and the example input there (.cpu())")
    out = _target(out, force)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn((check_batch, *example_input.shape[1:]), generator=generator, dtype=example_input.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(images)
            if not isinstance(expected, Tensor):
                raise BlockSwapError(f"export takes a model that returns one tensor; it returned "
                                     f"{type(expected).__name__}")
            _WRITERS[fmt](model, example_input, out)
            try:
                got = _RUNNERS[fmt](out, images)
            except Exception as e:  # noqa: BLE001 - whatever the runtime raises, the file does not reproduce the model
                reason = " ".join(str(e).split())[:300]
                raise BlockSwapError(f"{_RUNTIMES[fmt]} cannot run {out} at batch {check_batch} "
                                     f"({type(e).__name__}: {reason}); the file is kept for inspection") from None
    finally:
        model.train(was_training)
    if got.shape != expected.shape:
        raise BlockSwapError(f"{out} gives outputs of shape {list(got.shape)} at batch {check_batch}, PyTorch "
                             f"{list(expected.shape)}; the file is kept for inspection")
    diff = (got.double() - expected.double()).abs().max().item()
    if not diff <= tolerance:  # a NaN difference fails too
        raise BlockSwapError(f"{fmt} parity check failed: max |{_RUNTIMES[fmt]} - torch| = {diff:.1e} exceeds the "
                             f"tolerance {_exact(tolerance)} at batch {check_batch}; the file is kept: {out}")
    named = isinstance(model, BlockNetwork)
    return ExportReport(
        checkpoint=None, format=fmt, out=str(out),
        model=model.backbone.name if named else type(model).__name__,
        blocks=list(model.block_names) if named else [],
        input_shape=list(example_input.shape[1:]), example_batch=example_input.shape[0], checked_batch=check_batch,
        max_abs_diff=diff, tolerance=tolerance, seconds=time.perf_counter() - start, bytes=out.stat().st_size,
    )


def _example_batch(check_batch: int) -> int:
    """The batch the export sees: 2 (torch.export fixes a batch of 1 as a constant), 3 when the check uses 2."""
    return 3 if check_batch == 2 else 2


def export_checkpoint(
    path: str | Path,
    fmt: str,
    out: str | Path,
    batch_size: int = 8,
    tolerance: float = 1e-4,
    seed: int = 0,
    force: bool = False,
) -> ExportReport:
    """Export the network of a weight file (student, teacher or bare ResNet state dict) and check its parity.

    The network is loaded with `weights.teachers.load_network` on the CPU; the
    export sees a batch of 2 images (3 when `batch_size` is 2) of the
    backbone's input size, and the check runs `batch_size` others (see
    `export_network`). `out` is never `path` itself, and an existing `out` is replaced only with `force`.
    """
    _check_settings(fmt, batch_size, tolerance)
    _check_target(out, force, reads=path)  # before the weights are read: a refused --out costs nothing
    model, genotype, _ = load_network(path, map_location="cpu", unnamed=RECORD_IT)
    b = genotype.backbone
    example = torch.randn(_example_batch(batch_size), b.in_channels, b.input_size, b.input_size,
                          generator=torch.Generator().manual_seed(seed + 1))
    report = export_network(model, example, fmt, out, check_batch=batch_size, tolerance=tolerance, seed=seed,
                            force=force)
    return replace(report, checkpoint=str(path))
