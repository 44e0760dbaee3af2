"""Tests for varattn.nmt.align: gold formats, AER, subword-to-word links, link extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from varattn.errors import VarattnError
from varattn.nmt.align import (
    alignment_error_rate,
    argmax_links,
    format_gold,
    format_pharaoh,
    format_talp,
    links_to_words,
    parse_gold,
    parse_pharaoh,
    read_gold_file,
    subword_to_word_map,
    threshold_links,
)

link_sets = st.sets(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=25)

# --------------------------------------------------------------------------- parsing / formatting


def test_parse_pharaoh_basic():
    assert parse_pharaoh("0-0 1-2  3-1\n") == {(0, 0), (1, 2), (3, 1)}
    assert parse_pharaoh("") == set()
    assert parse_pharaoh("   ") == set()


@pytest.mark.parametrize("bad", ["0-", "a-b", "1:2", "1-2-3", "-1-2", "1p2", "1?2"])
def test_parse_pharaoh_rejects_bad_tokens(bad):
    with pytest.raises(VarattnError):
        parse_pharaoh(f"0-0 {bad}")


def test_format_pharaoh_sorted_by_src_then_tgt():
    assert format_pharaoh({(1, 2), (0, 3), (1, 0), (0, 0)}) == "0-0 0-3 1-0 1-2"
    assert format_pharaoh(set()) == ""
    assert format_pharaoh([[2, 1]]) == "2-1"


@settings(max_examples=60, deadline=None)
@given(link_sets)
def test_pharaoh_round_trip(links):
    line = format_pharaoh(links)
    assert parse_pharaoh(line) == links
    assert format_pharaoh(parse_pharaoh(line)) == line


@settings(max_examples=60, deadline=None)
@given(link_sets, link_sets)
def test_talp_round_trip(sure, extra_possible):
    possible = sure | extra_possible
    line = format_talp(sure, possible)
    assert parse_gold(line, "talp") == (sure, possible)
    # possible links given without the sure ones still come back as a superset of sure
    assert parse_gold(format_talp(sure, extra_possible), "talp") == (sure, possible)


@settings(max_examples=40, deadline=None)
@given(link_sets, link_sets)
def test_pharaoh_gold_extension_round_trip(sure, extra_possible):
    line = format_gold(sure, extra_possible, "pharaoh")
    assert parse_gold(line, "pharaoh") == (sure, sure | extra_possible)


def test_parse_gold_pharaoh_possible_marks():
    sure, possible = parse_gold("0-0 1?2 2p3", "pharaoh")
    assert sure == {(0, 0)}
    assert possible == {(0, 0), (1, 2), (2, 3)}


def test_parse_gold_talp_is_one_based():
    sure, possible = parse_gold("1-1 2p3 3-2", "talp")
    assert sure == {(0, 0), (2, 1)}
    assert possible == {(0, 0), (1, 2), (2, 1)}
    assert format_talp(sure, possible) == "1-1 2p3 3-2"


def test_talp_vs_pharaoh_trap_differs_by_one():
    line = "1-2 3-3 4-1"
    as_pharaoh, _ = parse_gold(line, "pharaoh")
    as_talp, _ = parse_gold(line, "talp")
    assert as_pharaoh == {(1, 2), (3, 3), (4, 1)}
    assert as_talp == {(i - 1, j - 1) for i, j in as_pharaoh}
    assert as_talp != as_pharaoh
    # a 0 index cannot be talp: the usual sign of a 0-based file read as talp
    with pytest.raises(VarattnError, match="1-based"):
        parse_gold("0-0 1-1", "talp")
    # the same links written both ways
    assert format_pharaoh(as_talp) == "0-1 2-2 3-0"
    assert format_talp(as_talp, ()) == line


def test_unknown_format_raises():
    with pytest.raises(VarattnError, match="unknown alignment format"):
        parse_gold("0-0", "moses")


def test_read_gold_file(tmp_path):
    path = tmp_path / "gold.talp"
    path.write_text("1-1 2p2\n\n3-1\n", encoding="utf-8")
    golds = read_gold_file(path, "talp")
    assert golds == [({(0, 0)}, {(0, 0), (1, 1)}), (set(), set()), ({(2, 0)}, {(2, 0)})]


def test_read_gold_file_reports_file_and_line(tmp_path):
    path = tmp_path / "gold.txt"
    path.write_text("0-0 1-1\n2-2\n3-3 4x4\n", encoding="utf-8")
    with pytest.raises(VarattnError) as info:
        read_gold_file(path, "pharaoh")
    message = str(info.value)
    assert "gold.txt:3:" in message
    assert "4x4" in message


def test_read_gold_file_missing(tmp_path):
    with pytest.raises(VarattnError, match="cannot read"):
        read_gold_file(tmp_path / "nope.txt", "pharaoh")


# --------------------------------------------------------------------------- AER


def test_aer_perfect_and_hand_computed():
    gold = [({(0, 0), (1, 1)}, {(0, 0), (1, 1), (2, 1)})]
    perfect = alignment_error_rate([{(0, 0), (1, 1)}], gold)
    assert perfect == pytest.approx({"aer": 0.0, "precision": 1.0, "recall": 1.0})

    # A = {(0,0), (2,1), (2,2)}; S = {(0,0), (1,1)}; P = S | {(2,1)}
    # |A|=3, |S|=2, |A&S| = 1 ((0,0)), |A&P| = 2 ((0,0), (2,1))
    # precision = 2/3, recall = 1/2, AER = 1 - (1 + 2) / (3 + 2) = 0.4
    r = alignment_error_rate([{(0, 0), (2, 1), (2, 2)}], gold)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(0.5)
    assert r["aer"] == pytest.approx(0.4)


def test_aer_possible_only_link_counts_for_precision_not_recall():
    # S = {(0,0)}, P = {(0,0), (1,1)}.  Predicting only the possible link (1,1):
    # |A|=1, |S|=1, |A&S|=0, |A&P|=1 -> precision 1, recall 0, AER = 1 - (0+1)/(1+1) = 0.5
    gold = [({(0, 0)}, {(0, 0), (1, 1)})]
    r = alignment_error_rate([{(1, 1)}], gold)
    assert r == pytest.approx({"aer": 0.5, "precision": 1.0, "recall": 0.0})


def test_aer_possible_set_need_not_list_sure_links():
    # P given without the sure link; it is still treated as possible (S is a subset of P).
    # A = {(0,0)}: |A&S| = 1, |A&P| = 1 -> AER = 1 - 2/2 = 0
    r = alignment_error_rate([{(0, 0)}], [({(0, 0)}, {(1, 1)})])
    assert r == pytest.approx({"aer": 0.0, "precision": 1.0, "recall": 1.0})


def test_aer_all_possible_gold():
    # S empty, P = {(0,0), (1,1)}; A = {(0,0), (0,1)}
    # |A|=2, |S|=0, |A&S|=0, |A&P|=1 -> precision 1/2, recall 1.0 by convention (nothing to recall),
    # AER = 1 - (0 + 1) / (2 + 0) = 0.5 = 1 - precision
    r = alignment_error_rate([{(0, 0), (0, 1)}], [(set(), {(0, 0), (1, 1)})])
    assert r == pytest.approx({"aer": 0.5, "precision": 0.5, "recall": 1.0})


def test_aer_empty_cases_do_not_divide_by_zero():
    # nothing predicted, nothing sure: perfect by convention
    assert alignment_error_rate([set()], [(set(), set())]) == {"aer": 0.0, "precision": 1.0, "recall": 1.0}
    # nothing predicted, 2 sure links: AER = 1 - 0 / (0 + 2) = 1
    r = alignment_error_rate([set()], [({(0, 0), (1, 1)}, set())])
    assert r == {"aer": 1.0, "precision": 1.0, "recall": 0.0}
    # empty corpus
    assert alignment_error_rate([], []) == {"aer": 0.0, "precision": 1.0, "recall": 1.0}


def test_aer_is_corpus_level_not_sentence_average():
    # sentence 1: A={(0,0)}, S={(0,0)}                  -> |A&S|=1, |A&P|=1, |A|=1, |S|=1
    # sentence 2: A={(0,1),(1,0),(2,2)}, S={(0,0)} P=S  -> |A&S|=0, |A&P|=0, |A|=3, |S|=1
    # totals: |A|=4, |S|=2, |A&S|=1, |A&P|=1 -> precision 1/4, recall 1/2, AER = 1 - 2/6 = 2/3
    # (the mean of the sentence AERs would be (0 + 1) / 2 = 0.5)
    hyps = [{(0, 0)}, {(0, 1), (1, 0), (2, 2)}]
    golds = [({(0, 0)}, {(0, 0)}), ({(0, 0)}, {(0, 0)})]
    r = alignment_error_rate(hyps, golds)
    assert r == pytest.approx({"aer": 2 / 3, "precision": 0.25, "recall": 0.5})


def test_aer_mismatched_counts_raise():
    with pytest.raises(VarattnError) as info:
        alignment_error_rate([set(), set(), set()], [(set(), set())])
    assert "3" in str(info.value) and "1" in str(info.value)


@settings(max_examples=50, deadline=None)
@given(link_sets, link_sets, link_sets)
def test_aer_bounds(hyp, sure, extra):
    r = alignment_error_rate([hyp], [(sure, sure | extra)])
    for key in ("aer", "precision", "recall"):
        assert 0.0 <= r[key] <= 1.0
    # the hypothesis equal to S is always perfect
    assert alignment_error_rate([sure], [(sure, sure | extra)])["aer"] == 0.0


# --------------------------------------------------------------------------- subwords


def test_bpe_map_start_middle_end():
    # "ge@@ sch@@ ichte" is one word: start (ge@@), middle (sch@@), end (ichte)
    pieces = ["die", "ge@@", "sch@@", "ichte", "ist", "lang@@", "e"]
    assert subword_to_word_map(pieces, "bpe") == [0, 1, 1, 1, 2, 3, 3]


def test_bpe_map_word_split_at_sentence_start_and_trailing_marker():
    assert subword_to_word_map(["un@@", "fair", "game"], "bpe") == [0, 0, 1]
    # a trailing "@@" on the last piece ends the word
    assert subword_to_word_map(["a", "b@@", "c@@"], "bpe") == [0, 1, 1]
    assert subword_to_word_map(["x@@"], "bpe") == [0]
    assert subword_to_word_map([], "bpe") == []


def test_sentencepiece_map_start_middle_end():
    pieces = ["\u2581die", "\u2581Ge", "sch", "ichte", "\u2581ist", "\u2581lang", "e"]
    assert subword_to_word_map(pieces, "sentencepiece") == [0, 1, 1, 1, 2, 3, 3]


def test_sentencepiece_first_piece_without_mark_and_bare_mark():
    # first piece starts word 0 with or without the mark
    assert subword_to_word_map(["Ge", "schichte", "\u2581ist"], "sentencepiece") == [0, 0, 1]
    assert subword_to_word_map(["\u2581Ge", "schichte", "\u2581ist"], "sentencepiece") == [0, 0, 1]
    # a bare "▁" piece starts a word that the next (unmarked) piece continues
    assert subword_to_word_map(["\u2581a", "\u2581", "123", "."], "sentencepiece") == [0, 1, 1, 1]
    assert subword_to_word_map([], "sentencepiece") == []


def test_none_style_and_unknown_style():
    assert subword_to_word_map(["a@@", "\u2581b", "c"], "none") == [0, 1, 2]
    with pytest.raises(VarattnError, match="unknown subword style"):
        subword_to_word_map(["a"], "wordpiece")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcxyz"), min_size=1, max_size=4), min_size=1, max_size=8))
def test_subword_styles_agree_on_random_segmentations(words):
    # words: each a list of pieces (strings of 1 char); build bpe and sentencepiece spellings
    bpe = [p + ("@@" if k < len(w) - 1 else "") for w in words for k, p in enumerate(w)]
    spm = [("\u2581" if k == 0 else "") + p for w in words for k, p in enumerate(w)]
    expected = [n for n, w in enumerate(words) for _ in w]
    assert subword_to_word_map(bpe, "bpe") == expected
    assert subword_to_word_map(spm, "sentencepiece") == expected


def test_links_to_words():
    src_map = subword_to_word_map(["ge@@", "sch@@", "ichte", "ist"], "bpe")  # [0, 0, 0, 1]
    tgt_map = subword_to_word_map(["\u2581hist", "ory", "\u2581is"], "sentencepiece")  # [0, 0, 1]
    piece_links = {(0, 0), (2, 1), (1, 0), (3, 2)}
    assert links_to_words(piece_links, src_map, tgt_map) == {(0, 0), (1, 1)}
    assert links_to_words(set(), src_map, tgt_map) == set()
    with pytest.raises(VarattnError, match="outside"):
        links_to_words({(4, 0)}, src_map, tgt_map)


# --------------------------------------------------------------------------- link extraction


def test_argmax_links_one_per_target_position():
    # probs[t, i]; T=3 target positions, S=2 source positions
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert argmax_links(probs) == {(0, 0), (1, 1), (0, 2)}
    assert argmax_links(torch.tensor(probs, requires_grad=True)) == {(0, 0), (1, 1), (0, 2)}
    assert argmax_links(probs.tolist()) == {(0, 0), (1, 1), (0, 2)}


def test_argmax_links_crops_padding():
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.3, 0.4, 0.3], [0.0, 0.0, 1.0]])
    # only the first 2 target rows and 2 source columns are real
    assert argmax_links(probs, src_len=2, tgt_len=2) == {(1, 0), (1, 1)}
    with pytest.raises(VarattnError):
        argmax_links(probs, src_len=4, tgt_len=2)
    with pytest.raises(VarattnError, match="2-D"):
        argmax_links(torch.zeros(2, 3, 4))


def test_threshold_links():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.05, 0.15, 0.8]])
    assert threshold_links(probs, 0.4) == {(0, 0), (1, 0), (2, 1)}
    # strictly greater: 0.5 is not above 0.5
    assert threshold_links(probs, 0.5) == {(2, 1)}
    assert threshold_links(probs, 0.1, src_len=2) == {(0, 0), (1, 0), (1, 1)}
    assert threshold_links(probs, 0.99) == set()


def test_end_to_end_piece_probs_to_word_aer():
    src_pieces = ["ge@@", "sch@@", "ichte", "ist", "lang"]  # words: geschichte ist lang
    tgt_pieces = ["\u2581hist", "ory", "\u2581is", "\u2581long"]  # words: history is long
    probs = np.zeros((4, 5))
    probs[0, 0] = probs[1, 2] = probs[2, 3] = probs[3, 3] = 1.0  # last one wrong: long -> ist
    piece_links = argmax_links(probs)
    words = links_to_words(
        piece_links, subword_to_word_map(src_pieces, "bpe"), subword_to_word_map(tgt_pieces, "sentencepiece")
    )
    assert words == {(0, 0), (1, 1), (1, 2)}
    gold = parse_gold("0-0 1-1 2-2", "pharaoh")
    # |A|=3, |S|=3, |A&S|=|A&P|=2 -> AER = 1 - 4/6 = 1/3
    assert alignment_error_rate([words], [gold])["aer"] == pytest.approx(1 / 3)
