"""CLI options come from the config dataclasses: one source for every default (issue 9)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from blockswap import Backbone, Genotype
from blockswap.cli import build_parser
from blockswap.deploy.evaluate import EvalConfig
from blockswap.scoring.trained import RecipeSteps
from blockswap.search.run import SearchConfig
from blockswap.study.compare import CompareConfig
from blockswap.study.config import StudyConfig
from blockswap.study.mixing import MixingConfig
from blockswap.study.placement import PlacementConfig
from blockswap.train.distill import DistillConfig
from blockswap.train.training import RECIPES, TrainConfig, recipe_defaults
from blockswap.util.errors import BlockSwapError
from blockswap.util.options import add_options, command_args, field_default, recorded_form, values
from blockswap.util.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]
GENOTYPE = Genotype.uniform(Backbone.from_name("wrn-10-1"))


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[prefix + name] = sub
                out.update(_subcommands(sub, prefix + name + " "))
    return out


def _defaults(*classes: type) -> dict[str, object]:
    return {f.name: field_default(f) for cls in classes for f in dataclasses.fields(cls)
            if f.metadata.get("cli") and not dataclasses.is_dataclass(field_default(f))}


COMMANDS = {
    "search": _defaults(SearchConfig),
    "train teacher": _defaults(TrainConfig),
    "train student": _defaults(TrainConfig, DistillConfig),
    "eval": _defaults(EvalConfig),
    "study rank": _defaults(StudyConfig),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_cli_default_equals_its_config_default(command: str) -> None:
    parser = _subcommands(build_parser())[command]
    expected = COMMANDS[command]
    checked = 0
    for action in parser._actions:
        if action.dest in expected:
            if expected[action.dest] is dataclasses.MISSING:
                assert action.required, f"{command} --{action.dest} has no default, so the option is required"
                checked += 1
                continue
            assert action.default == expected[action.dest], f"{command} --{action.dest}"
            if action.default is not None and action.help and not isinstance(action, argparse._StoreFalseAction):
                shown = (",".join(map(str, action.default)) if isinstance(action.default, (list, tuple))
                         else action.default)  # a list option shows its default as it is typed: 1,128
                assert f"(default: {shown})" in action.help, f"{command} --{action.dest} help"
            checked += 1
    assert checked >= {"search": 9, "train teacher": 13, "train student": 16, "eval": 8, "study rank": 18}[command]


def test_every_config_field_meant_for_the_cli_has_an_option() -> None:
    commands = _subcommands(build_parser())
    for command, classes in {"search": (SearchConfig,), "train student": (TrainConfig, DistillConfig),
                             "eval": (EvalConfig,), "study rank": (StudyConfig,)}.items():
        dests = {a.dest for a in commands[command]._actions}
        wanted = {name for cls in classes for name in _defaults(cls)}
        assert wanted <= dests, f"{command} lacks {sorted(wanted - dests)}"


def test_teacher_training_takes_no_distillation_options() -> None:
    dests = {a.dest for a in _subcommands(build_parser())["train teacher"]._actions}
    assert not {"beta", "kd_alpha", "kd_temperature"} & dests


def test_nested_distill_config_is_filled_from_flat_options() -> None:
    args = build_parser().parse_args(["train", "student", "--genotype", "g.json", "--no-teacher", "--data-dir", "d",
                                      "--out", "o", "--beta", "750", "--kd-alpha", "0.5"])
    config = TrainConfig(genotype=GENOTYPE, **values(args, TrainConfig))
    assert config.distill == DistillConfig(beta=750.0, kd_alpha=0.5)
    assert config.data_dir == "d" and config.epochs == 200


def test_earlier_flat_distill_settings_read_into_the_nested_config() -> None:
    config = TrainConfig.from_dict({"genotype": GENOTYPE.to_dict(), "data_dir": "d", "beta": 500.0, "kd_alpha": 0.1,
                                    "kd_temperature": 2.0})
    assert config.distill == DistillConfig(500.0, 0.1, 2.0)


def test_command_args_rebuild_the_config_through_the_parser() -> None:
    """The command a study report prints gives back the same config when parsed."""
    config = StudyConfig(budget=200_000, data_dir="data dir", candidates=24, proxies=["fisher", "l2@10"], inits=4,
                         average=["fisher"], train_seeds=[0, 1], train_subset=5000)
    parser = argparse.ArgumentParser()
    add_options(parser, StudyConfig)
    args = command_args(config)
    assert "--model" not in args  # defaults are left out
    assert StudyConfig(**values(parser.parse_args(args), StudyConfig)) == config


BAD_SETTINGS = [  # (config, setting, a value its declared check refuses, what the error must say)
    (SearchConfig, "samples", 0, "samples must be a positive whole number"),
    (SearchConfig, "samples", True, "samples must be a positive whole number"),
    (SearchConfig, "seed", -1, "seed must be a whole number in [0, 2**63)"),
    (SearchConfig, "tolerance", 1.0, "tolerance must be a fraction in (0, 1)"),
    (SearchConfig, "rescore_fraction", 0, "rescore_fraction must be a fraction in (0, 1]"),
    (SearchConfig, "num_classes", 0, "num_classes must be a positive whole number"),
    (SearchConfig, "scorer", "magic", "unknown scorer 'magic'"),
    (SearchConfig, "scorer_settings", {"x": float("nan")}, "scorer_settings must be a dict of JSON values"),
    (TrainConfig, "epochs", 2.0, "epochs must be a positive whole number"),
    (TrainConfig, "lr", float("inf"), "lr must be positive"),
    (TrainConfig, "weight_decay", -1e-4, "weight_decay must be non-negative"),
    (TrainConfig, "cutout", 33, "cutout must be at most 32"),
    (TrainConfig, "schedule", "linear", "unknown schedule 'linear'"),
    (TrainConfig, "test_subset", 0, "test_subset must be a positive whole number"),
    (StudyConfig, "batch_size", 0, "batch_size must be a positive whole number"),
    (StudyConfig, "momentum", float("nan"), "momentum must be in [0, 1)"),
    (StudyConfig, "tolerance", 2, "tolerance must be a fraction"),
    (StudyConfig, "train_seeds", [], "train_seeds must be one or more whole numbers"),
    (EvalConfig, "latency_batch_sizes", [1, 0], "latency_batch_sizes must be one or more positive whole numbers"),
    (EvalConfig, "min_time", 0.0, "min_time must be positive"),
    (EvalConfig, "precision", "fp64", "unknown precision 'fp64'"),
    (RecipeSteps, "lr", 0, "lr must be positive"),
]
REQUIRED = {SearchConfig: {"budget": 40_000}, TrainConfig: {"genotype": GENOTYPE, "data_dir": "d"},
            StudyConfig: {"budget": 40_000, "data_dir": "d", "model": "wrn-10-1", "candidates": 4, "proxies": ["l2"]},
            EvalConfig: {"checkpoint": "w.pt", "data_dir": "d"}, RecipeSteps: {}}


@pytest.mark.parametrize("cls,name,value,message", BAD_SETTINGS, ids=[f"{c.__name__}.{n}" for c, n, *_ in BAD_SETTINGS])
def test_declared_checks_refuse_bad_settings_by_name(cls: type, name: str, value: object, message: str) -> None:
    settings = {**REQUIRED[cls], name: value}
    with pytest.raises(BlockSwapError) as e:
        config = cls(**settings)
        if isinstance(config, TrainConfig):
            config.validate()
    assert message in str(e.value)


@pytest.mark.parametrize("cls", [SearchConfig, TrainConfig, StudyConfig, EvalConfig, RecipeSteps])
def test_every_number_setting_declares_its_check(cls: type) -> None:
    """A numeric field without a check (or a parser that checks) would take 0, -1, NaN or True unrefused."""
    import typing

    from blockswap.util.options import _base_type

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _base_type(hints[f.name]) in (int, float) or hints[f.name] in (list[int], list[int] | None):
            assert f.metadata.get("check") or f.metadata.get("parse"), f"{cls.__name__}.{f.name} declares no check"
    config = cls(**REQUIRED[cls])  # the defaults pass their own checks
    if isinstance(config, TrainConfig):
        config.validate()


def test_the_recipe_is_declared_once_and_carried_whole() -> None:
    """TrainConfig, StudyConfig and RecipeSteps share Recipe's fields; a study hands every one to its runs."""
    names = [f.name for f in dataclasses.fields(Recipe)]
    for cls in (TrainConfig, StudyConfig, RecipeSteps):
        assert {f.name: f for f in dataclasses.fields(cls) if f.name in names} == \
            {f.name: f for f in dataclasses.fields(Recipe)}, cls.__name__
    odd = dict(epochs=3, batch_size=64, lr=0.05, momentum=0.5, weight_decay=1e-3, schedule="step", cutout=8)
    study = StudyConfig(**REQUIRED[StudyConfig], **odd)
    assert study.recipe() == Recipe(**odd)
    assert study.train_config(GENOTYPE, 1).recipe() == Recipe(**odd)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_a_recipe_gives_the_cli_defaults_and_from_recipe_alike(recipe: str) -> None:
    parser = _subcommands(build_parser(recipe))["train student"]
    args = parser.parse_args(["--genotype", "g.json", "--no-teacher", "--data-dir", "d", "--out", "o"])
    from_cli = TrainConfig(genotype=GENOTYPE, **values(args, TrainConfig))
    assert from_cli == TrainConfig.from_recipe(recipe, genotype=GENOTYPE, data_dir="d")
    assert from_cli.recipe() == RECIPES[recipe]
    assert from_cli.distill.beta == recipe_defaults(recipe)["beta"] == {"cifar": 1000.0, "imagenet": 750.0}[recipe]


