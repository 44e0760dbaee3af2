"""The study drivers end to end on a made-up corpus in the real layouts: ``experiments/multi30k.py``
(train in segments, resume, evaluate, the relaxed model's extras, the report) and
``experiments/iwslt_valid.py`` (split, train, score). Small budgets; the real study is not run here."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GERMAN = ["ein", "hund", "mann", "frau", "kind", "läuft", "spielt", "sitzt", "auf", "im", "rot", "gras", "ball",
          "wasser", "die", "straße", "mit", "einem", "großen", "kleinen"]
ENGLISH = ["a", "dog", "man", "woman", "child", "runs", "plays", "sits", "on", "in", "red", "grass", "ball",
           "water", "the", "street", "with", "one", "big", "small"]


def sentences(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` German sentences of 4-9 words and their word-for-word English."""
    rng = random.Random(seed)
    de, en = [], []
    for _ in range(n):
        idx = [rng.randrange(len(GERMAN)) for _ in range(rng.randint(4, 9))]
        de.append(" ".join(GERMAN[i] for i in idx))
        en.append(" ".join(ENGLISH[i] for i in idx))
    return de, en


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def run_script(*argv) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *[str(a) for a in argv]], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def make_corpus(root: Path) -> None:
    """A made-up corpus in the layout of Multi30k's ``task1/tok``."""
    for split, n in (("train", 64), ("val", 12), ("test_2016_flickr", 48), ("test_2017_flickr", 20)):
        de, en = sentences(n, seed=len(split) + n)
        write(root / "task1" / "tok" / f"{split}.lc.norm.tok.de", de)
        write(root / "task1" / "tok" / f"{split}.lc.norm.tok.en", en)


@pytest.mark.slow
def test_multi30k_study_trains_evaluates_resumes_and_reports(tmp_path):
    make_corpus(tmp_path / "multi30k")
    args = ["experiments/multi30k.py", "--data", tmp_path / "multi30k", "--work", tmp_path / "work", "--results",
            tmp_path / "results", "--docs", tmp_path / "docs", "--modes", "var-relaxed", "--study", "early",
            "--segment-steps", 2, "--max-epochs", 1]
    out = run_script(*args).stdout
    assert "FAILED" not in out, out
    result = json.loads((tmp_path / "results" / "var-relaxed.json").read_text(encoding="utf-8"))

    # trained in two segments (the second one resumed), to the budget
    assert [p["step"] for p in result["curve"]] == [2, 4]
    assert result["stopped"] == "budget: 1 epochs"
    assert result["curve"][1]["wall_s"] > result["curve"][0]["wall_s"] > 0
    for split in ("test_2016_flickr", "test_2017_flickr"):
        test = result["tests"][split]
        assert math.isfinite(test["evaluate"]["ppl"]) and test["evaluate"]["ppl"] > 1
        assert test["evaluate"]["sentences"] == (48 if split == "test_2016_flickr" else 20)
        assert 0 <= test["bleu"]["tok_bleu"] <= 100
        assert test["bleu_sampled"]["alignments_per_step"] == 10  # the relaxed model's sampled prediction
    runs = result["tests"]["test_2016_flickr"]["estimator"]["runs"]
    n = result["tests"]["test_2016_flickr"]["estimator"]["default_samples"]
    assert [(r["samples"], r["seed"]) for r in runs] == [(n, 1), (n, 2), (n, 3), (2 * n, 1)]
    assert len({r["ppl"] for r in runs}) > 1  # a sampled estimate: seeds and sample counts move it
    # prior and posterior of the heatmap pairs: one distribution over source pieces per target piece
    for pair in result["alignments"]:
        for method in ("prior", "posterior"):
            matrix = pair[method]
            assert len(matrix) == len(pair["tgt_tokens"]) and len(matrix[0]) == len(pair["src_tokens"])
            assert all(abs(sum(row) - 1) < 0.01 for row in matrix)
    report = (tmp_path / "docs" / "results.md").read_text(encoding="utf-8")
    assert "| var-relaxed |" in report and (tmp_path / "docs" / "img" / "multi30k_curves.png").exists()

    # finished modes are not run again
    metrics = (tmp_path / "work" / "runs" / "var-relaxed" / "metrics.jsonl").read_text(encoding="utf-8")
    assert "var-relaxed: results exist, skipped" in run_script(*args).stdout
    assert (tmp_path / "work" / "runs" / "var-relaxed" / "metrics.jsonl").read_text(encoding="utf-8") == metrics


