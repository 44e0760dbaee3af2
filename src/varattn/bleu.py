"""BLEU, reported two ways through sacrebleu.

:func:`corpus_bleu` returns two scores side by side:

``tok_bleu``
    Tokenized, lowercased BLEU on the text exactly as the model sees it (Moses-tokenized, with
    Moses' XML escapes such as ``&apos;``), computed by sacrebleu with ``tokenize="none"`` and
    ``lowercase=True``.  This is what ``multi-bleu.perl -lc`` reports, the number published for
    IWSLT'14 de-en by Deng et al. (2018) and most papers of that time.
``sacrebleu``
    Detokenized sacreBLEU: both sides are first detokenized with :func:`detokenize` and then
    scored with sacrebleu's defaults (13a tokenization, mixed case).  It is comparable across
    tokenizations and is reported with its signature string.

Both sides first have BPE continuation marks removed (:func:`remove_bpe`), so hypotheses and
references can be given either as subword pieces or as words.

Detokenization rules (:func:`detokenize`, English-oriented, rule-based)
-----------------------------------------------------------------------
1. Unescape the Moses XML entities ``&apos; &quot; &amp; &lt; &gt; &#91; &#93; &#124;`` (in a
   single pass, so ``&amp;apos;`` becomes the literal text ``&apos;``).
2. Split on whitespace and re-join the tokens with single spaces, except:

   * no space before closing punctuation ``. , ! ? ; : ) ] } %`` and ``...``;
   * no space after opening brackets ``( [ {`` and the currency signs ``$ £ €``;
   * no space before clitics: a token made of an apostrophe and letters (``'s``, ``'t``,
     ``'re``, ``'ll``...) joins the previous token, so ``it &apos;s`` → ``it's`` and
     ``don &apos;t`` → ``don't``; the Penn-Treebank form ``n't`` also joins (``do n't`` →
     ``don't``);
   * Moses "aggressive" split markers ``@-@`` (and any ``@x@`` with one character ``x``) join
     both neighbours: ``well @-@ known`` → ``well-known``;
   * a lone apostrophe ``'`` right after a word ending in ``s`` (no single quote open) is a
     plural possessive and joins the previous token: ``the students ' books`` →
     ``the students' books``;
   * otherwise straight double quotes ``"`` and lone apostrophes ``'`` alternate between
     opening (joined to the next token) and closing (joined to the previous token).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sacrebleu.metrics import BLEU

from varattn.errors import VarattnError

_MOSES_ENTITIES = {
    "&apos;": "'",
    "&quot;": '"',
    "&amp;": "&",
    "&lt;": "<",
    "&gt;": ">",
    "&#91;": "[",
    "&#93;": "]",
    "&#124;": "|",
}
_ENTITY_RE = re.compile("|".join(re.escape(e) for e in _MOSES_ENTITIES))

_CLOSING = {".", ",", "!", "?", ";", ":", ")", "]", "}", "%", "..."}
_OPENING = {"(", "[", "{", "$", "£", "€"}
_QUOTES = {'"', "'"}
_CLITIC_RE = re.compile(r"^'[^\W\d_]+$")
_JOINER_RE = re.compile(r"^@(.)@$")


def remove_bpe(line: str) -> str:
    """Remove subword-nmt BPE continuation marks: ``"the cat@@ s sat"`` → ``"the cats sat"``."""
    line = line.replace("@@ ", "")
    if line.endswith("@@"):
        line = line[:-2]
    return line


def unescape_moses(text: str) -> str:
    """Replace Moses' XML escapes (``&apos;``, ``&quot;``, ``&amp;``...) by their characters."""
    return _ENTITY_RE.sub(lambda m: _MOSES_ENTITIES[m.group(0)], text)


def detokenize(line: str) -> str:
    """Detokenize one Moses-tokenized English line (rules in the module docstring)."""
    out = ""
    glue_next = True  # no space before the next token (true at the start of the line)
    open_quote = {q: False for q in _QUOTES}
    for token in unescape_moses(line).split():
        joiner = _JOINER_RE.match(token)
        if joiner:
            out += joiner.group(1)
            glue_next = True
            continue
        if token == "'" and not open_quote[token] and out.endswith(("s", "S")):
            glue_before, glue_after = True, False  # plural possessive: "the students' books"
        elif token in _QUOTES:
            closing = open_quote[token]
            open_quote[token] = not closing
            glue_before, glue_after = closing, not closing
        elif token in _CLOSING or _CLITIC_RE.match(token) or token.lower() == "n't":
            glue_before, glue_after = True, False
        elif token in _OPENING:
            glue_before, glue_after = False, True
        else:
            glue_before, glue_after = False, False
        if out and not (glue_next or glue_before):
            out += " "
        out += token
        glue_next = glue_after
    return out


def _clean(lines: Sequence[str], what: str) -> list[str]:
    cleaned = []
    for k, line in enumerate(lines):
        if not isinstance(line, str):
            raise VarattnError(f"{what} line {k + 1} is not a string: {type(line).__name__}")
        cleaned.append(remove_bpe(line.strip()))
    return cleaned


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU of ``hyps`` against one reference each, computed two ways.

    Returns a dict with ``tok_bleu`` (tokenized, lowercased BLEU on the given text),
    ``sacrebleu`` (detokenized sacreBLEU, 13a, mixed case), ``signature`` (the sacreBLEU
    signature), ``tok_signature`` (the signature of the tokenized score) and ``n`` (the number
    of sentences).  Scores are on the 0-100 scale.
    """
    if isinstance(hyps, str) or isinstance(refs, str):
        raise VarattnError("corpus_bleu expects lists of lines, not a single string")
    if len(hyps) != len(refs):
        raise VarattnError(
            f"hypothesis and reference counts differ: {len(hyps)} hypotheses vs {len(refs)} references"
        )
    if len(hyps) == 0:
        raise VarattnError("no hypotheses to score (empty list)")
    hyp_tok = _clean(hyps, "hypothesis")
    ref_tok = _clean(refs, "reference")

    tok_metric = BLEU(tokenize="none", lowercase=True, force=True)  # the text is tokenized on purpose
    tok_score = tok_metric.corpus_score(hyp_tok, [ref_tok])

    sacre_metric = BLEU()
    sacre_score = sacre_metric.corpus_score(
        [detokenize(h) for h in hyp_tok], [[detokenize(r) for r in ref_tok]]
    )

    return {
        "tok_bleu": float(tok_score.score),
        "sacrebleu": float(sacre_score.score),
        "signature": str(sacre_metric.get_signature()),
        "tok_signature": str(tok_metric.get_signature()),
        "n": len(hyp_tok),
    }


def format_bleu(result: dict[str, Any]) -> str:
    """One human-readable line for a :func:`corpus_bleu` result."""
    return (
        f"BLEU (tokenized, lowercased) = {result['tok_bleu']:.2f} | "
        f"sacreBLEU = {result['sacrebleu']:.2f} ({result['signature']}) | "
        f"{result['n']} sentences"
    )
