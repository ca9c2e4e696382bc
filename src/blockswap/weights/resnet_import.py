"""The user's own ResNet as a teacher: a BasicBlock or Bottleneck ResNet of any layout read from its weights.

A torchvision- or timm-format BasicBlock ResNet (`conv1`, `bn1`, `layer1..N`
of blocks `conv1/bn1/conv2/bn2[/downsample.0/.1]`, `fc`) has exactly the key
names of the all-`Conv` `PostActNetwork`, so once its `Backbone` is known the
weights load strictly and unchanged. A Bottleneck ResNet (blocks
`conv1/bn1/conv2/bn2/conv3/bn3[/downsample.0/.1]`: 1x1, 3x3 with `groups`, 1x1)
has the key names of the network whose every block is the bottleneck type with
m = `conv1`'s output channels, C_out = `conv3`'s and `conv2`'s groups
(`bottleneck_name`: `ConvB4` for ResNet-50, `A32B2` for resnext50_32x4d); that
type becomes the backbone's `teacher_block`. Every stage must give the same ratio
C_out / m, and the same groups (an `A` type) or groups of the same size (a `G` type).
The layout (input channels, stem width and kernel, stage lengths and widths,
classes) is read from the tensors' shapes; nothing is assumed about the depth.

What shapes cannot tell, and how it is decided:

- Strides. A stage whose first block keeps its width and has no `downsample`
  has stride 1 (a stride-2 identity shortcut would not fit); one that keeps its
  width but has a `downsample` has stride 2 (a projection exists only to change
  the shape). When the width changes, the stride is not in the weights and
  torchvision's convention is taken: stage 1 stride 1, later stages stride 2.
  A Bottleneck strides in its 3x3 `conv2` (torchvision's and timm's v1.5; a v1
  network, striding in `conv1`, has the same shapes but another forward).
  `backbone_from_module` reads the strides from the modules instead, and
  refuses v1.
- The stem. A 7x7 `conv1` is torchvision's ImageNet stem (stride 2, then a
  3x3/2 max-pool, 224x224 inputs by default); a 3x3 `conv1` is the CIFAR stem
  (stride 1, no max-pool, 32x32 inputs). Other kernels need the module.
- Padding, dilation (timm's `output_stride`), BatchNorm's eps and the head's
  pooling are not in a state dict; torchvision's (kernel // 2, none, 1e-5,
  global average) are assumed.
  `load_resnet` given a module checks all of this by comparing its outputs with
  the rebuilt network's.

timm's plain ResNets (`resnet18` to `resnet152`, `wide_resnet50_2`,
`resnext50_32x4d`) use torchvision's key names. Its variants that blockswap
cannot represent are refused by name: deep stems (`conv1.0.weight`, the c/d/s/t
variants), avg-pool downsampling (`downsample.1` a conv, the d variants) and a conv in place of the
stem max-pool (`maxpool.0.weight`). The CIFAR ResNets of the popular
pytorch-cifar code (`shortcut` for `downsample`, `linear` for `fc`) are renamed
to torchvision's names by `normalize_state_dict`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..space.backbones import Backbone
from ..space.blocks import block_type, bottleneck_name
from ..space.networks import BlockNetwork
from ..util.errors import BlockSwapError

__all__ = ["WEIGHT_SUFFIXES", "backbone_from_module", "backbone_from_state_dict", "is_weight_file",
           "normalize_state_dict"]

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
"""File suffixes `is_weight_file` takes for a weight file rather than a model name."""

DEFAULT_NAME = "user-resnet"

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
_BLOCK_KEY = re.compile(r"layer(\d+)\.(\d+)\.(.+)")
_SUPPORTED = "only torchvision-style BasicBlock and Bottleneck ResNets can be block-swapped"
_STEMS = {7: (2, True, 224), 3: (1, False, 32)}  # stem kernel -> stride, max-pool, default input size


def is_weight_file(text: str) -> bool:
    """Whether a `--model` argument names an existing weight file rather than a registered model name.

    True for an existing file ending in .pt, .pth, .bin or .ckpt (any case).
    """
    try:
        path = Path(text).expanduser()
        return path.suffix.lower() in WEIGHT_SUFFIXES and path.is_file()
    except (OSError, RuntimeError, ValueError):  # a name too long for a path, or ~user of no user
        return False


def _state_of(obj: Any, depth: int = 0) -> Mapping[str, Any]:
    """The mapping of weights inside `obj`: itself, a module's state dict, or a known wrapper's entry."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise BlockSwapError(f"expected a state dict (a dict of tensors), got a {type(obj).__name__}")
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, (Mapping, nn.Module)) and depth < 3:
            return _state_of(inner, depth + 1)
    return obj


