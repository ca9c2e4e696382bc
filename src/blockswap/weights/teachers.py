"""From a file or a `--model` name to a network: blockswap checkpoints, bare ResNet state dicts and
registered backbones resolved to a genotype and loaded weights (`load_network`, `load_resnet`, `model_backbone`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..space.backbones import Backbone, get_backbone
from ..space.genotype import Genotype
from ..space.networks import BlockNetwork
from ..util.errors import BlockSwapError
from .checkpoint import CheckpointError, read_checkpoint
from .resnet_import import (
    DEFAULT_NAME,
    backbone_from_module,
    backbone_from_state_dict,
    check_outputs,
    is_weight_file,
    normalize_state_dict,
    unwrap_module,
)

# What eval and export advise for weights of no known architecture: they have no flag to name one.
RECORD_IT = ("save it as blockswap train does, with its genotype: {'genotype': genotype.to_dict(), "
             "'state_dict': model.state_dict()}")

__all__ = ["RECORD_IT", "load_network", "load_resnet", "model_backbone", "genotype_of_weights"]


def _describe(genotype: Genotype) -> str:
    kinds = set(genotype.blocks)
    blocks = f"all {genotype.blocks[0]}" if len(kinds) == 1 else "blocks " + " ".join(genotype.blocks)
    return f"{genotype.backbone.name} ({blocks})"


def load_network(
    path: str | Path,
    expected: Genotype | None = None,
    map_location: str | torch.device = "cpu",
    unnamed: str = "name it (e.g. --teacher-model wrn-40-2)",
) -> tuple[BlockNetwork, Genotype, dict[str, Any]]:
    """The network stored in `path`, its genotype and the file's dict.

    When the file records its genotype and `expected` is given, they must be
    equal. A bare state dict (or a common wrapper of one) is built as
    `expected`, else as the BasicBlock or Bottleneck ResNet its shapes show
    (`blockswap.weights.resnet_import`), named after the file; `unnamed` is
    the advice when it is neither, for the command that read it.
    """
    payload = read_checkpoint(path, map_location)
    if "genotype" in payload and "state_dict" in payload:
        genotype = Genotype.from_dict(payload["genotype"])
        if expected is not None and expected != genotype:
            raise CheckpointError(
                f"{path} holds {_describe(genotype)}, not the expected {_describe(expected)}; "
                "pass the matching --teacher-model, or leave it out to use the checkpoint's architecture"
            )
        state = payload["state_dict"]
    else:
        try:
            state = normalize_state_dict(payload)
            genotype = expected or genotype_of_weights(state, name=Path(path).stem)
        except BlockSwapError as e:
            raise CheckpointError(f"{path} does not record its architecture and is not a ResNet whose "
                                  f"layout its weights show ({e}); {unnamed}") from None
    model = genotype.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        summary = " ".join(str(e).split())
        raise CheckpointError(f"{path} does not fit {_describe(genotype)}: {summary[:400]}") from None
    _check_values(path, model)
    return model, genotype, payload


def _check_values(path: str | Path, model: torch.nn.Module) -> None:
    """Refuse a network no run can use, naming the tensor: NaN or infinite values, a negative BN variance."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path} holds NaN or infinite values in {name}: the network it stores is broken "
                                  "(saved from a run that diverged, or damaged); use another weight file")
        if name.endswith("running_var") and (tensor < 0).any():
            raise CheckpointError(f"{path} holds a negative BatchNorm variance in {name}, which no trained network "
                                  "has: the file is damaged or was edited; use another weight file")


def _recorded_teacher(payload: dict[str, Any], name: str | None, input_size: int | None) -> tuple[Genotype, Any]:
    """The teacher genotype (every block the backbone's teacher block) and weights of a blockswap checkpoint."""
    genotype = Genotype.from_dict(payload["genotype"])
    teacher = genotype.backbone.teacher_block
    if set(genotype.blocks) != {teacher}:
        raise BlockSwapError(f"the file holds a blockswap student ({genotype}); a teacher has every block {teacher}")
    changes = {k: v for k, v in (("name", name), ("input_size", input_size)) if v is not None}
    return Genotype.uniform(replace(genotype.backbone, **changes)), payload["state_dict"]


