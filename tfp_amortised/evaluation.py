"""Checking an estimator of `grad log p(x)` against an exact gradient: per-point gradients and their error.

For a model with an exact `log_marginal`, the amortised estimate of each data point's gradient can be compared
with the exact one (Wenliang et al., ICML 2020, section 5):

    error_m = || g_hat_m - g_m || / || g_m ||,       g_m = grad_theta log p_theta(x_m) over all parameters,

summarised by the median over points, which is robust to the few points whose exact gradient is near zero.
"""

import tensorflow as tf


def per_point_gradients(fn, variables):
    """Jacobian of `fn() -> Tensor[M]` with respect to `variables`, flattened: `Tensor[M, num_parameters]`.

    Args:
      fn: a zero-argument callable returning one value per data point, `Tensor[M]` (static `M`), built from
        `variables` (it is called inside the gradient tape).
      variables: the list of variables to differentiate with respect to (e.g. `model.trainable_variables`).

    Returns:
      `Tensor[M, P]`, `P` the total number of parameters, in the order of `variables`.
    """
    with tf.GradientTape() as tape:
        values = fn()
    jacobians = tape.jacobian(values, variables)
    num_points = values.shape[0]
    return tf.concat([tf.reshape(j, [num_points, -1]) for j in jacobians], axis=1)


def median_relative_error(estimate, exact):
    """Median over points of `||estimate_m - exact_m|| / ||exact_m||`.

    Args:
      estimate: `Tensor[M, P]` estimated per-point gradients.
      exact: `Tensor[M, P]` exact per-point gradients.

    Returns:
      Python float (for an even `M`, the mean of the two middle values).
    """
    relative = tf.norm(estimate - exact, axis=1) / tf.norm(exact, axis=1)
    return float(tf.reduce_mean(tf.sort(relative)[relative.shape[0] // 2 - 1: relative.shape[0] // 2 + 1]))
