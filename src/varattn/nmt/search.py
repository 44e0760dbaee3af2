"""Greedy and beam search over a ``TranslationModel`` (notes A "Predictive inference", B "Decoding").

The search talks to the model through its decoder protocol (``varattn.nmt.builder.TranslationModel``:
``encode``, ``initial_state``, ``decode_step``), the same for the LSTM and the incremental Transformer.

What a hypothesis is scored with
--------------------------------
Every step asks the objective the search is given for ``log p(y_t = w | x, y_<t)`` over the whole
vocabulary: ``objective.predict_log_probs`` applies the mode's *predictive rule*
(``objective.predictive``) to the step's ``StepPredictor`` (the output layer at this step) and
prior scores; the search itself only asks ``objective.predicts_mixture`` (to project the source
once per batch) and ``objective.supports_kmax``:

* ``marginal`` (every categorical latent mode: marginal, hard-*, var-*, rws): the exact
  mixture ``log sum_i p(z_t = i) f(x, i)_w``, which costs one output layer per source
  position (O(S) per token), like the authors' ``translate.py``. ``StepPredictor.log_mixture``
  computes it for real positions only (not padding), summed as probabilities, with a log-space
  fallback where they underflow.
* ``soft`` (soft attention): the output at the expected context ``sum_i p_i x_i``.
* ``prior-mean`` (var-relaxed): the output at the mean of the prior Dirichlet, i.e. at the
  soft context computed with the prior's normalised weights. The paper samples at test time;
  a deterministic decoder is reproducible and needs one output layer per token, so we use the
  mean (the prior weights are ``softmax(scores)``, which equals the Dirichlet mean under the
  ``exp`` transform whenever the scores lie inside its clamp range).

``topk=K`` is the paper's K-max: the model keeps the K best prior scores before normalising,
which changes both the mixture above and the soft context fed to the next step. For the
marginal rule only the kept positions go through the output layer here (the others have
weight exactly zero), so K-max decoding is also faster. ``topk=0`` keeps every position.
Left unset (None), ``topk_for`` chooses: ``MIXTURE_TOPK`` (5) for the marginal rule, which on the
Multi30k study's models kept beam-5 BLEU within 0.1 of the full marginal at about 2.2 times its
speed (docs/benchmarks.md, "K-max decoding"), and every position for the other rules, whose
output layer runs once per token whatever K is.

The beam (its settings are one ``DecodingOptions``)
---------------------------------------------------
* Beam scores are sums of per-token log-probabilities. ``<pad>`` and ``<s>`` are never emitted.
* ``eos_norm`` (the authors' ``-eos_norm``, 0 = off; they decoded with 3): at every step
  ``log p(</s>) -= eos_norm * src_len / (cur_len + 1)``, where ``cur_len`` counts the ``<s>``
  and the tokens produced so far, discouraging early ends of short outputs.
* A hypothesis ending in ``</s>`` is finished; its final score is divided by the length
  penalty of Wu et al. (2016) ``((5 + |Y|) / 6) ** alpha`` with ``|Y|`` the number of output
  tokens including ``</s>`` (``alpha = 0``: no penalty).
* Each step takes the ``2 * beam`` best extensions of the live hypotheses of a sentence: an
  ``</s>`` extension ranked among the first ``beam`` becomes a finished hypothesis, the first
  ``beam`` other extensions form the next beam.
* At most ``max_len = int(max_len_a * src_len + max_len_b)`` tokens (before ``</s>``) are
  produced; at that length only ``</s>`` is allowed.
* A sentence stops when it has ``beam`` finished hypotheses (the usual approximation), or
  when no live hypothesis can still beat its best finished one (live scores only decrease, so
  the bound ``best_live / lp(max_len + 1)`` is safe for any ``alpha``), or at ``max_len``.
  With a beam wide enough to hold every candidate the search is therefore exact (the tests
  compare it with a brute-force search). Stopped sentences leave the batch.

Each produced token records the prior alignment distribution of its step (after K-max), a
row of ``Hypothesis.alignment``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from varattn.errors import VarattnError
from varattn.latent import ContextPredictor, Objective
from varattn.nmt.batching import pad_ids
from varattn.nmt.builder import EncodedSource, TranslationModel
from varattn.nmt.vocab import BOS_ID, EOS_ID, PAD_ID

__all__ = [
    "BOS_ID", "EOS_ID", "MIXTURE_TOPK", "PAD_ID", "DecodingOptions", "Hypothesis", "StepPredictor", "Translation",
    "beam_search", "decode", "greedy_search", "length_penalty", "max_output_length", "next_log_probs", "pad_batch",
    "topk_for",
]

NEG_INF = float("-inf")
#: elements of one (pairs, V) block of the marginal mixture (4 MB of float32)
MIX_CHUNK_ELEMENTS = 1 << 20
#: below this probability the marginal mixture is recomputed in log space
MIX_TINY = 1e-30

#: the K-max a search uses by default for the marginal predictive rule (``topk_for``); measured by
#: benchmarks/kmax_decoding.py: the smallest K whose beam-5 BLEU stayed within 0.1 of the full marginal
MIXTURE_TOPK = 5

#: default maximum output length ``int(a * src_len + b)`` (tokens before ``</s>``)
DEFAULT_MAX_LEN_A = 2.0
DEFAULT_MAX_LEN_B = 10
#: default length-penalty exponent (the authors decoded with ``-length_penalty wu -alpha 1``)
DEFAULT_ALPHA = 1.0


@dataclass
class Hypothesis:
    """One finished output.

    Attributes:
        tokens: target ids, without ``<s>`` and ``</s>``.
        score: the search score: summed log-probabilities (with the ``eos_norm`` adjustment)
            divided by the length penalty.
        log_prob: ``log p(y </s> | x)`` under the predictive rule, with no adjustment.
        alignment: ``(len(tokens), src_len)`` prior alignment distribution at each produced token.
    """

    tokens: list[int]
    score: float
    log_prob: float
    alignment: Tensor = field(repr=False)


@dataclass
class Translation:
    """One translated input line (what ``TrainedModel.translate`` returns per line).

    Attributes:
        text: the output with subword marks joined (sentencepiece decoded).
        tokens: the output's target pieces (no ``</s>``).
        score: the search score (see ``Hypothesis``); 0.0 for an empty input.
        log_prob: ``log p(output </s> | input)``; 0.0 for an empty input.
        alignment: ``(len(tokens), len(src_tokens))`` prior alignment probabilities.
        src_tokens: the source pieces the model read (after truncation).
        truncated: whether the source was cut to ``max_src_len`` pieces.
    """

    text: str
    tokens: list[str]
    score: float
    log_prob: float
    alignment: Tensor = field(repr=False)
    src_tokens: list[str] = field(default_factory=list)
    truncated: bool = False

    def __getitem__(self, key: str):
        """Dict-style access: ``translation["text"]``."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


