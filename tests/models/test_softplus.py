"""SoftplusGaussianModel: quadrature against Monte Carlo and a dense grid; the amortised gradient against it."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tests.models._checks import assert_log_marginal_compiles
from tfp_amortised import surrogate_log_marginal
from tfp_amortised.evaluation import median_relative_error, per_point_gradients
from tfp_amortised.models.softplus import SoftplusGaussianModel

tfd = tfp.distributions

@pytest.mark.parametrize("batch_shape", [[], [4], [2, 3]])
def test_log_marginal_matches_monte_carlo(batch_shape):
    model = SoftplusGaussianModel((1., -0.5), 0.7)
    x = model.joint_distribution().sample(batch_shape, seed=[3, 4])[1]  # [*batch_shape, 1]
    quadrature = model.log_marginal(x)
    assert quadrature.shape == batch_shape
    # Monte Carlo: p(x) = E_{z ~ p(z)} p(x | z) with 200k prior draws, in float64.
    z = tfd.Normal(np.float64(0.), 1.).sample([200_000, 2], seed=[5, 6])
    likelihood = tfd.Normal(tf.cast(model.mean(tf.cast(z, tf.float32)), tf.float64), 0.7).prob(
        tf.cast(x, tf.float64)[..., None, 0:1])[..., 0]  # [*batch_shape, S]
    mean = tf.reduce_mean(likelihood, -1)
    relative_standard_error = tf.math.reduce_std(likelihood, -1) / mean / np.sqrt(200_000.)
    # 4 standard errors of log(mean) (delta method): a false failure has probability < 1e-4 per point.
    np.testing.assert_array_less(np.abs(quadrature.numpy() - np.log(mean.numpy())),
                                 4. * relative_standard_error.numpy())


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_log_marginal_and_gradient_compile(mode):
    model = SoftplusGaussianModel((1., -0.5), 0.7)
    assert_log_marginal_compiles(model, model.joint_distribution().sample(6, seed=[3, 4])[1], mode)


def test_posterior_density_integrates_to_one():
    model = SoftplusGaussianModel((1., 1.), 0.5)
    x = tf.constant([[-1.5], [-0.5], [1.0], [3.0]])
    # Dense midpoint rule on [-8, 8]^2 (spacing 0.04), independent of the Gauss-Hermite nodes. The posterior
    # is smooth with width >= 0.25 and the prior mass outside the box is < 1e-14: the rule's error is far
    # below the float32 rounding (~1e-6 relative) that sets the tolerance.
    side = tf.linspace(-8. + 0.02, 8. - 0.02, 400)
    grid = tf.reshape(tf.stack(tf.meshgrid(side, side, indexing="ij"), -1), [-1, 2])  # [G, 2]
    log_joint = model.joint_distribution().log_prob(grid, x[:, None, :])  # [4, G]
    log_posterior = log_joint - model.log_marginal(x)[:, None]
    total = tf.reduce_sum(tf.exp(log_posterior), -1) * 0.04**2
    np.testing.assert_allclose(total, np.ones(4), atol=1e-4)
    mean, covariance = model.posterior_moments(x)
    grid_mean = tf.exp(log_posterior) @ grid * 0.04**2
    np.testing.assert_allclose(mean, grid_mean, atol=1e-3)
    assert covariance.shape == [4, 2, 2]
    np.testing.assert_array_less(0., tf.linalg.eigvalsh(covariance))


@pytest.mark.parametrize("form", ["joint", "conditional"])
def test_amortised_gradient_matches_quadrature(form):
    model = SoftplusGaussianModel((1., 1.), 1.)
    x = model.joint_distribution().sample(32, seed=[0, 0])[1]
    exact = per_point_gradients(lambda: model.log_marginal(x), [model.loading])

    def error(num_sleep):
        return median_relative_error(per_point_gradients(
            lambda: surrogate_log_marginal(model.joint_distribution, x, num_sleep=num_sleep, seed=[1, num_sleep],
                                           form=form), [model.loading]), exact)

    # Measured over 3 seeds and 64 points (benchmarks/gradient_estimation.py): median relative error
    # 0.014-0.061 at N=2000 and 0.21-0.54 at N=100, for both forms; 0.12 leaves a factor 2 for seed luck.
    large, small = error(2000), error(100)
    assert large < 0.12
    assert large < small / 2.


def test_shapes_of_conditional_pairing():
    model = SoftplusGaussianModel((1., 1.), 1.)
    z = tf.zeros([1, 7, 2])  # latents as the conditional form pairs them: [1, N, 2] against x: [M, 1, 1]
    x = tf.zeros([5, 1, 1])
    assert model.joint_distribution().log_prob(z, x).shape == [5, 7]


def test_config_round_trip_and_errors():
    model = SoftplusGaussianModel((0.5, 2.), 0.3, quadrature_degree=20)
    clone = SoftplusGaussianModel.from_config(model.get_config())
    np.testing.assert_allclose(clone.loading.numpy(), [0.5, 2.])
    np.testing.assert_allclose(float(clone.noise_scale), 0.3, rtol=1e-6)
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model)).quadrature_degree == 20
    with pytest.raises(ValueError, match="Received: loading"):
        SoftplusGaussianModel((1., 2., 3.))
    with pytest.raises(ValueError, match="Received: noise_scale=0"):
        SoftplusGaussianModel(noise_scale=0)
