"""VariationalLearner: the ELBO against closed forms on factor analysis; learning a Gaussian mixture."""

import numpy as np
import tensorflow as tf

from tests.baselines._exact import ExactPosteriorEncoder, factor_analysis
from tests.baselines._mixture import assert_learns_mixture
from tfp_amortised.baselines import MeanFieldEncoder, VariationalLearner


def test_elbo_is_log_marginal_at_the_exact_posterior():
    model, x = factor_analysis()
    learner = VariationalLearner(model, ExactPosteriorEncoder(model), seed=0)
    # log p(z, x) - log q(z | x) = log p(x) for every z when q is the posterior: zero Monte-Carlo error,
    # only float32 round-off on terms of size ~10 (1e-4 absolute).
    tf.debugging.assert_near(learner.bound(x), model.log_marginal(x), atol=1e-4)
    learner.compile(optimizer="adam")
    logs = learner.evaluate(x, batch_size=32, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["loss"], -float(tf.reduce_mean(model.log_marginal(x))), atol=1e-4)


def closed_form_elbo(model, loc, scale, x):
    """E_q[log p(x | z) + log p(z) - log q(z)] for q = N(loc, diag(scale^2)) in factor analysis: [M]."""
    noise_var = model.noise_scale**2
    residual = x - tf.linalg.matvec(model.loading, loc) - model.bias  # [M, D]
    spread = tf.matmul(scale**2, model.loading**2, transpose_b=True)  # [M, D]: diag(W S W^T)
    likelihood = -0.5 * tf.reduce_sum(tf.math.log(2. * np.pi * noise_var) + (residual**2 + spread) / noise_var, -1)
    prior = -0.5 * tf.reduce_sum(np.log(2. * np.pi) + loc**2 + scale**2, -1)
    entropy = tf.reduce_sum(0.5 * np.log(2. * np.pi * np.e) + tf.math.log(scale), -1)
    return likelihood + prior + entropy


def test_elbo_matches_closed_form_for_a_mean_field_encoder():
    model, x = factor_analysis(num_points=16)
    encoder = MeanFieldEncoder({"z": ("normal", 2)}, hidden_units=(), seed=1)
    num_samples = 4000
    learner = VariationalLearner(model, encoder, num_samples=num_samples, seed=0)
    _, log_p, log_q, _ = learner.encoder_samples(x, num_samples, seed=[5, 6])
    q = encoder(x).model["z"]
    exact = closed_form_elbo(model, q.mean(), q.stddev(), x)
    # Each point's ELBO is a mean of K = 4000 draws: within 5 standard errors (from the draws themselves).
    error = 5. * tf.math.reduce_std(log_p - log_q, axis=0) / np.sqrt(num_samples)
    tf.debugging.assert_less_equal(tf.abs(tf.reduce_mean(log_p - log_q, 0) - exact), error)
    tf.debugging.assert_less_equal(exact, model.log_marginal(x))  # and it is a lower bound


def test_learns_mixture():
    assert_learns_mixture(lambda model, encoder: VariationalLearner(model, encoder, seed=0))
