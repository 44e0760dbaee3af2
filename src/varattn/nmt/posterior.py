"""Alignment distributions of a trained model for given sentence pairs (posterior inference).

For a sentence pair ``(x, y)`` and every target piece ``y_t`` a model defines up to three
distributions over the source pieces ``i``, each returned as a ``(T, S)`` matrix
``m[t, i]`` (target pieces by source pieces, rows summing to 1):

``prior``
    ``p(z_t = i | x, y_<t)``: the decoder's attention, computed before ``y_t`` is seen.
    Defined for every model.
``posterior``
    ``q(z_t = i | x, y)``: the inference network's amortised posterior, which reads the whole
    target. Only models trained with an inference network have one (see
    :func:`modes_with_posterior`); asking any other model for it raises
    :class:`~varattn.errors.VarattnError`.
``exact``
    The true posterior of the alignment given the observed word,
    ``p(z_t = i | x, y_<=t) = p(z_t = i | x, y_<t) f(x, i)_{y_t} / sum_j p(z_t = j | x, y_<t) f(x, j)_{y_t}``,
    computed exactly by enumerating the output layer at every source position
    (``softmax_i(log prior + log f)``). This is the posterior the categorical models
    (``marginal``, ``hard-*``, ``var-*``, ``rws``) define. ``soft`` attention has no latent
    alignment, but its output layer can still be read at one-hot contexts ``x_i``, so the
    same formula gives a well-defined "what if the model had attended only to ``i``"
    posterior; it is allowed, but it describes an output layer that was only ever trained
    on averaged contexts, so read it with care.

The relaxed model (``var-relaxed``) has Dirichlet distributions over the simplex rather than
categoricals. For it, ``prior`` and ``posterior`` are the **means** of the prior and posterior
Dirichlets (``alpha / sum(alpha)``, concentrations from the run's concentration transform),
and ``exact`` is the categorical reading above with the prior mean in place of the
categorical prior (f read at the simplex's corners).

The ``</s>`` step is not part of the matrices: row ``t`` is the ``t``-th target piece, so a
pair with ``T`` target pieces and ``S`` source pieces gives ``(T, S)`` matrices. A pair with an
empty side gives ``(T, 0)`` or ``(0, S)`` matrices without running the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from varattn.errors import VarattnError
from varattn.latent import masked_log_softmax, mode_names, objective_class
from varattn.nmt.batching import collate, index_batches

METHODS = ("prior", "posterior", "exact")
#: how pictures and pages name the methods
METHOD_TITLES = {
    "prior": "prior p(z | x, y<t)",
    "posterior": "posterior q(z | x, y)",
    "exact": "exact posterior p(z | x, y<=t)",
}
#: decimals of the probabilities written as JSON
JSON_DECIMALS = 5


def modes_with_posterior() -> list[str]:
    """Training modes whose models have an inference network q(z | x, y)."""
    return [name for name in mode_names() if objective_class(name).uses_posterior]


def check_methods(trained, methods: Sequence[str]) -> list[str]:
    """Validate ``methods`` for ``trained``; returns them as a list without duplicates."""
    if isinstance(methods, str):
        methods = [methods]
    out: list[str] = []
    for m in methods:
        if m not in METHODS:
            raise VarattnError(f"unknown alignment method {m!r}; valid methods: {', '.join(METHODS)}")
        if m not in out:
            out.append(m)
    if not out:
        raise VarattnError("no alignment method given")
    if "posterior" in out and not has_posterior(trained):
        raise VarattnError(
            f"the 'posterior' method needs an inference network q(z|x,y), which a {trained.mode} model does not "
            f"have (modes with one: {', '.join(modes_with_posterior())}); use 'exact' for the true posterior "
            "or 'prior'"
        )
    return out


def has_posterior(trained) -> bool:
    """Whether the run's model has an inference network."""
    return bool(trained.objective.uses_posterior) and trained.model.inference is not None


def _batch_matrices(trained, src_ids: list[list[int]], tgt_ids: list[list[int]], methods: list[str]) -> list[dict]:
    """Matrices for one batch of non-empty pairs, cropped to each pair's ``(T, S)``.

    The prior and posterior are the objective's expected alignments (categorical
    probabilities, or Dirichlet means for the relaxed model).
    """
    model, objective = trained.model, trained.objective
    batch = collate(src_ids, tgt_ids)
    problem = model.problem(batch, with_posterior="posterior" in methods)
    mask = problem.mask3  # (B, 1, S)
    log_prior = objective.prior_log_mean(problem)  # (B, T, S)
    full: dict[str, Tensor] = {}
    if "prior" in methods:
        full["prior"] = log_prior.exp()
    if "posterior" in methods:
        full["posterior"] = objective.posterior_mean(problem)
    if "exact" in methods:
        log_f = problem.emission.log_prob_all()  # (B, T, S)
        full["exact"] = masked_log_softmax(log_prior + log_f, mask.expand_as(log_f)).exp()
    out = []
    for b, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        out.append({m: full[m][b, : len(t), : len(s)].detach().float().cpu().clone() for m in methods})
    return out


