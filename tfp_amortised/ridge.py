"""Kernel ridge regression weights: the regression step of amortised learning (Wenliang et al., 2020).

Kernel ridge regression of any target `t_n` on sleep observations `x_n` predicts, at a query `x`,

    f(x) = sum_n alpha_n(x) t_n,    alpha(x) = (K + N lam I)^{-1} k(X, x),    K_ij = k(x_i, x_j).

The weights depend on the sleep and query observations only, so one Cholesky factor of `K + N lam I` serves
every target: the log-joint, functions of the latents, or held-out diagnostics. This module holds the Keras
layer `KernelRidge`, its whole computation as a pure function (`kernel_ridge_weights`: centring, the median
heuristic bandwidth, the kernel and a solver from `tfp_amortised.solvers`), `regression_weights` (the weights of
a `KernelRidge` layer, or of the defaults when there is none), and the helpers `flatten_events`,
`concatenate_events` and `standardise`.

Observations of several observed nodes are dicts `{node: Tensor[B, *event_shape]}` (`tfp_amortised._observations`):
the kernel compares the concatenation of the nodes' flattened values, `[B, sum_i D_i]` (`concatenate_events`), so
their scales matter: the median heuristic is one length scale for all of them. Standardise the nodes, pass
`standardise_features=True`, or learn one length scale per input dimension (`KernelRidge(learn=True, ard=True)`).

Every setting has one name and one default, shared by the function and the layer (`DEFAULTS`):

    kernel               "gaussian"   a key of KERNELS
    bandwidth            "median"     the median heuristic on each sleep set, or a positive length scale
    ridge                1e-3         the regulariser lam > 0 (always a number); the Gram matrix gets N lam
    bandwidth_subsample  512          rows the median heuristic looks at
    solver               "auto"       exact up to 1000 sleep samples, Nystrom (512 inducing points) above;
                                      "cholesky" for always exact
    intercept            False        regress targets centred on their sleep mean
    learn                False        train the log bandwidth and log ridge online on held-out regression error,
                                      the bandwidth held between the sleep set's nearest-neighbour distance and
                                      its median heuristic, the ridge capped at its starting value
    variance_weight      1.0          with learn: the objective is noise + bias^2 + variance_weight * variance
"""

import collections.abc
import math
import os
import platform
import typing
import warnings

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import _observations
from tfp_amortised.solvers import CONDITION_TOLERANCE, SOLVER_NAMES, SOLVERS, choose_solver, options_for, trusted

psd_kernels = tfp.math.psd_kernels

KERNELS = {
    "gaussian": psd_kernels.ExponentiatedQuadratic,
    "matern12": psd_kernels.MaternOneHalf,
    "matern32": psd_kernels.MaternThreeHalves,
    "matern52": psd_kernels.MaternFiveHalves,
}

DEFAULTS = {"kernel": "gaussian", "bandwidth": "median", "ridge": 1e-3, "bandwidth_subsample": 512,
            "solver": "auto", "intercept": False, "learn": False, "variance_weight": 1.}
DEFAULT_RIDGE = DEFAULTS["ridge"]


class RegressionDiagnostics(typing.NamedTuple):
    """What one regression used and needed, returned with its weights (never stored in the layer).

    Attributes:
      bandwidth: scalar `Tensor`, the kernel length scale used (the median heuristic's value, or the fixed one).
      jitter: scalar `Tensor`, the diagonal shift beyond `N lam` that the solver's Cholesky needed (0 when none;
        nonzero flags a numerically singular system, which was repaired).
      condition: scalar `Tensor`, an estimate (a lower bound, measured within a few percent on Gram matrices) of the
        2-norm condition number of the square system the solver factorised: `K + N lam I` (exact), `Phi^T Phi +
        N lam I` (random features, Nystrom). Above `8.4e4` a float32 solve was redone in float64 (`escalate`);
        `tfp_amortised.solvers.trusted` says whether the result can be trusted (`tfp_amortised.linalg.
        solve_with_condition`).
    """

    bandwidth: tf.Tensor
    jitter: tf.Tensor
    condition: tf.Tensor


class RegressionWarning(UserWarning):
    """The regression cannot be trusted: it explained almost nothing of the gradient at held-out sleep samples (the
    estimate is mostly bias: a bandwidth or ridge far from useful values, too few sleep samples, or observations the
    kernel cannot compare well), or its linear system was too ill-conditioned for the precision it was solved in."""


def conditioning_message(condition, ridge, dtype, escalate):
    """What a `RegressionWarning` about an untrusted solve says: lambda, the condition estimate and what to do."""
    precision = "float64" if escalate or tf.as_dtype(dtype) == tf.float64 else tf.as_dtype(dtype).name
    advice = ("a larger ridge" if precision == "float64" else
              "KernelRidge(escalate=True) (the default, which redoes such solves in float64), float64 data "
              "(KernelRidge(dtype='float64')) or a larger ridge")
    return (f"The kernel ridge system is too ill-conditioned for {precision}: condition number about "
            f"{float(condition):.3g} with ridge={float(ridge):.3g}, so the weights may be wrong in their leading "
            f"digits (condition x eps >= {CONDITION_TOLERANCE}). Small ridges on duplicated (discrete) observations "
            f"do this. Use {advice}: condition <= 1 + 1 / ridge for a unit-amplitude kernel.")