def load_resnet(source: str | Path | nn.Module | Mapping[str, Any], *, name: str | None = None,
                input_size: int | None = None, num_classes: int | None = None) -> tuple[BlockNetwork, Genotype]:
    """The user's trained ResNet as blockswap's teacher network (every block its teacher type), with its genotype.

    `source` is a weight file (read with weights_only loading), a state dict or
    wrapper (see `normalize_state_dict`), or a module (its strides are read from
    it and its outputs checked against the rebuilt network's). The weights load
    strictly under their own key names. `name` defaults to "user-resnet" (a
    blockswap checkpoint keeps its recorded backbone); `num_classes`, if given,
    must match the classifier's.
    """
    module = unwrap_module(source) if isinstance(source, nn.Module) else None
    if module is not None:
        state: Any = module.state_dict()
        genotype = Genotype.uniform(backbone_from_module(module, name=name or DEFAULT_NAME, input_size=input_size))
    else:
        if isinstance(source, (str, Path)):
            payload: Any = read_checkpoint(Path(source).expanduser())
            where = f"{source}: "
        else:
            payload, where = source, ""
        try:
            if isinstance(payload, Mapping) and "genotype" in payload and "state_dict" in payload:
                genotype, state = _recorded_teacher(dict(payload), name, input_size)
            else:
                state = payload
                genotype = Genotype.uniform(
                    backbone_from_state_dict(payload, name=name or DEFAULT_NAME, input_size=input_size))
        except BlockSwapError as e:
            raise BlockSwapError(f"{where}{e}") from None
    found = genotype.backbone.num_classes
    if num_classes is not None and num_classes != found:
        raise BlockSwapError(f"the model has {found} classes but {num_classes} were asked for; a teacher keeps its "
                             f"classifier, so leave the number of classes out or set it to {found}")
    net = genotype.build()
    try:
        net.load_state_dict(normalize_state_dict(state), strict=True)
    except RuntimeError as e:
        raise BlockSwapError(f"the weights do not load into {genotype.backbone.name}: "
                             f"{' '.join(str(e).split())[:400]}") from None
    if module is not None:
        check_outputs(module, net)
    return net, genotype


def genotype_of_weights(payload: Mapping[str, Any], name: str = DEFAULT_NAME) -> Genotype:
    """The teacher genotype of a weight file's contents: as recorded by blockswap, else read from the shapes."""
    if "genotype" in payload and "state_dict" in payload:
        return Genotype.from_dict(payload["genotype"])
    return Genotype.uniform(backbone_from_state_dict(payload, name=name))


@functools.lru_cache(maxsize=16)
def _file_genotype(path: Path, stamp: tuple[int, int]) -> Genotype:
    try:
        return genotype_of_weights(read_checkpoint(path), name=path.stem)
    except BlockSwapError as e:
        raise BlockSwapError(f"{path}: {e}") from None


def model_backbone(model: str, num_classes: int | None = None) -> Backbone:
    """What a `--model` argument names: a weight file's network (read from its shapes, named after the file),
    or a registered backbone with `num_classes` classes where given (a file's head must have that many)."""
    if not is_weight_file(model):
        return get_backbone(model, num_classes)
    path = Path(model).expanduser().resolve()
    info = path.stat()
    backbone = _file_genotype(path, (info.st_mtime_ns, info.st_size)).backbone
    if num_classes is not None and num_classes != backbone.num_classes:
        raise BlockSwapError(f"{model} has {backbone.num_classes} classes but --num-classes asks for {num_classes}; "
                             "a teacher keeps its classifier")
    return backbone
