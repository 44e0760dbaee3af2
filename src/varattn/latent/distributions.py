"""Alignment distributions over source positions, with a source padding mask.

Every distribution here has batch shape ``(B, T)`` (one alignment per target position)
and event size ``S`` (the source length). ``mask`` is a boolean tensor broadcastable to
``(B, T, S)``, usually ``(B, 1, S)``, that is True at real source positions. Padded
positions get probability exactly 0, log-probability ``-inf``, and contribute nothing to
entropies or KL divergences, and no NaN appears in values or gradients.

Everything is computed in log space; probabilities are only exponentiated where a caller
needs weights.

Both distributions are ``torch.distributions.Distribution`` subclasses (batch shape ``(B, T)``;
the categorical's event is a position, the Dirichlet's a point of the simplex ``(S,)``), and their
KL divergences are registered with ``torch.distributions.kl.register_kl``, so
``torch.distributions.kl_divergence(q, p)`` applies to them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.kl import register_kl

from varattn.errors import VarattnError

NEG_INF = float("-inf")


#: the sample shape of one draw
_ONE = torch.Size()


def _sample_shape(shape: int | tuple[int, ...] | torch.Size) -> torch.Size:
    """A sample shape from an int (``K`` draws: ``(K,)``) or a shape, as torch's ``sample`` takes it."""
    return torch.Size((shape,)) if isinstance(shape, int) else torch.Size(shape)


def kmax(scores: Tensor, k: int | None) -> Tensor:
    """The paper's K-max: keep the ``k`` highest scores along the last dim, the rest become ``-inf``.

    ``scores`` ``(..., S)`` may hold ``-inf`` at padding. Every score equal to the ``k``-th highest is
    kept (ties can keep more than ``k``); a row with at most ``k`` real positions keeps them all.
    ``k`` None, or at least ``S``, keeps everything.
    """
    if k is None or k >= scores.shape[-1]:
        return scores
    if k < 1:
        raise VarattnError(f"K-max needs k >= 1, got {k}")
    kth = scores.topk(k, dim=-1).values[..., -1:]  # (..., 1)
    return scores.masked_fill(scores < kth, NEG_INF)


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


class MaskedCategorical(Distribution):
    """Categorical distribution over source positions, padded positions excluded.

    Batch shape ``(B, T)``, event shape ``()`` (a position in ``[0, S)``).

    Args:
        logits: ``(B, T, S)`` scores; padded positions may hold anything (``-inf`` too).
        mask: bool, broadcastable to ``(B, T, S)``, True at real source positions.

    Attributes:
        log_probs: ``(B, T, S)`` normalised log-probabilities, ``-inf`` at padding.
        mask: the mask expanded to ``(B, T, S)``.
    """

    arg_constraints: dict = {}

    def __init__(self, logits: Tensor, mask: Tensor):
        mask = mask.expand_as(logits)
        self._setup(masked_log_softmax(logits, mask), mask)

    def _setup(self, log_probs: Tensor, mask: Tensor) -> None:
        self.mask = mask
        self.log_probs = log_probs
        super().__init__(batch_shape=log_probs.shape[:-1], validate_args=False)

    @classmethod
    def from_log_probs(cls, log_probs: Tensor, mask: Tensor) -> MaskedCategorical:
        """Wrap already-normalised log-probabilities (``-inf`` at padding)."""
        dist = cls.__new__(cls)
        dist._setup(log_probs, mask.expand_as(log_probs))
        return dist

    @property
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self.log_probs.shape[-1] - 1)

    @property
    def probs(self) -> Tensor:
        """``(B, T, S)`` probabilities, exactly 0 at padding."""
        return self.log_probs.exp()

    def log_prob(self, index: Tensor) -> Tensor:
        """Log-probability of positions ``index`` of shape ``(K, B, T)`` or ``(B, T)``."""
        lp = self.log_probs.expand(index.shape + self.log_probs.shape[-1:])
        return lp.gather(-1, index.unsqueeze(-1)).squeeze(-1)

    def sample(self, sample_shape: int | tuple[int, ...] | torch.Size = _ONE) -> Tensor:
        """Positions ``sample_shape + (B, T)`` int64; an int ``K`` draws ``(K, B, T)``."""
        shape = _sample_shape(sample_shape)
        probs = self.probs.reshape(-1, self.probs.shape[-1])  # (B*T, S)
        idx = torch.multinomial(probs, max(1, math.prod(shape)), replacement=True)  # (B*T, K)
        return idx.t().reshape(shape + self.log_probs.shape[:-1])  # (K...) + (B, T)

    def one_hot(self, index: Tensor) -> Tensor:
        """One-hot weights ``(..., B, T, S)`` for positions ``index`` ``(..., B, T)``."""
        return torch.nn.functional.one_hot(index, self.log_probs.shape[-1]).to(self.log_probs.dtype)

    def entropy(self) -> Tensor:
        """``(B, T)`` entropy in nats; padding contributes 0."""
        return -_xlogy_terms(self.log_probs, self.log_probs)

    def kl(self, other: MaskedCategorical) -> Tensor:
        """``(B, T)`` KL(self || other), as ``torch.distributions.kl_divergence(self, other)``."""
        return _kl_categorical(self, other)

    def expectation(self, values: Tensor) -> Tensor:
        """``(B, T)`` sum_i p_i values_i; ``values`` ``(B, T, S)`` is ignored at padding."""
        return _xlogy_terms(self.log_probs, values)

    def topk(self, k: int) -> MaskedCategorical:
        """The paper's K-max (:func:`kmax`): keep the ``k`` most probable positions and renormalise.

        Positions outside the top ``k`` (and padding) get probability 0; every position tied with
        the ``k``-th is kept; when a row has fewer than ``k`` real positions all of them are kept.
        """
        kept = kmax(self.log_probs, k)
        return self if kept is self.log_probs else MaskedCategorical(kept, self.mask)