def _strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items()}


def _shared_prefix(state: dict[str, Tensor]) -> str | None:
    """The first name component every key shares (`model.` of a Lightning module), if any."""
    heads = {k.split(".", 1)[0] for k in state}
    if len(heads) == 1 and all("." in k for k in state):
        return heads.pop() + "."
    return None


def _rename(state: dict[str, Tensor], pattern: str, new: str) -> dict[str, Tensor]:
    """Replace the name component `pattern` matches at the start of a key (after its first group) by `new`."""
    return {re.sub(pattern, rf"\g<1>{new}.", k, count=1): v for k, v in state.items()}


def normalize_state_dict(obj: Any) -> dict[str, Tensor]:
    """A ResNet's weights as a plain dict with torchvision's key names, from a state dict or a common wrapper.

    Accepts a bare state dict, a module, or a dict holding one under `state_dict`,
    `model_state_dict` or `model` (then `state_dict_ema`, `model_ema` when no plain
    one is there). Strips a prefix every key shares: `module.` (DataParallel/DDP),
    `_orig_mod.` (torch.compile), or any other (e.g. Lightning's `model.`) that
    leaves `conv1.*` at the top; renames pytorch-cifar's `shortcut`/`linear` to
    `downsample`/`fc`. Drops no key.
    """
    raw = _state_of(obj)
    if not raw:
        raise BlockSwapError("the weights are empty: expected a state dict of a ResNet")
    if not any(isinstance(v, Tensor) for v in raw.values()):
        found = ", ".join(sorted(map(repr, raw))[:6])
        raise BlockSwapError(f"found no weights: expected a state dict or a dict holding one under "
                             f"{', '.join(map(repr, _WRAPPER_KEYS))} (its keys: {found})")
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise BlockSwapError(f"entry {key!r} of the state dict holds a value of type {type(value).__name__}, "
                                 "not a tensor")
    state = dict(raw)
    while (prefix := _shared_prefix(state)) is not None:
        stripped = _strip_prefix(state, prefix)
        if prefix not in _WRAPPER_PREFIXES and not any(k.startswith("conv1.") for k in stripped):
            break
        state = stripped
    if not any(".downsample." in k for k in state):
        state = _rename(state, r"^(layer\d+\.\d+\.)shortcut\.", "downsample")
    if not any(k.startswith("fc.") for k in state) and "linear.weight" in state:
        state = _rename(state, r"^()linear\.", "fc")
    return state


@dataclass(frozen=True)
class _Layout:
    """What the weights' shapes say: everything in a `Backbone` but the strides and the stem's stride and pool."""

    in_channels: int
    stem_channels: int
    stem_kernel: int
    stage_lengths: tuple[int, ...]
    stage_widths: tuple[int, ...]  # each stage's block output channels (4 x the inner width in ResNet-50)
    projects: tuple[bool, ...]  # whether each stage's first block has a downsample
    num_classes: int
    teacher_block: str = "Conv"
    stage_groups: tuple[int, ...] = ()  # a Bottleneck's conv2 groups per stage; empty for BasicBlocks

    @property
    def bottleneck(self) -> bool:
        return bool(self.stage_groups)

    def stage_inputs(self) -> list[int]:
        """The channels entering each stage."""
        return [self.stem_channels, *self.stage_widths[:-1]]


