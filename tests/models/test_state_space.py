"""AutoregressiveStateSpaceModel: the Kalman filter against the dense Gaussian, the AR(1) density by hand, moments."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from tests.models._checks import (assert_gradients_match_central_differences, assert_log_marginal_compiles,
                                  cosine_of_mean_gradients, reload_in_a_learner)
from tfp_amortised.models import AutoregressiveStateSpaceModel

PARAMETERS = {"ar_coefficient": -0.7, "loading": 1.3, "transition_scale": 0.6, "observation_scale": 0.4}


def _model(num_steps=20, dtype="float32"):
    return AutoregressiveStateSpaceModel(num_steps, **PARAMETERS, dtype=dtype)


def _values(model):
    """The model's `(a, c, q, r)` as floats: Keras's Constant initialiser rounds through float32, so a float64
    model's parameters differ from `PARAMETERS` by ~1e-8 relative."""
    return tuple(float(value) for value in (model.ar_coefficient, model.loading, model.transition_scale,
                                            model.observation_scale))


def _dense_covariance(num_steps, ar_coefficient, loading, transition_scale, observation_scale):
    """`c^2 Sigma_z + r^2 I` with `Sigma_z[s, t] = q^2 a^|s - t| / (1 - a^2)`, in float64 NumPy."""
    lags = np.abs(np.subtract.outer(np.arange(num_steps), np.arange(num_steps)))
    latent = transition_scale**2 / (1. - ar_coefficient**2) * ar_coefficient**lags
    return loading**2 * latent + observation_scale**2 * np.eye(num_steps)


def test_parameters_start_at_the_given_values():
    model = _model()
    for name, value in PARAMETERS.items():
        np.testing.assert_allclose(float(getattr(model, name)), value, rtol=1e-6)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_log_marginal_matches_dense_gaussian(dtype, rtol):
    model = _model(50, dtype)
    x = model.joint_distribution().sample(6, seed=[1, 2])[1]
    expected = stats.multivariate_normal(np.zeros(50), _dense_covariance(50, *_values(model))).logpdf(
        x.numpy().astype(np.float64))
    # float64: the filter and the dense Cholesky agree to round-off; float32: ~1e-7 relative per step, over 50.
    np.testing.assert_allclose(model.log_marginal(x), expected, rtol=rtol)


def _log_joint_by_hand(model, z, x):
    """`log N(z_1; 0, q^2/(1-a^2)) + sum_t log N(z_t; a z_(t-1), q^2) + sum_t log N(x_t; c z_t, r^2)`, NumPy."""
    a, c, q, r = _values(model)
    initial = stats.norm(0., q / np.sqrt(1. - a**2)).logpdf(z[..., 0])
    transitions = stats.norm(0., q).logpdf(z[..., 1:] - a * z[..., :-1]).sum(-1)
    return initial + transitions + stats.norm(0., r).logpdf(x - c * z).sum(-1)


def test_log_joint_is_sum_of_parts():
    model = _model(dtype="float64")
    z, x = model.joint_distribution().sample(10, seed=[3, 4])
    expected = _log_joint_by_hand(model, z.numpy(), x.numpy())
    np.testing.assert_allclose(model.joint_distribution().log_prob(z, x), expected, rtol=1e-10)


@pytest.mark.parametrize("batch_shape", [[], [4], [2, 3]])
def test_sample_and_log_prob_shapes(batch_shape):
    model = _model()
    z, x = model.joint_distribution().sample(batch_shape, seed=[5, 6])
    assert z.shape == x.shape == batch_shape + [20]
    assert model.joint_distribution().log_prob(z, x).shape == batch_shape
    assert model.log_marginal(x).shape == batch_shape


def test_conditional_pairing_broadcasts():
    model = _model()
    z = model.joint_distribution().sample(7, seed=[7, 8])[0]  # [N, T]
    x = model.joint_distribution().sample(5, seed=[9, 10])[1]  # [M, T]
    paired = model.joint_distribution().log_prob(z[None], x[:, None])  # [1, N, T] against [M, 1, T]
    assert paired.shape == [5, 7]
    np.testing.assert_allclose(paired, _log_joint_by_hand(model, z.numpy()[None], x.numpy()[:, None]), rtol=1e-5)


