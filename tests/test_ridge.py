"""KernelRidge and its pure functions against NumPy kernel ridge regression; kernels on features of the inputs."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import KernelRidge, median_bandwidth, ridge_weights
from tfp_amortised import ridge as ridge_module
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel
from tfp_amortised.ridge import KERNELS, kernel_ridge_weights, standardise
from tfp_amortised.solvers import SOLVERS


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


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("num_query", [1, 7])
def test_intercept_regresses_targets_centred_on_their_sleep_mean(solver, num_query):
    rng = np.random.default_rng(3)
    sleep_x, targets = rng.normal(size=[60, 2]), rng.normal(size=[60, 3]) + 5.
    query_x = np.concatenate([rng.normal(size=[num_query - 1, 2]), [[40., 40.]]])  # the last one far away
    options = {"solver": solver, "bandwidth": 0.8, "ridge": 1e-2, "dtype": "float64", "num_inducing": 20,
               "num_features": 64}
    plain = KernelRidge(**options)(sleep_x, query_x).numpy()
    centred = KernelRidge(intercept=True, **options)(sleep_x, query_x).numpy()
    mean = targets.mean(0)
    # f(x) = t_bar + sum_n alpha_n(x) (t_n - t_bar), with the same alpha; its weights sum to one.
    np.testing.assert_allclose(centred @ targets, mean + plain @ (targets - mean), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(centred.sum(-1), 1., atol=1e-12)
    if solver != "random_features":  # a finite Fourier sum does not decay far from the data
        # Far from every sleep point the plain prediction shrinks to 0, the centred one to the sleep mean.
        np.testing.assert_allclose(plain[-1] @ targets, 0., atol=1e-8)
        np.testing.assert_allclose(centred[-1] @ targets, mean, atol=1e-8)


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
    # The same when the number of rows is unknown until the graph runs.
    unknown_rows = tf.function(median_bandwidth, input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    np.testing.assert_allclose(unknown_rows(x), np.sqrt(np.median(square_distances)), rtol=1e-4)


@pytest.mark.parametrize("num_points", [5, 6, 41, 700])
def test_median_bandwidth_is_the_exact_median_with_ties(num_points):
    """Binary rows: integer squared distances with many ties, an odd (5, 41 rows) or even number of pairs; the
    selection gives numpy's median exactly in every dtype and mode, and the gradient of the sort-based median."""
    x = (np.random.default_rng(3).random([num_points, 6]) < 0.3).astype(np.float64)
    half = min(512, num_points) // 2
    expected = np.sqrt(np.median(((x[:half, None] - x[None, half:2 * half])**2).sum(-1)))
    for dtype in (np.float16, np.float32, np.float64):
        for mode in (median_bandwidth, tf.function(median_bandwidth),
                     tf.function(median_bandwidth, jit_compile=True)):
            tolerance = 1e-3 if dtype == np.float16 else 1e-6
            assert float(mode(tf.constant(x, dtype))) == pytest.approx(expected, rel=tolerance)
    x = tf.constant(np.random.default_rng(4).normal(size=[num_points, 3]))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        first, second = x[:half], x[half:2 * half]
        sorted_median = tf.sqrt(tfp.stats.percentile(
            tf.reduce_sum((first[:, None] - second[None])**2, -1), 50., interpolation="midpoint"))
        selected = median_bandwidth(x)
    np.testing.assert_allclose(selected, sorted_median, rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(selected, x), tape.gradient(sorted_median, x), rtol=1e-9, atol=1e-12)


