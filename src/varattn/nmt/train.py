"""Train the NMT model on the training core: ``trainer`` and ``train`` of the registered task ``NMT``.

``train(cfg, run_dir, resume=False, progress=None, tensorboard=True)`` trains per ``cfg`` into ``run_dir``
(or continues it) and returns the last validation record; ``trainer(...)`` gives the
``varattn.training.Trainer`` instead (see ``varattn.training.registry.TaskSpec``).
"""

from __future__ import annotations

from varattn.nmt.registration import NMT

trainer, train = NMT.trainer, NMT.train

__all__ = ["train", "trainer"]
