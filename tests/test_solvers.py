"""Tests of the KernelRidge solvers: exact Cholesky, random Fourier features, Nystrom.

Ground truth is the ridge solve `alpha = (K + N lam I)^{-1} k(X, x)` in float64 NumPy. The exact solver must
match it; the approximations must approach it as their number of features grows. Every solver runs in eager,
`tf.function` and XLA.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.ridge import DEFAULTS, KERNELS, KernelRidge, kernel_ridge_weights
from tfp_amortised import linalg, solvers
from tfp_amortised.solvers import (feature_ridge_weights, fourier_frequencies, gram_and_cross, random_fourier_features,
                                    ridge_weights)

MODES = {
    "eager": lambda fn: fn,
    "function": tf.function,
    "xla": lambda fn: tf.function(fn, jit_compile=True),
}
BANDWIDTH = 1.5
RIDGE = 1e-3


def _data(num_sleep, num_query, dim=3, dtype=tf.float32):
    sleep_x = tf.random.stateless_normal([num_sleep, dim], [1, 2], dtype=dtype)
    query_x = tf.random.stateless_normal([num_query, dim], [3, 4], dtype=dtype)
    return sleep_x, query_x


def _exact_weights(kernel_name, sleep_x, query_x, ridge=RIDGE, bandwidth=BANDWIDTH):
    """`[(K + N lam I)^{-1} k(X, Q)]^T` in float64 NumPy."""
    kernel = KERNELS[kernel_name](length_scale=np.float64(bandwidth))
    sleep_x, query_x = np.asarray(sleep_x, np.float64), np.asarray(query_x, np.float64)
    gram = kernel.matrix(sleep_x, sleep_x).numpy() + len(sleep_x) * ridge * np.eye(len(sleep_x))
    return np.linalg.solve(gram, kernel.matrix(sleep_x, query_x).numpy()).T


def _relative_error(weights, exact):
    return float(np.linalg.norm(np.asarray(weights, np.float64) - exact) / np.linalg.norm(exact))


def _weights(mode, sleep_x, query_x, **options):
    ridge = KernelRidge(bandwidth=BANDWIDTH, ridge=RIDGE, dtype=sleep_x.dtype.name, **options)
    return MODES[mode](ridge)(sleep_x, query_x)


@pytest.mark.parametrize("mode,num_sleep,num_query", [(mode, 150, 7) for mode in MODES] + [("eager", 40, 1)])
def test_cholesky_solver_equals_direct_solve(mode, num_sleep, num_query):
    sleep_x, query_x = _data(num_sleep, num_query)
    weights = _weights(mode, sleep_x, query_x, solver="cholesky")
    assert weights.shape == (num_query, num_sleep)
    # float32 solve of a system with condition number <= (N + N lam) / (N lam) = 1001: relative error
    # ~ 1e3 * 6e-8 = 6e-5; 5e-4 leaves a factor of 8.
    assert _relative_error(weights, _exact_weights("gaussian", sleep_x, query_x)) < 5e-4


@pytest.mark.parametrize("mode", MODES)
def test_gram_and_cross_equal_the_kernel_matrices(mode):
    """The one-pass lower block columns against the two full `kernel.matrix` calls (the previous path)."""
    sleep_x, query_x = _data(50, 7)
    kernel = KERNELS["matern32"](length_scale=BANDWIDTH)
    gram, cross = MODES[mode](lambda: gram_and_cross(kernel, sleep_x, query_x, block_size=16))()
    full = kernel.matrix(sleep_x, sleep_x).numpy()
    lower_blocks = np.zeros([50, 50], bool)
    for start, stop in linalg.block_partition(50, 16):
        lower_blocks[start:, start:stop] = True
    np.testing.assert_allclose(np.where(lower_blocks, gram, 0.), np.where(lower_blocks, full, 0.), atol=1e-6)
    np.testing.assert_array_equal(np.where(lower_blocks, 0., gram), 0.)  # nothing computed above the blocks
    np.testing.assert_allclose(cross, kernel.matrix(sleep_x, query_x), atol=1e-6)


def test_gram_and_cross_of_unknown_size_is_the_whole_matrix():
    sleep_x, query_x = _data(20, 3)
    kernel = KERNELS["gaussian"](length_scale=BANDWIDTH)
    both = tf.function(lambda x, q: gram_and_cross(kernel, x, q, block_size=4),
                       input_signature=[tf.TensorSpec([None, 3]), tf.TensorSpec([None, 3])])
    gram, cross = both(sleep_x, query_x)
    np.testing.assert_allclose(gram, kernel.matrix(sleep_x, sleep_x), atol=1e-6)
    np.testing.assert_allclose(cross, kernel.matrix(sleep_x, query_x), atol=1e-6)


def _previous_ridge_weights(kernel, sleep_x, query_x, ridge):
    """The exact solver before the one-pass Gram matrix: two full kernel matrices."""
    gram = kernel.matrix(sleep_x, sleep_x)
    gram = tf.linalg.set_diag(gram, tf.linalg.diag_part(gram) + sleep_x.shape[0] * ridge)
    chol, _ = linalg.retrying_cholesky(gram)
    return tf.transpose(tf.linalg.cholesky_solve(chol, kernel.matrix(sleep_x, query_x)))


@pytest.mark.parametrize("mode,num_sleep", [("function", 600), ("xla", 600), ("function", 1000)])
def test_cholesky_solver_and_its_gradient_equal_the_full_matrix_path(mode, num_sleep):
    """Weights and their gradient with respect to the length scale and the sleep points, against the previous
    path (full symmetric Gram matrix); 600 rows are 3 block columns and one unblocked factorisation, 1000 rows
    a blocked one. A gradient that saw only the lower triangle once would be about half the reference."""
    sleep_x, query_x = _data(num_sleep, 7, dtype=tf.float64)
    target = tf.random.stateless_normal([7, num_sleep], [5, 6], dtype=tf.float64)
    length_scale = tf.constant(BANDWIDTH, tf.float64)

    def weights_and_gradient(solver):
        with tf.GradientTape() as tape:
            tape.watch([length_scale, sleep_x])
            weights = solver(KERNELS["gaussian"](length_scale=length_scale), sleep_x, query_x,
                             tf.constant(RIDGE, tf.float64))
            weights = weights[0] if isinstance(weights, tuple) else weights
            loss = tf.reduce_sum(weights * target)
        return [weights, *tape.gradient(loss, [length_scale, sleep_x])]

    new = MODES[mode](lambda: weights_and_gradient(ridge_weights))()
    previous = MODES[mode](lambda: weights_and_gradient(_previous_ridge_weights))()
    for value, expected in zip(new, previous):
        np.testing.assert_allclose(value, expected, rtol=1e-7, atol=1e-9 * float(tf.reduce_max(tf.abs(expected))))


def test_cholesky_solver_float64():
    sleep_x, query_x = _data(150, 7, dtype=tf.float64)
    weights = _weights("function", sleep_x, query_x, solver="cholesky")
    assert weights.dtype == tf.float64
    assert _relative_error(weights, _exact_weights("gaussian", sleep_x, query_x)) < 1e-10  # ~1e3 * 1e-16


@pytest.mark.parametrize("mode,kernel", [(mode, "gaussian") for mode in MODES] + [("eager", "matern32")])
def test_nystrom_converges_to_exact_and_is_exact_on_all_points(mode, kernel):
    num_sleep = 150
    sleep_x, query_x = _data(num_sleep, 7)
    exact = _exact_weights(kernel, sleep_x, query_x)
    errors = [_relative_error(_weights(mode, sleep_x, query_x, kernel=kernel, solver="nystrom", num_inducing=r),
                              exact) for r in (20, 60, num_sleep)]
    assert errors[0] > errors[1]
    # With every sleep point inducing, k(X, U) K_UU^{-1} k(U, X) = K: only the float32 rounding of the
    # inducing Cholesky (plus its jitter) remains; measured ~1e-4, tolerance 2e-3.
    assert errors[2] < 2e-3


@pytest.mark.parametrize("mode", MODES)
def test_random_features_converge_to_exact(mode):
    num_sleep = 150
    sleep_x, query_x = _data(num_sleep, 7)
    exact = _exact_weights("gaussian", sleep_x, query_x)
    target = np.sin(np.asarray(sleep_x[:, 0])) + np.asarray(sleep_x[:, 1])**2  # a smooth regression target
    errors = []
    for num_features in (128, 4096):
        weights = _weights(mode, sleep_x, query_x, solver="random_features", num_features=num_features, seed=3)
        errors.append(np.linalg.norm((np.asarray(weights, np.float64) - exact) @ target)
                      / np.linalg.norm(exact @ target))
    assert errors[0] > errors[1]
    # Monte Carlo kernel error falls as F^{-1/2}; measured prediction error 0.05 at F=256 and 0.012 at
    # F=4096 on a similar problem. 0.04 at F=4096 is 3x the expected error.
    assert errors[1] < 0.04


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_fourier_features_estimate_the_kernel(kernel):
    """Checks each spectral density (Gaussian; Student-t for Matern) against the kernel it should give."""
    x = tf.random.stateless_normal([10, 4], [5, 6])
    psd_kernel = KERNELS[kernel](length_scale=1.3, amplitude=0.8)
    num_frequencies = 20000
    features = random_fourier_features(x, fourier_frequencies(psd_kernel, 4, num_frequencies, [7, 8]),
                                       psd_kernel.amplitude)
    estimate = tf.matmul(features, features, transpose_b=True)
    # Each entry is a^2 times a mean of num_frequencies cosines with variance <= 1/2: standard error
    # <= 0.64 sqrt(0.5 / 20000) = 3.2e-3; 0.02 is over 6 standard errors for the 55 distinct entries.
    np.testing.assert_allclose(estimate, psd_kernel.matrix(x, x), atol=0.02)


@pytest.mark.parametrize("num_sleep,num_features", [(30, 8), (8, 30)])  # primal F x F and dual N x N systems
def test_feature_ridge_weights_equal_the_ridge_solve_of_the_feature_kernel(num_sleep, num_features):
    sleep_features = tf.random.stateless_normal([num_sleep, num_features], [1, 1], dtype=tf.float64)
    query_features = tf.random.stateless_normal([5, num_features], [2, 2], dtype=tf.float64)
    weights, jitter, _ = feature_ridge_weights(sleep_features, query_features, tf.constant(0.1, tf.float64))
    phi, psi = sleep_features.numpy(), query_features.numpy()
    expected = np.linalg.solve(phi @ phi.T + num_sleep * 0.1 * np.eye(num_sleep), phi @ psi.T).T
    np.testing.assert_allclose(weights, expected, rtol=1e-9, atol=1e-12)
    assert float(jitter) == 0.


def test_random_features_are_fixed_by_the_seed():
    sleep_x, query_x = _data(50, 3)
    first, again, other = (_weights("eager", sleep_x, query_x, solver="random_features", num_features=64, seed=s)
                           for s in (1, 1, 2))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_random_features_need_a_known_spectral_density():
    kernel = tfp.math.psd_kernels.RationalQuadratic(length_scale=1.)
    with pytest.raises(ValueError, match="Received: kernel of type RationalQuadratic"):
        fourier_frequencies(kernel, 3, 8, [0, 0])


@pytest.mark.parametrize("argument,value,match", [
    ("solver", "qr", "solver=.qr."),
    ("num_features", 7, "num_features=7"),
    ("num_inducing", 0, "num_inducing=0"),
    ("seed", None, "seed=None"),
])
def test_invalid_solver_options_are_named(argument, value, match):
    with pytest.raises(ValueError, match=f"Received: {match}"):
        KernelRidge(**{argument: value})


def test_solver_options_round_trip_through_config():
    ridge = KernelRidge(solver="nystrom", num_inducing=64, num_features=128, seed=5)
    config = ridge.get_config()
    assert (config["solver"], config["num_inducing"], config["num_features"], config["seed"]) == ("nystrom", 64, 128, 5)
    assert KernelRidge.from_config(config).get_config() == config


def test_auto_solver_follows_the_documented_threshold():
    assert solvers.choose_solver("auto", solvers.AUTO_MAX_EXACT) == "cholesky"
    assert solvers.choose_solver("auto", solvers.AUTO_MAX_EXACT + 1) == solvers.AUTO_APPROXIMATION == "nystrom"
    assert solvers.choose_solver("auto", None) == "cholesky"  # N unknown when traced: the exact solver
    for solver in solvers.SOLVERS:
        assert solvers.choose_solver(solver, 10**6) == solver


def test_auto_is_the_default_solver_and_an_explicit_solver_survives_a_config_round_trip():
    """`KernelRidge()` and the default path use `"auto"`; a saved config naming a solver (every `.keras` file
    names one, 0.1.0's `"cholesky"` included) loads with that solver."""
    assert KernelRidge().solver == DEFAULTS["solver"] == "auto"
    config = KernelRidge(solver="cholesky").get_config()
    assert KernelRidge.from_config(config).solver == "cholesky"


def test_auto_solver_at_the_default_num_sleep_is_exact():
    """`solver="auto"` changes nothing at the learner's default num_sleep = 1000."""
    assert solvers.choose_solver("auto", 1000) == "cholesky"


@pytest.mark.parametrize("mode", MODES)
def test_auto_solver_gives_the_chosen_solvers_weights(mode, monkeypatch):
    """`KernelRidge(solver="auto")` returns exactly the weights of the solver the threshold names, with that
    solver's options (a threshold of 40 keeps the Nystrom side small)."""
    monkeypatch.setattr(solvers, "AUTO_MAX_EXACT", 40)
    for num_sleep, expected in ((40, {"solver": "cholesky"}), (41, {"solver": "nystrom", "num_inducing": 16})):
        sleep_x, query_x = _data(num_sleep, 5)
        auto = _weights(mode, sleep_x, query_x, solver="auto", num_inducing=16, num_features=8)
        np.testing.assert_array_equal(auto, _weights(mode, sleep_x, query_x, **expected))


def test_auto_solver_in_the_pure_function_takes_every_solvers_options():
    sleep_x, query_x = _data(30, 4)
    weights, _ = kernel_ridge_weights(sleep_x, query_x, bandwidth=BANDWIDTH, solver="auto", num_inducing=8,
                                      num_features=16, seed=tf.constant([1, 0]))
    expected, _ = kernel_ridge_weights(sleep_x, query_x, bandwidth=BANDWIDTH, solver="cholesky")
    np.testing.assert_array_equal(weights, expected)
