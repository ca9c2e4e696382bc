"""Fused CPU kernels against float64 PyTorch (issue 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from blockswap.scoring.fisher import fisher_from_probes
from blockswap.scoring.fused import kernels as cpu_kernels

CL = torch.channels_last


def _rows(t: torch.Tensor) -> np.ndarray:
    return cpu_kernels.as_rows(t.float().contiguous(memory_format=CL))


@pytest.mark.parametrize("shape", [(16, 8, 8, 8), (8, 24, 6, 6), (4, 32, 5, 5), (4, 128, 3, 3), (3, 16, 1, 1)])
@pytest.mark.parametrize("relu", [True, False])
def test_batch_norm_forward_and_backward_match_float64(shape: tuple[int, ...], relu: bool) -> None:
    torch.manual_seed(0)
    c = shape[1]
    # mean >> std, where fp32 serial sums drift; rounded to float32 first so both sides see the same input
    x64 = (torch.randn(shape, dtype=torch.float64) * 0.2 + 3.0).float().double()
    w64, b64 = torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64) * 0.1
    g64 = torch.randn_like(x64)
    leaves = [t.clone().requires_grad_() for t in (x64, w64, b64)]
    y64 = F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], training=True, eps=1e-5)
    if relu:
        y64 = F.relu(y64)
    gx64, gw64, gb64 = torch.autograd.grad(y64, leaves, g64)

    x = x64.float().contiguous(memory_format=CL)
    out, gx = torch.empty_like(x), torch.empty_like(x)
    mean, var = cpu_kernels.batch_norm_forward(_rows(x), w64.numpy(), b64.numpy(), 1e-5, relu, _rows(out))
    # out was written through its (M, C) view
    torch.testing.assert_close(out.double(), y64.detach(), rtol=0, atol=2e-5)
    np.testing.assert_allclose(mean, x64.mean((0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(var, x64.var((0, 2, 3), unbiased=False).numpy(), rtol=1e-6)
    gw, gb = cpu_kernels.batch_norm_backward(_rows(g64), _rows(x), mean, var, w64.numpy(), b64.numpy(), 1e-5,
                                             relu, _rows(gx))
    torch.testing.assert_close(gx.double(), gx64, rtol=0, atol=1e-4 * gx64.abs().max().item())
    np.testing.assert_allclose(gw, gw64.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb, gb64.numpy(), rtol=1e-4, atol=1e-4)


def test_rows_are_folded_only_when_the_row_count_allows() -> None:
    folded, r = cpu_kernels._fold(np.zeros((64, 8), np.float32))
    assert (folded.shape, r) == ((8, 64), 8)
    assert cpu_kernels._fold(np.zeros((63, 8), np.float32))[1] == 1
    assert cpu_kernels._fold(np.zeros((64, 128), np.float32))[1] == 1


def test_fisher_potential_matches_the_formula_in_float64() -> None:
    torch.manual_seed(1)
    a, g = torch.randn(6, 16, 5, 5, dtype=torch.float64), torch.randn(6, 16, 5, 5, dtype=torch.float64)
    want = fisher_from_probes(a, g).item()
    got = cpu_kernels.fisher_potential(a.float().contiguous(memory_format=CL), g.float())  # g NCHW: converted
    assert got == pytest.approx(want, rel=1e-5)


def test_as_rows_is_a_view_and_rejects_other_layouts() -> None:
    x = torch.zeros(2, 3, 4, 5).contiguous(memory_format=CL)
    cpu_kernels.as_rows(x)[7, 1] = 1.0
    assert x[0, 1, 1, 2] == 1.0  # row 7 = (n 0, h 1, w 2)
    with pytest.raises(ValueError, match="channels_last"):
        cpu_kernels.as_rows(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="float32"):
        cpu_kernels.as_rows(torch.zeros(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=CL))


def test_threaded_kernels_equal_single_threaded(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    x = torch.randn(16, 32, 16, 16).contiguous(memory_format=CL)
    g = torch.randn_like(x)
    w, b = np.full(32, 1.5), np.full(32, 0.1)

    def run() -> tuple[torch.Tensor, ...]:
        out, gx = torch.empty_like(x), torch.empty_like(x)
        mean, var = cpu_kernels.batch_norm_forward(_rows(x), w, b, 1e-5, True, _rows(out))
        gw, gb = cpu_kernels.batch_norm_backward(_rows(g), _rows(x), mean, var, w, b, 1e-5, True, _rows(gx))
        fisher = cpu_kernels.fisher_potential(out, g)
        return out, gx, *map(torch.from_numpy, (mean, var, gw, gb)), torch.tensor(fisher)

    monkeypatch.setattr(cpu_kernels, "_MIN_CHUNK", 1024)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)  # three uneven chunks of the 2048 folded rows
        assert len(cpu_kernels._chunks(_rows(x))) == 3
        three = run()
    finally:
        torch.set_num_threads(threads)
    for a, b_ in zip(one, three):
        torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-7)


def test_out_must_be_a_contiguous_float32_array() -> None:
    x = np.zeros((8, 4), np.float32)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        cpu_kernels.batch_norm_forward(x, np.ones(4), np.zeros(4), 1e-5, True, np.zeros((4, 8), np.float32).T)


def test_kernels_compile_without_a_cache_location(monkeypatch: pytest.MonkeyPatch) -> None:
    real = cpu_kernels.njit

    def njit(**options):  # what Numba raises when no cache directory is writable
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return real(**options)

    monkeypatch.setattr(cpu_kernels, "njit", njit)

    def twice(x: float) -> float:
        return 2.0 * x

    assert cpu_kernels._jit(twice)(1.5) == 3.0
