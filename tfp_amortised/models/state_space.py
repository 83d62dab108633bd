"""A latent AR(1) series seen in Gaussian noise: a linear-Gaussian state-space model with an exact Kalman filter."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root


@keras.saving.register_keras_serializable(package="tfp_amortised")
class AutoregressiveStateSpaceModel(GenerativeModel):
    """Stationary AR(1) latent series observed through a scalar gain in Gaussian noise.

    Generative process, with `z: [T]` and `x: [T]`, `T = num_steps`:

        z_1 ~ N(0, q^2 / (1 - a^2))                   (the stationary distribution)
        z_t = a z_{t-1} + q e_t,      e_t ~ N(0, 1)   t = 2..T
        x_t = c z_t + r u_t,          u_t ~ N(0, 1)   t = 1..T

    with `a = tanh(raw_ar_coefficient)` in `(-1, 1)`, `c = loading` real, `q = softplus(raw_transition_scale)`
    and `r = softplus(raw_observation_scale)`. Nodes: `z` (latent, event shape `[num_steps]`), `x` (observed,
    event shape `[num_steps]`); both broadcast over any leading batch dimensions.

    The latent series is one multivariate normal `N(0, L L^T)` whose lower-triangular scale is the AR(1)
    recursion unrolled, `L[t, s] = q a^(t - s)` for `s <= t` (times `1 / sqrt(1 - a^2)` in the first column),
    so sampling and its log density are batched matrix products, O(T^2) per draw, with no loop over `t`.
    `p(x) = N(0, c^2 Sigma_z + r^2 I)` with `Sigma_z[s, t] = q^2 a^|s - t| / (1 - a^2)`; `log_marginal` computes
    it exactly by the Kalman filter (`tfd.LinearGaussianStateSpaceModel`), O(T) per observation.

    Args:
      num_steps: `T`.
      ar_coefficient: initial `a`, in `(-1, 1)`.
      loading: initial `c`.
      transition_scale: initial `q > 0`.
      observation_scale: initial `r > 0`.

    No argument is random: every parameter starts at its given value.
    """

    def __init__(self, num_steps=50, ar_coefficient=0.5, loading=1., transition_scale=1., observation_scale=1.,
                 **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps must be a positive integer. Received: num_steps={num_steps!r}")
        if not -1. < ar_coefficient < 1.:
            raise ValueError(f"ar_coefficient must be in (-1, 1). Received: ar_coefficient={ar_coefficient!r}")
        for name, value in (("transition_scale", transition_scale), ("observation_scale", observation_scale)):
            if not value > 0.:
                raise ValueError(f"{name} must be positive. Received: {name}={value!r}")
        self.num_steps = num_steps
        self.initial_values = {"ar_coefficient": float(ar_coefficient), "loading": float(loading),
                               "transition_scale": float(transition_scale),
                               "observation_scale": float(observation_scale)}
        self.raw_ar_coefficient = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(float(np.arctanh(ar_coefficient))),
            name="raw_ar_coefficient")
        self.loading = self.add_weight(shape=(), initializer=keras.initializers.Constant(float(loading)),
                                       name="loading")
        self.raw_transition_scale = self.add_positive_weight("raw_transition_scale", transition_scale)
        self.raw_observation_scale = self.add_positive_weight("raw_observation_scale", observation_scale)

    @property
    def ar_coefficient(self):
        """Scalar `Tensor`: `a = tanh(raw_ar_coefficient)`."""
        return tf.tanh(self.raw_ar_coefficient.value)

    @property
    def transition_scale(self):
        """Scalar `Tensor`: `q = softplus(raw_transition_scale)`."""
        return tf.nn.softplus(self.raw_transition_scale.value)

    @property
    def observation_scale(self):
        """Scalar `Tensor`: `r = softplus(raw_observation_scale)`."""
        return tf.nn.softplus(self.raw_observation_scale.value)

    def latent_scale_tril(self):
        """`Tensor[num_steps, num_steps]`: the lower-triangular `L` with `z = L eps`, `eps ~ N(0, I)`."""
        a, q = self.ar_coefficient, self.transition_scale
        steps = np.arange(self.num_steps)
        lag = steps[:, None] - steps[None, :]  # t - s
        # a^(t - s) below the diagonal, with the exponent 0 replaced by a constant 1: the gradient of a^0 is
        # 0 * a^-1, NaN at a = 0.
        powers = tf.pow(a, tf.constant(np.maximum(lag, 1), a.dtype))
        powers = tf.where(tf.constant(lag > 0), powers, tf.constant(np.eye(self.num_steps), a.dtype))
        first_column = tf.concat([[tf.math.rsqrt(1. - a**2)], tf.ones([self.num_steps - 1], a.dtype)], axis=0)
        return q * powers * first_column

    def joint_distribution(self):
        scale_tril, loading, observation_scale = self.latent_scale_tril(), self.loading.value, self.observation_scale

        def model():
            z = yield Root(tfd.MultivariateNormalTriL(tf.zeros(self.num_steps, scale_tril.dtype), scale_tril,
                                                      name="z"))
            yield tfd.Independent(tfd.Normal(loading * z, observation_scale), 1, name="x")

        return tfd.JointDistributionCoroutine(model)

    def marginal(self):
        """The exact marginal of `x` as a `tfd.LinearGaussianStateSpaceModel` over `[num_steps, 1]` (Kalman filter)."""
        a, q, r = self.ar_coefficient, self.transition_scale, self.observation_scale
        return tfd.LinearGaussianStateSpaceModel(
            num_timesteps=self.num_steps,
            transition_matrix=tf.reshape(a, [1, 1]),
            transition_noise=tfd.MultivariateNormalDiag(scale_diag=tf.reshape(q, [1])),
            observation_matrix=tf.reshape(self.loading.value, [1, 1]),
            observation_noise=tfd.MultivariateNormalDiag(scale_diag=tf.reshape(r, [1])),
            initial_state_prior=tfd.MultivariateNormalDiag(scale_diag=tf.reshape(q * tf.math.rsqrt(1. - a**2), [1])))

    def log_marginal(self, x):
        """Exact `log p(x)` by the Kalman filter, O(T) per observation: `Tensor[..., num_steps] -> Tensor[...]`."""
        x = tf.convert_to_tensor(x, self.compute_dtype)
        return self.marginal().log_prob(x[..., tf.newaxis])

    def get_config(self):
        return {**super().get_config(), "num_steps": self.num_steps, **self.initial_values}
