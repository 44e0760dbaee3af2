"""Questions and answers as text: tokenisation, answer normalisation, vocabularies.

Questions follow the usual VQA preprocessing: lower-case, punctuation other than an apostrophe
inside a word becomes a space, the possessive ``'s`` is its own token, and the question is cut
at ``max_len`` tokens (14 in most VQA 2.0 models). Answers are normalised the way the official
evaluation compares them: lower-case, punctuation removed (but a decimal point between digits
kept), number words written as digits, the articles ``a``, ``an``, ``the`` dropped, and a few
common contractions given their apostrophe.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from varattn.vocab import UNK, Vocab

PAD = "<pad>"

_QUESTION_PUNCT = re.compile(r"[^\w\s']|_")
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hasnt": "hasn't", "havent": "haven't", "isnt": "isn't", "shouldnt": "shouldn't",
    "wasnt": "wasn't", "werent": "weren't", "wont": "won't", "wouldnt": "wouldn't", "youre": "you're",
    "thats": "that's", "whats": "what's", "im": "i'm", "ive": "i've", "lets": "let's",
}
_ANSWER_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:]")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")  # a full stop that is not a decimal point


def tokenize_question(text: str, max_len: int | None = None) -> list[str]:
    """``"What's the man's shirt color?"`` -> ``["what's", 'the', 'man', "'s", 'shirt', 'color']``."""
    text = _QUESTION_PUNCT.sub(" ", text.lower())
    tokens = []
    for word in text.split():
        word = word.strip("'")
        if not word:
            continue
        if word.endswith("'s") and len(word) > 2 and word[:-2] not in ("what", "it", "that", "there", "who", "where",
                                                                         "here", "how", "let", "he", "she"):
            tokens.extend([word[:-2], "'s"])
        else:
            tokens.append(word)
    return tokens[:max_len] if max_len else tokens


def normalize_answer(text: str) -> str:
    """An annotator's answer in the form the VQA evaluation compares (``"Two dogs."`` -> ``"2 dogs"``)."""
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    text = re.sub(r"(?<=\d),(?=\d)", "", text)  # 1,000 -> 1000
    text = _ANSWER_PUNCT.sub(" ", text)
    text = _PERIOD.sub("", text)
    words = []
    for word in text.split():
        word = _NUMBERS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def question_vocab(questions: Iterable[list[str]], min_count: int = 1) -> Vocab:
    """Question words of the training questions, with ``<pad>`` (0) and ``<unk>`` (1) first."""
    return Vocab.build(Counter(t for q in questions for t in q), min_count, specials=(PAD, UNK))
