"""Tests for varattn.nmt.corpora.synthetic: determinism, the translation rules, gold links, files."""

from __future__ import annotations

import random

import pytest

from varattn.errors import VarattnError
from varattn.nmt.align import parse_pharaoh
from varattn.nmt.corpora.synthetic import (
    CLASS_SIZES,
    MAX_LEN,
    MIN_LEN,
    SyntheticPair,
    SyntheticTask,
    make_splits,
    read_split,
    write_splits,
)


@pytest.fixture(scope="module")
def task() -> SyntheticTask:
    return SyntheticTask(0)


@pytest.fixture(scope="module")
def corpus(task) -> list[SyntheticPair]:
    return task.generate(800, seed=123)


def _crossing(links) -> bool:
    links = sorted(links)
    return any(i1 < i2 and j1 > j2 for i1, j1 in links for i2, j2 in links)


# --------------------------------------------------------------------------- the language


def test_language_shape(task):
    assert len(task.src_vocab) == sum(CLASS_SIZES.values())
    assert 24 <= len(task.src_vocab) <= 40
    assert task.deleted_words == task.classes["DET"]
    assert len(task.one_to_many_words) == 5
    # no string is both a source and a target word; target words are never shared
    assert not set(task.src_vocab) & set(task.tgt_vocab)
    assert len(task.tgt_vocab) == len(set(task.tgt_vocab))
    for w in task.src_vocab:
        assert w.islower() and w.isalpha() and w[-1] in "aeiou"
    for t in task.tgt_vocab:
        assert t.islower() and t.isalpha() and t[-1] not in "aeiouy"


def test_language_depends_on_language_seed_only():
    a, b, c = SyntheticTask(0), SyntheticTask(0), SyntheticTask(1)
    assert a.dictionary == b.dictionary and a.classes == b.classes
    assert a.dictionary != c.dictionary


def test_global_random_state_untouched():
    random.seed(99)
    expected = random.random()
    random.seed(99)
    SyntheticTask(3).generate(50, seed=4)
    assert random.random() == expected


# --------------------------------------------------------------------------- determinism


def test_same_seeds_give_identical_corpus(task):
    again = SyntheticTask(0).generate(200, seed=123)
    assert again == task.generate(200, seed=123)


def test_different_corpus_seed_different_sentences_same_language(task):
    a = task.generate(200, seed=1)
    b = task.generate(200, seed=2)
    assert [p.src for p in a] != [p.src for p in b]
    vocab = set(task.src_vocab)
    for pair in a + b:
        assert set(pair.src) <= vocab


def test_sentence_lengths(corpus):
    lengths = [len(p.src) for p in corpus]
    assert min(lengths) >= MIN_LEN and max(lengths) <= MAX_LEN
    assert len(set(lengths)) >= 5  # a spread of lengths, not one fixed template


def test_target_is_function_of_source(task, corpus):
    seen: dict[tuple[str, ...], tuple[str, ...]] = {}
    for pair in corpus + task.generate(800, seed=7):
        key = tuple(pair.src)
        assert seen.setdefault(key, tuple(pair.tgt)) == tuple(pair.tgt)
    for pair in corpus[:50]:
        tgt, links = task.translate(pair.src)
        assert tgt == pair.tgt and links == pair.links
        assert SyntheticTask(0).translate(" ".join(pair.src)) == (pair.tgt, pair.links)


# --------------------------------------------------------------------------- rules and gold links


def test_gold_links_valid(task, corpus):
    for pair in corpus:
        for i, j in pair.links:
            assert 0 <= i < len(pair.src) and 0 <= j < len(pair.tgt)
        # every target word is linked exactly once, to the word that produced it
        tgt_links = sorted(j for _, j in pair.links)
        assert tgt_links == list(range(len(pair.tgt)))
        for i, j in pair.links:
            assert pair.tgt[j] in task.dictionary[pair.src[i]]
        linked_src = {i for i, _ in pair.links}
        for i, word in enumerate(pair.src):
            n_links = sum(1 for s, _ in pair.links if s == i)
            assert n_links == len(task.dictionary[word])
            if word in task.deleted_words:
                assert i not in linked_src


