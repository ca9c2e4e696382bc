"""Genotypes: JSON round trip, published CSV import, errors that name the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from blockswap.space.backbones import Backbone, get_backbone, models_with_blocks, register_backbone
from blockswap.space.genotype import Genotype, GenotypeError, load_genotype
from blockswap.util.errors import BlockSwapError

STUDENT_400K = ("Conv DConvG16 DConv DConvA2 ConvB2 DConvA8 DConvG2 DConvG16 DConvA8 DConvA16 DConvG8 DConvA4 "
                "DConvG4 DConvG4 A4B2 DConvG8 DConvG8 G16B2").split()
PUBLISHED_CSV = (
    ",index,convs,fisher\n"
    "0,0,\"['Conv', 'DConvG16', 'DConv', 'DConvA2', 'ConvB2', 'DConvA8', 'DConvG2', 'DConvG16', 'DConvA8', "
    "'DConvA16', 'DConvG8', 'DConvA4', 'DConvG4', 'DConvG4', 'A4B2', 'DConvG8', 'DConvG8', 'G16B2']\",0.0\n"
)


def test_json_round_trip(tmp_path: Path) -> None:
    g = Genotype(Backbone.from_name("wrn-40-2"), tuple(STUDENT_400K))
    path = tmp_path / "g.json"
    g.save(path)
    data = json.loads(path.read_text())
    assert data == {"model": "wrn-40-2", "num_classes": 10, "blocks": STUDENT_400K}
    assert load_genotype(path) == g


def test_earlier_json_form_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"family": "wrn", "depth": 40, "width": 2, "num_classes": 10, "blocks": STUDENT_400K}))
    assert load_genotype(path) == Genotype(Backbone.from_name("wrn-40-2"), tuple(STUDENT_400K))
    path.write_text(json.dumps({"family": "resnet", "depth": 18, "blocks": ["Conv"] * 8}))
    assert load_genotype(path).backbone == Backbone.from_name("resnet18")


def test_unregistered_backbone_is_embedded_and_rebuilds(tmp_path: Path) -> None:
    from dataclasses import replace

    odd = replace(Backbone.from_name("wrn-16-1"), name="my-wrn", stage_widths=(8, 24, 40), num_classes=7)
    g = Genotype.uniform(odd, "G4B2")
    g.save(tmp_path / "g.json")
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["model"] == "my-wrn" and data["backbone"]["stage_widths"] == [8, 24, 40]
    again = load_genotype(tmp_path / "g.json")
    assert again == g and again.params() == sum(p.numel() for p in again.build().parameters())


def test_published_csv_reads_as_wrn_40_2(tmp_path: Path) -> None:
    path = tmp_path / "bs400k.csv"
    path.write_text(PUBLISHED_CSV)
    g = load_genotype(path)
    assert g.backbone == Backbone.from_name("wrn-40-2")
    assert list(g.blocks) == STUDENT_400K
    assert g.params() == 404_250


def test_published_imagenet_csv_with_backbone(tmp_path: Path) -> None:
    path = tmp_path / "bs_imagenet.csv"
    names = ["DConvA8", "G2B2", "G2B2", "Conv", "DConvA2", "DConvG2", "ConvB2", "DConvA16", "A16B2", "G16B2",
             "DConvG4", "A2B2", "A8B2", "G2B2", "DConvG4", "A4B2"]
    path.write_text(",index,convs,fisher\n0,0,\"" + repr(names).replace(", ", ",", 3) + "\",0.0\n")
    g = load_genotype(path, backbone=Backbone.from_name("resnet34"))
    assert list(g.blocks) == names and g.backbone.num_classes == 1000
    with pytest.raises(GenotypeError, match="wrn-40-2 has 18 blocks but the genotype lists 16"):
        load_genotype(path)


def test_multi_row_csv_picks_row(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    path.write_text(PUBLISHED_CSV + "1,1,\"" + repr(["Conv"] * 18) + "\",1.0\n")
    assert load_genotype(path, row=1).blocks == ("Conv",) * 18
    with pytest.raises(GenotypeError, match="row 5 requested but the file has 2 data rows"):
        load_genotype(path, row=5)


@pytest.mark.parametrize(
    "content,message",
    [
        ({"family": "wrn", "depth": 40, "width": 2, "blocks": ["Conv"] * 17},
         "has 18 blocks but the genotype lists 17"),
        ({"family": "wrn", "depth": 40, "width": 2, "blocks": ["Conv"] * 17 + ["Conv9"]},
         "position 17: unknown block type 'Conv9'; valid choices: Conv, DConvA2"),
        ({"family": "wrn", "depth": 40, "blocks": "Conv"}, "must be a list"),
        ({"family": "vgg", "depth": 16, "blocks": []}, "valid choices: wrn, resnet"),
        ({"depth": 40, "blocks": []}, "missing field\\(s\\): model"),
        ({"family": "wrn", "depth": 40, "width": 1, "blocks": ["G16B2"] + ["Conv"] * 17}, "cannot be built"),
        ([1, 2, 3], "JSON object"),
    ],
)
def test_bad_json_genotypes_name_the_problem(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(GenotypeError, match=message):
        load_genotype(path)


def test_malformed_files(tmp_path: Path) -> None:
    notjson = tmp_path / "x.json"
    notjson.write_text("{not json")
    with pytest.raises(GenotypeError, match="not valid JSON"):
        load_genotype(notjson)
    nocol = tmp_path / "x.csv"
    nocol.write_text("a,b\n1,2\n")
    with pytest.raises(GenotypeError, match="'convs' column"):
        load_genotype(nocol)
    badlit = tmp_path / "y.csv"
    badlit.write_text("index,convs\n0,\"[Conv, oops\"\n")
    with pytest.raises(GenotypeError, match="not a Python list literal"):
        load_genotype(badlit)
    with pytest.raises(GenotypeError, match="not found"):
        load_genotype(tmp_path / "missing.json")


def test_search_best_json_is_a_genotype_file(tmp_path: Path) -> None:
    g = Genotype.uniform(Backbone.from_name("wrn-16-1"), "DConv")
    path = tmp_path / "best.json"
    path.write_text(json.dumps({**g.to_dict(), "params": 1, "macs": 2, "fisher": 0.5}))
    assert load_genotype(path) == g


# The published ResNet-34 ImageNet genotypes, byte for byte (BayesWatch/pytorch-blockswap genotypes/); the first
# has no space after some commas of its list literal.
BS_IMAGENET_1 = (
    ",index,convs,fisher\n"
    "0,0,\"['DConvA8', 'G2B2', 'G2B2', 'Conv', 'DConvA2', 'DConvG2','ConvB2','DConvA16', 'A16B2', 'G16B2', "
    "'DConvG4', 'A2B2', 'A8B2', 'G2B2', 'DConvG4', 'A4B2']\",0.0\n"
)
BS_IMAGENET_2 = (
    ",index,convs,fisher\n"
    "0,0,\"['G4B2', 'DConvG4', 'A8B2', 'Conv', 'G4B2', 'G16B2', 'G8B2', 'Conv', 'A2B2', 'A8B2', 'A4B2', "
    "'DConvA4', 'Conv', 'Conv', 'DConv', 'G8B2']\",0.0\n"
)


@pytest.mark.parametrize(
    "text,blocks,params,millions",
    [
        # SPEC section 6: "BlockSwap 3.1M 29.57".
        (BS_IMAGENET_1, "DConvA8 G2B2 G2B2 Conv DConvA2 DConvG2 ConvB2 DConvA16 A16B2 G16B2 DConvG4 A2B2 A8B2 G2B2 "
         "DConvG4 A4B2", 3_083_176, 3.1),
        # SPEC section 6 prints "BlockSwap 8.1M 26.24", but this genotype counts 8,193,576 (8.2M to that
        # precision) both here and in the published model definition, counted by hand: the paper truncated.
        (BS_IMAGENET_2, "G4B2 DConvG4 A8B2 Conv G4B2 G16B2 G8B2 Conv A2B2 A8B2 A4B2 DConvA4 Conv Conv DConv G8B2",
         8_193_576, 8.2),
    ],
)
def test_published_imagenet_genotypes_read_as_resnet34(
    tmp_path: Path, text: str, blocks: str, params: int, millions: float
) -> None:
    path = tmp_path / "bs_imagenet.csv"
    path.write_text(text)
    g = load_genotype(path, backbone=get_backbone("resnet34"))
    assert g.blocks == tuple(blocks.split()) and g.backbone == get_backbone("resnet34")
    assert g.params() == params and round(g.params() / 1e5) / 10 == millions
    net = g.build()
    assert sum(p.numel() for p in net.parameters()) == params
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_csv_of_the_wrong_length_names_the_model_it_fits(tmp_path: Path) -> None:
    path = tmp_path / "bs_imagenet_1.csv"
    path.write_text(BS_IMAGENET_1)
    with pytest.raises(GenotypeError) as e:
        load_genotype(path)
    message = str(e.value)
    assert message == (f"{path}: wrn-40-2 has 18 blocks but the genotype lists 16: resnet34 has 16 blocks "
                       "(pass --model resnet34)")
    eight = tmp_path / "eight.csv"
    eight.write_text(",index,convs,fisher\n0,0,\"" + repr(["Conv"] * 8) + "\",0.0\n")
    with pytest.raises(GenotypeError, match=r"resnet34 has 16 blocks but the genotype lists 8: .*resnet18 has 8 "):
        load_genotype(eight, backbone=get_backbone("resnet34"))
    nine = tmp_path / "nine.csv"
    nine.write_text(",index,convs,fisher\n0,0,\"" + repr(["Conv"] * 9) + "\",0.0\n")
    with pytest.raises(GenotypeError) as e:
        load_genotype(nine, backbone=get_backbone("wrn-16-4"))
    assert "lists 9: wrn-22-4 (any width)" in str(e.value) and "--model wrn-22-4" in str(e.value)
    assert load_genotype(nine, backbone=get_backbone("wrn-22-4")).backbone.name == "wrn-22-4"


def test_count_error_without_a_match_says_so_and_json_gets_no_cli_hint(tmp_path: Path) -> None:
    seven = tmp_path / "seven.csv"
    seven.write_text(",index,convs,fisher\n0,0,\"" + repr(["Conv"] * 7) + "\",0.0\n")
    with pytest.raises(GenotypeError, match="lists 7; no registered model has 7 blocks$"):
        load_genotype(seven)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"model": "resnet18", "blocks": ["Conv"] * 16}))
    with pytest.raises(GenotypeError) as e:
        load_genotype(wrong)
    assert str(e.value) == "resnet18 has 8 blocks but the genotype lists 16: resnet34 has 16 blocks"


@pytest.mark.parametrize("blocks,depth", [(3, 10), (6, 16), (9, 22), (18, 40), (48, 100)])
def test_models_with_blocks_solves_wrn_depth_keeping_the_width(blocks: int, depth: int) -> None:
    found = dict(models_with_blocks(blocks, like=get_backbone("wrn-16-3")))
    assert found[f"wrn-{depth}-3"] == ("width",)
    assert dict(models_with_blocks(blocks))[f"wrn-{depth}-1"] == ("width",)
    assert all(get_backbone(name).num_blocks == blocks for name in found)
    assert not any(name.startswith("resnet") for name in found)


def test_models_with_blocks_finds_resnets_and_nothing_for_impossible_counts() -> None:
    assert ("resnet18", ()) in models_with_blocks(8) and ("resnet34", ()) in models_with_blocks(16)
    assert not [n for n, _ in models_with_blocks(16) if n.startswith("wrn")]
    for impossible in (0, -3, 7):
        assert not [n for n, _ in models_with_blocks(impossible) if n.startswith(("wrn", "resnet"))]


def test_users_registered_models_are_suggested(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dataclasses import replace

    from blockswap.space import backbones

    monkeypatch.setattr(backbones, "_REGISTRY", backbones._REGISTRY.copy())  # registrations end with the test
    resnet34 = get_backbone("resnet34")
    register_backbone("my-net")(lambda: replace(resnet34, name="my-net"))

    @register_backbone("stack-{depth}-{stages}")
    def stack(depth: int, stages: int) -> Backbone:
        if depth % 2:
            raise BlockSwapError(f"stack depth must be even, got {depth}")
        return Backbone("stack", (depth // 2,) * stages, (8,) * stages, (1,) * stages, post_activation=False,
                        stem_channels=8)

    found = dict(models_with_blocks(16))
    assert found["my-net"] == () and found["stack-32-1"] == ()  # the stage count changes the block count
    assert "stack-16-2" not in found and all(get_backbone(n).num_blocks == 16 for n in found)
    path = tmp_path / "g.csv"
    path.write_text(BS_IMAGENET_1)
    with pytest.raises(GenotypeError) as e:
        load_genotype(path)
    assert str(e.value).endswith("lists 16: resnet34, my-net and stack-32-1 have 16 blocks "
                                 "(pass --model resnet34 or --model my-net or --model stack-32-1)")
    register_backbone("another-net")(lambda: replace(resnet34, name="another-net"))
    with pytest.raises(GenotypeError) as e:
        load_genotype(path)
    assert "another-net" not in str(e.value) and "\n" not in str(e.value)  # at most three, on one line