def test_median_bandwidth_without_xla_is_the_sort(monkeypatch):
    """On macOS with a (Metal) GPU, where XLA cannot compile, the median comes from the sort: the same value."""
    x = tf.random.stateless_normal([300, 3], seed=[5, 6])
    selected = float(median_bandwidth(x))
    assert ridge_module._can_compile()  # pylint: disable=protected-access
    monkeypatch.setattr(ridge_module.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(ridge_module.tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    assert not ridge_module._can_compile()  # pylint: disable=protected-access
    assert float(tf.function(median_bandwidth)(x)) == selected


def test_median_bandwidth_tracks_scale():
    # For standard normal rows in D dimensions, ||x - y||^2 / 2 ~ chi^2_D: median distance sqrt(2 median chi^2_D).
    x = tf.random.stateless_normal([4000, 10], seed=[1, 2])
    expected = np.sqrt(2. * 9.342)  # median of chi^2 with 10 degrees of freedom
    np.testing.assert_allclose(median_bandwidth(x), expected, rtol=0.03)  # 256^2 correlated pairs
    np.testing.assert_allclose(median_bandwidth(5. * x), 5. * expected, rtol=0.03)


def test_median_heuristic_bandwidth_is_returned_not_stored():
    layer = KernelRidge()
    x = tf.random.stateless_normal([300, 2], seed=[3, 4])
    _, diagnostics = layer(x, x[:5], return_diagnostics=True)
    np.testing.assert_allclose(diagnostics.bandwidth, median_bandwidth(x), rtol=1e-6)
    assert layer.bandwidth is None  # the median rule keeps no per-call state
    _, doubled = layer(2. * x, x[:5], return_diagnostics=True)
    np.testing.assert_allclose(doubled.bandwidth, 2. * diagnostics.bandwidth, rtol=1e-6)


def test_near_singular_gram_is_repaired_not_nan():
    # 50 identical sleep points: K is the all-ones matrix (rank 1) and N lam = 5e-11 is below float32
    # resolution next to the diagonal of 1, so the plain Cholesky fails; the retry adds jitter.
    layer = KernelRidge(ridge=1e-12, bandwidth=1.)
    sleep_x = tf.ones([50, 2])
    weights, diagnostics = layer(sleep_x, tf.zeros([3, 2]), return_diagnostics=True)
    assert np.all(np.isfinite(weights))
    assert float(diagnostics.jitter) > 0.
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
    layer = KernelRidge(kernel="matern32", bandwidth=0.7, ridge=1e-4, bandwidth_subsample=64, intercept=True)
    clone = KernelRidge.from_config(layer.get_config())
    assert (clone.kernel_name, clone.bandwidth_rule, clone.bandwidth_subsample) == ("matern32", 0.7, 64)
    assert clone.intercept
    np.testing.assert_allclose([clone.bandwidth, clone.ridge], [0.7, 1e-4], rtol=1e-6)


@pytest.mark.parametrize("arguments, message", [
    ({"kernel": "cauchy"}, "Received: kernel='cauchy'"),
    ({"bandwidth": 0.}, "Received: bandwidth=0.0"),
    ({"bandwidth": "silverman"}, "Received: bandwidth='silverman'"),
    ({"ridge": -1e-3}, "Received: ridge=-0.001"),
    ({"ridge": 0.}, "Received: ridge=0.0"),
    ({"bandwidth_subsample": 1}, "Received: bandwidth_subsample=1"),
    ({"intercept": "yes"}, "Received: intercept='yes'"),
])
def test_bad_hyperparameters(arguments, message):
    with pytest.raises(ValueError, match=message):
        KernelRidge(**arguments)


@pytest.mark.parametrize("sleep_shape, query_shape", [([10, 3], [4, 2]), ([10, 3], [4, 3, 1]), ([1, 3], [4, 3]),
                                                       ([], [])])
def test_bad_shapes(sleep_shape, query_shape):
    with pytest.raises(ValueError, match="sleep_x"):
        KernelRidge()(tf.zeros(sleep_shape), tf.zeros(query_shape))


@pytest.mark.parametrize("event_shape", [[], [1], [2, 3], [2, 1, 2]])
def test_batches_of_any_event_shape_are_flattened_by_the_layer(event_shape):
    """`[B, *event_shape]` batches give the weights of their flattened `[B, D]` rows (D = 1 for scalar events)."""
    rng = np.random.default_rng(1)
    sleep_x = rng.normal(size=[30, *event_shape]).astype(np.float32)
    query_x = rng.normal(size=[4, *event_shape]).astype(np.float32)
    flat = KernelRidge()(sleep_x.reshape(30, -1), query_x.reshape(4, -1))
    np.testing.assert_array_equal(KernelRidge()(sleep_x, query_x), flat)


def test_ridge_weights_is_a_pure_function():
    kernel = tfp.math.psd_kernels.ExponentiatedQuadratic(length_scale=np.float64(0.8))
    rng = np.random.default_rng(3)
    sleep_x, query_x = rng.normal(size=[30, 2]), rng.normal(size=[5, 2])
    weights, jitter, _ = ridge_weights(kernel, sleep_x, query_x, np.float64(1e-3))
    np.testing.assert_allclose(weights, _numpy_weights("gaussian", sleep_x, query_x, 0.8, 1e-3), rtol=1e-7)
    assert float(jitter) == 0.


def test_median_bandwidth_is_the_same_far_from_the_origin():
    """Distances do not depend on where the rows are: rows 1e4 from the origin with spread 0.01 have the median of
    the same rows at the origin (in float32 their squared norms, 1e8 each, round the distance expansion to
    multiples of about 10, below which the median fell back to the constant 1 before the rows were centred)."""
    x = 0.01 * np.random.default_rng(3).normal(size=[500, 3]).astype(np.float32)
    near = float(median_bandwidth(x))
    np.testing.assert_allclose(float(median_bandwidth(x + np.float32(1e4))), near, rtol=1e-2)
    assert 0.01 < near < 0.04  # sqrt(2 * 3) * 0.01 = 0.024 is the root-mean-square distance


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


@keras.saving.register_keras_serializable(package="tests")
class LinearMap(keras.layers.Layer):
    """`x -> x A + b` with `A: [D, F]` and `b: [F]` held in the config (no weights): a serialisable feature map."""

    def __init__(self, matrix, offset, **kwargs):
        super().__init__(**kwargs)
        self.matrix, self.offset = np.asarray(matrix).tolist(), np.asarray(offset).tolist()

    def call(self, x):
        return tf.matmul(x, tf.constant(self.matrix, x.dtype)) + tf.constant(self.offset, x.dtype)

    def get_config(self):
        return {**super().get_config(), "matrix": self.matrix, "offset": self.offset}


def _invertible_map(dim, seed):
    """A random invertible `[dim, dim]` matrix whose columns differ in scale by up to 1e6, and an offset."""
    rng = np.random.default_rng(seed)
    matrix = np.linalg.qr(rng.normal(size=[dim, dim]))[0] * np.logspace(-3, 3, dim)
    return LinearMap(matrix, 100. * rng.normal(size=dim), dtype="float64")


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("num_query", [1, 6])
def test_identity_features_give_the_plain_weights(solver, num_query):
    rng = np.random.default_rng(4)
    sleep_x, query_x = rng.normal(size=[40, 3]).astype(np.float32), rng.normal(size=[num_query, 3]).astype(np.float32)
    plain = KernelRidge(solver=solver, num_features=64, num_inducing=16)(sleep_x, query_x)
    for features in (keras.layers.Identity(), lambda x: x):
        featured = KernelRidge(solver=solver, num_features=64, num_inducing=16, features=features)(sleep_x, query_x)
        np.testing.assert_array_equal(featured, plain)  # the same float operations in the same order


@pytest.mark.parametrize("num_query", [1, 6])
def test_linear_features_then_standardisation_match_explicit_transform(num_query):
    # Ground truth: the map x A + b and the standardisation by the sleep mean and (population) sd written out in
    # NumPy, then the pure kernel_ridge_weights with the median bandwidth, in float64. The two paths differ only
    # in float64 rounding: the smallest column (scale 1e-3) sits on an offset of ~100, so after centring it keeps
    # ~1e-11 relative precision, which the Gram matrix and the solve (condition up to ~1 / ridge) amplify. Measured
    # 5e-10 absolute on weights of order 1e-2: atol 1e-8.
    rng = np.random.default_rng(5)
    sleep_x, query_x = rng.normal(size=[60, 4]), rng.normal(size=[num_query, 4])
    features = _invertible_map(4, seed=6)
    layer = KernelRidge(ridge=1e-2, features=features, standardise_features=True, dtype="float64")
    weights = layer(sleep_x, query_x)

    matrix, offset = np.asarray(features.matrix), np.asarray(features.offset)
    sleep_f, query_f = sleep_x @ matrix + offset, query_x @ matrix + offset
    mean, sd = sleep_f.mean(0), sleep_f.std(0)
    expected, diagnostics = kernel_ridge_weights((sleep_f - mean) / sd, (query_f - mean) / sd, ridge=1e-2)
    assert weights.shape == (num_query, 60)
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-8)
    np.testing.assert_allclose(layer(sleep_x, query_x, return_diagnostics=True)[1].bandwidth, diagnostics.bandwidth,
                               rtol=1e-8)
    # The map matters: unstandardised, the largest column (scale 1e3) swamps the kernel and the weights change.
    unstandardised = KernelRidge(ridge=1e-2, features=features, dtype="float64")(sleep_x, query_x)
    assert np.max(np.abs(unstandardised - expected)) > 1e-2


def test_standardisation_of_raw_observations_is_column_by_column():
    # standardise_features without features rescales the observations themselves: columns at scales 1 and 1e4
    # then give the same weights as the columns divided by their own sd (NumPy, float64; float64 rounding
    # amplified by the solve, as above: atol 1e-8 on weights of order 0.1).
    rng = np.random.default_rng(7)
    sleep_x, query_x = rng.normal(size=[50, 2]) * [1., 1e4], rng.normal(size=[3, 2]) * [1., 1e4]
    weights = KernelRidge(ridge=1e-2, standardise_features=True, dtype="float64")(sleep_x, query_x)
    mean, sd = sleep_x.mean(0), sleep_x.std(0)
    expected = kernel_ridge_weights((sleep_x - mean) / sd, (query_x - mean) / sd, ridge=1e-2)[0]
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-8)


