"""The Transformer with a latent alignment (varattn.nmt.transformer, issue 21): its latent output against
brute-force enumeration, incremental decoding against the full pass, beam search, the builder and the
configs, the inverse-sqrt schedule, and the commands on a trained run."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from varattn.errors import VarattnError
from varattn.latent import make_objective
from varattn.nmt.batching import collate
from varattn.nmt.builder import MODEL_TYPES, build_model, model_config_from_dict
from varattn.nmt.config import load_config
from varattn.nmt.model import LatentAlignmentNMT, ModelConfig
from varattn.nmt.search import DecodingOptions, beam_search
from varattn.nmt.transformer import LatentAlignmentTransformer, TransformerConfig
from varattn.training.optim import inverse_sqrt_lr

from conftest import cli, one_line_error, set_flags

#: a tiny Transformer on the synthetic task, one thread
TINY_TRANSFORMER = ["model.d_model=8", "model.heads=2", "model.ffn_dim=16", "model.encoder_layers=1",
                    "model.decoder_layers=2", "model.attention_dim=8", "model.output_hidden=8",
                    "synthetic_sizes=[40,8,8]", "valid_batch_size=8", "batch_size=8", "threads=1",
                    "warmup_steps=4"]


def tiny_model(mode: str = "marginal", seed: int = 0, **sizes) -> tuple[LatentAlignmentTransformer, object]:
    torch.manual_seed(seed)
    cfg = TransformerConfig(src_vocab_size=11, tgt_vocab_size=9, d_model=8, heads=2, ffn_dim=16, encoder_layers=2,
                            decoder_layers=2, attention_dim=6, output_hidden=10, inference_layers=1, dropout=0.1,
                            **sizes)
    objective = make_objective(mode)
    model = build_model(cfg, objective)
    return model.eval(), objective


def tiny_batch():
    # two pairs of different lengths: padding on both sides (ids 4.. are words; 0-3 are specials)
    return collate([[4, 5, 6], [7, 8]], [[4, 5], [6, 7, 8]])


def stepwise(model, batch):
    """Queries (B, T, D) and prior log-probabilities (B, T, S) by incremental decoding, one token at a time."""
    enc = model.encode(batch.src, batch.src_lengths)
    state = model.initial_state(batch.src.shape[0], batch.src.device)
    queries, priors = [], []
    for t in range(batch.tgt_in.shape[1]):
        query, scores, state = model.decode_step(batch.tgt_in[:, t], state, enc)
        queries.append(query)
        priors.append(torch.log_softmax(scores, -1))
    return enc, torch.stack(queries, 1), torch.stack(priors, 1)


def brute_force_log_likelihood(model, batch) -> list[float]:
    """log p(y | x) per sentence by enumerating every alignment sequence z_1..z_T (S^T terms)."""
    enc, queries, log_prior = stepwise(model, batch)
    out = []
    for b in range(batch.src.shape[0]):
        S, T = int(batch.src_lengths[b]), int(batch.tgt_mask[b].sum())
        log_f = torch.empty(T, S)  # log f(y_t | x, z_t = i)
        for t in range(T):
            for i in range(S):
                pre = model.head.query_part(queries[b, t]) + model.head.context_part(enc.memory[b, i])
                log_f[t, i] = model.head.log_probs(pre)[batch.tgt_out[b, t]]
        terms = [sum(float(log_prior[b, t, z[t]] + log_f[t, z[t]]) for t in range(T))
                 for z in itertools.product(range(S), repeat=T)]
        out.append(float(torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0)))
    return out


@torch.no_grad()
@pytest.mark.parametrize("cross_attention, output_reads", [(True, "encoder"), (False, "encoder"), (True, "embedding")])
def test_exact_marginal_equals_enumeration_of_every_alignment(cross_attention, output_reads):
    model, objective = tiny_model("marginal", cross_attention=cross_attention, output_reads=output_reads)
    batch = tiny_batch()
    scores = objective.score(model.problem(batch, False))
    got = (scores.log_likelihood * batch.tgt_mask).sum(1).tolist()
    assert got == pytest.approx(brute_force_log_likelihood(model, batch), abs=1e-4)


@torch.no_grad()
def test_var_enum_elbo_equals_enumeration_and_bounds_the_likelihood():
    model, objective = tiny_model("var-enum", seed=3)
    batch = tiny_batch()
    problem = model.problem(batch, True)
    scores = objective.score(problem)
    enc, queries, log_prior = stepwise(model, batch)
    log_q = torch.log_softmax(problem.posterior_scores, -1)
    for b in range(2):
        S, T = int(batch.src_lengths[b]), int(batch.tgt_mask[b].sum())
        elbo = 0.0
        for t in range(T):
            for i in range(S):
                pre = model.head.query_part(queries[b, t]) + model.head.context_part(enc.memory[b, i])
                log_f = model.head.log_probs(pre)[batch.tgt_out[b, t]]
                q = float(log_q[b, t, i].exp())
                elbo += q * float(log_prior[b, t, i] + log_f - log_q[b, t, i])
        assert float((scores.figures["elbo"][b] * batch.tgt_mask[b]).sum()) == pytest.approx(elbo, abs=1e-4)
    exact = brute_force_log_likelihood(model, batch)
    elbos = (scores.figures["elbo"] * batch.tgt_mask).sum(1).tolist()
    assert all(e <= x + 1e-5 for e, x in zip(elbos, exact))


@torch.no_grad()
def test_soft_attention_reads_the_expected_source_vector():
    model, objective = tiny_model("soft")
    batch = tiny_batch()
    scores = objective.score(model.problem(batch, False))
    enc, queries, log_prior = stepwise(model, batch)
    for b in range(2):
        for t in range(int(batch.tgt_mask[b].sum())):
            context = (log_prior[b, t].exp().unsqueeze(-1) * enc.memory[b]).sum(0)
            pre = model.head.query_part(queries[b, t]) + model.head.context_part(context)
            want = model.head.log_probs(pre)[batch.tgt_out[b, t]]
            assert float(scores.log_likelihood[b, t]) == pytest.approx(float(want), abs=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("topk, cross_attention, output_reads",
                         [(None, True, "encoder"), (2, True, "encoder"), (None, False, "embedding")])
def test_incremental_decoding_equals_the_full_pass(topk, cross_attention, output_reads):
    model, _ = tiny_model("marginal", seed=1, cross_attention=cross_attention, output_reads=output_reads)
    batch = collate([[4, 5, 6, 7], [8, 9]], [[4, 5, 6, 7, 8], [6]])
    enc = model.encode(batch.src, batch.src_lengths)
    full_q, full_scores = model.decode(batch.tgt_in, enc, topk)
    state = model.initial_state(2, batch.src.device)
    for t in range(batch.tgt_in.shape[1]):
        query, scores, state = model.decode_step(batch.tgt_in[:, t], state, enc, topk)
        torch.testing.assert_close(query, full_q[:, t], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scores, full_scores[:, t], atol=1e-5, rtol=1e-5)
    assert torch.isinf(full_scores[1, :, 2:]).all()  # padding of the short source
    if topk is not None:
        assert (torch.isfinite(full_scores[0]).sum(-1) == topk).all()


@torch.no_grad()
def test_reordered_state_decodes_like_the_rows_it_came_from():
    model, _ = tiny_model("marginal", seed=2)
    batch = collate([[4, 5, 6], [7, 8, 9]], [[4, 5], [6, 7]])
    enc = model.encode(batch.src, batch.src_lengths)
    state = model.initial_state(2, batch.src.device)
    _, _, state = model.decode_step(batch.tgt_in[:, 0], state, enc)
    index = torch.tensor([1, 1, 0])
    q_sel, s_sel, _ = model.decode_step(batch.tgt_in[index, 1], state.select(index), enc.select(index))
    q, s, _ = model.decode_step(batch.tgt_in[:, 1], state, enc)
    torch.testing.assert_close(q_sel, q[index])
    torch.testing.assert_close(s_sel, s[index])


@torch.no_grad()
def test_beam_search_scores_are_the_exact_log_probability_of_the_hypothesis():
    model, objective = tiny_model("marginal", seed=4)
    src, lengths = torch.tensor([[4, 5, 6], [7, 8, 0]]), torch.tensor([3, 2])
    hyps = beam_search(model, src, lengths, objective, DecodingOptions(beam=3, max_len_a=0, max_len_b=4))
    for row, (best, *_) in enumerate(hyps):
        batch = collate([src[row, : lengths[row]].tolist()], [best.tokens])
        exact = float((objective.score(model.problem(batch, False)).log_likelihood * batch.tgt_mask).sum())
        assert best.log_prob == pytest.approx(exact, abs=1e-4)


def test_tied_embeddings_share_one_weight():
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=7, tgt_vocab_size=7, d_model=8, heads=2, ffn_dim=8, encoder_layers=1,
                            decoder_layers=1, attention_dim=8, output_hidden=8, tie_embeddings=True)
    model = build_model(cfg, make_objective("soft"))
    assert model.head.generator.weight is model.tgt_embed.weight
    names = [n for n, _ in model.named_parameters()]
    assert "head.generator.weight" not in names  # one parameter, counted once


def test_builder_chooses_the_architecture_by_type_and_lstm_stays_the_default():
    assert list(MODEL_TYPES) == ["lstm", "transformer"]
    lstm = load_config("toy")
    assert isinstance(lstm.model, ModelConfig) and lstm.model.type == "lstm"
    tf = load_config("transformer-small")
    assert isinstance(tf.model, TransformerConfig)
    assert isinstance(build_model(tf.model_config(20, 20), make_objective("var-sample")), LatentAlignmentTransformer)
    assert isinstance(build_model(lstm.model_config(20, 20), make_objective("soft")), LatentAlignmentNMT)
    # a stored model section without a type is the LSTM (runs written before model types existed)
    assert isinstance(model_config_from_dict({"embed_dim": 4}), ModelConfig)
    assert load_config("transformer-iwslt14").model.encoder_layers == 6


@pytest.mark.parametrize("base, sets, message", [
    ("toy", ["model.type=rnn"], "model.type must be one of lstm, transformer"),
    ("toy", ["model.type=transformer"], "unknown model config keys: decoder_hidden"),  # LSTM sizes
    ("transformer-small", ["model.d_model=10", "model.heads=4"], "multiple of model.heads"),
    ("transformer-small", ["model.heads=0"], "model.heads must be a positive integer"),
    ("transformer-small", ["model.embed_dim=8"], "unknown model config keys: embed_dim"),
    ("transformer-small", ["model.tie_embeddings=true", "model.output_hidden=64"], "tie_embeddings"),
    ("transformer-small", ["model.output_reads=decoder"], "model.output_reads must be encoder or embedding"),
])
def test_bad_model_sections_are_one_line_errors(base, sets, message):
    with pytest.raises(VarattnError, match=message):
        load_config(base, None, sets)


def test_inverse_sqrt_schedule_warms_up_then_decays():
    lrs = [inverse_sqrt_lr(1e-3, s, 100) for s in (1, 50, 100, 400, 10000)]
    assert lrs == pytest.approx([1e-5, 5e-4, 1e-3, 5e-4, 1e-4])
    with pytest.raises(VarattnError, match="lr_schedule"):
        load_config("toy", None, ["lr_schedule=cosine"])


def test_transformer_trains_evaluates_translates_and_aligns_through_the_commands(tmp_path, capsys, one_thread):
    run = tmp_path / "tf"
    code, out, err = cli(capsys, "train", "--config", "transformer-small", "--mode", "var-sample", "--max-steps", 12,
                         "--epochs", 3, "--out", run, "--no-progress", "--no-tensorboard",
                         *set_flags(TINY_TRANSFORMER))
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lrs = [r["lr"] for r in records if r.get("split") == "train"]
    assert train_lrs and all(lr <= 1e-3 for lr in train_lrs)  # the schedule's rate, below its peak
    info = json.loads((run / "run.json").read_text())
    assert info["config"]["model"]["type"] == "transformer"

    code, out, err = cli(capsys, "evaluate", run, "--topk", 2, "--json")
    assert code == 0, err
    figures = json.loads(out)
    assert math.isfinite(figures["ppl"]) and figures["elbo_ppl"] >= figures["ppl"] - 1e-6

    src = tmp_path / "src.txt"
    src.write_text("a b c\nd e\n")
    code, out, err = cli(capsys, "translate", run, "--input", src, "--beam", 2)
    assert code == 0, err
    assert len(out.splitlines()) == 2

    tgt = tmp_path / "tgt.txt"
    tgt.write_text("a b\nd\n")
    for method in ("prior", "posterior", "exact"):
        code, out, err = cli(capsys, "align", run, "--src", src, "--tgt", tgt, "--method", method)
        assert code == 0, err
        assert len(out.splitlines()) == 2

    import varattn

    trained = varattn.load(run)
    assert isinstance(trained.model, LatentAlignmentTransformer)


def test_unknown_model_type_in_a_command_is_one_line(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--config", "toy", "--set", "model.type=rnn", "--out", tmp_path / "x",
                       "--no-progress", "--no-tensorboard")
    assert code != 0
    assert "model.type must be one of" in one_line_error(err)
