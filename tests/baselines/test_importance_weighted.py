"""ImportanceWeightedLearner: the IWAE bound against exact log p(x) and the ELBO; learning a Gaussian mixture."""

import numpy as np
import tensorflow as tf

from tests.baselines._exact import ExactPosteriorEncoder, factor_analysis
from tests.baselines._mixture import assert_learns_mixture
from tfp_amortised.baselines import ImportanceWeightedLearner, MeanFieldEncoder, VariationalLearner
from tfp_amortised.baselines.importance_weighted import importance_weighted_bound


def test_bound_is_log_marginal_at_the_exact_posterior():
    model, x = factor_analysis()
    learner = ImportanceWeightedLearner(model, ExactPosteriorEncoder(model), num_samples=3, seed=0)
    # Every importance weight equals p(x): the bound is exact up to float32 round-off.
    tf.debugging.assert_near(learner.bound(x), model.log_marginal(x), atol=1e-4)


def test_one_sample_is_the_elbo():
    model, x = factor_analysis(num_points=8)
    encoder = MeanFieldEncoder({"z": ("normal", 2)}, hidden_units=(), seed=1)
    iwae = ImportanceWeightedLearner(model, encoder, num_samples=1)
    vae = VariationalLearner(model, encoder, num_samples=1)
    tf.debugging.assert_near(iwae.bound(x, seed=[3, 4]), vae.bound(x, seed=[3, 4]), atol=1e-5)


def test_bound_increases_with_samples_and_stays_below_log_marginal():
    model, x = factor_analysis(num_points=64)
    encoder = MeanFieldEncoder({"z": ("normal", 2)}, hidden_units=(), seed=1)
    learner = VariationalLearner(model, encoder)
    _, log_p, log_q, _ = learner.encoder_samples(x, 2000, seed=[1, 2])
    log_w = tf.reshape(log_p - log_q, [-1, 10, 64])  # 200 independent IWAE_10 draws (and 2000 of IWAE_1)
    elbo = tf.reduce_mean(log_w, axis=[0, 1])
    iwae = tf.reduce_mean(importance_weighted_bound(tf.transpose(log_w, [1, 0, 2])), axis=0)
    exact = model.log_marginal(x)
    # Monte-Carlo standard errors of the two averages per point; the gaps (~0.1-1 nat for this random encoder)
    # must exceed 4 standard errors of their difference for the order to be resolved.
    se_elbo = tf.math.reduce_std(log_w, axis=[0, 1]) / np.sqrt(2000.)
    se_iwae = tf.math.reduce_std(importance_weighted_bound(tf.transpose(log_w, [1, 0, 2])), axis=0) / np.sqrt(200.)
    tf.debugging.assert_greater(iwae - elbo, -4. * (se_elbo + se_iwae))
    tf.debugging.assert_less(iwae, exact + 4. * se_iwae)
    # Averaged over the 64 points the order is strict: the mean gap exceeds 4 standard errors of the mean.
    assert float(tf.reduce_mean(iwae - elbo)) > 4. * float(tf.norm(se_elbo + se_iwae)) / 64.


def test_learns_mixture():
    assert_learns_mixture(lambda model, encoder: ImportanceWeightedLearner(model, encoder, num_samples=5, seed=0))
