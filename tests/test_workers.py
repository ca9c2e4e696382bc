"""The scoring pool: rows independent of how work is split, and no process outlives a killed search (issue 10)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import blockswap as bs

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"budget": 50_000, "model": "wrn-16-1", "samples": 6, "seed": 2, "screen": False}


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
