"""varattn: latent alignment models and variational attention (Deng et al., NeurIPS 2018).

``varattn.latent`` is the model-agnostic layer (alignment distributions, emissions and the
nine training objectives); ``varattn.nmt`` is the paper's LSTM translation model;
``varattn.load(run_dir)`` opens a trained run.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(run_dir, checkpoint: str = "best", device: str | None = "auto"):
    """Load a trained run directory onto ``device`` (``auto``: a CUDA GPU if there is one, else the CPU).

    Returns a ``varattn.nmt.run.TrainedModel`` for a translation run, a ``varattn.vqa.run.TrainedVQA``
    (``answer(question, image=...)``) for a VQA run: the run's ``run.json`` names its ``"task"``.
    """
    import json
    from pathlib import Path

    try:
        task = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8")).get("task", "nmt")
    except (OSError, ValueError, AttributeError):
        task = "nmt"  # the task's loader gives the one-line error
    if task == "vqa":
        from varattn.vqa.run import load_run as load_vqa

        return load_vqa(run_dir, checkpoint, device)
    from varattn.nmt.run import load_run

    return load_run(run_dir, checkpoint, device)


__all__ = ["load", "__version__"]
