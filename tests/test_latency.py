"""Latency tables: what is timed, how a genotype's latency is predicted, the cache, and `blockswap latency`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import blockswap.space.latency as latency
from blockswap import Backbone, Genotype
from blockswap.cli import main
from blockswap.space.blocks import block_type
from blockswap.space.latency import LatencyTable, check_latency_table, latency_table, measure_latency_table, parse_ms
from blockswap.util.errors import BlockSwapError

CPU = torch.device("cpu")
# Widths 8/16/32: DConvG16 and G16B2 cannot be built at 8 channels, so the table must leave those cells empty.
TINY = Backbone("tiny-lat", (2, 1, 1), (8, 16, 32), (1, 2, 2), False, 8, input_size=16)
TYPES = ["Conv", "G4B2", "DConvG16", "G16B2"]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """time_call counts its calls and returns 1 ms each: the table's arithmetic becomes exact."""
    calls: list[int] = []

    def timed(fn, threads, min_time=0.1):  # noqa: ANN001, ANN202 - stands in for latency.time_call
        fn()
        calls.append(threads)
        return 1e-3

    monkeypatch.setattr(latency, "time_call", timed)
    return calls


@pytest.mark.parametrize("text, value", [("4", 4.0), ("0.8", 0.8), ("4ms", 4.0), (" 2.5 ms ", 2.5), (3, 3.0)])
def test_parse_ms(text: str | int, value: float) -> None:
    assert parse_ms(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "fast", ""])
def test_parse_ms_refuses(text: str) -> None:
    with pytest.raises(BlockSwapError, match="latency|milliseconds"):
        parse_ms(text)


def test_table_times_each_distinct_shape_once_and_leaves_unbuildable_cells_empty(fake_clock: list[int]) -> None:
    table = measure_latency_table(TINY, TYPES, CPU, batch_size=2, threads=1, progress=False)
    shapes = TINY.block_shapes()
    distinct = {(s, name) for s in shapes for name in TYPES
                if block_type(name).is_valid(s.c_in, s.c_out, s.stride)}
    # one timing per (shape, type) in each round over all blocks, plus the stem and the head
    assert len(fake_clock) == latency.ROUNDS * len(distinct) + 2
    assert table.fixed_ms == pytest.approx(2.0)
    for name in ("DConvG16", "G16B2"):
        assert table.ms[name][0] is None and table.ms[name][1] is None  # 8 channels: not buildable
    assert table.ms["Conv"] == (1.0, 1.0, 1.0, 1.0)
    assert table.batch_size == 2 and table.threads == 1 and table.device == "cpu"


def test_blocks_are_timed_as_whole_blocks_of_their_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each timed call runs the block of that slot on an input of that slot's shape, in eval mode."""
    seen = []
    original = latency._block

    def spy(backbone, slot, name):  # noqa: ANN001, ANN202
        block = original(backbone, slot, name)
        block.register_forward_hook(lambda m, inp, out: seen.append((slot, name, tuple(inp[0].shape),
                                                                      tuple(out.shape), m.training)))
        return block

    monkeypatch.setattr(latency, "_block", spy)
    monkeypatch.setattr(latency, "time_call", lambda fn, threads, min_time=0.1: (fn(), 1e-3)[1])
    measure_latency_table(TINY, ["Conv"], CPU, batch_size=3, progress=False)
    shapes = TINY.block_shapes()
    assert {s for s, *_ in seen} == {0, 2, 3}  # slot 1 has slot 0's shape
    for slot, _, inp, out, training in seen:
        s = shapes[slot]
        assert inp == (3, s.c_in, s.size_in, s.size_in) and out == (3, s.c_out, s.size_out, s.size_out)
        assert not training


def test_prediction_is_fixed_part_plus_each_slots_block(fake_clock: list[int]) -> None:
    table = measure_latency_table(TINY, TYPES, CPU, progress=False)
    table = LatencyTable(**{**table.__dict__, "ms": {**table.ms, "G4B2": (0.5, 0.25, 2.0, 4.0)}})
    g = Genotype(TINY, ("G4B2", "Conv", "G4B2", "G4B2"))
    assert table.predict(g) == pytest.approx(table.fixed_ms + 0.5 + 1.0 + 2.0 + 4.0)
    matrix = table.matrix(TINY, ["G4B2", "Conv", "G16B2"])
    assert matrix.shape == (4, 3)
    assert list(matrix[:, 0]) == [0.5, 0.25, 2.0, 4.0] and matrix[0, 2] == -1
    with pytest.raises(BlockSwapError, match="not wrn-16-1|is for tiny-lat"):
        table.matrix(Backbone.from_name("wrn-16-1"), ["Conv"])
    with pytest.raises(BlockSwapError, match="no timings for block type.*DConv"):
        table.matrix(TINY, ["Conv", "DConv"])


def test_table_round_trips_and_a_corrupt_file_is_refused(fake_clock: list[int], tmp_path: Path) -> None:
    table = measure_latency_table(TINY, TYPES, CPU, progress=False)
    table.save(tmp_path / "t" / "table.json")
    assert LatencyTable.load(tmp_path / "t" / "table.json") == table
    (tmp_path / "bad.json").write_text('{"format": 1, "backbone": {}}')
    with pytest.raises(BlockSwapError, match="bad.json"):
        LatencyTable.load(tmp_path / "bad.json")


