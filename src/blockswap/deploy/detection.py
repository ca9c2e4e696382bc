"""COCO detection: a BlockSwap ResNet as the backbone of torchvision's Mask R-CNN (paper section 7).

`backbone_with_fpn` puts torchvision's feature pyramid (`BackboneWithFPN`: an
`IntermediateLayerGetter` over the network's children, then a
`FeaturePyramidNetwork` with a max-pooled extra level) on the stage outputs of a
post-activation network, exactly as `resnet_fpn_backbone` does for
torchvision's own ResNets; `mask_rcnn` wraps it in `MaskRCNN`, freshly
initialised, for training from scratch with torchvision's detection recipe.

torchvision is the optional extra `detection` and is imported only inside these
functions, so importing this module never needs it. Everything that can be
refused without torchvision (the backbone kind, the stage count, the options)
is refused before it is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ..space.genotype import Genotype
from ..space.networks import BlockNetwork, PostActNetwork
from ..util.counts import whole_number
from ..util.errors import BlockSwapError

if TYPE_CHECKING:
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

__all__ = ["backbone_with_fpn", "mask_rcnn", "pyramid_strides"]

_INSTALL = "pip install 'blockswap[detection]'"
_STEM_CHILDREN = ("conv1", "bn1", "relu", "maxpool")


def _torchvision(what: str) -> Any:
    """The torchvision package, or a one-line BlockSwapError saying how to install it."""
    try:
        import torchvision
        import torchvision.models.detection
        import torchvision.ops
    except ImportError:
        raise BlockSwapError(f"{what} needs torchvision, which is not installed: {_INSTALL}") from None
    return torchvision


def _check_backbone(genotype_or_network: Genotype | BlockNetwork) -> None:
    """Refuse, before anything is built or imported, what cannot carry a feature pyramid."""
    if not isinstance(genotype_or_network, (Genotype, BlockNetwork)):
        raise BlockSwapError(f"expected a Genotype or a BlockSwap network, got {type(genotype_or_network).__name__}")
    backbone = genotype_or_network.backbone
    if not backbone.post_activation:
        raise BlockSwapError(f"detection needs a post-activation (ResNet-style) backbone; {backbone.name} is "
                             "pre-activation (WRN)")
    if len(backbone.stage_lengths) < 2:
        raise BlockSwapError(f"a feature pyramid needs at least 2 stages; {backbone.name} has "
                             f"{len(backbone.stage_lengths)}")


def _network(genotype_or_network: Genotype | BlockNetwork) -> PostActNetwork:
    """The network itself, or a freshly SPEC-initialised one built from the genotype."""
    _check_backbone(genotype_or_network)
    net = genotype_or_network.build() if isinstance(genotype_or_network, Genotype) else genotype_or_network
    if not isinstance(net, PostActNetwork):
        raise BlockSwapError(f"detection needs a PostActNetwork, got {type(net).__name__}")
    return net


def _return_layers(net: PostActNetwork) -> dict[str, str]:
    """`{"layer1": "0", ...}` for `IntermediateLayerGetter`, after checking that the network's children run in order.

    The getter calls the children one after the other up to the last stage, so
    they must be the stem (conv1, bn1, relu, maxpool) and then the stages, in
    registration order, which is how `PostActNetwork` registers them.
    """
    stages = [f"layer{i}" for i in range(1, len(net.backbone.stage_lengths) + 1)]
    names = [name for name, _ in net.named_children()]
    stem = [n for n in _STEM_CHILDREN if getattr(net, n, None) is not None]
    if names[:len(stem) + len(stages)] != stem + stages:
        raise BlockSwapError(f"{net.backbone.name}: expected children {stem + stages} in that order, got {names}")
    return {name: str(i) for i, name in enumerate(stages)}


def pyramid_strides(genotype_or_network: Genotype | BlockNetwork) -> list[int]:
    """The stride of each stage output relative to the input image (4, 8, 16, 32 for ResNet-18/34)."""
    _check_backbone(genotype_or_network)
    backbone = genotype_or_network.backbone
    stride = backbone.stem_stride * (2 if backbone.stem_pool else 1)
    strides = []
    for s in backbone.stage_strides:
        stride *= s
        strides.append(stride)
    return strides


def _check_options(genotype_or_network: Genotype | BlockNetwork, out_channels: int, trainable_layers: int | None,
                   frozen_bn: bool) -> tuple[int, int]:
    """Refuse a bad backbone or option before torchvision is imported; the FPN width and the trainable layer count."""
    _check_backbone(genotype_or_network)
    out_channels = whole_number(out_channels, "out_channels")
    stages = len(genotype_or_network.backbone.stage_lengths)
    if trainable_layers is None:
        trainable_layers = stages + 1
    elif isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) or not (
            0 <= trainable_layers <= stages + 1):
        raise BlockSwapError(f"trainable_layers must be a whole number from 0 to {stages + 1} (the {stages} stages "
                             f"and conv1), got {trainable_layers!r}")
    if not isinstance(frozen_bn, bool):
        raise BlockSwapError(f"frozen_bn must be true or false, got {frozen_bn!r}")
    return out_channels, trainable_layers


def _freeze(net: PostActNetwork, trainable: int) -> None:
    """Stop gradients outside the last `trainable` of [layerN, ..., layer1, conv1], as torchvision's ResNet FPN does.

    bn1 trains only when everything does; the head (avgpool, fc) is left alone.
    """
    stages = [f"layer{i}" for i in range(len(net.backbone.stage_lengths), 0, -1)]
    if trainable == len(stages) + 1:
        return
    kept = (stages + ["conv1"])[:trainable]
    body = set(stages) | set(_STEM_CHILDREN)
    for name, param in net.named_parameters():
        top = name.split(".", 1)[0]
        if top in body and top not in kept:
            param.requires_grad_(False)


def _freeze_batch_norms(module: nn.Module, frozen_cls: type[nn.Module]) -> None:
    """Replace every BatchNorm2d under `module` by torchvision's FrozenBatchNorm2d holding the same statistics."""
    for name, child in module.named_children():
        if not isinstance(child, nn.BatchNorm2d):
            _freeze_batch_norms(child, frozen_cls)
            continue
        if child.running_mean is None or child.running_var is None or child.weight is None or child.bias is None:
            raise BlockSwapError(f"cannot freeze BatchNorm {name!r}: it has no running statistics or no affine part")
        frozen = frozen_cls(child.num_features, child.eps).to(child.running_mean.device)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, attr).copy_(getattr(child, attr).detach())
        setattr(module, name, frozen)