def length_penalty(length: int, alpha: float) -> float:
    """Wu et al. (2016): ``((5 + length) / 6) ** alpha``; ``length`` counts ``</s>``."""
    return ((5.0 + length) / 6.0) ** alpha if alpha else 1.0


def max_output_length(src_len: int, max_len_a: float, max_len_b: float) -> int:
    """Most tokens (``</s>`` not counted) produced for a source of ``src_len`` tokens."""
    return max(0, int(max_len_a * src_len + max_len_b))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class DecodingOptions:
    """How to search, checked when made: a bad value raises ``VarattnError`` naming its flag.

    Attributes:
        beam: beam size; 1 is greedy search.
        topk: K-max: keep only the K best prior positions at each step; 0: every position; None: the
            model's default (``topk_for``: ``MIXTURE_TOPK`` for the marginal rule, every position otherwise).
        alpha: Wu et al. length-penalty exponent (0: none).
        eos_norm: the authors' EOS normalisation (0: off).
        max_len_a, max_len_b: at most ``int(max_len_a * src_len + max_len_b)`` output tokens.
        sample_alignments: relaxed models only: predict each word from this many alignments sampled
            from the prior Dirichlet (``Objective.prediction_sampler``) instead of its mean, as the
            paper evaluates its relaxed model (None: the model's own predictive rule). Seed torch's
            generator for a reproducible output.
    """

    beam: int = 5
    topk: int | None = None
    alpha: float = DEFAULT_ALPHA
    eos_norm: float = 0.0
    max_len_a: float = DEFAULT_MAX_LEN_A
    max_len_b: float = DEFAULT_MAX_LEN_B
    sample_alignments: int | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.beam) or int(self.beam) != self.beam or self.beam < 1:
            raise VarattnError(f"--beam must be a positive integer, got {self.beam!r}")
        if self.topk is not None and (not _is_number(self.topk) or int(self.topk) != self.topk or self.topk < 0):
            raise VarattnError(f"--topk must be an integer >= 0 (0: every position), got {self.topk!r}")
        for flag, value in (("alpha", self.alpha), ("eos-norm", self.eos_norm), ("max-len-a", self.max_len_a)):
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise VarattnError(f"--{flag} must be a finite number >= 0, got {value!r}")
        if not _is_number(self.max_len_b) or not math.isfinite(self.max_len_b):
            raise VarattnError(f"--max-len-b must be a finite number, got {self.max_len_b!r}")
        if self.sample_alignments is not None and (not _is_number(self.sample_alignments)
                                                   or int(self.sample_alignments) != self.sample_alignments
                                                   or self.sample_alignments < 1):
            raise VarattnError(f"--sample-alignments must be a positive integer, got {self.sample_alignments!r}")
        object.__setattr__(self, "beam", int(self.beam))
        if self.topk is not None:
            object.__setattr__(self, "topk", int(self.topk))

    def check_for(self, objective: Objective) -> None:
        """Raise ``VarattnError`` if these options do not apply to ``objective``'s model."""
        if self.topk and not objective.supports_kmax:
            raise VarattnError(f"--topk (K-max) applies to categorical and soft models, not to {objective.name} "
                               "(its alignment is a Dirichlet)")
        if self.sample_alignments is not None:  # sampled alignments: a one-line error where the model has none
            objective.prediction_sampler(int(self.sample_alignments))

    def max_output_length(self, src_len: int) -> int:
        """Most tokens (``</s>`` not counted) produced for a source of ``src_len`` tokens."""
        return max_output_length(src_len, self.max_len_a, self.max_len_b)


