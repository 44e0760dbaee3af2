"""Masked categorical and Dirichlet distributions, the emission's enumeration path."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from varattn.latent import MaskedCategorical, MaskedDirichlet, kmax
from varattn.latent.toy import flat_grad, make_toy


def _padded_logits(seed: int, lengths: list[int], t: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = max(lengths)
    mask = torch.arange(s)[None, :] < torch.tensor(lengths)[:, None]
    logits = torch.randn(len(lengths), t, s, generator=g, dtype=torch.float64)
    return logits.masked_fill(~mask[:, None], float("-inf")), mask[:, None, :]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4))
def test_categorical_matches_unpadded_torch_categorical(seed, lengths):
    logits, mask = _padded_logits(seed, lengths)
    other, _ = _padded_logits(seed + 1, lengths)
    p, q = MaskedCategorical(logits, mask), MaskedCategorical(other, mask)
    for b, n in enumerate(lengths):
        ref_p = torch.distributions.Categorical(logits=logits[b, :, :n])
        ref_q = torch.distributions.Categorical(logits=other[b, :, :n])
        torch.testing.assert_close(p.entropy()[b], ref_p.entropy())
        torch.testing.assert_close(p.kl(q)[b], torch.distributions.kl_divergence(ref_p, ref_q))
        assert torch.all(p.probs[b, :, n:] == 0)


def test_kl_finite_when_prior_underflows():
    mask = torch.ones(1, 1, 3, dtype=torch.bool)
    p = MaskedCategorical(torch.tensor([[[0.0, -1e4, 0.0]]]), mask)  # p[1] underflows to 0
    q = MaskedCategorical(torch.tensor([[[0.0, 0.0, 0.0]]]), mask)
    assert torch.isinf(q.kl(p)).all() or torch.isfinite(q.kl(p)).all()
    # the log-space KL is huge but finite, never NaN
    assert not torch.isnan(q.kl(p)).any()
    assert float(q.kl(p)) > 1000


def test_kl_gradient_nan_free_with_padding():
    logits, mask = _padded_logits(0, [3, 1, 2])
    logits = logits.clone().requires_grad_()
    other, _ = _padded_logits(1, [3, 1, 2])
    kl = MaskedCategorical(logits, mask).kl(MaskedCategorical(other, mask)).sum()
    (grad,) = torch.autograd.grad(kl, logits)
    assert torch.isfinite(grad).all()


def test_topk_keeps_k_and_renormalises():
    logits, mask = _padded_logits(3, [5, 2])
    dist = MaskedCategorical(logits, mask)
    top = dist.topk(3)
    kept = (top.probs > 0).sum(-1)
    assert kept[0].eq(3).all() and kept[1].eq(2).all()
    torch.testing.assert_close(top.probs.sum(-1), torch.ones_like(kept, dtype=torch.float64))
    # the kept positions are the most probable ones, in the same ratios
    ratio = top.probs[0, 0] / dist.probs[0, 0]
    kept_ratio = ratio[top.probs[0, 0] > 0]
    torch.testing.assert_close(kept_ratio, kept_ratio[0].expand_as(kept_ratio))
    assert dist.probs[0, 0][top.probs[0, 0] == 0].max() <= dist.probs[0, 0][top.probs[0, 0] > 0].min()
    # K >= S is the full distribution
    torch.testing.assert_close(dist.topk(5).probs, dist.probs)


def test_categorical_sampling_frequencies():
    torch.manual_seed(0)
    logits, mask = _padded_logits(4, [4, 2], t=1)
    dist = MaskedCategorical(logits, mask)
    z = dist.sample(200_000)  # (K, B, T)
    freq = torch.nn.functional.one_hot(z, 4).double().mean(0)
    # 200k draws: standard error < 0.0012, tolerance 0.006 (5 standard errors)
    torch.testing.assert_close(freq, dist.probs, atol=0.006, rtol=0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), lengths=st.lists(st.integers(2, 5), min_size=1, max_size=3))
def test_dirichlet_matches_torch_on_real_positions(seed, lengths):
    g = torch.Generator().manual_seed(seed)
    s = max(lengths)
    mask = (torch.arange(s)[None, :] < torch.tensor(lengths)[:, None])[:, None, :]
    a = torch.rand(len(lengths), 1, s, generator=g, dtype=torch.float64) * 3 + 0.2
    b = torch.rand(len(lengths), 1, s, generator=g, dtype=torch.float64) * 3 + 0.2
    p, q = MaskedDirichlet(a, mask), MaskedDirichlet(b, mask)
    z = p.rsample(3)
    for i, n in enumerate(lengths):
        ref_p = torch.distributions.Dirichlet(a[i, :, :n])
        ref_q = torch.distributions.Dirichlet(b[i, :, :n])
        torch.testing.assert_close(p.kl(q)[i], torch.distributions.kl_divergence(ref_p, ref_q))
        torch.testing.assert_close(p.entropy()[i], ref_p.entropy())
        torch.testing.assert_close(p.log_prob(z)[:, i], ref_p.log_prob(z[:, i, :, :n]))
        assert torch.all(z[:, i, :, n:] == 0)
    torch.testing.assert_close(z.sum(-1), torch.ones_like(z.sum(-1)))


def test_dirichlet_kl_agrees_with_monte_carlo():
    torch.manual_seed(0)
    mask = torch.tensor([[[True, True, True, False]]])
    a = torch.tensor([[[2.0, 0.5, 1.5, 9.0]]], dtype=torch.float64)
    b = torch.tensor([[[1.0, 1.0, 3.0, 9.0]]], dtype=torch.float64)
    p, q = MaskedDirichlet(a, mask), MaskedDirichlet(b, mask)
    z = p.rsample(400_000)
    mc = (p.log_prob(z) - q.log_prob(z)).mean(0)
    # the log-ratio has standard deviation about 1 here: standard error ~0.0016, tolerance 0.01
    torch.testing.assert_close(mc, p.kl(q), atol=0.01, rtol=0)


def test_dirichlet_samples_have_the_right_mean_and_gradients():
    torch.manual_seed(1)
    mask = torch.tensor([[[True, True, False]]])
    a = torch.tensor([[[1.0, 3.0, 5.0]]], dtype=torch.float64, requires_grad=True)
    z = MaskedDirichlet(a, mask).rsample(100_000)
    torch.testing.assert_close(z.mean(0), torch.tensor([[[0.25, 0.75, 0.0]]], dtype=torch.float64), atol=0.005, rtol=0)
    (grad,) = torch.autograd.grad(z[..., 0].mean(), a)
    assert torch.isfinite(grad).all() and grad[0, 0, 2] == 0
    # d E[z_0] / d a_0 = a_1 / (a_0 + a_1)^2 = 3/16
    assert abs(float(grad[0, 0, 0]) - 3 / 16) < 0.01


def test_enumeration_matches_one_hot_scoring_and_chunking():
    toy = make_toy(5, batch=2, tgt_len=3, src_len=4, lengths=[4, 2], tgt_lengths=[3, 1])
    full = toy.problem(chunk_rows=10_000).emission.log_prob_all()
    tiny = toy.problem(chunk_rows=1).emission.log_prob_all()
    torch.testing.assert_close(full, tiny)
    emission = toy.problem().emission
    eye = torch.eye(4, dtype=torch.float64)
    for i in range(4):
        direct = emission.log_prob(eye[i].expand(2, 3, 4))
        torch.testing.assert_close(full[..., i][toy.target_mask], direct[toy.target_mask])
    assert torch.all(full[~toy.target_mask] == 0)
    params = list(toy.head.parameters())
    g_full = flat_grad(toy.problem(chunk_rows=10_000).emission.log_prob_all().sum(), params)
    g_tiny = flat_grad(toy.problem(chunk_rows=1).emission.log_prob_all().sum(), params)
    torch.testing.assert_close(g_full, g_tiny)


def test_enumeration_never_scores_more_rows_than_the_chunk():
    """Peak memory of enumeration is set by ``chunk_rows``, in the backward pass too."""
    toy = make_toy(6, batch=3, tgt_len=5, src_len=4)
    seen: list[int] = []
    original = toy.head.log_prob_gold

    def recording(pre, gold):
        seen.append(pre.shape[0])
        return original(pre, gold)

    toy.head.log_prob_gold = recording
    emission = toy.problem(chunk_rows=9).emission
    scores = emission.log_prob_all()
    forward_calls = len(seen)
    assert forward_calls == 8  # 15 target rows, 2 per chunk (2 x 4 positions <= 9 rows)
    scores.sum().backward()
    # the backward pass recomputed every chunk (checkpointing) rather than storing it
    assert len(seen) == 2 * forward_calls
    assert max(seen) <= 9
    assert all(p.grad is not None for p in toy.head.parameters())
    seen.clear()
    toy.problem(chunk_rows=9).emission.log_prob(torch.softmax(toy.prior_scores, -1)).sum().backward()
    assert max(seen) <= 9


# -- inside torch.distributions -------------------------------------------------------------------
def test_both_are_torch_distributions_and_kl_divergence_dispatches_to_them():
    logits, mask = _padded_logits(5, [4, 2, 3], t=2)
    other, _ = _padded_logits(6, [4, 2, 3], t=2)
    p, q = MaskedCategorical(logits, mask), MaskedCategorical(other, mask)
    assert isinstance(p, torch.distributions.Distribution)
    assert p.batch_shape == (3, 2) and p.event_shape == ()
    torch.testing.assert_close(torch.distributions.kl_divergence(q, p), q.kl(p), rtol=0, atol=0)
    a = torch.rand(3, 2, 4, dtype=torch.float64) + 0.2
    b = torch.rand(3, 2, 4, dtype=torch.float64) + 0.2
    dp, dq = MaskedDirichlet(a, mask), MaskedDirichlet(b, mask)
    assert isinstance(dp, torch.distributions.Distribution) and dp.has_rsample
    assert dp.batch_shape == (3, 2) and dp.event_shape == (4,)
    torch.testing.assert_close(torch.distributions.kl_divergence(dq, dp), dq.kl(dp), rtol=0, atol=0)
    for i, n in enumerate([4, 2, 3]):  # brute force: torch's own distributions on the real positions
        ref_q = torch.distributions.Dirichlet(b[i, :, :n])
        ref_p = torch.distributions.Dirichlet(a[i, :, :n])
        torch.testing.assert_close(torch.distributions.kl_divergence(dq, dp)[i],
                                   torch.distributions.kl_divergence(ref_q, ref_p))
        cat_q = torch.distributions.Categorical(logits=other[i, :, :n])
        cat_p = torch.distributions.Categorical(logits=logits[i, :, :n])
        torch.testing.assert_close(torch.distributions.kl_divergence(q, p)[i],
                                   torch.distributions.kl_divergence(cat_q, cat_p))


def test_kl_divergence_gradients_are_nan_free_with_padding():
    logits, mask = _padded_logits(0, [3, 1, 2])
    logits = logits.clone().requires_grad_()
    other, _ = _padded_logits(1, [3, 1, 2])
    kl = torch.distributions.kl_divergence(MaskedCategorical(logits, mask), MaskedCategorical(other, mask)).sum()
    (grad,) = torch.autograd.grad(kl, logits)
    assert torch.isfinite(grad).all() and not grad[1, :, 1:].any()
    a = torch.full((3, 2, 3), 0.7, dtype=torch.float64, requires_grad=True)
    kl = torch.distributions.kl_divergence(MaskedDirichlet(a, mask), MaskedDirichlet(torch.ones_like(a), mask))
    (grad,) = torch.autograd.grad(kl.sum(), a)
    assert torch.isfinite(kl).all() and torch.isfinite(grad).all() and not grad[1, :, 1:].any()


def test_sample_shapes_follow_torch():
    logits, mask = _padded_logits(2, [3, 2])
    p = MaskedCategorical(logits, mask)
    assert p.sample().shape == (2, 2) and p.sample(4).shape == (4, 2, 2) and p.sample((3, 5)).shape == (3, 5, 2, 2)
    assert not p.sample((50,))[:, 1].eq(2).any()  # never a padded position
    d = MaskedDirichlet(torch.ones(2, 2, 3), mask)
    assert d.rsample().shape == (2, 2, 3) and d.sample(4).shape == (4, 2, 2, 3)
    assert d.rsample((2, 3)).shape == (2, 3, 2, 2, 3)


def test_kmax_keeps_every_tie_at_the_kth_score():
    """The K-max of decoding and K-max perplexity: ties at the K-th highest score are all kept."""
    scores = torch.tensor([[1.0, 3.0, 2.0, 2.0, float("-inf")], [0.0, 0.0, 0.0, 5.0, 1.0]])
    kept = kmax(scores, 2)
    assert torch.isfinite(kept).tolist() == [[False, True, True, True, False], [False, False, False, True, True]]
    assert kmax(scores, 5) is scores and kmax(scores, None) is scores
    torch.testing.assert_close(kept[torch.isfinite(kept)], scores[torch.isfinite(kept)])
    top = MaskedCategorical(scores.unsqueeze(0), torch.isfinite(scores).unsqueeze(0)).topk(2)
    assert (top.probs[0] > 0).tolist() == torch.isfinite(kept).tolist()
