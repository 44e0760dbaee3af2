"""A run directory on disk, and the trained model it holds.

Layout of ``RUN_DIR`` (nothing in it is ever unpickled):

==================  =================================================================
``run.json``        the training config, the model sizes and the segmentation (JSON)
``vocab.src.txt``   source vocabulary, one token per line
``vocab.tgt.txt``   target vocabulary
``spm.*.model``     sentencepiece models, when the run segments raw text
``best/``           model weights (safetensors) of the best validation score + meta.json
``last/``           model weights after the latest evaluation + meta.json
``resume/``         everything ``--resume`` needs: weights, optimizer, RNG states, counters
``metrics.jsonl``   one JSON record per log line (train and valid)
``tb/``             TensorBoard event files
``train.lock``      the writer's lock (see ``varattn.training.rundir_lock``)
==================  =================================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from varattn.errors import VarattnError
from varattn.nmt.batching import collate, index_batches
from varattn.nmt.builder import TranslationModel, build_model
from varattn.nmt.config import TrainConfig
from varattn.nmt.evaluate import evaluate as evaluate_batches
from varattn.nmt.evaluate import sentence_scores
from varattn.nmt.search import DecodingOptions, Translation, decode
from varattn.nmt.text import Segmenter
from varattn.nmt.vocab import Vocab
from varattn.training import RUN_FILE
from varattn.training.run_info import check_size, parse_section
from varattn.training.trained import RunParts, TrainedRun

__all__ = ["RUN_FILE", "TrainedModel", "load_run", "open_trained"]
log = logging.getLogger("varattn")
#: why ``evaluate`` leaves a pair out -> the words its report uses
SKIP_REASONS = {"empty_source": "with an empty source"}


def _lines(value, name: str):
    """``value`` unchanged when it is lines (a list or any iterable of strings); a bare string, which would be
    read character by character, is a one-line error that says what to pass."""
    if isinstance(value, (str, bytes)):
        raise VarattnError(f"{name} is a single string: pass a list of lines, e.g. [{value[:30]!r}]")
    return value


@dataclass
class TrainedModel(TrainedRun):
    """A trained translation model loaded from a run directory: ``varattn.load(run_dir)`` returns one.

    Attributes (beside ``run_dir``, ``config``, ``model``, ``objective`` and ``meta``, see
    ``varattn.training.trained.TrainedRun``):
        src_vocab, tgt_vocab, src_seg, tgt_seg: vocabularies and segmenters.
    """

    config: TrainConfig
    model: TranslationModel
    src_vocab: Vocab
    tgt_vocab: Vocab
    src_seg: Segmenter
    tgt_seg: Segmenter

    def encode_src(self, line: str) -> list[int]:
        return self.src_vocab.encode(self.src_seg.tokenize(line))

    def encode_tgt(self, line: str) -> list[int]:
        return self.tgt_vocab.encode(self.tgt_seg.tokenize(line))

    def unknown(self, tokens: list[str], side: str = "src") -> int:
        """How many of ``tokens`` (pieces of the ``src`` or ``tgt`` side) the vocabulary lacks (read as ``<unk>``)."""
        vocab = self.src_vocab if side == "src" else self.tgt_vocab
        return sum(1 for t in tokens if t not in vocab.stoi)

    @torch.no_grad()
    def score(self, src_lines: list[str], tgt_lines: list[str], batch_size: int = 32) -> list[dict]:
        """Per pair: exact ``log_prob`` = log p(y | x), ``elbo`` (None without q), ``tokens``.

        ``tokens`` counts target tokens including ``</s>``.
        """
        src_lines, tgt_lines = _lines(src_lines, "src_lines"), _lines(tgt_lines, "tgt_lines")
        if len(src_lines) != len(tgt_lines):
            raise VarattnError(f"score needs as many targets as sources: {len(src_lines)} vs {len(tgt_lines)}")
        return self.score_ids([self.encode_src(s) for s in src_lines], [self.encode_tgt(t) for t in tgt_lines],
                              batch_size)

    @torch.no_grad()
    def score_ids(self, src: list[list[int]], tgt: list[list[int]], batch_size: int = 32) -> list[dict]:
        """:meth:`score` for pairs already turned into vocabulary ids (a translation's own pieces, say)."""
        if len(src) != len(tgt):
            raise VarattnError(f"score needs as many targets as sources: {len(src)} vs {len(tgt)}")
        if batch_size < 1:
            raise VarattnError(f"the batch size must be at least 1, got {batch_size}")
        out: list[dict] = []
        for chunk in index_batches(range(len(src)), batch_size):
            batch = collate([src[k] for k in chunk], [tgt[k] for k in chunk])
            out.extend(sentence_scores(self.model, self.objective, batch))
        return out

    def evaluate(self, src_lines: list[str], tgt_lines: list[str], batch_size: int = 32,
                 topk: int | None = None) -> dict:
        """Exact perplexity, ELBO, token accuracy and entropies (``varattn.nmt.evaluate.evaluate``) of sentence pairs.

        Pairs the model cannot score (an empty source) are left out and counted by reason under ``skipped``;
        ``topk`` adds the K-max perplexity.
        """
        src_lines, tgt_lines = _lines(src_lines, "src_lines"), _lines(tgt_lines, "tgt_lines")
        pairs, skipped = encode_pairs(self, src_lines, tgt_lines)
        if not pairs:
            reason = skipped_line(skipped, len(src_lines))
            raise VarattnError("no sentence pairs to evaluate" + (f" ({reason})" if reason else ""))
        batches = [collate([pairs[k][0] for k in chunk], [pairs[k][1] for k in chunk], chunk)
                   for chunk in index_batches(range(len(pairs)), batch_size)]
        result = evaluate_batches(self.model, self.objective, batches, topk=topk)
        result["mode"] = self.mode
        result["skipped"] = skipped
        return result

    def valid_lines(self) -> tuple[list[str], list[str]]:
        """The run's own validation pairs as lines (the synthetic task's, or its ``valid`` files)."""
        from varattn.nmt.corpora.corpus import read_lines, resolve_pair
        from varattn.nmt.data import synthetic_pairs

        cfg = self.config
        if cfg.valid is None:
            valid = synthetic_pairs(cfg)["valid"].head(cfg.max_valid_sentences)
            return [" ".join(s) for s in valid.src], [" ".join(t) for t in valid.tgt]
        src_path, tgt_path = resolve_pair(cfg.valid, cfg.src_lang, cfg.tgt_lang)
        src, tgt = read_lines(src_path), read_lines(tgt_path)
        n = cfg.max_valid_sentences
        return (src[:n], tgt[:n]) if n else (src, tgt)

    def align(self, src_lines: list[str], tgt_lines: list[str], method: str = "exact",
              threshold: float | None = None, batch_size: int = 32) -> list[dict]:
        """Word alignments of sentence pairs: see ``varattn.nmt.posterior.word_alignments``.

        ``method`` is ``prior``, ``posterior`` (models with an inference network) or ``exact``;
        ``threshold=None`` links each target piece to its argmax source piece, otherwise every
        cell above ``threshold``. Per pair: ``matrix`` (target pieces x source pieces), word
        ``links`` as 0-based ``(src, tgt)``, ``src_words``, ``tgt_words`` (and the pieces).
        """
        from varattn.nmt.posterior import word_alignments

        src_lines, tgt_lines = _lines(src_lines, "src_lines"), _lines(tgt_lines, "tgt_lines")
        return word_alignments(self, src_lines, tgt_lines, method, threshold, batch_size)

    def translate(self, src_lines: list[str], options: DecodingOptions | None = None, *, batch_size: int = 32,
                  max_src_len: int = 250, line_offset: int = 0, **settings) -> list[Translation]:
        """Translate ``src_lines``: one ``varattn.nmt.search.Translation`` per line, in order.

        The search follows ``options`` (a ``varattn.nmt.search.DecodingOptions``), or one made
        from ``settings`` (``beam``, ``topk``, ``alpha``, ``eos_norm``, ``max_len_a``,
        ``max_len_b``: ``translate(lines, beam=1)`` is greedy search). Lines are decoded in
        batches of ``batch_size`` sorted by length. An empty line gives an empty translation
        without running the model; a line of more than ``max_src_len`` pieces is cut to that
        many, with a warning on stderr that names its 1-based number (``line_offset`` + its
        index + 1).
        """
        src_lines = _lines(src_lines, "src_lines")
        if options is None:
            options = DecodingOptions(**settings)
        elif not isinstance(options, DecodingOptions):
            raise VarattnError(f"options must be a DecodingOptions, got {options!r}; give settings by name (beam=5)")
        elif settings:
            raise VarattnError(f"give either options or {', '.join(settings)}, not both")
        options.check_for(self.objective)
        if batch_size < 1:
            raise VarattnError(f"the batch size must be at least 1, got {batch_size}")
        if max_src_len < 1:
            raise VarattnError(f"max_src_len must be at least 1, got {max_src_len}")
        pieces, cut = [], []
        for k, line in enumerate(src_lines):
            toks = self.src_seg.tokenize(line)
            cut.append(len(toks) > max_src_len)
            if cut[-1]:
                log.warning(
                    "input line %d has %d source tokens; translating only the first %d",
                    line_offset + k + 1, len(toks), max_src_len)
                toks = toks[:max_src_len]
            pieces.append(toks)
        out: list = [None] * len(pieces)
        for k, p in enumerate(pieces):
            if not p:
                out[k] = Translation("", [], 0.0, 0.0, torch.zeros(0, 0), [], cut[k])
        todo = [k for k, p in enumerate(pieces) if p]
        for chunk in index_batches(todo, batch_size, key=lambda k: -len(pieces[k])):
            hyps = decode(self.model, [self.src_vocab.encode(pieces[k]) for k in chunk], self.objective, options)
            for k, hyp in zip(chunk, hyps):
                tokens = [self.tgt_vocab.itos[i] for i in hyp.tokens]
                out[k] = Translation(self.tgt_seg.detokenize(tokens, keep_bpe=False), tokens, hyp.score,
                                     hyp.log_prob, hyp.alignment, pieces[k], cut[k])
        return out


def encode_pairs(trained: TrainedModel, src: list[str], tgt: list[str]) -> tuple[list[tuple[list[int], list[int]]],
                                                                             dict]:
    """The pairs as ids, without those the model cannot score; and ``{reason: count}`` of those left out."""
    kept, skipped = [], dict.fromkeys(SKIP_REASONS, 0)
    for s, t in zip(src, tgt):
        s_ids = trained.encode_src(s)
        if not s_ids:
            skipped["empty_source"] += 1
            continue
        kept.append((s_ids, trained.encode_tgt(t)))
    return kept, skipped


def skipped_line(skipped: dict, total: int) -> str | None:
    """``skipped 3 of 300 pairs: 3 with an empty source``, or None when nothing was skipped."""
    n = sum(skipped.values())
    if not n:
        return None
    reasons = ", ".join(f"{count} {SKIP_REASONS[key]}" for key, count in skipped.items() if count)
    return f"skipped {n} of {total} pairs: {reasons}"


def open_trained(parts: RunParts) -> TrainedModel:
    """The translation part of opening a run (``varattn.training.trained.load_trained`` does the rest):
    the vocabularies, checked against the model sizes, the segmenters and the model with its weights."""
    run_dir, model_cfg, info = parts.run_dir, parts.model, parts.info
    vocabs = []
    for side, size, what in (("src", model_cfg.src_vocab_size, "source embedding"),
                             ("tgt", model_cfg.tgt_vocab_size, "target embedding and output layer")):
        path = run_dir / f"vocab.{side}.txt"
        vocab = Vocab.load(path)
        check_size(path, len(vocab), size, f"model's {what} ({RUN_FILE})")
        vocabs.append(vocab)
    seg = parse_section(run_dir, "segmentation", lambda: info["segmentation"])
    segmenters = [parse_section(run_dir, "segmentation", lambda s=s: Segmenter.from_json(seg[s], run_dir))
                  for s in ("src", "tgt")]
    model = build_model(model_cfg, parts.objective)
    return TrainedModel(run_dir=run_dir, config=parts.config, model=model, objective=parts.objective,
                        meta=parts.load_weights(model), src_vocab=vocabs[0], tgt_vocab=vocabs[1],
                        src_seg=segmenters[0], tgt_seg=segmenters[1])


def load_run(run_dir: str | Path, which: str = "best", device: str | None = "auto") -> TrainedModel:
    """Load ``RUN_DIR/{best,last}`` of a translation run with its config, vocabularies and segmenters.

    ``device``: where the model runs (``auto``: a CUDA GPU if there is one, else the CPU; or
    ``cpu``, ``cuda``, ``cuda:N``). Results come back on the CPU whatever the device.
    """
    from varattn.nmt.registration import NMT

    return NMT.load(run_dir, which, device)
