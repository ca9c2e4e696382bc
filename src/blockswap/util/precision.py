"""Mixed precision: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

CUDA GPUs report bf16 support through torch; on CPUs bf16 only pays off with the
AVX512-BF16 or AMX-BF16 instructions (without them oneDNN emulates bf16 and runs
slower than fp32), which Linux lists in /proc/cpuinfo.
"""

from __future__ import annotations

import contextlib
from functools import cache
from pathlib import Path

import torch

from .errors import BlockSwapError

__all__ = ["PRECISIONS", "cpu_has_bf16", "bf16_supported", "resolve_precision", "autocast"]

PRECISIONS = ("auto", "bf16", "fp32")


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX-BF16 (False where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively on `device`."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where supported, else "fp32"; an explicit choice is checked against the device."""
    if precision not in PRECISIONS:
        raise BlockSwapError(f"unknown precision {precision!r}; valid choices: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise BlockSwapError(f"bf16 autocast is not available on {device}")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for "bf16", a no-op for "fp32"."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
