"""The worker pool of search and study: rows independent of how work is split, no process outliving a killed
search (issue 10), a failure stopping the running jobs at once, and user types reaching the workers by name
(issue 20)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import blockswap as bs
from blockswap.space.blocks import grouped_chain
from blockswap.util.plugins import load_plugin
from blockswap.util.workers import WorkerPool

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"budget": 50_000, "model": "wrn-16-1", "samples": 6, "seed": 2, "screen": False}

CLOSURE_PLUGIN = textwrap.dedent('''
    """Block types built with the library's own closures, and a scorer a factory function makes: none pickles."""
    import blockswap as bs
    from blockswap.space.blocks import bottleneck_chain, grouped_chain


    def pairs(channels):
        return channels // 2


    bs.register_block_type(bs.BlockType("PairG{suffix}", "user", grouped_chain(pairs)))
    bs.register_block_type(bs.BlockType("DenseB2{suffix}", "user", bottleneck_chain(2, lambda m: 1)))


    @bs.register_scorer("weight-count{suffix}")
    def weight_count():
        return lambda model, batch: bs.Score(float(sum(p.numel() for p in model.parameters())), ())
''')


def test_fast_rows_are_the_same_bytes_for_any_number_of_workers(tmp_path: Path) -> None:
    for workers in (1, 2):  # this process keeps its own thread count: scoring fixes it
        bs.run_search(bs.SearchConfig(**CONFIG), tmp_path / f"w{workers}", progress=False, workers=workers)
    assert (tmp_path / "w1" / "candidates.csv").read_bytes() == (tmp_path / "w2" / "candidates.csv").read_bytes()
    assert (tmp_path / "w1" / "best.json").read_bytes() == (tmp_path / "w2" / "best.json").read_bytes()


def _children(pid: int) -> set[int]:
    """Every living process descended from `pid`, read from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _start_search(out: Path, samples: int = 400) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "blockswap", "search", "--budget", "50k", "--model", "wrn-16-1",
                             "--samples", str(samples), "--workers", "2", "--quiet", "--out", str(out)],
                            env=env, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(proc: subprocess.Popen, csv: Path, rows: int) -> None:
    deadline = time.monotonic() + 120
    while not (csv.exists() and len(csv.read_text().splitlines()) > rows):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the search scored nothing in 2 minutes"
        time.sleep(0.2)


def test_no_worker_outlives_a_killed_search(tmp_path: Path) -> None:
    proc = _start_search(tmp_path / "s")
    _wait_for_rows(proc, tmp_path / "s" / "candidates.csv", 2)
    family = _children(proc.pid)
    assert len(family) >= 2  # the scoring workers (and multiprocessing's resource tracker)
    proc.kill()
    proc.wait()
    _assert_gone(family, "SIGKILL")


def _assert_gone(pids: set[int], after: str) -> None:
    deadline = time.monotonic() + 10
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pids), f"still running 10 s after {after}: {_alive(pids)}"


def test_sigterm_is_handled_like_ctrl_c_and_the_search_resumes(tmp_path: Path) -> None:
    out = tmp_path / "s"
    proc = _start_search(out, samples=60)
    _wait_for_rows(proc, out / "candidates.csv", 3)
    family = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines() == ["blockswap: interrupted; rerun the same command to resume"]
    _assert_gone(family, "SIGTERM")
    lines = (out / "candidates.csv").read_text().splitlines()
    assert lines[0].startswith("index,") and all(line.count(",") == 8 for line in lines)
    scored = len(lines) - 1
    config = bs.SearchConfig(budget=50_000, model="wrn-16-1", samples=60, screen=True)
    assert 0 < scored < 60
    assert bs.run_search(config, out, progress=False, workers=2).screened_now == 60 - scored  # cut in the screen


def _search_rows(tmp_path: Path, workers: int, *argv: str) -> bytes:
    """candidates.csv of a CLI search of wrn-10-1 at 20k parameters with `workers` workers."""
    out = tmp_path / f"w{workers}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "blockswap", *argv, "--model", "wrn-10-1", "--budget", "20k",
                           "--samples", "4", "--batch-size", "16", "--workers", str(workers), "--quiet", "--out",
                           str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return (out / "candidates.csv").read_bytes()


def test_block_types_made_with_the_library_closures_reach_the_workers_of_a_cli_search(tmp_path: Path) -> None:
    (tmp_path / "closure_blocks.py").write_text(CLOSURE_PLUGIN.format(suffix=""))
    argv = ["--plugin", str(tmp_path / "closure_blocks.py"), "search", "--palette", "PairG,DenseB2,DConv,Conv"]
    rows = _search_rows(tmp_path, 1, *argv)
    assert rows == _search_rows(tmp_path, 2, *argv)
    genotypes = [line.split(",")[1] for line in rows.decode().splitlines()[1:]]
    assert len(genotypes) == 4 and {"PairG", "DenseB2"} & set(" ".join(genotypes).split())


def test_a_plugin_scorer_made_by_a_factory_reaches_the_workers(tmp_path: Path) -> None:
    (tmp_path / "factory_scorer_plugin.py").write_text(CLOSURE_PLUGIN.format(suffix="F"))
    load_plugin(str(tmp_path / "factory_scorer_plugin.py"))
    config = bs.SearchConfig(budget=20_000, model="wrn-10-1", samples=3, batch_size=16, screen=False,
                             palette=["PairGF", "DenseB2F", "DConv", "Conv"], scorer="weight-countF")
    result = bs.run_search(config, tmp_path / "s", progress=False, workers=2)
    assert [c.score for c in result.candidates] == [float(c.params) for c in result.candidates]


def test_a_type_registered_by_an_importable_module_reaches_the_workers(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A library user's own module, imported as usual (no plugin loaded): the workers import it too."""
    (tmp_path / "user_types_module.py").write_text(CLOSURE_PLUGIN.format(suffix="M"))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("user_types_module")
    config = bs.SearchConfig(budget=20_000, model="wrn-10-1", samples=3, batch_size=16, screen=False,
                             palette=["PairGM", "DenseB2M", "DConv", "Conv"])
    for workers in (1, 2):
        bs.run_search(config, tmp_path / f"w{workers}", progress=False, workers=workers)
    assert (tmp_path / "w1" / "candidates.csv").read_bytes() == (tmp_path / "w2" / "candidates.csv").read_bytes()


def test_a_type_the_workers_cannot_import_is_one_clear_error(tmp_path: Path) -> None:
    bs.register_block_type(bs.BlockType("Orphan", "user", grouped_chain(lambda channels: 1)))  # on no import
    config = bs.SearchConfig(budget=30_000, model="wrn-10-1", samples=3, batch_size=16, screen=False,
                             palette=["Orphan", "DConv", "Conv"])
    with pytest.raises(bs.BlockSwapError) as refused:
        bs.run_search(config, tmp_path / "s", progress=False, workers=2)
    message = str(refused.value)
    assert "block type 'Orphan'" in message and "--plugin" in message and "\n" not in message


def _fail_first(index: int) -> int:
    """A pool job: job 0 fails after a second, every other one takes two minutes."""
    if index == 0:
        time.sleep(1)
        raise RuntimeError("job 0 failed")
    time.sleep(120)
    return index


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_a_failed_job_stops_the_running_and_queued_ones_at_once() -> None:
    before = _children(os.getpid())
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="job 0 failed"), WorkerPool(2, 1) as pool:
        for _ in pool.run(_fail_first, [(i,) for i in range(4)]):
            pass
    assert time.monotonic() - start < 60  # not the two minutes of the job running beside it, nor the queued ones
    left = {p for p in _alive(_children(os.getpid()) - before) if "resource_tracker" not in _cmdline(p)}
    assert not left
