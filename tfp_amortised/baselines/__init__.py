"""Baselines trained on the same generative models as `AmortisedLearner`: encoder methods and the exact gradient.

VAE (`VariationalLearner`), IWAE (`ImportanceWeightedLearner`) and reweighted wake-sleep
(`ReweightedWakeSleepLearner`) take the same `GenerativeModel` object plus an `Encoder` (a Keras layer whose
`call(x)` returns a JointDistribution over the latent nodes; `MeanFieldEncoder` is a ready one), and train
with `compile` / `fit`. Discrete latents are handled by the score-function estimator (VAE, IWAE) or need
nothing special (RWS), so every method runs every model with a sampleable, differentiable log-joint; the
limit is the encoder family, which must be able to cover the posterior (a mean-field encoder cannot
represent correlations, multimodality within a continuous node, or latents on manifolds without a
matching distribution). `ExactGradientLearner` ascends the exact log-likelihood of models that have one: the
oracle for any claim about how well a learner learns.
"""

from tfp_amortised.baselines.encoder import Encoder, MeanFieldEncoder
from tfp_amortised.baselines.exact import ExactGradientLearner
from tfp_amortised.baselines.importance_weighted import ImportanceWeightedLearner
from tfp_amortised.baselines.reweighted_wake_sleep import ReweightedWakeSleepLearner
from tfp_amortised.baselines.variational import VariationalLearner

__all__ = [
    "Encoder",
    "ExactGradientLearner",
    "ImportanceWeightedLearner",
    "MeanFieldEncoder",
    "ReweightedWakeSleepLearner",
    "VariationalLearner",
]
