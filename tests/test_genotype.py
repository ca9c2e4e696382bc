"""Genotypes: JSON round trip, published CSV import, errors that name the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blockswap.genotype import Genotype, GenotypeError, load_genotype
from blockswap.backbones import Backbone

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
         "position 17: unknown block type 'Conv9'; registered: Conv, DConvA2"),
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
