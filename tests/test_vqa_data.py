"""VQA 2.0 inputs on small generated files: feature layouts, JSON files, answer vocabulary, bad inputs."""

from __future__ import annotations

import base64
import json
import pickle

import numpy as np
import pytest
import torch

from varattn.cli import main
from varattn.errors import VarattnError
from varattn.latent import mode_names
from varattn.vqa import vqa2
from varattn.vqa.data import FeatureSource
from varattn.vqa.features import open_features
from varattn.vqa.text import Vocab

from conftest import need

DIM = 8
#: image id -> number of regions: fewer than the maximum (5) for some
REGIONS = {101: 5, 102: 2, 103: 3, 104: 1}


def _features(seed=0, dim=DIM):
    rng = np.random.default_rng(seed)
    feats = {k: rng.random((n, dim), dtype=np.float32) for k, n in REGIONS.items()}
    boxes = {k: np.tile(np.array([1, 2, 30, 40], np.float32), (n, 1)) for k, n in REGIONS.items()}
    return feats, boxes


def write_h5(path, dim=DIM):
    h5py = need("h5py", "vqa")

    feats, boxes = _features(dim=dim)
    ids = sorted(feats)
    with h5py.File(path, "w") as f:
        full = np.zeros((len(ids), 5, dim), np.float32)
        bb = np.zeros((len(ids), 5, 4), np.float32)
        for row, k in enumerate(ids):
            full[row, : REGIONS[k]] = feats[k]
            bb[row, : REGIONS[k]] = boxes[k]
        f["image_features"] = full
        f["image_bb"] = bb
        f["num_boxes"] = np.array([REGIONS[k] for k in ids])
        f["image_ids"] = np.array(ids)
    return feats


def write_flat_h5(path):
    """hengyuan-hu's adaptive layout: flat features, pos_boxes spans, ids in a JSON sidecar."""
    h5py = need("h5py", "vqa")

    feats, _ = _features()
    ids = sorted(feats)
    spans, start = [], 0
    for k in ids:
        spans.append((start, start + REGIONS[k]))
        start += REGIONS[k]
    with h5py.File(path, "w") as f:
        f["image_features"] = np.concatenate([feats[k] for k in ids])
        f["pos_boxes"] = np.array(spans)
    (path.parent / f"{path.name.split('.')[0]}_imgid2idx.json").write_text(json.dumps({str(k): r for r, k in
                                                                                        enumerate(ids)}))
    return feats


def write_tsv(path):
    feats, boxes = _features()
    with open(path, "w") as f:
        for k in sorted(feats):
            b64 = lambda a: base64.b64encode(a.tobytes()).decode()  # noqa: E731
            f.write(f"{k}\t640\t480\t{REGIONS[k]}\t{b64(boxes[k])}\t{b64(feats[k])}\n")
    return feats


def write_npz_dir(path):
    """MCAN's layout: one file per image named after it, features stored (D, K)."""
    feats, boxes = _features()
    path.mkdir()
    for k in feats:
        np.savez(path / f"COCO_val2014_{k:012d}.jpg.npz", x=feats[k].T, bbox=boxes[k], num_bbox=REGIONS[k])
    return feats


WRITERS = {"h5": ("f.h5", write_h5), "flat-h5": ("g.hdf5", write_flat_h5), "tsv": ("f.tsv", write_tsv),
           "npz": ("npz", write_npz_dir)}


@pytest.mark.parametrize("layout", list(WRITERS))
def test_feature_layouts_read_back_with_masks(tmp_path, layout):
    name, writer = WRITERS[layout]
    feats = writer(tmp_path / name)
    store = open_features(tmp_path / name, DIM)
    assert store.dim == DIM
    for k, want in feats.items():
        got, boxes = store.get(k)
        np.testing.assert_array_equal(got, want)
        if boxes is not None:
            assert boxes.shape == (REGIONS[k], 4)
    batch = FeatureSource(store, max_regions=36).gather([102, 101, 104])
    assert batch["features"].shape == (3, 5, DIM)
    assert batch["region_mask"].sum(1).tolist() == [2, 5, 1]
    assert float(batch["features"][0, 2:].abs().sum()) == 0.0


@pytest.mark.parametrize("layout", list(WRITERS))
def test_wrong_feature_width_is_one_error(tmp_path, layout):
    name, writer = WRITERS[layout]
    writer(tmp_path / name)
    with pytest.raises(VarattnError, match="wide"):
        open_features(tmp_path / name, 2048)


def test_pickled_sidecar_is_refused(tmp_path):
    h5py = need("h5py", "vqa")

    with h5py.File(tmp_path / "train36.hdf5", "w") as f:
        f["image_features"] = np.zeros((1, 2, DIM), np.float32)
    (tmp_path / "train36_imgid2idx.pkl").write_bytes(pickle.dumps({1: 0}))
    with pytest.raises(VarattnError, match="never opens"):
        open_features(tmp_path / "train36.hdf5")


# -- the official JSON files ---------------------------------------------------------------------------

QUESTIONS = [
    (1, 101, "What color is the cat?", ["black"] * 6 + ["gray"] * 3 + ["dark"]),
    (2, 102, "How many dogs are there?", ["2"] * 8 + ["two"] * 2),
    (3, 103, "Is it raining?", ["yes"] * 10),
    (4, 104, "What is the man holding?", ["umbrella"] * 4 + ["bag"] * 6),
    (5, 101, "Is the cat asleep?", ["no"] * 7 + ["yes"] * 3),
    (6, 102, "What color is the dog?", ["black"] * 6 + ["brown"] * 4),
]