def test_standardise_leaves_a_constant_column_centred_not_scaled_by_rounding_noise():
    # A float32 column equal to 1000.3 everywhere has a sleep sd of float rounding noise (or 0): it is centred
    # only, not divided by that noise into O(1) values. The centring is exact up to the float32 rounding of the
    # sum of 300 values near 3e5 (resolution 0.03, so ~1e-4 on the mean): atol 1e-3. The other column is standardised.
    sleep_x = tf.stack([tf.fill([300], 1000.3), tf.random.stateless_normal([300], seed=[1, 1]) * 5. + 2.], -1)
    sleep_s, query_s = standardise(sleep_x, tf.constant([[1000.3, 2.], [1001.3, 7.]]))
    np.testing.assert_allclose(sleep_s[:, 0], 0., atol=1e-3)
    np.testing.assert_allclose(query_s[:, 0], [0., 1.], atol=1e-3)
    np.testing.assert_allclose([np.mean(sleep_s[:, 1]), np.std(sleep_s[:, 1])], [0., 1.], atol=1e-5)


@pytest.mark.parametrize("num_sleep, num_query", [(2, 1), (17, 5), (300, 64)])
@pytest.mark.parametrize("compile_mode", ["eager", "function", "xla"])
def test_feature_shapes_for_several_batch_sizes(num_sleep, num_query, compile_mode):
    # Features [B, 3] -> [B, 5] (not square); the tf.function has a static N (as the learner's sleep set) and an
    # unknown number M of queries.
    features = LinearMap(np.arange(15.).reshape(3, 5) / 10., np.zeros(5))
    layer = KernelRidge(features=features, standardise_features=True)
    sleep_x = tf.random.stateless_normal([num_sleep, 3], seed=[num_sleep, 1])
    query_x = tf.random.stateless_normal([num_query, 3], seed=[num_query, 2])
    sleep_f, query_f = layer.kernel_inputs(sleep_x, query_x)
    assert sleep_f.shape == (num_sleep, 5) and query_f.shape == (num_query, 5)
    call = layer.__call__ if compile_mode == "eager" else tf.function(
        layer.__call__, jit_compile=compile_mode == "xla",
        input_signature=[tf.TensorSpec([num_sleep, 3]), tf.TensorSpec([None, 3])])
    weights = call(sleep_x, query_x)
    assert weights.shape == (num_query, num_sleep)
    assert np.all(np.isfinite(weights))


