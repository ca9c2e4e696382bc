"""Fused CPU kernels for scoring: training-mode batch norm (+ ReLU) and the Fisher sums, compiled by Numba.

Eager PyTorch runs training-mode BN -> ReLU on an NHWC CPU tensor as about ten
memory-bound passes (sum, centre, square, sum, scale, clamp) forward and five
backward; these kernels take three forward (statistics, then normalise+ReLU)
and five backward (two reductions, one output pass), which roughly halves the
time a candidate spends outside its convolutions. Statistics and the backward's
reductions are accumulated in float64 (shifted by the first row for the
variance), so they are more precise than PyTorch's fp32 cascade sums.

Every kernel works on an (M, C) row-major float32 view of an NHWC tensor
(M = N*H*W). Rows are folded into wider rows (M/r, r*C) when C is small, so the
inner loop is long enough for the compiler to vectorise it. Kernels are
single-threaded: a search runs one single-threaded worker per core.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import Tensor

__all__ = ["as_rows", "batch_norm_forward", "batch_norm_backward", "fisher_potential"]

_MIN_ROW = 64  # widen rows to at least this many floats (four AVX-512 vectors)


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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _normalise(
    x: np.ndarray, mean: np.ndarray, scale: np.ndarray, bias: np.ndarray, relu: bool, out: np.ndarray
) -> None:
    m, k = x.shape
    for i in range(m):
        for j in range(k):
            v = (x[i, j] - mean[j]) * scale[j] + bias[j]
            out[i, j] = max(v, np.float32(0.0)) if relu else v


@njit(cache=True, nogil=True)
def _backward_sums(
    grad: np.ndarray, x: np.ndarray, mean: np.ndarray, invstd: np.ndarray, scale: np.ndarray,
    bias: np.ndarray, relu: bool,
) -> tuple[np.ndarray, np.ndarray]:
    m, k = x.shape
    sg = np.zeros(k)
    sgx = np.zeros(k)
    zero = np.float32(0.0)
    for i in range(m):
        for j in range(k):
            centred = x[i, j] - mean[j]
            g = grad[i, j]
            if relu and centred * scale[j] + bias[j] <= zero:
                g = zero
            sg[j] += g
            sgx[j] += np.float64(g) * np.float64(centred * invstd[j])
    return sg, sgx


@njit(cache=True, nogil=True)
def _backward_output(
    grad: np.ndarray, x: np.ndarray, mean: np.ndarray, invstd: np.ndarray, scale: np.ndarray,
    bias: np.ndarray, relu: bool, mean_g: np.ndarray, mean_gx: np.ndarray, out: np.ndarray,
) -> None:
    m, k = x.shape
    zero = np.float32(0.0)
    for i in range(m):
        for j in range(k):
            centred = x[i, j] - mean[j]
            g = grad[i, j]
            if relu and centred * scale[j] + bias[j] <= zero:
                g = zero
            out[i, j] = (scale[j]) * (g - mean_g[j] - centred * invstd[j] * mean_gx[j])


def batch_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float, relu: bool, out: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Write training-mode BN(x) (then ReLU if `relu`) of (M, C) rows to `out`; return float64 (mean, biased var)."""
    m, c = x.shape
    folded, r = _fold(x)
    shift = np.tile(x[0].astype(np.float64), r)
    s1, s2 = _shifted_sums(folded, shift)
    s1 = s1.reshape(r, c).sum(0) / m
    s2 = s2.reshape(r, c).sum(0) / m
    mean = x[0].astype(np.float64) + s1
    var = np.maximum(s2 - s1 * s1, 0.0)
    invstd = 1.0 / np.sqrt(var + eps)
    _normalise(folded, np.tile(mean.astype(np.float32), r), np.tile((invstd * weight).astype(np.float32), r),
               np.tile(bias.astype(np.float32), r), relu, out.reshape(folded.shape))
    return mean, var


def batch_norm_backward(
    grad: np.ndarray, x: np.ndarray, mean: np.ndarray, var: np.ndarray, weight: np.ndarray, bias: np.ndarray,
    eps: float, relu: bool, out: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Write dLoss/dx of `batch_norm_forward` to `out` given dLoss/d(output); return float64 (dweight, dbias)."""
    m, c = x.shape
    folded, r = _fold(x)
    grad = grad.reshape(folded.shape)
    invstd = 1.0 / np.sqrt(var + eps)
    args = (np.tile(mean.astype(np.float32), r), np.tile(invstd.astype(np.float32), r),
            np.tile((invstd * weight).astype(np.float32), r), np.tile(bias.astype(np.float32), r), relu)
    sg, sgx = _backward_sums(grad, folded, *args)
    sg, sgx = sg.reshape(r, c).sum(0), sgx.reshape(r, c).sum(0)
    _backward_output(grad, folded, *args, np.tile((sg / m).astype(np.float32), r),
                     np.tile((sgx / m).astype(np.float32), r), out.reshape(folded.shape))
    return sgx, sg


@njit(cache=True, nogil=True)
def _fisher(a: np.ndarray, g: np.ndarray) -> float:
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
    return 0.5 * total / n


def fisher_potential(activations: Tensor, gradients: Tensor) -> float:
    """Block Fisher potential (SPEC section 4) of NHWC float32 CPU tensors, summed in float64."""
    n, c, h, w = activations.shape
    a = as_rows(activations).reshape(n, h * w, c)
    g = as_rows(gradients.contiguous(memory_format=torch.channels_last)).reshape(n, h * w, c)
    return float(_fisher(a, g))