class _Reader:
    """Reads tensors by name from a state dict, checking shapes and remembering which keys it used."""

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        self.state = state
        self.used: set[str] = set()

    def tensor(self, key: str, ndim: int, hint: str = "") -> Tensor:
        if key not in self.state:
            raise BlockSwapError(f"the weights have no {key!r}{hint}")
        value = self.state[key]
        if value.dim() != ndim:
            raise BlockSwapError(f"{key!r} has shape {list(value.shape)}; expected {ndim} dimensions")
        self.used.add(key)
        return value

    def conv(self, key: str, c_out: int | None, c_in: int, kernel: int | None) -> int:
        """Read a bias-free conv's weight; return its output channels."""
        shape = self.tensor(key, 4).shape
        if shape[1] != c_in:
            raise BlockSwapError(f"{key!r} takes {shape[1]} input channels but its input has {c_in} "
                                 "(grouped convs and inconsistent widths are not supported)")
        return self._checked(key, c_out, kernel)

    def grouped_conv(self, key: str, channels: int, kernel: int) -> int:
        """Read a bias-free grouped conv of `channels` in and out (a Bottleneck's conv2); return its groups."""
        shape = self.tensor(key, 4).shape
        if shape[1] < 1 or channels % shape[1]:
            raise BlockSwapError(f"{key!r} takes {shape[1]} input channels per group, which does not divide the "
                                 f"{channels} channels of its input")
        self._checked(key, channels, kernel)
        return channels // int(shape[1])

    def _checked(self, key: str, c_out: int | None, kernel: int | None) -> int:
        shape = self.state[key].shape
        if kernel is not None and tuple(shape[2:]) != (kernel, kernel):
            raise BlockSwapError(f"{key!r} is a {shape[2]}x{shape[3]} conv; expected {kernel}x{kernel}")
        if c_out is not None and shape[0] != c_out:
            raise BlockSwapError(f"{key!r} has {shape[0]} output channels; expected {c_out}")
        if key.removesuffix("weight") + "bias" in self.state:
            raise BlockSwapError(f"{key.removesuffix('weight') + 'bias'!r}: convs with a bias are not supported")
        return int(shape[0])

    def batch_norm(self, prefix: str, channels: int) -> None:
        for name in _BN_TENSORS:
            key = prefix + name
            if tuple(self.tensor(key, 1).shape) != (channels,):
                raise BlockSwapError(f"{key!r} has shape {list(self.state[key].shape)}; expected [{channels}]")
        if prefix + "num_batches_tracked" in self.state:
            self.tensor(prefix + "num_batches_tracked", 0)

    def leftover(self) -> list[str]:
        return sorted(set(self.state) - self.used)


def _refuse_variants(state: Mapping[str, Tensor]) -> None:
    """Name the known ResNet variants blockswap cannot represent, before any generic check."""
    keys = sorted(state)
    if "conv1.weight" not in state and any(k.startswith("conv1.") for k in keys):
        first = next(k for k in keys if k.startswith("conv1."))
        raise BlockSwapError(f"this ResNet has timm's deep stem (key {first!r}, the c/d/s/t variants such as "
                             "resnet18d): only a single-conv stem ('conv1.weight') can be read")
    for key in keys:
        m = _BLOCK_KEY.fullmatch(key)
        if m and (m[3].startswith("downsample.2.") or (m[3] == "downsample.1.weight" and state[key].dim() == 4)):
            raise BlockSwapError(f"this ResNet has timm's avg-pool downsample (key {key!r} follows an AvgPool, the d "
                                 "variants such as resnet34d): only a 1x1-conv + BN downsample can be read")
    if any(k.startswith("maxpool.") for k in keys):
        first = next(k for k in keys if k.startswith("maxpool."))
        raise BlockSwapError(f"this ResNet's stem max-pool is a conv (key {first!r}, timm's replace_stem_pool): "
                             "not supported")