def test_corpus_exercises_every_rule(task, corpus):
    deleted = multi = crossing = 0
    for pair in corpus:
        if any(w in task.deleted_words for w in pair.src):
            deleted += 1
            assert len(pair.links) < len(pair.src) + len(pair.tgt)
        for i, w in enumerate(pair.src):
            if w in task.one_to_many_words:
                multi += 1
                js = sorted(j for s, j in pair.links if s == i)
                assert len(js) == 2 and js[1] == js[0] + 1
                assert [pair.tgt[j] for j in js] == list(task.dictionary[w])
        crossing += _crossing(pair.links)
    assert deleted > 50 and multi > 50 and crossing > 50


def test_adjective_noun_swap(task):
    det, adj, noun = task.classes["DET"][0], task.classes["ADJ"][0], task.classes["NOUN"][0]
    verb, adv = task.classes["VERB"][0], task.classes["ADV"][0]
    src = [det, adj, noun, verb, adj, adv]
    tgt, links = task.translate(src)
    d = task.dictionary
    # attributive ADJ NOUN swaps; predicative ADJ (followed by ADV) keeps its place; DET vanishes
    assert tgt == [*d[noun], *d[adj], *d[verb], *d[adj], *d[adv]]
    assert (0, 0) not in links and all(i != 0 for i, _ in links)
    assert _crossing(links)
    # without the swap context there is no crossing
    assert not _crossing(task.translate([noun, verb, adj])[1])


def test_translate_rejects_unknown_word(task):
    with pytest.raises(VarattnError, match="zzz"):
        task.translate([task.src_vocab[0], "zzz"])


def test_bad_arguments():
    with pytest.raises(VarattnError):
        SyntheticTask("0")  # type: ignore[arg-type]
    with pytest.raises(VarattnError):
        SyntheticTask(0).generate(-1, seed=0)


# --------------------------------------------------------------------------- splits and files


def test_default_split_sizes():
    splits = make_splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 6000, "valid": 300, "test": 300}
    assert [p.src for p in splits["valid"]] != [p.src for p in splits["test"]]
    assert [p.src for p in splits["train"][:300]] != [p.src for p in splits["valid"]]
    again = make_splits()
    assert again["test"] == splits["test"]


def test_make_splits_seed_changes_sentences():
    a = make_splits(seed=0, n_train=20, n_valid=5, n_test=5)
    b = make_splits(seed=1, n_train=20, n_valid=5, n_test=5)
    assert {k: len(v) for k, v in a.items()} == {"train": 20, "valid": 5, "test": 5}
    assert [p.src for p in a["train"]] != [p.src for p in b["train"]]


def test_links_format_round_trip():
    """The corpus writes and reads its links with varattn.nmt.align's Pharaoh functions."""
    pair = SyntheticPair(["a", "b"], ["x"], {(3, 1), (0, 0), (10, 2)})
    assert pair.align_line() == "0-0 3-1 10-2"
    assert parse_pharaoh(pair.align_line()) == pair.links
    assert parse_pharaoh("") == set()
    with pytest.raises(VarattnError):
        parse_pharaoh("0-0 1:2")


def test_write_splits_round_trip(tmp_path):
    splits = make_splits(seed=5, n_train=40, n_valid=10, n_test=10)
    out = write_splits(tmp_path / "new" / "dir", splits)
    assert (out / "README.txt").read_text().strip()
    for name, pairs in splits.items():
        lines = {ext: (out / f"{name}.{ext}").read_text().splitlines() for ext in ("src", "tgt", "align")}
        assert len(lines["src"]) == len(lines["tgt"]) == len(lines["align"]) == len(pairs)
        for pair, s, t, a in zip(pairs, lines["src"], lines["tgt"], lines["align"]):
            assert s.split() == pair.src and t.split() == pair.tgt
            tokens = a.split()
            parsed = {tuple(int(x) for x in tok.split("-")) for tok in tokens}
            assert parsed == pair.links
            assert tokens == sorted(tokens, key=lambda tok: tuple(int(x) for x in tok.split("-")))
        assert read_split(out, name) == pairs


def test_write_splits_rejects_file_path(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(VarattnError, match="not a directory"):
        write_splits(path, make_splits(n_train=2, n_valid=1, n_test=1))
