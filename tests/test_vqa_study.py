"""The easy-VQA study (``experiments/vqa_study.py``, ``experiments/report_vqa.py``) and the local regions.

- The local region encoder: a cell is a function of its own patch of the image only.
- The driver's stopping rule and the report's sentences on made-up results (no training).
- The driver end to end on a slice of easy-VQA (2 modes x 2 seeds, 2 epochs, then a resumed third
  epoch): needs the ``vqa`` extra, and skips without it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from varattn.errors import VarattnError
from varattn.vqa.config import load_config
from varattn.vqa.model import GridCNN

from conftest import need

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))
import report_vqa  # noqa: E402
import vqa_study  # noqa: E402

TINY = ["data.limit_train=160", "data.valid_images=4", "data.limit_test=30", "model.cnn_channels=[4, 4, 8]",
        "model.embed_dim=8", "model.question_hidden=8", "model.attention_dim=8", "model.output_hidden=16",
        "model.answer_embed_dim=4", "model.inference_hidden=8", "objective={}", "batch_size=32",
        "valid_batch_size=16"]


# -- the local regions -----------------------------------------------------------------------------
def changed_cells(cnn: GridCNN, rows: slice, cols: slice) -> list[int]:
    """The cells whose vector moves when the pixels ``[rows, cols]`` of random images are changed."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=gen)
    other = images.clone()
    other[:, rows, cols] = torch.randint(0, 256, other[:, rows, cols].shape, dtype=torch.uint8, generator=gen)
    with torch.no_grad():
        moved = (cnn(other) - cnn(images)).abs().amax(dim=(0, 2))  # (R,)
    return (moved > 0).nonzero().flatten().tolist()


@pytest.mark.parametrize("grid", [4, 8])
def test_a_local_cell_sees_its_own_patch_and_nothing_else(grid):
    torch.manual_seed(0)
    cnn = GridCNN([4, 6, 8], input_pool=2, regions="local", grid=grid).eval()
    side = 64 // grid
    with torch.no_grad():
        assert cnn(torch.zeros(2, 64, 64, 3, dtype=torch.uint8)).shape == (2, grid * grid, 8)
    for row, col in [(0, 0), (1, 2), (grid - 1, grid - 1)]:
        cell = row * grid + col  # row-major, as the wide grid's cells
        whole = changed_cells(cnn, slice(row * side, (row + 1) * side), slice(col * side, (col + 1) * side))
        assert whole == [cell]
        # one pixel at each corner of the patch moves that cell only
        for y in (row * side, (row + 1) * side - 1):
            for x in (col * side, (col + 1) * side - 1):
                assert changed_cells(cnn, slice(y, y + 1), slice(x, x + 1)) == [cell]


def test_a_wide_cell_sees_far_beyond_its_patch():
    """The old regions, for contrast: a change in one 16x16 patch moves the cells around it too."""
    torch.manual_seed(0)
    cnn = GridCNN([4, 6, 8], input_pool=2, regions="wide").eval()
    assert changed_cells(cnn, slice(16, 32), slice(32, 48)) == [1, 2, 3, 5, 6, 7, 9, 10, 11]


def test_region_settings_and_wrong_ones_as_one_line_errors():
    cfg = load_config("easy")
    assert (cfg.model.cnn_regions, cfg.model.cnn_grid) == ("wide", 4)  # docs/vqa.md, Regions: why wide
    assert load_config("easy", sets=["model.cnn_regions=local"]).model.cnn_regions == "local"
    with pytest.raises(VarattnError, match="cnn_regions"):
        load_config("easy", sets=["model.cnn_regions=tiny"])
    with pytest.raises(VarattnError, match="cnn_grid"):
        load_config("easy", sets=["model.cnn_grid=0"])
    with pytest.raises(VarattnError, match="5x5 grid"):
        GridCNN([4], regions="local", grid=5)(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))


def test_a_local_run_trains_reloads_and_shows_its_cells(tmp_path, monkeypatch):
    need("easy_vqa", "vqa")
    need("PIL", "vqa")
    from varattn.vqa.run import load_run
    from varattn.vqa.train import train

    monkeypatch.setenv("VARATTN_CACHE", str(tmp_path / "cache"))
    cfg = load_config("easy", {"mode": "var-enum", "max_steps": 2, "threads": 1, "device": "cpu"},
                      [*TINY, "model.cnn_regions=local", "model.cnn_grid=8"])
    result = train(cfg, tmp_path / "run", progress=False, tensorboard=False)
    assert math.isfinite(result["nll"]) and result["exact_posterior_entropy"] <= math.log(64) + 1e-6
    trained = load_run(tmp_path / "run", device="cpu")
    assert trained.model.cnn.regions == "local"
    image = trained.eval_set("test", limit=1)[1].pixels[0].numpy()
    regions = trained.regions("what color is the shape?", image=image)
    assert regions.grid == (8, 8) and regions.exact.shape == (64,)
    assert regions.exact.sum() == pytest.approx(1.0, abs=1e-5)


