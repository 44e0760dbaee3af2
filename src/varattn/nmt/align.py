"""Word-alignment utilities: reading and writing gold alignments, AER, subword-to-word links.

Conventions
-----------
* A **link** is a pair ``(src_index, tgt_index)`` of 0-based token positions, source first.
  Every function in this module takes and returns links in this form, whatever the file
  format on disk.
* An alignment for one sentence pair is a ``set`` of links.  Gold alignments come as a pair
  ``(sure, possible)`` of sets with ``sure <= possible`` (every sure link is also possible),
  the convention of Och & Ney (2003) under which AER is defined.  The parsers enforce it by
  adding the sure links to the possible set.
* Attention / alignment matrices are indexed ``probs[t, i]`` = p(z = i | target position t),
  shape ``(T, S)`` (target length by source length), each row a distribution over source
  positions.  Links extracted from them are still returned as ``(src, tgt) = (i, t)``.

File formats (one sentence pair per line; an empty line is a sentence pair with no links)
------------------------------------------------------------------------------------------
* ``"pharaoh"``: whitespace-separated ``i-j`` tokens, **0-based**, source index first, as
  written by fast_align and most neural aligners.  Pharaoh itself only has sure links; as an
  extension :func:`parse_gold` also reads ``i?j`` and ``ipj`` as possible links.
* ``"talp"``: whitespace-separated ``i-j`` (sure) and ``ipj`` (possible) tokens, **1-based**,
  source index first, as in several hand-aligned test sets.

The 1-based trap: ``"1-2"`` is the link ``(1, 2)`` in Pharaoh but ``(0, 1)`` in talp.  Reading
a talp file as Pharaoh shifts every link by one and gives a silently terrible AER (and the
reverse loses the links that touch position 0).  Always pass the format explicitly; a ``0``
index in a talp file is rejected, which catches the most common mix-up.

Subword pieces
--------------
Models usually align subword pieces while gold alignments are between words.
:func:`subword_to_word_map` maps each piece to its word and :func:`links_to_words` turns piece
links into word links (a word pair is linked if any of their pieces are).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from varattn.errors import VarattnError
from varattn.nmt.subword import BPE_MARK, SENTENCEPIECE_SPACE

Link = tuple[int, int]
Gold = tuple[set[Link], set[Link]]

GOLD_FORMATS = ("pharaoh", "talp")
SUBWORD_STYLES = ("bpe", "sentencepiece", "none")

# One token: source index, a separator, target index.  "-" is a sure link, "?" / "p" possible.
_TOKEN_RE = re.compile(r"^(-?\d+)([-?p])(-?\d+)$")


# --------------------------------------------------------------------------- parsing


def _parse_token(token: str, fmt: str) -> tuple[Link, bool]:
    """Parse one token into a 0-based link and whether it is sure. Raises VarattnError."""
    m = _TOKEN_RE.match(token)
    if m is None:
        raise VarattnError(f"malformed alignment token {token!r} (expected e.g. '3-4' or '3p4')")
    src, sep, tgt = int(m.group(1)), m.group(2), int(m.group(3))
    sure = sep == "-"
    if fmt == "talp":
        if src < 1 or tgt < 1:
            raise VarattnError(
                f"alignment token {token!r} has an index below 1, but talp indices are 1-based "
                "(is this a 0-based pharaoh file?)"
            )
        src, tgt = src - 1, tgt - 1
    elif src < 0 or tgt < 0:
        raise VarattnError(f"alignment token {token!r} has a negative index")
    return (src, tgt), sure


def _check_format(fmt: str) -> None:
    if fmt not in GOLD_FORMATS:
        raise VarattnError(f"unknown alignment format {fmt!r}; expected one of {', '.join(GOLD_FORMATS)}")


def parse_pharaoh(line: str) -> set[Link]:
    """Parse a Pharaoh line of 0-based ``i-j`` tokens into a set of (src, tgt) links.

    Pharaoh has sure links only: a possible-link token (``i?j``, ``ipj``) raises
    :class:`VarattnError`; use :func:`parse_gold` for gold files with possible links.
    """
    links: set[Link] = set()
    for token in line.split():
        link, sure = _parse_token(token, "pharaoh")
        if not sure:
            raise VarattnError(
                f"possible link {token!r} in a Pharaoh line; use parse_gold(line, 'pharaoh') to read it"
            )
        links.add(link)
    return links


def parse_gold(line: str, fmt: str) -> Gold:
    """Parse one gold alignment line into ``(sure, possible)`` sets of 0-based (src, tgt) links.

    ``fmt`` is ``"pharaoh"`` (0-based; ``i-j`` sure, ``i?j`` / ``ipj`` possible) or ``"talp"``
    (1-based; ``i-j`` sure, ``ipj`` possible, ``i?j`` also accepted).  The returned possible set
    always contains the sure set.
    """
    _check_format(fmt)
    sure: set[Link] = set()
    possible: set[Link] = set()
    for token in line.split():
        link, is_sure = _parse_token(token, fmt)
        possible.add(link)
        if is_sure:
            sure.add(link)
    return sure, possible


def read_gold_file(path: str | os.PathLike[str], fmt: str) -> list[Gold]:
    """Read a gold alignment file, one ``(sure, possible)`` pair per line (blank line = no links).

    Raises :class:`VarattnError` naming the file and the 1-based line number of a malformed
    token, and for a missing or unreadable file.
    """
    _check_format(fmt)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise VarattnError(f"cannot read alignment file {os.fspath(path)}: {exc}") from exc
    golds: list[Gold] = []
    for lineno, line in enumerate(lines, start=1):
        try:
            golds.append(parse_gold(line, fmt))
        except VarattnError as exc:
            raise VarattnError(f"{os.fspath(path)}:{lineno}: {exc}") from exc
    return golds


def check_gold_sizes(golds: Sequence[Gold], sizes: Sequence[tuple[int, int]], path: str | os.PathLike[str],
                     fmt: str) -> None:
    """Every gold link lies inside its sentence pair: ``sizes[k]`` is ``(source words, target words)`` of pair k.

    A link outside (``99-99`` in a 5-word pair) raises :class:`VarattnError` naming the file, the 1-based
    line and the link as written in ``fmt``.
    """
    base = 1 if fmt == "talp" else 0
    for lineno, ((_, possible), (n_src, n_tgt)) in enumerate(zip(golds, sizes), start=1):
        outside = sorted((i, j) for i, j in possible if i >= n_src or j >= n_tgt)
        if outside:
            i, j = outside[0]
            raise VarattnError(
                f"{os.fspath(path)}:{lineno}: gold link {i + base}-{j + base} lies outside its sentence pair "
                f"({n_src} source and {n_tgt} target words); is it the gold file of these sentences?"
            )


# --------------------------------------------------------------------------- formatting


def _sorted_links(links: Iterable[Sequence[int]]) -> list[Link]:
    return sorted({(int(i), int(j)) for i, j in links})


def format_pharaoh(links: Iterable[Sequence[int]]) -> str:
    """Format 0-based (src, tgt) links as a Pharaoh line, sorted by (src, tgt): ``"0-0 1-2"``.

    Returns ``""`` when there are no links.
    """
    return " ".join(f"{i}-{j}" for i, j in _sorted_links(links))


def format_talp(sure: Iterable[Sequence[int]], possible: Iterable[Sequence[int]] = ()) -> str:
    """Format 0-based gold links as a 1-based talp line: ``i-j`` for sure, ``ipj`` for possible-only.

    Links are sorted by (src, tgt); a link in both sets is written once, as sure.  The output
    parses back with ``parse_gold(line, "talp")`` to ``(sure, possible | sure)``.
    """
    sure_set = set(_sorted_links(sure))
    all_links = sorted(sure_set | set(_sorted_links(possible)))
    return " ".join(f"{i + 1}{'-' if (i, j) in sure_set else 'p'}{j + 1}" for i, j in all_links)


def format_gold(sure: Iterable[Sequence[int]], possible: Iterable[Sequence[int]], fmt: str) -> str:
    """Format gold links in ``fmt`` (``"pharaoh"`` writes possible-only links as ``i?j``)."""
    _check_format(fmt)
    if fmt == "talp":
        return format_talp(sure, possible)
    sure_set = set(_sorted_links(sure))
    all_links = sorted(sure_set | set(_sorted_links(possible)))
    return " ".join(f"{i}{'-' if (i, j) in sure_set else '?'}{j}" for i, j in all_links)


# --------------------------------------------------------------------------- evaluation


def alignment_error_rate(hyps: Sequence[Iterable[Sequence[int]]], golds: Sequence[Gold]) -> dict[str, float]:
    """Corpus-level alignment error rate, precision and recall (Och & Ney, 2003).

    ``hyps[k]`` is the set A of predicted (src, tgt) links for sentence pair k and ``golds[k]``
    its ``(sure, possible)`` pair (S, P; P is taken as P | S).  Counts are summed over the corpus
    before dividing::

        precision = |A & P| / |A|
        recall    = |A & S| / |S|
        AER       = 1 - (|A & S| + |A & P|) / (|A| + |S|)

    A predicted link that is only possible counts for precision but not for recall.

    Empty denominators (no division by zero): with no predicted links at all precision is 1.0
    (nothing predicted is wrong); with no sure gold links at all recall is 1.0 (nothing to
    recall); with neither, AER is 0.0.  So an empty prediction against a non-empty sure set
    gives precision 1.0, recall 0.0, AER 1.0.

    Returns ``{"aer": float, "precision": float, "recall": float}``.  Raises
    :class:`VarattnError` if the two lists differ in length.
    """
    if len(hyps) != len(golds):
        raise VarattnError(
            f"alignment counts differ: {len(hyps)} hypothesis alignments but {len(golds)} gold alignments"
        )
    n_a = n_s = n_a_s = n_a_p = 0
    for hyp, (sure, possible) in zip(hyps, golds):
        a = set(_sorted_links(hyp))
        s = set(_sorted_links(sure))
        p = set(_sorted_links(possible)) | s
        n_a += len(a)
        n_s += len(s)
        n_a_s += len(a & s)
        n_a_p += len(a & p)
    precision = n_a_p / n_a if n_a else 1.0
    recall = n_a_s / n_s if n_s else 1.0
    aer = 1.0 - (n_a_s + n_a_p) / (n_a + n_s) if (n_a + n_s) else 0.0
    return {"aer": aer, "precision": precision, "recall": recall}


# --------------------------------------------------------------------------- subwords


def subword_to_word_map(pieces: Sequence[str], style: str) -> list[int]:
    """Map each subword piece (index 0..n-1) to the 0-based index of the word it belongs to.

    ``style``:

    * ``"bpe"``: a piece ending in ``@@`` continues into the next piece, so
      ``["ge@@", "sch@@", "ichte", "ist"]`` -> ``[0, 0, 0, 1]``.  A trailing ``@@`` on the last
      piece ends the word (there is nothing to continue into).
    * ``"sentencepiece"``: a piece starting with ``▁`` (U+2581) starts a new word, so
      ``["▁Ge", "schichte", "▁ist"]`` -> ``[0, 0, 1]``.  The first piece starts word 0 with or
      without the mark.
    * ``"none"``: every piece is a word (identity map).

    Returns a list of length ``len(pieces)``, non-decreasing, starting at 0 (empty for no pieces).
    """
    if style == "none":
        return list(range(len(pieces)))
    if style == "bpe":
        out: list[int] = []
        word = 0
        for piece in pieces:
            out.append(word)
            if not piece.endswith(BPE_MARK):
                word += 1
        return out
    if style == "sentencepiece":
        out = []
        word = -1
        for k, piece in enumerate(pieces):
            if k == 0 or piece.startswith(SENTENCEPIECE_SPACE):
                word += 1
            out.append(word)
        return out
    raise VarattnError(f"unknown subword style {style!r}; expected one of {', '.join(SUBWORD_STYLES)}")


def links_to_words(
    links: Iterable[Sequence[int]], src_map: Sequence[int], tgt_map: Sequence[int]
) -> set[Link]:
    """Turn (src_piece, tgt_piece) links into (src_word, tgt_word) links.

    ``src_map`` / ``tgt_map`` come from :func:`subword_to_word_map` (length = number of pieces).
    A word pair is linked if any of their pieces are.  Raises :class:`VarattnError` for a piece
    index outside a map.
    """
    out: set[Link] = set()
    for i, j in links:
        i, j = int(i), int(j)
        if not (0 <= i < len(src_map)) or not (0 <= j < len(tgt_map)):
            raise VarattnError(
                f"link ({i}, {j}) is outside the piece maps "
                f"({len(src_map)} source, {len(tgt_map)} target pieces)"
            )
        out.add((src_map[i], tgt_map[j]))
    return out


# --------------------------------------------------------------------------- link extraction


def as_2d_array(probs: Any) -> np.ndarray:
    """Convert a (T, S) torch tensor / numpy array / nested list to a float64 numpy array.

    Tensors are detached and moved to the CPU first.  Raises :class:`VarattnError` unless the
    result is 2-D.
    """
    if hasattr(probs, "detach"):  # torch.Tensor, without importing torch here
        probs = probs.detach().to("cpu").double().numpy()
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2:
        raise VarattnError(f"expected a 2-D (T, S) alignment matrix, got shape {tuple(arr.shape)}")
    return arr


def _crop(arr: np.ndarray, src_len: int | None, tgt_len: int | None) -> np.ndarray:
    t_max, s_max = arr.shape
    tgt_len = t_max if tgt_len is None else int(tgt_len)
    src_len = s_max if src_len is None else int(src_len)
    if not (0 <= tgt_len <= t_max) or not (0 <= src_len <= s_max):
        raise VarattnError(
            f"lengths (src_len={src_len}, tgt_len={tgt_len}) do not fit a (T, S) = {arr.shape} matrix"
        )
    return arr[:tgt_len, :src_len]


def argmax_links(probs: Any, src_len: int | None = None, tgt_len: int | None = None) -> set[Link]:
    """One link per target position: ``(argmax_i probs[t, i], t)`` for ``t < tgt_len``.

    ``probs`` is a (T, S) matrix of p(z = i | target position t) (tensor or array); only the
    unpadded block ``probs[:tgt_len, :src_len]`` is used (``None`` = the full dimension).  Ties
    go to the lowest source index.  Returns a set of ``tgt_len`` (src, tgt) links (none if
    ``src_len`` is 0).
    """
    arr = _crop(as_2d_array(probs), src_len, tgt_len)
    if arr.shape[1] == 0:
        return set()
    best = np.argmax(arr, axis=1)
    return {(int(i), t) for t, i in enumerate(best)}


def threshold_links(
    probs: Any, threshold: float, src_len: int | None = None, tgt_len: int | None = None
) -> set[Link]:
    """All (src, tgt) = (i, t) with ``probs[t, i] > threshold`` (strictly greater).

    ``probs`` is a (T, S) matrix (tensor or array); ``src_len`` / ``tgt_len`` crop padding as in
    :func:`argmax_links`.  A target position may get zero or several links.
    """
    arr = _crop(as_2d_array(probs), src_len, tgt_len)
    ts, is_ = np.nonzero(arr > threshold)
    return {(int(i), int(t)) for t, i in zip(ts, is_)}
