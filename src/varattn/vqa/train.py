"""Train the VQA model on the training core: ``trainer`` and ``train`` of the registered task ``VQA``.

``train(cfg, run_dir, resume=False, progress=None, tensorboard=True)`` trains per ``cfg`` into ``run_dir``
(or continues it) and returns the last validation record; ``trainer(...)`` gives the
``varattn.training.Trainer`` instead (see ``varattn.training.registry.TaskSpec``).
"""

from __future__ import annotations

from varattn.vqa.registration import VQA

trainer, train = VQA.trainer, VQA.train

__all__ = ["train", "trainer"]