# -- the stopping rule and the report, on made-up figures -------------------------------------------
def points(*metrics: float) -> list[dict]:
    return [{"epoch": k, "metric": m} for k, m in enumerate(metrics, start=1)]


def test_a_job_stops_after_patience_epochs_without_improvement_or_at_the_cap():
    study = vqa_study.Study(max_epochs=5, patience=2)
    assert vqa_study.stop_reason([], study) is None
    assert vqa_study.stop_reason(points(3.0, 2.0, 2.5), study) is None
    assert vqa_study.stop_reason(points(3.0, 2.0, 2.5, 2.0), study).startswith("early stop")  # a tie is no gain
    assert vqa_study.stop_reason(points(5, 4, 3, 2, 1), study) == "cap: 5 epochs"
    assert vqa_study.best_point(points(3.0, 2.0, 2.0))["epoch"] == 2


def fake_result(mode: str, seed: int, nll: float, shape: float = 1.0, color: float = 1.0) -> dict:
    return {"mode": mode, "seed": seed, "epochs": 5, "stopped": "early stop: no improvement in 2 epochs",
            "best": {"epoch": 3}, "train_wall_s": 600.0, "train_cpu_s": 550.0,
            "study": {"config": "easy", "sets": [], "max_epochs": 30, "patience": 2, "threads": 1},
            "config": {"batch_size": 64, "lr": 0.002, "decay_start_epoch": 2},
            "model": {"cnn_regions": "local", "cnn_grid": 4},
            "machine": {"cpu": "a CPU", "cores": 2},
            "test": {"nll": nll, "accuracy": 0.9, "questions": 9673, "elbo_nll": None, "prior_entropy": 2.0,
                     "posterior_entropy": None, "exact_posterior_entropy": 1.5,
                     "accuracy_by_type": {"yes/no": 0.85, "shape": shape, "color": color}}}


def test_report_says_which_orderings_are_wider_than_the_seeds_and_whether_accuracy_saturates(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    runs = [fake_result("soft", s, 0.30 + 0.01 * s) for s in (1, 2, 3)]
    runs += [fake_result("marginal", s, 0.20 + 0.01 * s) for s in (1, 2, 3)]
    runs += [fake_result("var-enum", s, 0.215 + 0.01 * s, shape=0.99) for s in (1, 2, 3)]
    for r in runs:
        (results / f"{r['mode']}-s{r['seed']}.json").write_text(json.dumps(r))
    text = "\n".join(report_vqa.vqa_section(results, tmp_path / "docs" / "img", tmp_path / "docs"))
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("|")[1].strip() for row in rows] == ["`soft`", "`marginal`", "`var-enum`"]
    assert "**0.320 (0.310–0.330)**" in rows[0] and "| 1.76 | 58.93 |" in rows[0]
    assert "`marginal` 0.220 ≈ `var-enum` 0.235 < `soft` 0.320" in text
    assert "Of the 3 pairs of modes with at least two seeds each, 2 are separated" in text
    assert "other settings" not in text
    assert "`soft` 3/3, `marginal` 3/3, `hard-enum` 0/3" in text and "18 planned runs are still missing" in text
    assert "2 go the paper's way" in text  # marginal and var-enum below soft, as on VQA 2.0
    assert "Accuracy saturates on shape and colour questions" in text and "only the yes/no questions" in text
    assert "`marginal` 0.50" in text  # prior minus exact posterior entropy
    assert "(9,673 questions," in text and "| 3.0 | 5.0 | 10.0 (9.2) |" in rows[0]  # epochs, minutes
    if importlib.util.find_spec("matplotlib") is not None:
        assert "![test NLL per run](img/vqa-study-nll.png)" in text
        assert (tmp_path / "docs" / "img" / "vqa-study-nll.png").stat().st_size > 0
    converged = {"soft": [fake_result("soft", 1, 0.00100)]}  # NLLs of a thousandth of a nat keep 3 digits
    assert report_vqa.nll_digits(converged) == 5 and "**0.00100**" in report_vqa.table(converged)[2]
    (results / "var-enum-s1.json").write_text(json.dumps(fake_result("var-enum", 1, 0.23, shape=0.6)))
    (results / "discussion.md").write_text("### What the runs show\n\nHand-written reading.\n")
    text = "\n".join(report_vqa.vqa_section(results, tmp_path / "img", tmp_path))
    assert "saturates on colour questions" in text and "60.0 %" in text
    assert text.rstrip().endswith("### What the runs show\n\nHand-written reading.")
    assert "on a CPU (2 cores, shared)." in text
    other = dict(fake_result("soft", 1, 0.3), machine={"cpu": "another CPU", "cores": 4})
    assert report_vqa.machines([fake_result("soft", 2, 0.3), fake_result("soft", 3, 0.3), other]) == (
        "a CPU (2 cores, shared): 2 runs, another CPU (4 cores, shared): 1 run")
    every = {m: [fake_result(m, s, 0.1) for s in (1, 2, 3)] for m in report_vqa.ORDER}
    assert report_vqa.status_lines(every)[0].endswith("Every planned run is in.")


