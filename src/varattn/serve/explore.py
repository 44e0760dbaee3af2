"""What the explorer shows, as JSON-ready dicts, computed by the library (no web framework here).

A :class:`ServedRun` is one trained run, loaded once and shared by every request (its lock lets one request
at a time use its model). The functions below take one and a checked request:

* :func:`translate`: the beam translation of a sentence (``TrainedModel.translate``), scored exactly, with the
  alignments of the output (:func:`analyse_pair`);
* :func:`analyse_pair`: for a sentence pair, the exact ``log p(y | x)`` and ELBO (``TrainedModel.score_ids``)
  and the prior, q and exact posterior matrices (``varattn.nmt.posterior.piece_alignments``), each with the
  entropy of every row, its K most probable source pieces and its Pharaoh links;
* :func:`answer`: a VQA run's answer distribution and the regions it looked at (``TrainedVQA.answer`` and
  ``regions``).
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import torch

from varattn.errors import VarattnError
from varattn.serve.limits import BadRequest, Limits, check_length

log = logging.getLogger("varattn")

#: decimals of every probability sent (what ``varattn align --json`` writes)
DECIMALS = 5
#: image formats an upload may have, as Pillow names them
IMAGE_FORMATS = ("PNG", "JPEG")
#: how the VQA view names the three distributions over regions
REGION_TITLES = {"prior": "prior p(z | image, question)", "posterior": "posterior q(z | image, question, answer)",
                 "exact": "exact posterior p(z | image, question, answer)"}


class ServedRun:
    """One trained run that the server answers with: loaded once, used by one request at a time (``lock``).

    Attributes:
        name: how requests name it (the directory's name, made unique).
        trained: what ``varattn.load`` returned.
        task: ``nmt`` or ``vqa``.
    """

    def __init__(self, name: str, trained, task: str):
        self.name = name
        self.trained = trained
        self.task = task
        self.lock = threading.Lock()
        self._examples: list[dict] | None = None
        self._images = None

    @property
    def methods(self) -> list[str]:
        """The alignment distributions this run has: prior, q (modes with an inference network), exact."""
        if self.task == "nmt":
            from varattn.nmt.posterior import has_posterior

            with_q = has_posterior(self.trained)
        else:
            with_q = bool(self.trained.objective.uses_posterior)
        return ["prior", "posterior", "exact"] if with_q else ["prior", "exact"]

    def describe(self) -> dict:
        """What ``GET /api/runs`` says about the run."""
        trained = self.trained
        out = {"name": self.name, "task": self.task, "mode": trained.mode, "methods": self.methods,
               "step": trained.meta.get("step"), "titles": self._titles()}
        if self.task == "nmt":
            out.update({"src_lang": trained.config.src_lang, "tgt_lang": trained.config.tgt_lang,
                        "src_style": trained.src_seg.piece_style, "tgt_style": trained.tgt_seg.piece_style,
                        "kmax": trained.mode != "var-relaxed"})
        else:
            out.update({"answers": list(trained.answers.itos), "images": trained.model.cnn is not None})
        return out

    def _titles(self) -> dict:
        if self.task == "nmt":
            from varattn.nmt.posterior import METHOD_TITLES

            return {m: METHOD_TITLES[m] for m in self.methods}
        return {m: REGION_TITLES[m] for m in self.methods}

    # -- examples ------------------------------------------------------------------------------------
    def examples(self, limit: int) -> list[dict]:
        """Translation: the run's first validation pairs ``{src, tgt}``. VQA (easy-VQA): the first test questions
        ``{question, answer, image}`` (``image`` indexes :meth:`example_png`). Empty when there are none."""
        if self._examples is None:
            try:
                self._examples = self._nmt_examples(limit) if self.task == "nmt" else self._vqa_examples(limit)
            except (VarattnError, OSError) as exc:
                log.warning("run %s: no examples (%s)", self.name, exc)
                self._examples = []
        return self._examples

    def _nmt_examples(self, limit: int) -> list[dict]:
        src, tgt = self.trained.valid_lines()
        return [{"src": s, "tgt": t} for s, t in zip(src[:limit], tgt[:limit])]

    def _vqa_examples(self, limit: int) -> list[dict]:
        if self.trained.model.cnn is None or self.trained.config.data.source != "easy-vqa" or not limit:
            return []
        from varattn.vqa.easy import load_split

        split = load_split("test", limit)
        self._images = split.pixels
        row = {image_id: k for k, image_id in enumerate(split.pixel_ids)}
        return [{"question": q, "answer": a, "image": row[i]}
                for q, a, i in zip(split.texts, split.answers, split.image_ids)]

    def example_png(self, index: int) -> bytes:
        """The example image ``index`` as PNG bytes."""
        if self._images is None or not 0 <= index < len(self._images):
            raise BadRequest(f"run {self.name!r} has no example image {index}", 404)
        image = _pil().Image.fromarray(self._images[index])
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def example_image(self, index: int):
        if self._images is None or not 0 <= index < len(self._images):
            raise BadRequest(f"run {self.name!r} has no example image {index}", 404)
        return self._images[index]


def load_runs(run_dirs: list[str | Path], checkpoint: str = "best", device: str | None = "cpu") -> list[ServedRun]:
    """Load every run once; names are the directories' names, made unique with ``-2``, ``-3``, ..."""
    import varattn

    if not run_dirs:
        raise VarattnError("give at least one run directory")
    runs, names = [], set()
    for run_dir in run_dirs:
        path = Path(run_dir)
        spec, _ = varattn.run_task(path)
        if spec.name not in ("nmt", "vqa"):
            raise VarattnError(f"{path}: varattn serve shows translation and VQA runs, not {spec.name!r} runs")
        trained = spec.load(path, checkpoint, device)
        name, k = path.resolve().name or "run", 2
        while name in names:
            name, k = f"{path.resolve().name}-{k}", k + 1
        names.add(name)
        runs.append(ServedRun(name, trained, spec.name))
    return runs


# -- translation ------------------------------------------------------------------------------------------
def _rows(matrix: torch.Tensor) -> list[list[float]]:
    from varattn.nmt.posterior import matrix_rows

    return matrix_rows(matrix, DECIMALS)


def _entropy(probs: torch.Tensor) -> list[float]:
    """Entropy in nats of every row (``0 log 0 = 0``)."""
    return [round(float(v), DECIMALS) for v in torch.special.entr(probs.double()).sum(-1).tolist()]


def _alternatives(matrix: torch.Tensor, k: int) -> list[list[list[float]]]:
    """Per row, its ``k`` most probable columns as ``[index, probability]``, best first."""
    if matrix.shape[-1] == 0:
        return [[] for _ in range(matrix.shape[0])]
    values, index = matrix.topk(min(k, matrix.shape[-1]), dim=-1)
    return [[[int(i), round(float(v), DECIMALS)] for v, i in zip(vs, ix)]
            for vs, ix in zip(values.tolist(), index.tolist())]


def _pieces(run: ServedRun, line: str, side: str, limits: Limits) -> list[str]:
    seg = run.trained.src_seg if side == "src" else run.trained.tgt_seg
    pieces = seg.tokenize(line)
    what = "the source" if side == "src" else "the target"
    if not pieces:
        raise BadRequest(f"{what} has no tokens")
    check_length(len(pieces), what, limits)
    return pieces


def analyse_pair(run: ServedRun, src: str | list[str], tgt: str | list[str], limits: Limits,
                 threshold: float | None = None, alternatives: int = 3, tgt_text: str | None = None) -> dict:
    """Exact scores and the alignments of one sentence pair (text, or lists of pieces).

    Returns ``src_pieces``, ``tgt_pieces``, ``src_words``, ``tgt_words``, ``src_word_of_piece``,
    ``tgt_word_of_piece``, ``src_unknown`` / ``tgt_unknown`` (the pieces the vocabulary lacks, read as
    ``<unk>``), ``log_prob`` (exact ``log p(y </s> | x)``), ``elbo`` (None without q), ``tokens`` (target
    tokens with ``</s>``), ``threshold`` and ``methods``: ``{method: {title, matrix (T x S, rows = target
    pieces), entropy (per row, nats), alternatives (per row, the best [source piece, probability]), links
    (Pharaoh, words), piece_links ([[source piece, target piece], ...])}}``.
    """
    from varattn.nmt.align import format_pharaoh
    from varattn.nmt.posterior import METHOD_TITLES, piece_alignments

    trained = run.trained
    src_pieces = _pieces(run, src, "src", limits) if isinstance(src, str) else src
    tgt_pieces = _pieces(run, tgt, "tgt", limits) if isinstance(tgt, str) else tgt
    src_line = src if isinstance(src, str) else None
    tgt_line = tgt if isinstance(tgt, str) else tgt_text
    pair = piece_alignments(trained, [src_pieces], [tgt_pieces], run.methods, threshold, 1,
                            None if src_line is None else [src_line], None if tgt_line is None else [tgt_line])[0]
    score = trained.score_ids([trained.src_vocab.encode(src_pieces)], [trained.tgt_vocab.encode(tgt_pieces)])[0]
    methods = {}
    for m in run.methods:
        matrix = pair["matrices"][m]
        methods[m] = {"title": METHOD_TITLES[m], "matrix": _rows(matrix), "entropy": _entropy(matrix),
                      "alternatives": _alternatives(matrix, alternatives),
                      "links": format_pharaoh(pair["links"][m]),
                      "piece_links": sorted([i, t] for i, t in pair["piece_links"][m])}
    return {
        "src_pieces": pair["src_pieces"], "tgt_pieces": pair["tgt_pieces"],
        "src_words": pair["src_words"], "tgt_words": pair["tgt_words"],
        "src_word_of_piece": pair["src_map"], "tgt_word_of_piece": pair["tgt_map"],
        "src_unknown": [k for k, p in enumerate(src_pieces) if p not in trained.src_vocab.stoi],
        "tgt_unknown": [k for k, p in enumerate(tgt_pieces) if p not in trained.tgt_vocab.stoi],
        "log_prob": round(score["log_prob"], DECIMALS),
        "elbo": None if score["elbo"] is None else round(score["elbo"], DECIMALS),
        "tokens": score["tokens"], "threshold": threshold, "methods": methods,
    }


def score(run: ServedRun, src: str, tgt: str, limits: Limits) -> dict:
    """Exact ``log_prob`` = log p(y </s> | x), ``elbo`` (None without q), ``tokens`` and the per-token
    ``perplexity`` of one pair (``TrainedModel.score``)."""
    import math

    _pieces(run, src, "src", limits)
    _pieces(run, tgt, "tgt", limits)
    out = run.trained.score([src], [tgt])[0]
    out["perplexity"] = math.exp(-out["log_prob"] / out["tokens"])
    if out["elbo"] is not None:
        out["elbo_perplexity"] = math.exp(-out["elbo"] / out["tokens"])
    return out


def translate(run: ServedRun, src: str, options, limits: Limits, threshold: float | None = None,
              alternatives: int = 3) -> dict:
    """The translation of ``src`` under ``options`` (a ``DecodingOptions``) and the alignments of that output.

    ``translation``: ``text``, ``tokens`` (target pieces), ``log_prob`` (log p(output </s> | source) under the
    mode's predictive rule), ``score`` (the search's score, with its length penalty); ``alignment``: what
    :func:`analyse_pair` gives for (source, output pieces); None for an empty output.
    """
    _pieces(run, src, "src", limits)
    options.check_for(run.trained.objective)
    result = run.trained.translate([src], options, batch_size=1, max_src_len=limits.max_tokens)[0]
    translation = {"text": result.text, "tokens": result.tokens, "log_prob": round(result.log_prob, DECIMALS),
                   "score": round(result.score, DECIMALS)}
    alignment = None
    if result.tokens:
        alignment = analyse_pair(run, src, result.tokens, limits, threshold, alternatives, tgt_text=result.text)
    return {"source": src, "translation": translation, "alignment": alignment}


# -- VQA ------------------------------------------------------------------------------------------------
def _pil():
    from varattn.extras import optional_import

    optional_import("PIL", "vqa", "reading images")
    import PIL.Image

    return PIL


def decode_image(data: bytes, limits: Limits):
    """An uploaded PNG or JPEG as an RGB Pillow image; anything else is a :class:`BadRequest`.

    The format is what Pillow reads in the file's header (never the name or the stated type); the size is
    checked from the header before the pixels are decoded.
    """
    PIL = _pil()
    if not data:
        raise BadRequest("the image is empty")
    try:
        image = PIL.Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))
    except PIL.Image.DecompressionBombError:
        raise BadRequest("the image has too many pixels", 413) from None
    except (PIL.UnidentifiedImageError, OSError, ValueError):
        raise BadRequest(f"the upload is not an image of a supported type ({', '.join(IMAGE_FORMATS)})", 415) from None
    width, height = image.size
    if width * height > limits.max_image_pixels or not width or not height:
        raise BadRequest(f"the image is {width}x{height} pixels; the limit is {limits.max_image_pixels} pixels", 413)
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, PIL.Image.DecompressionBombError, SyntaxError) as exc:
        raise BadRequest(f"the image cannot be decoded: {exc}", 400) from None


