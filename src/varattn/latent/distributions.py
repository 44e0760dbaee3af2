"""Alignment distributions over source positions, with a source padding mask.

Every distribution here has batch shape ``(B, T)`` (one alignment per target position)
and event size ``S`` (the source length). ``mask`` is a boolean tensor broadcastable to
``(B, T, S)``, usually ``(B, 1, S)``, that is True at real source positions. Padded
positions get probability exactly 0, log-probability ``-inf``, and contribute nothing to
entropies or KL divergences, and no NaN appears in values or gradients.

Everything is computed in log space; probabilities are only exponentiated where a caller
needs weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEG_INF = float("-inf")


def masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Log-softmax over the last dimension with ``-inf`` at padded positions.

    Args:
        logits: ``(..., S)`` unnormalised scores (may already hold ``-inf`` at padding).
        mask: bool, broadcastable to ``logits``; True at real positions. Every row must
            have at least one real position.

    Returns:
        ``(..., S)`` log-probabilities, ``-inf`` where ``mask`` is False.
    """
    return torch.log_softmax(logits.masked_fill(~mask, NEG_INF), dim=-1)


def _xlogy_terms(log_p: Tensor, values: Tensor) -> Tensor:
    """``p * values`` summed over the last dim, with 0 contribution where ``p == 0``.

    ``values`` may be ``-inf`` or NaN where ``p`` is 0 (padding); those entries are
    replaced before the product so gradients stay finite.
    """
    p = log_p.exp()
    safe = torch.where(p > 0, values, torch.zeros_like(values))
    return (p * safe).sum(-1)


class MaskedCategorical:
    """Categorical distribution over source positions, padded positions excluded.

    Args:
        logits: ``(B, T, S)`` scores; padded positions may hold anything (``-inf`` too).
        mask: bool, broadcastable to ``(B, T, S)``, True at real source positions.

    Attributes:
        log_probs: ``(B, T, S)`` normalised log-probabilities, ``-inf`` at padding.
        mask: the mask expanded to ``(B, T, S)``.
    """

    def __init__(self, logits: Tensor, mask: Tensor):
        self.mask = mask.expand_as(logits)
        self.log_probs = masked_log_softmax(logits, self.mask)

    @classmethod
    def from_log_probs(cls, log_probs: Tensor, mask: Tensor) -> MaskedCategorical:
        """Wrap already-normalised log-probabilities (``-inf`` at padding)."""
        dist = cls.__new__(cls)
        dist.mask = mask.expand_as(log_probs)
        dist.log_probs = log_probs
        return dist

    @property
    def probs(self) -> Tensor:
        """``(B, T, S)`` probabilities, exactly 0 at padding."""
        return self.log_probs.exp()

    def log_prob(self, index: Tensor) -> Tensor:
        """Log-probability of positions ``index`` of shape ``(K, B, T)`` or ``(B, T)``."""
        lp = self.log_probs.expand(index.shape + self.log_probs.shape[-1:])
        return lp.gather(-1, index.unsqueeze(-1)).squeeze(-1)

    def sample(self, num_samples: int = 1) -> Tensor:
        """Draw ``num_samples`` positions per target token: ``(K, B, T)`` int64."""
        probs = self.probs.reshape(-1, self.probs.shape[-1])  # (B*T, S)
        idx = torch.multinomial(probs, num_samples, replacement=True)  # (B*T, K)
        return idx.t().reshape((num_samples,) + self.log_probs.shape[:-1])

    def one_hot(self, index: Tensor) -> Tensor:
        """One-hot weights ``(..., B, T, S)`` for positions ``index`` ``(..., B, T)``."""
        return torch.nn.functional.one_hot(index, self.log_probs.shape[-1]).to(self.log_probs.dtype)

    def entropy(self) -> Tensor:
        """``(B, T)`` entropy in nats; padding contributes 0."""
        return -_xlogy_terms(self.log_probs, self.log_probs)

    def kl(self, other: MaskedCategorical) -> Tensor:
        """``(B, T)`` KL(self || other) from log-probabilities.

        Computed as sum_i q_i (log q_i - log p_i) over positions with q_i > 0, so padding
        (where both are ``-inf``) and underflowed prior mass never produce NaN.
        """
        return _xlogy_terms(self.log_probs, self.log_probs - other.log_probs)

    def expectation(self, values: Tensor) -> Tensor:
        """``(B, T)`` sum_i p_i values_i; ``values`` ``(B, T, S)`` is ignored at padding."""
        return _xlogy_terms(self.log_probs, values)

    def topk(self, k: int) -> MaskedCategorical:
        """The paper's K-max: keep the ``k`` most probable positions and renormalise.

        Positions outside the top ``k`` (and padding) get ``-inf``; when a row has fewer
        than ``k`` real positions all of them are kept.
        """
        if k <= 0:
            raise ValueError(f"top-k needs k >= 1, got {k}")
        s = self.log_probs.shape[-1]
        if k >= s:
            return self
        kth = self.log_probs.topk(k, dim=-1).values[..., -1:]  # (B, T, 1)
        keep = self.log_probs >= kth
        # Ties at the k-th value could keep more than k; break them by position.
        rank = torch.cumsum(keep.to(torch.int64), dim=-1)
        keep = keep & (rank <= k) & self.mask
        return MaskedCategorical(self.log_probs, keep)


#: the transforms of :func:`relaxed_concentration`; ``mean-precision`` is the default of the relaxed objective
CONCENTRATIONS = ("mean-precision", "exp", "softplus")
#: smallest concentration of one position under ``mean-precision`` (Gamma sampling stays finite)
ALPHA_FLOOR = 1e-3


