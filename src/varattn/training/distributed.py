"""Data-parallel training with PyTorch's own engine (``torch.distributed`` + DistributedDataParallel).

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), every process trains the same model on its own share of each step's batches:

* step ``k`` of an epoch uses the next ``N`` batches of the task's (deterministic, length-bucketed)
  batch list, batch ``p + r`` on rank ``r`` -- every batch once per epoch across ranks, none twice.
  At the end of an epoch a rank without a batch of its own reruns the group's first one with
  weight 0, so that every rank takes part in the gradient all-reduce;
* the loss is normalised by the *global* normaliser (all-reduced, e.g. the sentences of all ranks)
  and multiplied by ``N`` to undo DDP's averaging: N processes take the step one process would take
  on the combined batch;
* validation figures are summed across ranks; only rank 0 writes logs, metrics, progress bars and
  checkpoints;
* torch's random stream differs per rank (sampling modes, dropout); ``resume/`` keeps every rank's.

Backends: NCCL on CUDA, gloo on the CPU. Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing
here runs a collective, and training is exactly the single-process loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from varattn.errors import VarattnError

log = logging.getLogger("varattn")


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def world_from_env() -> World:
    """The ``World`` torchrun describes in the environment (one process when it does not)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise VarattnError(f"bad torchrun environment (RANK / WORLD_SIZE / LOCAL_RANK): {exc}") from None
    return World(rank, size, local) if size > 1 else SINGLE


def init(world: World, device: torch.device, timeout_s: float) -> None:
    """Join the process group (NCCL for CUDA devices, gloo otherwise); quiet logging on ranks > 0.

    ``timeout_s`` bounds every collective: a rank that died or hangs ends the job with an error
    instead of a hang (torchrun then stops the others).
    """
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), rank=world.rank,
                            world_size=world.size, **({"device_id": device} if device.type == "cuda" else {}))
    if not world.main:  # one voice: rank 0 logs and prints; errors still reach stderr from every rank
        logging.getLogger("varattn").setLevel(logging.ERROR)
        silence_repeated_warnings()
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this rank's process
    log.info("data-parallel training on %d processes (%s)", world.size, backend)


#: warnings every rank would print alike (DDP's note that no parameter went unused): rank 0 prints them
REPEATED_WARNINGS = (r"find_unused_parameters=True was specified",)


def silence_repeated_warnings() -> None:
    """On ranks other than 0: drop the warnings that rank 0 prints as well (:data:`REPEATED_WARNINGS`)."""
    for pattern in REPEATED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def device_for(world: World, device: torch.device) -> torch.device:
    """Each rank's own GPU (``cuda:LOCAL_RANK``) when training on CUDA with several processes."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def rank_seed(seed: int, rank: int, step: int) -> int:
    """A seed for rank ``rank``'s random stream from step ``step`` on (distinct per rank and step)."""
    return int(hashlib.sha256(f"varattn/{seed}/{rank}/{step}".encode()).hexdigest()[:15], 16)


def sum_vector(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sum_dicts(d: dict) -> dict:
    """Key-wise sum of every rank's dictionary of numbers, added in rank order (the same on every rank)."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, d)
    out: dict = {}
    for part in gathered:
        for key, value in part.items():
            out[key] = out.get(key, 0) + value
    return out


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order (on every rank)."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    dist.barrier()


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
