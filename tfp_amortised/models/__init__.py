"""Example generative models, each a `GenerativeModel` with its JointDistribution and, where exact, log p(x)."""

from tfp_amortised.models.factor_analysis import FactorAnalysisModel
from tfp_amortised.models.gaussian_mixture import GaussianMixtureModel

__all__ = ["FactorAnalysisModel", "GaussianMixtureModel"]