def answer(run: ServedRun, question: str, image, answer: str | None = None) -> dict:
    """A VQA run's answers to ``question`` about ``image`` (an RGB Pillow image or a uint8 array) and the regions.

    ``answers``: every answer with its probability, best first; ``regions``: ``answer`` (what the posteriors
    condition on: ``answer`` if given, else the top answer), ``grid`` ``[rows, cols]``, and per method its
    ``title``, ``probs`` (one per region, row by row) and ``entropy`` (nats); ``unknown_words`` and
    ``question_words``.
    """
    trained = run.trained
    if trained.model.cnn is None:
        raise BadRequest("this run reads precomputed region features; varattn serve answers questions about "
                         "pictures (easy-VQA runs)")
    if answer is not None and answer not in trained.answers:
        raise BadRequest(f"{answer!r} is not one of the run's {len(trained.answers)} answers")
    unknown, words = trained.unknown_words(question)
    answers = trained.answer(question, image=image, top=len(trained.answers))
    regions = trained.regions(question, image=image, answer=answer)
    out = {"answer": regions.answer, "grid": list(regions.grid) if regions.grid else None}
    for m in run.methods:
        probs = torch.from_numpy(getattr(regions, m)).double()
        out[m] = {"title": REGION_TITLES[m], "probs": [round(float(p), DECIMALS) for p in probs.tolist()],
                  "entropy": _entropy(probs.unsqueeze(0))[0]}
    return {"answers": [{"answer": a, "probability": round(p, DECIMALS)} for a, p in answers], "regions": out,
            "unknown_words": unknown, "question_words": words}
