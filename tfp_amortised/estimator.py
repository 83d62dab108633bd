"""The amortised gradient estimator: sleep, regress, weight the log-joint (Wenliang et al., 2020).

`surrogate_log_marginal` returns, for each wake observation `x_m`, a scalar `s_m` whose gradient with respect
to the model parameters estimates `grad_theta log p_theta(x_m) = E_{p(z | x_m)}[grad_theta log p_theta(z, x_m)]`:

    joint form:        s_m = sum_n alpha_n(x_m) log p_theta(z_n, x_n)
    conditional form:  s_m = sum_n alpha_n(x_m) log p_theta(z_n, x_m)
                           = sum_n alpha_n(x_m) [log p_theta(x_m | z_n) + log p_theta(z_n)]

where `(z_n, x_n) ~ p_theta` are detached sleep samples and `alpha` are kernel ridge weights (held constant).
The joint form regresses the gradient of the log-joint on `x`; the conditional form regresses functions of
`z` only (the paper's natural-parameter regression for exponential-family likelihoods), which removes the
observation noise from the target and is usually the more accurate of the two, at M x N likelihood terms.
"""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import _joint
from tfp_amortised.ridge import kernel_ridge_weights

FORMS = ("joint", "conditional")


def sleep(joint, num_sleep, seed):
    """Draws `num_sleep` detached samples `(z_n, x_n) ~ p_theta` (the sleep phase).

    Args:
      joint: a `tfd.JointDistribution` with scalar batch shape, or a zero-argument callable returning one.
      num_sleep: the number `N` of samples: a Python int >= 2, or a scalar integer Tensor (not checked).
      seed: a stateless seed (`int32[2]` Tensor or pair of ints).

    Returns:
      dict `{node name: Tensor[N, *event_shape]}`, with gradients stopped.
    """
    joint = _joint.resolve_joint(joint)
    if not (tf.is_tensor(num_sleep) and num_sleep.dtype.is_integer and num_sleep.shape.rank == 0):
        _check_num_sleep(num_sleep)
    seed = tfp.random.sanitize_seed(tf.cast(seed, tf.int32) if tf.is_tensor(seed) else seed)  # Keras seeds are int64
    return _joint.stop_gradient(_joint.as_named(joint, joint.sample(num_sleep, seed=seed)))


def flatten_events(x, event_ndims=None):
    """Reshapes `x: [*batch, *event_shape]` (event of rank `event_ndims`) to features `[*batch, prod(event_shape)]`.

    By default (`event_ndims=None`) every axis but the first is the event: `[B, *event_shape] -> [B, D]`, the
    input `KernelRidge` takes. The feature size stays static wherever the event shape is, even when the batch
    size is unknown (a `tf.function` input, a distributed batch), since `KernelRidge` builds its weights from it.
    """
    x = tf.convert_to_tensor(x)
    event_ndims = x.shape.rank - 1 if event_ndims is None else event_ndims
    event_size = None if x.shape.rank is None else x.shape[x.shape.rank - event_ndims:].num_elements()
    batch_shape = tf.shape(x)[:tf.rank(x) - event_ndims]
    return tf.reshape(x, tf.concat([batch_shape, [-1 if event_size is None else event_size]], axis=0))


def weighted_log_joint(joint, sleep_sample, weights, wake_x, *, observed="x", form="joint", sleep_log_joint=None):
    """The surrogate `s_m` of each wake point from sleep samples and ridge weights already computed.

    Args:
      joint: the `tfd.JointDistribution` the sleep samples came from, built inside the gradient tape.
      sleep_sample: dict `{node name: Tensor[N, *event_shape]}`, detached (see `sleep`).
      weights: `Tensor[M, N]` ridge weights, treated as constants.
      wake_x: `Tensor[M, *event_shape]`, observations of the node named `observed`.
      observed: name of the observed node.
      form: `"joint"` or `"conditional"` (see module docstring).
      sleep_log_joint: optional `Tensor[N]`, `log p(z_n, x_n)` of the sleep samples when the caller has already
        computed it (inside the same tape); the joint form then reuses it instead of evaluating it again.

    Returns:
      `Tensor[M]`.
    """
    weights = tf.stop_gradient(weights)
    if form == "joint":
        log_joint = _joint.log_prob(joint, sleep_sample) if sleep_log_joint is None else sleep_log_joint  # [N]
        return tf.linalg.matvec(weights, tf.cast(log_joint, weights.dtype))
    # Conditional form: every latent draw z_n paired with every wake observation x_m, by broadcasting
    # latents as [1, N, ...] against observations as [M, 1, ...]; log p(z_n, x_m) has shape [M, N].
    paired = {name: value[tf.newaxis] for name, value in sleep_sample.items()}
    paired[observed] = tf.cast(wake_x, sleep_sample[observed].dtype)[:, tf.newaxis]
    log_joint = _joint.log_prob(joint, paired)
    log_joint = tf.broadcast_to(log_joint, tf.shape(weights))
    return tf.reduce_sum(weights * tf.cast(log_joint, weights.dtype), axis=-1)


