"""Tests for varattn.nmt.bleu: the two BLEU scores, BPE removal, detokenization, errors."""

from __future__ import annotations

import pytest
import sacrebleu

from varattn.errors import VarattnError
from varattn.nmt.bleu import corpus_bleu, detokenize, format_bleu, remove_bpe

REFS = [
    "it &apos;s a test .",
    "the cat sat on the mat , didn &apos;t it ?",
    "we don &apos;t know what &quot; good &quot; means .",
    "The quick brown fox jumps over the lazy dog .",
]
HYPS = [
    "it &apos;s a test .",
    "the cat sat on a mat , didn &apos;t it ?",
    "we do not know what good means .",
    "the quick brown fox jumped over a lazy dog .",
]


def test_identical_is_100():
    result = corpus_bleu(REFS, REFS)
    assert result["tok_bleu"] == pytest.approx(100.0)
    assert result["sacrebleu"] == pytest.approx(100.0)
    assert result["n"] == len(REFS)
    assert "tok:13a" in result["signature"] and "case:mixed" in result["signature"]


def test_partial_overlap_matches_sacrebleu_directly():
    result = corpus_bleu(HYPS, REFS)
    tok = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="none", lowercase=True).score
    assert result["tok_bleu"] == pytest.approx(tok)
    detok_hyps = [
        "it's a test.",
        "the cat sat on a mat, didn't it?",
        "we do not know what good means.",
        "the quick brown fox jumped over a lazy dog.",
    ]
    detok_refs = [
        "it's a test.",
        "the cat sat on the mat, didn't it?",
        'we don\'t know what "good" means.',
        "The quick brown fox jumps over the lazy dog.",
    ]
    sacre = sacrebleu.corpus_bleu(detok_hyps, [detok_refs]).score
    assert result["sacrebleu"] == pytest.approx(sacre)
    assert 0 < result["sacrebleu"] < 100 and 0 < result["tok_bleu"] < 100
    # lowercasing only affects the tokenized score: "The" vs "the" counts there
    assert result["tok_bleu"] != pytest.approx(result["sacrebleu"])


def test_tokenized_score_is_lowercased():
    result = corpus_bleu(["The Cat sat on the mat ."], ["the cat sat on the mat ."])
    assert result["tok_bleu"] == pytest.approx(100.0)
    assert result["sacrebleu"] < 100


def test_remove_bpe():
    assert remove_bpe("the c@@ at s@@ at .") == "the cat sat ."
    assert remove_bpe("no marks here") == "no marks here"
    assert remove_bpe("trailing piece@@") == "trailing piece"
    assert remove_bpe("a@@ b@@ c") == "abc"


def test_bpe_removed_before_scoring():
    hyps = ["the c@@ at sat on the m@@ at ."]
    refs = ["the cat sat on the mat ."]
    result = corpus_bleu(hyps, refs)
    assert result["tok_bleu"] == pytest.approx(100.0)
    assert result["sacrebleu"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    "tokenized, expected",
    [
        ("it &apos;s a test .", "it's a test."),
        ("i don &apos;t know , do you ?", "i don't know, do you?"),
        ("we &apos;re here ; they &apos;ll come : now", "we're here; they'll come: now"),
        ("he said &quot; hello &quot; ( quietly ) .", 'he said "hello" (quietly).'),
        ("a well @-@ known fact", "a well-known fact"),
        ("it costs $ 5 , or 10 % .", "it costs $5, or 10%."),
        ("the students &apos; books", "the students' books"),
        ("&#91; a &#93; &#124; b &lt; c &gt; d", "[a] | b < c > d"),
        ("AT &amp; T", "AT & T"),
        ("", ""),
    ],
)
def test_detokenize(tokenized, expected):
    assert detokenize(tokenized) == expected


def test_unescape_single_pass():
    # an escaped ampersand followed by "apos;" is the literal text, not an apostrophe
    assert detokenize("&amp;apos;") == "&apos;"


def test_unequal_counts_error():
    with pytest.raises(VarattnError, match=r"3 hypotheses vs 2 references"):
        corpus_bleu(["a", "b", "c"], ["a", "b"])


def test_empty_error():
    with pytest.raises(VarattnError):
        corpus_bleu([], [])


def test_format_bleu():
    line = format_bleu(corpus_bleu(HYPS, REFS))
    result = corpus_bleu(HYPS, REFS)
    assert line.startswith(f"BLEU (tokenized, lowercased) = {result['tok_bleu']:.2f} | sacreBLEU = ")
    assert f"({result['signature']})" in line
    assert line.endswith("| 4 sentences")
    assert "\n" not in line