def relaxed_concentration(scores: Tensor, transform: str = "exp", precision_scores: Tensor | None = None,
                          bounds: tuple[float, float] = (1.0, 100.0)) -> Tensor:
    """Map attention scores ``(..., S)`` to positive Dirichlet concentrations ``(..., S)``.

    ``mean-precision``: ``alpha = kappa * softmax(s)`` (floored at ``ALPHA_FLOOR``), where the mean
    ``softmax(s)`` comes from the scores and the precision (total concentration)
    ``kappa = lo + (hi - lo) * sigmoid(r)`` from its own scores ``precision_scores`` ``r`` ``(...)``
    (zeros when None: the middle of ``bounds``). No objective can push the precision past ``hi``,
    whatever it does to the mean.

    ``exp`` is ``exp(clamp(s, -10, 10))`` (the authors' hint), ``softplus`` adds 1e-3 to stay away
    from 0: one score sets both the mean and the precision (``sum exp(s)`` can reach ``S * e^10``).

    Padded positions may hold ``-inf``; their output is replaced by 1 and later ignored through the mask.
    """
    if transform == "mean-precision":
        mask = torch.isfinite(scores)
        mean = masked_log_softmax(scores, mask).exp()  # (..., S), 0 at padding
        lo, hi = bounds
        r = torch.zeros(scores.shape[:-1], dtype=scores.dtype, device=scores.device) if precision_scores is None \
            else precision_scores.to(scores.dtype)
        kappa = lo + (hi - lo) * torch.sigmoid(r)  # (...)
        return torch.where(mask, (kappa.unsqueeze(-1) * mean).clamp_min(ALPHA_FLOOR), torch.ones_like(mean))
    finite = torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores))
    if transform == "exp":
        return finite.clamp(-10.0, 10.0).exp()
    if transform == "softplus":
        return torch.nn.functional.softplus(finite) + 1e-3
    raise ValueError(f"unknown concentration transform {transform!r}; valid: {', '.join(CONCENTRATIONS)}")


class MaskedDirichlet:
    """Dirichlet distribution over the simplex of the *real* source positions.

    Variable source lengths in one batch are handled through the Gamma construction:
    ``g_i ~ Gamma(alpha_i, 1)`` at real positions, ``g_i = 0`` at padding, ``z = g / sum g``.
    ``torch.distributions.Gamma.rsample`` is reparameterised (implicit differentiation), so
    samples carry pathwise gradients into ``alpha``. For rows without padding this is
    exactly ``torch.distributions.Dirichlet``.

    Args:
        concentration: ``(B, T, S)`` positive values (ignored at padding).
        mask: bool, broadcastable to ``(B, T, S)``.
    """

    def __init__(self, concentration: Tensor, mask: Tensor):
        self.mask = mask.expand_as(concentration)
        self.concentration = torch.where(self.mask, concentration, torch.ones_like(concentration))

    def _total(self) -> Tensor:
        return (self.concentration * self.mask).sum(-1)  # (B, T)

    def rsample(self, num_samples: int = 1) -> Tensor:
        """``(K, B, T, S)`` reparameterised samples, exactly 0 at padding."""
        gamma = torch.distributions.Gamma(self.concentration, torch.ones_like(self.concentration))
        g = gamma.rsample((num_samples,)) * self.mask  # (K, B, T, S)
        g = g.clamp_min(torch.finfo(g.dtype).tiny) * self.mask
        return g / g.sum(-1, keepdim=True)

    def log_prob(self, z: Tensor) -> Tensor:
        """``(..., B, T)`` log density of samples ``z`` ``(..., B, T, S)``."""
        a = self.concentration
        m = self.mask
        log_z = torch.where(m, z.clamp_min(torch.finfo(z.dtype).tiny).log(), torch.zeros_like(z))
        norm = torch.lgamma(self._total()) - (torch.lgamma(a) * m).sum(-1)
        return norm + ((a - 1.0) * log_z * m).sum(-1)

    @property
    def mean(self) -> Tensor:
        """``(B, T, S)`` mean ``alpha / sum(alpha)``, 0 at padding."""
        a = self.concentration * self.mask
        return a / a.sum(-1, keepdim=True)

    @property
    def precision(self) -> Tensor:
        """``(B, T)`` total concentration ``sum(alpha)``: how tightly samples gather around the mean."""
        return self._total()

    def mean_entropy(self) -> Tensor:
        """``(B, T)`` entropy in nats of the mean as a categorical over the real positions (the alignment
        entropy reported for relaxed models, comparable with the categorical models' prior entropy)."""
        mean = self.mean
        return -(torch.where(mean > 0, mean * mean.clamp_min(torch.finfo(mean.dtype).tiny).log(),
                             torch.zeros_like(mean))).sum(-1)

    def entropy(self) -> Tensor:
        """``(B, T)`` differential entropy over the real positions."""
        a, m = self.concentration, self.mask
        k = m.sum(-1).to(a.dtype)
        a0 = self._total()
        log_beta = (torch.lgamma(a) * m).sum(-1) - torch.lgamma(a0)
        return (
            log_beta
            + (a0 - k) * torch.digamma(a0)
            - ((a - 1.0) * torch.digamma(a) * m).sum(-1)
        )

    def kl(self, other: MaskedDirichlet) -> Tensor:
        """``(B, T)`` analytic KL(self || other) over the real positions."""
        a, b, m = self.concentration, other.concentration, self.mask
        a0, b0 = self._total(), other._total()
        return (
            torch.lgamma(a0)
            - torch.lgamma(b0)
            - ((torch.lgamma(a) - torch.lgamma(b)) * m).sum(-1)
            + ((a - b) * (torch.digamma(a) - torch.digamma(a0).unsqueeze(-1)) * m).sum(-1)
        )
