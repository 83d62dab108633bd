"""Example generative models, each a `GenerativeModel` with its JointDistribution and, where exact, log p(x)."""

from tfp_amortised.models.bernoulli_mixture import BernoulliMixtureModel
from tfp_amortised.models.binary_factor import BinaryFactorModel
from tfp_amortised.models.blowfly import BlowflyModel, BlowflySummaries, load_blowfly
from tfp_amortised.models.circle import CircleModel
from tfp_amortised.models.factor_analysis import FactorAnalysisModel
from tfp_amortised.models.gaussian_mixture import GaussianMixtureModel
from tfp_amortised.models.hierarchical import HierarchicalPoissonModel
from tfp_amortised.models.ica import IndependentComponentsModel, amari_index
from tfp_amortised.models.image_decoder import (ImageDecoderModel, frechet_distance, load_digits, load_mnist,
                                                 pca_features)
from tfp_amortised.models.neural_process import (NeuralProcessModel, predict_from_context, sine_functions,
                                                  sine_posterior_mean)
from tfp_amortised.models.sigmoid_belief import SigmoidBeliefNetworkModel
from tfp_amortised.models.softplus import SoftplusGaussianModel
from tfp_amortised.models.state_space import AutoregressiveStateSpaceModel

__all__ = [
    "AutoregressiveStateSpaceModel",
    "BernoulliMixtureModel",
    "BinaryFactorModel",
    "BlowflyModel",
    "BlowflySummaries",
    "CircleModel",
    "FactorAnalysisModel",
    "GaussianMixtureModel",
    "HierarchicalPoissonModel",
    "ImageDecoderModel",
    "IndependentComponentsModel",
    "NeuralProcessModel",
    "SigmoidBeliefNetworkModel",
    "SoftplusGaussianModel",
    "amari_index",
    "frechet_distance",
    "load_blowfly",
    "load_digits",
    "load_mnist",
    "pca_features",
    "predict_from_context",
    "sine_functions",
    "sine_posterior_mean",
]
