"""From text lines to tokens and back: whitespace tokens, BPE marks, or sentencepiece.

Three segmentations, chosen once per run and saved with it:

* ``none``: the text is already segmented (the IWSLT'14 files carry ``@@ `` BPE marks; the
  synthetic task has whole words): tokens are whitespace-separated.
* ``sentencepiece``: raw text; a unigram sentencepiece model per language is trained on the
  train split and saved in the run directory (``spm.src.model``, ``spm.tgt.model``).
* ``auto`` (the default at training time): ``none`` if the training text carries BPE
  marks or has at most ``vocab_size`` distinct whitespace tokens per side, otherwise
  ``sentencepiece``.
"""

from __future__ import annotations

import io
from pathlib import Path

from varattn.errors import VarattnError
from varattn.nmt.subword import has_bpe_marks, remove_bpe


class Segmenter:
    """Tokenises one language's text and turns output tokens back into text.

    Attributes:
        kind: ``none`` or ``sentencepiece``.
        piece_style: how pieces group into words for word alignments: ``bpe``,
            ``sentencepiece`` or ``none`` (see ``varattn.nmt.align.subword_to_word_map``).
    """

    def __init__(self, kind: str, model_path: Path | None = None, piece_style: str = "none"):
        self.kind = kind
        self.model_path = model_path
        self.piece_style = piece_style
        self._sp = None
        if kind == "sentencepiece":
            import sentencepiece as spm

            if model_path is None or not Path(model_path).is_file():
                raise VarattnError(f"sentencepiece model not found: {model_path}")
            self._sp = spm.SentencePieceProcessor(model_file=str(model_path))
            self.piece_style = "sentencepiece"
        elif kind != "none":
            raise VarattnError(f"unknown segmentation {kind!r}; valid: auto, none, sentencepiece")

    def tokenize(self, line: str) -> list[str]:
        if self._sp is not None:
            return self._sp.encode(line, out_type=str)
        return line.split()

    def detokenize(self, tokens: list[str], keep_bpe: bool = False) -> str:
        """Output text for ``tokens``: BPE marks joined unless ``keep_bpe``."""
        if self._sp is not None:
            return " ".join(tokens) if keep_bpe else self._sp.decode(tokens)
        text = " ".join(tokens)
        return text if keep_bpe else remove_bpe(text)

    def words(self, line: str) -> list[str]:
        """The user's words for ``line`` (what word alignments index into)."""
        if self.piece_style == "bpe":
            return self.detokenize(line.split()).split()
        return line.split()

    def to_json(self) -> dict:
        return {"kind": self.kind, "piece_style": self.piece_style,
                "model": None if self.model_path is None else Path(self.model_path).name}

    @classmethod
    def from_json(cls, d: dict, run_dir: Path) -> Segmenter:
        model = run_dir / d["model"] if d.get("model") else None
        return cls(d["kind"], model, d.get("piece_style", "none"))


def train_sentencepiece(lines: list[str], path: Path, vocab_size: int) -> Path:
    """Train a unigram sentencepiece model on ``lines`` and write it to ``path``."""
    import sentencepiece as spm

    model = io.BytesIO()
    distinct = len({tok for line in lines for tok in line.split()})
    size = max(16, min(vocab_size, distinct + 64))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=size, model_type="unigram",
            character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
        )
    except RuntimeError as exc:
        raise VarattnError(f"sentencepiece training failed: {exc}") from None
    from varattn.fileio import atomic_write_bytes

    atomic_write_bytes(path, model.getvalue())
    return path


def choose_segmenters(
    src_lines: list[str], tgt_lines: list[str], kind: str, run_dir: Path, vocab_size: int
) -> tuple[Segmenter, Segmenter]:
    """Resolve ``kind`` (``auto``/``none``/``sentencepiece``) and build both segmenters."""
    if kind == "auto":
        bpe = has_bpe_marks(src_lines) or has_bpe_marks(tgt_lines)
        small = all(len({t for line in lines for t in line.split()}) <= vocab_size
                    for lines in (src_lines, tgt_lines))
        kind = "none" if bpe or small else "sentencepiece"
    if kind == "none":
        src_style = "bpe" if has_bpe_marks(src_lines) else "none"
        tgt_style = "bpe" if has_bpe_marks(tgt_lines) else "none"
        return Segmenter("none", piece_style=src_style), Segmenter("none", piece_style=tgt_style)
    if kind == "sentencepiece":
        src_model = train_sentencepiece(src_lines, run_dir / "spm.src.model", vocab_size)
        tgt_model = train_sentencepiece(tgt_lines, run_dir / "spm.tgt.model", vocab_size)
        return Segmenter("sentencepiece", src_model), Segmenter("sentencepiece", tgt_model)
    raise VarattnError(f"unknown segmentation {kind!r}; valid: auto, none, sentencepiece")
