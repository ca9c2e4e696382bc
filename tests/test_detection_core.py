"""The detection adapter without torchvision: refusals come first, a missing torchvision is a one-line install hint.

These run everywhere; the Mask R-CNN tests themselves are in test_detection.py,
which skips where torchvision is not installed.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch

import blockswap
from blockswap.deploy import detection
from blockswap.space.backbones import Backbone
from blockswap.space.genotype import Genotype
from blockswap.util.errors import BlockSwapError

INSTALL = "pip install 'blockswap\\[detection\\]'"


@pytest.fixture
def no_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import torchvision` fail, as where the extra is not installed (the modules come back afterwards)."""
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "torchvision", None)


def resnet18() -> Genotype:
    return Genotype.uniform(Backbone.from_name("resnet18"), "G4B2")


def one_line(error: pytest.ExceptionInfo[BlockSwapError]) -> bool:
    return "\n" not in str(error.value)


def test_importing_the_module_needs_no_torchvision(no_torchvision: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blockswap.deploy, "detection", detection)  # put back afterwards, as the entry below is
    monkeypatch.delitem(sys.modules, "blockswap.deploy.detection")
    module = importlib.import_module("blockswap.deploy.detection")
    assert module is not detection and callable(module.mask_rcnn) and callable(module.backbone_with_fpn)


@pytest.mark.parametrize("build", [detection.mask_rcnn, detection.backbone_with_fpn])
def test_missing_torchvision_says_how_to_install_it(no_torchvision: None, build: Callable[..., Any]) -> None:
    with pytest.raises(BlockSwapError, match=INSTALL) as error:
        build(resnet18())
    assert one_line(error) and "torchvision" in str(error.value)


@pytest.mark.parametrize("build", [detection.mask_rcnn, detection.backbone_with_fpn])
def test_wrn_is_refused_before_torchvision_is_needed(no_torchvision: None, build: Callable[..., Any]) -> None:
    wrn = Genotype.uniform(Backbone.from_name("wrn-16-1"))
    for given in (wrn, wrn.build()):
        with pytest.raises(BlockSwapError, match="post-activation") as error:
            build(given)
        assert one_line(error)


def test_single_stage_is_refused(no_torchvision: None) -> None:
    one = Genotype.uniform(Backbone("one-stage", (2,), (16,), (1,), post_activation=True, stem_channels=16))
    for build in (detection.mask_rcnn, detection.backbone_with_fpn):
        with pytest.raises(BlockSwapError, match="at least 2 stages") as error:
            build(one)
        assert one_line(error)


@pytest.mark.parametrize("kwargs,match", [
    ({"trainable_layers": 6}, "trainable_layers"),
    ({"trainable_layers": -1}, "trainable_layers"),
    ({"trainable_layers": True}, "trainable_layers"),
    ({"out_channels": 0}, "out_channels"),
    ({"frozen_bn": "yes"}, "frozen_bn"),
])
def test_bad_options_are_refused_before_torchvision(no_torchvision: None, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(BlockSwapError, match=match):
        detection.backbone_with_fpn(resnet18(), **kwargs)
    with pytest.raises(BlockSwapError, match=match):
        detection.mask_rcnn(resnet18(), **kwargs)


def test_bad_inputs_are_refused(no_torchvision: None) -> None:
    with pytest.raises(BlockSwapError, match="num_classes"):
        detection.mask_rcnn(resnet18(), num_classes=1)
    with pytest.raises(BlockSwapError, match="Genotype or a BlockSwap network"):
        detection.backbone_with_fpn(torch.nn.Conv2d(3, 8, 3))


def test_pyramid_strides() -> None:
    assert detection.pyramid_strides(resnet18()) == [4, 8, 16, 32]
    small = Backbone("small", (1, 1, 1), (16, 32, 64), (1, 2, 2), post_activation=True, stem_channels=16)
    assert detection.pyramid_strides(Genotype.uniform(small)) == [1, 2, 4]


@pytest.mark.parametrize("backbone", [
    Backbone.from_name("resnet18"),
    Backbone("no-pool", (1, 2), (16, 32), (1, 2), post_activation=True, stem_channels=8),
], ids=["resnet18", "no-stem-pool"])
def test_children_in_order_give_the_stage_outputs(backbone: Backbone) -> None:
    """What torchvision's IntermediateLayerGetter relies on: calling the children in order up to the last stage."""
    net = Genotype.uniform(backbone, "G4B2").build().eval()
    names = detection._return_layers(net)
    assert names == {f"layer{i + 1}": str(i) for i in range(len(backbone.stage_lengths))}
    x = torch.randn(2, 3, 64, 64)
    outputs, h = [], x
    with torch.no_grad():
        for name, child in net.named_children():
            h = child(h)
            if name in names:
                outputs.append(h)
            if len(outputs) == len(names):
                break
        stages = net.forward_taps(x).stages
    assert len(outputs) == len(stages)
    for got, want in zip(outputs, stages):
        torch.testing.assert_close(got, want)