def _indices(keys: list[str], pattern: str, start: int, label: str) -> list[int]:
    """The numbers `pattern` captures in `keys`, checked to run start, start+1, ... without a gap."""
    found = sorted({int(m[1]) for k in keys if (m := re.match(pattern, k))})
    for expected, index in enumerate(found, start=start):
        if index != expected:
            raise BlockSwapError(f"the weights have {label}{index} but no {label}{expected}")
    return found


def _is_bottleneck(state: Mapping[str, Tensor], blocks: list[str]) -> bool:
    """Whether the blocks (prefixes `layerS.J.`) are Bottlenecks (conv3) rather than BasicBlocks; never a mix."""
    with_conv3 = [p for p in blocks if p + "conv3.weight" in state]
    if with_conv3 and len(with_conv3) < len(blocks):
        without = next(p for p in blocks if p not in with_conv3)
        raise BlockSwapError(f"the weights mix BasicBlocks and Bottlenecks ({with_conv3[0] + 'conv3.weight'!r} but no "
                             f"{without + 'conv3.weight'!r}): every block must be of one kind")
    return bool(with_conv3)


def _same(values: list[int], what: str, key: str, first: str) -> int:
    if values[-1] != values[0]:
        raise BlockSwapError(f"{key!r} has {values[-1]} {what} but {first!r} has {values[0]}: every block of a stage "
                             "must have the same width")
    return values[0]


def _basic_block(read: _Reader, p: str, c_in: int, first: str, widths: list[int]) -> int:
    """Read BasicBlock `p` (conv1 3x3 -> conv2 3x3); return its output channels."""
    widths.append(read.conv(p + "conv1.weight", None, c_in, 3))
    width = _same(widths, "output channels", p + "conv1.weight", first + "conv1.weight")
    read.batch_norm(p + "bn1.", width)
    read.conv(p + "conv2.weight", width, width, 3)
    read.batch_norm(p + "bn2.", width)
    return width


def _bottleneck(read: _Reader, p: str, c_in: int, first: str, inner: list[int], groups: list[int],
                outs: list[int]) -> int:
    """Read Bottleneck `p` (conv1 1x1 -> conv2 3x3, grouped -> conv3 1x1); return its output channels."""
    inner.append(read.conv(p + "conv1.weight", None, c_in, 1))
    width = _same(inner, "output channels", p + "conv1.weight", first + "conv1.weight")
    read.batch_norm(p + "bn1.", width)
    groups.append(read.grouped_conv(p + "conv2.weight", width, 3))
    _same(groups, "groups", p + "conv2.weight", first + "conv2.weight")
    read.batch_norm(p + "bn2.", width)
    outs.append(read.conv(p + "conv3.weight", None, width, 1))
    out = _same(outs, "output channels", p + "conv3.weight", first + "conv3.weight")
    read.batch_norm(p + "bn3.", out)
    return out