@pytest.mark.parametrize("features, name, shape", [
    (lambda x: tf.reduce_sum(x, -1), "<lambda>", r"\(10,\)"),
    (keras.layers.Reshape((3, 1), name="to_rank_3"), "to_rank_3", r"\(10, 3, 1\)"),
])
def test_features_of_wrong_rank_are_named(features, name, shape):
    with pytest.raises(ValueError, match=f"Received: features={name} returning shape {shape}"):
        KernelRidge(features=features)(tf.zeros([10, 3]), tf.zeros([4, 3]))


@pytest.mark.parametrize("arguments, error, message", [
    ({"features": "summaries"}, TypeError, "Received: features of type str"),
    ({"standardise_features": "yes"}, ValueError, "Received: standardise_features='yes'"),
])
def test_bad_feature_arguments(arguments, error, message):
    with pytest.raises(error, match=message):
        KernelRidge(**arguments)


def test_config_round_trip_with_features():
    layer = KernelRidge(kernel="matern52", features=_invertible_map(3, seed=8), standardise_features=True,
                        dtype="float64")
    config = json.loads(json.dumps(layer.get_config()))  # plain JSON
    clone = KernelRidge.from_config(config)
    assert isinstance(clone.features, LinearMap) and clone.standardise_features
    np.testing.assert_array_equal(clone.features.matrix, layer.features.matrix)
    sleep_x, query_x = np.random.default_rng(9).normal(size=[30, 3]), np.zeros([2, 3])
    np.testing.assert_array_equal(clone(sleep_x, query_x), layer(sleep_x, query_x))


