"""Kernel ridge regression weights: the regression step of amortised learning (Wenliang et al., 2020).

Kernel ridge regression of any target `t_n` on sleep observations `x_n` predicts, at a query `x`,

    f(x) = sum_n alpha_n(x) t_n,    alpha(x) = (K + N lam I)^{-1} k(X, x),    K_ij = k(x_i, x_j).

The weights depend on the sleep and query observations only, so one Cholesky factor of `K + N lam I` serves
every target: the log-joint, functions of the latents, or held-out diagnostics. This module holds the Keras
layer `KernelRidge`, its whole computation as a pure function (`kernel_ridge_weights`: centring, the median
heuristic bandwidth, the kernel and a solver from `tfp_amortised.solvers`), and `standardise` for kernels on
features of the observations (`features=`, e.g. summary statistics of a series).
"""

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.solvers import SOLVERS

psd_kernels = tfp.math.psd_kernels

KERNELS = {
    "gaussian": psd_kernels.ExponentiatedQuadratic,
    "matern12": psd_kernels.MaternOneHalf,
    "matern32": psd_kernels.MaternThreeHalves,
    "matern52": psd_kernels.MaternFiveHalves,
}

DEFAULT_RIDGE = 1e-3


def median_bandwidth(x, max_points=512):
    """Median heuristic bandwidth: the median distance between two independent rows of `x`.

    Rows are i.i.d. sleep draws, so the first `max_points` of them are a random subsample: the distances
    between its first and second halves are `(max_points / 2)^2` pairs of independent points, with no
    zero self-distances to bias the median. Cost O(max_points^2 D), not O(N^2 D).

    Args:
      x: `Tensor[N, D]` of i.i.d. rows, `N >= 2`.
      max_points: size of the subsample.

    When more than half of the pairs coincide (discrete observations), the median is 0 and would give a
    degenerate kernel: the root-mean-square distance is used instead, and 1 when every row is the same.

    Returns:
      Scalar `Tensor`: the median Euclidean distance (or its fallback), always positive.
    """
    if x.shape[0] is not None:
        half = min(max_points, x.shape[0]) // 2
    else:  # the number of rows is known only when the graph runs
        half = tf.minimum(max_points, tf.shape(x)[0]) // 2
    first, second = x[:half], x[half:2 * half]
    square_distance = tf.maximum(tf.reduce_sum(first**2, -1)[:, None] + tf.reduce_sum(second**2, -1)[None, :]
                                 - 2. * tf.matmul(first, second, transpose_b=True), 0.)
    median = tfp.stats.percentile(square_distance, 50., interpolation="midpoint")
    mean = tf.reduce_mean(square_distance)
    # Below float resolution of the squared norms, "zero" is rounding noise of the expansion above.
    resolution = 1e-6 * tf.reduce_mean(tf.reduce_sum(x**2, -1)) + np.finfo(np.float32).tiny
    fallback = tf.where(mean > resolution, mean, tf.ones_like(mean))
    return tf.sqrt(tf.where(median > resolution, median, fallback))


