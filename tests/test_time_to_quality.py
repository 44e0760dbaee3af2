"""``benchmarks/time_to_quality.py``: its OpenNMT-py log parser, the time-to-target arithmetic, the report, and a
smoke run of varattn's side (OpenNMT-py skipped) that leaves the docs alone.

The log texts are written here in OpenNMT-py 3.5.1's format, as a real ``onmt_train`` run prints it (time
stamps to the millisecond, the multi-line ``valid stats calculation`` message, corpus-loading messages and
warnings between the lines the parser reads). No timing is judged.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from varattn.nmt.corpora.synthetic import make_splits

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "time_to_quality.py"


@pytest.fixture(scope="module")
def ttq():
    saved = list(sys.path)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import time_to_quality
    finally:
        sys.path[:] = saved
    return time_to_quality


def stamp(seconds: float) -> str:
    """An OpenNMT-py time stamp ``seconds`` after 06:00:00."""
    minutes, rest = divmod(seconds, 60)
    return f"[2026-12-07 06:{int(minutes):02d}:{rest:06.3f}".replace(".", ",") + " INFO]"


def step_line(t: float, step: int, tgt_bsz: int) -> str:
    return (f"{stamp(t)} Step {step}/100000000; acc: 9.5; ppl: 800.5; xent: 6.7; lr: 0.00100; sents:     64; "
            f"bsz:  500/ {tgt_bsz}/32; 1696/1700 tok/s;      8 sec;")


def validation(t_stats: float, took: float, t_end: float, ppl: float) -> list[str]:
    return [f"{stamp(t_stats)} valid stats calculation", f"                           took: {took} s.",
            f"{stamp(t_stats)} Train perplexity: 800.548", f"{stamp(t_stats)} Train accuracy: 9.45474",
            f"{stamp(t_stats)} Sentences processed: 128", f"{stamp(t_stats)} Average bsz:  500/ 350/32",
            f"{stamp(t_end)} Validation perplexity: {ppl}", f"{stamp(t_end)} Validation accuracy: 10.9028"]


HEAD = [
    "/tmp/onmt-venv/lib/python3.11/site-packages/onmt/modules/sru.py:395: FutureWarning: deprecated",
    "  @custom_fwd",
    f"{stamp(1)} encoder: 454944",
    f"{stamp(1)} * number of parameters: 1695363",
    f"{stamp(1)}  * src vocab size = 3187",
    f"{stamp(1)}  * tgt vocab size = 2499",
    f"{stamp(10)} Start training loop and validate every 4 steps...",
    f"{stamp(10)} Weighted corpora loaded so far:",
    "\t\t\t* corpus_1: 1",
    "  with torch.cuda.amp.autocast(enabled=self.optim.amp):",
]


def test_the_parser_reads_the_curve_and_takes_validations_off_the_clock(ttq):
    log = "\n".join([
        *HEAD,
        step_line(12, 2, 400), step_line(14.5, 4, 300),
        *validation(17, 2.4, 17.25, 300.5),  # from the step-4 line (14.5 s) to the accuracy line: 2.75 s
        f"{stamp(18)} Weighted corpora loaded so far:", "\t\t\t* corpus_1: 2",
        step_line(20.25, 6, 410), step_line(23.25, 8, 390),
        *validation(24, 1.5, 25.25, 150.25),  # 2.0 s
        step_line(26, 10, 999),  # after the last validation: not in any point
    ]) + "\n"
    parsed = ttq.parse_onmt_log(log, valid_steps=4)
    assert [parsed[k] for k in ("params", "src_vocab", "tgt_vocab", "last_step")] == [1695363, 3187, 2499, 10]
    first, second = parsed["points"]
    assert first["step"] == 4 and first["ppl"] == 300.5 and first["accuracy"] == 10.9028
    assert first["train_s"] == pytest.approx(4.5) and first["valid_s"] == pytest.approx(2.75)
    assert first["tokens"] == 2 * 400 + 2 * 300
    assert second["step"] == 8 and second["ppl"] == 150.25
    assert second["train_s"] == pytest.approx(23.25 - 10 - 2.75) and second["valid_s"] == pytest.approx(2.0)
    assert second["tokens"] == 1400 + 2 * 410 + 2 * 390


def test_without_a_report_line_at_the_validated_step_the_validations_own_timing_is_used(ttq):
    log = "\n".join([*HEAD, step_line(12, 2, 400), *validation(16, 2.5, 16.5, 99.0)])  # validated at step 3
    (point,) = ttq.parse_onmt_log(log, valid_steps=3)["points"]
    assert point["step"] == 3 and point["ppl"] == 99.0
    assert point["train_s"] == pytest.approx(16 - 2.5 - 10) and point["valid_s"] == pytest.approx(3.0)
    assert point["tokens"] == 800  # up to the last report line


def test_a_log_cut_before_its_first_validation_has_no_points(ttq):
    parsed = ttq.parse_onmt_log("\n".join([*HEAD, step_line(12, 2, 400)]), valid_steps=4)
    assert parsed["points"] == [] and parsed["last_step"] == 2


def test_the_budget_ends_at_the_first_validation_past_it(ttq):
    points = [{"step": s, "train_s": t, "ppl": 10.0} for s, t in ((100, 50.0), (200, 99.0), (300, 130.0),
                                                                  (400, 170.0))]
    assert [p["step"] for p in ttq.cut_at_budget(points, 120.0, None)] == [100, 200, 300]
    assert [p["step"] for p in ttq.cut_at_budget(points, 500.0, 200)] == [100, 200]
    assert ttq.cut_at_budget(points, 500.0, None) == points


def curve(*pairs) -> list[dict]:
    return [{"step": 100 * (k + 1), "train_s": t, "ppl": p} for k, (t, p) in enumerate(pairs)]


def test_time_to_target_interpolates_in_log_perplexity(ttq):
    points = curve((60.0, 100.0), (120.0, 10.0), (180.0, 5.0))
    assert ttq.time_to_target(points, 10 ** 1.5) == pytest.approx(90.0)  # halfway in log between 100 and 10
    assert ttq.time_to_target(points, 10.0) == pytest.approx(120.0)  # reached exactly at a validation
    assert ttq.time_to_target(points, 200.0) == 60.0  # already there at the first validation
    assert ttq.time_to_target(points, 4.0) is None  # never reached
    # the first crossing counts, not a later one
    wiggly = curve((60.0, 50.0), (120.0, 20.0), (180.0, 30.0), (240.0, 8.0))
    assert ttq.time_to_target(wiggly, 25.0) == pytest.approx(60 + 60 * math.log(2) / math.log(2.5))


def fake_report(ttq) -> dict:
    machine = {"cpu": "AMD EPYC", "cores": 2, "threads": 2, "torch": "2.13.0", "date": "2026-12-07T06:00+00:00",
               "load_average": 0.1}
    systems = {
        ttq.ONMT: {"params": 1695363, "points": [{**p, "tokens": 1000.0 * p["step"], "valid_s": 3.0}
                                                 for p in curve((60.0, 100.0), (120.0, 20.0), (180.0, 12.0))]},
        "soft": {"params": 1695171, "points": [{**p, "tokens": 1200.0 * p["step"], "valid_s": 3.0, "lr": 1e-3}
                                               for p in curve((30.0, 100.0), (60.0, 10.0), (90.0, 8.0))]},
        "var-sample": {"params": 1900000, "points": [{**p, "tokens": 900.0 * p["step"], "valid_s": 5.0, "lr": lr}
                                                     for p, lr in zip(curve((40.0, 60.0), (80.0, 15.0), (120.0, 9.0)),
                                                                      (1e-3, 1e-3, 5e-4))]},
    }
    report = {"machine": machine, "settings": {"minutes": 2.0, "eval_every": 100}, "onmt_error": None,
              "systems": {name: ttq.summarize(name, r) for name, r in systems.items()}}
    ttq.analyse(report)
    return report


def test_the_analysis_finds_the_common_target_and_each_time_to_it(ttq):
    report = fake_report(ttq)
    assert report["target_ppl"] == 12.0  # OpenNMT-py's best: the lowest every system reached
    onmt, soft, var = (report["systems"][k] for k in (ttq.ONMT, "soft", "var-sample"))
    assert onmt["time_to_target_s"] == pytest.approx(180.0) and onmt["ratio_to_onmt"] == pytest.approx(1.0)
    soft_t = 30 + 30 * math.log(100 / 12) / math.log(10)
    assert soft["time_to_target_s"] == pytest.approx(soft_t) and soft["ratio_to_onmt"] == pytest.approx(soft_t / 180)
    var_t = 80 + 40 * math.log(15 / 12) / math.log(15 / 9)
    assert var["time_to_target_s"] == pytest.approx(var_t)
    assert soft["updates"] == 300 and soft["train_s"] == 90.0 and soft["tokens_per_s"] == pytest.approx(4000.0)
    assert soft["best_ppl"] == 8.0 and soft["lr_changed_at"] is None and var["lr_changed_at"] == 300


def test_the_table_goes_between_its_markers_only(ttq, tmp_path):
    report = fake_report(ttq)
    table = ttq.markdown(report, "img/time_to_quality.png")
    assert "| OpenNMT-py 3.5.1 soft | 1,695,363 | 300 | 3.00 | 1667 | 12.00 | 3.00 | 1.00 |" in table
    assert "| varattn soft | 1,695,171 | 300 | 1.50 |" in table and "minutes to perplexity 12.00" in table
    assert "difference +192" in table and "halved at step 300" in table
    assert "![validation perplexity against training minutes](img/time_to_quality.png)" in table
    docs = tmp_path / "bench.md"
    docs.write_text("# B\n\n<!-- time_to_quality.py table begin -->\n*Not yet measured.*\n"
                    "<!-- time_to_quality.py table end -->\n\nrest\n", encoding="utf-8")
    ttq.speed.write_markdown(docs, table, ttq.TABLE)
    text = docs.read_text(encoding="utf-8")
    assert "Not yet measured" not in text and "| varattn var-sample |" in text and text.endswith("rest\n")


def test_the_figure_is_drawn(ttq, tmp_path):
    pytest.importorskip("matplotlib", reason="the figure needs matplotlib (the plot extra)")
    path = tmp_path / "img" / "ttq.png"
    ttq.plot_curves(fake_report(ttq), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_opennmt_config_has_the_studys_sizes_and_settings(ttq, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for lang in ("de", "en"):
        (data / f"train.{lang}").write_text("a b\nc\n\nd e f\n", encoding="utf-8")  # one empty pair of four
        (data / f"val.{lang}").write_text("a\n", encoding="utf-8")
    cfg = ttq.our_config("soft", data, [], 150, 1, None)
    ttq.check_matchable(cfg)
    assert cfg.model.attention_dim == cfg.model.decoder_hidden == 192 and cfg.save_every == 0
    text = ttq.onmt_config(tmp_path, data, cfg, 150, None).read_text(encoding="utf-8")
    for line in ("encoder_type: brnn", "hidden_size: 192", "word_vec_size: 96", "layers: 1", "global_attention: mlp",
                 "input_feed: 1", "dropout: 0.3", "batch_size: 32", "learning_rate: 0.001", "max_grad_norm: 5.0",
                 "valid_steps: 150", "report_every: 25", "bucket_size: 3", "src_seq_length: 50",
                 "vocab_size_multiple: 1", "learning_rate_decay: 1.0"):
        assert f"\n{line}\n" in text, line
    with pytest.raises(SystemExit, match="cannot match"):
        ttq.check_matchable(ttq.our_config("soft", data, ["model.attention_dim=96"], 150, 1, None))


def test_report_every_divides_the_validation_interval(ttq):
    assert [ttq.report_every_for(n) for n in (150, 151, 50, 7, 1)] == [25, 1, 25, 7, 1]


def test_a_smoke_run_of_ours_writes_its_json_and_leaves_the_docs_alone(tmp_path):
    splits = make_splits(seed=0, n_train=96, n_valid=12, n_test=0)
    data = tmp_path / "work" / "data"
    data.mkdir(parents=True)
    for split, name in (("train", "train"), ("valid", "val")):
        pairs = splits[split]
        (data / f"{name}.de").write_text("".join(" ".join(p.src) + "\n" for p in pairs), encoding="utf-8")
        (data / f"{name}.en").write_text("".join(" ".join(p.tgt) + "\n" for p in pairs), encoding="utf-8")
    docs = {p: p.read_bytes() for p in (REPO / "docs").rglob("*") if p.is_file()}
    workdir = tmp_path / "bench"
    cmd = [sys.executable, str(SCRIPT), "--work", str(tmp_path / "work"), "--skip-onmt", "--max-updates", "4",
           "--eval-every", "2", "--threads", "1", "--workdir", str(workdir), "--json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == json.loads((workdir / "time_to_quality.json").read_text(encoding="utf-8"))
    assert report["onmt_error"] == "skipped (--skip-onmt)" and report["systems"]["onmt-soft"]["error"]
    soft, var = report["systems"]["soft"], report["systems"]["var-sample"]
    for r in (soft, var):
        # every 2 updates, and at the end of the epoch (96 pairs: 3 batches of 32)
        assert [(p["step"], p["epoch_end"]) for p in r["points"]] == [(2, False), (3, True), (4, False)]
        assert r["updates"] == 4
        assert 0 < r["points"][0]["train_s"] < r["points"][1]["train_s"] < r["points"][2]["train_s"]
        assert r["tokens_per_s"] > 0
        assert all(p["ppl"] > 1 and p["valid_s"] > 0 for p in r["points"])
        assert r["config"]["model"]["attention_dim"] == 192 and r["config"]["save_every"] == 0
    assert var["params"] > soft["params"] > 0  # the inference network
    assert report["target_ppl"] == max(soft["best_ppl"], var["best_ppl"])
    assert (workdir / "varattn-soft" / "run.json").is_file()
    if report["figure"]:
        assert Path(report["figure"]) == workdir / "time_to_quality.png" and Path(report["figure"]).is_file()
    assert {p: p.read_bytes() for p in (REPO / "docs").rglob("*") if p.is_file()} == docs


def test_the_record_holds_this_scripts_table_markers():
    """``--markdown docs/benchmarks.md`` replaces the block in its section rather than appending a new one."""
    text = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    begin, end = "<!-- time_to_quality.py table begin -->", "<!-- time_to_quality.py table end -->"
    assert text.count(begin) == text.count(end) == 1 and text.index(begin) > text.index("## Time to quality")
