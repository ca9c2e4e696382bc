"""Palette: closed-form counts equal real modules for all 23 types at every block shape."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from blockswap.space.backbones import Backbone
from blockswap.space.blocks import DEFAULT_PALETTE, PALETTE_NAMES, BlockType, ConvSpec, Palette

PUBLISHED = [
    "Conv", "DConvA2", "DConvA4", "DConvA8", "DConvA16", "DConvG2", "DConvG4", "DConvG8", "DConvG16", "DConv",
    "ConvB2", "ConvB4", "A2B2", "A4B2", "A8B2", "A16B2", "G2B2", "G4B2", "G8B2", "G16B2", "G2B4", "G4B4", "G8B4",
]


def _unique_shapes(name: str) -> list:
    return sorted({(s.c_in, s.c_out, s.stride, s.size_in) for s in Backbone.from_name(name).block_shapes()})


SHAPES = [("wrn-40-2", s) for s in _unique_shapes("wrn-40-2")] + [("resnet34", s) for s in _unique_shapes("resnet34")]


def test_palette_has_the_23_published_names() -> None:
    assert sorted(PALETTE_NAMES) == sorted(PUBLISHED)
    assert len(DEFAULT_PALETTE) == 23


@pytest.mark.parametrize("name", PUBLISHED)
@pytest.mark.parametrize("model,shape", SHAPES, ids=[f"{m}-{s[0]}-{s[1]}-s{s[2]}" for m, s in SHAPES])
def test_closed_form_params_and_macs_equal_module(name: str, model: str, shape: tuple) -> None:
    c_in, c_out, stride, size = shape
    post = model.startswith("resnet")
    block = DEFAULT_PALETTE[name]
    body = block.build(c_in, c_out, stride, post_activation=post)
    assert block.params(c_in, c_out, stride, post) == sum(p.numel() for p in body.parameters())
    # MACs for a small spatial size keep the test fast; the closed form is linear in H*W.
    small = 8
    with FlopCounterMode(display=False) as counter:
        out = body(torch.zeros(1, c_in, small, small))
    assert out.shape == (1, c_out, small // stride, small // stride)
    assert block.macs(c_in, c_out, stride, small) * 2 == counter.get_total_flops()


def test_family_definitions_follow_spec() -> None:
    # G(g): groups of g channels in each 3x3 conv; A(n): n groups; B(b): bottleneck width C_out / b.
    g4 = DEFAULT_PALETTE["DConvG4"].convs(64, 64, 1)
    assert [c.groups for c in g4] == [16, 1, 16, 1] and [c.kernel for c in g4] == [3, 1, 3, 1]
    a8 = DEFAULT_PALETTE["DConvA8"].convs(32, 64, 2)
    assert (a8[0].groups, a8[0].stride, a8[0].c_out, a8[1].c_out) == (8, 2, 32, 64)
    assert [c.groups for c in DEFAULT_PALETTE["DConv"].convs(32, 32, 1)] == [32, 1, 32, 1]
    b = DEFAULT_PALETTE["G8B4"].convs(64, 128, 2)
    assert [(c.c_in, c.c_out, c.kernel, c.stride, c.groups) for c in b] == [
        (64, 32, 1, 1, 1), (32, 32, 3, 2, 4), (32, 128, 1, 1, 1)]
    assert DEFAULT_PALETTE["ConvB2"].convs(32, 32, 1)[1].groups == 1
    assert DEFAULT_PALETTE["A16B2"].convs(64, 64, 1)[1].groups == 16


def test_post_activation_body_has_torchvision_names_and_trailing_bn() -> None:
    body = DEFAULT_PALETTE["Conv"].build(64, 64, 1, post_activation=True)
    assert [n for n, p in body.named_parameters()] == ["conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight",
                                                      "bn2.weight", "bn2.bias"]
    pre = DEFAULT_PALETTE["Conv"].build(64, 64, 1, post_activation=False)
    assert isinstance(list(pre.children())[-1], torch.nn.Conv2d)


def test_invalid_shapes_are_reported_not_built() -> None:
    # G16B2 on 16 output channels: m = 8 channels cannot form groups of 16.
    assert not DEFAULT_PALETTE["G16B2"].is_valid(16, 16, 1)
    assert not DEFAULT_PALETTE["A16B2"].is_valid(16, 16, 1)
    assert DEFAULT_PALETTE["G16B2"].is_valid(32, 32, 1)
    with pytest.raises(ValueError, match="groups"):
        DEFAULT_PALETTE["G16B2"].build(16, 16, 1)


def test_palette_restrict_and_extend() -> None:
    bottlenecks = DEFAULT_PALETTE.families("B")
    assert len(bottlenecks) == 13 and all(t.family == "B" for t in bottlenecks.values())
    few = DEFAULT_PALETTE.only(["Conv", "G4B2"])
    assert few.names == ["Conv", "G4B2"]

    def chain(c_in: int, c_out: int, stride: int) -> list[ConvSpec]:
        return [ConvSpec(c_in, c_out, 5, stride)]

    extended = few.with_types(BlockType("Conv5", "custom", chain))
    body = extended["Conv5"].build(16, 32, 2)
    assert extended["Conv5"].params(16, 32, 2) == sum(p.numel() for p in body.parameters()) == 16 * 32 * 25
    with pytest.raises(ValueError, match="duplicate"):
        few.with_types(DEFAULT_PALETTE["Conv"])
    with pytest.raises(KeyError, match="valid choices"):
        few["DConv"]
    with pytest.raises(ValueError):
        Palette([])