# -- the driver end to end -------------------------------------------------------------------------
@pytest.mark.slow
def test_study_trains_epoch_by_epoch_evaluates_skips_and_resumes(tmp_path, monkeypatch, capsys):
    need("easy_vqa", "vqa")
    need("PIL", "vqa")
    monkeypatch.setenv("VARATTN_CACHE", str(tmp_path / "cache"))
    work, results = tmp_path / "work", tmp_path / "results"
    common = ["--work", str(work), "--results", str(results), *[a for s in TINY for a in ("--set", s)]]
    jobs = ["soft:1", "var-enum:1", "soft:2", "var-enum:2"]
    assert vqa_study.main([*common, "--modes", *jobs, "--max-epochs", "2", "--patience", "1"]) == 0
    for job in jobs:
        mode, seed = job.split(":")
        result = json.loads((results / f"{mode}-s{seed}.json").read_text(encoding="utf-8"))
        assert (result["mode"], result["seed"], result["epochs"]) == (mode, int(seed), 2)
        assert [p["epoch"] for p in result["curve"]] == [1, 2]
        per_epoch = result["curve"][0]["step"]  # the questions of 160 less the 4 held-out images', in batches of 32
        assert per_epoch > 1 and [p["step"] for p in result["curve"]] == [per_epoch, 2 * per_epoch]
        assert all(p["wall_s"] > 0 and p["cpu_s"] > 0 for p in result["curve"])
        assert result["train_wall_s"] == pytest.approx(sum(p["wall_s"] for p in result["curve"]), abs=0.2)
        assert result["best"]["epoch"] in (1, 2) and result["stopped"]
        assert result["config"]["seed"] == int(seed) and result["model"]["cnn_regions"] == "wide"
        test = result["test"]
        assert test["questions"] == 30 and 0 <= test["accuracy"] <= 1 and math.isfinite(test["nll"])
        assert (test["elbo_nll"] is None) == (mode == "soft")
        assert (test["exact_posterior_entropy"] is None) == (mode == "soft")
        assert 0 <= test["prior_entropy"] <= math.log(16) + 1e-6
    soft = [json.loads((results / f"soft-s{s}.json").read_text())["test"]["nll"] for s in (1, 2)]
    assert soft[0] != soft[1]  # the seeds differ

    # done jobs are skipped
    stamp = (results / "soft-s1.json").stat().st_mtime_ns
    capsys.readouterr()
    assert vqa_study.main([*common, "--modes", *jobs, "--max-epochs", "2", "--patience", "1"]) == 0
    assert capsys.readouterr().out.count("results exist, skipped") == 4
    assert (results / "soft-s1.json").stat().st_mtime_ns == stamp

    # a job without its JSON continues from its run directory's resume/ checkpoint
    (results / "soft-s1.json").unlink()
    assert vqa_study.main([*common, "--modes", "soft:1", "--max-epochs", "3", "--patience", "5"]) == 0
    result = json.loads((results / "soft-s1.json").read_text(encoding="utf-8"))
    assert [p["step"] for p in result["curve"]] == [per_epoch * k for k in (1, 2, 3)]
    assert result["stopped"] == "cap: 3 epochs" and len(result["curve"]) == result["epochs"] == 3

    lines = report_vqa.vqa_section(results, tmp_path / "docs" / "img", tmp_path / "docs")
    rows = [line for line in lines if line.startswith("| `")]
    assert [row.split("|")[1].strip() for row in rows] == ["`soft`", "`var-enum`"]
    assert all("| 2 |" in row for row in rows)  # two seeds each
    assert any("Modes by mean test NLL" in line for line in lines)