def topk_for(objective: Objective, topk: int | None = None) -> int | None:
    """The K-max K a search with ``objective``'s model runs with (None: every position).

    ``topk`` as asked (``DecodingOptions.topk``: 0 is every position); unset, ``MIXTURE_TOPK`` where the
    predictive rule is the exact mixture (its cost grows with K) and every position otherwise.
    """
    if topk is None:
        return MIXTURE_TOPK if objective.predicts_mixture else None
    return topk or None


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class StepPredictor(ContextPredictor):
    """The output layer at one decoder step (rows ``N``: sentences or beam entries), for ``predict_log_probs``.

    ``query (N, Dd)``, ``memory (N, S, Dm)`` (``Encoded.memory``); ``memory_pre`` is
    ``model.head.context_part(enc.memory)`` ``(N, S, D)``, which the searches compute once per batch
    (None: projected where needed). ``log_probs`` is ``ContextPredictor``'s; ``log_mixture`` is the fast
    marginal below.
    """

    def log_mixture(self, scores: Tensor) -> Tensor:
        """``(N, S) -> (N, V)`` ``log sum_i softmax(scores)_i f(x, i)``, for real positions only.

        Only the (row, position) pairs with a finite score go through the output layer: padding and
        positions outside the K-max have zero weight, so a batch costs its real source lengths (or K
        per row), not rows x the longest source. The mixture is summed as probabilities, a few thousand
        pairs at a time (the intermediates stay in the CPU cache). Rows where some word's mixture falls
        below ``MIX_TINY`` (where float32 probabilities lose precision or underflow) are redone in log
        space. The result equals ``ContextPredictor.log_mixture`` up to float rounding (tested).
        """
        head = self.head
        rows, cols = torch.isfinite(scores).nonzero(as_tuple=True)  # (M,) each, row-major
        if self._memory_pre is None:
            context = head.context_part(self.memory[rows, cols])  # (M, D)
        else:
            context = self._memory_pre[rows, cols]
        pre = self.query_pre[rows] + context  # (M, D)
        weights = torch.softmax(scores, -1)[rows, cols]  # (M,)
        mix = head.mixture(pre, weights, rows, scores.shape[0], MIX_CHUNK_ELEMENTS)  # (N, V)
        out = mix.log()
        redo = (mix < MIX_TINY).any(-1).nonzero().flatten()
        if redo.numel():
            ctx = head.context_part(self.memory[redo]) if self._memory_pre is None else self._memory_pre[redo]
            log_f = head.log_probs(self.query_pre[redo].unsqueeze(1) + ctx)  # (r, S, V)
            out[redo] = torch.logsumexp(torch.log_softmax(scores[redo], -1).unsqueeze(-1) + log_f, dim=1)
        return out


