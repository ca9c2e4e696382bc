"""CLI options come from the config dataclasses: one source for every default (issue 9)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from blockswap.cli import build_parser
from blockswap.train.distill import DistillConfig
from blockswap.deploy.evaluate import evaluate_checkpoint
from blockswap.util.options import field_default
from blockswap.search.run import SearchConfig
from blockswap.train.training import TrainConfig


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
    "eval": {name: p.default for name, p in inspect.signature(evaluate_checkpoint).parameters.items()
             if p.default is not inspect.Parameter.empty},
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
    assert checked >= {"search": 9, "train teacher": 13, "train student": 16, "eval": 3}[command]


def test_every_config_field_meant_for_the_cli_has_an_option() -> None:
    commands = _subcommands(build_parser())
    for command, classes in {"search": (SearchConfig,), "train student": (TrainConfig, DistillConfig)}.items():
        dests = {a.dest for a in commands[command]._actions}
        wanted = {name for cls in classes for name in _defaults(cls)}
        assert wanted <= dests, f"{command} lacks {sorted(wanted - dests)}"


def test_teacher_training_takes_no_distillation_options() -> None:
    dests = {a.dest for a in _subcommands(build_parser())["train teacher"]._actions}
    assert not {"beta", "kd_alpha", "kd_temperature"} & dests


def test_nested_distill_config_is_filled_from_flat_options() -> None:
    args = build_parser().parse_args(["train", "student", "--genotype", "g.json", "--no-teacher", "--data-dir", "d",
                                      "--out", "o", "--beta", "750", "--kd-alpha", "0.5"])
    from blockswap.util.options import values

    config = TrainConfig(genotype={}, **values(args, TrainConfig))
    assert config.distill == DistillConfig(beta=750.0, kd_alpha=0.5)
    assert config.data_dir == "d" and config.epochs == 200


def test_earlier_flat_distill_settings_read_into_the_nested_config() -> None:
    config = TrainConfig.from_dict({"genotype": {}, "data_dir": "d", "beta": 500.0, "kd_alpha": 0.1,
                                    "kd_temperature": 2.0})
    assert config.distill == DistillConfig(500.0, 0.1, 2.0)


def test_command_args_rebuild_the_config_through_the_parser() -> None:
    """The command a study report prints gives back the same config when parsed."""
    import argparse

    from blockswap.util.options import add_options, command_args, values
    from blockswap.study.config import StudyConfig

    config = StudyConfig(budget=200_000, data_dir="data dir", candidates=24, proxies=["fisher", "l2@10"], inits=4,
                         average=["fisher"], train_seeds=[0, 1], train_subset=5000)
    parser = argparse.ArgumentParser()
    add_options(parser, StudyConfig)
    args = command_args(config)
    assert "--model" not in args  # defaults are left out
    assert StudyConfig(**values(parser.parse_args(args), StudyConfig)) == config
