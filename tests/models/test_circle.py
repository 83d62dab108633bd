"""CircleModel: its log-density by hand, its quadrature log p(x), the Gabor tools, and a short training run."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.circle import CircleModel, gabor, gabor_patches, kuiper_test, match_gabor


def _normal_log_density(x, mean, scale):
    return np.sum(-0.5 * ((x - mean) / scale)**2 - np.log(scale) - 0.5 * np.log(2. * np.pi), axis=(-2, -1))


@pytest.mark.parametrize("z_shape, x_shape", [((3,), (3,)), ((1, 4), (2, 1)), ((2, 3), (2, 3))])
def test_log_joint_is_uniform_angle_plus_normal_image(z_shape, x_shape):
    model = CircleModel(4, hidden_units=(5,), scale=0.3, seed=0)
    z = tf.random.stateless_uniform(z_shape, [0, 1], -math.pi, math.pi)
    x = tf.random.stateless_normal(x_shape + (4, 4), [0, 2])
    log_joint = model.joint_distribution().log_prob(z, x)
    mean = model.decode(z).numpy()
    expected = -np.log(2. * np.pi) + _normal_log_density(x.numpy(), mean, 0.3)
    np.testing.assert_allclose(log_joint, expected, rtol=1e-5)  # float32 sums of 16 terms


def test_sample_shapes_and_range():
    sample = CircleModel(5, seed=0).joint_distribution().sample(7, seed=[1, 2])
    assert sample[0].shape == (7,) and sample[1].shape == (7, 5, 5)
    assert np.all(np.abs(sample[0]) <= np.pi)


def test_log_marginal_quadrature_is_exact_for_a_constant_decoder():
    # With a zero kernel the decoder outputs its bias whatever z is, so p(x) = N(x; bias, scale^2 I) exactly.
    model = CircleModel(3, hidden_units=(4,), scale=0.7, seed=0)
    model.decoder.layers[-1].kernel.assign(tf.zeros_like(model.decoder.layers[-1].kernel))
    model.decoder.layers[-1].bias.assign(tf.linspace(-1., 1., 9))
    x = tf.random.stateless_normal([6, 3, 3], [3, 4])
    expected = _normal_log_density(x.numpy(), np.linspace(-1., 1., 9).reshape(3, 3), 0.7)
    np.testing.assert_allclose(model.log_marginal(x, num_points=64), expected, rtol=1e-5)


def test_log_marginal_quadrature_has_converged():
    # Trapezoid rule on a smooth periodic integrand: 256 and 2048 angles agree to float32 precision.
    model = CircleModel(6, scale=0.3, seed=1)
    x = model.joint_distribution().sample(5, seed=[5, 6])[1]
    np.testing.assert_allclose(model.log_marginal(x, 256), model.log_marginal(x, 2048), rtol=1e-4)


def test_gabor_is_odd_under_half_turn():
    angle = tf.constant([0.3, -2.])
    np.testing.assert_allclose(gabor(angle + math.pi, 8), -gabor(angle, 8), atol=1e-5)


def test_match_gabor_recovers_orientations():
    patches, angles = gabor_patches(200, image_size=10, seed=3, noise_scale=0.1)
    estimate, mse = match_gabor(patches)
    error = np.angle(np.exp(1j * (estimate.numpy() - angles.numpy())))
    # The Cramer-Rao standard deviation of the angle is noise / ||dG/da|| = 0.1 / 3.2 = 0.031 rad (templates
    # 0.5 degrees apart add 0.003): the root-mean-square error of 200 estimates is within 25% of it (chi-square
    # with 200 degrees of freedom: +-10% at two standard errors), and the largest of 200 within 4 sd.
    np.testing.assert_allclose(np.sqrt(np.mean(error**2)), 0.031, rtol=0.25)
    assert np.max(np.abs(error)) < 4. * 0.031
    np.testing.assert_allclose(np.mean(mse), 0.01, rtol=0.15)  # the noise variance: 0.1^2, 200 x 100 pixels


def test_kuiper_test_accepts_uniform_and_rejects_concentrated_angles():
    uniform = tf.random.stateless_uniform([2000], [7, 8], -math.pi, math.pi)
    concentrated = tfp.distributions.VonMises(0., 0.5).sample(2000, seed=[7, 9])
    assert kuiper_test(uniform)[1] > 0.05
    # Von Mises with kappa 0.5 has mean resultant length ~0.24: V is ~0.15, many standard errors.
    assert kuiper_test(concentrated)[1] < 1e-6
    # Rotation invariance: V does not depend on where the circle is cut.
    np.testing.assert_allclose(kuiper_test(uniform)[0], kuiper_test(uniform + 1.)[0], atol=1e-3)


def test_short_training_run_learns_gabors_of_uniform_orientation():
    x, _ = gabor_patches(1000, image_size=10, seed=0, noise_scale=0.1)
    model = CircleModel(10, hidden_units=(64,), scale=0.1, seed=0)
    learner = AmortisedLearner(model, num_sleep=500, form="conditional", seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(1e-2))
    untrained_error = tf.reduce_mean(match_gabor(model.decode(learner.sample(500, seed=[1, 2])["z"]))[1])
    learner.fit(x, batch_size=100, epochs=6, verbose=0)
    angle, error = match_gabor(model.decode(learner.sample(500, seed=[1, 2])["z"]))
    # Uniformity of the sampled orientations at the 1% level (n = 500; the decoder maps the circle onto the
    # orientations with at most a few degrees of distortion after 60 steps, which this test cannot detect).
    assert kuiper_test(angle)[1] > 0.01
    # Mean squared pixel error of the mean images to the nearest true Gabor: ~0.02 untrained, 0.004 after
    # 60 steps (the ridge regression's smoothing of the posterior leaves a bias of that size; it stays there
    # when training longer); the pixel noise variance, 0.01, is the scale it is measured against.
    assert untrained_error > 0.015
    assert tf.reduce_mean(error) < 0.006
    assert 0.08 < float(model.scale) < 0.16  # the data's noise is 0.1; the mean's bias inflates it