def _featured_learner():
    # A Dense feature map (weights fixed at their seeded initial values, not trained) between the observations
    # and the kernel: its weights must be saved and restored with the learner's.
    features = keras.layers.Dense(3, trainable=False, kernel_initializer=keras.initializers.GlorotNormal(seed=2))
    learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=96, num_holdout=16, seed=3,
                               regression=KernelRidge(features=features, standardise_features=True))
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    return learner


def test_learner_with_features_saves_and_continues_exactly(tmp_path):
    """Fit 2 epochs, save to .keras, load, fit 1 more: the same weights as 3 uninterrupted epochs (as in
    tests/test_saving.py), and the loaded feature map and ridge give the same weights as the saved ones."""
    x = FactorAnalysisModel(1, 2, seed=1).joint_distribution().sample(128, seed=[1, 2])[1].numpy()
    uninterrupted = _featured_learner()
    uninterrupted.fit(x, batch_size=64, epochs=3, shuffle=False, verbose=0)
    first = _featured_learner()
    first.fit(x, batch_size=64, epochs=2, shuffle=False, verbose=0)
    first.save(tmp_path / "learner.keras")
    loaded = keras.models.load_model(tmp_path / "learner.keras")

    assert isinstance(loaded.regression.features, keras.layers.Dense) and loaded.regression.standardise_features
    for saved, restored in zip(first.variables, loaded.variables):
        np.testing.assert_array_equal(restored.numpy(), saved.numpy())
    np.testing.assert_array_equal(loaded.regression(x[:96], x[96:]), first.regression(x[:96], x[96:]))
    loaded.fit(x, batch_size=64, epochs=1, shuffle=False, verbose=0)
    for expected, resumed in zip(uninterrupted.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(resumed.numpy(), expected.numpy(), atol=1e-6)  # float32 round-off