def test_log_marginal_gradient_matches_finite_differences():
    model = _model(dtype="float64")
    x = model.joint_distribution().sample(8, seed=[11, 12])[1]
    assert_gradients_match_central_differences(lambda: tf.reduce_sum(model.log_marginal(x)),
                                               model.trainable_variables, rtol=1e-6, atol=1e-5)


def test_gradient_is_finite_at_zero_ar_coefficient():
    model = AutoregressiveStateSpaceModel(5, ar_coefficient=0.)
    sample = model.joint_distribution().sample(3, seed=[13, 14])
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(model.joint_distribution().log_prob(sample))
    gradient = tape.gradient(value, model.raw_ar_coefficient)
    # At a = 0 the latents are independent N(0, q^2): d/da log p(z) = sum_t z_t z_(t-1) / q^2, with dtanh = 1.
    z = sample[0].numpy()
    np.testing.assert_allclose(gradient, np.sum(z[:, 1:] * z[:, :-1]), rtol=1e-5)


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_log_marginal_and_gradient_compile(mode):
    model = _model()
    assert_log_marginal_compiles(model, model.joint_distribution().sample(16, seed=[15, 16])[1], mode,
                                 gradient_atol=1e-4)


def test_moments_of_simulated_data():
    model = _model()
    a, c, q, r = _values(model)
    latent_variance = q**2 / (1. - a**2)
    num = 4000
    z, x = (value.numpy().astype(np.float64) for value in model.joint_distribution().sample(num, seed=[17, 18]))
    # Per-series statistics (averages over time of a stationary series) are independent across the `num` series,
    # so their standard error is their standard deviation / sqrt(num); 4 standard errors each, over 6 statistics.
    statistics = {
        "latent variance": ((z**2).mean(-1), latent_variance),
        "latent lag-1 autocovariance": ((z[:, 1:] * z[:, :-1]).mean(-1), a * latent_variance),
        "first latent variance": (z[:, 0]**2, latent_variance),  # the stationary start
        "mean": (x.mean(-1), 0.),
        "variance": ((x**2).mean(-1), c**2 * latent_variance + r**2),
        "lag-1 autocovariance": ((x[:, 1:] * x[:, :-1]).mean(-1), c**2 * a * latent_variance),
    }
    for name, (per_series, expected) in statistics.items():
        standard_error = per_series.std() / np.sqrt(num)
        assert abs(per_series.mean() - expected) < 4. * standard_error, (name, per_series.mean(), expected)


def test_config_round_trip_and_keras_file(tmp_path):
    model = _model(12)
    clone = AutoregressiveStateSpaceModel.from_config(model.get_config())
    assert clone.num_steps == 12
    for original, copied in zip(model.weights, clone.weights):
        np.testing.assert_array_equal(copied.numpy(), original.numpy())

    model.loading.assign(2.)
    loaded = reload_in_a_learner(model, tmp_path / "learner.keras")
    x = model.joint_distribution().sample(3, seed=[19, 20])[1]
    np.testing.assert_array_equal(loaded.log_marginal(x), model.log_marginal(x))


@pytest.mark.parametrize("argument, value", [("num_steps", 0), ("ar_coefficient", 1.0), ("transition_scale", 0.0),
                                             ("observation_scale", -1.0)])
def test_invalid_arguments_are_refused(argument, value):
    with pytest.raises(ValueError, match=f"Received: {argument}={value}"):
        AutoregressiveStateSpaceModel(**{argument: value})


def test_amortised_gradient_points_in_exact_direction():
    model = AutoregressiveStateSpaceModel(5)
    true = AutoregressiveStateSpaceModel(5, ar_coefficient=0.8, loading=1.5, transition_scale=0.7,
                                         observation_scale=0.5)
    x = true.joint_distribution().sample(64, seed=[9, 0])[1]
    cosine = cosine_of_mean_gradients(model, x)
    # Measured at N=2000 on 4 data sets x 4 sleep seeds for num_steps=5: 0.955-0.997 (median 0.986); 0.998 with
    # this seed. The default Gaussian-kernel regression on x degrades as the dimension of x grows: 0.874-0.947
    # (median 0.916) for num_steps=10, and, over 2 data-generating parameter sets at N=1000 and 2000, 0.78-0.91
    # for 20 and 0.42-0.55 for 50 (the default). Hence the short series here.
    assert cosine > 0.9
