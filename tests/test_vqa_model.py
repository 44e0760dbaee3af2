"""The VQA model against brute force, and the VQA metric on hand-made annotations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from varattn.latent import make_objective, mode_names
from varattn.vqa.data import BatchSpec, FeatureSource, QuestionSet, make_batch, vqa_score
from varattn.vqa.evaluate import batch_sums
from varattn.vqa.model import VQAModel, VQAModelConfig
from varattn.vqa.text import normalize_answer, tokenize_question


class _Store:
    """An in-memory feature store: image id -> (k, D) features."""

    def __init__(self, feats: dict):
        self.feats = feats
        self.dim = next(iter(feats.values())).shape[1]

    def has(self, key):
        return key in self.feats

    def get(self, key):
        return self.feats[key], None


def _setup(seed=0, dim=6, answers=5):
    gen = torch.Generator().manual_seed(seed)
    cfg = VQAModelConfig(num_words=9, num_answers=answers, feature_dim=dim, embed_dim=4, question_hidden=5,
                         attention_dim=7, output_hidden=8, answer_embed_dim=3, inference_hidden=6, dropout=0.0)
    torch.manual_seed(seed)
    model = VQAModel(cfg).eval()
    # three images with 4, 2 and 3 regions: the batch pads to 4 and masks the rest
    feats = {k: torch.randn(n, dim, generator=gen).numpy() for k, n in [(10, 4), (11, 2), (12, 3)]}
    qs = QuestionSet(question_ids=[1, 2, 3], texts=["a", "b", "c"], words=[[2, 3], [4], [5, 6, 7]],
                     image_ids=[10, 11, 12], answers=[[(0, 3), (2, 1)], [(4, 2)], [(1, 1), (3, 2), (2, 7)]],
                     annotators=[10, 10, 10])
    return model, qs, FeatureSource(_Store(feats))


def _brute_force(model, batch):
    """log p(a | x) = log sum_i p(z=i) f(x, i)_a with an explicit loop over the real regions."""
    enc = model.encode(batch.words, batch.lengths, batch.regions)
    out = torch.zeros(batch.answers.shape, dtype=torch.float64)
    for b in range(batch.answers.shape[0]):
        real = [i for i in range(enc.regions.shape[1]) if batch.regions["region_mask"][b, i]]
        scores = torch.stack([model.prior_scores(enc)[b, i] for i in real]).double()
        log_p = scores - torch.logsumexp(scores, 0)
        for t in range(batch.answers.shape[1]):
            if not batch.answer_mask[b, t]:
                continue
            terms = []
            for k, i in enumerate(real):
                pre = model.head.query_proj(enc.query[b]) + model.head.context_proj(enc.regions[b, i])
                logits = model.head.generator(torch.relu(pre)).double()
                terms.append(log_p[k] + torch.log_softmax(logits, 0)[batch.answers[b, t]])
            out[b, t] = torch.logsumexp(torch.stack(terms), 0)
    return out


@pytest.mark.parametrize("mode", [m for m in mode_names() if make_objective(m).predicts_mixture])
def test_exact_likelihood_matches_enumeration_over_regions(mode):
    model, qs, source = _setup()
    batch = make_batch(qs, BatchSpec([0, 1, 2]), source)
    assert batch.regions["region_mask"].sum(1).tolist() == [4, 2, 3]
    objective = make_objective(mode)
    with torch.no_grad():
        enc = model.encode(batch.words, batch.lengths, batch.regions)
        problem = model.problem(enc, batch.answers, batch.answer_mask, objective.uses_posterior)
        got = objective.score(problem).log_likelihood
        want = _brute_force(model, batch)
        assert torch.allclose(got.double(), want, atol=1e-5), (got, want)
        # the full answer distribution agrees at the gold answers and sums to one
        full = model.answer_log_probs(enc, objective)  # (B, A)
        assert torch.allclose(torch.logsumexp(full, -1), torch.zeros(3), atol=1e-5)
        at_gold = full.gather(1, batch.answers) * batch.answer_mask
        assert torch.allclose(at_gold.double(), want, atol=1e-5)
    assert torch.isfinite(got).all()


def test_masked_regions_get_no_mass_and_no_nan():
    model, qs, source = _setup(seed=3)
    batch = make_batch(qs, BatchSpec([0, 1, 2]), source)
    model.train()
    objective = make_objective("var-sample")
    enc = model.encode(batch.words, batch.lengths, batch.regions)
    problem = model.problem(enc, batch.answers, batch.answer_mask, True)
    terms = objective.loss(problem)
    terms.surrogate.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    probs = model.prior(enc).probs.squeeze(1)
    assert float(probs[1, 2:].detach().abs().sum()) == 0.0 and float(probs[2, 3:].detach().abs().sum()) == 0.0


def test_vqa_score_on_hand_made_annotations():
    counts = torch.tensor([0.0, 1.0, 2.0, 3.0, 7.0, 1.0])
    annotators = torch.tensor([10.0, 10.0, 10.0, 10.0, 10.0, 1.0])
    assert vqa_score(counts, annotators).tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0])


def test_accuracy_of_a_forced_prediction():
    """Accuracy follows the annotators' counts of whatever answer the model predicts."""
    model, qs, source = _setup(seed=1)
    with torch.no_grad():
        model.head.generator.weight.zero_()
        model.head.generator.bias.copy_(torch.tensor([0.0, 0.0, 9.0, 0.0, 0.0]))  # always answer 2
        sums = batch_sums(model, make_objective("marginal"), make_batch(qs, BatchSpec([0, 1, 2]), source))
    # question 1: answer 2 given by 1 of 10 -> 1/3; question 2: not given -> 0; question 3: 7 of 10 -> 1
    assert sums["correct"] == pytest.approx(1 / 3 + 0 + 1)
    # NLL: the annotator-weighted NLL of the in-vocabulary answers
    log_p = torch.log_softmax(torch.tensor([0.0, 0.0, 9.0, 0.0, 0.0]), 0)
    want = -(0.75 * log_p[0] + 0.25 * log_p[2]) - log_p[4] - (log_p[1] + 2 * log_p[3] + 7 * log_p[2]) / 10
    assert sums["nll"] == pytest.approx(float(want), rel=1e-5)
    assert sums["prior_entropy"] <= math.log(4) + math.log(2) + math.log(3) + 1e-5


def test_sampled_answers_follow_annotator_counts():
    qs = QuestionSet([1], ["q"], [[2]], [0], [[(0, 1), (1, 3)]], [10])
    rng = np.random.default_rng(0)
    draws = qs.sample_answers([0] * 4000, rng)
    share = draws.count(1) / len(draws)
    assert abs(share - 0.75) < 0.03  # 4000 draws: standard error 0.007, tolerance over 4 of them


def test_question_tokens_and_answer_normalisation():
    assert tokenize_question("What's on the man's plate?") == ["what's", "on", "the", "man", "'s", "plate"]
    assert tokenize_question("Is it red, or blue?", max_len=3) == ["is", "it", "red"]
    assert normalize_answer("Two dogs.") == "2 dogs"
    assert normalize_answer(" The Yes ") == "yes"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer("dont know") == "don't know"