@torch.no_grad()
def alignment_matrices_ids(trained, src_ids: list[list[int]], tgt_ids: list[list[int]],
                           methods: Sequence[str] = ("exact",), batch_size: int = 32) -> list[dict[str, Tensor]]:
    """Like :func:`alignment_matrices`, for pairs already turned into vocabulary ids."""
    methods = check_methods(trained, methods)
    if len(src_ids) != len(tgt_ids):
        raise VarattnError(f"alignment needs as many targets as sources: {len(src_ids)} vs {len(tgt_ids)}")
    if batch_size < 1:
        raise VarattnError(f"the batch size must be at least 1, got {batch_size}")
    out: list[dict[str, Tensor] | None] = [None] * len(src_ids)
    for k, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        if not s or not t:
            out[k] = {m: torch.zeros(len(t), len(s)) for m in methods}
    todo = [k for k in range(len(src_ids)) if out[k] is None]
    model = trained.model
    was_training = model.training
    model.eval()
    try:
        for chunk in index_batches(todo, batch_size, key=lambda k: (len(tgt_ids[k]), len(src_ids[k]))):
            results = _batch_matrices(trained, [src_ids[k] for k in chunk], [tgt_ids[k] for k in chunk], methods)
            for k, res in zip(chunk, results):
                out[k] = res
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def alignment_matrices(trained, src_lines: Sequence[str], tgt_lines: Sequence[str],
                       methods: Sequence[str] = ("exact",), batch_size: int = 32) -> list[dict[str, Tensor]]:
    """Alignment matrices of ``trained`` (a ``TrainedModel``) for each sentence pair.

    Args:
        trained: the loaded run (``varattn.nmt.run.load_run``).
        src_lines, tgt_lines: the sentence pairs as text, segmented by the run's segmenters.
        methods: any of ``prior``, ``posterior``, ``exact`` (see the module docstring).
        batch_size: pairs per forward pass (pairs are sorted by length for batching; the
            output keeps the input order).

    Returns:
        One dict per pair, ``{method: tensor (T, S)}`` with ``T`` target pieces (``</s>``
        excluded) and ``S`` source pieces, float32 on the CPU. The model runs in evaluation
        mode without gradients; its previous train/eval mode is restored.

    Raises:
        VarattnError: an unknown method, ``posterior`` for a model without an inference
            network, or different numbers of source and target lines.
    """
    if len(src_lines) != len(tgt_lines):
        raise VarattnError(f"alignment needs as many targets as sources: {len(src_lines)} vs {len(tgt_lines)}")
    src_ids = [trained.encode_src(s) for s in src_lines]
    tgt_ids = [trained.encode_tgt(t) for t in tgt_lines]
    return alignment_matrices_ids(trained, src_ids, tgt_ids, methods, batch_size)


def _words(seg, line: str, pieces: list[str], piece_map: list[int]) -> list[str]:
    """The user's words of ``line``; falls back to the pieces grouped by ``piece_map``.

    The fall-back only matters when the segmenter's word split and the piece marks disagree
    (e.g. sentencepiece normalisation merging or splitting whitespace).
    """
    words = seg.words(line)
    n_words = piece_map[-1] + 1 if piece_map else 0
    if len(words) == n_words:
        return words
    grouped: list[str] = [""] * n_words
    for piece, w in zip(pieces, piece_map):
        grouped[w] += piece
    from varattn.nmt.subword import BPE_MARK, SENTENCEPIECE_SPACE

    return [g.replace(BPE_MARK, "").replace(SENTENCEPIECE_SPACE, "") or g for g in grouped]


def check_threshold(threshold: float | None) -> None:
    if threshold is None:
        return
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
        raise VarattnError(f"the link threshold must be a probability in [0, 1), got {threshold!r}")


def matrix_rows(matrix: Tensor, decimals: int = JSON_DECIMALS) -> list[list[float]]:
    """A ``(T, S)`` matrix as nested lists of floats rounded to ``decimals`` places (what ``varattn align
    --json`` and ``varattn serve`` write)."""
    return [[round(float(v), decimals) for v in row] for row in matrix.tolist()]


