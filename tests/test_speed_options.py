"""The fast paths compute what the plain ones do (values and gradients); no timing here.

* the encoder and inference LSTMs run padded through the fused kernel, each direction reading
  only a sentence's real tokens: equal to ``nn.LSTM`` on packed sequences;
* the teacher-forced decoder (``decode``) with its bulk products and deferred weight gradients:
  equal to calling ``step`` once per position;
* the hand-written backward passes of the output layer and linear products: ``gradcheck``;
* the oneDNN switch (``use_onednn``): same results to float32 rounding either way, and
  ``VARATTN_MATMUL=torch`` turns it off.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from varattn.latent import emission as emission_module
from varattn.latent.emission import LinearSoftmaxHead, linear, matmul_nt, use_onednn
from varattn.nmt.batching import collate
from varattn.nmt.model import LatentAlignmentNMT, ModelConfig, _run_packed

LENGTHS = [5, 2, 7, 1]


def _reference_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


@pytest.mark.parametrize("layers,bidirectional", [(1, True), (2, True), (2, False)])
def test_padded_lstm_equals_packed(layers, bidirectional):
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 5, layers, batch_first=True, bidirectional=bidirectional, dropout=0.3 if layers > 1 else 0.0)
    lstm = lstm.double().eval()
    lengths = torch.tensor(LENGTHS)
    x = torch.randn(4, 7, 6, dtype=torch.float64, requires_grad=True)
    mask = (torch.arange(7)[None, :] < lengths[:, None]).unsqueeze(-1)
    # padding input must not matter: fill it with noise
    noisy = torch.where(mask, x, torch.randn_like(x) * 100)
    got = _run_packed(lstm, noisy, lengths)
    want = _reference_lstm(lstm, x, lengths)
    torch.testing.assert_close(got, want)
    assert torch.all(got[~mask.expand_as(got)] == 0)
    weights = torch.randn_like(want)
    g_got = torch.autograd.grad((got * weights).sum(), [x, *lstm.parameters()])
    g_want = torch.autograd.grad((want * weights).sum(), [x, *lstm.parameters()])
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)


def _model(dtype=torch.float64, dropout=0.0, layers=2) -> LatentAlignmentNMT:
    torch.manual_seed(1)
    cfg = ModelConfig(src_vocab_size=30, tgt_vocab_size=25, embed_dim=6, encoder_hidden=5, encoder_layers=layers,
                      decoder_hidden=7, decoder_layers=layers, attention_dim=4, output_hidden=8, inference_hidden=3,
                      inference_layers=layers, dropout=dropout, enum_chunk_rows=6)
    return LatentAlignmentNMT(cfg, with_inference=True).to(dtype)


def _batch():
    src = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [20]]
    tgt = [[5, 6], [7, 8, 9, 10, 11, 12], [13], [14, 15, 16]]
    return collate(src, tgt, None, list(range(4)))


@pytest.mark.parametrize("topk", [None, 2])
def test_decode_equals_stepping(topk):
    model = _model()
    batch = _batch()
    tgt_emb = model.tgt_embed(batch.tgt[:, :-1])
    enc = model.encode(batch.src, batch.src_lengths)
    queries, scores = model.decode(tgt_emb, enc, topk)
    state = model.initial_state(len(batch), tgt_emb.device)
    ref_q, ref_s = [], []
    for t in range(tgt_emb.shape[1]):
        q, s, state = model.step(tgt_emb[:, t], state, enc, topk)
        ref_q.append(q)
        ref_s.append(s)
    ref_q, ref_s = torch.stack(ref_q, 1), torch.stack(ref_s, 1)
    torch.testing.assert_close(queries, ref_q)
    torch.testing.assert_close(scores, ref_s)
    finite = torch.isfinite(ref_s)
    w_q, w_s = torch.randn_like(ref_q), torch.randn_like(ref_s)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss(q, s):
        return (q * w_q).sum() + (torch.where(finite, s, torch.zeros_like(s)) * w_s).sum()

    got = torch.autograd.grad(loss(queries, scores), params, allow_unused=True, retain_graph=True)
    want = torch.autograd.grad(loss(ref_q, ref_s), params, allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        if b is None:
            assert a is None or torch.all(a == 0), name
        else:
            torch.testing.assert_close(a, b, msg=name)


def test_decoder_gradients_pass_gradcheck():
    model = _model(layers=1)
    batch = _batch()
    enc = model.encode(batch.src, batch.src_lengths)
    memory = enc.memory.detach().requires_grad_()
    tgt_emb = model.tgt_embed(batch.tgt[:, :-1]).detach().requires_grad_()

    def run(emb, mem):
        e = type(enc)(mem, linear(mem, model.attn_memory.weight), enc.source_mask)
        q, s = model.decode(emb, e)
        return q, torch.where(torch.isfinite(s), s, torch.zeros_like(s))

    assert torch.autograd.gradcheck(run, (tgt_emb, memory))


def test_output_layer_backward_passes_gradcheck():
    torch.manual_seed(2)
    head = LinearSoftmaxHead(4, 3, 5, 9, dropout=0.0).double()
    pre = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    gold = torch.randint(0, 9, (6,))
    weight, bias = head.generator.weight, head.generator.bias
    assert torch.autograd.gradcheck(lambda p, w, b: emission_module._GoldLogSoftmax.apply(torch.tanh(p), w, b, gold),
                                    (pre, weight, bias))
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w, b: linear(a, w, b), (x, weight, bias))
    # equal to the plain autograd expression
    want = torch.log_softmax(head.generator(torch.tanh(pre)), -1).gather(1, gold[:, None]).squeeze(1)
    torch.testing.assert_close(head.log_prob_gold(pre, gold), want)


@pytest.fixture
def restore_onednn():
    before = emission_module._ONEDNN
    yield
    emission_module._ONEDNN = before


def test_onednn_switch_keeps_results(restore_onednn):
    torch.manual_seed(3)
    a, b, bias = torch.randn(33, 20), torch.randn(17, 20), torch.randn(17)
    results = []
    for enabled in (False, True):
        use_onednn(enabled)
        results.append(matmul_nt(a, b, bias))
    assert use_onednn(False) is False
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0], torch.addmm(bias, a, b.t()), rtol=1e-5, atol=1e-5)
    # a whole training loss and its gradients agree too
    model, batch = _model(torch.float32), _batch()
    from varattn.latent import make_objective

    objective = make_objective("marginal")
    outs = []
    for enabled in (False, True):
        use_onednn(enabled)
        model.zero_grad()
        terms = model.loss(batch, objective)
        terms.surrogate.backward()
        outs.append((terms.surrogate.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    for g0, g1 in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(g0, g1, rtol=1e-3, atol=1e-6)


def test_environment_turns_onednn_off(monkeypatch, restore_onednn):
    monkeypatch.setenv("VARATTN_MATMUL", "torch")
    emission_module._ONEDNN = None
    assert use_onednn() is False
    assert use_onednn(True) is False  # the environment wins
    a, b = torch.randn(4, 3), torch.randn(5, 3)
    torch.testing.assert_close(matmul_nt(a, b), a @ b.t())


def test_other_dtypes_use_torch(restore_onednn):
    use_onednn(True)
    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(matmul_nt(a, b), a @ b.t())


def test_probe_leaves_the_random_state_alone(restore_onednn):
    """The first product of a run decides on oneDNN; that must not shift the run's random numbers."""
    torch.manual_seed(4)
    expected = torch.rand(3)
    torch.manual_seed(4)
    emission_module._ONEDNN = None
    use_onednn()
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
