"""A mixture of independent Bernoulli vectors: binary observations with an exact log-likelihood by logsumexp."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root


@keras.saving.register_keras_serializable(package="tfp_amortised")
class BernoulliMixtureModel(GenerativeModel):
    """Mixture of `num_components` product-Bernoulli distributions over binary vectors.

    Generative process, with `z` in `{0, ..., K-1}` and `x` in `{0, 1}^D`:

        z ~ Categorical(softmax(logits))
        x_d | z ~ Bernoulli(sigmoid(pixel_logits[z, d]))      d = 1..D, independently

    Nodes: `z` (latent, int32, event shape `[]`), `x` (observed, float 0/1 in the layer's compute dtype,
    float32 by default, event shape `[data_dim]`). Both nodes broadcast over any leading batch dimensions.
    `x` takes only `2^D` distinct values, so the sleep regression sees every observation many times.

    `log p(x) = logsumexp_k [log softmax(logits)_k + sum_d log Bernoulli(x_d; sigmoid(pixel_logits[k, d]))]`
    is exact (`log_marginal`), at cost O(K D) per observation.

    Args:
      num_components: `K`.
      data_dim: `D`.
      seed: seed of the initialiser of `pixel_logits` (normal, standard deviation 1); `logits` start at 0.
    """

    def __init__(self, num_components=3, data_dim=6, seed=None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("num_components", num_components), ("data_dim", data_dim)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        self.num_components, self.data_dim, self.seed = num_components, data_dim, seed
        self.logits = self.add_weight(shape=(num_components,), initializer="zeros", name="logits")
        self.pixel_logits = self.add_weight(
            shape=(num_components, data_dim), initializer=keras.initializers.RandomNormal(stddev=1., seed=seed),
            name="pixel_logits")

    def joint_distribution(self):
        logits, pixel_logits = self.logits.value, self.pixel_logits.value

        def model():
            z = yield Root(tfd.Categorical(logits=logits, name="z"))
            yield tfd.Independent(
                tfd.Bernoulli(logits=tf.gather(pixel_logits, z), dtype=self.compute_dtype), 1, name="x")

        return tfd.JointDistributionCoroutine(model)

    def log_marginal(self, x):
        """Exact `log p(x)` by logsumexp over the components: `Tensor[..., data_dim] -> Tensor[...]`."""
        x = tf.convert_to_tensor(x, self.compute_dtype)
        pixels = tfd.Independent(tfd.Bernoulli(logits=self.pixel_logits.value, dtype=self.compute_dtype), 1)
        log_likelihood = pixels.log_prob(x[..., tf.newaxis, :])  # [..., K]
        return tf.reduce_logsumexp(tf.nn.log_softmax(self.logits.value) + log_likelihood, axis=-1)

    def get_config(self):
        return {**super().get_config(), "num_components": self.num_components, "data_dim": self.data_dim,
                "seed": self.seed}