def test_cache_is_reused_grown_and_refreshed(fake_clock: list[int], cache: Path) -> None:
    first, path = latency_table(TINY, ["Conv"], CPU, progress=False)
    assert path.parent == cache / "latency" and path.is_file()
    n = len(fake_clock)
    again, same = latency_table(TINY, ["Conv"], CPU, progress=False)
    assert (again, same) == (first, path) and len(fake_clock) == n  # nothing timed again
    grown, _ = latency_table(TINY, ["Conv", "G4B2"], CPU, progress=False)
    assert len(fake_clock) == n + 3 * latency.ROUNDS  # only G4B2, at its three distinct shapes; fixed part kept
    assert grown.ms["Conv"] == first.ms["Conv"] and set(grown.ms) == {"Conv", "G4B2"}
    latency_table(TINY, ["Conv"], CPU, refresh=True, progress=False)
    assert len(fake_clock) == n + 3 * latency.ROUNDS + n
    other, other_path = latency_table(TINY, ["Conv"], CPU, batch_size=4, threads=2, progress=False)
    assert other_path != path and other.threads == 2 and fake_clock[-1] == 2  # timed with the threads asked for
    path.write_text("not json")
    latency_table(TINY, ["Conv"], CPU, progress=False)  # an unreadable cache file is measured again
    assert LatencyTable.load(path).ms["Conv"] == first.ms["Conv"]


def test_a_cache_file_from_another_cpu_or_torch_is_measured_again(fake_clock: list[int], cache: Path) -> None:
    import dataclasses

    first, path = latency_table(TINY, ["Conv"], CPU, progress=False)
    for change in ({"device_name": "Another CPU 9000"}, {"torch_version": "1.0.0"}):
        dataclasses.replace(first, **change).save(path)  # copied from elsewhere under this machine's name
        n = len(fake_clock)
        table, same = latency_table(TINY, ["Conv"], CPU, progress=False)
        assert same == path and len(fake_clock) > n  # timed again, not trusted
        assert (table.device_name, table.torch_version) == (first.device_name, first.torch_version)
        assert LatencyTable.load(path).key() == first.key()  # and replaced


def test_a_table_with_a_negative_timing_is_refused(fake_clock: list[int], tmp_path: Path) -> None:
    import json

    table = measure_latency_table(TINY, TYPES, CPU, progress=False)
    table.save(tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text())
    data["ms"]["Conv"][0] = -1.0
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(BlockSwapError, match=r"t.json: a timing is negative, zero or not finite \(Conv\)"):
        LatencyTable.load(tmp_path / "t.json")


def test_real_timings_are_positive_and_the_check_compares_whole_networks() -> None:
    table = measure_latency_table(TINY, ["Conv", "G4B2"], CPU, min_time=0.002, progress=False)
    assert table.fixed_ms > 0 and all(v > 0 for v in table.ms["Conv"])
    assert table.device_name and table.torch_version == torch.__version__
    g = Genotype(TINY, ("Conv", "G4B2", "G4B2", "Conv"))
    [check] = check_latency_table(table, [g], CPU, min_time=0.002, progress=False)
    assert check.predicted_ms == table.predict(g) and check.measured_ms > 0
    assert check.error_pct == pytest.approx(100 * (check.predicted_ms - check.measured_ms) / check.measured_ms)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(BlockSwapError, match="batch size"):
        measure_latency_table(TINY, ["Conv"], CPU, batch_size=0, progress=False)
    with pytest.raises(BlockSwapError, match="threads"):
        measure_latency_table(TINY, ["Conv"], CPU, threads=0, progress=False)
    with pytest.raises(BlockSwapError, match="unknown block type"):
        measure_latency_table(TINY, ["Conv", "Nope"], CPU, progress=False)


def test_more_threads_than_cores_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(latency, "usable_cores", lambda: 2)
    with pytest.raises(BlockSwapError, match="latency threads 3 is more than the 2 CPU cores"):
        measure_latency_table(TINY, ["Conv"], CPU, threads=3, progress=False)
    latency.check_threads([1, 2])  # up to the cores is a timing


@pytest.mark.parametrize("where", ["a-file", "missing/under-a-file"])
def test_an_unusable_cache_is_named_before_anything_is_timed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             fake_clock: list[int], where: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    target = tmp_path / "a-file" if where == "a-file" else tmp_path / "a-file" / "sub"
    monkeypatch.setenv(latency.CACHE_ENV, str(target))
    with pytest.raises(BlockSwapError, match=r"cannot keep latency tables in .*a-file.* set \$BLOCKSWAP_CACHE"):
        latency_table(TINY, ["Conv"], CPU, progress=False)
    assert fake_clock == []


def test_cli_measures_caches_and_checks(capsys: pytest.CaptureFixture[str], cache: Path) -> None:
    args = ["latency", "--model", "wrn-10-1", "--palette", "Conv,G4B2", "--min-time", "0.002", "--check", "2",
            "--quiet"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert Path(report["table_file"]).parent == cache / "latency"
    assert set(report["ms"]) == {"Conv", "G4B2"} and report["batch_size"] == 1 and report["threads"] == 1
    assert len(report["checks"]) == 2 and report["checks"][0]["blocks"] == ["Conv"] * 3  # the teacher first
    errors = [abs(c["error_pct"]) for c in report["checks"]]
    assert report["mean_abs_error_pct"] == pytest.approx(np.mean(errors))
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "stem and head" in text and "G4B2" in text and "mean |error|" in text


def test_cli_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["latency", "--model", "wrn-10-1", "--palette", "Conv,Nope", "--check", "0"]) == 2
    assert "Nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["latency", "--min-time", "0"])
    assert "positive" in capsys.readouterr().err


def test_search_with_an_unreachable_latency_budget_names_the_range(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    assert main(["latency", "--model", "wrn-10-1", "--min-time", "0.002", "--check", "0", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", "--model", "wrn-10-1", "--budget-ms", "0.0001", "--samples", "3",
                 "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "latency budget 0.0001 ms" in err and "outside the reachable range for wrn-10-1 at batch 1 on cpu" in err
    assert "(all cheapest) to" in err and not (tmp_path / "s").exists()
