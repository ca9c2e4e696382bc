"""What a resumed search trusts: its inputs unchanged, totals that are the sum of their blocks, and best rows that
score again to what they say; anything else is refused with the reason."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blockswap.search.resume import INPUTS_FILE
from blockswap.search.run import SearchConfig, run_search
from blockswap.util.errors import BlockSwapError

CONFIG = SearchConfig(budget=40_000, model="wrn-10-1", samples=6, batch_size=16, seed=0)


def _rewrite(path: Path, index: int, **changes: str) -> None:
    """Edit one row of candidates.csv as a user would by hand."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0])
    for row in rows:
        if int(row["index"]) == index:
            row.update(changes)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search")
    run_search(CONFIG, out, progress=False)
    return out


def _copy(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished, tmp_path / "s")
    return tmp_path / "s"


def _worst_row(out: Path) -> dict[str, str]:
    with (out / "candidates.csv").open(newline="") as f:
        return min(csv.DictReader(f), key=lambda r: float(r["score"]))


def test_a_search_records_its_inputs_and_an_untouched_folder_resumes(finished: Path, tmp_path: Path) -> None:
    assert (finished / INPUTS_FILE).exists()
    out = _copy(finished, tmp_path)
    result = run_search(CONFIG, out, progress=False)
    assert result.scored_now == 0 and (out / "candidates.csv").read_text() == (finished / "candidates.csv").read_text()


def test_a_score_edited_to_the_top_with_its_blocks_is_rescored_and_refused(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path)
    worst = _worst_row(out)
    blocks = [float(v) * 1000 for v in worst["score_per_block"].split()]  # consistent, so only re-scoring sees it
    _rewrite(out / "candidates.csv", int(worst["index"]), score=repr(float(sum(blocks))),
             score_per_block=" ".join(map(repr, blocks)))
    with pytest.raises(BlockSwapError, match=rf"row {worst['index']}'s score .* is not what it scores again .*edited"):
        run_search(CONFIG, out, progress=False)


def test_a_total_that_is_not_the_sum_of_its_blocks_is_refused(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path)
    worst = _worst_row(out)
    _rewrite(out / "candidates.csv", int(worst["index"]), score=repr(float(worst["score"]) * 1e6))
    with pytest.raises(BlockSwapError, match=rf"row {worst['index']} has a score that is not the sum of its per-block"):
        run_search(CONFIG, out, progress=False)


def test_a_folder_whose_probe_images_changed_is_refused(image_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    config = SearchConfig(budget=40_000, model="wrn-10-1", samples=3, batch_size=16, seed=0, data_dir=str(data),
                          num_classes=3)
    run_search(config, tmp_path / "s", progress=False, workers=1)
    for path in sorted((data / "train").rglob("*.jpg")):  # change every training image: the probe draws some
        Image.fromarray(np.full((40, 40, 3), 7, np.uint8)).save(path)
    with pytest.raises(BlockSwapError, match=r"probe images of .* differ from those .*inputs.json records"):
        run_search(config, tmp_path / "s", progress=False, workers=1)


def test_a_replaced_model_file_is_named_not_blamed_on_a_row(tmp_path: Path) -> None:
    import torch

    from blockswap import Backbone, Genotype

    model = tmp_path / "teacher.pt"
    net = Genotype.uniform(Backbone.from_name("wrn-10-1")).build()
    torch.save({"genotype": Genotype.uniform(Backbone.from_name("wrn-10-1")).to_dict(), "state_dict": net.state_dict()},
               model)
    config = SearchConfig(budget=40_000, model=str(model), samples=3, batch_size=16, seed=0)
    run_search(config, tmp_path / "s", progress=False)
    torch.nn.init.zeros_(next(net.parameters()))
    torch.save({"genotype": Genotype.uniform(Backbone.from_name("wrn-10-1")).to_dict(), "state_dict": net.state_dict()},
               model)
    with pytest.raises(BlockSwapError, match=r"--model .*teacher.pt is not the file .* was searched with \(SHA-256"):
        run_search(config, tmp_path / "s", progress=False)


def test_an_edited_latency_table_is_named_not_blamed_on_a_row(tmp_path: Path) -> None:
    import json

    import torch

    import blockswap.space.latency as latency
    from blockswap import Genotype
    from blockswap.space.blocks import PALETTE_NAMES

    backbone = SearchConfig(budget=1, model="wrn-10-1").backbone()
    table, _ = latency.latency_table(backbone, PALETTE_NAMES, torch.device("cpu"), min_time=0.002, progress=False)
    target = table.predict(Genotype(backbone, ("G4B2", "DConv", "ConvB2")))
    config = SearchConfig(budget=None, budget_ms=target, model="wrn-10-1", samples=4, batch_size=16, seed=3)
    run_search(config, tmp_path / "s", progress=False)
    saved = json.loads((tmp_path / "s" / "latency.json").read_text())
    saved["fixed_ms"] = saved["fixed_ms"] * 1.01  # a plausible edit: every prediction moves a little
    (tmp_path / "s" / "latency.json").write_text(json.dumps(saved))
    with pytest.raises(BlockSwapError, match=r"latency.json is not the latency table this search drew its"):
        run_search(config, tmp_path / "s", progress=False)
