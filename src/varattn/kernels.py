"""Every speed trick of the library, behind one switch.

The models (``varattn.latent``, ``varattn.nmt``, ``varattn.vqa``) are written as the maths and
call the plain functions below for their heavy operations. Each function has a *plain path*,
ordinary PyTorch (``nn.functional.linear``, autograd, packed LSTMs), and a *fast path* that
computes the same result (to float32 rounding) faster on the CPU:

* ``linear``: products through oneDNN's fp32 kernel (``torch.ops.mkldnn._linear_pointwise``)
  when it exists and computes exact fp32 products (checked once, on first use). PyTorch's CPU
  products go to its BLAS, which on some processors (the AMD EPYC machines this project is
  measured on) reaches half of what oneDNN does (``benchmarks/speed.py`` prints both);
* ``gold_log_softmax``: ``log_softmax(h W^T + b)[gold]`` with a hand-written backward, two passes
  over the ``(N, V)`` block instead of the half dozen that autograd's separate nodes make;
* ``step_linear``: a weight applied once per decoder step whose gradient is taken in one matrix
  product over all steps when the backward pass reaches it, instead of one small product and
  one weight-sized accumulation per step;
* ``lstm_padded``: an LSTM over padded sentences through the fused kernel (each direction reading
  only a sentence's real tokens), instead of a packed sequence, which PyTorch runs one time step
  at a time on the CPU.

The switch: the environment variable ``VARATTN_FAST=0`` turns every fast path off (the plain
PyTorch path runs), as do ``set_enabled(False)`` and the context manager ``fast_paths(False)``.
Under ``torch.autocast`` the fast products (``linear``, ``gold_log_softmax``, ``step_linear``) step
aside by themselves (autocast casts the plain products to its lower precision); ``lstm_padded``'s
fused kernel runs under autocast as ``nn.LSTM``'s does. ``tests/test_speed_options.py`` checks that both paths give
the same values and gradients. This module knows no task: it depends on torch only.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

#: the environment variable that turns every fast path off when set to 0 (or false, no, off)
ENV_VAR = "VARATTN_FAST"

_enabled: bool | None = None  # None: read ENV_VAR on next use
_onednn_exact: bool | None = None  # None: not probed yet


# -- the switch -------------------------------------------------------------------------------
def enabled() -> bool:
    """Whether the fast paths run (``set_enabled``/``fast_paths`` override ``VARATTN_FAST``)."""
    global _enabled
    if _enabled is None:
        _enabled = os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")
    return _enabled


def set_enabled(flag: bool | None) -> None:
    """Turn every fast path on (True) or off (False); None: follow ``VARATTN_FAST`` again."""
    global _enabled
    _enabled = None if flag is None else bool(flag)


@contextlib.contextmanager
def fast_paths(flag: bool) -> Iterator[None]:
    """``with fast_paths(False): ...`` runs the block on the plain PyTorch paths, then restores the switch."""
    global _enabled
    before = _enabled
    set_enabled(flag)
    try:
        yield
    finally:
        _enabled = before


def autocast_on(device: torch.device) -> bool:
    """Whether ``torch.autocast`` is active for ``device``'s type (``cpu``, ``cuda``) right now."""
    return torch.is_autocast_enabled(device.type)


def _fast_for(*tensors: Tensor | None) -> bool:
    """Whether an operation on ``tensors`` (None: absent) takes its fast path."""
    present = [t for t in tensors if t is not None]
    return enabled() and not any(autocast_on(t.device) for t in present)


