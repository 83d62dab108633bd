"""KernelRidge and its pure functions against NumPy kernel ridge regression."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import KernelRidge, median_bandwidth, ridge_weights
from tfp_amortised.ridge import KERNELS


def _numpy_weights(kernel_name, sleep_x, query_x, bandwidth, ridge):
    """Reference: alpha = (K + N ridge I)^{-1} k(X, x) with kernels written out by hand, in float64."""
    def kernel(a, b):
        r = np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :])**2).sum(-1), 0.)) / bandwidth
        return {"gaussian": np.exp(-0.5 * r**2),
                "matern12": np.exp(-r),
                "matern32": (1. + np.sqrt(3.) * r) * np.exp(-np.sqrt(3.) * r),
                "matern52": (1. + np.sqrt(5.) * r + 5. / 3. * r**2) * np.exp(-np.sqrt(5.) * r)}[kernel_name]

    num_sleep = len(sleep_x)
    gram = kernel(sleep_x, sleep_x) + num_sleep * ridge * np.eye(num_sleep)
    return np.linalg.solve(gram, kernel(sleep_x, query_x)).T


@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
@pytest.mark.parametrize("num_query", [1, 6])
def test_weights_match_numpy(kernel_name, num_query):
    rng = np.random.default_rng(0)
    sleep_x, query_x = rng.normal(size=[40, 3]), rng.normal(size=[num_query, 3])
    layer = KernelRidge(kernel=kernel_name, bandwidth=1.3, ridge=1e-2, dtype="float64")
    weights = layer(sleep_x, query_x)
    assert weights.shape == [num_query, 40] and weights.dtype == tf.float64
    # Agreement to 1e-8 absolute on weights of order 0.1 (a few entries of the solve differ in the 9th digit).
    np.testing.assert_allclose(weights, _numpy_weights(kernel_name, sleep_x, query_x, 1.3, 1e-2), rtol=1e-6,
                               atol=1e-8)


def test_regression_recovers_a_smooth_function():
    # E[t | x] = sin(2x) with noise sd 0.3; 2000 points: the ridge prediction is within 0.05 of the truth.
    rng = np.random.default_rng(1)
    sleep_x = rng.uniform(-2., 2., size=[2000, 1]).astype(np.float32)
    targets = np.sin(2. * sleep_x[:, 0]) + 0.3 * rng.normal(size=2000).astype(np.float32)
    query_x = np.linspace(-1.5, 1.5, 7, dtype=np.float32)[:, None]
    prediction = KernelRidge(ridge=1e-4, bandwidth=0.3)(sleep_x, query_x) @ targets[:, None]
    np.testing.assert_allclose(prediction[:, 0], np.sin(2. * query_x[:, 0]), atol=0.05)


@pytest.mark.parametrize("num_points", [9, 100, 2000])
def test_median_bandwidth_matches_numpy(num_points):
    x = np.random.default_rng(2).normal(size=[num_points, 4]).astype(np.float32)
    half = min(512, num_points) // 2
    square_distances = ((x[:half, None] - x[None, half:2 * half])**2).sum(-1)
    # The square root of the median squared distance: the median distance, midpoint-interpolated in squares.
    np.testing.assert_allclose(median_bandwidth(x), np.sqrt(np.median(square_distances)), rtol=1e-4)


def test_median_bandwidth_tracks_scale():
    # For standard normal rows in D dimensions, ||x - y||^2 / 2 ~ chi^2_D: median distance sqrt(2 median chi^2_D).
    x = tf.random.stateless_normal([4000, 10], seed=[1, 2])
    expected = np.sqrt(2. * 9.342)  # median of chi^2 with 10 degrees of freedom
    np.testing.assert_allclose(median_bandwidth(x), expected, rtol=0.03)  # 256^2 correlated pairs
    np.testing.assert_allclose(median_bandwidth(5. * x), 5. * expected, rtol=0.03)


def test_median_heuristic_sets_the_bandwidth_weight():
    layer = KernelRidge()
    x = tf.random.stateless_normal([300, 2], seed=[3, 4])
    layer(x, x[:5])
    np.testing.assert_allclose(layer.bandwidth, median_bandwidth(x), rtol=1e-6)


def test_near_singular_gram_is_repaired_not_nan():
    # 50 identical sleep points: K is the all-ones matrix (rank 1) and N lam = 5e-11 is below float32
    # resolution next to the diagonal of 1, so the plain Cholesky fails; the retry adds jitter.
    layer = KernelRidge(ridge=1e-12, bandwidth=1.)
    sleep_x = tf.ones([50, 2])
    weights = layer(sleep_x, tf.zeros([3, 2]))
    assert np.all(np.isfinite(weights))
    assert float(layer.jitter) > 0.
    # Predicting a constant target 1 from 50 copies of one point gives k(x, 1) = exp(-1) at the query 0.
    np.testing.assert_allclose(tf.reduce_sum(weights, axis=1), np.full(3, np.exp(-1.)), rtol=1e-3)


@pytest.mark.parametrize("compile_mode", ["function", "xla"])
def test_compiled_matches_eager(compile_mode):
    layer = KernelRidge(ridge=1e-3)
    sleep_x = tf.random.stateless_normal([256, 3], seed=[5, 6])
    query_x = tf.random.stateless_normal([8, 3], seed=[7, 8])
    eager = layer(sleep_x, query_x)
    compiled = tf.function(layer.__call__, jit_compile=compile_mode == "xla")(sleep_x, query_x)
    # float32 solves with condition number up to 1 / lam = 1e3.
    np.testing.assert_allclose(compiled, eager, atol=1e-3)


def test_config_round_trip():
    layer = KernelRidge(kernel="matern32", bandwidth=0.7, ridge=1e-4, bandwidth_subsample=64)
    clone = KernelRidge.from_config(layer.get_config())
    assert (clone.kernel_name, clone.bandwidth_rule, clone.bandwidth_subsample) == ("matern32", 0.7, 64)
    np.testing.assert_allclose([clone.bandwidth, clone.ridge], [0.7, 1e-4], rtol=1e-6)


@pytest.mark.parametrize("arguments, message", [
    ({"kernel": "cauchy"}, "Received: kernel='cauchy'"),
    ({"bandwidth": 0.}, "Received: bandwidth=0.0"),
    ({"bandwidth": "silverman"}, "Received: bandwidth='silverman'"),
    ({"ridge": -1e-3}, "Received: ridge=-0.001"),
    ({"ridge": 0.}, "Received: ridge=0.0"),
    ({"bandwidth_subsample": 1}, "Received: bandwidth_subsample=1"),
])
def test_bad_hyperparameters(arguments, message):
    with pytest.raises(ValueError, match=message):
        KernelRidge(**arguments)


@pytest.mark.parametrize("sleep_shape, query_shape", [([10, 3], [4, 2]), ([10], [4]), ([1, 3], [4, 3])])
def test_bad_shapes(sleep_shape, query_shape):
    with pytest.raises(ValueError, match="sleep_x"):
        KernelRidge()(tf.zeros(sleep_shape), tf.zeros(query_shape))


def test_ridge_weights_is_a_pure_function():
    kernel = tfp.math.psd_kernels.ExponentiatedQuadratic(length_scale=np.float64(0.8))
    rng = np.random.default_rng(3)
    sleep_x, query_x = rng.normal(size=[30, 2]), rng.normal(size=[5, 2])
    weights, jitter = ridge_weights(kernel, sleep_x, query_x, np.float64(1e-3))
    np.testing.assert_allclose(weights, _numpy_weights("gaussian", sleep_x, query_x, 0.8, 1e-3), rtol=1e-7)
    assert float(jitter) == 0.


def test_median_bandwidth_of_discrete_data_stays_positive():
    # 80% of the rows are the same point: most pairwise distances are 0, so the median is 0. The fallback is
    # the root-mean-square distance, sqrt(2 p (1 - p)) for two points at unit distance, p = 0.2: sqrt(0.32).
    x = tf.concat([tf.zeros([400, 2]), tf.ones([100, 2]) * [1., 0.]], axis=0)
    x = tf.gather(x, np.random.default_rng(0).permutation(500))
    bandwidth = float(median_bandwidth(x))
    np.testing.assert_allclose(bandwidth, np.sqrt(0.32), rtol=0.1)  # 256^2 pairs from a random subsample
    assert float(median_bandwidth(tf.ones([50, 3]))) == 1.
    weights = KernelRidge()(x, x[:4])
    assert np.all(np.isfinite(weights))
