"""The model-agnostic latent alignment layer: distributions, emissions and objectives."""

from varattn.latent.distributions import (
    MaskedCategorical,
    MaskedDirichlet,
    masked_log_softmax,
    relaxed_concentration,
)
from varattn.latent.emission import ContextEmission, Emission, LinearSoftmaxHead, OutputHead
from varattn.latent.objectives import (
    AlignmentProblem,
    AlignmentSampler,
    LossTerms,
    Objective,
    Scores,
    make_objective,
    mode_names,
    mode_options,
    objective_class,
)

__all__ = [
    "AlignmentSampler",
    "mode_options",
    "AlignmentProblem",
    "ContextEmission",
    "Emission",
    "LinearSoftmaxHead",
    "LossTerms",
    "MaskedCategorical",
    "MaskedDirichlet",
    "Objective",
    "OutputHead",
    "Scores",
    "make_objective",
    "masked_log_softmax",
    "mode_names",
    "objective_class",
    "relaxed_concentration",
]
