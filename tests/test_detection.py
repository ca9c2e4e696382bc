"""Mask R-CNN on a BlockSwap ResNet (the `detection` extra): FPN features, losses, predictions, parameter counts.

The whole file needs torchvision and skips without it; the checks that need no
torchvision (refusals, the install hint) are in test_detection_core.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.vision
tv = pytest.importorskip("torchvision")

from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from blockswap.deploy.detection import backbone_with_fpn, mask_rcnn
from blockswap.space.backbones import Backbone
from blockswap.space.genotype import Genotype

LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
CHEAP = ("G4B2", "DConvG4", "A4B2", "ConvB2")
SIZE = 128


def cheap_resnet18() -> Genotype:
    """ResNet-18 with four cheap block types in turn (about 2.2M parameters with its 1000-way head)."""
    backbone = Backbone.from_name("resnet18")
    return Genotype(backbone, tuple(CHEAP[i % len(CHEAP)] for i in range(backbone.num_blocks))).validate()


def two_stage() -> Genotype:
    """A tiny post-activation backbone with two stages and no stem pool: pyramid strides 1 and 2."""
    backbone = Backbone("tiny-resnet", (1, 1), (16, 32), (1, 2), post_activation=True, stem_channels=16,
                        input_size=64)
    return Genotype.uniform(backbone, "G4B2")


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def images_and_targets(device: str, num_classes: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 3x128x128 images in [0, 1], each with two boxes, labels and box-shaped binary masks."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, SIZE, SIZE, generator=g).to(device) for _ in range(2)]
    targets = []
    for boxes in ([[8, 10, 60, 70], [50, 40, 120, 110]], [[20, 20, 90, 100], [0, 64, 40, 127]]):
        box = torch.tensor(boxes, dtype=torch.float32)
        masks = torch.zeros(len(boxes), SIZE, SIZE, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, box.int().tolist()):
            m[y1:y2, x1:x2] = 1
        labels = torch.randint(1, num_classes, (len(boxes),), generator=g, dtype=torch.int64)
        targets.append({"boxes": box.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


def test_fpn_over_the_four_stages_names_and_channels() -> None:
    body = backbone_with_fpn(cheap_resnet18(), out_channels=64)
    assert isinstance(body, BackboneWithFPN) and body.out_channels == 64
    assert [n for n, _ in body.body.named_children()] == ["conv1", "bn1", "relu", "maxpool",
                                                          "layer1", "layer2", "layer3", "layer4"]
    feats = body(torch.randn(2, 3, SIZE, SIZE))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape) for f in feats.values()] == [(2, 64, s, s) for s in (32, 16, 8, 4, 2)]


def test_fpn_inputs_are_the_network_stage_outputs() -> None:
    genotype = cheap_resnet18()
    net = genotype.build().eval()
    body = backbone_with_fpn(net).eval()
    x = torch.randn(2, 3, 96, 96)
    stages = net.forward_taps(x).stages
    feats = body.body(x)
    assert list(feats) == ["0", "1", "2", "3"]
    for got, want in zip(feats.values(), stages):
        torch.testing.assert_close(got, want)
    assert [f.shape[1] for f in stages] == list(genotype.backbone.stage_widths)


def test_body_parameters_are_the_genotype_without_its_head() -> None:
    genotype = cheap_resnet18()
    width, classes = genotype.backbone.stage_widths[-1], genotype.backbone.num_classes
    model = mask_rcnn(genotype)
    body = sum(p.numel() for p in model.backbone.body.parameters())
    assert body == genotype.params() - (width * classes + classes)


def test_from_scratch_everything_trains_with_batch_norm() -> None:
    body = backbone_with_fpn(cheap_resnet18())
    assert all(p.requires_grad for p in body.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in body.body.modules())
    assert not any(isinstance(m, tv.ops.FrozenBatchNorm2d) for m in body.modules())


def test_trainable_layers_and_frozen_batch_norm_keep_a_trained_network_outputs() -> None:
    net = cheap_resnet18().build()
    with torch.no_grad():  # running statistics that are not the identity
        for _ in range(2):
            net(torch.randn(4, 3, 64, 64))
    net.eval()
    x = torch.randn(2, 3, 96, 96)
    stages = net.forward_taps(x).stages
    body = backbone_with_fpn(net, trainable_layers=2, frozen_bn=True).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.body.modules())
    assert any(isinstance(m, tv.ops.FrozenBatchNorm2d) for m in body.body.modules())
    trainable = {name.split(".")[0] for name, p in body.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    for got, want in zip(body.body(x).values(), stages):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_default_anchors_and_poolers_match_torchvision_for_resnet() -> None:
    ours = mask_rcnn(cheap_resnet18())
    theirs = MaskRCNN(backbone_with_fpn(cheap_resnet18()), num_classes=91)
    assert ours.rpn.anchor_generator.sizes == theirs.rpn.anchor_generator.sizes
    assert ours.rpn.anchor_generator.aspect_ratios == theirs.rpn.anchor_generator.aspect_ratios
    for pool in ("box_roi_pool", "mask_roi_pool"):
        a, b = getattr(ours.roi_heads, pool), getattr(theirs.roi_heads, pool)
        assert a.featmap_names == b.featmap_names and a.output_size == b.output_size
    assert ours.transform.min_size == theirs.transform.min_size and ours.transform.max_size == theirs.transform.max_size


def test_a_resnet50_teacher_gives_the_fpn_features_of_torchvisions_maskrcnn_resnet50_fpn() -> None:
    """A Bottleneck backbone read from torchvision's resnet50 carries the same pyramid over 256..2048 channels as
    `resnet_fpn_backbone("resnet50")`, the builder of `maskrcnn_resnet50_fpn`, given the same weights."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from blockswap.weights.teachers import load_resnet

    torch.manual_seed(0)
    reference = tv.models.resnet50().eval()
    with torch.no_grad():  # BN statistics that are not the identity, so eval mode checks each one
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.75, 1.25)
                m.weight.uniform_(0.5, 1.0)
    theirs = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5,
                                 norm_layer=nn.BatchNorm2d).eval()
    theirs.body.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")})
    net, genotype = load_resnet(reference, name="resnet50")
    assert genotype.blocks == ("ConvB4",) * 16
    ours = backbone_with_fpn(net).eval()
    assert [block[0].in_channels for block in ours.fpn.inner_blocks] == [256, 512, 1024, 2048]
    ours.fpn.load_state_dict(theirs.fpn.state_dict())
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        got, want = ours(x), theirs(x)
    assert list(got) == list(want) == ["0", "1", "2", "3", "pool"]
    for name in want:
        assert got[name].shape == want[name].shape
        assert (got[name] - want[name]).abs().max() < 1e-5, name


