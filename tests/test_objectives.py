"""The objectives against brute-force enumeration on small random problems."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from varattn.errors import VarattnError
from varattn.latent import (
    AlignmentProblem,
    ContextPredictor,
    LossTerms,
    Objective,
    Option,
    make_objective,
    mode_names,
    objective_class,
    objectives,
    register,
)
from varattn.latent.options import positive
from varattn.latent.toy import flat_grad, make_toy
from varattn.objective_options import objective_section

ALL_MODES = mode_names()


def brute_force_log_likelihood(toy) -> torch.Tensor:
    """log p(y | x) per sentence by summing over *every* alignment sequence z_1..z_T.

    Uses ``emission.log_prob`` at one-hot weights (not the enumeration path under test).
    """
    problem = toy.problem()
    prior = problem.prior().log_probs.detach()  # (B, T, S)
    b, t, s = prior.shape
    out = []
    for i in range(b):
        valid_s = int(toy.source_mask[i].sum())
        valid_t = int(toy.target_mask[i].sum())
        # log f at each one-hot position, computed independently per position
        eye = torch.eye(s, dtype=prior.dtype)
        log_f = torch.stack([problem.emission.log_prob(eye[j].expand(b, t, s))[i] for j in range(s)], -1)
        terms = []
        for z in itertools.product(range(valid_s), repeat=valid_t):
            terms.append(sum(prior[i, k, z[k]] + log_f[k, z[k]] for k in range(valid_t)))
        out.append(torch.logsumexp(torch.stack(terms), 0))
    return torch.stack(out).detach()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    src_lens=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    tgt_len=st.integers(1, 3),
)
def test_exact_log_marginal_equals_brute_force(seed, src_lens, tgt_len):
    toy = make_toy(seed, batch=len(src_lens), tgt_len=tgt_len, src_len=max(src_lens), lengths=src_lens)
    for mode in ("marginal", "var-enum", "hard-sample"):
        scores = make_objective(mode).score(toy.problem(chunk_rows=3))
        per_sentence = scores.log_likelihood.sum(-1).detach()
        torch.testing.assert_close(per_sentence, brute_force_log_likelihood(toy), rtol=1e-9, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), src_len=st.integers(1, 5))
def test_elbo_below_marginal_and_tight_at_true_posterior(seed, src_len):
    toy = make_toy(seed, src_len=src_len, lengths=[src_len, max(1, src_len - 2)])
    problem = toy.problem()
    scores = make_objective("var-enum").score(problem)
    log_marginal, elbo = scores.log_likelihood, scores.figures["elbo"]
    assert torch.all(elbo <= log_marginal + 1e-10)
    # The exact posterior p(z | x, y) ∝ p(z) f(x, z)_y makes the bound tight.
    exact_post = (problem.prior().log_probs + problem.emission.log_prob_all()).detach()
    tight = make_objective("var-enum").score(toy.problem(posterior=exact_post)).figures["elbo"]
    torch.testing.assert_close(tight, log_marginal, rtol=1e-9, atol=1e-9)
    # ...and the training loss of var-enum reports the same ELBO.
    terms = make_objective("var-enum").loss(toy.problem(posterior=exact_post))
    torch.testing.assert_close(-terms.per_token["nll"], log_marginal.detach(), rtol=1e-9, atol=1e-9)


def test_hard_enum_is_jensen_bound():
    toy = make_toy(3, src_len=5)
    terms = make_objective("hard-enum").loss(toy.problem())
    assert torch.all(-terms.per_token["nll"] <= terms.per_token["log_marginal"] + 1e-12)


def _relative_error(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    return float((estimate - exact).norm() / exact.norm())


# Monte-Carlo gradient checks. Each call averages K independent single-sample estimates
# (the samples are i.i.d.); the tolerance is a relative L2 error chosen at about 4 standard
# errors for these fixed seeds and sizes.
@pytest.mark.parametrize(
    ("sampled", "enumerated", "options", "which", "tolerance"),
    [
        ("hard-sample", "hard-enum", {"num_samples": 40_000}, "all", 0.05),
        ("var-sample", "var-enum", {"num_samples": 40_000}, "all", 0.05),
        # RWS's self-normalised weights target the exact posterior: its model gradient tends
        # to the gradient of the log-marginal as K grows.
        ("rws", "marginal", {"num_samples": 40_000}, "model", 0.05),
        # Gumbel-softmax is biased; at a low temperature the emission gradient approaches
        # the enumerated one.
        ("var-gumbel", "var-enum", {"num_samples": 40_000, "temperature": 0.02}, "head", 0.08),
    ],
)
def test_sampled_gradient_matches_enumerated(sampled, enumerated, options, which, tolerance):
    torch.manual_seed(1234)
    toy = make_toy(7, batch=2, tgt_len=2, src_len=3, lengths=[3, 2])
    params = {
        "all": toy.parameters(),
        "model": [toy.prior_scores, *toy.head.parameters()],
        "head": list(toy.head.parameters()),
    }[which]
    exact = flat_grad(make_objective(enumerated).loss(toy.problem()).surrogate, params)
    estimate = flat_grad(make_objective(sampled, **options).loss(toy.problem()).surrogate, params)
    assert torch.isfinite(estimate).all()
    assert _relative_error(estimate, exact) < tolerance


def test_reinforce_without_prior_term_would_fail():
    """The hard-sample gradient reaches the prior (notes D.10): dropping it is detectable."""
    torch.manual_seed(0)
    toy = make_toy(7, batch=2, tgt_len=2, src_len=3, lengths=[3, 2])
    exact = flat_grad(make_objective("hard-enum").loss(toy.problem()).surrogate, [toy.prior_scores])
    sampled = flat_grad(
        make_objective("hard-sample", num_samples=40_000).loss(toy.problem()).surrogate, [toy.prior_scores]
    )
    assert exact.norm() > 0.1
    assert _relative_error(sampled, exact) < 0.05
    assert _relative_error(torch.zeros_like(exact), exact) == pytest.approx(1.0)


def test_relaxed_pathwise_gradient_matches_score_function():
    """The Dirichlet reparameterised gradient of E_q[log f] equals the score-function one."""
    torch.manual_seed(5)
    toy = make_toy(11, batch=1, tgt_len=1, src_len=3, scale=0.5)
    obj = make_objective("var-relaxed", num_samples=40_000)
    problem = toy.problem()
    post_d = obj._posterior(problem)
    z = post_d.rsample(40_000)
    pathwise = torch.autograd.grad(
        problem.emission.log_prob(z).mean(), toy.posterior_scores, retain_graph=True
    )[0]
    z_nograd = post_d.rsample(40_000).detach()
    log_f = problem.emission.log_prob(z_nograd).detach()
    centred = log_f - log_f.mean()
    score_fn = torch.autograd.grad((centred * post_d.log_prob(z_nograd)).mean(), toy.posterior_scores)[0]
    assert _relative_error(pathwise, score_fn) < 0.1


@pytest.mark.parametrize("mode", ALL_MODES)
def test_padding_gets_no_mass_and_no_nan(mode):
    torch.manual_seed(0)
    toy = make_toy(2, batch=3, tgt_len=4, src_len=5, lengths=[5, 2, 1], tgt_lengths=[4, 2, 1])
    problem = toy.problem(chunk_rows=7)
    assert torch.all(problem.prior().probs[~toy.source_mask[:, None, :].expand(-1, 4, -1)] == 0)
    terms = make_objective(mode).loss(problem)
    assert torch.isfinite(terms.surrogate)
    for name, value in terms.per_token.items():
        assert torch.isfinite(value).all(), name
        assert torch.all(value[~toy.target_mask] == 0), name
    grads = torch.autograd.grad(terms.surrogate, toy.parameters(), allow_unused=True)
    for g in grads:
        assert g is None or torch.isfinite(g).all()
    score = make_objective(mode).score(toy.problem())
    assert torch.isfinite(score.log_likelihood).all()


def test_target_padding_does_not_change_the_loss():
    short = make_toy(4, batch=1, tgt_len=2, src_len=3)
    padded = make_toy(4, batch=1, tgt_len=2, src_len=3, tgt_lengths=[1])
    for mode in ("marginal", "var-enum", "soft"):
        a = make_objective(mode).loss(short.problem()).per_token["nll"][0, 0]
        b = make_objective(mode).loss(padded.problem()).surrogate
        torch.testing.assert_close(a, b.detach())


def test_unknown_mode_lists_valid_names():
    with pytest.raises(VarattnError) as err:
        make_objective("variational")
    for name in ALL_MODES:
        assert name in str(err.value)


def test_mode_names_are_the_papers_nine():
    assert ALL_MODES == [
        "soft", "marginal", "hard-enum", "hard-sample", "var-enum", "var-sample", "var-relaxed", "var-gumbel", "rws",
    ]


def test_rws_bound_converges_to_log_marginal():
    torch.manual_seed(0)
    toy = make_toy(9, src_len=4)
    terms = make_objective("rws", num_samples=200_000).loss(toy.problem())
    log_marginal = make_objective("marginal").score(toy.problem()).log_likelihood.detach()
    # Measured for this seed: |error| 0.06 nats at K=2k, 0.05 at 20k, 0.007 at 200k.
    torch.testing.assert_close(-terms.per_token["nll"], log_marginal, atol=0.02, rtol=0)


def test_relaxed_importance_estimate_agrees_with_prior_sampling():
    """log E_q[p f / q] (the evaluation estimate) against plain Monte Carlo log E_p[f]."""
    torch.manual_seed(0)
    toy = make_toy(13, batch=1, tgt_len=2, src_len=3, scale=0.3)
    obj = make_objective("var-relaxed", eval_samples=100_000)
    problem = toy.problem()
    estimate = obj.score(problem).log_likelihood.detach()
    prior = obj._prior(problem)
    log_f = problem.emission.log_prob(prior.rsample(100_000)).detach()  # (N, B, T)
    direct = torch.logsumexp(log_f, 0) - math.log(100_000)
    # both estimators have relative standard error below 0.5% here; tolerance 0.03 nats
    torch.testing.assert_close(estimate, direct, atol=0.03, rtol=0)
    assert math.isfinite(float(estimate.sum()))


@pytest.mark.parametrize("mode", ALL_MODES)
def test_expected_alignments_per_mode(mode):
    """``prior_log_mean``/``posterior_mean``: categorical probabilities, or Dirichlet means from torch.distributions."""
    toy = make_toy(3, lengths=[4, 2])
    problem = toy.problem()
    # softplus concentrations: their Dirichlet mean differs from the softmax of the scores
    objective = make_objective(mode, **({"concentration": "softplus", "posterior_residual": False}
                                        if mode == "var-relaxed" else {}))
    log_mean = objective.prior_log_mean(problem).detach()  # (B, T, S)
    post = objective.posterior_mean(problem).detach() if objective.uses_posterior else None
    for b, n in enumerate([4, 2]):
        assert torch.isinf(log_mean[b, :, n:]).all()
        for t in range(log_mean.shape[1]):
            prior_scores, post_scores = problem.prior_scores[b, t, :n], problem.posterior_scores[b, t, :n]
            if objective.alignment_is_dirichlet:
                concentration = torch.nn.functional.softplus
                expected = torch.distributions.Dirichlet(concentration(prior_scores) + 1e-3).mean
                expected_post = torch.distributions.Dirichlet(concentration(post_scores) + 1e-3).mean
                assert not torch.allclose(expected, torch.softmax(prior_scores, -1))
            else:
                expected, expected_post = torch.softmax(prior_scores, -1), torch.softmax(post_scores, -1)
            torch.testing.assert_close(log_mean[b, t, :n].exp(), expected.detach())
            if post is not None:
                torch.testing.assert_close(post[b, t, :n], expected_post.detach())
                assert not post[b, t, n:].any()
    assert objective.supports_kmax == (not objective.alignment_is_dirichlet)
    assert (objective.importance_samples is not None) == objective.alignment_is_dirichlet


# -- the registry and the options an objective declares ----------------------------------------------
class _Halved(Objective):
    """A tenth objective for the registry tests: the marginal likelihood, halved."""

    name = "halved"
    description = "half the marginal likelihood (a test objective)"
    option_rules = {"factor": positive}

    def __init__(self, factor: float = 0.5):
        self.factor = factor

    def loss(self, problem: AlignmentProblem) -> LossTerms:
        log_marginal = self.score(problem).log_likelihood
        return LossTerms(-(self.factor * log_marginal).sum(), {"nll": -log_marginal.detach()}, problem.target_mask)


@pytest.fixture()
def registry(monkeypatch):
    """The registry, restored after the test."""
    monkeypatch.setattr(objectives, "_REGISTRY", dict(objectives._REGISTRY))
    return objectives._REGISTRY


def test_a_registered_objective_is_listed_last_and_usable(registry):
    register(_Halved)
    assert mode_names() == [*ALL_MODES, "halved"]
    objective = make_objective("halved", factor=0.25)
    toy = make_toy(2)
    terms = objective.loss(toy.problem())
    log_marginal = make_objective("marginal").score(toy.problem()).log_likelihood
    torch.testing.assert_close(terms.surrogate, -0.25 * log_marginal.sum())
    assert objective_class("halved").option_schema()["factor"] == Option("factor", float, 0.5, positive)
    with pytest.raises(VarattnError, match="a name of its own"):
        register(_Halved)


def test_a_registered_objectives_options_are_checked_from_its_declaration(registry):
    register(_Halved)
    assert objective_section("halved", {"factor": "0.1"}) == {"factor": 0.1}
    with pytest.raises(VarattnError, match="objective.factor must be positive"):
        objective_section("halved", {"factor": -1})
    with pytest.raises(VarattnError, match="objective.halved.factor must be a number"):
        objective_section("soft", {"halved": {"factor": "big"}})


def test_a_rule_must_name_an_option():
    class Misspelt(_Halved):
        name = "misspelt"
        option_rules = {"facter": positive}

    with pytest.raises(VarattnError, match="names no option: facter"):
        Misspelt.option_schema()


# -- the predictive rule ------------------------------------------------------------------------------
def _predictor_problem(seed=4):
    toy = make_toy(seed, batch=3, tgt_len=2, src_len=4, lengths=[4, 2, 3])
    problem = toy.problem()
    n, s = 6, 4
    query = toy.query.reshape(n, -1)  # (B*T, Dq)
    memory = toy.memory.repeat_interleave(2, 0)  # (B*T, S, Dc): each target row with its sentence's memory
    scores = problem.prior_scores.detach().reshape(n, s)  # (B*T, S), -inf at padding
    return toy, ContextPredictor(toy.head, query, memory), scores


@pytest.mark.parametrize("mode", ["marginal", "soft", "var-relaxed", "var-enum"])
def test_predictive_rules_against_one_position_at_a_time(mode):
    """marginal: log sum_i p_i f(x, i); soft and the relaxed prior mean: log f(x, E_p[z]); every word."""
    toy, predictor, scores = _predictor_problem()
    objective = make_objective(mode)
    with torch.no_grad():
        got = objective.predict_log_probs(predictor, scores)  # (N, V)
        p = torch.softmax(scores, -1)  # (N, S)
        if objective.predicts_mixture:
            eye = torch.eye(4, dtype=p.dtype)
            each = torch.stack([predictor.log_probs(eye[i].expand_as(p)) for i in range(4)], 1)  # (N, S, V)
            want = torch.log((p.unsqueeze(-1) * each.exp()).sum(1))
        else:
            want = predictor.log_probs(p)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(6, dtype=got.dtype))


def test_sampled_rule_averages_the_output_over_prior_dirichlet_draws():
    toy, predictor, scores = _predictor_problem()
    objective = make_objective("var-relaxed")
    with torch.no_grad():
        torch.manual_seed(3)
        got = objective.predict_log_probs(predictor, scores, samples=7)
        torch.manual_seed(3)
        z = objective.prediction_sampler(7)(scores)  # (K, N, S)
        want = torch.stack([predictor.log_probs(z[k]) for k in range(7)]).exp().mean(0).log()
    torch.testing.assert_close(got, want)
    with pytest.raises(VarattnError, match="exactly"):
        make_objective("marginal").predict_log_probs(predictor, scores, samples=2)


def test_the_emissions_predictor_agrees_with_the_plain_one():
    """Teacher-forced prediction (accuracy): the emission's predictor against ``ContextPredictor`` row by row."""
    toy = make_toy(8, batch=2, tgt_len=3, src_len=4, lengths=[4, 2], tgt_lengths=[3, 2])
    for chunk_rows in (1, 5, 1000):
        problem = toy.problem(chunk_rows=chunk_rows)
        scores = problem.prior_scores.detach()
        plain = ContextPredictor(toy.head, toy.query.reshape(6, -1), toy.memory.repeat_interleave(3, 0))
        for mode in ("marginal", "soft"):
            objective = make_objective(mode)
            with torch.no_grad():
                got = objective.predict_log_probs(problem.emission.predictor(), scores)  # (B, T, V)
                want = objective.predict_log_probs(plain, scores.reshape(6, 4)).reshape(2, 3, -1)
            real = toy.target_mask
            torch.testing.assert_close(got[real], want[real])
            if mode == "marginal":
                assert torch.isinf(got[~real]).all()
