"""Helpers shared by the gradient tests: per-point gradients flattened over all parameters."""

import tensorflow as tf


def per_point_gradients(fn, variables):
    """Jacobian of `fn() -> Tensor[M]` with respect to `variables`, as `Tensor[M, num_parameters]`."""
    with tf.GradientTape() as tape:
        values = fn()
    jacobians = tape.jacobian(values, variables)
    num_points = values.shape[0]
    return tf.concat([tf.reshape(j, [num_points, -1]) for j in jacobians], axis=1)


def median_relative_error(estimate, exact):
    """Median over points of `||estimate_m - exact_m|| / ||exact_m||`; both `Tensor[M, P]`."""
    relative = tf.norm(estimate - exact, axis=1) / tf.norm(exact, axis=1)
    return float(tf.reduce_mean(tf.sort(relative)[relative.shape[0] // 2 - 1: relative.shape[0] // 2 + 1]))