# -- matrix products ----------------------------------------------------------------------------
def _onednn_probe() -> bool:
    """True when ``torch.ops.mkldnn._linear_pointwise`` exists and computes exact fp32 products."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        op = torch.ops.mkldnn._linear_pointwise
        a = torch.full((3, 5), 1 + 2**-12)  # 1 + 2^-12 does not survive a reduced-precision (bf16/tf32) product
        b = torch.eye(4, 5)
        if not torch.equal(op(a, b, None, "none", [], ""), a[:, :4]):
            return False
        gen = torch.Generator().manual_seed(0)  # never the global generator: runs must not depend on the probe
        x = torch.randn(9, 7, dtype=torch.float64, generator=gen)
        w = torch.randn(6, 7, dtype=torch.float64, generator=gen)
        got = op(x.float(), w.float(), None, "none", [], "").double()
        return torch.allclose(got, x @ w.t(), rtol=1e-5, atol=1e-5)
    except Exception:  # noqa: BLE001 - a private operator: anything wrong means "do not use it"
        return False


def onednn_available() -> bool:
    """Whether oneDNN's fp32 product exists here and is exact (probed once, whatever the switch)."""
    global _onednn_exact
    if _onednn_exact is None:
        _onednn_exact = _onednn_probe()
    return _onednn_exact


def _use_onednn(*tensors: Tensor | None) -> bool:
    """Whether a product of ``tensors`` (None: absent bias) goes through oneDNN."""
    present = [t for t in tensors if t is not None]
    return (enabled() and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.numel() for t in present)
            and onednn_available())


def _packed(t: Tensor) -> Tensor:
    """``t`` if it or its transpose is contiguous (oneDNN is slow on other strides), else a contiguous copy."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _mm_nt(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a @ b.T (+ bias)`` for 2-D ``a (N, K)``, ``b (M, K)`` (any strides): ``(N, M)``; no autograd."""
    if _use_onednn(a, b, bias):
        return torch.ops.mkldnn._linear_pointwise(_packed(a), _packed(b), bias, "none", [], "")
    return torch.mm(a, b.t()) if bias is None else torch.addmm(bias, a, b.t())


def _grad_input(grad: Tensor, weight: Tensor) -> Tensor:
    """``grad (N, M) @ weight (M, K)``: the input gradient of ``x @ weight.T``."""
    if not _use_onednn(grad, weight):
        return torch.mm(grad, weight)
    # oneDNN: a contiguous transpose is faster for many rows; for a few, the copy costs more than the product
    return _mm_nt(grad, weight.t().contiguous() if grad.shape[0] >= 256 else weight.t())


def _grad_weight(grad: Tensor, x: Tensor) -> Tensor:
    """``grad.T (M, N) @ x (N, K)``: the weight gradient of ``x @ weight.T``."""
    if not _use_onednn(grad, x):
        return torch.mm(grad.t(), x)
    return _mm_nt(x.t(), grad.t()).t().contiguous()  # oneDNN is faster at (x.T @ grad).T


class _Linear(torch.autograd.Function):
    """``x @ W^T + b`` for 2-D ``x``, every product (backward too) through ``_mm_nt``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm_nt(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        return (
            _grad_input(grad, weight) if need_x else None,
            _grad_weight(grad, x) if need_w else None,
            grad.sum(0) if ctx.has_bias and need_b else None,
        )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias``: ``x (..., K)``, ``weight (M, K)``, ``bias (M,)`` or None -> ``(..., M)``.

    ``nn.functional.linear``; the fast path sends the products (and those of the backward pass)
    through oneDNN's fp32 kernel where that is exact.
    """
    if not (_fast_for(x) and _use_onednn(x, weight, bias)):
        return nn.functional.linear(x, weight, bias)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])  # (N, K)
    needs_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    out = _Linear.apply(flat, weight, bias) if torch.is_grad_enabled() and needs_grad else _mm_nt(flat, weight, bias)
    return out.reshape(*lead, weight.shape[0])


