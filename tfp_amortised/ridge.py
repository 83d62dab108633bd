"""Kernel ridge regression weights: the regression step of amortised learning (Wenliang et al., 2020).

Kernel ridge regression of any target `t_n` on sleep observations `x_n` predicts, at a query `x`,

    f(x) = sum_n alpha_n(x) t_n,    alpha(x) = (K + N lam I)^{-1} k(X, x),    K_ij = k(x_i, x_j).

The weights depend on the sleep and query observations only, so one Cholesky factor of `K + N lam I` serves
every target: the log-joint, functions of the latents, or held-out diagnostics.
"""

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

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

    Returns:
      Scalar `Tensor`: the median Euclidean distance.
    """
    half = min(max_points, x.shape[0]) // 2 if x.shape[0] is not None else max_points // 2
    first, second = x[:half], x[half:2 * half]
    square_distance = (tf.reduce_sum(first**2, -1)[:, None] + tf.reduce_sum(second**2, -1)[None, :]
                       - 2. * tf.matmul(first, second, transpose_b=True))
    median = tfp.stats.percentile(tf.maximum(square_distance, 0.), 50., interpolation="midpoint")
    return tf.sqrt(median)


def ridge_weights(kernel, sleep_x, query_x, ridge):
    """Kernel ridge weights `alpha = (K + N ridge I)^{-1} k(X, x)`, transposed to one row per query.

    The factorisation is TFP's retrying Cholesky: a matrix that is not numerically positive definite is
    retried with growing diagonal jitter, and the jitter used is returned.

    Args:
      kernel: a `tfp.math.psd_kernels.PositiveSemidefiniteKernel` with one feature dimension.
      sleep_x: `Tensor[N, D]`, the regression inputs (sleep observations).
      query_x: `Tensor[M, D]`, the points where the regression is evaluated (wake observations).
      ridge: scalar `lam > 0`; the Gram matrix is regularised by `N lam`.

    Returns:
      weights: `Tensor[M, N]`; `weights @ t` is the ridge prediction at each query for targets `t: [N, ...]`.
      jitter: scalar `Tensor`, the diagonal shift the Cholesky needed beyond `N ridge` (0 when none).
    """
    num_sleep = tf.cast(tf.shape(sleep_x)[0], sleep_x.dtype)
    gram = kernel.matrix(sleep_x, sleep_x)
    gram = tf.linalg.set_diag(gram, tf.linalg.diag_part(gram) + num_sleep * ridge)
    chol, jitter = tfp.experimental.distributions.marginal_fns.retrying_cholesky(gram)
    cross = kernel.matrix(sleep_x, query_x)
    return tf.transpose(tf.linalg.cholesky_solve(chol, cross)), jitter


@keras.saving.register_keras_serializable(package="tfp_amortised")
class KernelRidge(keras.layers.Layer):
    """Keras layer computing the kernel ridge regression weights of amortised learning.

    `KernelRidge()(sleep_x, query_x)` returns `alpha: [M, N]` with `alpha[m] = (K + N lam I)^{-1} k(X, x_m)`
    (Wenliang et al., 2020). The kernel comes from `tfp.math.psd_kernels`; its length scale is the
    median heuristic on a subsample of each sleep set (default) or a fixed value. The log bandwidth and the
    log ridge are non-trainable Keras weights: the first records the bandwidth used by the last call, so it
    can be logged, saved and restored.

    Input shape:
      `sleep_x: [N, D]` and `query_x: [M, D]`, with the same feature size `D` (flatten event dimensions first).

    Output shape:
      `[M, N]`.

    Args:
      kernel: one of `"gaussian"` (default), `"matern12"`, `"matern32"`, `"matern52"`.
      bandwidth: `"median"` (default) for the median heuristic, or a positive float length scale.
      ridge: the regulariser `lam > 0`; the Gram matrix gets `N lam` on its diagonal.
      bandwidth_subsample: number of sleep points the median heuristic looks at.

    #### Examples

    ```python
    ridge = KernelRidge(ridge=1e-3)
    alpha = ridge(sleep_x, wake_x)           # [M, N]
    posterior_mean = alpha @ sleep_z         # E[z | x_m] for every wake point
    ```
    """

    def __init__(self, kernel="gaussian", bandwidth="median", ridge=DEFAULT_RIDGE, bandwidth_subsample=512, **kwargs):
        super().__init__(**kwargs)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {sorted(KERNELS)}. Received: kernel={kernel!r}")
        if not (bandwidth == "median" or (isinstance(bandwidth, (int, float)) and bandwidth > 0)):
            raise ValueError(f"bandwidth must be 'median' or a positive number. Received: bandwidth={bandwidth!r}")
        if not (isinstance(ridge, (int, float)) and ridge > 0 and math.isfinite(ridge)):
            raise ValueError(f"ridge must be a positive finite number. Received: ridge={ridge!r}")
        if not (isinstance(bandwidth_subsample, int) and bandwidth_subsample >= 2):
            raise ValueError(
                f"bandwidth_subsample must be an integer >= 2. Received: bandwidth_subsample={bandwidth_subsample!r}")
        self.kernel_name = kernel
        self.bandwidth_rule = bandwidth
        self.bandwidth_subsample = bandwidth_subsample
        self.initial_ridge = float(ridge)
        initial_bandwidth = 1. if bandwidth == "median" else float(bandwidth)
        self.log_bandwidth = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(initial_bandwidth)),
            trainable=False, name="log_bandwidth")
        self.log_ridge = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(ridge)), trainable=False, name="log_ridge")
        self.jitter = self.add_weight(shape=(), initializer="zeros", trainable=False, name="jitter")
        self.built = True

    @property
    def bandwidth(self):
        """Scalar `Tensor`: the kernel length scale used by the last call (or the fixed one)."""
        return tf.exp(self.log_bandwidth)

    @property
    def ridge(self):
        """Scalar `Tensor`: the regulariser `lam`."""
        return tf.exp(self.log_ridge)

    def call(self, sleep_x, query_x):
        sleep_x = tf.convert_to_tensor(sleep_x, self.compute_dtype)
        query_x = tf.convert_to_tensor(query_x, self.compute_dtype)
        _check_features(sleep_x, query_x)
        if self.bandwidth_rule == "median":
            self.log_bandwidth.assign(tf.math.log(median_bandwidth(sleep_x, self.bandwidth_subsample)))
        kernel = KERNELS[self.kernel_name](length_scale=tf.exp(tf.cast(self.log_bandwidth, self.compute_dtype)))
        weights, jitter = ridge_weights(kernel, sleep_x, query_x, tf.exp(tf.cast(self.log_ridge, self.compute_dtype)))
        self.jitter.assign(tf.cast(jitter, self.jitter.dtype))
        return weights

    def compute_output_shape(self, sleep_x_shape, query_x_shape):
        return (query_x_shape[0], sleep_x_shape[0])

    def get_config(self):
        return {
            **super().get_config(),
            "kernel": self.kernel_name,
            "bandwidth": self.bandwidth_rule,
            "ridge": self.initial_ridge,
            "bandwidth_subsample": self.bandwidth_subsample,
        }


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
