"""Emissions: the log-probability of the gold output given an alignment.

An emission answers one question for the objectives: *if the model attended with these
weights, how likely is the gold token?* Weights are one-hot samples (hard attention), soft
attention weights, or relaxed samples; ``log_prob_all`` scores every source position at
once (enumeration).

``ContextEmission`` implements this for the common family where the output layer sees
``[query ; context]`` with ``context = sum_i z_i x_i``. It relies on the output head being
split into a linear part, which is why attention weights can be pushed through it
(``W [q ; sum_i z_i x_i] = W_q q + sum_i z_i W_x x_i``), and a non-linear part evaluated per
row. Enumeration therefore never materialises ``(B, T, S, V)`` logits: rows are processed in
chunks of at most ``chunk_rows`` (each chunk is recomputed in the backward pass, so peak
memory is bounded by the chunk size in training too).
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

# -- matrix products -------------------------------------------------------------------------
#: whether fp32 CPU products go through oneDNN's kernel (None: not decided yet; see ``use_onednn``)
_ONEDNN: bool | None = None


def _onednn_probe() -> bool:
    """True when ``torch.ops.mkldnn._linear_pointwise`` exists and computes exact fp32 products."""
    if os.environ.get("VARATTN_MATMUL", "").lower() == "torch":
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        op = torch.ops.mkldnn._linear_pointwise
        a = torch.full((3, 5), 1 + 2**-12)  # 1 + 2^-12 does not survive a reduced-precision (bf16/tf32) product
        b = torch.eye(4, 5)
        got = op(a, b, None, "none", [], "")
        if not torch.equal(got, a[:, :4]):
            return False
        gen = torch.Generator().manual_seed(0)  # never the global generator: runs must not depend on the probe
        x = torch.randn(9, 7, dtype=torch.float64, generator=gen)
        w = torch.randn(6, 7, dtype=torch.float64, generator=gen)
        return torch.allclose(op(x.float(), w.float(), None, "none", [], "").double(), x @ w.t(), rtol=1e-5,
                              atol=1e-5)
    except Exception:  # noqa: BLE001 - a private operator: anything wrong means "do not use it"
        return False


def use_onednn(enabled: bool | None = None) -> bool:
    """Whether float32 products on the CPU run through oneDNN's fp32 kernel; ``enabled`` sets it.

    PyTorch's CPU products (``torch.mm``, ``nn.Linear``) go to the BLAS it was built with. On
    some processors that BLAS reaches half of what the cores can do while oneDNN, which PyTorch
    also ships (its LSTMs use it), reaches nearly all of it: on the AMD EPYC machines this
    project is measured on, 110 against 240 GFLOP/s per core (``benchmarks/speed.py`` prints
    both). The heavy products of the model (output layer, decoder steps, projections) therefore
    call oneDNN when it is there and computes exact fp32 results (checked once on first use);
    otherwise, for other dtypes and devices, and when the environment variable
    ``VARATTN_MATMUL=torch`` is set, they use ``torch.mm``. Results agree to float32 rounding
    either way; a run is deterministic with either.
    """
    global _ONEDNN
    if enabled is not None:
        _ONEDNN = bool(enabled) and _onednn_probe()
    elif _ONEDNN is None:
        _ONEDNN = _onednn_probe()
    return _ONEDNN


def matmul_nt(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b.T (+ bias)`` for 2-D ``a (N, K)`` and ``b (M, K)`` (any strides); no autograd."""
    if _onednn_for(a, b, bias):
        return torch.ops.mkldnn._linear_pointwise(_packed(a), _packed(b), bias, "none", [], "")
    return torch.mm(a, b.t()) if bias is None else torch.addmm(bias, a, b.t())


def _onednn_for(*tensors: Tensor | None) -> bool:
    """Whether a product of ``tensors`` (None: absent bias) goes through oneDNN."""
    present = [t for t in tensors if t is not None]
    return (all(t.dtype == torch.float32 and t.device.type == "cpu" and t.numel() for t in present)
            and use_onednn())