# -- the output layer at the gold labels ----------------------------------------------------------
class _GoldLogSoftmax(torch.autograd.Function):
    """``log_softmax(hidden @ W^T + b)`` at the gold labels, with a hand-written backward.

    The gradient with respect to the logits is ``g * (onehot(gold) - softmax)``, built from the
    saved log-probabilities in two passes over the ``(N, V)`` block. Saves one ``(N, V)`` block,
    as autograd would.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, gold: Tensor) -> Tensor:
        log_probs = torch.log_softmax(_mm_nt(hidden, weight, bias), 1)  # (N, V)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(hidden, weight, gold, log_probs)
        return log_probs.gather(1, gold.unsqueeze(1)).squeeze(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        hidden, weight, gold, log_probs = ctx.saved_tensors
        grad_logits = torch.exp(log_probs).mul_(-grad.unsqueeze(1))  # (N, V)
        grad_logits.scatter_add_(1, gold.unsqueeze(1), grad.unsqueeze(1))
        need_hidden, need_weight, need_bias, _ = ctx.needs_input_grad
        return (
            _grad_input(grad_logits, weight) if need_hidden else None,
            _grad_weight(grad_logits, hidden) if need_weight else None,
            grad_logits.sum(0) if ctx.has_bias and need_bias else None,
            None,
        )


def gold_log_softmax(hidden: Tensor, weight: Tensor, bias: Tensor | None, gold: Tensor) -> Tensor:
    """``log_softmax(hidden @ weight.T + bias)[n, gold[n]]``: ``hidden (N, D)``, ``gold (N,)`` -> ``(N,)``.

    The log-softmax is taken in float32 at least (also when autocast makes the logits bfloat16).
    """
    if _fast_for(hidden) and hidden.dim() == 2:
        return _GoldLogSoftmax.apply(hidden, weight, bias, gold)
    logits = nn.functional.linear(hidden, weight, bias)  # (N, V)
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return torch.log_softmax(logits, -1).gather(-1, gold.unsqueeze(-1)).squeeze(-1)


# -- a weight used at every decoder step -----------------------------------------------------------
class _GradBank:
    """The inputs and output gradients of one weight's per-step products (see ``_StepProduct``)."""

    def __init__(self):
        self.inputs: list[Tensor] = []
        self.grads: list[Tensor | None] = []


