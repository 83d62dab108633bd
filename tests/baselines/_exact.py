"""Shared fixtures of the baseline tests: factor-analysis data and its exact posterior as an encoder."""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.baselines import Encoder
from tfp_amortised.models import FactorAnalysisModel

tfd = tfp.distributions


class ExactPosteriorEncoder(Encoder):
    """The factor-analysis posterior `N(S W^T Psi^-1 (x - b), S)`, `S = (I + W^T Psi^-1 W)^-1`."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def call(self, x):
        loading, precision = self.model.loading, self.model.noise_scale**-2
        covariance = tf.linalg.inv(tf.eye(self.model.latent_dim)
                                   + tf.matmul(loading * precision[:, None], loading, transpose_a=True))
        loc = tf.linalg.matvec(tf.matmul(covariance, loading * precision[:, None], transpose_b=True),
                               x - self.model.bias)
        return tfd.JointDistributionNamed({"z": tfd.MultivariateNormalTriL(loc, tf.linalg.cholesky(covariance))})


def factor_analysis(num_points=32, seed=0):
    """A 2-latent, 4-dimensional FA model with non-trivial noise, and `num_points` observations from it."""
    model = FactorAnalysisModel(2, 4, seed=seed)
    model.bias.assign([0.5, -1., 0., 2.])
    model.raw_noise.assign(np.log(np.expm1([0.5, 0.8, 1.2, 0.7])).astype(np.float32))
    x = model.joint_distribution().sample(num_points, seed=[seed, 1])[1]
    return model, x