def kernel_ridge_weights(sleep_x, query_x, kernel="gaussian", bandwidth=None, ridge=DEFAULT_RIDGE,
                         solver="cholesky", bandwidth_subsample=512, intercept=False, **solver_options):
    """Kernel ridge weights with a named kernel and solver: the computation of `KernelRidge`, as a pure function.

    Both sets are first centred on the sleep mean: the kernels are stationary, so this changes nothing but
    rounding (the Gram matrix's `|x|^2 + |y|^2 - 2 x.y` and the Fourier phases lose precision far from the
    origin).

    Args:
      sleep_x: `Tensor[N, D]`.
      query_x: `Tensor[M, D]`.
      kernel: a key of `KERNELS`.
      bandwidth: the length scale, or None for `median_bandwidth` on `bandwidth_subsample` sleep rows.
      ridge: scalar `lam > 0`.
      solver: a key of `SOLVERS`; `solver_options` are passed on to it.
      bandwidth_subsample: subsample size of the median heuristic.
      intercept: whether to regress targets centred on their sleep mean, `f(x) = t_bar + sum_n alpha_n(x)
        (t_n - t_bar)`: the weights become `alpha_n + (1 - sum_k alpha_k) / N` and sum to one for each query.

    Returns:
      weights: `Tensor[M, N]`.
      bandwidth: scalar `Tensor`, the length scale used.
      jitter: scalar `Tensor`, the diagonal shift the solver's Cholesky needed.
    """
    center = tf.reduce_mean(sleep_x, axis=0)
    sleep_x, query_x = sleep_x - center, query_x - center
    if bandwidth is None:
        bandwidth = median_bandwidth(sleep_x, bandwidth_subsample)
    weights, jitter = SOLVERS[solver](KERNELS[kernel](length_scale=bandwidth), sleep_x, query_x,
                                      tf.cast(ridge, sleep_x.dtype), **solver_options)
    if intercept:
        num_sleep = tf.cast(tf.shape(weights)[-1], weights.dtype)
        weights += (1. - tf.reduce_sum(weights, axis=-1, keepdims=True)) / num_sleep
    return weights, bandwidth, jitter


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
    median heuristic on a subsample of each sleep set (default) or a fixed value. The log bandwidth and the
    log ridge are non-trainable Keras weights: the first records the bandwidth used by the last call, so it
    can be logged, saved and restored.

    The kernel acts on the observations themselves, or on `features` of them (summary statistics of a series,
    an embedding) when that map is given: `k(phi(x), phi(y))`. With `standardise_features=True` each column of
    what the kernel sees is standardised by the sleep set's mean and standard deviation (`standardise`), before
    the median heuristic; both steps are recomputed from each call's sleep set, in TensorFlow.

    Input shape:
      `sleep_x: [N, D]` and `query_x: [M, D]`, with the same feature size `D` (flatten event dimensions first).

    Output shape:
      `[M, N]`.

    Args:
      kernel: one of `"gaussian"` (default), `"matern12"`, `"matern32"`, `"matern52"`.
      bandwidth: `"median"` (default) for the median heuristic, or a positive float length scale.
      ridge: the regulariser `lam > 0`; the Gram matrix gets `N lam` on its diagonal.
      bandwidth_subsample: number of sleep points the median heuristic looks at.
      solver: `"cholesky"` (default; exact, `ridge_weights`), `"random_features"` (random Fourier features,
        `random_feature_ridge_weights`) or `"nystrom"` (`nystrom_ridge_weights`). The two approximations
        cost time and memory linear in `N`: use them beyond a few thousand sleep samples.
      num_features: even number of random Fourier features (`solver="random_features"`).
      num_inducing: number of Nystrom inducing points (`solver="nystrom"`).
      seed: integer seed of the random Fourier frequencies; fixed, so every call uses the same frequencies
        (scaled by the current bandwidth).
      features: None (default: the kernel acts on the observations), or a callable mapping observations
        `[B, D]` to features `[B, F]` (row by row, for any `B`; `F` known statically), applied to the sleep and
        query sets before standardisation, the median heuristic and the kernel. Pass a Keras layer registered
        with `keras.saving.register_keras_serializable` for `get_config` and `.keras` saving to work. Its
        weights, if any, are not trained by `AmortisedLearner` (the ridge weights are constants of the
        gradient).
      standardise_features: whether to standardise each column of the kernel's input (the features, or the
        observations when `features` is None) by the sleep set's mean and standard deviation (`standardise`).
      intercept: False (default) for plain kernel ridge regression, which shrinks every prediction towards 0
        away from the sleep observations; True to regress targets centred on their sleep mean, so predictions
        shrink towards that mean instead and each query's weights sum to one (`E[1 | x] = 1` exactly:
        posterior probabilities from `posterior_expectation` then sum to one).

    #### Examples

    ```python
    ridge = KernelRidge(ridge=1e-3)
    alpha = ridge(sleep_x, wake_x)           # [M, N]
    posterior_mean = alpha @ sleep_z         # E[z | x_m] for every wake point
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

    def __init__(self, kernel="gaussian", bandwidth="median", ridge=DEFAULT_RIDGE, bandwidth_subsample=512,
                 solver="cholesky", num_features=1024, num_inducing=512, seed=0, features=None,
                 standardise_features=False, intercept=False, **kwargs):
        super().__init__(**kwargs)
        if features is not None and not callable(features):
            raise TypeError(f"features must be None or a callable mapping [B, D] to [B, F]. Received: features of "
                            f"type {type(features).__name__}")
        if not isinstance(standardise_features, bool):
            raise ValueError(f"standardise_features must be True or False. "
                             f"Received: standardise_features={standardise_features!r}")
        if not isinstance(intercept, bool):
            raise ValueError(f"intercept must be True or False. Received: intercept={intercept!r}")
        self.features, self.standardise_features, self.intercept = features, standardise_features, intercept
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {sorted(KERNELS)}. Received: kernel={kernel!r}")
        if not (bandwidth == "median" or (isinstance(bandwidth, (int, float)) and bandwidth > 0)):
            raise ValueError(f"bandwidth must be 'median' or a positive number. Received: bandwidth={bandwidth!r}")
        if not (isinstance(ridge, (int, float)) and ridge > 0 and math.isfinite(ridge)):
            raise ValueError(f"ridge must be a positive finite number. Received: ridge={ridge!r}")
        if not (isinstance(bandwidth_subsample, int) and bandwidth_subsample >= 2):
            raise ValueError(
                f"bandwidth_subsample must be an integer >= 2. Received: bandwidth_subsample={bandwidth_subsample!r}")
        _check_solver(solver, num_features, num_inducing, seed)
        self.solver, self.num_features, self.num_inducing, self.seed = solver, num_features, num_inducing, seed
        self.kernel_name = kernel
        self.bandwidth_rule = bandwidth
        self.bandwidth_subsample = bandwidth_subsample
        self.initial_ridge = float(ridge)
        initial_bandwidth = 1. if bandwidth == "median" else float(bandwidth)
        self.log_bandwidth = self._scalar_weight("log_bandwidth", math.log(initial_bandwidth))
        self.log_ridge = self._scalar_weight("log_ridge", math.log(ridge))
        self.jitter = self._scalar_weight("jitter", 0.)
        self.built = True

    def _scalar_weight(self, name, value):
        # Assigned, not passed to keras.initializers.Constant, which rounds a Python float to float32 first.
        weight = self.add_weight(shape=(), initializer="zeros", trainable=False, name=name)
        weight.assign(value)
        return weight

    @property
    def bandwidth(self):
        """Scalar `Tensor`: the kernel length scale used by the last call (or the fixed one)."""
        return tf.exp(self.log_bandwidth)

    @property
    def ridge(self):
        """Scalar `Tensor`: the regulariser `lam`."""
        return tf.exp(self.log_ridge)

    def kernel_inputs(self, sleep_x, query_x):
        """What the kernel compares: the observations, or their `features`, standardised if asked.

        Args:
          sleep_x: `[N, D]` sleep observations.
          query_x: `[M, D]` query observations.

        Returns:
          `(Tensor[N, F], Tensor[M, F])` of the layer's compute dtype (`F = D` without `features`).
        """
        sleep_x = _as_real(sleep_x, "sleep_x", self.compute_dtype)
        query_x = _as_real(query_x, "query_x", self.compute_dtype)
        _check_features(sleep_x, query_x)
        if self.features is not None:
            sleep_x, query_x = self._apply_features(sleep_x), self._apply_features(query_x)
        if self.standardise_features:
            sleep_x, query_x = standardise(sleep_x, query_x)
        return sleep_x, query_x

    def _apply_features(self, x):
        """`features(x)`: `[B, D] -> [B, F]` in the compute dtype; a ValueError naming `features` otherwise."""
        value = tf.cast(self.features(x), self.compute_dtype)
        if value.shape.rank != 2 or not value.shape[:1].is_compatible_with(x.shape[:1]) or value.shape[1] is None:
            name = getattr(self.features, "name", None) or getattr(self.features, "__name__", type(self.features))
            raise ValueError(
                "features must map observations of shape [B, D] to features of shape [B, F] (F known statically). "
                f"Received: features={name!s} returning shape {value.shape} for input of shape {x.shape}")
        return value

    def call(self, sleep_x, query_x):
        sleep_x, query_x = self.kernel_inputs(sleep_x, query_x)
        median = self.bandwidth_rule == "median"
        weights, bandwidth, jitter = kernel_ridge_weights(
            sleep_x, query_x, kernel=self.kernel_name,
            bandwidth=None if median else tf.exp(tf.cast(self.log_bandwidth, self.compute_dtype)),
            ridge=tf.exp(tf.cast(self.log_ridge, self.compute_dtype)), solver=self.solver,
            bandwidth_subsample=self.bandwidth_subsample, intercept=self.intercept, **self._solver_options())
        if median:
            self.log_bandwidth.assign(tf.cast(tf.math.log(bandwidth), self.log_bandwidth.dtype))
        _check_bandwidth(self.bandwidth)
        self.jitter.assign(tf.cast(jitter, self.jitter.dtype))
        return weights

    def _solver_options(self):
        if self.solver == "random_features":
            return {"num_features": self.num_features, "seed": tf.constant([self.seed, 0], tf.int32)}
        if self.solver == "nystrom":
            return {"num_inducing": self.num_inducing}
        return {}

    def compute_output_shape(self, sleep_x_shape, query_x_shape):
        return (query_x_shape[0], sleep_x_shape[0])

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
        }

    @classmethod
    def from_config(cls, config):
        """Rebuilds the layer from `get_config()`; `features` may be serialised (a dict) or an object to share."""
        config = dict(config)
        if isinstance(config.get("features"), dict):
            config["features"] = keras.saving.deserialize_keras_object(config["features"])
        return cls(**config)


def _as_real(value, argument, dtype):
    """`value` as a `dtype` Tensor; a TypeError unless it holds real numbers, a ValueError (eager) if not finite."""
    value = tf.convert_to_tensor(value)
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
    if tf.executing_eagerly() and not tf.math.is_finite(tf.math.reciprocal(tf.square(bandwidth))):
        raise ValueError(
            "The kernel bandwidth is 0 or too small to use (the median heuristic gives 0 when more than half of "
            "the sleep observations coincide); pass a positive bandwidth to KernelRidge. "
            f"Received: bandwidth={float(bandwidth)!r}")


def _check_features(sleep_x, query_x):
    if sleep_x.shape.rank != 2 or query_x.shape.rank != 2:
        raise ValueError(
            "KernelRidge expects sleep_x of shape [N, D] and query_x of shape [M, D]. "
            f"Received: sleep_x.shape={sleep_x.shape}, query_x.shape={query_x.shape}")
    if sleep_x.shape[-1] != query_x.shape[-1]:
        raise ValueError(
            "sleep_x and query_x must have the same feature size D. "
            f"Received: sleep_x.shape={sleep_x.shape}, query_x.shape={query_x.shape}")
    if sleep_x.shape[0] is not None and sleep_x.shape[0] < 2:
        raise ValueError(f"KernelRidge needs at least 2 sleep points. Received: sleep_x.shape={sleep_x.shape}")


def _check_solver(solver, num_features, num_inducing, seed):
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}. Received: solver={solver!r}")
    if not (isinstance(num_features, int) and num_features >= 2 and num_features % 2 == 0):
        raise ValueError(f"num_features must be an even integer >= 2. Received: num_features={num_features!r}")
    if not (isinstance(num_inducing, int) and num_inducing >= 1):
        raise ValueError(f"num_inducing must be a positive integer. Received: num_inducing={num_inducing!r}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an integer. Received: seed={seed!r}")