def next_log_probs(model: TranslationModel, query: Tensor, scores: Tensor, enc: EncodedSource, objective: Objective,
                   context_pre: Tensor | None = None, samples: int | None = None) -> Tensor:
    """``(N, V)`` ``log p(y_t = w | x, y_<t)`` of every word at one step: ``objective.predict_log_probs`` on the
    step's ``StepPredictor``.

    ``query (N, Dd)`` and prior ``scores (N, S)`` from ``model.step``; ``context_pre`` as in ``StepPredictor``;
    ``samples``: predict from that many alignments sampled from the prior (relaxed models).
    """
    predictor = StepPredictor(model.head, query, enc.memory, context_pre)
    precision = model.prior_precision(query) if samples is not None else None
    return objective.predict_log_probs(predictor, scores, precision, samples)


def _context_pre(model: TranslationModel, enc: EncodedSource, objective: Objective) -> Tensor | None:
    return model.head.context_part(enc.memory) if objective.predicts_mixture else None


def _step_log_probs(model, prev, state, enc, topk, objective, context_pre, samples=None):
    """One decoder step: (log-probs (N, V) with <pad>/<s> banned, prior (N, S), new state).

    With ``samples`` (``DecodingOptions.sample_alignments``) the next word is predicted from sampled alignments.
    """
    query, scores, state = model.decode_step(prev, state, enc, topk)
    logp = next_log_probs(model, query, scores, enc, objective, context_pre, samples)
    logp[:, PAD_ID] = NEG_INF
    logp[:, BOS_ID] = NEG_INF
    return logp, torch.softmax(scores, -1), state


def _search_scores(logp: Tensor, t: int, src_len: Tensor, max_len: Tensor, eos_norm: float) -> Tensor:
    """The scores the search ranks by: EOS normalisation, and only ``</s>`` once at ``max_len``."""
    search = logp
    if eos_norm:
        search = logp.clone()
        search[:, EOS_ID] -= eos_norm * src_len / (t + 2)  # cur_len = t + 1 counts <s>
    forced = max_len <= t
    if bool(forced.any()):
        search = search.clone() if search is logp else search
        only_eos = torch.full_like(search[0], NEG_INF)
        only_eos[EOS_ID] = 0.0
        search[forced] = search[forced] + only_eos
    return search


def _prepare(model: TranslationModel, src: Tensor, src_lengths: Tensor, options: DecodingOptions):
    """Checked inputs on the model's device, the source lengths as a list and each output's length limit.

    None for an empty batch.
    """
    if src.dim() != 2 or src_lengths.dim() != 1 or src_lengths.shape[0] != src.shape[0]:
        raise VarattnError("search expects src (B, S) and src_lengths (B,)")
    if src.shape[0] == 0:
        return None
    if int(src_lengths.min()) < 1:
        raise VarattnError("every source sentence needs at least one token")
    device = next(model.parameters()).device
    lengths = src_lengths.tolist()
    max_lens = [options.max_output_length(n) for n in lengths]
    return src.to(device), src_lengths.to(device), lengths, max_lens


