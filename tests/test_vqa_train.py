"""Every mode trains a few steps on a slice of easy-VQA and reloads with identical evaluation numbers.

The whole module needs the ``vqa`` extra (easy-vqa, pillow) and skips without it; drawing the regions
needs the ``plot`` extra too.
"""

from __future__ import annotations

import json

import pytest

from varattn.cli import main
from varattn.latent import mode_names
from varattn.vqa.config import load_config
from varattn.vqa.run import load_run
from varattn.vqa.train import train

from conftest import need

need("easy_vqa", "vqa")
need("PIL", "vqa")

TINY = ["data.limit_train=160", "data.valid_images=4", "data.limit_test=30", "model.cnn_channels=[4, 4, 8]",
        "model.embed_dim=8", "model.question_hidden=8", "model.attention_dim=8", "model.output_hidden=16",
        "model.answer_embed_dim=4", "model.inference_hidden=8", "objective={}"]
KEYS = ("accuracy", "nll", "elbo_nll", "prior_entropy", "posterior_entropy", "exact_posterior_entropy")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VARATTN_CACHE", str(tmp_path_factory.getbasetemp() / "easy-vqa-cache"))


@pytest.mark.parametrize("mode", mode_names())
def test_mode_trains_and_reloads_with_identical_numbers(tmp_path, mode):
    sets = [*TINY, "objective.warmup_steps=1"] if mode == "var-relaxed" else TINY
    cfg = load_config("easy", {"mode": mode, "max_steps": 3, "batch_size": 16, "threads": 1, "device": "cpu",
                               "valid_batch_size": 16}, sets)
    result = train(cfg, tmp_path / "run", progress=False, tensorboard=False)
    assert result["step"] == 3
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained_records = [r for r in records if r["split"] == "train"]
    assert trained_records and all("questions_per_s" in r and "tokens_per_s" not in r and "tokens" not in r
                                   and "questions" not in r for r in trained_records)  # the unit is the question
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["task"] == "vqa" and info["config"]["mode"] == mode
    trained = load_run(tmp_path / "run", device="cpu")
    again = trained.evaluate("valid", batch_size=16)
    for key in KEYS:
        if result[key] is None:
            assert again[key] is None, key
        else:
            assert again[key] == pytest.approx(result[key], rel=1e-6, abs=1e-7), key
    assert again["questions"] == result["questions"] > 0
    assert 0.0 <= again["accuracy"] <= 1.0
    # the latent modes' answer distribution is the exact marginal: probabilities sum to one
    top = trained.answer("what color is the shape?", image=trained.eval_set("test", limit=1)[1].pixels[0].numpy(),
                         top=13)
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-4)


def test_cli_default_config_pieces(tmp_path, capsys):
    """``varattn vqa train`` with the shipped default, shortened; evaluate --json has the documented keys."""
    run = tmp_path / "run"
    args = ["vqa", "train", "--out", str(run), "--max-steps", "2", "--threads", "1", "--no-progress",
            "--no-tensorboard", "--device", "cpu"]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["vqa", "evaluate", str(run), "--json", "--limit", "20", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "nll", "elbo_nll", "prior_entropy", "posterior_entropy", "questions"} <= set(result)
    assert result["questions"] == 20
    assert set(result["accuracy_by_type"]) <= {"yes/no", "shape", "color"} and result["accuracy_by_type"]
    by_type = result["accuracy_by_type"]  # the overall accuracy is the questions' mean over the types
    from varattn.vqa.easy import load_split as split

    answers = split("test", 20).answers
    counts = {"yes/no": sum(a in ("yes", "no") for a in answers),
              "shape": sum(a in ("circle", "rectangle", "triangle") for a in answers)}
    counts["color"] = 20 - counts["yes/no"] - counts["shape"]
    assert sum(by_type.get(k, 0.0) * n for k, n in counts.items()) / 20 == pytest.approx(result["accuracy"])
    out = tmp_path / "regions.png"
    from varattn.vqa.easy import load_split

    image = load_split("test", 1).pixels[0]
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "img.png")
    capsys.readouterr()
    assert main(["vqa", "answer", str(run), "--image", str(tmp_path / "img.png"), "--question", "is it red?",
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and lines[0].split("\t")[1]  # five "prob<TAB>answer" lines
    import varattn

    assert type(varattn.load(run, device="cpu")).__name__ == "TrainedVQA"
    need("matplotlib", "plot")  # drawing the regions: last, as only it needs the plot extra
    assert main(["vqa", "plot", str(run), "--image", str(tmp_path / "img.png"), "--question", "what shape is it?",
                 "-o", str(out), "--device", "cpu"]) == 0
    assert out.stat().st_size > 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1  # "wrote ..."


def test_resume_continues_exactly(tmp_path):
    """Stopped after 2 updates and resumed to 4, a run ends with the numbers of one never stopped."""
    over = {"mode": "var-sample", "batch_size": 16, "threads": 1, "device": "cpu", "valid_batch_size": 16}
    whole = train(load_config("easy", {**over, "max_steps": 4}, TINY), tmp_path / "whole", progress=False,
                  tensorboard=False)
    train(load_config("easy", {**over, "max_steps": 2}, TINY), tmp_path / "cut", progress=False, tensorboard=False)
    resumed = train(load_config("easy", {**over, "max_steps": 4}, TINY), tmp_path / "cut", resume=True,
                    progress=False, tensorboard=False)
    for key in KEYS:
        assert resumed[key] == whole[key], key