def _packed(t: Tensor) -> Tensor:
    """``t`` if it or its transpose is contiguous (oneDNN is slow on other strides), else a contiguous copy."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def grad_input(grad: Tensor, weight: Tensor) -> Tensor:
    """``grad @ weight``: the input gradient of ``x @ weight.T``."""
    if not _onednn_for(grad, weight):
        return torch.mm(grad, weight)
    # oneDNN: a contiguous transpose is faster for many rows; for a few, the copy costs more than the product
    return matmul_nt(grad, weight.t().contiguous() if grad.shape[0] >= 256 else weight.t())


def grad_weight(grad: Tensor, x: Tensor) -> Tensor:
    """``grad.T @ x``: the weight gradient of ``x @ weight.T``."""
    if not _onednn_for(grad, x):
        return torch.mm(grad.t(), x)
    return matmul_nt(x.t(), grad.t()).t().contiguous()  # oneDNN is faster at (x.T @ grad).T


class _Linear(torch.autograd.Function):
    """``x @ W^T + b`` for 2-D ``x``, every product through ``matmul_nt``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return matmul_nt(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        return (
            grad_input(grad, weight) if need_x else None,
            grad_weight(grad, x) if need_w else None,
            grad.sum(0) if ctx.has_bias and need_b else None,
        )


def autocast_on(device: torch.device) -> bool:
    """Whether ``torch.autocast`` is active for ``device``'s type (``cpu``, ``cuda``) right now.

    Under autocast the fast paths of this module step aside: products go through
    ``nn.functional.linear``, which autocast casts to its lower precision, and the output
    layer's log-softmax runs in float32.
    """
    return torch.is_autocast_enabled(device.type)


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32 when autocast made it bfloat16 or float16; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``nn.functional.linear`` with its products through ``matmul_nt`` (``x`` of any rank >= 1)."""
    if autocast_on(x.device):
        return nn.functional.linear(x, weight, bias)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    needs_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and needs_grad:
        out = _Linear.apply(flat, weight, bias)
    else:
        out = matmul_nt(flat, weight, bias)
    return out.reshape(*lead, weight.shape[0])


class Emission(Protocol):
    """What every objective needs from a model's output layer."""

    def log_prob(self, weights: Tensor) -> Tensor:
        """Map attention weights ``(..., B, T, S)`` to ``log f(x, z)_{y_t}`` ``(..., B, T)``."""
        ...

    def log_prob_all(self) -> Tensor:
        """``(B, T, S)``: ``log f(x, i)_{y_t}`` for every source position ``i``."""
        ...


class OutputHead(Protocol):
    """An output layer ``g(A q + C x + b)`` scored at the gold label.

    ``query_part`` and ``context_part`` must be linear in their inputs' last dimension (a
    bias may live in either, but only once); ``log_prob_gold`` applies the rest.
    """

    def query_part(self, query: Tensor) -> Tensor:
        """``(..., Dq) -> (..., D)``."""
        ...

    def context_part(self, context: Tensor) -> Tensor:
        """``(..., Dc) -> (..., D)``; linear, no bias."""
        ...

    def log_prob_gold(self, pre: Tensor, gold: Tensor) -> Tensor:
        """``pre (N, D)``, ``gold (N,)`` int64 -> ``(N,)`` log-probability of ``gold``."""
        ...


class ContextEmission:
    """Emission for outputs that read ``[query_t ; sum_i z_i x_i]``.

    Args:
        head: the output head (see ``OutputHead``).
        query: ``(B, T, Dq)`` per-target-step query (the decoder state).
        memory: ``(B, S, Dc)`` source vectors ``x_i``.
        gold: ``(B, T)`` int64 gold labels.
        target_mask: ``(B, T)`` bool; rows at target padding are never evaluated by
            ``log_prob_all`` (their output is 0).
        chunk_rows: the most rows (query-position pairs) that go through the non-linear part
            of the head at once.
        source_mask: ``(B, S)`` bool, True at real source positions, or None (every position
            is real). ``log_prob_all`` evaluates real positions only and gives 0 at the others
            (where every alignment distribution puts no mass).
    """

    def __init__(
        self,
        head: OutputHead,
        query: Tensor,
        memory: Tensor,
        gold: Tensor,
        target_mask: Tensor,
        chunk_rows: int = 8192,
        source_mask: Tensor | None = None,
    ):
        self.head = head
        self.gold = gold
        self.target_mask = target_mask
        self.source_mask = source_mask
        self.chunk_rows = max(1, int(chunk_rows))
        self.query_pre = head.query_part(query)  # (B, T, D)
        self.memory_pre = head.context_part(memory)  # (B, S, D)

    def _score_rows(self, pre: Tensor, gold: Tensor) -> Tensor:
        """Run the head's non-linear part over ``pre (N, D)`` in chunks.

        When there is more than one chunk, each is recomputed in the backward pass instead
        of keeping its ``(chunk, V)`` activations; a single chunk runs plainly.
        """
        if pre.shape[0] <= self.chunk_rows:
            return self.head.log_prob_gold(pre, gold)
        out = []
        for start in range(0, pre.shape[0], self.chunk_rows):
            p = pre[start : start + self.chunk_rows]
            g = gold[start : start + self.chunk_rows]
            if torch.is_grad_enabled() and p.requires_grad:
                out.append(checkpoint(self.head.log_prob_gold, p, g, use_reentrant=False))
            else:
                out.append(self.head.log_prob_gold(p, g))
        return torch.cat(out) if out else pre.new_zeros(0)

    def log_prob(self, weights: Tensor) -> Tensor:
        """``(..., B, T, S) -> (..., B, T)``, evaluated at every target position."""
        context_pre = torch.matmul(weights, self.memory_pre)  # (..., B, T, D)
        pre = context_pre + self.query_pre
        lead = pre.shape[:-1]
        gold = self.gold.expand(lead)
        flat = self._score_rows(pre.reshape(-1, pre.shape[-1]), gold.reshape(-1))  # (N,)
        return flat.reshape(lead)

    def log_prob_all(self) -> Tensor:
        """``(B, T, S)`` gold log-probability for every source position; 0 at target padding.

        Positions outside ``source_mask`` (when given) are not evaluated and hold 0. Target
        rows go through the head in chunks of whole rows whose positions number at most
        ``chunk_rows`` (a row with more positions than that forms a chunk of its own).
        """
        b, t, _ = self.query_pre.shape
        s = self.memory_pre.shape[1]
        dtype = torch.promote_types(self.query_pre.dtype, torch.float32)  # float32 under autocast
        out = self.query_pre.new_zeros(b, t, s, dtype=dtype)
        rows_b, rows_t = self.target_mask.nonzero(as_tuple=True)  # (N,), (N,)
        n = rows_b.shape[0]
        if n == 0:
            return out
        if self.source_mask is None:
            source_mask = torch.ones(b, s, dtype=torch.bool, device=out.device)
        else:
            source_mask = self.source_mask.to(out.device)
        widths = source_mask.sum(1)[rows_b].tolist()  # positions per target row
        bounds, first, filled = [], 0, 0
        for i, width in enumerate(widths):
            if i > first and filled + width > self.chunk_rows:
                bounds.append((first, i))
                first, filled = i, 0
            filled += width
        bounds.append((first, n))
        index_b, index_t, index_s, pieces = [], [], [], []
        for lo, hi in bounds:
            row, pos = source_mask[rows_b[lo:hi]].nonzero(as_tuple=True)  # the chunk's real pairs
            pb, pt = rows_b[lo:hi][row], rows_t[lo:hi][row]
            pieces.append(self._enumerate_chunk(pb, pt, pos, single=len(bounds) == 1))
            index_b.append(pb)
            index_t.append(pt)
            index_s.append(pos)
        index = (torch.cat(index_b), torch.cat(index_t), torch.cat(index_s))
        return out.index_put(index, torch.cat(pieces))

    def _enumerate_chunk(self, pb: Tensor, pt: Tensor, pos: Tensor, single: bool) -> Tensor:
        """``(n,)`` gold log-probabilities of the pairs (target row ``(pb, pt)``, source position ``pos``)."""

        def run(query_pre: Tensor, memory_pre: Tensor) -> Tensor:
            pre = query_pre[pb, pt] + memory_pre[pb, pos]  # (n, D)
            return self.head.log_prob_gold(pre, self.gold[pb, pt])

        if not single and torch.is_grad_enabled() and (self.query_pre.requires_grad or self.memory_pre.requires_grad):
            return checkpoint(run, self.query_pre, self.memory_pre, use_reentrant=False)
        return run(self.query_pre, self.memory_pre)


class _GoldLogSoftmax(torch.autograd.Function):
    """``log_softmax(hidden @ W^T + b)`` at the gold labels, with a hand-written backward.

    The gradient with respect to the logits is ``g * (onehot(gold) - softmax)``, built from the
    saved log-probabilities in two passes over the ``(N, V)`` block, instead of the half dozen
    that separate ``logsumexp``, ``gather`` and subtraction nodes of autograd make. Saves one
    ``(N, V)`` block, as autograd would.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, gold: Tensor) -> Tensor:
        log_probs = torch.log_softmax(matmul_nt(hidden, weight, bias), 1)  # (N, V)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(hidden, weight, gold, log_probs)
        return log_probs.gather(1, gold.unsqueeze(1)).squeeze(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        hidden, weight, gold, log_probs = ctx.saved_tensors
        grad_logits = torch.exp(log_probs).mul_(-grad.unsqueeze(1))
        grad_logits.scatter_add_(1, gold.unsqueeze(1), grad.unsqueeze(1))
        need_hidden, need_weight, need_bias, _ = ctx.needs_input_grad
        return (
            grad_input(grad_logits, weight) if need_hidden else None,
            grad_weight(grad_logits, hidden) if need_weight else None,
            grad_logits.sum(0) if ctx.has_bias and need_bias else None,
            None,
        )


class LinearSoftmaxHead(nn.Module):
    """The paper's output layer: ``softmax(W_gen · drop(tanh(W_out [q ; c] + b)))``.

    Args:
        query_dim: size of the query ``q`` (the decoder state).
        context_dim: size of a source vector ``x_i``.
        hidden_dim: size of ``tanh(W_out [q ; c] + b)``.
        num_classes: output vocabulary size ``V``.
        dropout: dropout applied after the tanh.
    """

    def __init__(self, query_dim: int, context_dim: int, hidden_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, hidden_dim, bias=True)
        self.context_proj = nn.Linear(context_dim, hidden_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.generator = nn.Linear(hidden_dim, num_classes)

    def query_part(self, query: Tensor) -> Tensor:
        return linear(query, self.query_proj.weight, self.query_proj.bias)

    def context_part(self, context: Tensor) -> Tensor:
        return linear(context, self.context_proj.weight, self.context_proj.bias)

    def hidden(self, pre: Tensor) -> Tensor:
        """``(..., D) -> (..., D)``: the non-linearity and dropout before the generator."""
        return self.dropout(torch.tanh(pre))

    def log_probs(self, pre: Tensor) -> Tensor:
        """``(..., D) -> (..., V)`` full output distribution (for decoding)."""
        logits = linear(self.hidden(pre), self.generator.weight, self.generator.bias)
        return torch.log_softmax(full_precision(logits), dim=-1)  # float32 under autocast too

    def mixture(self, pre: Tensor, weights: Tensor, rows: Tensor, num_rows: int,
                chunk_elements: int = 1 << 20) -> Tensor:
        """``(num_rows, V)`` probabilities ``sum_k weights_k softmax(generator(hidden(pre_k)))`` per row.

        ``pre (M, D)``, ``weights (M,)`` and ``rows (M,)`` list the pairs of a mixture of output
        distributions (e.g. one per source position, weighted by the alignment). The sum is taken
        in probability space, ``chunk_elements`` of ``(pairs, V)`` at a time (4 MB by default, so
        the intermediates stay in the CPU cache); float32 probabilities below about 1e-30 lose
        precision, which callers that need the log of tiny mixtures must handle.
        """
        dtype = torch.promote_types(pre.dtype, torch.float32)  # log_probs are float32 under autocast
        mix = pre.new_zeros(num_rows, self.generator.out_features, dtype=dtype)
        step = max(1, chunk_elements // self.generator.out_features)
        for i in range(0, pre.shape[0], step):
            probs = self.log_probs(pre[i : i + step]).exp_().mul_(weights[i : i + step].unsqueeze(1))
            mix.index_add_(0, rows[i : i + step], probs)
        return mix

    def log_prob_gold(self, pre: Tensor, gold: Tensor) -> Tensor:
        """``pre (N, D)``, ``gold (N,)`` -> ``(N,)`` ``log softmax(generator(hidden(pre)))[gold]``."""
        if autocast_on(pre.device):
            return self.log_probs(pre).gather(1, gold.unsqueeze(1)).squeeze(1)
        return _GoldLogSoftmax.apply(self.hidden(pre), self.generator.weight, self.generator.bias, gold)
