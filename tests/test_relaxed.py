"""The relaxed (Dirichlet) model as the paper trains and evaluates it: warm-up by default in the shipped
configs, per-mode objective options, the importance-sampled perplexity (a stochastic lower bound on the
log-likelihood) with its sample count, and prediction from sampled alignments."""

from __future__ import annotations

import json
import math

import pytest
import torch

from varattn.cli import main
from varattn.errors import VarattnError
from varattn.latent import AlignmentSampler, make_objective, mode_names, mode_options
from varattn.latent.toy import make_toy
from varattn.nmt.config import load_config

TINY = ["model.embed_dim=8", "model.encoder_hidden=8", "model.decoder_hidden=8", "model.attention_dim=8",
        "model.output_hidden=8", "model.inference_hidden=8", "synthetic_sizes=[40,8,8]", "valid_batch_size=8",
        "threads=1"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- options and the warm-up -----------------------------------------------------------------------
def test_mode_sections_apply_only_to_their_mode():
    options = {"var-relaxed": {"warmup_steps": 7, "num_samples": 2}, "rws": {"num_samples": 9}}
    assert mode_options("var-relaxed", options) == {"num_samples": 2, "warmup_steps": 7}
    assert mode_options("rws", options) == {"num_samples": 9}
    assert mode_options("var-sample", options) == {}
    # keys outside the sections apply to the trained mode and win over its section (command-line --set)
    options["num_samples"] = 3
    assert mode_options("var-relaxed", options) == {"num_samples": 3, "warmup_steps": 7}
    assert mode_options("var-sample", options) == {"num_samples": 3}
    assert make_objective("var-relaxed", **options).warmup_steps == 7
    assert make_objective("soft", **{"var-relaxed": {"warmup_steps": 7}}).name == "soft"
    with pytest.raises(VarattnError, match="must be a mapping"):
        make_objective("var-relaxed", **{"var-relaxed": 5})
    with pytest.raises(VarattnError, match="bad options"):
        make_objective("var-relaxed", **{"var-relaxed": {"warmup": 5}})


@pytest.mark.parametrize("config", ["toy", "small", "iwslt14"])
def test_shipped_configs_warm_the_relaxed_model_up_and_serve_every_mode(config):
    for mode in mode_names():
        cfg = load_config(config, {"mode": mode})
        objective = make_objective(cfg.mode, **cfg.objective)
        if objective.name == "var-relaxed":
            assert objective.warmup_steps > 0


def test_warmup_trains_the_prior_bound_then_brings_in_q():
    torch.manual_seed(0)
    toy = make_toy(3, batch=2, tgt_len=3, src_len=4)
    objective = make_objective("var-relaxed", warmup_steps=5)
    objective.set_step(4)
    terms = objective.loss(toy.problem())
    assert "kl" not in terms.per_token
    grad = torch.autograd.grad(terms.surrogate, toy.posterior_scores, allow_unused=True)[0]
    assert grad is None or float(grad.abs().sum()) == 0.0  # q is not trained during the warm-up
    objective.set_step(5)
    terms = objective.loss(toy.problem())
    assert float(terms.per_token["kl"].sum()) > 0
    grad = torch.autograd.grad(terms.surrogate, toy.posterior_scores)[0]
    assert float(grad.abs().sum()) > 0


# -- the importance-sampled estimate ----------------------------------------------------------------
def test_sample_count_is_settable_only_where_the_estimate_is_sampled():
    relaxed = make_objective("var-relaxed")
    assert relaxed.importance_samples is not None
    relaxed.set_eval_samples(64)
    assert relaxed.eval_samples == 64
    with pytest.raises(VarattnError):
        relaxed.set_eval_samples(0)
    for mode in mode_names():
        objective = make_objective(mode)
        if objective.importance_samples is None:
            with pytest.raises(VarattnError, match="exactly"):
                objective.set_eval_samples(10)


def _truth(objective, problem, samples=200_000):
    """log E_Dir(p)[f(x, z)] by plain Monte Carlo from the prior, with many samples."""
    prior, _ = objective._dirichlets(problem)
    log_f = problem.emission.log_prob(prior.rsample(samples)).detach()  # (N, B, T)
    return torch.logsumexp(log_f, 0) - math.log(samples)


def test_estimate_is_a_stochastic_lower_bound_that_tightens_with_samples():
    """E[log mean_n w_n] <= log E[w] (Jensen), and the gap shrinks as N grows.

    A problem where q and the prior disagree (scores drawn independently, wide): over 200 seeds the mean
    5-sample estimate lies below the truth by more than 3 standard errors, and the 500-sample one is
    closer to the truth than the 5-sample one.
    """
    torch.manual_seed(1)
    toy = make_toy(21, batch=1, tgt_len=1, src_len=4, scale=1.5)
    objective = make_objective("var-relaxed")
    problem = toy.problem()
    with torch.no_grad():
        truth = float(_truth(objective, problem).sum())
        gaps = {}
        for samples in (5, 500):
            objective.set_eval_samples(samples)
            values = torch.tensor([float(objective.score(problem).log_likelihood.sum()) for _ in range(200)])
            gaps[samples] = (truth - float(values.mean()), float(values.std()) / math.sqrt(len(values)))
    gap5, se5 = gaps[5]
    assert gap5 > 3 * se5, gaps
    assert abs(gaps[500][0]) < gap5, gaps


def test_estimate_in_chunks_matches_one_pass():
    """Chunking the importance samples bounds memory and leaves the figure alone.

    torch draws Gamma variates element after element, so 4 chunks of 3 samples consume the random stream
    exactly as 12 samples at once: under one seed both paths see the same draws.
    """
    toy = make_toy(5, batch=2, tgt_len=3, src_len=4, lengths=[4, 2])
    problem = toy.problem()
    scores = []
    for chunk in (3, 1000):
        objective = make_objective("var-relaxed", eval_samples=12)
        objective.sample_chunk = chunk
        torch.manual_seed(3)
        with torch.no_grad():
            scores.append(objective.score(problem))
    torch.testing.assert_close(scores[0].log_likelihood, scores[1].log_likelihood)
    torch.testing.assert_close(scores[0].figures["elbo"], scores[1].figures["elbo"])


# -- sampled prediction ----------------------------------------------------------------------------
def test_alignment_sampler_draws_from_the_prior_dirichlet():
    torch.manual_seed(0)
    scores = torch.tensor([[0.5, -1.0, 2.0, float("-inf")], [1.0, 0.0, float("-inf"), float("-inf")]])
    sampler = make_objective("var-relaxed").prediction_sampler(20_000)
    assert isinstance(sampler, AlignmentSampler)
    z = sampler(scores)  # (K, N, S)
    assert z.shape == (20_000, 2, 4)
    assert torch.all(z[:, 0, 3] == 0) and torch.all(z[:, 1, 2:] == 0)
    torch.testing.assert_close(z.sum(-1), torch.ones(20_000, 2))
    alpha = scores.clamp(-10, 10).exp().nan_to_num(0.0) * torch.isfinite(scores)
    mean = alpha / alpha.sum(-1, keepdim=True)
    # the standard error of each mean is below 0.004 here; tolerance 0.015
    torch.testing.assert_close(z.mean(0), mean, atol=0.015, rtol=0)


def test_only_relaxed_models_sample_alignments():
    for mode in mode_names():
        objective = make_objective(mode)
        if objective.predictive != "prior-mean":
            with pytest.raises(VarattnError, match="exactly"):
                objective.prediction_sampler(5)


@pytest.fixture(scope="module")
def relaxed_run(tmp_path_factory):
    from varattn.nmt.train import train

    path = tmp_path_factory.mktemp("relaxed") / "run"
    cfg = load_config("toy", {"max_steps": 6, "mode": "var-relaxed"},
                      TINY + ["objective.var-relaxed.warmup_steps=3"])
    train(cfg, path, progress=False, tensorboard=False)
    return path


def test_translate_with_sampled_alignments(relaxed_run, tmp_path, capsys):
    src = tmp_path / "in.src"
    src.write_text("a b c\nd e\n")
    outputs = []
    for seed in (1, 1, 2):
        out = tmp_path / f"out{len(outputs)}.txt"
        assert main(["translate", str(relaxed_run), "--input", str(src), "--output", str(out), "--beam", "2",
                     "--sample-alignments", "4", "--seed", str(seed), "--device", "cpu"]) == 0
        outputs.append(out.read_text().splitlines())
    assert len(outputs[0]) == 2 and outputs[0] == outputs[1]  # a seed makes sampled decoding reproducible
    from varattn.nmt.run import load_run

    trained = load_run(relaxed_run, device="cpu")
    torch.manual_seed(0)
    sampled = trained.translate(["a b c"], beam=1, sample_alignments=2000)
    mean = trained.translate(["a b c"], beam=1)
    # with many samples the predictive distribution is close to E_Dir(p)[f], a proper distribution
    assert math.isfinite(sampled[0].log_prob) and math.isfinite(mean[0].log_prob)


def test_cli_samples_and_seed(relaxed_run, capsys):
    figures = []
    for seed in (5, 5):
        assert main(["evaluate", str(relaxed_run), "--json", "--samples", "8", "--seed", str(seed),
                     "--device", "cpu"]) == 0
        figures.append(json.loads(capsys.readouterr().out))
    assert figures[0]["importance_samples"] == 8
    assert figures[0]["ppl"] == figures[1]["ppl"]


def test_cli_refuses_sampling_options_for_exact_modes(tmp_path, capsys):
    from varattn.nmt.train import train

    path = tmp_path / "soft"
    train(load_config("toy", {"max_steps": 2, "mode": "soft"}, TINY), path, progress=False, tensorboard=False)
    assert main(["evaluate", str(path), "--samples", "8", "--device", "cpu"]) == 2
    assert "exactly" in capsys.readouterr().err
    src = tmp_path / "in.src"
    src.write_text("a b\n")
    assert main(["translate", str(path), "--input", str(src), "--sample-alignments", "3", "--device", "cpu"]) == 2
    assert "relaxed" in capsys.readouterr().err


def test_config_checks_every_mode_section_and_keeps_the_trained_modes_options():
    cfg = load_config("toy", {"mode": "soft"}, ["objective.var-relaxed.warmup_steps=7"])
    assert cfg.objective == {}
    cfg = load_config("toy", {"mode": "var-relaxed"}, ["objective.var-relaxed.warmup_steps=7"])
    assert cfg.objective == {"warmup_steps": 7}
    cfg = load_config("toy", {"mode": "var-relaxed"}, ["objective.warmup_steps=0"])  # over the shipped section
    assert cfg.objective == {"warmup_steps": 0}
    with pytest.raises(VarattnError, match="objective.var-relaxed"):
        load_config("toy", {"mode": "soft"}, ["objective.var-relaxed.warmup=7"])
    with pytest.raises(VarattnError, match="objective.var-relaxed.warmup_steps"):
        load_config("toy", {"mode": "soft"}, ["objective.var-relaxed.warmup_steps=-1"])
