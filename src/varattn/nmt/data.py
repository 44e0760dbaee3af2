"""The corpora of a run: synthetic or files, segmented, filtered and turned into ids."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from varattn.errors import VarattnError
from varattn.fileio import load_json
from varattn.nmt.align import Link
from varattn.nmt.batching import Batch, bucket_batches, collate
from varattn.nmt.config import TrainConfig
from varattn.nmt.corpora.corpus import read_lines, read_parallel, resolve_pair
from varattn.nmt.corpora.synthetic import make_splits
from varattn.nmt.run import RUN_FILE
from varattn.nmt.text import Segmenter, choose_segmenters
from varattn.nmt.vocab import Vocab

log = logging.getLogger("varattn")


@dataclass
class Pairs:
    """Tokenised sentence pairs plus their gold links when known (synthetic data)."""

    src: list[list[str]]
    tgt: list[list[str]]
    links: list[set[Link]] | None = None
    summary: str = ""

    def __len__(self) -> int:
        return len(self.src)

    def head(self, n: int | None) -> Pairs:
        if n is None or n >= len(self):
            return self
        return Pairs(self.src[:n], self.tgt[:n], None if self.links is None else self.links[:n], self.summary)


@dataclass
class EncodedPairs:
    """Pairs as vocabulary ids, ready for batching."""

    src: list[list[int]]
    tgt: list[list[int]]
    tgt_vocab: Vocab = field(repr=False)

    def batches(self, batch_size: int, batch_tokens: int | None = None, shuffle: bool = False,
                seed: int = 0) -> list[Batch]:
        groups = bucket_batches(self.src, self.tgt, batch_size, batch_tokens, shuffle, seed)
        return [self.collate(g) for g in groups]

    def collate(self, index: list[int]) -> Batch:
        return collate([self.src[i] for i in index], [self.tgt[i] for i in index], index)


def encode_pairs(pairs: Pairs, src_vocab: Vocab, tgt_vocab: Vocab) -> EncodedPairs:
    return EncodedPairs([src_vocab.encode(s) for s in pairs.src], [tgt_vocab.encode(t) for t in pairs.tgt], tgt_vocab)


def synthetic_pairs(cfg: TrainConfig) -> dict[str, Pairs]:
    """The synthetic task's train/valid/test splits, as ``Pairs`` with gold links."""
    n_train, n_valid, n_test = cfg.synthetic_sizes
    splits = make_splits(seed=cfg.synthetic_seed, n_train=n_train, n_valid=n_valid, n_test=n_test)
    return {
        name: Pairs([p.src for p in ps], [p.tgt for p in ps], [set(p.links) for p in ps],
                    f"synthetic {name}: {len(ps)} pairs (seed {cfg.synthetic_seed})")
        for name, ps in splits.items()
    }


def read_pairs(src_path: Path, tgt_path: Path, src_seg: Segmenter, tgt_seg: Segmenter,
               max_len: int | None) -> Pairs:
    corpus = read_parallel(src_path, tgt_path, max_len=max_len, tokenize=src_seg.tokenize,
                           tokenize_tgt=tgt_seg.tokenize)
    return Pairs(corpus.src, corpus.tgt, None, corpus.summary())


@dataclass
class RunData:
    """What training reads: segmenters, vocabularies and the train/valid pairs."""

    src_seg: Segmenter
    tgt_seg: Segmenter
    src_vocab: Vocab
    tgt_vocab: Vocab
    train: Pairs
    valid: Pairs


def prepare_run_data(cfg: TrainConfig, run_dir: Path) -> RunData:
    """Read (or generate) the corpora, choose segmentation, build vocabularies from train."""
    if cfg.train is None:
        splits = synthetic_pairs(cfg)
        src_seg, tgt_seg = Segmenter("none"), Segmenter("none")
        train, valid = splits["train"], splits["valid"]
    else:
        train_src, train_tgt = resolve_pair(cfg.train, cfg.src_lang, cfg.tgt_lang)
        valid_src, valid_tgt = resolve_pair(cfg.valid, cfg.src_lang, cfg.tgt_lang)
        src_seg, tgt_seg = choose_segmenters(read_lines(train_src), read_lines(train_tgt), cfg.subword,
                                             run_dir, cfg.subword_vocab_size)
        train = read_pairs(train_src, train_tgt, src_seg, tgt_seg, cfg.max_len)
        valid = read_pairs(valid_src, valid_tgt, src_seg, tgt_seg, cfg.max_len)
    valid = valid.head(cfg.max_valid_sentences)
    src_vocab = Vocab.build(train.src, cfg.max_vocab)
    tgt_vocab = Vocab.build(train.tgt, cfg.max_vocab)
    return RunData(src_seg, tgt_seg, src_vocab, tgt_vocab, train, valid)


def load_run_data(cfg: TrainConfig, run_dir: Path) -> RunData:
    """The data of an existing run: its saved segmentation and vocabularies, the corpora read again.

    Nothing is retrained or rewritten. If the training corpus changed since the run started (its
    vocabulary no longer matches the saved one), VarattnError.
    """
    info = load_json(run_dir / RUN_FILE)
    try:
        seg = info["segmentation"]
        src_seg, tgt_seg = Segmenter.from_json(seg["src"], run_dir), Segmenter.from_json(seg["tgt"], run_dir)
    except (KeyError, TypeError) as exc:
        raise VarattnError(f"{run_dir / RUN_FILE} is corrupted (segmentation: {exc})") from None
    if cfg.train is None:
        splits = synthetic_pairs(cfg)
        train, valid = splits["train"], splits["valid"]
    else:
        train = read_pairs(*resolve_pair(cfg.train, cfg.src_lang, cfg.tgt_lang), src_seg, tgt_seg, cfg.max_len)
        valid = read_pairs(*resolve_pair(cfg.valid, cfg.src_lang, cfg.tgt_lang), src_seg, tgt_seg, cfg.max_len)
    vocabs = []
    for side, sentences in (("src", train.src), ("tgt", train.tgt)):
        path = run_dir / f"vocab.{side}.txt"
        saved = Vocab.load(path)
        if Vocab.build(sentences, cfg.max_vocab).itos != saved.itos:
            raise VarattnError(f"cannot resume {run_dir}: the training data changed since the run started (its "
                               f"vocabulary no longer matches {path.name})")
        vocabs.append(saved)
    return RunData(src_seg, tgt_seg, vocabs[0], vocabs[1], train, valid.head(cfg.max_valid_sentences))
