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

Both sides first have BPE continuation marks removed (:func:`varattn.nmt.subword.remove_bpe`), so
hypotheses and references can be given either as subword pieces or as words.

Detokenization (:func:`detokenize`) is sacremoses' Moses detokenizer (English rules by
default), which also undoes Moses' XML escapes. On the IWSLT'14 de-en test and validation
references it agrees with the hand-written rules this module used before on all but 4 of
14032 lines (curly quotes and ``..``), and the detokenized BLEU of a hypothesis file (the
reference with 10% of its tokens dropped and 5% of neighbours swapped) moved by less than
0.001: 65.6713 -> 65.6706 on test, 65.8149 both ways on valid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from typing import Any

from sacrebleu.metrics import BLEU

from varattn.errors import VarattnError
from varattn.nmt.subword import remove_bpe

__all__ = ["corpus_bleu", "detokenize", "format_bleu", "quiet_bleu", "remove_bpe"]


@cache
def _detokenizer(lang: str):
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang=lang)


def detokenize(line: str, lang: str = "en") -> str:
    """Detokenize one Moses-tokenized line with sacremoses (XML escapes such as ``&apos;`` undone)."""
    return _detokenizer(lang).detokenize(line.split())


def _clean(lines: Sequence[str], what: str) -> list[str]:
    cleaned = []
    for k, line in enumerate(lines):
        if not isinstance(line, str):
            raise VarattnError(f"{what} line {k + 1} is not a string: {type(line).__name__}")
        cleaned.append(remove_bpe(line.strip()))
    return cleaned


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str], lang: str = "en") -> dict[str, Any]:
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
        [detokenize(h, lang) for h in hyp_tok], [[detokenize(r, lang) for r in ref_tok]]
    )

    return {
        "tok_bleu": float(tok_score.score),
        "sacrebleu": float(sacre_score.score),
        "signature": str(sacre_metric.get_signature()),
        "tok_signature": str(tok_metric.get_signature()),
        "n": len(hyp_tok),
    }


def quiet_bleu(hyps: Sequence[str], refs: Sequence[str], lang: str = "en") -> dict[str, Any]:
    """:func:`corpus_bleu` without sacrebleu's "tokenized period" warning.

    The tokenized score is computed on tokenized text on purpose, so that warning is noise.
    """
    logger = logging.getLogger("sacrebleu")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return corpus_bleu(hyps, refs, lang)
    finally:
        logger.setLevel(level)


def format_bleu(result: dict[str, Any]) -> str:
    """One human-readable line for a :func:`corpus_bleu` result."""
    return (
        f"BLEU (tokenized, lowercased) = {result['tok_bleu']:.2f} | "
        f"sacreBLEU = {result['sacrebleu']:.2f} ({result['signature']}) | "
        f"{result['n']} sentences"
    )
