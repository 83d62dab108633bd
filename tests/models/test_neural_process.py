"""NeuralProcessModel: shapes, prediction and gradients against the linear-Gaussian closed form, the sine oracle, and
a short training run scored against the Bayes-optimal prediction."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised.evaluation import median_relative_error, per_point_gradients
from tfp_amortised import KernelRidge, surrogate_log_marginal
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.neural_process import (NeuralProcessModel, predict_from_context, sine, sine_functions,
                                                 sine_posterior_mean)

LOADING, SLOPE, OFFSET, SCALE = np.array([0.8, -0.5]), 0.3, 0.1, 0.3


def _linear_model(num_inputs, scale=SCALE):
    """`x_k = w . z + c t_k + b + sigma eps`: a decoder with no hidden layer is linear-Gaussian."""
    model = NeuralProcessModel(np.linspace(-2., 2., num_inputs), latent_dim=2, hidden_units=(), scale=scale, seed=0)
    model.decoder.layers[-1].kernel.assign(np.append(LOADING, SLOPE)[:, None])
    model.decoder.layers[-1].bias.assign([OFFSET])
    return model


def _linear_moments(model):
    """Mean `[K]` and loading `[K, 2]` of the grid values: `g(z, t) = W(t) z + m(t)` with `W(t) = w`, `m = c t + b`."""
    kernel, bias = model.decoder.layers[-1].kernel, model.decoder.layers[-1].bias
    mean = kernel[-1, 0] * tf.constant(model.inputs, tf.float32) + bias[0]
    loading = tf.tile(tf.transpose(kernel[:-1]), [len(model.inputs), 1])
    return mean, loading


def _gaussian_conditional_mean(context_index, context_values, at):
    """Closed form `E[g(z, at) | x_c] = m(at) + w^T Cov(z, x_c) Cov(x_c)^{-1} (x_c - m_c)` for `_linear_model`."""
    context_inputs = np.linspace(-2., 2., 8)[context_index]
    loading_c = np.tile(LOADING, [len(context_index), 1])  # [C, 2]
    covariance = loading_c @ loading_c.T + SCALE**2 * np.eye(len(context_index))
    residual = context_values - (SLOPE * context_inputs + OFFSET)  # [M, C]
    z_mean = residual @ np.linalg.solve(covariance, loading_c)  # [M, 2]
    z_sd = np.sqrt(LOADING @ (np.eye(2) - loading_c.T @ np.linalg.solve(covariance, loading_c)) @ LOADING)
    return z_mean @ LOADING[:, None] + SLOPE * at + OFFSET, z_sd  # [M, T], posterior sd of g


@pytest.mark.parametrize("context_index", [[3], [0, 7], [1, 4, 6]])
def test_predict_matches_gaussian_conditional_mean(context_index):
    model = _linear_model(8)
    at = np.linspace(-3., 3., 5)  # also off the grid and outside it
    x = model.joint_distribution().sample(40, seed=[1, 2])[1].numpy()
    values = x[:, context_index]
    exact, posterior_sd = _gaussian_conditional_mean(context_index, values, at)
    estimate = predict_from_context(model, context_index, values, at, num_sleep=2000, seed=[3, 4])
    # The ridge regression of g(z_n, at) (prior sd 0.94) on the C context entries, N = 2000: measured RMS errors
    # over the 40 functions, three sleep seeds, of 0.009-0.017 (C = 1), 0.020-0.022 (C = 2), 0.023-0.030 (C = 3),
    # i.e. 3-18% of the posterior sd (0.29, 0.21, 0.17), from the ridge's smoothing and the finite N; a wrong
    # weight, index or column gives errors of the order of the prior sd.
    rms = np.sqrt(np.mean((estimate.numpy() - exact)**2))
    assert rms < 0.25 * posterior_sd, (rms, posterior_sd)


def test_predict_with_a_kernel_ridge_layer_and_in_tf_function():
    model = _linear_model(8)
    x = model.joint_distribution().sample(20, seed=[1, 2])[1].numpy()
    index, at = [2, 5], np.linspace(-1., 1., 3)
    exact, posterior_sd = _gaussian_conditional_mean(index, x[:, index], at)
    layer = predict_from_context(model, index, x[:, index], at, num_sleep=1000, seed=[5, 6],
                                 regression=KernelRidge(ridge=1e-3))
    compiled = tf.function(lambda values: predict_from_context(model, index, values, at, num_sleep=1000, seed=[5, 6]))
    eager = predict_from_context(model, index, x[:, index], at, num_sleep=1000, seed=[5, 6])
    np.testing.assert_allclose(compiled(tf.constant(x[:, index])), eager, atol=1e-5)  # same seed, same graph maths
    np.testing.assert_allclose(layer, eager, atol=1e-4)  # the layer and the pure function: same defaults
    assert np.sqrt(np.mean((eager.numpy() - exact)**2)) < 0.3 * posterior_sd  # N = 1000: measured 0.075


def test_surrogate_gradient_matches_gaussian_log_marginal():
    # x ~ N(m, W W^T + sigma^2 I) exactly for the linear decoder; its gradient in (w, c, b, sigma) by autodiff.
    model = _linear_model(4, scale=1.)  # sigma comparable to |w| = 0.94: a smooth posterior mean in x
    wake_x = model.joint_distribution().sample(20, seed=[7, 8])[1]

    def log_marginal():
        mean, loading = _linear_moments(model)
        covariance = tf.matmul(loading, loading, transpose_b=True) + model.scale**2 * tf.eye(4)
        return tf.reduce_sum(
            -0.5 * (wake_x - mean) * tf.transpose(tf.linalg.cholesky_solve(
                tf.linalg.cholesky(covariance), tf.transpose(wake_x - mean))), -1) - 0.5 * tf.linalg.logdet(covariance)

    exact = per_point_gradients(log_marginal, model.trainable_variables)

    def error(num_sleep):
        """Median relative error of the per-point gradients, averaged over two sleep seeds."""
        return np.mean([median_relative_error(per_point_gradients(
            lambda: surrogate_log_marginal(model.joint_distribution, wake_x, num_sleep=num_sleep, seed=seed,
                                           form="conditional"), model.trainable_variables), exact)
            for seed in ([0, 9], [1, 9])])

    # Five parameters (w: 2, c, b, sigma), 4-d observations: measured median relative errors 0.11-0.15 per seed
    # at N = 2000 and 0.2-0.3 at N = 500 (the noise-scale gradient, the largest entry, is the hardest regression
    # target); the error shrinks with N. A wrong sign, weight or node gives errors near 1.
    error_small, error_large = error(500), error(2000)
    assert error_large < 0.2, (error_small, error_large)
    assert error_large < 0.85 * error_small, (error_small, error_large)


@pytest.mark.parametrize("z_shape", [(2,), (5, 2), (1, 3, 2), (2, 1, 4, 2)])
@pytest.mark.parametrize("num_at", [1, 7])
def test_decode_shapes(z_shape, num_at):
    model = NeuralProcessModel(np.linspace(-1., 1., 6), latent_dim=2, hidden_units=(4,), seed=0)
    z = tf.random.stateless_normal(z_shape, [0, 1])
    values = model.decode(z, tf.linspace(-3., 3., num_at))
    assert values.shape == z_shape[:-1] + (num_at,)
    np.testing.assert_allclose(model.decode(z), model.decode(z, model.inputs), atol=1e-6)  # default: the grid
    flat = tf.reshape(z, [-1, 2])
    one_by_one = [model.decode(flat[i:i + 1], tf.linspace(-3., 3., num_at))[0] for i in range(flat.shape[0])]
    np.testing.assert_allclose(tf.reshape(values, [-1, num_at]), one_by_one, atol=1e-6)


def test_joint_log_prob_by_hand_and_conditional_broadcast():
    model = NeuralProcessModel(np.linspace(-1., 1., 5), latent_dim=3, hidden_units=(4,), scale=0.4, seed=0)
    z = tf.random.stateless_normal([1, 6, 3], [0, 1])
    x = tf.random.stateless_normal([2, 1, 5], [0, 2])
    log_joint = model.joint_distribution().log_prob(z, x)
    assert log_joint.shape == (2, 6)
    normal = lambda value, mean, scale: -0.5 * ((value - mean) / scale)**2 - np.log(scale) - 0.5 * np.log(2 * np.pi)
    expected = (np.sum(normal(z.numpy(), 0., 1.), -1)
                + np.sum(normal(x.numpy(), model.decode(z).numpy(), 0.4), -1))
    np.testing.assert_allclose(log_joint, expected, rtol=1e-5)


@pytest.mark.parametrize("num_functions, context_index, num_at", [(1, [0], 1), (5, [2, 3, 4], 9), (3, [1, 4], 2)])
def test_prediction_shapes(num_functions, context_index, num_at):
    inputs = np.linspace(-math.pi, math.pi, 6)
    model = NeuralProcessModel(inputs, latent_dim=2, hidden_units=(4,), seed=0)
    y, amplitude, shift = sine_functions(num_functions, inputs, seed=0)
    assert y.shape == (num_functions, 6) and amplitude.shape == shift.shape == (num_functions,)
    values, at = tf.gather(y, context_index, axis=1), tf.linspace(-1., 1., num_at)
    prediction = predict_from_context(model, context_index, values, at, num_sleep=50, seed=[0, 1])
    assert prediction.shape == (num_functions, num_at)
    assert sine_posterior_mean(context_index, values, at, inputs=inputs, num_points=16).shape == (num_functions, num_at)


def test_invalid_context_is_rejected_with_the_received_value():
    model = NeuralProcessModel(np.linspace(-1., 1., 4), hidden_units=(), seed=0)
    with pytest.raises(ValueError, match=r"context_index=\[0, 4\]"):
        predict_from_context(model, [0, 4], np.zeros([2, 2]), [0.], num_sleep=10, seed=[0, 0])
    with pytest.raises(ValueError, match=r"context_values.shape=\(2, 3\)"):
        predict_from_context(model, [0, 1], np.zeros([2, 3]), [0.], num_sleep=10, seed=[0, 0])
    with pytest.raises(ValueError, match="latent_dim=0"):
        NeuralProcessModel([0., 1.], latent_dim=0)


def test_config_round_trip():
    model = NeuralProcessModel(np.linspace(-1., 1., 5), latent_dim=3, hidden_units=(7, 2), scale=0.3, seed=4)
    clone = NeuralProcessModel.from_config(keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(model)).get_config())
    assert clone.get_config() == model.get_config()
    np.testing.assert_allclose(clone.decode(tf.ones([2, 3])), model.decode(tf.ones([2, 3])))  # seeded initialisers


def test_sine_functions_follow_their_parameters():
    inputs = np.linspace(-math.pi, math.pi, 16)
    y, amplitude, shift = sine_functions(4000, inputs, seed=3, noise=0.1)
    # Residual sd 0.1 (64 000 values: relative standard error 0.3%); uniform parameters in their ranges.
    np.testing.assert_allclose(np.std(y - sine(amplitude, shift, inputs)), 0.1, rtol=0.02)
    assert -0.5 <= np.min(amplitude) and np.max(amplitude) <= 1. and np.max(np.abs(shift)) <= 0.5
    np.testing.assert_allclose([np.mean(amplitude), np.mean(shift)], [0.25, 0.], atol=0.03)  # 3 standard errors
    np.testing.assert_array_equal(y, sine_functions(4000, inputs, seed=3, noise=0.1)[0])


def test_sine_posterior_mean_without_context_is_the_prior_mean():
    at = np.linspace(-3., 3., 7)
    prior_mean = 0.25 * 2. * math.sin(0.5) * np.sin(at)  # E[a] E[cos s] sin t; E[sin s] = 0
    # Midpoint rule for the smooth integrand cos s on 128 cells: relative error (1 / 128)^2 / 24 ~ 3e-6.
    np.testing.assert_allclose(sine_posterior_mean([], np.zeros([2, 0]), at, inputs=np.zeros(3))[0], prior_mean,
                               atol=1e-5)


def test_sine_posterior_mean_interpolates_a_precise_context_point():
    # One context point at noise 0.005: the posterior mean at that input is the observed value up to the
    # Tweedie correction noise^2 d log p(y) / dy ~ 1e-4 (measured <= 1e-4 with 256 and 512 grid points: the
    # grid resolves the posterior band); a wrong input or sign gives errors of order 0.1.
    inputs = np.linspace(-math.pi, math.pi, 16)
    values = np.array([[-0.3], [0.2], [0.6]])
    mean = sine_posterior_mean([10], values, [inputs[10]], noise=0.005, inputs=inputs, num_points=256)
    np.testing.assert_allclose(mean, values, atol=5e-4)


def test_sine_posterior_mean_matches_importance_sampling():
    # Self-normalised importance sampling from the prior, 200 000 draws; standard error sd / sqrt(ESS) per
    # value, with ESS computed from the weights. 5 standard errors over 3 x 5 values.
    inputs = np.linspace(-math.pi, math.pi, 16)
    index, at, noise = [2, 9], np.linspace(-3., 3., 5).astype(np.float32), 0.2
    values, _, _ = sine_functions(3, inputs, seed=11, noise=noise)
    values = tf.gather(values, index, axis=1).numpy()
    amplitude = tf.random.stateless_uniform([200_000], [5, 1], -0.5, 1.).numpy()
    shift = tf.random.stateless_uniform([200_000], [5, 2], -0.5, 0.5).numpy()
    grid_values = sine(amplitude, shift, inputs[index]).numpy()  # [S, C]
    log_weights = -np.sum((values[:, None, :] - grid_values[None])**2, -1) / (2. * noise**2)  # [M, S]
    weights = np.exp(log_weights - log_weights.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    targets = sine(amplitude, shift, at).numpy()  # [S, T]
    mc_mean = weights @ targets
    mc_sd = np.sqrt(weights @ targets**2 - mc_mean**2)
    effective = 1. / np.sum(weights**2, axis=1, keepdims=True)
    quadrature = sine_posterior_mean(index, values, at, noise=noise, inputs=inputs)
    assert np.min(effective) > 1000  # the check is informative
    np.testing.assert_array_less(np.abs(quadrature - mc_mean), 5. * mc_sd / np.sqrt(effective) + 1e-4)


def test_short_training_run_predicts_near_the_bayes_optimum():
    inputs = tf.linspace(-math.pi, math.pi, 16)
    y, _, _ = sine_functions(1500, inputs, seed=0)
    model = NeuralProcessModel(inputs, latent_dim=2, hidden_units=(32, 32), scale=0.2, seed=0)
    learner = AmortisedLearner(model, num_sleep=400, form="conditional", seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(3e-3))
    learner.fit(y, batch_size=100, epochs=10, verbose=0)
    y_test, amplitude, shift = sine_functions(300, inputs, seed=1)
    index, at = [1, 5, 9, 13], tf.linspace(-math.pi, math.pi, 32)
    truth = sine(amplitude, shift, at)
    values = tf.gather(y_test, index, axis=1)
    mse = {name: float(tf.reduce_mean(tf.square(prediction - truth))) for name, prediction in {
        "amortised": predict_from_context(model, index, values, at, num_sleep=1500, seed=[2, 3]),
        "bayes": sine_posterior_mean(index, values, at, inputs=inputs),
        "zero": tf.zeros_like(truth)}.items()}
    # Measured after these 150 steps (training seeds 0 and 1): amortised 0.0098 and 0.0096, i.e. 2.6 times the
    # Bayes-optimal 0.0037 (the model is not converged: sigma is still 0.15-0.16, the data's is 0.1; after
    # 1000 steps the benchmark reaches 1.4 times); predicting 0 scores 0.124 and the prior mean 26 times the
    # Bayes MSE. Asserted: within 5 times the Bayes MSE and below a fifth of predicting 0.
    assert mse["amortised"] < 5. * mse["bayes"], mse
    assert mse["amortised"] < 0.2 * mse["zero"], mse
