"""Fused CPU kernels for scoring: training-mode batch norm (+ ReLU) and the Fisher sums, compiled by Numba.

Eager PyTorch runs training-mode BN -> ReLU on an NHWC CPU tensor as about ten
memory-bound passes (sum, centre, square, sum, scale, clamp) forward and about eight
backward; these kernels take three forward (statistics, then normalise+ReLU)
and five backward (two reductions, one output pass), which roughly halves the
time a candidate spends outside its convolutions. Statistics and the backward's
reductions are accumulated in float64 (shifted by the first row for the
variance), so they are more precise than PyTorch's fp32 cascade sums.

Every kernel works on an (M, C) row-major float32 view of an NHWC tensor
(M = N*H*W). Rows are folded into wider rows (M/r, r*C) when C is small, so the
inner loop is long enough for the compiler to vectorise it. A search runs one
single-threaded worker per core; a process with more torch threads splits the
rows into that many chunks and runs the kernels (which release the GIL) on a
thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from numba import njit
from torch import Tensor

__all__ = ["fisher_potential", "as_rows", "batch_norm_forward", "batch_norm_backward"]

_MIN_ROW = 64  # widen rows to at least this many floats (four AVX-512 vectors)
_MIN_CHUNK = 1 << 16  # the smallest share of floats worth handing to another thread
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _jit(fn: Callable) -> Callable:
    """Numba-compile `fn` without the GIL, cached on disk where Numba finds a writable place for it."""
    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # no writable cache location (read-only install, no home): compile per process
        return njit(nogil=True)(fn)


def _parallel(fn: Callable, jobs: Sequence[tuple]) -> list[Any]:
    """fn(*job) for every job, on a pool of torch.get_num_threads() threads when there is more than one job."""
    global _pool, _pool_size
    if len(jobs) == 1:
        return [fn(*jobs[0])]
    if _pool is None or _pool_size < len(jobs):
        _pool, _pool_size = ThreadPoolExecutor(len(jobs), thread_name_prefix="blockswap-kernels"), len(jobs)
    return list(_pool.map(lambda job: fn(*job), jobs))


def _chunks(rows: np.ndarray) -> list[slice]:
    """Contiguous row ranges of `rows`, one per torch thread, none smaller than _MIN_CHUNK floats."""
    m = rows.shape[0]
    n = max(1, min(torch.get_num_threads(), rows.size // _MIN_CHUNK))
    bounds = [m * i // n for i in range(n + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _per_column(values: np.ndarray, r: int) -> np.ndarray:
    """Per-channel `values` as float32, repeated for each of the r channel groups of a folded row."""
    return np.tile(values.astype(np.float32), r)


def _check_out(out: np.ndarray, x: np.ndarray) -> None:
    if out.shape != x.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {x.shape}")


def as_rows(x: Tensor) -> np.ndarray:
    """The (N*H*W, C) float32 NumPy view of a channels-last contiguous 4-D CPU tensor (no copy)."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
        raise ValueError(f"expected a 4-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)} on {x.device}")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("expected a channels_last contiguous tensor")
    n, c, h, w = x.shape
    return x.detach().permute(0, 2, 3, 1).reshape(n * h * w, c).numpy()


