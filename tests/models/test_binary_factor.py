"""BinaryFactorModel: its log-density by hand, posterior means against quadrature, and denoising after training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.binary_factor import BinaryFactorModel, bars, flip_pixels
from tfp_amortised.ridge import KernelRidge


def _log_sigmoid(a):
    return -np.logaddexp(0., -a)


@pytest.mark.parametrize("z_shape, x_shape", [((4,), (4,)), ((1, 3), (2, 1)), ((2, 3), (2, 3))])
def test_log_joint_is_bernoulli_of_logit_mixture(z_shape, x_shape):
    model = BinaryFactorModel(3, 5, seed=0)
    model.bias.assign([0.5, -1., 0., 2., -0.3])
    z = tf.random.stateless_uniform(z_shape + (3,), [0, 1])
    x = tf.cast(tf.random.stateless_uniform(x_shape + (5,), [0, 2]) < 0.5, tf.float32)
    log_joint = model.joint_distribution().log_prob(z, x)
    logits = np.log(z / (1. - z)) @ model.loading.numpy().T + model.bias.numpy()
    expected = np.sum(x * _log_sigmoid(logits) + (1. - x) * _log_sigmoid(-logits), axis=-1)  # log U(0,1) = 0
    np.testing.assert_allclose(log_joint, expected, rtol=1e-5, atol=1e-5)


def test_bars_images_are_unions_of_rows_and_columns():
    images, factors = bars(50, image_size=4, seed=1)
    rows, columns = factors[:, :4].numpy(), factors[:, 4:].numpy()
    expected = np.maximum(rows[:, :, None], columns[:, None, :]).reshape(50, 16)
    np.testing.assert_array_equal(images, expected)


def test_flip_pixels_flips_at_the_rate():
    clean = tf.zeros([400, 25])
    noisy = flip_pixels(clean, 0.1, seed=2)
    # 10,000 Bernoulli(0.1) flips: standard error 0.003, so 0.01 is over three standard errors.
    assert abs(float(tf.reduce_mean(noisy)) - 0.1) < 0.01
    np.testing.assert_array_equal(flip_pixels(noisy, 0.1, seed=2), clean)  # the same seed flips the same pixels


def _quadrature_posterior_mean(model, x, num_points=200):
    """E[z | x] for two latents by the midpoint rule on a num_points^2 grid of the unit square."""
    grid = (np.arange(num_points) + 0.5) / num_points
    z = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2).astype(np.float32)  # [G, 2]
    logits = model.logits(z).numpy()  # [G, D]
    log_likelihood = x @ _log_sigmoid(logits).T + (1. - x) @ _log_sigmoid(-logits).T  # [M, G]
    weights = np.exp(log_likelihood - log_likelihood.max(axis=1, keepdims=True))
    return (weights @ z) / weights.sum(axis=1, keepdims=True)


def test_posterior_expectation_matches_quadrature_for_known_parameters():
    model = BinaryFactorModel(2, 6, seed=3)
    model.loading.assign(2. * model.loading)
    learner = AmortisedLearner(model, num_sleep=2000, seed=0, form="joint", regression=KernelRidge())
    x = model.joint_distribution().sample(20, seed=[4, 5])[1]
    exact = _quadrature_posterior_mean(model, x.numpy())
    estimate = learner.posterior_expectation(x, lambda sample: sample["z"], seed=[6, 7]).numpy()
    # 64 possible images share 2000 sleep points: the regression is close to the average of z over the ~30
    # sleep points of each image, whose Monte Carlo standard error is ~0.25 / sqrt(30) = 0.05 for the rarer
    # images and less for the common ones. The quadrature is exact to ~1e-4 (200^2 midpoints). Measured with
    # 1000-3000 sleep points and ridge 1e-5 to 1e-3: mean absolute error 0.006-0.011, largest 0.035-0.052.
    assert np.mean(np.abs(estimate - exact)) < 0.03
    assert np.max(np.abs(estimate - exact)) < 0.1


def test_short_training_run_denoises_bars():
    clean, _ = bars(2000, image_size=5, seed=0)
    x = flip_pixels(clean, 0.1, seed=1)  # the model learns the bars and the flip rate from noisy images
    model = BinaryFactorModel(10, 25, seed=0)
    learner = AmortisedLearner(model, num_sleep=1000, seed=0)  # the defaults: conditional, learning
    learner.compile(optimizer=keras.optimizers.Adam(3e-2))
    learner.fit(x, batch_size=100, epochs=4, verbose=0)
    test_clean, _ = bars(500, image_size=5, seed=2)
    test_noisy = flip_pixels(test_clean, 0.1, seed=3)
    noisy_error = float(tf.reduce_mean(tf.abs(test_noisy - test_clean)))

    def denoised_error(regression):
        probabilities = learner.posterior_expectation(test_noisy, lambda s: model.pixel_probabilities(s["z"]),
                                                      seed=[4, 5], regression=regression)
        return float(tf.reduce_mean(tf.cast((probabilities > 0.5) != (test_clean > 0.5), tf.float32)))

    # 12,500 test pixels: the noisy error is 0.1 +- 0.003. After 80 steps of the default (learning) regression,
    # denoising by the fixed regression gives 0.056 (0.061 for a model trained with the fixed regression); it
    # must beat the noisy input by 25%, well beyond the +-0.003 sampling error of either. The learned
    # hyperparameters, tuned for the gradient with its variance discounted, denoise less well (0.073).
    assert denoised_error(KernelRidge()) < 0.75 * noisy_error
    assert denoised_error(None) < noisy_error
