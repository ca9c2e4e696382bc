"""The code in the README and in docs/*.md stays true: every Python block runs as written, each in a fresh
interpreter, and every `blockswap` command line (in bash blocks and in inline code) names a real command with
options that command has."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)


def blocks(language: str) -> list[tuple[str, str]]:
    """(page:index, code) of every fenced block of `language` in the README and the docs pages."""
    found = []
    for page in PAGES:
        codes = [code for lang, code in FENCE.findall(page.read_text()) if lang == language]
        found += [(f"{page.relative_to(REPO)}:{i}", code) for i, code in enumerate(codes)]
    return found


PYTHON = blocks("python")
BASH = blocks("bash")


def test_the_pages_hold_python_blocks() -> None:
    # the README's API examples moved to docs/: they must still be found and run
    assert len(PYTHON) >= 6, [name for name, _ in PYTHON]
    assert any(name.startswith("docs/python-api.md") for name, _ in PYTHON)


@pytest.mark.parametrize("code", [code for _, code in PYTHON], ids=[name for name, _ in PYTHON])
def test_python_block_runs(code: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# --- command lines -------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    sys.path.insert(0, str(REPO / "src"))
    from blockswap.cli import build_parser

    return build_parser()


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_command(args: list[str], parser: argparse.ArgumentParser, whole: bool) -> list[str]:
    """What is wrong with `blockswap ARGS`: unknown subcommands or options; with `whole`, a missing subcommand.

    Options written as the synopsis writes them (`[--seed 0]`, `--scorer fast|reference`) count by their name.
    """
    problems, top, current, path = [], _options(parser), parser, ["blockswap"]
    value_next = False
    for token in args:
        token = token.strip("[]")
        if value_next:  # the value of the option before it
            value_next = False
        elif token.startswith("--"):
            name = token.split("=")[0]
            action = {**top, **_options(current)}.get(name)
            if action is None:
                problems.append(f"{' '.join(path)}: no option {name}")
            value_next = action is not None and action.nargs != 0 and "=" not in token
        elif not token.startswith("-") and _subcommands(current):
            if token in ("...", "…"):
                return problems  # an elided command line: nothing more to check
            if token not in _subcommands(current):
                problems.append(f"{' '.join(path)}: no subcommand {token!r}")
                return problems
            current, path = _subcommands(current)[token], [*path, token]
    if whole and _subcommands(current):
        problems.append(f"{' '.join(path)}: needs a subcommand ({', '.join(_subcommands(current))})")
    return problems


def blockswap_args(line: str) -> list[str] | None:
    """The arguments after `blockswap` (or `-m blockswap`) on a shell line; None when it runs something else."""
    tokens = shlex.split(line, comments=True)
    for i, token in enumerate(tokens):
        if token == "blockswap" and (i == 0 or tokens[i - 1] in ("-m", "&&", ";", "||")):
            return tokens[i + 1:]
    return None


def shell_lines(code: str) -> list[str]:
    """The logical lines of a bash block: continuation lines joined."""
    return [line for line in code.replace("\\\n", " ").splitlines() if line.strip()]


COMMANDS = [(name, line) for name, code in BASH for line in shell_lines(code) if blockswap_args(line) is not None]
INLINE = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)")


def test_the_bash_blocks_hold_blockswap_commands() -> None:
    assert len(COMMANDS) >= 30, len(COMMANDS)


@pytest.mark.parametrize("line", [line for _, line in COMMANDS], ids=[name for name, _ in COMMANDS])
def test_command_line_names_real_options(line: str) -> None:
    assert check_command(blockswap_args(line) or [], _parser(), whole=True) == []


def test_inline_commands_and_options_exist() -> None:
    """Inline code `blockswap search --palette ...` or `--budget-ms 9` in any page names a real command or option."""
    parser = _parser()
    every: set[str] = set()
    stack = [parser]
    while stack:
        p = stack.pop()
        every |= set(_options(p))
        stack += _subcommands(p).values()
    problems = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text())
        for span in INLINE.findall(text):
            span = " ".join(span.split())
            if span.startswith("blockswap ") or span.startswith("torchrun "):
                args = blockswap_args(span)
                problems += [f"{page.name}: `{span}`: {p}" for p in check_command(args or [], parser, whole=False)]
            elif re.fullmatch(r"--[a-z][a-z0-9-]*(?:[ =].*)?", span):
                name = re.split(r"[ =]", span)[0]
                if name not in every:
                    problems.append(f"{page.name}: `{span}`: no command has {name}")
    assert problems == []


def test_the_checker_catches_a_renamed_option_and_a_missing_subcommand() -> None:
    parser = _parser()
    assert check_command(["search", "--budget", "400k", "--out", "d"], parser, whole=True) == []
    assert check_command(["search", "--budgets", "400k"], parser, whole=True) == [
        "blockswap search: no option --budgets"]
    assert check_command(["train"], parser, whole=True)[0].startswith("blockswap train: needs a subcommand")
    assert check_command(["serach"], parser, whole=True) == ["blockswap: no subcommand 'serach'"]
    assert check_command(["--plugin", "my.py", "info", "wrn-40-2"], parser, whole=True) == []
    assert blockswap_args("torchrun --nproc-per-node 2 -m blockswap search --out d  # x") == ["search", "--out", "d"]
    assert blockswap_args("pip install -e . && python3 -m pytest") is None
    assert blockswap_args("pip install -e . && blockswap info wrn-40-2") == ["info", "wrn-40-2"]


def test_relative_links_of_the_pages_and_studies_lead_to_files() -> None:
    """A link in the README, docs or a study's README/report names a file or folder of the repository."""
    pages = [*PAGES, *sorted((REPO / "studies").glob("**/README.md")), *sorted((REPO / "studies").glob("**/report.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", page.read_text())):
            path = target.split("#")[0]
            if path and not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert len(pages) > 10 and broken == []