class _BankToken(torch.autograd.Function):
    """Links a weight to its ``_GradBank``: a scalar through which the weight's gradient arrives.

    Its backward runs once every per-step product that used the weight has run its own (they
    all depend on the token), and computes the weight gradient ``sum_t g_t^T x_t`` as one
    matrix product over all steps.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, bank: _GradBank) -> Tensor:
        ctx.bank = bank
        return weight.new_zeros(())

    @staticmethod
    def backward(ctx, _grad: Tensor):
        bank = ctx.bank
        used = [i for i, g in enumerate(bank.grads) if g is not None]
        if not used:
            return None, None
        grads = torch.cat([bank.grads[i] for i in used])  # (steps * B, M)
        inputs = torch.cat([bank.inputs[i] for i in used])  # (steps * B, K)
        bank.grads = [None] * len(bank.grads)
        return _grad_weight(grads, inputs), None


class _StepProduct(torch.autograd.Function):
    """``x @ weight.T`` for one decoder step; the weight's gradient is left to its ``_BankToken``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, token: Tensor, bank: _GradBank) -> Tensor:
        ctx.bank, ctx.index = bank, len(bank.inputs)
        bank.inputs.append(x.detach())
        bank.grads.append(None)
        ctx.save_for_backward(weight)
        return _mm_nt(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        ctx.bank.grads[ctx.index] = grad
        grad_x = _grad_input(grad, weight) if ctx.needs_input_grad[0] else None
        return grad_x, None, grad.new_zeros(()), None


class _BulkGradLinear:
    """``x -> x @ weight.T`` per step, the weight gradient of all steps taken in one product."""

    def __init__(self, weight: Tensor):
        self.weight = weight
        self.bank = _GradBank()
        self.token = _BankToken.apply(weight, self.bank)

    def __call__(self, x: Tensor) -> Tensor:
        return _StepProduct.apply(x, self.weight, self.token, self.bank)


def step_linear(weight: Tensor) -> Callable[[Tensor], Tensor]:
    """``x (B, K) -> x @ weight.T (B, M)`` for a ``weight (M, K)`` applied once per step of a loop.

    Build it once before the loop and call it at every step. The fast path (when the weight
    wants a gradient) records each step's input and output gradient and computes the weight's
    gradient ``sum_t g_t^T x_t`` in one product when the backward pass reaches the weight.
    """
    if _fast_for(weight) and torch.is_grad_enabled() and weight.requires_grad and weight.dim() == 2:
        return _BulkGradLinear(weight)
    return lambda x: linear(x, weight)


# -- gathering rows by index ----------------------------------------------------------------------
def pick(x: Tensor, *index: Tensor) -> Tensor:
    """``x[i0, i1, ...]`` for 1-D integer indices over ``x``'s leading dimensions: ``(n, *x.shape[k:])``.

    The same values as advanced indexing, with a backward pass that gives the same bits on every
    run. Advanced indexing's backward (``index_put_`` with accumulation) adds into the gradient with
    atomic float additions from several threads on the CPU once it has 32,768 elements or more, so
    its rounding depends on the order in which the threads arrive; this goes through an embedding
    lookup, whose backward adds in a fixed order.
    """
    k = len(index)
    flat = index[0]
    for size, i in zip(x.shape[1:k], index[1:]):
        flat = flat * size + i
    rows = nn.functional.embedding(flat, x.reshape(math.prod(x.shape[:k]), math.prod(x.shape[k:])))
    return rows.reshape(flat.shape[0], *x.shape[k:])


# -- LSTMs over padded batches --------------------------------------------------------------------
def _reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each row of ``x (B, L, ...)`` within its first ``lengths[b]`` positions; padding stays put."""
    pos = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, L)
    lengths = lengths.to(x.device)[:, None]  # (B, 1)
    index = torch.where(pos < lengths, lengths - 1 - pos, pos)  # (B, L), an involution
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


def _layer_params(lstm: nn.LSTM, layer: int, suffix: str = "") -> list[Tensor]:
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if lstm.bias else [])
    return [getattr(lstm, f"{name}_l{layer}{suffix}") for name in names]


def _lstm_fused(lstm: nn.LSTM, inputs: Tensor, lengths: Tensor) -> Tensor:
    """``lstm_padded``'s fast path: every layer and direction through the fused kernel on padded input.

    The forward direction runs on the batch as it is (padding comes after every real token),
    the backward direction on the batch with every sentence reversed within its length, then
    reversed back. Dropout between layers is applied as ``nn.LSTM`` does.
    """
    batch, steps = inputs.shape[:2]
    lengths = lengths.to(inputs.device)
    mask = (torch.arange(steps, device=inputs.device)[None, :] < lengths[:, None]).unsqueeze(-1)  # (B, L, 1)
    zeros = inputs.new_zeros(1, batch, lstm.hidden_size)
    x = inputs
    for layer in range(lstm.num_layers):
        if layer > 0 and lstm.dropout > 0 and lstm.training:
            x = nn.functional.dropout(x, lstm.dropout, True)
        outputs = []
        for suffix in ["", "_reverse"] if lstm.bidirectional else [""]:
            seq = x if not suffix else _reverse_within(x, lengths)
            out = torch.lstm(seq, (zeros, zeros), _layer_params(lstm, layer, suffix), lstm.bias, 1, 0.0,
                             lstm.training, False, True)[0]  # (B, L, H)
            outputs.append(out if not suffix else _reverse_within(out, lengths))
        x = torch.cat(outputs, -1) if len(outputs) > 1 else outputs[0]  # (B, L, directions * H)
    return x.masked_fill(~mask, 0.0)


def lstm_padded(lstm: nn.LSTM, inputs: Tensor, lengths: Tensor) -> Tensor:
    """``lstm`` over ``inputs (B, L, E)`` with real ``lengths (B,)``: ``(B, L, directions * H)``, 0 at padding.

    What ``lstm`` computes on the packed sequences (each direction reads only a sentence's real
    tokens; padding input never matters). ``lstm`` must be ``batch_first`` without projections.
    The fast path runs padded through the fused kernel (about twice as fast on the CPU); with
    inter-layer dropout in training the two paths draw different dropout masks.
    """
    if not (lstm.batch_first and lstm.proj_size == 0):
        raise ValueError("expected a batch_first LSTM without projections")
    if enabled():
        return _lstm_fused(lstm, inputs, lengths)
    packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out = lstm(packed)[0]
    return pad_packed_sequence(out, batch_first=True, total_length=inputs.shape[1])[0]