def test_the_genotype_is_parsed_once_and_saved_as_its_dict() -> None:
    config = TrainConfig(genotype=GENOTYPE.to_dict(), data_dir="d", teacher_genotype=GENOTYPE.to_dict())
    assert config.genotype == GENOTYPE and config.teacher_genotype == GENOTYPE
    record = config.record()
    assert record["genotype"] == GENOTYPE.to_dict() and record["teacher_genotype"] == GENOTYPE.to_dict()
    assert json.loads(json.dumps(record)) == record
    assert TrainConfig.from_dict(record) == config
    assert TrainConfig(genotype=GENOTYPE, data_dir="d").record() == {**record, "teacher_genotype": None}


def test_earlier_flat_training_records_read_and_compare_equal() -> None:
    """config.json as earlier versions wrote it (flat recipe, genotype dict, flat distillation) resumes as it is."""
    old = {"genotype": GENOTYPE.to_dict(), "data_dir": "d", "epochs": 2, "batch_size": 128, "lr": 0.1,
           "momentum": 0.9, "weight_decay": 0.0005, "schedule": "cosine", "teacher": None, "teacher_genotype": None,
           "teacher_sha256": None, "beta": 1000.0, "kd_alpha": 0.0, "kd_temperature": 4.0, "prune": None,
           "prune_budget": None, "train_subset": None, "test_subset": None, "seed": 0, "precision": "auto",
           "channels_last": True, "cutout": 16}
    config = TrainConfig.from_dict(old)
    assert config == TrainConfig(genotype=GENOTYPE, data_dir="d", epochs=2)
    flat = {k: v for k, v in old.items() if k not in ("beta", "kd_alpha", "kd_temperature")}
    assert config.record() == {**flat, "distill": {"beta": 1000.0, "kd_alpha": 0.0, "kd_temperature": 4.0}}


