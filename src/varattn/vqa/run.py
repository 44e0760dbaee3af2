"""A trained VQA run: ``varattn.load(run_dir)`` returns a ``TrainedVQA`` that answers questions.

A run directory (written by the training core) holds ``run.json`` (``"task": "vqa"``, the config,
the model sizes), ``vocab.words.txt`` and ``vocab.answers.txt``, and the weights in ``best/`` and
``last/`` (safetensors; nothing is ever unpickled).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from varattn.errors import VarattnError
from varattn.extras import optional_import
from varattn.latent import MaskedCategorical
from varattn.training.run_info import RUN_FILE, check_size
from varattn.training.trained import RunParts, TrainedRun
from varattn.vqa.config import VQAConfig
from varattn.vqa.data import BatchSpec, QuestionSet, RegionSource, make_batch
from varattn.vqa.datasets import WORD_SPECIALS, easy_test, feature_split
from varattn.vqa.evaluate import figures, summed
from varattn.vqa.features import open_features
from varattn.vqa.model import VQAModel
from varattn.vqa.task import ANSWERS_FILE, WORDS_FILE, batch_specs
from varattn.vqa.text import Vocab, tokenize_question


@dataclass
class Regions:
    """What one question looked at: ``prior``, ``posterior`` (q, or None) and ``exact`` posterior over regions.

    ``grid`` is ``(rows, cols)`` for a CNN grid, ``boxes`` ``(R, 4)`` (x1, y1, x2, y2) for region
    features that come with boxes; ``answer`` is the answer the posteriors condition on.
    """

    prior: np.ndarray
    posterior: np.ndarray | None
    exact: np.ndarray
    answer: str
    grid: tuple[int, int] | None = None
    boxes: np.ndarray | None = None


@dataclass
class TrainedVQA(TrainedRun):
    """A trained VQA model loaded from a run directory: ``answer``, ``regions``, ``evaluate``.

    Attributes (beside ``run_dir``, ``config``, ``model``, ``objective`` and ``meta``, see
    ``varattn.training.trained.TrainedRun``):
        words, answers: the question-word and answer vocabularies.
    """

    config: VQAConfig
    model: VQAModel
    words: Vocab
    answers: Vocab

    # -- inputs ------------------------------------------------------------------------------------
    def _image_regions(self, image) -> dict[str, torch.Tensor]:
        """A picture (path, PIL image or ``(H, W, 3)`` uint8 array) as the CNN's input."""
        optional_import("PIL", "vqa", "reading images")
        from PIL import Image

        if self.model.cnn is None:
            raise VarattnError("this run reads precomputed region features: give image_id= and features= instead "
                               "of an image")
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as im:
                    image = im.convert("RGB").resize((64, 64))
            except (OSError, ValueError) as exc:
                raise VarattnError(f"cannot read the image {image}: {exc}") from None
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB").resize((64, 64)))
        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise VarattnError(f"an image must be (H, W, 3) RGB, got shape {pixels.shape}")
        return {"images": torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).unsqueeze(0)}

    def _feature_regions(self, image_id, features) -> tuple[dict[str, torch.Tensor], np.ndarray | None]:
        if self.model.cnn is not None:
            raise VarattnError("this run reads raw images: give image= instead of image_id=")
        path = features or self.config.data.valid_features or self.config.data.train_features
        store = open_features(path, self.model.cfg.feature_dim)
        feats, boxes = store.get(_key(image_id))
        feats = feats[: self.config.data.max_regions]
        return ({"features": torch.from_numpy(feats).unsqueeze(0),
                 "region_mask": torch.ones(1, feats.shape[0], dtype=torch.bool)},
                None if boxes is None else boxes[: feats.shape[0]])

    def _encode(self, question: str, image=None, image_id=None, features=None):
        if (image is None) == (image_id is None):
            raise VarattnError("give an image (easy-VQA runs) or an image_id (region-feature runs)")
        boxes = None
        if image is not None:
            regions = self._image_regions(image)
        else:
            regions, boxes = self._feature_regions(image_id, features)
        tokens = self.words.encode(self.question_words(question))
        words = torch.tensor([tokens], dtype=torch.long)
        regions = {k: v.to(self.device) for k, v in regions.items()}
        enc = self.model.encode(words.to(self.device), torch.tensor([len(tokens)]), regions)
        return enc, boxes

    def question_words(self, question: str) -> list[str]:
        """The question's words as the model reads them; an empty question (no words) is a VarattnError."""
        words = tokenize_question(question, self.config.data.max_question_len)
        if not words:
            raise VarattnError(f"the question {question!r} has no words: ask a question")
        return words

    def unknown_words(self, question: str) -> tuple[int, int]:
        """``(unknown, total)``: how many of the question's words the model does not know (read as ``<unk>``)."""
        words = self.question_words(question)
        return sum(1 for w in words if w not in self.words), len(words)

    # -- answering -----------------------------------------------------------------------------------
    @torch.no_grad()
    def answer(self, question: str, image=None, image_id=None, features=None, top: int = 5) -> list[tuple[str, float]]:
        """The ``top`` most probable answers with their probabilities.

        ``image``: a picture (path, PIL image or uint8 array) for easy-VQA runs; ``image_id`` (and
        ``features``: a feature file, default the run's validation features) for region-feature runs.
        """
        enc, _ = self._encode(question, image, image_id, features)
        probs = self.model.answer_log_probs(enc, self.objective).exp()[0]  # (A,)
        values, index = probs.topk(min(top, probs.shape[0]))
        return [(self.answers.itos[i], float(v)) for v, i in zip(values.tolist(), index.tolist())]

    @torch.no_grad()
    def regions(self, question: str, image=None, image_id=None, features=None, answer: str | None = None) -> Regions:
        """Prior, inference-network posterior and exact posterior over the regions for ``answer``
        (default: the model's top answer)."""
        enc, boxes = self._encode(question, image, image_id, features)
        if answer is None:
            answer = self.answer(question, image, image_id, features, top=1)[0][0]
        if answer not in self.answers:
            raise VarattnError(f"{answer!r} is not one of the run's {len(self.answers)} answers")
        a = torch.tensor([[self.answers.stoi[answer]]], device=self.device)
        prior = self.model.prior(enc)
        emit = self.model.region_log_probs(enc)[:, :, a[0, 0]].unsqueeze(1)  # (1, 1, R)
        exact = MaskedCategorical(prior.log_probs + emit, enc.region_mask.unsqueeze(1)).probs
        post = None
        if self.objective.uses_posterior:
            post = MaskedCategorical(self.model.posterior_scores(enc, a), enc.region_mask.unsqueeze(1)).probs
        grid = None
        if self.model.cnn is not None:
            side = int(round(enc.regions.shape[1] ** 0.5))
            grid = (side, enc.regions.shape[1] // side)
        flat = lambda t: t[0, 0].cpu().numpy()  # noqa: E731
        return Regions(flat(prior.probs), None if post is None else flat(post), flat(exact), answer, grid, boxes)

    # -- evaluation ----------------------------------------------------------------------------------
    def eval_set(self, split: str = "test", questions=None, annotations=None, features=None,
                 limit: int | None = None) -> tuple[QuestionSet, RegionSource]:
        """Questions to evaluate: easy-VQA's ``test`` split or the run's ``valid`` split, or VQA 2.0 files."""
        data = self.config.data
        if data.source == "easy-vqa":
            if questions or annotations or features:
                raise VarattnError("an easy-VQA run evaluates on easy-VQA (--split test or valid), not on files")
            if split == "valid":
                from varattn.vqa.datasets import prepare_easy

                prepared = prepare_easy(data, self.words)
                qs, source = prepared.valid, prepared.valid_source
            else:
                sliced = dataclasses.replace(data, limit_test=limit) if limit else data
                qs, source = easy_test(sliced, self.words, self.answers)
        else:
            qs, source = feature_split(questions or data.valid_questions,
                                       annotations if questions else data.valid_annotations,
                                       features or data.valid_features or data.train_features, self.words,
                                       self.answers, data, self.model.cfg.feature_dim)
        return (qs.subset(range(min(limit, len(qs)))), source) if limit else (qs, source)

    @torch.no_grad()
    def evaluate(self, split: str = "test", questions=None, annotations=None, features=None,
                 batch_size: int = 256, limit: int | None = None) -> dict:
        """``accuracy``, ``nll``, ``elbo_nll``, ``prior_entropy``, ``posterior_entropy``, ``questions`` (see
        ``varattn.vqa.evaluate``) on ``split`` or the given VQA 2.0 files."""
        qs, source = self.eval_set(split, questions, annotations, features, limit)
        if len(qs) == 0:
            raise VarattnError("no questions to evaluate")
        batches = (make_batch(qs, spec, source) for spec in batch_specs(list(range(len(qs))), batch_size))
        out = figures(summed(self.model, self.objective, batches, self.device), self.objective)
        out["mode"] = self.mode
        return out


def _key(image_id):
    try:
        return int(image_id)
    except (TypeError, ValueError):
        return str(image_id)


def open_trained(parts: RunParts) -> TrainedVQA:
    """The VQA part of opening a run (``varattn.training.trained.load_trained`` does the rest): the word and
    answer vocabularies, checked against the model sizes, and the model with its weights."""
    run_dir, model_cfg = parts.run_dir, parts.model
    words = Vocab.load(run_dir / WORDS_FILE, WORD_SPECIALS)
    check_size(run_dir / WORDS_FILE, len(words), model_cfg.num_words, f"model's word embedding ({RUN_FILE})")
    answers = Vocab.load(run_dir / ANSWERS_FILE)
    check_size(run_dir / ANSWERS_FILE, len(answers), model_cfg.num_answers, f"model's answer layer ({RUN_FILE})")
    model = VQAModel(model_cfg, with_inference=parts.objective.uses_posterior,
                     with_precision=parts.objective.needs_precision)
    return TrainedVQA(run_dir=run_dir, config=parts.config, model=model, objective=parts.objective,
                      meta=parts.load_weights(model), words=words, answers=answers)


def load_run(run_dir: str | Path, which: str = "best", device: str | None = "auto") -> TrainedVQA:
    """Load ``RUN_DIR/{best,last}`` of a VQA run with its config and vocabularies onto ``device``."""
    from varattn.vqa.registration import VQA

    return VQA.load(run_dir, which, device)


__all__ = ["BatchSpec", "Regions", "TrainedVQA", "load_run", "open_trained"]
