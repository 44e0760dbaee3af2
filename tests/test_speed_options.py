"""The fast paths of ``varattn.kernels`` compute what the plain ones do (values and gradients); no timing here.

* the encoder and inference LSTMs run padded through the fused kernel, each direction reading
  only a sentence's real tokens: equal to ``nn.LSTM`` on packed sequences (the plain path);
* the teacher-forced decoder (``decode``) with its bulk products and deferred weight gradients:
  equal to calling ``step`` once per position, and to itself with the fast paths off;
* the hand-written backward passes of the output layer and linear products: ``gradcheck``;
* the oneDNN products: same results to float32 rounding either way;
* the switch (``VARATTN_FAST=0``, ``set_enabled``, ``fast_paths``) turns every fast path off, and a
  whole training step (loss, gradients, Adam update) agrees with it on and off for every mode.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from varattn import kernels
from varattn.latent import make_objective, mode_names
from varattn.latent.emission import LinearSoftmaxHead
from varattn.nmt.batching import collate
from varattn.nmt.model import LatentAlignmentNMT, ModelConfig

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
    got = kernels.lstm_padded(lstm, noisy, lengths)
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
    return collate(src, tgt, list(range(4)))


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
        e = type(enc)(mem, kernels.linear(mem, model.attn_memory.weight), enc.source_mask)
        q, s = model.decode(emb, e)
        return q, torch.where(torch.isfinite(s), s, torch.zeros_like(s))

    assert torch.autograd.gradcheck(run, (tgt_emb, memory))


def test_output_layer_backward_passes_gradcheck():
    torch.manual_seed(2)
    head = LinearSoftmaxHead(4, 3, 5, 9, dropout=0.0).double()
    pre = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    gold = torch.randint(0, 9, (6,))
    weight, bias = head.generator.weight, head.generator.bias
    assert torch.autograd.gradcheck(lambda p, w, b: kernels.gold_log_softmax(torch.tanh(p), w, b, gold),
                                    (pre, weight, bias))
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    # the fast linear's hand-written backward (kernels.linear sends float64 to nn.functional.linear)
    assert torch.autograd.gradcheck(lambda a, w, b: kernels._Linear.apply(a, w, b), (x, weight, bias))
    # equal to the plain autograd expression
    want = torch.log_softmax(head.generator(torch.tanh(pre)), -1).gather(1, gold[:, None]).squeeze(1)
    torch.testing.assert_close(head.log_prob_gold(pre, gold), want)




@pytest.fixture
def switch():
    """Leave the switch and the oneDNN probe as the test found them."""
    before = kernels._enabled, kernels._onednn_exact
    yield
    kernels._enabled, kernels._onednn_exact = before


def test_onednn_products_keep_results(switch):
    torch.manual_seed(3)
    a, b, bias = torch.randn(33, 20), torch.randn(17, 20), torch.randn(17)
    x = torch.randn(2, 33, 20)
    want = torch.addmm(bias, a, b.t())
    for flag in (False, True):
        with kernels.fast_paths(flag):
            torch.testing.assert_close(kernels._mm_nt(a, b, bias), want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(kernels.linear(x, b, bias), x @ b.t() + bias, rtol=1e-5, atol=1e-5)
    # float64 never goes through oneDNN: bit-equal to torch.mm
    a64, b64 = a.double(), b.double()
    assert torch.equal(kernels._mm_nt(a64, b64), a64 @ b64.t())


def test_the_switch(monkeypatch, switch):
    monkeypatch.setenv(kernels.ENV_VAR, "0")
    kernels.set_enabled(None)
    assert kernels.enabled() is False
    with kernels.fast_paths(True):
        assert kernels.enabled() is True
    assert kernels.enabled() is False
    monkeypatch.setenv(kernels.ENV_VAR, "1")
    kernels.set_enabled(None)
    assert kernels.enabled() is True
    with kernels.fast_paths(False):
        assert kernels.enabled() is False
        assert not kernels._use_onednn(torch.randn(2, 2))
        weight = torch.randn(3, 4, requires_grad=True)
        assert not isinstance(kernels.step_linear(weight), kernels._BulkGradLinear)
        # the plain LSTM path is nn.LSTM on packed sequences
        torch.manual_seed(5)
        lstm = nn.LSTM(3, 2, batch_first=True, bidirectional=True)
        x, lengths = torch.randn(2, 4, 3), torch.tensor([4, 2])
        torch.testing.assert_close(kernels.lstm_padded(lstm, x, lengths), _reference_lstm(lstm, x, lengths))
    assert kernels.enabled() is True
    assert isinstance(kernels.step_linear(weight), kernels._BulkGradLinear)


def test_probe_leaves_the_random_state_alone(switch):
    """The first product of a run decides on oneDNN; that must not shift the run's random numbers."""
    torch.manual_seed(4)
    expected = torch.rand(3)
    torch.manual_seed(4)
    kernels._onednn_exact = None
    kernels.onednn_available()
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", mode_names())
def test_training_step_agrees_with_fast_paths_on_and_off(mode, switch):
    """Loss, every gradient and the parameters after one Adam step, float32, fast paths on against off.

    Tolerance: relative 1e-5 on the loss, relative 1e-4 (absolute 1e-6) on gradients and updated
    parameters -- float32 rounding of products summed in another order (measured: at most 1e-5
    relative on the gradients).
    Both runs draw the same samples (same seed; dropout is 0, since ``nn.LSTM``'s inter-layer
    dropout draws its masks differently from the fused path's).
    """
    batch = _batch()
    results = []
    for flag in (True, False):
        model = _model(torch.float32)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        objective = make_objective(mode)
        torch.manual_seed(6)
        with kernels.fast_paths(flag):
            terms = model.loss(batch, objective)
            terms.surrogate.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        results.append((terms.surrogate.detach(), grads, params))
    (loss_on, grads_on, params_on), (loss_off, grads_off, params_off) = results
    assert torch.isfinite(loss_on)
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-5, atol=0)
    assert grads_on.keys() == grads_off.keys() and grads_on
    for name in grads_on:
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-4, atol=1e-6, msg=name)
    for name in params_on:
        torch.testing.assert_close(params_on[name], params_off[name], rtol=1e-4, atol=1e-6, msg=name)