@pytest.mark.slow
def test_converged_study_trains_whole_epochs_until_validation_stops_improving_for_every_seed(tmp_path):
    make_corpus(tmp_path / "multi30k")
    args = ["experiments/multi30k.py", "--data", tmp_path / "multi30k", "--work", tmp_path / "work", "--results",
            tmp_path / "results", "--no-report", "--modes", "soft:1", "soft:2", "--max-epochs", 3, "--patience", 1]
    out = run_script(*args).stdout
    assert "FAILED" not in out, out
    for seed in (1, 2):
        result = json.loads((tmp_path / "results" / f"soft-s{seed}.json").read_text(encoding="utf-8"))
        assert result["seed"] == seed and result["study"]["budget"] == "converged"
        epochs = [p["epoch"] for p in result["curve"]]
        assert epochs == list(range(1, len(epochs) + 1)) and 1 < len(epochs) <= 3  # one validation per epoch
        run_dir = tmp_path / "work" / "runs" / f"soft-s{seed}"
        valid = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["split"] == "valid"]
        assert all(r["epoch_end"] for r in valid) and [r["step"] for r in valid] == [p["step"] for p in result["curve"]]
        assert result["stopped"].startswith(("budget: 3 epochs", "early stop: no improvement in 1 epochs"))
        assert json.loads((run_dir / "run.json").read_text())["config"]["seed"] == seed
    one, two = (json.loads((tmp_path / "results" / f"soft-s{s}.json").read_text())["curve"][0]["ppl"] for s in (1, 2))
    assert one != two  # the seeds give different models


@pytest.mark.slow
def test_iwslt_valid_check_splits_trains_and_scores(tmp_path):
    data = tmp_path / "iwslt"
    for split, n in (("valid", 60), ("test", 15)):
        de, en = sentences(n, seed=n)
        write(data / f"{split}.de.bpe", de)
        write(data / f"{split}.en.bpe", en)
        write(data / f"{split}.en", en)
    run_script("experiments/iwslt_valid.py", "--data", data, "--work", tmp_path / "work", "--results",
               tmp_path / "results", "--modes", "soft", "--epochs", 2, "--dev-pairs", 10)
    split = tmp_path / "work" / "data"
    assert len((split / "train.de").read_text(encoding="utf-8").splitlines()) == 50
    assert (split / "dev.en").read_text(encoding="utf-8").splitlines() == sentences(60, seed=60)[1][50:]
    result = json.loads((tmp_path / "results" / "soft.json").read_text(encoding="utf-8"))
    assert result["study"]["epochs"] == 2 and result["best"]["validations"] == 2
    assert result["test"]["evaluate"]["sentences"] == 15 and math.isfinite(result["test"]["evaluate"]["ppl"])
    assert 0 <= result["test"]["bleu"]["tok_bleu"] <= 100


def test_iwslt_check_takes_the_best_variational_mode_that_fits_the_machine(tmp_path):
    sys.path.insert(0, str(ROOT / "experiments"))
    import iwslt_valid

    def result(mode, valid_ppl, tokens_per_s):
        write(tmp_path / f"{mode}.json", [json.dumps({"best": {"valid_ppl": valid_ppl},
                                                       "tokens_per_s_median": tokens_per_s})])

    result("soft", 9.0, 4000.0)
    result("var-enum", 10.0, 500.0)  # the best, 8 times slower than soft
    result("rws", 11.0, 1900.0)  # 2.1 times slower
    result("var-sample", 12.0, 3000.0)
    mode, why = iwslt_valid.best_variational(tmp_path)
    assert mode == "var-sample" and "var-enum (10.00)" in why and "8 times slower" in why
    result("var-enum", 10.0, 2000.0)  # now twice as slow: within the limit
    assert iwslt_valid.best_variational(tmp_path) == ("var-enum", "best Multi30k validation perplexity (10.00)")


def test_report_names_a_cap_that_differs_from_the_study_s():
    sys.path.insert(0, str(ROOT / "experiments"))
    import report_multi30k

    def run(cap: int, ppls: list[float]) -> dict:
        return {"stopped": f"budget: {cap} epochs", "study": {"max_epochs": cap},
                "curve": [{"epoch": k + 1, "ppl": p} for k, p in enumerate(ppls)]}

    usual = report_multi30k.usual_max_epochs({"soft": [run(20, [9.0, 8.0])] * 3, "var-enum": [run(8, [9.0, 8.0])]})
    assert usual == 20
    assert report_multi30k._stopped(run(20, [10.0, 9.0]), usual) == "cap (-10.0 % in the last epoch)"
    assert report_multi30k._stopped(run(8, [10.0, 9.0]), usual) == "cap at 8 epochs (-10.0 % in the last epoch)"
    assert report_multi30k._stopped({"stopped": "early stop"}, usual) == "converged"


