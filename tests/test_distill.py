"""Attention-transfer and KD losses against hand computations (SPEC section 5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from blockswap.train.distill import DistillConfig, attention_loss, attention_map, kd_loss, student_loss
from blockswap.util.errors import BlockSwapError


def _hand_map(x: list[list[list[float]]]) -> list[float]:
    """a(x) for one image given as channels x rows x cols nested lists, written out longhand."""
    channels, rows, cols = len(x), len(x[0]), len(x[0][0])
    means = [sum(x[c][i][j] ** 2 for c in range(channels)) / channels for i in range(rows) for j in range(cols)]
    norm = math.sqrt(sum(m * m for m in means))
    return [m / norm for m in means]


def test_attention_map_matches_hand_computation() -> None:
    x = [[[1.0, -2.0], [0.0, 3.0]], [[2.0, 0.0], [-1.0, 1.0]]]  # C=2, H=W=2
    # channel means of squares: (1+4)/2, (4+0)/2, (0+1)/2, (9+1)/2 = 2.5, 2, 0.5, 5; norm sqrt(35.5)
    expected = [v / math.sqrt(35.5) for v in (2.5, 2.0, 0.5, 5.0)]
    got = attention_map(torch.tensor([x]))
    assert got.shape == (1, 4)
    assert got[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert _hand_map(x) == pytest.approx(expected, rel=1e-12)


def test_attention_loss_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 4, 5, 5, generator=g)
    t = torch.randn(3, 8, 5, 5, generator=g)  # channel counts may differ: the map averages over channels
    diffs = []
    for n in range(3):
        a_s, a_t = _hand_map(s[n].tolist()), _hand_map(t[n].tolist())
        diffs += [(p - q) ** 2 for p, q in zip(a_s, a_t)]
    expected = sum(diffs) / len(diffs)  # mean over all N * H * W entries
    assert attention_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert attention_loss(s, s).item() == 0.0


def test_attention_loss_rejects_mismatched_spatial_sizes() -> None:
    with pytest.raises(BlockSwapError, match="spatial"):
        attention_loss(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4))


def test_student_loss_scales_beta_by_three_over_points() -> None:
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(4, 10, generator=g), torch.tensor([0, 1, 2, 3])
    points_s = [torch.randn(4, 3, 6, 6, generator=g) for _ in range(4)]
    points_t = [torch.randn(4, 5, 6, 6, generator=g) for _ in range(4)]
    config = DistillConfig(beta=1000.0)
    parts = student_loss(logits, labels, config, points_s, points_t, torch.randn(4, 10, generator=g))
    ce = F.cross_entropy(logits, labels).item()
    at = sum(attention_loss(s, t).item() for s, t in zip(points_s, points_t))
    assert parts.ce.item() == pytest.approx(ce)
    assert parts.attention.item() == pytest.approx(at)
    assert parts.total.item() == pytest.approx(ce + 1000.0 * 3 / 4 * at, rel=1e-6)


def test_student_loss_without_teacher_is_cross_entropy() -> None:
    logits, labels = torch.randn(5, 10), torch.arange(5)
    parts = student_loss(logits, labels, DistillConfig())
    assert parts.total.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    assert parts.attention.item() == 0.0 and parts.kd.item() == 0.0


def test_kd_loss_matches_hand_computation() -> None:
    s, t, temp = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[0.0, 3.0, 1.0]]), 2.0

    def softmax(v: list[float]) -> list[float]:
        e = [math.exp(a / temp) for a in v]
        return [a / sum(e) for a in e]

    p, q = softmax(s[0].tolist()), softmax(t[0].tolist())
    expected = temp**2 * sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    assert kd_loss(s, t, temp).item() == pytest.approx(expected, rel=1e-5)
    parts = student_loss(s, torch.tensor([1]), DistillConfig(beta=0.0, kd_alpha=0.25, kd_temperature=temp), [], [], t)
    ce = F.cross_entropy(s, torch.tensor([1])).item()
    assert parts.total.item() == pytest.approx(0.75 * ce + 0.25 * expected, rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"beta": -1.0}, {"kd_alpha": 1.5}, {"kd_temperature": 0.0}])
def test_distill_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(BlockSwapError):
        DistillConfig(**kwargs)