def cheap_resnet50() -> Genotype:
    """ResNet-50's layout (Bottleneck stage widths 256..2048) with cheap block types."""
    backbone = Backbone.from_name("resnet50")
    blocks = tuple(("G8B4", "DConvG16", "G16B2")[i % 3] for i in range(backbone.num_blocks))
    return Genotype(backbone, blocks).validate()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("make", [cheap_resnet18, two_stage, cheap_resnet50], ids=["resnet18", "two-stage", "resnet50"])
def test_training_forward_gives_finite_losses_and_gradients(device: str, make: Callable[[], Genotype]) -> None:
    torch.manual_seed(0)
    model = mask_rcnn(make(), num_classes=5, min_size=SIZE, max_size=SIZE).to(device).train()
    images, targets = images_and_targets(device, 5)
    losses = model(images, targets)
    assert set(losses) == LOSSES
    assert all(math.isfinite(v.item()) for v in losses.values()), losses
    sum(losses.values()).backward()
    stem = model.backbone.body.conv1.weight.grad
    assert stem is not None and torch.isfinite(stem).all() and stem.abs().sum() > 0


@pytest.mark.parametrize("device", devices())
def test_eval_forward_returns_boxes_labels_scores_masks(device: str) -> None:
    torch.manual_seed(0)
    model = mask_rcnn(cheap_resnet18(), num_classes=5, min_size=SIZE, max_size=SIZE,
                      box_score_thresh=0.0).to(device).eval()
    images, _ = images_and_targets(device, 5)
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for pred in out:
        assert set(pred) == {"boxes", "labels", "scores", "masks"}
        n = pred["boxes"].shape[0]
        assert 0 < n <= 100 and pred["boxes"].shape == (n, 4)
        assert pred["labels"].shape == pred["scores"].shape == (n,)
        assert pred["masks"].shape == (n, 1, SIZE, SIZE)
        assert ((pred["labels"] >= 1) & (pred["labels"] < 5)).all()
