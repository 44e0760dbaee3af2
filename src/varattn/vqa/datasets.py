"""Assemble a run's data: vocabularies, question sets and region sources, for both data sources."""

from __future__ import annotations

from dataclasses import dataclass

from varattn.errors import VarattnError
from varattn.vqa import easy, vqa2
from varattn.vqa.config import VQADataConfig
from varattn.vqa.data import FeatureSource, PixelSource, QuestionSet, RegionSource, check_images
from varattn.vqa.features import open_features
from varattn.vqa.text import PAD, UNK, Vocab, question_vocab, tokenize_question


@dataclass
class Prepared:
    """Everything a VQA run reads: vocabularies, training and validation questions and their regions."""

    words: Vocab
    answers: Vocab
    train: QuestionSet
    valid: QuestionSet
    train_source: RegionSource
    valid_source: RegionSource


def easy_questions(split: easy.EasySplit, words: Vocab, answers: Vocab, max_len: int,
                   keep: list[int] | None = None) -> QuestionSet:
    pick = range(len(split.texts)) if keep is None else keep
    out = QuestionSet([], [], [], [], [], [])
    for i in pick:
        out.question_ids.append(i)
        out.texts.append(split.texts[i])
        out.words.append(words.encode(tokenize_question(split.texts[i], max_len)))
        out.image_ids.append(split.image_ids[i])
        out.answers.append([(answers.stoi[split.answers[i]], 1)])
        out.annotators.append(1)
        out.answer_types.append(easy_answer_type(split.answers[i]))
    return out


def easy_answer_type(answer: str) -> str:
    """easy-VQA's answer types: ``yes/no``, ``shape`` or ``color``."""
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in ("circle", "rectangle", "triangle") else "color"


def prepare_easy(data: VQADataConfig, words: Vocab | None = None) -> Prepared:
    """easy-VQA's training split, its last ``valid_images`` images held out (with their questions) for validation."""
    split = easy.load_split("train", data.limit_train)
    answers = Vocab(easy.answer_list())
    held = set(split.pixel_ids[-data.valid_images:]) if data.valid_images else set()
    if len(held) >= len(split.pixel_ids):
        raise VarattnError(f"data.valid_images={data.valid_images} leaves no training images")
    train_idx = [i for i, key in enumerate(split.image_ids) if key not in held]
    valid_idx = [i for i, key in enumerate(split.image_ids) if key in held]
    if words is None:
        words = question_vocab([tokenize_question(split.texts[i], data.max_question_len) for i in train_idx],
                               data.min_word_count)
    source = PixelSource(split.pixels, split.pixel_ids)
    return Prepared(words, answers, easy_questions(split, words, answers, data.max_question_len, train_idx),
                    easy_questions(split, words, answers, data.max_question_len, valid_idx), source, source)


def easy_test(data: VQADataConfig, words: Vocab, answers: Vocab) -> tuple[QuestionSet, RegionSource]:
    """easy-VQA's test split (1,000 images, 9,673 questions; the first ``limit_test`` if set)."""
    split = easy.load_split("test", data.limit_test)
    return easy_questions(split, words, answers, data.max_question_len), PixelSource(split.pixels, split.pixel_ids)


def feature_split(questions: str, annotations: str | None, features: str, words: Vocab, answers: Vocab,
                  data: VQADataConfig, feature_dim: int, limit: int | None = None) -> tuple[QuestionSet, RegionSource]:
    """One VQA 2.0 split: its questions (with annotations if given) and its region features, checked."""
    raw = vqa2.read_questions(questions)[:limit] if limit else vqa2.read_questions(questions)
    notes = vqa2.read_annotations(annotations) if annotations else None
    qs = vqa2.question_set(raw, notes, words, answers, data.max_question_len, annotations or questions)
    source = FeatureSource(open_features(features, feature_dim), data.max_regions)
    check_images(qs, source, str(questions))
    return qs, source


def prepare_features(data: VQADataConfig, feature_dim: int, words: Vocab | None = None,
                     answers: Vocab | None = None) -> Prepared:
    """VQA 2.0: vocabularies from the training files (unless given), training questions with an answer."""
    if words is None or answers is None:
        train_notes = vqa2.read_annotations(data.train_annotations)
        answers = vqa2.answer_vocab(train_notes, data.min_answer_count, data.max_answers)
        raw = vqa2.read_questions(data.train_questions)
        words = question_vocab([tokenize_question(q.text, data.max_question_len) for q in raw], data.min_word_count)
    train, train_source = feature_split(data.train_questions, data.train_annotations, data.train_features, words,
                                        answers, data, feature_dim)
    valid_features = data.valid_features or data.train_features
    valid, valid_source = feature_split(data.valid_questions, data.valid_annotations, valid_features, words, answers,
                                        data, feature_dim, data.max_valid_questions)
    if not train.answerable():
        raise VarattnError(f"{data.train_annotations}: no training question has an answer in the answer vocabulary")
    return Prepared(words, answers, train, valid, train_source, valid_source)


def prepare(data: VQADataConfig, feature_dim: int, words: Vocab | None = None,
            answers: Vocab | None = None) -> Prepared:
    if data.source == "easy-vqa":
        return prepare_easy(data, words)
    return prepare_features(data, feature_dim, words, answers)


WORD_SPECIALS = (PAD, UNK)
