"""A one-layer sigmoid belief network: binary latents and observations, exact log-likelihood by enumeration."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root

MAX_ENUMERATED_LATENT_DIM = 16  # 2^16 = 65,536 latent configurations
_CHUNK_LATENT_DIM = 12  # log_marginal enumerates the configurations 2^12 = 4,096 at a time


@keras.saving.register_keras_serializable(package="tfp_amortised")
class SigmoidBeliefNetworkModel(GenerativeModel):
    """Sigmoid belief network (Neal, 1992) with one layer of independent binary latents.

    Generative process, with `h: {0, 1}^L` and `x: {0, 1}^D`:

        h_l ~ Bernoulli(sigmoid(b_l))                  l = 1..L, independently
        x_d | h ~ Bernoulli(sigmoid((W h + c)_d))      d = 1..D, independently

    with `b = latent_logits: [L]`, `W = loading: [D, L]` and `c = bias: [D]`. Nodes: `z` (latent `h`, float
    0/1 in the layer's compute dtype, float32 by default, event shape `[latent_dim]`), `x` (observed, float
    0/1, event shape `[data_dim]`); both broadcast over any leading batch dimensions.

    The posterior over `h` does not factorise, but `log p(x) = logsumexp_h [log p(h) + log p(x | h)]` is exact
    by enumerating all `2^L` latent configurations (`log_marginal`): cost O(2^L D M) time for `M`
    observations, in chunks of `2^12` configurations (memory O(2^12 M)), so `latent_dim <= 16` there.

    Args:
      latent_dim: `L`.
      data_dim: `D`.
      seed: seed of the initialiser of `W` (normal, standard deviation 1); `b` and `c` start at 0.

    #### References

    [1] Radford M. Neal. Connectionist learning of belief networks. Artificial Intelligence 56, 1992.
    """

    def __init__(self, latent_dim=8, data_dim=20, seed=None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("latent_dim", latent_dim), ("data_dim", data_dim)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        self.latent_dim, self.data_dim, self.seed = latent_dim, data_dim, seed
        self.latent_logits = self.add_weight(shape=(latent_dim,), initializer="zeros", name="latent_logits")
        self.loading = self.add_weight(
            shape=(data_dim, latent_dim), initializer=keras.initializers.RandomNormal(stddev=1., seed=seed),
            name="loading")
        self.bias = self.add_weight(shape=(data_dim,), initializer="zeros", name="bias")

    def logits(self, h):
        """Observation logits `W h + c`: `Tensor[..., latent_dim] -> Tensor[..., data_dim]`."""
        return tf.linalg.matvec(self.loading.value, tf.convert_to_tensor(h, self.compute_dtype)) + self.bias.value

    def joint_distribution(self):
        latent_logits = self.latent_logits.value

        def model():
            h = yield Root(tfd.Independent(tfd.Bernoulli(logits=latent_logits, dtype=self.compute_dtype), 1,
                                           name="z"))
            yield tfd.Independent(tfd.Bernoulli(logits=self.logits(h), dtype=self.compute_dtype), 1, name="x")

        return tfd.JointDistributionCoroutine(model)

    def log_marginal(self, x):
        """Exact `log p(x)` by enumerating the `2^latent_dim` latent configurations.

        Cost O(2^L D M) for `M` observations; raises a ValueError for `latent_dim > 16`.

        Args:
          x: `Tensor[..., data_dim]` of 0/1 values.

        Returns:
          `Tensor[...]`.
        """
        if self.latent_dim > MAX_ENUMERATED_LATENT_DIM:
            raise ValueError(
                f"log_marginal enumerates all 2^latent_dim latent configurations, which is infeasible for "
                f"latent_dim > {MAX_ENUMERATED_LATENT_DIM}. Received: latent_dim={self.latent_dim}")
        x = tf.convert_to_tensor(x, self.compute_dtype)
        configurations = (np.arange(2**self.latent_dim)[:, None] >> np.arange(self.latent_dim)) & 1  # [2^L, L]
        chunk = 2**_CHUNK_LATENT_DIM
        prior = tfd.Independent(tfd.Bernoulli(logits=self.latent_logits.value, dtype=self.compute_dtype), 1)
        chunk_log_marginals = []
        for start in range(0, len(configurations), chunk):
            h = tf.constant(configurations[start:start + chunk], self.compute_dtype)  # [C, L]
            logits = self.logits(h)  # [C, D]
            # log p(x | h) = sum_d [x_d a_d + log sigmoid(-a_d)] for logits a: one matmul for all x and h.
            log_likelihood = tf.tensordot(x, logits, [[-1], [-1]]) + tf.reduce_sum(tf.math.log_sigmoid(-logits), -1)
            chunk_log_marginals.append(tf.reduce_logsumexp(prior.log_prob(h) + log_likelihood, axis=-1))
        return tf.reduce_logsumexp(tf.stack(chunk_log_marginals, axis=-1), axis=-1)

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "data_dim": self.data_dim, "seed": self.seed}
