"""Choosing the device a model runs on, and the precision it trains in, from a user's strings.

``auto`` (the default everywhere) means the first CUDA GPU when this PyTorch build can use
one, else the CPU. ``cpu``, ``cuda`` and ``cuda:N`` ask for one explicitly; asking for a GPU
that is not there is a one-line :class:`VarattnError`, not a stack trace from deep inside
the first tensor copy.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from varattn.errors import VarattnError

AUTO = "auto"
#: training precisions: the dtype ``torch.autocast`` runs products in (None: plain float32)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def resolve_device(spec: str | None = AUTO) -> torch.device:
    """``auto`` / ``None`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> a usable ``torch.device``."""
    if spec is None or spec == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise VarattnError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise VarattnError(f"device {spec!r} is not supported: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise VarattnError(f"device {spec!r} was asked for, but this PyTorch ({torch.__version__}) sees no CUDA GPU; "
                           "use --device cpu, or install the CUDA build of PyTorch (see the README)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise VarattnError(f"device {spec!r} was asked for, but only {torch.cuda.device_count()} CUDA GPU(s) are "
                           "visible")
    return device


@functools.cache
def bf16_supported(device_type: str) -> bool:
    """Whether this machine can train in bf16 autocast on ``device_type`` (``cpu`` or ``cuda``).

    On CUDA it asks the driver. On the CPU it runs a tiny LSTM under autocast: oneDNN has no
    bf16 LSTM primitive for processors without AVX-512 (an AVX2-only EPYC or laptop), and
    ``torch.lstm`` then fails with "could not create a primitive descriptor"; where the
    kernel exists the probe returns in a millisecond. The answer is cached per process.
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    lstm = torch.nn.LSTM(4, 4, batch_first=True)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 2, 4))
    except RuntimeError:
        return False
    return True


def check_precision(device: torch.device, precision: str) -> None:
    """A one-line :class:`VarattnError` unless ``device`` can train in ``precision``; call it before writing."""
    if precision not in PRECISIONS:
        raise VarattnError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
    if PRECISIONS[precision] is torch.bfloat16 and not bf16_supported(device.type):
        where = "this CPU has no bfloat16 LSTM kernel (oneDNN needs AVX-512)" if device.type == "cpu" else \
            f"{device} does not support bfloat16"
        raise VarattnError(f"precision bf16 was asked for, but {where}; train with --set precision=fp32 "
                           "or on a GPU with bf16 support")


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a training forward pass runs in: ``torch.autocast`` for ``bf16``, nothing for ``fp32``.

    Under bf16 autocast the products (LSTMs, projections, output layer) run in bfloat16 while
    the parameters, the softmaxes over alignments and vocabulary, the losses and the gradients
    stay float32 (see ``varattn.kernels``).
    """
    check_precision(device, precision)
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
