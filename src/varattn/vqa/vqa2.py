"""The official VQA 2.0 question and annotation files.

``v2_OpenEnded_mscoco_SPLIT_questions.json`` holds ``{"questions": [{"question_id", "image_id",
"question"}, ...]}``; ``v2_mscoco_SPLIT_annotations.json`` holds ``{"annotations": [{"question_id",
"image_id", "answers": [{"answer", ...}, ...], "multiple_choice_answer", ...}, ...]}`` with ten
annotator answers per question. The answer vocabulary holds the (normalised) most common answers
of the training annotations that were the majority answer at least ``min_count`` times (9 gives the
3,129 answers most VQA 2.0 models use).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from varattn.errors import VarattnError
from varattn.fileio import load_json
from varattn.vqa.data import QuestionSet
from varattn.vqa.text import Vocab, normalize_answer, tokenize_question


@dataclass
class RawQuestion:
    question_id: int
    image_id: int
    text: str


def _entries(path: str | Path, key: str, fields: tuple[str, ...]) -> list[dict]:
    data = load_json(path)  # malformed JSON: a one-line VarattnError naming line and column
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise VarattnError(f"{path}: expected a JSON object with a list {key!r} (the official VQA layout)")
    for n, entry in enumerate(data[key]):
        if not isinstance(entry, dict) or any(f not in entry for f in fields):
            raise VarattnError(f"{path}: {key}[{n}] lacks one of {', '.join(fields)}")
    return data[key]


def read_questions(path: str | Path) -> list[RawQuestion]:
    return [RawQuestion(e["question_id"], e["image_id"], str(e["question"]))
            for e in _entries(path, "questions", ("question_id", "image_id", "question"))]


def read_annotations(path: str | Path) -> dict[int, dict]:
    """question id -> ``{"answers": [normalised annotator answers], "majority": normalised answer}``."""
    out = {}
    for n, e in enumerate(_entries(path, "annotations", ("question_id", "answers"))):
        if not isinstance(e["answers"], list) or not all(isinstance(a, dict) and "answer" in a for a in e["answers"]):
            raise VarattnError(f"{path}: annotations[{n}].answers must be a list of {{\"answer\": ...}}")
        answers = [normalize_answer(str(a["answer"])) for a in e["answers"]]
        majority = e.get("multiple_choice_answer")
        if majority is None:
            majority = Counter(answers).most_common(1)[0][0] if answers else ""
        out[e["question_id"]] = {"answers": answers, "majority": normalize_answer(str(majority)),
                                 "type": str(e.get("answer_type", "other"))}
    return out


def answer_vocab(annotations: dict[int, dict], min_count: int = 9, max_answers: int | None = None) -> Vocab:
    """The majority answers seen at least ``min_count`` times, most frequent first."""
    counts = Counter(a["majority"] for a in annotations.values() if a["majority"])
    vocab = Vocab.build(counts, min_count=min_count, max_size=max_answers)
    if len(vocab) == 0:
        raise VarattnError(f"no answer is the majority answer of {min_count} or more training questions "
                           "(lower data.min_answer_count)")
    return vocab


def question_set(questions: list[RawQuestion], annotations: dict[int, dict] | None, words: Vocab,
                 answers: Vocab, max_len: int, path: str | Path = "") -> QuestionSet:
    """Encode questions; ``annotations`` None (test questions) leaves every answer list empty."""
    out = QuestionSet([], [], [], [], [], [])
    for q in questions:
        if annotations is not None and q.question_id not in annotations:
            raise VarattnError(f"{path}: question {q.question_id} has no annotation")
        given = annotations[q.question_id]["answers"] if annotations is not None else []
        counts = Counter(given)
        out.question_ids.append(q.question_id)
        out.texts.append(q.text)
        out.words.append(words.encode(tokenize_question(q.text, max_len)))
        out.image_ids.append(q.image_id)
        out.answers.append([(answers.stoi[a], c) for a, c in counts.items() if a in answers])
        out.annotators.append(max(1, len(given)))
        if annotations is not None:
            out.answer_types.append(annotations[q.question_id]["type"])
    return out
