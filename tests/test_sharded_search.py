"""Worker pools and torchrun shards give the rows of a single-process search (issue 4)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import blockswap as bs
from blockswap.cli import build_parser
from blockswap.search.candidates import CSV_FIELDS

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"budget": 50_000, "model": "wrn-16-1", "samples": 6, "seed": 0, "screen": False}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """A single-process search with the reference scorer: the rows every other split must reproduce."""
    out = tmp_path_factory.mktemp("single")
    bs.run_search(bs.SearchConfig(**CONFIG, scorer="reference"), out, progress=False, workers=1)
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_worker_pool_matches_single_process(single: Path, tmp_path: Path) -> None:
    result = bs.run_search(bs.SearchConfig(**CONFIG, scorer="reference"), tmp_path, progress=False, workers=2)
    assert result.scored_now == CONFIG["samples"]
    assert (tmp_path / "candidates.csv").read_bytes() == (single / "candidates.csv").read_bytes()
    assert (tmp_path / "best.json").read_bytes() == (single / "best.json").read_bytes()


def test_interrupted_worker_pool_search_resumes_to_the_same_rows(single: Path, tmp_path: Path) -> None:
    config = bs.SearchConfig(**CONFIG, scorer="reference")

    class Stop(Exception):
        pass

    seen: list[int] = []

    def stop_after_two(c: bs.Candidate) -> None:
        seen.append(c.index)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        bs.run_search(config, tmp_path, progress=False, workers=2, on_scored=stop_after_two)
    assert len(_rows(tmp_path / "candidates.csv")) == 2 and not (tmp_path / "best.json").exists()
    result = bs.run_search(config, tmp_path, progress=False, workers=1)
    assert result.scored_now == CONFIG["samples"] - 2
    assert (tmp_path / "candidates.csv").read_bytes() == (single / "candidates.csv").read_bytes()


def test_fast_worker_pool_matches_fast_in_process(single: Path, tmp_path: Path) -> None:
    pooled = bs.run_search(bs.SearchConfig(**CONFIG), tmp_path / "pool", progress=False, workers=2)
    local = bs.run_search(bs.SearchConfig(**CONFIG), tmp_path / "local", progress=False, workers=1)
    ref = {r["index"]: float(r["score"]) for r in _rows(single / "candidates.csv")}
    by_index = {c.index: c for c in local.candidates}
    for c in pooled.candidates:
        assert c.genotype == by_index[c.index].genotype
        np.testing.assert_allclose(c.score_per_block, by_index[c.index].score_per_block, rtol=1e-5)
        assert c.score == pytest.approx(ref[str(c.index)], rel=5e-3)


def _torchrun(out: Path, *extra: str, scorer: str = "reference", screen: bool = False) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m blockswap search ...` on this checkout, loopback only."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "blockswap", "search", "--budget", "50k", "--model", CONFIG["model"],
           "--samples", str(CONFIG["samples"]), "--scorer", scorer, "--out", str(out), "--quiet",
           *([] if screen else ["--no-screen"]), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_two_ranks_resume_and_merge_to_the_single_process_rows(single: Path, tmp_path: Path) -> None:
    # An interrupted 2-rank search: search.json, one merged row, and rank 1's part file with two rows.
    out = tmp_path / "sharded"
    out.mkdir()
    shutil.copy(single / "search.json", out / "search.json")
    lines = (single / "candidates.csv").read_text().splitlines()
    header, rows = lines[0], {int(line.split(",")[0]): line for line in lines[1:]}
    (out / "candidates.csv").write_text(f"{header}\n{rows[0]}\n")
    (out / "candidates.rank1.csv").write_text(f"{header}\n{rows[1]}\n{rows[3]}\n")  # as a rank writes it
    done = _torchrun(out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"scored 3 new of {CONFIG['samples']} candidates" in done.stdout
    assert done.stdout.count("best: #") == 1  # only rank 0 reports
    assert (out / "candidates.csv").read_bytes() == (single / "candidates.csv").read_bytes()
    assert (out / "best.json").read_bytes() == (single / "best.json").read_bytes()
    assert not list(out.glob("candidates.rank*.csv"))


def test_a_cut_rank_leaves_a_part_file_that_resumes(single: Path, tmp_path: Path) -> None:
    """A rank streams its part file header first, so the rows it wrote before being cut are kept on resume."""
    import torch.distributed as dist

    config = bs.SearchConfig(**CONFIG, scorer="reference")

    class Stop(Exception):
        pass

    def stop_after_two(c: bs.Candidate) -> None:
        if c.index == 1:
            raise Stop

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        with pytest.raises(Stop):
            bs.run_search(config, tmp_path / "out", progress=False, group=dist.group.WORLD, on_scored=stop_after_two)
    finally:
        dist.destroy_process_group()
    part = (tmp_path / "out" / "candidates.rank0.csv").read_text().splitlines()
    assert part[0] == ",".join(CSV_FIELDS) and len(part) == 3
    result = bs.run_search(config, tmp_path / "out", progress=False)
    assert result.scored_now == CONFIG["samples"] - 2
    assert (tmp_path / "out" / "candidates.csv").read_bytes() == (single / "candidates.csv").read_bytes()


def test_torchrun_refusal_on_rank_0_ends_every_rank(single: Path, tmp_path: Path) -> None:
    shutil.copy(single / "search.json", tmp_path / "search.json")
    done = _torchrun(tmp_path, "--seed", "1")
    assert done.returncode != 0
    assert done.stderr.count("holds a different search") == 2  # both ranks say why, neither hangs


def test_cli_defaults_to_the_fast_scorer_and_takes_workers() -> None:
    args = build_parser().parse_args(["search", "--budget", "400k", "--out", "x"])
    assert args.scorer == "fast" and args.workers is None
    assert build_parser().parse_args(["search", "--budget", "400k", "--out", "x", "--workers", "3"]).workers == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--budget", "400k", "--out", "x", "--workers", "0"])


def test_screened_rows_are_the_same_bytes_for_workers_and_ranks(tmp_path: Path) -> None:
    """The fast scorer's screened rows: one process, a worker pool and two torchrun ranks write the same bytes (one
    launch serves both stages; the unscreened ranks are checked by the resume test above)."""
    screened = {**CONFIG, "screen": True, "rescore_fraction": 0.5}
    bs.run_search(bs.SearchConfig(**screened), tmp_path / "one", progress=False, workers=1)
    bs.run_search(bs.SearchConfig(**screened), tmp_path / "pool", progress=False, workers=2)
    done = _torchrun(tmp_path / "two", "--workers", "1", "--rescore-fraction", "0.5", scorer="fast", screen=True)
    assert done.returncode == 0, done.stderr[-3000:]
    one = (tmp_path / "one" / "candidates.csv").read_bytes()
    assert (tmp_path / "pool" / "candidates.csv").read_bytes() == one
    assert (tmp_path / "two" / "candidates.csv").read_bytes() == one
    assert (tmp_path / "two" / "best.json").read_bytes() == (tmp_path / "one" / "best.json").read_bytes()
    rows = _rows(tmp_path / "one" / "candidates.csv")
    assert all(r["screen_score"] for r in rows) and sum(bool(r["score"]) for r in rows) == 3