def _bottleneck_type(inner: list[int], groups: list[int], widths: list[int]) -> str:
    """The one block type of every stage's Bottleneck (ratio C_out / m, groups fixed or of fixed channels)."""
    ratios = {w / m for w, m in zip(widths, inner)}
    ratio = ratios.pop()
    if ratios or ratio != int(ratio):
        shown = ", ".join(f"{m}->{w}" for m, w in zip(inner, widths))
        raise BlockSwapError(f"the Bottlenecks' conv3 widen their inner channels by other than one whole ratio "
                             f"({shown}): one block type must fit every stage")
    if len(set(groups)) == 1:
        name = bottleneck_name(int(ratio), groups[0])
    elif len({m // g for m, g in zip(inner, groups)}) == 1:
        name = bottleneck_name(int(ratio), group_channels=inner[0] // groups[0])
    else:
        raise BlockSwapError(f"the Bottlenecks' conv2 have {', '.join(map(str, groups))} groups in their stages, "
                             "neither one count nor groups of one size: one block type must fit every stage")
    block_type(name)  # registered here, so the genotype resolves it
    return name


def _read_layout(state: Mapping[str, Tensor]) -> _Layout:
    """The layout of a BasicBlock or Bottleneck ResNet state dict with torchvision's names; every key must be
    accounted for."""
    _refuse_variants(state)
    read = _Reader(state)
    stem_weight = read.tensor("conv1.weight", 4, ": expected a torchvision-style ResNet (conv1, bn1, layer1.., fc)")
    stem_channels, in_channels, kh, kw = (int(n) for n in stem_weight.shape)
    if kh != kw or kh % 2 == 0:
        raise BlockSwapError(f"'conv1.weight' is a {kh}x{kw} conv; the stem kernel must be square and odd")
    read.conv("conv1.weight", stem_channels, in_channels, kh)
    read.batch_norm("bn1.", stem_channels)

    keys = sorted(state)
    stages = _indices(keys, r"layer(\d+)\.", 1, "layer")
    if not stages:
        raise BlockSwapError("the weights have no 'layer1.0.conv1.weight': expected a torchvision-style ResNet "
                             "whose blocks are named layer1.0, layer1.1, ...")
    block_lists = []
    for s in stages:
        blocks = _indices(keys, rf"layer{s}\.(\d+)\.", 0, f"layer{s}.")
        if not blocks:
            raise BlockSwapError(f"the weights have no 'layer{s}.0.conv1.weight': layer{s} holds no blocks")
        block_lists.append(blocks)
    bottleneck = _is_bottleneck(state, [f"layer{s}.{j}." for s, b in zip(stages, block_lists) for j in b])
    lengths, widths, projects, stage_inner, stage_groups = [], [], [], [], []
    c_in = stem_channels
    for s, blocks in zip(stages, block_lists):
        first = f"layer{s}.0."
        inner: list[int] = []
        groups: list[int] = []
        outs: list[int] = []
        for j in blocks:
            p = f"layer{s}.{j}."
            if bottleneck:
                width = _bottleneck(read, p, c_in, first, inner, groups, outs)
            else:
                width = _basic_block(read, p, c_in, first, outs)
            has_downsample = p + "downsample.0.weight" in state
            if has_downsample:
                if j > 0:
                    raise BlockSwapError(f"{p + 'downsample.0.weight'!r}: only the first block of a stage may have a "
                                         "downsample")
                read.conv(p + "downsample.0.weight", width, c_in, 1)
                read.batch_norm(p + "downsample.1.", width)
            elif c_in != width:
                raise BlockSwapError(f"layer{s}.{j} changes {c_in} to {width} channels but the weights have no "
                                     f"{p + 'downsample.0.weight'!r}")
            if j == 0:
                projects.append(has_downsample)
            c_in = width
        lengths.append(len(blocks))
        widths.append(c_in)
        if bottleneck:
            stage_inner.append(inner[0])
            stage_groups.append(groups[0])

    fc_hint = ": a teacher needs its classifier, a single nn.Linear named fc"
    if "fc.weight" not in state and (other := [k for k in keys if k.startswith("fc.")]):
        fc_hint += f" (found {other[0]!r})"
    num_classes = int(read.tensor("fc.weight", 2, fc_hint).shape[0])
    if read.state["fc.weight"].shape[1] != c_in:
        raise BlockSwapError(f"'fc.weight' takes {read.state['fc.weight'].shape[1]} features but layer{stages[-1]} "
                             f"gives {c_in}")
    if tuple(read.tensor("fc.bias", 1, fc_hint + " with a bias").shape) != (num_classes,):
        raise BlockSwapError(f"'fc.bias' has shape {list(state['fc.bias'].shape)}; expected [{num_classes}]")
    if extra := read.leftover():
        raise BlockSwapError(f"unexpected key {extra[0]!r} ({len(extra)} in all): not part of a torchvision-style "
                             f"ResNet; {_SUPPORTED}, without extra layers such as squeeze-excitation")
    teacher = _bottleneck_type(stage_inner, stage_groups, widths) if bottleneck else "Conv"
    return _Layout(in_channels, stem_channels, kh, tuple(lengths), tuple(widths), tuple(projects), num_classes,
                   teacher, tuple(stage_groups))


def _backbone(layout: _Layout, strides: list[int], stem: tuple[int, bool, int], name: str,
              input_size: int | None) -> Backbone:
    stem_stride, stem_pool, default_size = stem
    return Backbone(name, layout.stage_lengths, layout.stage_widths, tuple(strides), post_activation=True,
                    stem_channels=layout.stem_channels, stem_kernel=layout.stem_kernel, stem_stride=stem_stride,
                    stem_pool=stem_pool, input_size=default_size if input_size is None else input_size,
                    num_classes=layout.num_classes, in_channels=layout.in_channels,
                    teacher_block=layout.teacher_block)


def backbone_from_state_dict(state_dict: Mapping[str, Any], *, name: str = DEFAULT_NAME,
                             input_size: int | None = None) -> Backbone:
    """The `Backbone` of a BasicBlock or Bottleneck ResNet's state dict, read from its tensors' shapes.

    Strides and the stem's stride and max-pool are not in the weights: see the
    module docstring for what is decided from the shapes and what follows
    torchvision's convention. `input_size` overrides 224 (7x7 stem) or 32 (3x3 stem).
    """
    layout = _read_layout(normalize_state_dict(state_dict))
    if layout.stem_kernel not in _STEMS:
        raise BlockSwapError(f"'conv1.weight' is a {layout.stem_kernel}x{layout.stem_kernel} stem; from weights alone "
                             "only a 7x7 (ImageNet) or 3x3 (CIFAR) stem can be read: pass the model itself")
    strides = []
    for s, (c_in, width, projects) in enumerate(zip(layout.stage_inputs(), layout.stage_widths, layout.projects)):
        if c_in == width:
            strides.append(2 if projects else 1)
        else:
            strides.append(1 if s == 0 else 2)
    return _backbone(layout, strides, _STEMS[layout.stem_kernel], name, input_size)


def unwrap_module(module: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def _child(module: nn.Module, path: str, kind: type[nn.Module] | tuple[type[nn.Module], ...]) -> Any:
    target = module
    for part in path.split("."):
        target = getattr(target, part, None) if not part.isdigit() else (
            target[int(part)] if isinstance(target, nn.Sequential) and int(part) < len(target) else None)
        if target is None:
            raise BlockSwapError(f"the model has no module {path!r}: expected a torchvision-style ResNet")
    if not isinstance(target, kind):
        raise BlockSwapError(f"the model's {path!r} is a {type(target).__name__}; expected "
                             f"{kind.__name__ if isinstance(kind, type) else ' or '.join(k.__name__ for k in kind)}")
    return target


def _square(value: Any) -> int:
    """One number from a module's int-or-pair setting (stride, padding); -1 where it is not square."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return -1
    return int(value[0]) if len(set(value)) == 1 else -1


def _conv_stride(module: nn.Module, path: str, groups: int = 1) -> int:
    """A conv's stride, after checking the rest of its geometry (and its `groups`) is what the rebuilt network
    uses."""
    conv = _child(module, path, nn.Conv2d)
    kernel = _square(conv.kernel_size)
    if _square(conv.padding) != kernel // 2 or _square(conv.dilation) != 1 or conv.groups != groups:
        expected = "no groups" if groups == 1 else f"{groups} groups"
        raise BlockSwapError(f"the model's {path!r} has padding {conv.padding}, dilation {conv.dilation} and "
                             f"{conv.groups} groups; expected padding {kernel // 2}, no dilation and {expected}")
    stride = _square(conv.stride)
    if stride < 1:
        raise BlockSwapError(f"the model's {path!r} has stride {conv.stride}; expected a square stride")
    return stride


def _stem_pool(module: nn.Module) -> bool:
    pool = getattr(module, "maxpool", None)
    if pool is None or isinstance(pool, nn.Identity):
        return False
    if (isinstance(pool, nn.MaxPool2d) and _square(pool.kernel_size) == 3 and _square(pool.stride) == 2
            and _square(pool.padding) == 1 and _square(pool.dilation) == 1 and not pool.ceil_mode):
        return True
    raise BlockSwapError(f"the model's maxpool is {pool}; only MaxPool2d(3, stride=2, padding=1) or none is supported")


def backbone_from_module(module: nn.Module, *, name: str = DEFAULT_NAME, input_size: int | None = None) -> Backbone:
    """The `Backbone` of a torchvision-style ResNet module (BasicBlock or Bottleneck): shapes from its weights,
    strides from its convs.

    The stem's stride and max-pool and each stage's stride are read from the
    modules, so layouts the weights alone leave open are exact. `input_size`
    defaults to 224 for a downsampling stem (stride or max-pool) and 32 otherwise.
    """
    if not isinstance(module, nn.Module):
        raise BlockSwapError(f"expected a torch.nn.Module, got a {type(module).__name__}")
    module = unwrap_module(module)
    layout = _read_layout(normalize_state_dict(module.state_dict()))
    stem_stride = _conv_stride(module, "conv1")
    stem_pool = _stem_pool(module)
    # The conv that downsamples: a BasicBlock's conv1, a Bottleneck's 3x3 conv2 (torchvision's v1.5).
    strided, others = ("conv2", ("conv1", "conv3")) if layout.bottleneck else ("conv1", ("conv2",))
    where = f"{strided} (v1.5, as torchvision and timm have it)" if layout.bottleneck else strided
    strides = []
    for s, (c_in, width, projects) in enumerate(zip(layout.stage_inputs(), layout.stage_widths, layout.projects),
                                                start=1):
        stride = 1
        groups = layout.stage_groups[s - 1] if layout.bottleneck else 1
        for j in range(layout.stage_lengths[s - 1]):
            p = f"layer{s}.{j}."
            first = _conv_stride(module, p + strided, groups)
            if j == 0:
                stride = first
            elif first != 1:
                raise BlockSwapError(f"the model's {p}{strided} has stride {first}: only a stage's first block may "
                                     "downsample")
            for other in others:
                if (value := _conv_stride(module, p + other)) != 1:
                    raise BlockSwapError(f"the model's {p}{other} has stride {value}: a block downsamples in its "
                                         f"{where}")
        if projects and _conv_stride(module, f"layer{s}.0.downsample.0") != stride:
            raise BlockSwapError(f"the model's layer{s}.0.downsample.0 has another stride than layer{s}.0.{strided}")
        if projects != (c_in != width or stride != 1):
            raise BlockSwapError(f"the model's layer{s}.0 ({c_in}->{width} channels, stride {stride}) "
                                 f"{'has' if projects else 'lacks'} a downsample; blockswap's blocks project "
                                 "exactly where the shape changes")
        strides.append(stride)
    default_size = 224 if stem_stride > 1 or stem_pool else 32
    return _backbone(layout, strides, (stem_stride, stem_pool, default_size), name, input_size)


def check_outputs(module: nn.Module, net: BlockNetwork) -> None:
    """Compare the user's module with the rebuilt network on a random batch: a different forward is refused."""
    b = net.backbone
    x = torch.randn(2, b.in_channels, b.input_size, b.input_size, generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(module).float().cpu().eval()
    mode = net.training
    with torch.no_grad():
        try:
            theirs = reference(x)
        except Exception as e:  # noqa: BLE001 - a user's module may raise anything on an input it does not expect
            raise BlockSwapError(f"the model fails on a {b.input_size}x{b.input_size} batch ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:200]}); pass input_size") from None
        ours = net.eval()(x)
    net.train(mode)
    if not isinstance(theirs, Tensor) or theirs.shape != ours.shape:
        shape = list(theirs.shape) if isinstance(theirs, Tensor) else type(theirs).__name__
        raise BlockSwapError(f"the model returns {shape} on a batch of 2; expected logits of shape {list(ours.shape)}")
    gap = (theirs - ours).abs().max().item()
    if not gap <= 1e-4 * max(1.0, theirs.abs().max().item()):
        raise BlockSwapError(f"the model's outputs differ from the rebuilt ResNet's by up to {gap:.3g}: its forward "
                             "is not a torchvision-style ResNet (other pooling, activation or extra layers)")