@register_kl(MaskedCategorical, MaskedCategorical)
def _kl_categorical(p: MaskedCategorical, q: MaskedCategorical) -> Tensor:
    """``(B, T)`` KL(p || q) from log-probabilities.

    Computed as sum_i p_i (log p_i - log q_i) over positions with p_i > 0, so padding (where both
    are ``-inf``) and underflowed mass of ``q`` never produce NaN.
    """
    return _xlogy_terms(p.log_probs, p.log_probs - q.log_probs)


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


class MaskedDirichlet(Distribution):
    """Dirichlet distribution over the simplex of the *real* source positions.

    Batch shape ``(B, T)``, event shape ``(S,)``.

    Variable source lengths in one batch are handled through the Gamma construction:
    ``g_i ~ Gamma(alpha_i, 1)`` at real positions, ``g_i = 0`` at padding, ``z = g / sum g``.
    ``torch.distributions.Gamma.rsample`` is reparameterised (implicit differentiation), so
    samples carry pathwise gradients into ``alpha``. For rows without padding this is
    exactly ``torch.distributions.Dirichlet``.

    Args:
        concentration: ``(B, T, S)`` positive values (ignored at padding).
        mask: bool, broadcastable to ``(B, T, S)``.
    """

    arg_constraints: dict = {}
    support = constraints.simplex
    has_rsample = True

    def __init__(self, concentration: Tensor, mask: Tensor):
        self.mask = mask.expand_as(concentration)
        self.concentration = torch.where(self.mask, concentration, torch.ones_like(concentration))
        super().__init__(batch_shape=concentration.shape[:-1], event_shape=concentration.shape[-1:],
                         validate_args=False)

    def _total(self) -> Tensor:
        return (self.concentration * self.mask).sum(-1)  # (B, T)

    def rsample(self, sample_shape: int | tuple[int, ...] | torch.Size = _ONE) -> Tensor:
        """``sample_shape + (B, T, S)`` reparameterised samples (an int ``K``: ``(K, B, T, S)``), 0 at padding."""
        gamma = torch.distributions.Gamma(self.concentration, torch.ones_like(self.concentration))
        g = gamma.rsample(_sample_shape(sample_shape)) * self.mask  # (K, B, T, S)
        g = g.clamp_min(torch.finfo(g.dtype).tiny) * self.mask
        return g / g.sum(-1, keepdim=True)

    def sample(self, sample_shape: int | tuple[int, ...] | torch.Size = _ONE) -> Tensor:
        """Like :meth:`rsample`, without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape)

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
        """``(B, T)`` KL(self || other), as ``torch.distributions.kl_divergence(self, other)``."""
        return _kl_dirichlet(self, other)


@register_kl(MaskedDirichlet, MaskedDirichlet)
def _kl_dirichlet(p: MaskedDirichlet, q: MaskedDirichlet) -> Tensor:
    """``(B, T)`` analytic KL(p || q) over the real positions of ``p``'s mask (the two share it).

    torch's own Dirichlet KL cannot be reused: padded positions hold concentration 1, which would
    enter its totals.
    """
    a, b, m = p.concentration, q.concentration, p.mask
    a0, b0 = p._total(), q._total()
    return (
        torch.lgamma(a0)
        - torch.lgamma(b0)
        - ((torch.lgamma(a) - torch.lgamma(b)) * m).sum(-1)
        + ((a - b) * (torch.digamma(a) - torch.digamma(a0).unsqueeze(-1)) * m).sum(-1)
    )