REPORTS = {"study.json": StudyConfig, "placement.json": PlacementConfig, "mixing.json": MixingConfig,
           "compare.json": CompareConfig}


def _study_class(saved: dict) -> type:
    """The config class of a study folder's config.json, from the settings only that kind has."""
    if "proxies" in saved:
        return StudyConfig
    if "budgets" in saved:
        return CompareConfig
    return PlacementConfig if "type" in saved else MixingConfig


def _recorded_studies() -> list[tuple[str, type, dict, str | None]]:
    """(where, its config class, the recorded study settings, the command its report printed) of every study in
    studies/; the training runs inside them are checked by the test after."""
    found = []
    for name, cls in REPORTS.items():
        for path in sorted((REPO / "studies").glob(f"**/{name}")):
            report = json.loads(path.read_text())
            found.append((str(path.relative_to(REPO)), cls, report["config"], report.get("command")))
    for path in sorted((REPO / "studies").glob("**/config.json")):
        if not {"candidates", "students", "teacher"} & set(path.parts):  # those are a study's runs
            saved = json.loads(path.read_text())
            found.append((str(path.relative_to(REPO)), _study_class(saved), saved, None))
    return found


STUDIES = _recorded_studies()
RUNS = sorted([*(REPO / "studies").glob("**/seed-*/config.json"), *(REPO / "studies").glob("**/teacher/config.json")])


@pytest.mark.parametrize("where,cls,saved,command", STUDIES, ids=[where for where, *_ in STUDIES])
def test_recorded_studies_still_read_and_their_command_rebuilds_them(where: str, cls: type, saved: dict,
                                                                      command: str | None) -> None:
    """A study folder of an earlier version (flat settings, without the later recipe fields) is the same study."""
    config = cls.from_dict(saved)
    assert recorded_form(cls, saved) == dataclasses.asdict(config)
    assert {k: v for k, v in dataclasses.asdict(config).items() if k in saved} == saved
    parser = argparse.ArgumentParser()
    add_options(parser, cls)
    assert cls(**values(parser.parse_args(command_args(config)), cls)) == config
    if command is not None:  # the command the report printed, its --out left out
        argv = shlex.split(command)[3:]
        argv = argv[: argv.index("--out")]
        assert cls(**values(parser.parse_args(argv), cls)) == config


def test_every_committed_training_run_still_reads_as_the_run_it_was() -> None:
    """Each run of a committed study, a comparison's teacher too, records a TrainConfig this version reads back to
    the same settings."""
    assert len(RUNS) >= 100
    for path in RUNS:
        saved = json.loads(path.read_text())
        record = TrainConfig.from_dict(saved).record()
        assert {k: v for k, v in record.items() if k in saved} == saved, path
