"""The model-agnostic latent alignment layer: distributions, emissions and objectives."""

from varattn.latent.distributions import (
    MaskedCategorical,
    MaskedDirichlet,
    kmax,
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
    register,
)
from varattn.latent.options import Option
from varattn.latent.prediction import (
    ContextPredictor,
    EmissionPredictor,
    PredictiveHead,
    Predictor,
    mixture_from_each,
)

__all__ = [
    "AlignmentProblem",
    "AlignmentSampler",
    "ContextEmission",
    "ContextPredictor",
    "Emission",
    "EmissionPredictor",
    "LinearSoftmaxHead",
    "LossTerms",
    "MaskedCategorical",
    "MaskedDirichlet",
    "Objective",
    "Option",
    "OutputHead",
    "PredictiveHead",
    "Predictor",
    "Scores",
    "kmax",
    "make_objective",
    "masked_log_softmax",
    "mixture_from_each",
    "mode_names",
    "mode_options",
    "objective_class",
    "register",
    "relaxed_concentration",
]