def test_report_compares_a_capped_mode_on_validation_at_its_cap_not_on_test():
    sys.path.insert(0, str(ROOT / "experiments"))
    import report_multi30k

    def run(cap: int, ppls: list[float], test_ppl: float, prior_h: float) -> dict:
        curve = [{"epoch": k + 1, "ppl": p, "elbo_ppl": None, "prior_entropy": prior_h} for k, p in enumerate(ppls)]
        tests = {"test_2016_flickr": {"evaluate": {"ppl": test_ppl, "prior_entropy": prior_h},
                                      "bleu": {"bleu": 30.0}}}
        return {"stopped": f"budget: {cap} epochs", "study": {"max_epochs": cap}, "curve": curve, "tests": tests}

    # soft: 4 epochs (the study's cap), better on test than var-enum's 2-epoch model; var-enum is better at epoch 2
    groups = {"soft": [run(4, [9.0, 8.0, 7.0, 6.0], 6.1, 1.2), run(4, [9.5, 8.5, 7.0, 6.0], 6.2, 1.1)],
              "var-enum": [run(2, [8.0, 7.5], 7.6, 0.5)], "marginal": [run(4, [9.0, 8.0, 7.0, 6.5], 6.6, 0.9)]}
    lines = report_multi30k.claims_lines(groups, "test_2016_flickr")
    row = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    ppl = row["variational attention (enum) beats soft attention in perplexity"]
    assert "validation PPL at epoch 2 var-enum 7.50 vs soft 8.25" in ppl and "| yes, separated (var-enum capped" in ppl
    assert "not comparable" in row["variational attention (enum) beats soft attention in BLEU"]
    # two modes with the study's cap are still compared on test
    marginal = row["exact marginalisation beats soft attention in perplexity"]
    assert "PPL marginal 6.60 vs soft 6.15 | **no** |" in marginal
    assert "prior H at epoch 2" in row["variational attention's prior is more peaked than soft attention's (Table 3)"]
    # two modes with the same short cap: compared on test, both caps said
    groups["marginal"] = [run(2, [9.0, 8.0], 7.9, 0.9)]
    row = {line.split(" | ")[0].lstrip("| "): line
           for line in report_multi30k.claims_lines(groups, "test_2016_flickr")[2:]}
    same = row["variational attention (enum) beats exact marginalisation in perplexity"]
    assert "| PPL var-enum 7.60 vs marginal 7.90 | yes (both capped at 2 epochs) |" in same
    groups["marginal"] = [run(4, [9.0, 8.0, 7.0, 6.5], 6.6, 0.9)]

    table = report_multi30k.common_epoch_table(groups, ["soft", "marginal", "var-enum"])
    assert table[0] == "### Every mode at epoch 2, on validation"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table if line.startswith("| ") and "---" not in line}
    assert rows["soft"].startswith("| soft | 2 | 8.25 (8.00–8.50) |")
    assert "| -10.8 (-11.1–-10.5) % |" in rows["soft"] and rows["soft"].endswith("| 6.00 (6.00–6.00) (4) |")
    assert rows["var-enum"].startswith("| var-enum | 1 | 7.50 |") and rows["var-enum"].endswith("| 7.50 (2) |")
    # every run at the study's cap: no such table
    assert report_multi30k.common_epoch_table({"soft": groups["soft"]}, ["soft"]) == []


def test_report_says_when_a_run_in_progress_continues_a_capped_result():
    sys.path.insert(0, str(ROOT / "experiments"))
    import report_multi30k

    curve = [{"epoch": k + 1, "ppl": p} for k, p in enumerate([9.0, 8.0, 7.5])]
    progress = [{"run": "var-enum-s1", "mode": "var-enum", "seed": 1, "curve": curve, "epochs_done": 3,
                 "best_valid_ppl": 7.5, "train_wall_s": 600.0, "finished": "2026-12-07T22:00:00Z"},
                {"run": "rws-s1", "mode": "rws", "seed": 1, "curve": curve[:2], "epochs_done": 2,
                 "best_valid_ppl": 8.0, "train_wall_s": 300.0}]
    groups = {"var-enum": [{"seed": 1, "study": {"max_epochs": 2}, "stopped": "budget: 2 epochs"}],
              "rws": [{"seed": s, "study": {"max_epochs": 20}, "stopped": "budget: 20 epochs"} for s in (2, 3)]}
    rows = [line for line in report_multi30k.progress_lines(progress, groups) if line.startswith("| ")][1:]
    assert rows[0].startswith("| var-enum-s1 (continued past its 2-epoch cap) | 3 | 7.50 | 7.50 | yes |")
    assert rows[0].endswith("| 2026-12-07 |")  # when the snapshot was taken
    assert rows[1].startswith("| rws-s1 | 2 | 8.00 | 8.00 | yes |")  # seed 2 finished, not seed 1