def write_json(tmp_path, name="train", questions=QUESTIONS):
    q = {"questions": [{"question_id": i, "image_id": img, "question": text} for i, img, text, _ in questions]}
    a = {"annotations": [{"question_id": i, "image_id": img,
                          "answers": [{"answer": ans, "answer_id": j + 1, "answer_confidence": "yes"}
                                      for j, ans in enumerate(answers)],
                          "multiple_choice_answer": max(set(answers), key=answers.count)}
                         for i, img, _, answers in questions]}
    qp, ap = tmp_path / f"{name}_questions.json", tmp_path / f"{name}_annotations.json"
    qp.write_text(json.dumps(q))
    ap.write_text(json.dumps(a))
    return qp, ap


def test_answer_vocabulary_and_question_sets(tmp_path):
    qp, ap = write_json(tmp_path)
    notes = vqa2.read_annotations(ap)
    answers = vqa2.answer_vocab(notes, min_count=1)
    # "two" normalises to "2": question 2 has one answer, given by all ten annotators
    assert "2" in answers and "two" not in answers
    assert answers.itos[0] == "black"  # the majority answer of two questions
    words = Vocab(["<pad>", "<unk>", "what", "color", "is"], ("<pad>", "<unk>"))
    qs = vqa2.question_set(vqa2.read_questions(qp), notes, words, answers, max_len=14)
    assert dict(qs.answers[1]) == {answers.stoi["2"]: 10}
    assert qs.annotators == [10] * 6
    assert qs.words[0][:3] == [2, 3, 4]  # what color is ...
    # with min_count 2 only "black" survives: questions without it have no in-vocabulary answer
    small = vqa2.answer_vocab(notes, min_count=2)
    assert small.itos == ["black"]
    assert vqa2.question_set(vqa2.read_questions(qp), notes, words, small, 14).answerable() == [0, 5]


def _train_args(tmp_path, features, extra=()):
    qp, ap = write_json(tmp_path)
    return ["vqa", "train", "--config", "vqa2", "--out", str(tmp_path / "run"), "--max-steps", "2", "--threads", "1",
            "--no-progress", "--no-tensorboard", "--batch-size", "4",
            "--set", f"data.train_questions={qp}", "--set", f"data.train_annotations={ap}",
            "--set", f"data.train_features={features}", "--set", f"data.valid_questions={qp}",
            "--set", f"data.valid_annotations={ap}", "--set", "data.min_answer_count=1",
            "--set", f"model.feature_dim={DIM}", "--set", "model.embed_dim=4", "--set", "model.question_hidden=6",
            "--set", "model.attention_dim=5", "--set", "model.output_hidden=7", "--set", "model.answer_embed_dim=3",
            "--set", "model.inference_hidden=5", *extra]


def test_train_and_evaluate_on_generated_features(tmp_path, capsys):
    write_h5(tmp_path / "f.h5")
    assert main(_train_args(tmp_path, tmp_path / "f.h5")) == 0
    capsys.readouterr()
    assert main(["vqa", "evaluate", str(tmp_path / "run"), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "nll", "elbo_nll", "prior_entropy", "posterior_entropy", "questions"} <= set(result)
    assert result["questions"] == len(QUESTIONS)
    assert all(np.isfinite(result[k]) for k in ("accuracy", "nll", "elbo_nll", "prior_entropy"))
    assert main(["vqa", "answer", str(tmp_path / "run"), "--image-id", "102", "--question", "how many dogs?",
                 "--json", "--device", "cpu"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert len(answers) == 5 and sum(a["probability"] for a in answers) <= 1 + 1e-6


def test_fewer_regions_than_the_maximum_train_without_nan(tmp_path):
    h5py = need("h5py", "vqa")

    write_h5(tmp_path / "f.h5")
    with h5py.File(tmp_path / "f.h5") as f:
        assert int(f["num_boxes"][()].min()) < f["image_features"].shape[1]
    from varattn.vqa.config import load_config
    from varattn.vqa.task import VQATask

    args = _train_args(tmp_path, tmp_path / "f.h5")
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    cfg = load_config("vqa2", {"batch_size": 6}, sets)
    for mode in mode_names():
        cfg.mode = mode
        task = VQATask(cfg)
        task.prepare(tmp_path)
        torch.manual_seed(0)
        model = task.build_model()
        out = task.loss(model, task.train_batches(0)[0], 0)
        out.surrogate.backward()
        assert torch.isfinite(out.surrogate)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _fails(args, capsys, match):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and match in err, err


def test_a_question_about_an_image_without_features(tmp_path, capsys):
    write_h5(tmp_path / "f.h5")
    extra = [(7, 999, "Where is it?", ["here"] * 10)]
    write_json(tmp_path, "valid", QUESTIONS + extra)
    valid = ["--set", f"data.valid_questions={tmp_path / 'valid_questions.json'}",
             "--set", f"data.valid_annotations={tmp_path / 'valid_annotations.json'}"]
    args = _train_args(tmp_path, tmp_path / "f.h5", valid)
    _fails(args, capsys, "image 999")
    assert not (tmp_path / "run").exists()


def test_malformed_json(tmp_path, capsys):
    write_h5(tmp_path / "f.h5")
    args = _train_args(tmp_path, tmp_path / "f.h5")
    (tmp_path / "train_annotations.json").write_text('{"annotations": [')
    _fails(args, capsys, "not valid JSON")
    assert not (tmp_path / "run").exists()


def test_feature_file_of_the_wrong_width(tmp_path, capsys):
    write_h5(tmp_path / "f.h5", dim=DIM + 3)
    _fails(_train_args(tmp_path, tmp_path / "f.h5"), capsys, "wide")
    assert not (tmp_path / "run").exists()

