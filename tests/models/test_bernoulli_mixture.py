"""BernoulliMixtureModel: log p(x) against enumeration and Monte Carlo, the joint by hand, moments, gradients."""

import numpy as np
import pytest
import tensorflow as tf

from tests.models._checks import (assert_gradients_match_central_differences, assert_log_marginal_compiles,
                                  cosine_of_mean_gradients, reload_in_a_learner)
from tfp_amortised.models import BernoulliMixtureModel



def _model(dtype="float32"):
    model = BernoulliMixtureModel(3, 6, seed=0, dtype=dtype)
    model.logits.assign([0.5, -0.3, 0.1])  # unequal weights, so that a dropped or misplaced weight term shows
    return model


def _parameters(model):
    """Mixture weights `[K]` and pixel probabilities `[K, D]` in float64 NumPy, computed without TensorFlow."""
    logits, pixel_logits = model.logits.numpy().astype(np.float64), model.pixel_logits.numpy().astype(np.float64)
    return np.exp(logits) / np.exp(logits).sum(), 1. / (1. + np.exp(-pixel_logits))


def _all_images(data_dim):
    """Every binary vector of length `data_dim`: `float64[2^data_dim, data_dim]`."""
    return ((np.arange(2**data_dim)[:, None] >> np.arange(data_dim)) & 1).astype(np.float64)


def _likelihood(probabilities, x):
    """`p(x | z = k)` as products of probabilities: `[K, D], [M, D] -> [M, K]`."""
    return np.prod(np.where(x[:, None, :] == 1., probabilities, 1. - probabilities), axis=-1)