def piece_alignments(trained, src_pieces: Sequence[Sequence[str]], tgt_pieces: Sequence[Sequence[str]],
                     methods: Sequence[str] = ("exact",), threshold: float | None = None, batch_size: int = 32,
                     src_lines: Sequence[str] | None = None, tgt_lines: Sequence[str] | None = None) -> list[dict]:
    """The matrices of several ``methods`` (one pass of the model) and their links, for pairs given as pieces.

    Links are extracted from each piece-level matrix: with ``threshold=None`` each target piece links to its
    most probable source piece (argmax, ties to the lowest index); otherwise every ``(i, t)`` with probability
    strictly above ``threshold`` is a link (a piece may get several links or none). Piece links become word
    links with the run's piece styles (``trained.src_seg.piece_style`` / ``trained.tgt_seg.piece_style``): a
    word pair is linked if any of their pieces are. ``src_lines`` / ``tgt_lines``, the text the pieces came
    from, name the words (default: the pieces grouped into words).

    Returns one dict per pair: ``matrices`` and ``piece_links`` and ``links`` (0-based ``(src, tgt)`` sets),
    each ``{method: ...}``; ``src_words``, ``tgt_words``, ``src_pieces``, ``tgt_pieces``, and ``src_map`` /
    ``tgt_map`` (the word of every piece).
    """
    from varattn.nmt.align import argmax_links, links_to_words, subword_to_word_map, threshold_links

    check_threshold(threshold)
    methods = check_methods(trained, methods)
    if len(src_pieces) != len(tgt_pieces):
        raise VarattnError(f"alignment needs as many targets as sources: {len(src_pieces)} vs {len(tgt_pieces)}")
    src_pieces, tgt_pieces = [list(p) for p in src_pieces], [list(p) for p in tgt_pieces]
    matrices = alignment_matrices_ids(trained, [trained.src_vocab.encode(p) for p in src_pieces],
                                      [trained.tgt_vocab.encode(p) for p in tgt_pieces], methods, batch_size)
    out = []
    for k, (sp, tp, mats) in enumerate(zip(src_pieces, tgt_pieces, matrices)):
        src_map = subword_to_word_map(sp, trained.src_seg.piece_style)
        tgt_map = subword_to_word_map(tp, trained.tgt_seg.piece_style)
        s_line = src_lines[k] if src_lines is not None else trained.src_seg.detokenize(sp, keep_bpe=True)
        t_line = tgt_lines[k] if tgt_lines is not None else trained.tgt_seg.detokenize(tp, keep_bpe=True)
        piece_links = {m: argmax_links(mats[m]) if threshold is None else threshold_links(mats[m], threshold)
                       for m in methods}
        out.append({
            "matrices": mats,
            "piece_links": piece_links,
            "links": {m: links_to_words(piece_links[m], src_map, tgt_map) for m in methods},
            "src_words": _words(trained.src_seg, s_line, sp, src_map),
            "tgt_words": _words(trained.tgt_seg, t_line, tp, tgt_map),
            "src_pieces": sp,
            "tgt_pieces": tp,
            "src_map": src_map,
            "tgt_map": tgt_map,
        })
    return out


def word_alignments(trained, src_lines: Sequence[str], tgt_lines: Sequence[str], method: str = "exact",
                    threshold: float | None = None, batch_size: int = 32) -> list[dict]:
    """Piece-level matrix and word-level links of one ``method`` for each pair (``TrainedModel.align`` calls this).

    Links as in :func:`piece_alignments`. Returns one dict per pair with ``matrix`` (tensor ``(T, S)``, target
    pieces by source pieces), ``links`` (set of 0-based ``(src_word, tgt_word)``), ``piece_links`` (set of
    ``(src_piece, tgt_piece)``), ``src_words``, ``tgt_words``, ``src_pieces``, ``tgt_pieces``.
    """
    check_threshold(threshold)
    if method not in METHODS:
        raise VarattnError(f"unknown alignment method {method!r}; valid methods: {', '.join(METHODS)}")
    if len(src_lines) != len(tgt_lines):
        raise VarattnError(f"alignment needs as many targets as sources: {len(src_lines)} vs {len(tgt_lines)}")
    pairs = piece_alignments(trained, [trained.src_seg.tokenize(s) for s in src_lines],
                             [trained.tgt_seg.tokenize(t) for t in tgt_lines], [method], threshold, batch_size,
                             src_lines, tgt_lines)
    return [{"matrix": p["matrices"][method], "links": p["links"][method], "piece_links": p["piece_links"][method],
             **{key: p[key] for key in ("src_words", "tgt_words", "src_pieces", "tgt_pieces")}} for p in pairs]
