"""ReweightedWakeSleepLearner: each phase against closed forms on factor analysis; separated updates; mixture."""

import numpy as np
import pytest
import tensorflow as tf

from tests.baselines._exact import ExactPosteriorEncoder, factor_analysis
from tests.baselines._mixture import assert_learns_mixture
from tfp_amortised.baselines import MeanFieldEncoder, ReweightedWakeSleepLearner


def posterior_entropy(model):
    """Entropy of the factor-analysis posterior N(m(x), S), the same for every x: 0.5 log det(2 pi e S)."""
    loading, precision = model.loading, model.noise_scale**-2
    precision_z = tf.eye(2) + tf.matmul(loading * precision[:, None], loading, transpose_a=True)
    return 0.5 * (2. * np.log(2. * np.pi * np.e) - tf.linalg.logdet(precision_z))


def test_wake_phases_at_the_exact_posterior():
    model, x = factor_analysis()
    x = x + 2.  # off the model, so that the mean gradient is far from zero (the posterior is still exact)
    learner = ReweightedWakeSleepLearner(model, ExactPosteriorEncoder(model), num_samples=500, seed=0)
    with tf.GradientTape() as tape:
        loss, bound, _ = learner.estimate(x, tf.constant([1, 2]))
        wake_theta = -tf.reduce_mean(bound)
    tf.debugging.assert_near(bound, model.log_marginal(x), atol=1e-4)  # every weight is p(x): exact
    # Wake-phi with uniform weights is the mean of -log q over 500 x 32 posterior draws: -log q(z | x) =
    # entropy - L/2 + chi2_L / 2 has standard deviation 1 (L = 2), so 5 standard errors are 0.01.
    wake_phi = loss + tf.reduce_mean(bound)
    np.testing.assert_allclose(wake_phi, posterior_entropy(model), atol=5. / np.sqrt(500 * 32))
    # Wake-theta (the theta-gradient of the bound, z and q detached; this encoder reads theta, so the loss
    # would add the encoder terms' theta-dependence): the self-normalised estimate of grad log p(x) against the
    # exact gradient (Monte-Carlo relative error ~ 1/sqrt(K M) ~ 0.8% per coordinate; 5% bounds it).
    estimate = tape.gradient(wake_theta, model.trainable_variables)
    with tf.GradientTape() as tape:
        exact_loss = -tf.reduce_mean(model.log_marginal(x))
    exact = tape.gradient(exact_loss, model.trainable_variables)
    flat = [tf.concat([tf.reshape(g, [-1]) for g in grads], 0) for grads in (estimate, exact)]
    assert float(tf.norm(flat[0] - flat[1]) / tf.norm(flat[1])) < 0.05


def test_sleep_phase_at_the_exact_posterior():
    model, _ = factor_analysis()
    learner = ReweightedWakeSleepLearner(model, ExactPosteriorEncoder(model), num_sleep=4000, seed=0)
    # E_{p(z, x)}[-log q(z | x)] is the posterior entropy; -log q has standard deviation 1, 5 SE = 0.08.
    np.testing.assert_allclose(learner.sleep_phi_loss(tf.constant([3, 4])), posterior_entropy(model),
                               atol=5. / np.sqrt(4000))


@pytest.mark.parametrize("insomnia", [0., 0.5, 1.])
def test_updates_are_separated(insomnia):
    model, x = factor_analysis(num_points=16)
    encoder = MeanFieldEncoder({"z": ("normal", 2)}, hidden_units=(4,), seed=1)
    learner = ReweightedWakeSleepLearner(model, encoder, num_samples=4, insomnia=insomnia, num_sleep=16)
    seed = tf.constant([5, 6])
    _, sleep_seed = tf.unstack(tf.random.experimental.stateless_split(seed))
    with tf.GradientTape(persistent=True) as tape:
        loss, bound, _ = learner.estimate(x, seed)
        sleep_phi = learner.sleep_phi_loss(sleep_seed)
        wake_theta = -tf.reduce_mean(bound)
        encoder_terms = loss - wake_theta  # insomnia * wake-phi + (1 - insomnia) * sleep-phi
    # The model moves by wake-theta alone, whatever the encoder terms.
    for got, want in zip(tape.gradient(loss, model.trainable_variables),
                         tape.gradient(wake_theta, model.trainable_variables)):
        tf.debugging.assert_near(got, want, atol=1e-6)
    # The encoder moves by the encoder terms alone: wake-theta does not reach it, and sleep-phi does iff
    # insomnia < 1.
    for got, want in zip(tape.gradient(loss, encoder.trainable_variables),
                         tape.gradient(encoder_terms, encoder.trainable_variables)):
        tf.debugging.assert_near(got, want, atol=1e-5)
    assert all(g is None for g in tape.gradient(wake_theta, encoder.trainable_variables))
    if insomnia == 0.:
        for got, want in zip(tape.gradient(loss, encoder.trainable_variables),
                             tape.gradient(sleep_phi, encoder.trainable_variables)):
            tf.debugging.assert_near(got, want, atol=1e-5)


def test_learns_mixture():
    assert_learns_mixture(lambda model, encoder: ReweightedWakeSleepLearner(model, encoder, num_samples=5, seed=0))