@torch.no_grad()
def greedy_search(
    model: TranslationModel, src: Tensor, src_lengths: Tensor, objective: Objective,
    options: DecodingOptions | None = None,
) -> list[Hypothesis]:
    """The most probable next token at every step, for a batch ``src (B, S)`` (no BOS/EOS).

    ``options.beam`` is not used (greedy search is a beam of one).
    """
    options = options or DecodingOptions(beam=1)
    options.check_for(objective)
    topk, alpha, eos_norm = topk_for(objective, options.topk), options.alpha, options.eos_norm
    prepared = _prepare(model, src, src_lengths, options)
    if prepared is None:
        return []
    src, src_lengths, lengths, max_lens = prepared
    B, S = src.shape
    device = src.device
    out: list[Hypothesis | None] = [None] * B
    with _eval_mode(model):
        enc = model.encode(src, src_lengths)
        context_pre = _context_pre(model, enc, objective)
        samples = options.sample_alignments
        state = model.initial_state(B, device)
        active = torch.arange(B, device=device)
        src_len_f = src_lengths.float()
        max_len_t = torch.tensor(max_lens, device=device)
        prev = torch.full((B,), BOS_ID, dtype=torch.long, device=device)
        seqs = torch.empty(B, 0, dtype=torch.long, device=device)
        attns = torch.empty(B, 0, S, device=device)
        search_sum = torch.zeros(B, device=device)
        model_sum = torch.zeros(B, device=device)
        for t in range(max(max_lens) + 1):
            logp, attn, state = _step_log_probs(model, prev, state, enc, topk, objective, context_pre,
                                                samples)
            search = _search_scores(logp, t, src_len_f, max_len_t, eos_norm)
            best, tok = search.max(dim=-1)
            search_sum = search_sum + best
            model_sum = model_sum + logp.gather(1, tok.unsqueeze(1)).squeeze(1)
            ended = tok == EOS_ID
            for row in ended.nonzero().flatten().tolist():
                sent = int(active[row])
                out[sent] = Hypothesis(seqs[row].tolist(), float(search_sum[row]) / length_penalty(t + 1, alpha),
                                       float(model_sum[row]), attns[row, :, : lengths[sent]].to("cpu", copy=True))
            keep = (~ended).nonzero().flatten()
            if keep.numel() == 0:
                break
            seqs = torch.cat([seqs[keep], tok[keep].unsqueeze(1)], 1)
            attns = torch.cat([attns[keep], attn[keep].unsqueeze(1)], 1)
            search_sum, model_sum, prev = search_sum[keep], model_sum[keep], tok[keep]
            if keep.numel() < active.numel():
                state, enc = state.select(keep), enc.select(keep)
                context_pre = None if context_pre is None else context_pre[keep]
                active, src_len_f, max_len_t = active[keep], src_len_f[keep], max_len_t[keep]
    return [h if h is not None else Hypothesis([], NEG_INF, NEG_INF, torch.zeros(0, n)) for h, n in zip(out, lengths)]


