"""Choosing the device a model runs on, and the precision it trains in, from a user's strings.

``auto`` (the default everywhere) means the first CUDA GPU when this PyTorch build can use
one, else the CPU. ``cpu``, ``cuda`` and ``cuda:N`` ask for one explicitly; asking for a GPU
that is not there is a one-line :class:`VarattnError`, not a stack trace from deep inside
the first tensor copy.
"""

from __future__ import annotations

import contextlib

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


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a training forward pass runs in: ``torch.autocast`` for ``bf16``, nothing for ``fp32``.

    Under bf16 autocast the products (LSTMs, projections, output layer) run in bfloat16 while
    the parameters, the softmaxes over alignments and vocabulary, the losses and the gradients
    stay float32 (see ``varattn.latent.emission.autocast_on``).
    """
    if precision not in PRECISIONS:
        raise VarattnError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