def backbone_with_fpn(genotype_or_network: Genotype | BlockNetwork, out_channels: int = 256,
                      trainable_layers: int | None = None, frozen_bn: bool = False) -> BackboneWithFPN:
    """torchvision's `BackboneWithFPN` over the stage outputs of a post-activation BlockSwap network.

    A genotype is built fresh (SPEC initialisation); a network is used as it is
    and shared, not copied (its avgpool and fc are left out). Feature maps are
    named "0".."N-1" by stage, plus "pool"; `in_channels_list` is the
    backbone's `stage_widths`. `trainable_layers` (default all) and `frozen_bn`
    follow torchvision's recipe for a trained backbone: only the last
    `trainable_layers` of [layerN, ..., layer1, conv1] get gradients, and
    `frozen_bn` swaps every BatchNorm for `FrozenBatchNorm2d` with its
    current statistics. From scratch, keep the defaults (torchvision does).
    """
    out_channels, trainable = _check_options(genotype_or_network, out_channels, trainable_layers, frozen_bn)
    tv = _torchvision("backbone_with_fpn")
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    net = _network(genotype_or_network)
    return_layers = _return_layers(net)
    if frozen_bn:
        _freeze_batch_norms(net, tv.ops.FrozenBatchNorm2d)
    _freeze(net, trainable)
    return BackboneWithFPN(net, return_layers, list(net.backbone.stage_widths), out_channels)


def mask_rcnn(genotype: Genotype | BlockNetwork, num_classes: int = 91, *, out_channels: int = 256,
              trainable_layers: int | None = None, frozen_bn: bool = False, **maskrcnn_kwargs: Any) -> MaskRCNN:
    """torchvision's `MaskRCNN` on `backbone_with_fpn(genotype)`, untrained: the paper's COCO model (section 7).

    `num_classes` counts the background (91 for COCO's category ids). Other
    keyword arguments go to `torchvision.models.detection.MaskRCNN` (e.g.
    `min_size`, `max_size`); unless given, the anchor generator and the box
    and mask RoI poolers are matched to the pyramid: one anchor size per level,
    8x its stride (32..512 for ResNet-18/34, torchvision's defaults), and RoI
    pooling over the stage levels "0".."N-1".
    """
    num_classes = whole_number(num_classes, "num_classes", low=2)
    _check_options(genotype, out_channels, trainable_layers, frozen_bn)
    strides = pyramid_strides(genotype)
    tv = _torchvision("mask_rcnn")
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    backbone = backbone_with_fpn(genotype, out_channels, trainable_layers, frozen_bn)
    names = [str(i) for i in range(len(strides))]
    if "rpn_anchor_generator" not in maskrcnn_kwargs:
        sizes = tuple((8 * s,) for s in strides + [2 * strides[-1]])  # the stage levels, then "pool"
        maskrcnn_kwargs["rpn_anchor_generator"] = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    maskrcnn_kwargs.setdefault("box_roi_pool", tv.ops.MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2))
    maskrcnn_kwargs.setdefault("mask_roi_pool", tv.ops.MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2))
    return MaskRCNN(backbone, num_classes=num_classes, **maskrcnn_kwargs)