@torch.no_grad()
def beam_search(
    model: TranslationModel, src: Tensor, src_lengths: Tensor, objective: Objective,
    options: DecodingOptions | None = None, n_best: int = 1,
) -> list[list[Hypothesis]]:
    """Batched beam search (rules in the module docstring) for ``src (B, S)`` (no BOS/EOS).

    Returns, per sentence, its ``n_best`` (<= ``options.beam``) finished hypotheses, best first.
    """
    options = options or DecodingOptions()
    options.check_for(objective)
    beam, alpha, eos_norm = options.beam, options.alpha, options.eos_norm
    topk = topk_for(objective, options.topk)
    if not 1 <= n_best <= beam:
        raise VarattnError(f"n_best must be between 1 and the beam size ({beam}), got {n_best}")
    prepared = _prepare(model, src, src_lengths, options)
    if prepared is None:
        return []
    src, src_lengths, lengths, max_lens = prepared
    B, S = src.shape
    device = src.device
    V = model.cfg.tgt_vocab_size
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    with _eval_mode(model):
        rows = torch.arange(B, device=device).repeat_interleave(beam)  # row -> sentence
        enc = model.encode(src, src_lengths)
        context_pre = _context_pre(model, enc, objective)
        samples = options.sample_alignments
        enc = enc.select(rows)
        context_pre = None if context_pre is None else context_pre[rows]
        state = model.initial_state(B * beam, device)
        active = list(range(B))  # sentence of each block of `beam` rows
        src_len_f = src_lengths.float()[rows]
        max_len_t = torch.tensor(max_lens, device=device)[rows]
        prev = torch.full((B * beam,), BOS_ID, dtype=torch.long, device=device)
        beam_scores = torch.full((B, beam), NEG_INF, device=device)
        beam_scores[:, 0] = 0.0  # one live hypothesis (<s>) per sentence at the start
        beam_scores = beam_scores.flatten()
        model_sum = torch.zeros(B * beam, device=device)
        seqs = torch.empty(B * beam, 0, dtype=torch.long, device=device)
        attns = torch.empty(B * beam, 0, S, device=device)
        ranks = torch.arange(2 * beam, device=device)
        for t in range(max(max_lens) + 1):
            n = len(active)
            logp, attn, state = _step_log_probs(model, prev, state, enc, topk, objective, context_pre,
                                                samples)
            search = _search_scores(logp, t, src_len_f, max_len_t, eos_norm)
            cand = (beam_scores.unsqueeze(1) + search).view(n, beam * V)
            k2 = min(2 * beam, beam * V)
            top_scores, top_index = cand.topk(k2, dim=1)  # (n, k2), best first
            top_tok = top_index % V
            top_rows = torch.arange(n, device=device).unsqueeze(1) * beam + top_index // V  # integer division
            is_eos = top_tok == EOS_ID
            new_done = is_eos & torch.isfinite(top_scores) & (ranks[:k2] < beam)
            if bool(new_done.any()):
                lp = length_penalty(t + 1, alpha)
                for i, c in new_done.nonzero().tolist():
                    row, sent = int(top_rows[i, c]), active[i]
                    finished[sent].append(Hypothesis(
                        seqs[row].tolist(), float(top_scores[i, c]) / lp,
                        float(model_sum[row] + logp[row, EOS_ID]), attns[row, :, : lengths[sent]].to("cpu", copy=True)))
            # the first `beam` non-</s> extensions, in rank order
            order = (is_eos.long() * k2 + ranks[:k2]).argsort(dim=1)[:, :beam]
            live_scores = top_scores.gather(1, order)  # (n, beam)
            live_rows = top_rows.gather(1, order)
            live_tok = top_tok.gather(1, order)
            best_live = live_scores[:, 0].tolist()
            keep = []
            for i, sent in enumerate(active):
                done = finished[sent]
                if t >= max_lens[sent] or not math.isfinite(best_live[i]) or len(done) >= beam:
                    continue
                if done and max(h.score for h in done) >= best_live[i] / length_penalty(max_lens[sent] + 1, alpha):
                    continue
                keep.append(i)
            if not keep:
                break
            if len(keep) < n:
                kept = torch.tensor(keep, device=device)
                live_scores, live_rows, live_tok = live_scores[kept], live_rows[kept], live_tok[kept]
                block = (kept.unsqueeze(1) * beam + torch.arange(beam, device=device)).flatten()
                enc, src_len_f, max_len_t = enc.select(block), src_len_f[block], max_len_t[block]
                context_pre = None if context_pre is None else context_pre[block]
                active = [active[i] for i in keep]
            sel = live_rows.flatten()
            tok = live_tok.flatten()
            seqs = torch.cat([seqs[sel], tok.unsqueeze(1)], 1)
            attns = torch.cat([attns[sel], attn[sel].unsqueeze(1)], 1)
            model_sum = model_sum[sel] + logp[sel, tok]
            beam_scores = live_scores.flatten()
            state = state.select(sel)
            prev = tok
    results = []
    for sent, hyps in enumerate(finished):
        hyps = sorted(hyps, key=lambda h: -h.score)[:n_best]
        results.append(hyps or [Hypothesis([], NEG_INF, NEG_INF, torch.zeros(0, lengths[sent]))])
    return results


def pad_batch(src_ids: list[list[int]], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Id lists -> ``(B, S)`` padded with ``<pad>`` and their lengths ``(B,)``, on ``device``."""
    src, lengths = pad_ids(src_ids)
    return src.to(device), lengths.to(device)


def decode(model: TranslationModel, src_ids: list[list[int]], objective: Objective,
           options: DecodingOptions | None = None) -> list[Hypothesis]:
    """The best hypothesis for each (non-empty) id list: greedy search for ``beam=1``, else beam search."""
    options = options or DecodingOptions()
    if not src_ids:
        return []
    src, lengths = pad_batch(src_ids, next(model.parameters()).device)
    if options.beam == 1:
        return greedy_search(model, src, lengths, objective, options)
    return [h[0] for h in beam_search(model, src, lengths, objective, options)]