def check_settings(kernel=DEFAULTS["kernel"], bandwidth=DEFAULTS["bandwidth"], ridge=DEFAULTS["ridge"],
                   bandwidth_subsample=DEFAULTS["bandwidth_subsample"], solver=DEFAULTS["solver"],
                   intercept=DEFAULTS["intercept"]):
    """Raises a ValueError (TypeError for a wrong kind of value) naming the first invalid regression setting.

    Tensors are accepted for `bandwidth` and `ridge` (a learned or traced value) and not checked here.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}. Received: kernel={kernel!r}")
    bandwidth_meaning = "the kernel length scale: 'median' or a positive finite number"
    if isinstance(bandwidth, str) and bandwidth != "median":
        raise ValueError(f"bandwidth is {bandwidth_meaning}. Received: bandwidth={bandwidth!r}")
    if not (isinstance(bandwidth, str) or tf.is_tensor(bandwidth)):
        _check_positive_number(bandwidth, "bandwidth", bandwidth_meaning)
    if not tf.is_tensor(ridge):
        _check_positive_number(ridge, "ridge", "the regulariser lambda: a positive finite number")
    if not (isinstance(bandwidth_subsample, (int, np.integer)) and not isinstance(bandwidth_subsample, bool)
            and bandwidth_subsample >= 2):
        raise ValueError(
            f"bandwidth_subsample must be an integer >= 2. Received: bandwidth_subsample={bandwidth_subsample!r}")
    if solver not in SOLVER_NAMES:
        raise ValueError(f"solver must be one of {sorted(SOLVER_NAMES)}. Received: solver={solver!r}")
    if not isinstance(intercept, bool):
        raise ValueError(f"intercept must be True or False. Received: intercept={intercept!r}")


def _check_positive_number(value, argument, meaning):
    """A TypeError unless `value` is a real number, a ValueError unless it is positive and finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{argument} is {meaning}. Received: {argument}={value!r} of type {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{argument} must be positive and finite ({meaning}). Received: {argument}={value!r}")


def check_memory(num_sleep, dtype, solver):
    """A ValueError, before anything is allocated, when the exact solve cannot fit in this machine's memory.

    The exact solver holds about three `N x N` matrices (the Gram matrix, its Cholesky factor, a gradient or solve
    workspace); beyond the physical memory it would fail after minutes with an out-of-memory error. Unknown sizes
    (`num_sleep` None) and the linear-cost solvers are not checked.
    """
    if solver != "cholesky" or num_sleep is None:
        return
    needed = 3 * num_sleep**2 * tf.as_dtype(dtype).size
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ValueError(
            f"The exact ridge solve for num_sleep={num_sleep} needs about {needed / 2**30:.0f} GiB (three "
            f"{num_sleep} x {num_sleep} {tf.as_dtype(dtype).name} matrices), more than this machine's "
            f"{available / 2**30:.0f} GiB: use KernelRidge(solver='random_features') or solver='nystrom', whose cost "
            f"is linear in num_sleep, or fewer sleep samples. Received: num_sleep={num_sleep}")


def flatten_events(x, event_ndims=None):
    """Reshapes `x: [*batch, *event_shape]` (event of rank `event_ndims`) to features `[*batch, prod(event_shape)]`.

    By default (`event_ndims=None`) every axis but the first is the event: `[B, *event_shape] -> [B, D]`, what the
    kernel compares. The feature size stays static wherever the event shape is, even when the batch size is
    unknown (a `tf.function` input, a distributed batch).
    """
    x = tf.convert_to_tensor(x)
    event_ndims = x.shape.rank - 1 if event_ndims is None else event_ndims
    event_size = None if x.shape.rank is None else x.shape[x.shape.rank - event_ndims:].num_elements()
    batch_shape = tf.shape(x)[:tf.rank(x) - event_ndims]
    return tf.reshape(x, tf.concat([batch_shape, [-1 if event_size is None else event_size]], axis=0))


def concatenate_events(x, dtype):
    """Observations as the features the kernel compares by default: `[B, D]` of `dtype`.

    Args:
      x: `[B, *event_shape]`, or a dict `{node: [B, *event_shape_node]}` (several observed nodes).
      dtype: the features' dtype (every node is cast to it).

    Returns:
      `Tensor[B, D]`: `flatten_events(x)`, or the nodes' flattened values concatenated in `tf.nest` order (sorted
      node names), `D = sum_i prod(event_shape_i)`.
    """
    return tf.concat([tf.cast(flatten_events(node), dtype) for node in tf.nest.flatten(x)], axis=-1)


def median_bandwidth(x, bandwidth_subsample=DEFAULTS["bandwidth_subsample"]):
    """Median heuristic bandwidth: the median distance between two independent rows of `x`.

    Rows are i.i.d. sleep draws, so the first `bandwidth_subsample` of them are a random subsample: the distances
    between its first and second halves are `(bandwidth_subsample / 2)^2` pairs of independent points, with no
    zero self-distances to bias the median. Cost O(bandwidth_subsample^2 D), not O(N^2 D).

    When more than half of the pairs coincide (discrete observations), the median is 0 and would give a
    degenerate kernel: the root-mean-square distance is used instead, and 1 when every row is the same. The rows
    are centred first (as in `nearest_neighbour_distance`): distances do not change, and far from the origin the
    squared norms of the distance expansion would round away a small spread (and send it to the fallback).

    Args:
      x: `Tensor[N, D]` of i.i.d. rows, `N >= 2`.
      bandwidth_subsample: size of the subsample.

    Returns:
      Scalar `Tensor`: the median Euclidean distance (or its fallback), always positive.
    """
    if x.shape[0] is not None:
        if x.shape[0] < 2:
            raise ValueError(f"The median heuristic needs at least 2 rows. Received: x.shape={x.shape}")
        half = min(bandwidth_subsample, x.shape[0]) // 2
    else:  # the number of rows is known only when the graph runs
        half = tf.minimum(bandwidth_subsample, tf.shape(x)[0]) // 2
    x = x - tf.reduce_mean(x, 0)
    first, second = x[:half], x[half:2 * half]
    square_distance = tf.maximum(_square_distances(first, second), 0.)
    median = _median(tf.reshape(square_distance, [-1]))
    mean = tf.reduce_mean(square_distance)
    # Below float resolution of the squared norms, "zero" is rounding noise of the expansion above.
    resolution = _rounding_resolution(x) + np.finfo(np.float32).tiny
    fallback = tf.where(mean > resolution, mean, tf.ones_like(mean))
    return tf.sqrt(tf.where(median > resolution, median, fallback))


def nearest_neighbour_distance(x, bandwidth_subsample=DEFAULTS["bandwidth_subsample"]):
    """Median distance from a row of `x` to its nearest other row: the floor of a learned bandwidth (whose cap is
    `median_bandwidth`).

    The first `bandwidth_subsample // 2` rows (a random subsample of i.i.d. sleep draws, as in `median_bandwidth`)
    against all `N` rows, each without itself. A Gaussian kernel narrower than this puts almost no weight on any
    sleep sample at a typical query: on the 8 x 8 digits a learned bandwidth fell to about half of it and the
    decoder trained worse (`KernelRidge`, `learn`). Cost O(bandwidth_subsample N D).

    Args:
      x: `Tensor[N, D]` of i.i.d. rows, `N >= 2`.
      bandwidth_subsample: twice the number of rows whose nearest neighbour is measured.

    Returns:
      Scalar `Tensor`, `>= 0` (0 when most rows have a duplicate).
    """
    x = x - tf.reduce_mean(x, 0)  # distances do not change; the expansion below loses less precision
    num_rows = tf.shape(x)[0]
    rows = x[:tf.maximum(tf.minimum(bandwidth_subsample, num_rows) // 2, 1)]
    square_distance = tf.linalg.set_diag(_square_distances(rows, x),
                                         tf.fill([tf.shape(rows)[0]], x.dtype.max))  # [S, N], not itself
    nearest = tf.reduce_min(square_distance, axis=-1)
    # Below float resolution of the squared norms, "nonzero" is rounding noise; exact zeros also keep the
    # gradient of the square root finite (the `tf.where` drops it at 0).
    nearest = tf.where(nearest > _rounding_resolution(x), nearest, tf.zeros_like(nearest))
    return tf.sqrt(_median(nearest))


def _square_distances(a, b):
    """`Tensor[A, B]` of squared Euclidean distances between the rows of `a: [A, D]` and `b: [B, D]`, by the
    expansion `|a|^2 + |b|^2 - 2 a.b` (a matrix product; may round to slightly below 0)."""
    return tf.reduce_sum(a**2, -1)[:, None] + tf.reduce_sum(b**2, -1)[None, :] - 2. * tf.matmul(a, b, transpose_b=True)


def _rounding_resolution(x):
    """Scalar `Tensor`: the size below which a squared distance between rows of `x: [N, D]` computed by
    `_square_distances` is rounding noise, `1e-6` times the mean squared norm of the rows."""
    return 1e-6 * tf.reduce_mean(tf.reduce_sum(x**2, -1))


def _median(values):
    """The median of `values: Tensor[n] >= 0`: `tfp.stats.percentile(values, 50., interpolation="midpoint")`.

    The same value and gradient (that of the one or two middle elements), found without a sort: the middle
    elements' positions come from `_middle_positions`, an exact selection that XLA compiles to a few passes over
    `values` (about 1 ms for the 65 536 distances of the default subsample on a 2-core CPU, where the sort in
    `tfp.stats.percentile` takes 5 ms, and 12 ms under XLA). Where TensorFlow cannot compile with XLA (a
    pluggable GPU on macOS, as Keras's own `jit_compile="auto"` rule assumes), the sort.
    """
    if not _can_compile():
        return tfp.stats.percentile(values, 50., interpolation="midpoint")
    lower, upper = _middle_positions(tf.abs(values))  # abs: -0. and +0. have different bit patterns
    return 0.5 * (tf.gather(values, lower) + tf.gather(values, upper))


def _can_compile():
    """Whether XLA can compile here: not on macOS with a (Metal) GPU visible, where Keras turns XLA off too."""
    return not (platform.system() == "Darwin" and tf.config.list_physical_devices("GPU"))


@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _middle_positions(values):
    """Positions of the `ceil(n / 2)`-th and `(floor(n / 2) + 1)`-th smallest of `values: Tensor[n] >= 0`.

    Non-negative floats are ordered as their bit patterns read as integers, so the `k`-th smallest is the
    smallest integer `v` with `#{bits <= v} >= k`, found by bisection in one pass per bit; the next one is the
    smallest element above it, unless it occurs more than once.
    """
    bits = tf.bitcast(values, {16: tf.int16, 32: tf.int32, 64: tf.int64}[values.dtype.size * 8])
    num_values = tf.size(values)
    rank = (num_values + 1) // 2

    def count_up_to(value):
        return tf.reduce_sum(tf.cast(bits <= value, tf.int32))

    def halve(low, high):
        middle = low + (high - low) // 2
        enough = count_up_to(middle) >= rank
        return tf.where(enough, low, middle + 1), tf.where(enough, middle, high)

    _, lower = tf.while_loop(lambda low, high: low < high, halve, (tf.zeros([], bits.dtype), tf.reduce_max(bits)),
                             maximum_iterations=values.dtype.size * 8)
    is_repeated = count_up_to(lower) > num_values // 2
    upper = tf.where(is_repeated, lower, tf.reduce_min(tf.where(bits > lower, bits, bits.dtype.max)))
    return tf.argmax(tf.cast(bits == lower, tf.int8)), tf.argmax(tf.cast(bits == upper, tf.int8))


def kernel_ridge_weights(sleep_x, query_x, kernel=DEFAULTS["kernel"], bandwidth=DEFAULTS["bandwidth"],
                         ridge=DEFAULTS["ridge"], solver=DEFAULTS["solver"],
                         bandwidth_subsample=DEFAULTS["bandwidth_subsample"], intercept=DEFAULTS["intercept"],
                         escalate=True, **solver_options):
    """Kernel ridge weights with a named kernel and solver: the computation of `KernelRidge`, as a pure function.

    Both sets are first centred on the sleep mean: the kernels are stationary, so this changes nothing but
    rounding (the Gram matrix's `|x|^2 + |y|^2 - 2 x.y` and the Fourier phases lose precision far from the
    origin).

    Args:
      sleep_x: `Tensor[N, D]`.
      query_x: `Tensor[M, D]`.
      kernel: a key of `KERNELS`.
      bandwidth: `"median"` for `median_bandwidth` on `bandwidth_subsample` sleep rows, or the length scale.
      ridge: scalar `lam > 0`.
      solver: a key of `SOLVERS`, whose options `solver_options` are passed on to it, or `"auto"` for the one
        `tfp_amortised.solvers.choose_solver` picks for the static number of sleep rows (it is passed the
        options it takes).
      bandwidth_subsample: subsample size of the median heuristic.
      intercept: whether to regress targets centred on their sleep mean, `f(x) = t_bar + sum_n alpha_n(x)
        (t_n - t_bar)`: the weights become `alpha_n + (1 - sum_k alpha_k) / N` and sum to one for each query.
      escalate: whether a float32 system too ill-conditioned for float32 is solved again in float64
        (`tfp_amortised.solvers.solve`). Eagerly, a `RegressionWarning` names a solve that still cannot be trusted.

    Returns:
      `(weights, diagnostics)`: `Tensor[M, N]` and `RegressionDiagnostics`.
    """
    check_settings(kernel, bandwidth, ridge, bandwidth_subsample, solver, intercept)
    check_memory(sleep_x.shape[0], sleep_x.dtype, solver)
    center = tf.reduce_mean(sleep_x, axis=0)
    sleep_x, query_x = sleep_x - center, query_x - center
    if isinstance(bandwidth, str):
        bandwidth = median_bandwidth(sleep_x, bandwidth_subsample)
    bandwidth = tf.cast(bandwidth, sleep_x.dtype)
    if solver == "auto":
        solver = choose_solver(solver, sleep_x.shape[0])
        solver_options = options_for(solver, solver_options)
    weights, jitter, condition = SOLVERS[solver](KERNELS[kernel](length_scale=bandwidth), sleep_x, query_x,
                                                 tf.cast(ridge, sleep_x.dtype), escalate=escalate, **solver_options)
    if tf.executing_eagerly() and not tf.reduce_all(tf.math.is_finite(weights)):
        raise ValueError(
            "The ridge weights are not finite: the squared distances between the sleep_x and query_x rows overflow "
            f"{sleep_x.dtype.name} (largest |sleep_x - mean| = {float(tf.reduce_max(tf.abs(sleep_x))):.3g}, largest "
            f"|query_x - mean| = {float(tf.reduce_max(tf.abs(query_x))):.3g}, bandwidth {float(bandwidth):.3g}): "
            "rescale the observations or regress on features of them (KernelRidge(features=...)).")
    if tf.executing_eagerly() and not trusted(condition, sleep_x.dtype, escalate):
        warnings.warn(conditioning_message(condition, ridge, sleep_x.dtype, escalate), RegressionWarning, stacklevel=2)
    if intercept:
        num_sleep = tf.cast(tf.shape(weights)[-1], weights.dtype)
        weights += (1. - tf.reduce_sum(weights, axis=-1, keepdims=True)) / num_sleep
    return weights, RegressionDiagnostics(bandwidth=bandwidth, jitter=jitter, condition=condition)


def regression_weights(regression, sleep_x, query_x):
    """Ridge weights from sleep to query observations, by a `KernelRidge` layer or, when None, by the defaults.

    The default path (`regression=None`) is `kernel_ridge_weights` with `DEFAULTS` in float32: it creates no Keras
    variables, so it also runs inside a `tf.function` that owns no layer.

    Args:
      regression: a `KernelRidge` layer, or None.
      sleep_x: `Tensor[N, *event_shape]` sleep observations, or a dict of them (several observed nodes).
      query_x: `Tensor[M, *event_shape]` query observations, or a dict of them with the same keys.

    Returns:
      `(weights, diagnostics)`: `Tensor[M, N]` and `RegressionDiagnostics`.
    """
    check_regression(regression)
    if regression is not None:
        return regression(sleep_x, query_x, return_diagnostics=True)
    sleep_x, query_x = _real_batches(sleep_x, query_x, tf.float32)
    return kernel_ridge_weights(concatenate_events(sleep_x, tf.float32), concatenate_events(query_x, tf.float32))


def check_regression(regression, argument="regression"):
    """Raises a TypeError naming `argument` unless `regression` is None or a `KernelRidge` layer."""
    if regression is not None and not isinstance(regression, KernelRidge):
        hint = (" (the regulariser lambda is KernelRidge's `ridge`: pass regression=KernelRidge(ridge=...))"
                if isinstance(regression, (int, float, np.number)) else "")
        raise TypeError(f"{argument} must be None (the default kernel ridge regression) or a KernelRidge layer{hint}. "
                        f"Received: {argument}={regression!r} of type {type(regression).__name__}")


def standardise(sleep_x, query_x):
    """Both sets standardised column by column by the sleep set's mean and standard deviation.

    Each column `f` becomes `(x_f - mean_f) / sd_f` with `mean_f` and `sd_f` over the `N` sleep rows, so inputs
    on very different scales (summary statistics of a series, say) weigh alike in a stationary kernel. A column
    whose sleep standard deviation is below float resolution of its values (constant over the sleep set) is
    centred only, not divided by rounding noise.

    Args:
      sleep_x: `Tensor[N, F]`.
      query_x: `Tensor[M, F]`.

    Returns:
      `(Tensor[N, F], Tensor[M, F])`: the standardised sleep and query sets.
    """
    mean = tf.reduce_mean(sleep_x, axis=0)
    sd = tf.math.reduce_std(sleep_x, axis=0)
    resolution = 1e-6 * tf.sqrt(tf.reduce_mean(sleep_x**2, axis=0)) + np.finfo(np.float32).tiny
    scale = tf.where(sd > resolution, sd, tf.ones_like(sd))
    return (sleep_x - mean) / scale, (query_x - mean) / scale


@keras.saving.register_keras_serializable(package="tfp_amortised")
class KernelRidge(keras.layers.Layer):
    """Keras layer computing the kernel ridge regression weights of amortised learning.

    `KernelRidge()(sleep_x, query_x)` returns `alpha: [M, N]` with `alpha[m] = (K + N lam I)^{-1} k(X, x_m)`
    (Wenliang et al., 2020). The kernel comes from `tfp.math.psd_kernels`; its length scale is the
    median heuristic on a subsample of each sleep set (default) or a fixed value. With
    `return_diagnostics=True` the call returns `(alpha, RegressionDiagnostics)`: the bandwidth used, the
    jitter the Cholesky needed and the condition estimate of the system, as values (the layer's state never changes
    in a call).

    The kernel acts on the flattened observations, or on `features` of them (summary statistics of a series,
    an embedding) when that map is given: `k(phi(x), phi(y))`. With `standardise_features=True` each column of
    what the kernel sees is standardised by the sleep set's mean and standard deviation (`standardise`), before
    the median heuristic; both steps are recomputed from each call's sleep set, in TensorFlow.

    The regression computes in the layer's dtype (float32 by default, `dtype="float64"` for double precision),
    never in half precision: under a global `mixed_float16` or `mixed_bfloat16` policy it uses float32, since
    there is no half-precision Cholesky.

    Input shape:
      `sleep_x: [N, *event_shape]` and `query_x: [M, *event_shape]`, batches of the same observed node (or any
      `[B, D]` features of it); with several observed nodes, dicts `{node: [N, *event_shape_node]}` and
      `{node: [M, *event_shape_node]}`, whose flattened nodes the kernel compares concatenated (module docstring).

    Output shape:
      `[M, N]`.

    Args:
      kernel: one of `"gaussian"` (default), `"matern12"`, `"matern32"`, `"matern52"`.
      bandwidth: `"median"` (default) for the median heuristic, or a positive float length scale.
      ridge: the regulariser `lam > 0` (a number); the Gram matrix gets `N lam` on its diagonal.
      bandwidth_subsample: number of sleep points the median heuristic looks at.
      solver: `"auto"` (default): exact up to `tfp_amortised.solvers.AUTO_MAX_EXACT` (1000) sleep samples,
        Nystrom with `num_inducing` points above (`tfp_amortised.solvers.choose_solver`, by the static `N` of
        each call; exact when `N` is unknown); `"cholesky"` (always exact, `ridge_weights`), `"random_features"`
        (random Fourier features, `random_feature_ridge_weights`) or `"nystrom"` (`nystrom_ridge_weights`). The
        two approximations cost time and memory linear in `N`. Nystrom with 512 inducing points gave the exact
        solve's gradient error within 3.2% on five models (1- to 50-dimensional observations, N = 2000-8000,
        `benchmarks/RESULTS.md`); pass `"cholesky"` for the exact solve at any `N`.
      num_features: even number of random Fourier features (`solver="random_features"`).
      num_inducing: number of Nystrom inducing points (`solver="nystrom"`).
      seed: integer seed of the random Fourier frequencies; fixed, so every call uses the same frequencies
        (scaled by the current bandwidth).
      features: None (default: the kernel acts on the flattened observations), or a callable mapping a batch of
        observations `[B, *event_shape]` (with several observed nodes, the dict of the nodes' batches) to
        features `[B, F]` (row by row, for any `B`; `F` known statically),
        applied to the sleep and query sets before standardisation, the median heuristic and the kernel. Pass a
        Keras layer registered with `keras.saving.register_keras_serializable` for `get_config` and `.keras`
        saving to work. Its weights, if any, are not trained by `AmortisedLearner` (the ridge weights are
        constants of the gradient).
      standardise_features: whether to standardise each column of the kernel's input (the features, or the
        observations when `features` is None) by the sleep set's mean and standard deviation (`standardise`).
      intercept: False (default) for plain kernel ridge regression, which shrinks every prediction towards 0
        away from the sleep observations; True to regress targets centred on their sleep mean, so predictions
        shrink towards that mean instead and each query's weights sum to one (`E[1 | x] = 1` exactly:
        posterior probabilities from `posterior_expectation` then sum to one).
      learn: False (default) to keep the bandwidth rule and `ridge` fixed; True to make the log bandwidth, the log
        ridge and the weights of a Keras `features` layer (a deep kernel) trainable. They start from the median
        heuristic (`initialise`, on the learner's first sleep set) or the fixed `bandwidth`, and from `ridge`, and
        `AmortisedLearner` trains them each step, with its own `regression_optimizer`, on the held-out error of
        the regression (`amortised_step`'s `regression_loss`), as the authors' code does. Bounds keep them where
        the gradient is unbiased enough to train on (`benchmarks/RESULTS.md`, issue 11):
        - the bandwidth used is never below the sleep set's `nearest_neighbour_distance`: on the 8 x 8 digits the
          held-out error drove it to half that distance, where the kernel barely reaches any sleep sample, and
          the decoder trained worse;
        - nor above the sleep set's `median_bandwidth` (the fixed rule's value, recomputed each call): a smoother
          regression lowers the held-out error by lowering the estimate's variance, which learning averages over
          steps anyway, and biases every step the same way. From the symmetric start of the demo's mixture the
          uncapped bandwidth grew 17-fold in 20 epochs and training never left the saddle, which the fixed rule
          leaves after 12 epochs and the capped one after 11;
        - for ARD, the length scales are scaled together, keeping their ratios, until the distances in the
          kernel's units (of `x / l`) meet the bounds;
        - the ridge used is never above its starting value `ridge`, for the same reason as the bandwidth's cap:
          on a sigmoid belief network (conditional form) the uncapped ridge rose to 3-4x its start and training
          ended 0.050 nats per point below the exact-gradient oracle; capped, within 0.01 on 5 seeds.
      ard: with `learn=True`, one length scale per input dimension of the kernel (automatic relevance
        determination): the kernel compares `x / l` and `y / l` with unit length scale, so every solver supports
        it. The length scales are created at the first call (or `initialise`), when the input size is known.
      variance_weight: with `learn=True`, the weight `w` in `[0, 1]` of the estimate's variance against its
        squared bias in the objective the hyperparameters learn on: the held-out squared error is noise + bias^2 +
        variance, and the objective is noise + bias^2 + `w` variance (`estimator.split_half_variance`). The
        default `w = 1` is the held-out mean squared error (the authors' objective). A smaller `w` favours less
        biased regressions, since learning averages the estimate's variance over steps but not its bias, and costs
        two more solves of `N / 2` per learning step; but then the learned ridge can run away downwards: with
        `w = 0.1` it fell to about 6e-8 on the 8 x 8 digits, where the pixel noise scale's gradient is biased at
        small ridges, and the decoder degraded (issue 11).
      escalate: True (default) to solve again in float64 a float32 system too ill-conditioned for float32 (small
        ridges on duplicated, discrete observations; the cost, a float64 factorisation, is paid only then); False
        to keep float32 (on hardware with slow float64), with a `RegressionWarning` eagerly and the `condition`
        diagnostic to watch (`RegressionDiagnostics`).

    #### Examples

    ```python
    regression = KernelRidge(ridge=1e-3)
    alpha = regression(sleep_x, wake_x)                    # [M, N]
    posterior_mean = alpha @ sleep_z                       # E[z | x_m] for every wake point
    alpha, diagnostics = regression(sleep_x, wake_x, return_diagnostics=True)
    fast = KernelRidge(solver="random_features", num_features=2048)  # for N = 50 000 sleep samples
    # the kernel on standardised summary statistics (BlowflySummaries from tfp_amortised.models.blowfly)
    summaries = KernelRidge(features=BlowflySummaries(), standardise_features=True)
    ```

    #### References

    [1] Li K. Wenliang, Theodore Moskovitz, Heishiro Kanagawa, Maneesh Sahani. Amortised Learning by
        Wake-Sleep. ICML 2020.
    [2] Ali Rahimi, Benjamin Recht. Random Features for Large-Scale Kernel Machines. NeurIPS 2007.
    [3] Christopher K. I. Williams, Matthias Seeger. Using the Nystrom Method to Speed Up Kernel Machines.
        NeurIPS 2001.
    """

    def __init__(self, kernel=DEFAULTS["kernel"], bandwidth=DEFAULTS["bandwidth"], ridge=DEFAULTS["ridge"],
                 bandwidth_subsample=DEFAULTS["bandwidth_subsample"], solver=DEFAULTS["solver"], num_features=1024,
                 num_inducing=512, seed=0, features=None, standardise_features=False,
                 intercept=DEFAULTS["intercept"], learn=DEFAULTS["learn"], ard=False,
                 variance_weight=DEFAULTS["variance_weight"], escalate=True, **kwargs):
        if kwargs.get("dtype") is None and keras.config.dtype_policy().compute_dtype in ("float16", "bfloat16"):
            kwargs["dtype"] = "float32"  # no half-precision Cholesky kernel exists
        super().__init__(**kwargs)
        if features is not None and not callable(features):
            raise TypeError(f"features must be None or a callable mapping [B, *event_shape] (or a dict of them) to "
                            "[B, F]. "
                            f"Received: features of type {type(features).__name__}")
        for name, flag in (("standardise_features", standardise_features), ("learn", learn), ("ard", ard),
                           ("escalate", escalate)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False. Received: {name}={flag!r}")
        if ard and not learn:
            raise ValueError("ard=True gives each input dimension its own length scale, which only learning can "
                             "set: pass learn=True with it. Received: ard=True, learn=False")
        check_settings(kernel, bandwidth, ridge, bandwidth_subsample, solver, intercept)
        if isinstance(variance_weight, bool) or not isinstance(variance_weight, (int, float, np.number)) or not (
                0. <= variance_weight <= 1.):
            raise ValueError("variance_weight must be a number in [0, 1]. "
                             f"Received: variance_weight={variance_weight!r}")
        _check_solver_options(num_features, num_inducing, seed)
        self.features, self.standardise_features, self.intercept = features, standardise_features, intercept
        self.solver, self.num_features, self.num_inducing, self.seed = solver, num_features, num_inducing, seed
        self.kernel_name = kernel
        self.bandwidth_rule = bandwidth
        self.bandwidth_subsample = int(bandwidth_subsample)
        self.initial_ridge = float(ridge)
        self.learn, self.ard, self.escalate = learn, ard, escalate
        self.variance_weight = float(variance_weight)
        if learn:  # 1 once the learned bandwidth holds a value (the median heuristic's, set by `initialise`)
            self.initialised = self._scalar_weight("initialised", 0. if isinstance(bandwidth, str) else 1.,
                                                   trainable=False)
        if not ard:  # with ard, the length scales are created by `build`, once the input size is known
            self.log_bandwidth = self._scalar_weight("log_bandwidth", math.log(self._initial_bandwidth), learn)
        self.log_ridge = self._scalar_weight("log_ridge", math.log(ridge), learn)
        self.built = not ard

    @property
    def _initial_bandwidth(self):
        return 1. if isinstance(self.bandwidth_rule, str) else float(self.bandwidth_rule)

    def build(self, sleep_x_shape, query_x_shape=None):
        """Creates the per-dimension log length scales `[F]` (`ard=True`), `F` the size of the kernel's input."""
        del query_x_shape  # the same event shape as sleep_x
        size = self._kernel_input_size(sleep_x_shape)
        self.log_bandwidth = self.add_weight(shape=(size,), initializer="zeros", trainable=self.learn,
                                             name="log_bandwidth")
        self.log_bandwidth.assign(tf.fill([size], math.log(self._initial_bandwidth)))
        self.built = True

    def _kernel_input_size(self, sleep_x_shape):
        """`F`, from the shape `[N, *event_shape]` of the sleep set, or the dict of its nodes' shapes."""
        example = _map_nodes(lambda shape: tf.zeros([2, *shape[1:]], self.compute_dtype), sleep_x_shape)
        return int(self.kernel_inputs(example, example)[0].shape[-1])

    def _scalar_weight(self, name, value, trainable=False):
        # Assigned, not passed to keras.initializers.Constant, which rounds a Python float to float32 first.
        weight = self.add_weight(shape=(), initializer="zeros", trainable=trainable, name=name)
        weight.assign(value)
        return weight

    @property
    def bandwidth(self):
        """The kernel length scale held by the layer: scalar `Tensor` (or `[F]` with `ard=True`), or None with
        `bandwidth="median"` and `learn=False` (recomputed each call and returned in `RegressionDiagnostics`)."""
        if not self.learn and isinstance(self.bandwidth_rule, str):
            return None
        return tf.exp(self.log_bandwidth) if self.built else None

    @property
    def ridge(self):
        """Scalar `Tensor` of the compute dtype: the regulariser `lam` used, a learned one capped at its starting
        value `ridge` (`_rescaled`)."""
        ridge = tf.exp(tf.cast(self.log_ridge, self.compute_dtype))
        if not self.learn:
            return ridge
        return _rescaled(ridge, tf.minimum(tf.constant(self.initial_ridge, self.compute_dtype) / ridge, 1.))

    @property
    def is_initialised(self):
        """Whether a learning layer's bandwidth holds its starting value (always True for a fixed layer)."""
        return not self.learn or float(self.initialised.numpy()) > 0.

    def initialise(self, sleep_x):
        """Starts learning from the median heuristic: sets the learned bandwidth (every length scale with
        `ard=True`) to `median_bandwidth` of the kernel inputs of `sleep_x: [N, *event_shape]` (or a dict of them),
        once.

        The learner calls it, eagerly, before its first step; a layer that has already been initialised (or that
        started from a fixed bandwidth, or does not learn) is left as it is.
        """
        if self.is_initialised:
            return
        if not self.built:
            self.build(_map_nodes(lambda node: tf.convert_to_tensor(node).shape, sleep_x))
        sleep_inputs, _ = self.kernel_inputs(sleep_x, tf.nest.map_structure(lambda node: node[:1], sleep_x))
        median = median_bandwidth(sleep_inputs, self.bandwidth_subsample)
        self.log_bandwidth.assign(tf.fill(tf.shape(self.log_bandwidth), tf.math.log(tf.cast(median, tf.float32))))
        self.initialised.assign(1.)

    def kernel_inputs(self, sleep_x, query_x):
        """What the kernel compares: the flattened observations, or their `features`, standardised if asked.

        Args:
          sleep_x: `[N, *event_shape]` sleep observations, or a dict of them (several observed nodes).
          query_x: `[M, *event_shape]` query observations, or a dict of them with the same keys.

        Returns:
          `(Tensor[N, F], Tensor[M, F])` of the layer's compute dtype (without `features`, `F = prod(event_shape)`,
          or its sum over the nodes: `concatenate_events`).
        """
        sleep_x, query_x = _real_batches(sleep_x, query_x, self.compute_dtype)
        if self.features is not None:
            sleep_x, query_x = self._apply_features(sleep_x), self._apply_features(query_x)
        else:
            sleep_x, query_x = (concatenate_events(x, self.compute_dtype) for x in (sleep_x, query_x))
        if self.standardise_features:
            sleep_x, query_x = standardise(sleep_x, query_x)
        return sleep_x, query_x

    def _apply_features(self, x):
        """`features(x)`: `[B, *event_shape] -> [B, F]` (a dict of nodes' batches with several observed nodes) in the
        compute dtype; a ValueError naming `features` else."""
        value = tf.cast(self.features(x), self.compute_dtype)
        rows = tf.nest.flatten(x)[0].shape[:1]
        if value.shape.rank != 2 or not value.shape[:1].is_compatible_with(rows) or value.shape[1] is None:
            name = getattr(self.features, "name", None) or getattr(self.features, "__name__", type(self.features))
            raise ValueError(
                "features must map observations of shape [B, *event_shape] to features of shape [B, F] (F known "
                f"statically). Received: features={name!s} returning shape {value.shape} for input of shape "
                f"{_map_nodes(lambda node: node.shape, x)}")
        return value

    def call(self, sleep_x, query_x, return_diagnostics=False):
        """`alpha: [M, N]`, or `(alpha, RegressionDiagnostics)` with `return_diagnostics=True`."""
        if self.learn and tf.executing_eagerly():
            self.initialise(sleep_x)  # once; in a tf.function, `initialise` must have run before (the learner's does)
        sleep_x, query_x = self.kernel_inputs(sleep_x, query_x)
        bandwidth = self._bandwidth(sleep_x)
        if self.learn:
            bandwidth = self._bounded(bandwidth, sleep_x)
        if self.ard:  # k(x / l, y / l) with unit length scale: per-dimension length scales for every solver
            sleep_x, query_x = sleep_x / bandwidth, query_x / bandwidth
        weights, diagnostics = kernel_ridge_weights(
            sleep_x, query_x, kernel=self.kernel_name,
            bandwidth=tf.ones([], self.compute_dtype) if self.ard else bandwidth,
            ridge=self.ridge, solver=self.solver,
            bandwidth_subsample=self.bandwidth_subsample, intercept=self.intercept, escalate=self.escalate,
            **self._solver_options())
        if self.ard:
            diagnostics = diagnostics._replace(bandwidth=bandwidth)
        _check_bandwidth(diagnostics.bandwidth)
        return (weights, diagnostics) if return_diagnostics else weights

    def _bandwidth(self, sleep_inputs):
        """The length scale of this call: `"median"` (recomputed), fixed, or learned (the median heuristic until
        `initialise` has run)."""
        if not self.learn:
            return self.bandwidth_rule if isinstance(self.bandwidth_rule, str) else tf.exp(
                tf.cast(self.log_bandwidth, self.compute_dtype))
        learned = tf.exp(tf.cast(self.log_bandwidth, self.compute_dtype))
        if not isinstance(self.bandwidth_rule, str):
            return learned
        # Until `initialise` has run, the median heuristic (a `tf.cond`: only the branch taken is computed).
        return tf.cond(self.initialised > 0., lambda: learned, lambda: tf.broadcast_to(
            median_bandwidth(sleep_inputs, self.bandwidth_subsample),
            tf.shape(learned)))

    def _bounded(self, bandwidth, sleep_inputs):
        """A learned bandwidth `l` (`[]`, or `[F]` with ard) held between the sleep set's
        `nearest_neighbour_distance` and its `median_bandwidth`, both in the kernel's units:
        `l max(d_nearest(x / l), min(d_median(x / l), 1))`, ARD length scales keeping their ratios (the floor wins
        where the bounds cross).

        Gradient: that of the bandwidth used, passed to `l` (`_rescaled`) except where a bound binds and descent
        would push `l` further past it.
        """
        typical = tf.exp(tf.reduce_mean(tf.math.log(bandwidth)))  # d(x / l) = d(x / ratios) / typical, no overflow
        inputs = sleep_inputs / (bandwidth / typical)
        nearest = nearest_neighbour_distance(inputs, self.bandwidth_subsample) / typical
        median = median_bandwidth(inputs, self.bandwidth_subsample) / typical
        return _rescaled(bandwidth, tf.maximum(nearest, tf.minimum(median, tf.ones([], median.dtype))))

    def _solver_options(self):
        options = {"num_features": self.num_features, "seed": tf.constant([self.seed, 0], tf.int32),
                   "num_inducing": self.num_inducing}
        return options if self.solver == "auto" else options_for(self.solver, options)

    def compute_output_shape(self, sleep_x_shape, query_x_shape):
        rows = [tf.nest.flatten(_map_nodes(lambda node: node[0], shape))[0] for shape in (query_x_shape, sleep_x_shape)]
        return tuple(rows)

    def load_own_variables(self, store):
        """Keras loading hook. Files written by 0.1.0 also stored a `jitter` diagnostic (a third variable), or,
        inside a learner, stored the layer under the learner's old attribute name `ridge` (so none reach here):
        their state is the configuration's, which the constructor has already set."""
        keys = list(store.keys())
        if not keys:
            return
        super().load_own_variables({key: store[key] for key in keys[:len(self.variables)]})

    def get_config(self):
        return {
            **super().get_config(),
            "kernel": self.kernel_name,
            "bandwidth": self.bandwidth_rule,
            "ridge": self.initial_ridge,
            "bandwidth_subsample": self.bandwidth_subsample,
            "solver": self.solver,
            "num_features": self.num_features,
            "num_inducing": self.num_inducing,
            "seed": self.seed,
            "features": None if self.features is None else keras.saving.serialize_keras_object(self.features),
            "standardise_features": self.standardise_features,
            "intercept": self.intercept,
            "learn": self.learn,
            "ard": self.ard,
            "variance_weight": self.variance_weight,
            "escalate": self.escalate,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuilds the layer from `get_config()`; `features` may be serialised (a dict) or an object to share."""
        config = {"variance_weight": 1., **config}  # the objective of files saved before the argument existed
        if isinstance(config.get("features"), dict):
            config["features"] = keras.saving.deserialize_keras_object(config["features"])
        return cls(**config)


@tf.custom_gradient
def _rescaled(value, scale):
    """`value * scale` for a constant `scale > 0` that moves a learned hyperparameter back within its bounds:
    `scale > 1` raises it to a floor, `scale < 1` lowers it to a cap (`KernelRidge._bounded`, `KernelRidge.ridge`).

    Gradient to `value`: `scale * upstream` (the gradient of its logarithm is that of the value used), but 0 where
    a bound binds and descent would push `value` further past it. So a learned value does not drift away beyond a
    bound (Adam moves a variable at its learning rate whatever the gradient's size), and comes back as soon as
    the objective asks for it.
    """
    def gradient(upstream):
        straight = upstream * scale
        beyond = ((scale > 1.) & (straight > 0.)) | ((scale < 1.) & (straight < 0.))
        return tf.where(beyond, tf.zeros_like(straight), straight), None

    return value * scale, gradient


def _real_batches(sleep_x, query_x, dtype):
    """Both sets as `dtype` Tensors (dicts of them for several observed nodes), checked (`_as_real`,
    `_check_batches`)."""
    sleep_x, query_x = _as_real(sleep_x, "sleep_x", dtype), _as_real(query_x, "query_x", dtype)
    if isinstance(sleep_x, dict) or isinstance(query_x, dict):
        if not (isinstance(sleep_x, dict) and isinstance(query_x, dict) and set(sleep_x) == set(query_x)):
            raise ValueError("sleep_x and query_x must both be dicts with the same keys (one entry per observed node) "
                             f"or both be Tensors. Received: sleep_x keys {_keys(sleep_x)}, query_x keys "
                             f"{_keys(query_x)}")
        for name in sleep_x:
            _check_batches(sleep_x[name], query_x[name], f"[{name!r}]")
    else:
        _check_batches(sleep_x, query_x)
    return sleep_x, query_x


def _keys(value):
    return list(value) if isinstance(value, dict) else "(a Tensor)"


def _as_real(value, argument, dtype):
    """`value` as a `dtype` Tensor (a dict of values as a dict of them); a TypeError unless it holds real numbers,
    a ValueError naming `argument` when it is ragged or (eagerly) not finite."""
    if isinstance(value, collections.abc.Mapping):
        return {name: _as_real(node, f"{argument}[{name!r}]", dtype) for name, node in value.items()}
    value = _observations.as_tensor(value, argument)
    if not (value.dtype.is_floating or value.dtype.is_integer or value.dtype.is_bool):
        raise TypeError(f"{argument} must hold real numbers. Received: {argument}.dtype={value.dtype.name}")
    if tf.executing_eagerly() and value.dtype.is_floating and not tf.reduce_all(tf.math.is_finite(value)):
        count = int(tf.reduce_sum(tf.cast(~tf.math.is_finite(value), tf.int32)))
        raise ValueError(f"{argument} must be finite. Received: {argument} of shape {value.shape} with {count} NaN or "
                         "infinite values")
    return tf.cast(value, dtype)


def _check_bandwidth(bandwidth):
    """Eagerly, a ValueError when the kernel cannot use the bandwidth (zero, or so small its inverse square overflows).

    The median heuristic gives 0 when more than half of the sleep observations coincide (discrete data).
    """
    if tf.executing_eagerly() and not tf.reduce_all(tf.math.is_finite(tf.math.reciprocal(tf.square(bandwidth)))):
        raise ValueError(
            "The kernel bandwidth is 0 or too small to use (the median heuristic gives 0 when more than half of "
            "the sleep observations coincide); pass a positive bandwidth to KernelRidge. "
            f"Received: bandwidth={bandwidth.numpy()!r}")


def _check_batches(sleep_x, query_x, node=""):
    """A ValueError unless `sleep_x: [N, *event_shape]` and `query_x: [M, *event_shape]`, `N >= 2`; `node` is the
    key (`"['y']"`) in the messages when they are one node of dicts."""
    received = f"Received: sleep_x{node}.shape={sleep_x.shape}, query_x{node}.shape={query_x.shape}"
    if sleep_x.shape.rank is None or sleep_x.shape.rank < 1 or sleep_x.shape.rank != query_x.shape.rank:
        raise ValueError(f"KernelRidge expects sleep_x{node} of shape [N, *event_shape] and query_x{node} of shape "
                         f"[M, *event_shape]. {received}")
    if not sleep_x.shape[1:].is_compatible_with(query_x.shape[1:]):
        raise ValueError(f"sleep_x{node} and query_x{node} must have the same event shape. {received}")
    if sleep_x.shape[0] is not None and sleep_x.shape[0] < 2:
        raise ValueError(f"KernelRidge needs at least 2 sleep points. Received: sleep_x{node}.shape={sleep_x.shape}")


def _map_nodes(fn, value):
    """`fn(value)`, or `fn` of each node of a dict (unlike `tf.nest`, never enters a shape, which is a tuple)."""
    return {name: fn(node) for name, node in value.items()} if isinstance(value, dict) else fn(value)


def _check_solver_options(num_features, num_inducing, seed):
    if not (isinstance(num_features, int) and num_features >= 2 and num_features % 2 == 0):
        raise ValueError(f"num_features must be an even integer >= 2. Received: num_features={num_features!r}")
    if not (isinstance(num_inducing, int) and num_inducing >= 1):
        raise ValueError(f"num_inducing must be a positive integer. Received: num_inducing={num_inducing!r}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an integer. Received: seed={seed!r}")