def test_log_marginal_matches_enumeration():
    model = _model()
    weights, probabilities = _parameters(model)
    x = _all_images(6)
    expected = np.log(_likelihood(probabilities, x) @ weights)  # sum_k pi_k prod_d ..., no logs until the end
    got = model.log_marginal(tf.constant(x, tf.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)  # float32 round-off of values ~ -4
    np.testing.assert_allclose(np.exp(got).sum(), 1., atol=1e-5)  # a distribution over the 64 images


def test_log_marginal_matches_monte_carlo():
    model = _model()
    weights, probabilities = _parameters(model)
    x = model.joint_distribution().sample(8, seed=[1, 2])[1]
    num_draws = 100_000
    z = np.random.default_rng(0).choice(3, size=num_draws, p=weights)
    likelihood = _likelihood(probabilities[z], x.numpy().astype(np.float64))  # p(x_m | z_s): [8, S]
    mean = likelihood.mean(axis=-1)
    relative_standard_error = likelihood.std(axis=-1) / mean / np.sqrt(num_draws)
    # 4 standard errors of log(mean) (delta method): a false failure has probability < 1e-4 per point.
    np.testing.assert_array_less(np.abs(model.log_marginal(x).numpy() - np.log(mean)), 4. * relative_standard_error)


def _log_joint_by_hand(model, z, x):
    """`log pi_z + sum_d log Bernoulli(x_d; p_zd)` in NumPy: `int[*batch], [*batch, D] -> [*batch]`."""
    weights, probabilities = _parameters(model)
    return np.log(weights[z]) + np.sum(x * np.log(probabilities[z]) + (1. - x) * np.log1p(-probabilities[z]), -1)


def test_log_joint_is_sum_of_parts():
    model = _model()
    z, x = model.joint_distribution().sample(10, seed=[3, 4])
    np.testing.assert_allclose(model.joint_distribution().log_prob(z, x), _log_joint_by_hand(model, z.numpy(), x),
                               rtol=1e-5)


@pytest.mark.parametrize("batch_shape", [[], [4], [2, 3]])
def test_sample_and_log_prob_shapes(batch_shape):
    model = _model()
    z, x = model.joint_distribution().sample(batch_shape, seed=[5, 6])
    assert z.shape == batch_shape and x.shape == batch_shape + [6] and x.dtype == tf.float32
    assert set(np.unique(x.numpy())) <= {0., 1.}
    assert model.joint_distribution().log_prob(z, x).shape == batch_shape
    assert model.log_marginal(x).shape == batch_shape


def test_conditional_pairing_broadcasts():
    model = _model()
    z = model.joint_distribution().sample(7, seed=[7, 8])[0]  # [N]
    x = model.joint_distribution().sample(5, seed=[9, 10])[1]  # [M, 6]
    paired = model.joint_distribution().log_prob(z[None], x[:, None])  # [1, N] against [M, 1, 6]
    assert paired.shape == [5, 7]
    np.testing.assert_allclose(paired, _log_joint_by_hand(model, z.numpy()[None], x.numpy()[:, None]), rtol=1e-5)


def test_log_marginal_gradient_matches_finite_differences():
    model = _model("float64")
    x = model.joint_distribution().sample(20, seed=[11, 12])[1]
    assert_gradients_match_central_differences(lambda: tf.reduce_sum(model.log_marginal(x)),
                                               [model.logits, model.pixel_logits], atol=1e-6)


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_log_marginal_and_gradient_compile(mode):
    model = _model()
    assert_log_marginal_compiles(model, model.joint_distribution().sample(16, seed=[13, 14])[1], mode)


def test_moments_of_simulated_data():
    model = _model()
    weights, probabilities = _parameters(model)
    num = 20_000
    z, x = model.joint_distribution().sample(num, seed=[15, 16])
    x = x.numpy().astype(np.float64)
    # Each statistic below is the mean of `num` Bernoulli indicators with mean m: standard error sqrt(m (1 - m) /
    # num) <= 0.0035; 4 standard errors over 3 + 6 + 15 statistics give a false failure with probability < 2e-3.
    expected_frequency = weights
    expected_mean = weights @ probabilities
    # E[x_i x_j] = sum_k pi_k p_ki p_kj for i != j: the mixture correlates the pixels.
    expected_products = np.einsum("k,ki,kj->ij", weights, probabilities, probabilities)
    upper = np.triu_indices(6, 1)
    for empirical, expected in [(np.bincount(z.numpy(), minlength=3) / num, expected_frequency),
                                (x.mean(0), expected_mean),
                                ((x.T @ x / num)[upper], expected_products[upper])]:
        np.testing.assert_array_less(np.abs(empirical - expected), 4. * np.sqrt(expected * (1. - expected) / num))


def test_config_round_trip_and_keras_file(tmp_path):
    model = BernoulliMixtureModel(4, 5, seed=3)
    clone = BernoulliMixtureModel.from_config(model.get_config())
    assert (clone.num_components, clone.data_dim, clone.seed) == (4, 5, 3)
    np.testing.assert_array_equal(clone.pixel_logits.numpy(), model.pixel_logits.numpy())  # seeded initialiser

    model.logits.assign([0.3, -0.2, 0.1, 0.])
    loaded = reload_in_a_learner(model, tmp_path / "learner.keras")
    x = tf.constant(_all_images(5), tf.float32)
    np.testing.assert_array_equal(loaded.log_marginal(x), model.log_marginal(x))


@pytest.mark.parametrize("argument", ["num_components", "data_dim"])
def test_invalid_sizes_are_refused(argument):
    with pytest.raises(ValueError, match=f"Received: {argument}=0"):
        BernoulliMixtureModel(**{argument: 0})


def test_amortised_gradient_points_in_exact_direction():
    model = BernoulliMixtureModel(3, 6, seed=0)
    x = BernoulliMixtureModel(3, 6, seed=1).joint_distribution().sample(64, seed=[9, 0])[1]  # another model's data
    cosine = cosine_of_mean_gradients(model, x)
    # Measured on 2 data sets x 3 sleep seeds: 0.987-0.994 at N=1000, 0.991-0.998 at N=2000; 0.996 with this seed.
    assert cosine > 0.95