def surrogate_log_marginal(joint, wake_x, *, num_sleep, seed, observed="x", ridge=None, form="joint"):
    """Per-observation surrogate whose parameter gradient estimates `grad log p_theta(wake_x[m])`.

    One call runs the whole estimator of Wenliang et al. (2020): draw `num_sleep` detached samples
    from the model, compute kernel ridge weights from the sleep observations to the wake observations, and
    weight the log-joint by them (module docstring, both forms). Differentiate the result inside a
    `tf.GradientTape` in which `joint` was built (`tape.jacobian` for one gradient per wake point, or the mean
    for a minibatch gradient). Its value is not `log p(x)`: only its gradient is meaningful.

    Cost: `N` (joint form) or `M N` (conditional form) log-density terms, an `N x N` Gram matrix and one
    Cholesky factorisation, O(N^3 / 3).

    Args:
      joint: a `tfd.JointDistribution` (Coroutine, Sequential or Named; batched or AutoBatched) with scalar
        batch shape, or a zero-argument callable returning one (called here, so inside the caller's tape).
      wake_x: `Tensor[M, *event_shape]` of observations of the node `observed`.
      num_sleep: Python int `N >= 2`, the number of sleep samples.
      seed: a stateless seed (`int32[2]`); the same seed gives the same estimate.
      observed: name of the observed node in `joint`.
      ridge: a `KernelRidge` layer, or None (default) for its defaults computed by pure functions: Gaussian
        kernel, median-heuristic bandwidth, `DEFAULT_RIDGE` (`kernel_ridge_weights`); None creates no Keras
        variables, so it also works inside a `tf.function` that does not own a layer.
      form: `"joint"` or `"conditional"`.

    Returns:
      `Tensor[M]`.

    #### Examples

    ```python
    with tf.GradientTape() as tape:
        surrogate = surrogate_log_marginal(model.joint_distribution, x, num_sleep=1000, seed=[0, 1])
        loss = -tf.reduce_mean(surrogate)
    grads = tape.gradient(loss, model.trainable_variables)
    ```

    #### References

    [1] Li K. Wenliang, Theodore Moskovitz, Heishiro Kanagawa, Maneesh Sahani. Amortised Learning by
        Wake-Sleep. ICML 2020.
    """
    joint = _joint.resolve_joint(joint)
    _check_form(form)
    _joint.check_observed(joint, observed)
    sleep_sample = sleep(joint, num_sleep, seed)
    wake_x = check_wake_x(wake_x, sleep_sample[observed], observed)
    weights = _weights(ridge, flatten_events(sleep_sample[observed]), flatten_events(wake_x))
    return weighted_log_joint(joint, sleep_sample, weights, wake_x, observed=observed, form=form)


def check_wake_x(wake_x, sleep_x, observed):
    """Checks wake observations against the observed node's sleep samples; returns them as a Tensor.

    Raises a ValueError (TypeError for the dtype) naming the expected shape `[M, *event_shape]` or dtype, and
    a ValueError for NaN or infinite values when running eagerly.
    """
    wake_x = tf.convert_to_tensor(wake_x)
    event_shape = sleep_x.shape[1:]
    if not (wake_x.dtype.is_floating or wake_x.dtype.is_integer or wake_x.dtype.is_bool):
        raise TypeError(
            f"wake_x must hold numbers for the observed node {observed!r} (dtype {sleep_x.dtype.name}). "
            f"Received: wake_x.dtype={wake_x.dtype.name}")
    if wake_x.shape.rank != event_shape.rank + 1 or not wake_x.shape[1:].is_compatible_with(event_shape):
        raise ValueError(
            f"wake_x must have shape [M, {', '.join(map(str, event_shape))}]: a batch of the observed node "
            f"{observed!r}, whose event shape is {event_shape}. Received: wake_x.shape={wake_x.shape}")
    if tf.executing_eagerly() and wake_x.dtype.is_floating and not tf.reduce_all(tf.math.is_finite(wake_x)):
        raise ValueError("wake_x contains NaN or infinite values.")
    return wake_x


def ridge_expectation(sleep_x, query_x, values, ridge=None):
    """Kernel ridge estimate of `E[values | x]` at each query: `sum_n alpha_n(x_m) values_n`.

    With sleep pairs `(z_n, x_n) ~ p` and `values_n = f(z_n)`, this estimates the posterior expectation
    `E[f(z) | x_m]` with no encoder (Wenliang et al., ICML 2020).

    Args:
      sleep_x: `Tensor[N, D]` flattened sleep observations (or any features of them).
      query_x: `Tensor[M, D]` the same features of the query points.
      values: `Tensor[N, ...]` one target per sleep sample.
      ridge: a `KernelRidge` layer, or None for the default kernel ridge weights (`kernel_ridge_weights`).

    Returns:
      `Tensor[M, ...]`.
    """
    weights = _weights(ridge, sleep_x, query_x)  # [M, N]
    return tf.tensordot(weights, tf.cast(values, weights.dtype), axes=1)


def _weights(ridge, sleep_x, query_x):
    """`ridge(sleep_x, query_x)`, or the default kernel ridge weights `[M, N]` when `ridge` is None."""
    if ridge is not None:
        return ridge(sleep_x, query_x)
    return kernel_ridge_weights(tf.cast(sleep_x, tf.float32), tf.cast(query_x, tf.float32))[0]


def _check_num_sleep(num_sleep):
    if not (isinstance(num_sleep, int) and num_sleep >= 2):
        raise ValueError(f"num_sleep must be an integer >= 2. Received: num_sleep={num_sleep!r}")


def _check_form(form):
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}. Received: form={form!r}")
