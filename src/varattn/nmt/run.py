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

from varattn.checkpoint import load_weights
from varattn.device import resolve_device
from varattn.errors import VarattnError
from varattn.latent import Objective, make_objective
from varattn.nmt.batching import collate, index_batches
from varattn.nmt.config import TrainConfig
from varattn.nmt.evaluate import sentence_scores
from varattn.nmt.model import LatentAlignmentNMT, ModelConfig
from varattn.nmt.search import DecodingOptions, Translation, decode
from varattn.nmt.text import Segmenter
from varattn.nmt.vocab import Vocab
from varattn.training import RUN_FILE
from varattn.training.run_info import check_files, check_size, parse_section, read_run_info

__all__ = ["RUN_FILE", "TrainedModel", "load_run"]
log = logging.getLogger("varattn")


@dataclass
class TrainedModel:
    """A trained model loaded from a run directory: ``varattn.load(run_dir)`` returns one.

    Attributes:
        run_dir: the directory it came from.
        config: the training configuration.
        model: the network, in evaluation mode.
        objective: the training mode's objective (its ``score`` gives the exact figures).
        src_vocab, tgt_vocab, src_seg, tgt_seg: vocabularies and segmenters.
        meta: the checkpoint's metadata (step, validation figures).
    """

    run_dir: Path
    config: TrainConfig
    model: LatentAlignmentNMT
    objective: Objective
    src_vocab: Vocab
    tgt_vocab: Vocab
    src_seg: Segmenter
    tgt_seg: Segmenter
    meta: dict

    @property
    def mode(self) -> str:
        return self.config.mode

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
        if len(src_lines) != len(tgt_lines):
            raise VarattnError(f"score needs as many targets as sources: {len(src_lines)} vs {len(tgt_lines)}")
        if batch_size < 1:
            raise VarattnError(f"the batch size must be at least 1, got {batch_size}")
        src = [self.encode_src(s) for s in src_lines]
        tgt = [self.encode_tgt(t) for t in tgt_lines]
        out: list[dict] = []
        for chunk in index_batches(range(len(src)), batch_size):
            batch = collate([src[k] for k in chunk], [tgt[k] for k in chunk])
            out.extend(sentence_scores(self.model, self.objective, batch))
        return out

    def align(self, src_lines: list[str], tgt_lines: list[str], method: str = "exact",
              threshold: float | None = None, batch_size: int = 32) -> list[dict]:
        """Word alignments of sentence pairs: see ``varattn.nmt.posterior.word_alignments``.

        ``method`` is ``prior``, ``posterior`` (models with an inference network) or ``exact``;
        ``threshold=None`` links each target piece to its argmax source piece, otherwise every
        cell above ``threshold``. Per pair: ``matrix`` (target pieces x source pieces), word
        ``links`` as 0-based ``(src, tgt)``, ``src_words``, ``tgt_words`` (and the pieces).
        """
        from varattn.nmt.posterior import word_alignments

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
        out: list = [None] * len(src_lines)
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


def load_run(run_dir: str | Path, which: str = "best", device: str | None = "auto") -> TrainedModel:
    """Load ``RUN_DIR/{best,last}`` with its config, vocabularies and segmenters.

    ``device``: where the model runs (``auto``: a CUDA GPU if there is one, else the CPU; or
    ``cpu``, ``cuda``, ``cuda:N``). Results come back on the CPU whatever the device.
    """
    target = resolve_device(device)
    run_dir = Path(run_dir)
    info = read_run_info(run_dir, "nmt")
    cfg = parse_section(run_dir, "config", lambda: TrainConfig.from_dict(info["config"]))
    model_cfg = parse_section(run_dir, "model", lambda: ModelConfig.from_dict(info["model"]))
    objective = parse_section(run_dir, "config", lambda: make_objective(cfg.mode, **cfg.objective))
    check_files(run_dir, info)
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
    model = LatentAlignmentNMT(model_cfg, with_inference=objective.uses_posterior,
                               with_precision=objective.needs_precision)
    meta = load_weights(model, run_dir / which)
    model.to(target).eval()
    return TrainedModel(run_dir, cfg, model, objective, vocabs[0], vocabs[1], segmenters[0], segmenters[1], meta)