def _fold(rows: np.ndarray) -> tuple[np.ndarray, int]:
    """`rows` reshaped (M/r, r*C) for the largest power-of-two r with r*C <= max(C, _MIN_ROW) dividing M."""
    m, c = rows.shape
    r = 1
    while 2 * r * c <= _MIN_ROW and m % (2 * r) == 0:
        r *= 2
    return rows.reshape(m // r, r * c), r


@_jit
def _shifted_sums(x: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m, k = x.shape
    s1 = np.zeros(k)
    s2 = np.zeros(k)
    for i in range(m):
        for j in range(k):
            d = np.float64(x[i, j]) - shift[j]
            s1[j] += d
            s2[j] += d * d
    return s1, s2


@_jit
def _normalise(
    x: np.ndarray, mean: np.ndarray, scale: np.ndarray, bias: np.ndarray, relu: bool, out: np.ndarray
) -> None:
    m, k = x.shape
    for i in range(m):
        for j in range(k):
            v = (x[i, j] - mean[j]) * scale[j] + bias[j]
            out[i, j] = max(v, np.float32(0.0)) if relu else v


@_jit
def _relu_grad(grad: np.float32, centred: np.float32, scale: np.float32, bias: np.float32, relu: bool) -> np.float32:
    """`grad` where the forward's ReLU passed its input (same expression as `_normalise`), else 0."""
    return np.float32(0.0) if relu and centred * scale + bias <= np.float32(0.0) else grad


@_jit
def _backward_sums(
    grad: np.ndarray, x: np.ndarray, mean: np.ndarray, invstd: np.ndarray, scale: np.ndarray,
    bias: np.ndarray, relu: bool,
) -> tuple[np.ndarray, np.ndarray]:
    m, k = x.shape
    sg = np.zeros(k)
    sgx = np.zeros(k)
    for i in range(m):
        for j in range(k):
            centred = x[i, j] - mean[j]
            g = _relu_grad(grad[i, j], centred, scale[j], bias[j], relu)
            sg[j] += g
            sgx[j] += np.float64(g) * np.float64(centred * invstd[j])
    return sg, sgx


@_jit
def _backward_output(
    grad: np.ndarray, x: np.ndarray, mean: np.ndarray, invstd: np.ndarray, scale: np.ndarray,
    bias: np.ndarray, relu: bool, mean_g: np.ndarray, mean_gx: np.ndarray, out: np.ndarray,
) -> None:
    m, k = x.shape
    for i in range(m):
        for j in range(k):
            centred = x[i, j] - mean[j]
            g = _relu_grad(grad[i, j], centred, scale[j], bias[j], relu)
            out[i, j] = scale[j] * (g - mean_g[j] - centred * invstd[j] * mean_gx[j])


def batch_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, relu: bool, out: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Write training-mode BN(x) (then ReLU if `relu`) of (M, C) rows to `out`; return float64 (mean, biased var)."""
    _check_out(out, x)
    m, c = x.shape
    folded, r = _fold(x)
    out = out.reshape(folded.shape)
    parts = _chunks(folded)
    shift = x[0].astype(np.float64)
    shifts = np.tile(shift, r)
    sums = _parallel(_shifted_sums, [(folded[p], shifts) for p in parts])
    s1 = sum(s for s, _ in sums).reshape(r, c).sum(0) / m
    s2 = sum(s for _, s in sums).reshape(r, c).sum(0) / m
    mean = shift + s1
    var = np.maximum(s2 - s1 * s1, 0.0)
    invstd = 1.0 / np.sqrt(var + eps)
    params = (_per_column(mean, r), _per_column(invstd * weight, r), _per_column(bias, r), relu)
    _parallel(_normalise, [(folded[p], *params, out[p]) for p in parts])
    return mean, var


def batch_norm_backward(
    grad: np.ndarray, x: np.ndarray, mean: np.ndarray, var: np.ndarray, weight: np.ndarray, bias: np.ndarray,
    eps: float, relu: bool, out: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Write dLoss/dx of `batch_norm_forward` to `out` given dLoss/d(output); return float64 (dweight, dbias)."""
    _check_out(out, x)
    m, c = x.shape
    folded, r = _fold(x)
    grad, out = grad.reshape(folded.shape), out.reshape(folded.shape)
    parts = _chunks(folded)
    invstd = 1.0 / np.sqrt(var + eps)
    params = (_per_column(mean, r), _per_column(invstd, r), _per_column(invstd * weight, r), _per_column(bias, r), relu)
    sums = _parallel(_backward_sums, [(grad[p], folded[p], *params) for p in parts])
    sg = sum(s for s, _ in sums).reshape(r, c).sum(0)
    sgx = sum(s for _, s in sums).reshape(r, c).sum(0)
    means = (_per_column(sg / m, r), _per_column(sgx / m, r))
    _parallel(_backward_output, [(grad[p], folded[p], *params, *means, out[p]) for p in parts])
    return sgx, sg


@_jit
def _fisher_sum(a: np.ndarray, g: np.ndarray) -> float:
    n, p, c = a.shape
    total = 0.0
    acc = np.zeros(c)
    for s in range(n):
        acc[:] = 0.0
        for i in range(p):
            for j in range(c):
                acc[j] += np.float64(a[s, i, j]) * np.float64(g[s, i, j])
        for j in range(c):
            total += acc[j] * acc[j]
    return total


def fisher_potential(activations: Tensor, gradients: Tensor) -> float:
    """Block Fisher potential (SPEC section 4) of NHWC float32 CPU tensors, summed in float64."""
    n, c, h, w = activations.shape
    a = as_rows(activations).reshape(n, h * w, c)
    g = as_rows(gradients.contiguous(memory_format=torch.channels_last)).reshape(n, h * w, c)
    samples = _chunks(a.reshape(n, -1))
    return 0.5 * sum(_parallel(_fisher_sum, [(a[s], g[s]) for s in samples])) / n
