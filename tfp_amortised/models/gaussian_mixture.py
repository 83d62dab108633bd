"""A mixture of isotropic Gaussians: a discrete latent with an exact log-likelihood by logsumexp."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root


@keras.saving.register_keras_serializable(package="tfp_amortised")
class GaussianMixtureModel(GenerativeModel):
    """Mixture of `num_components` Gaussians with a shared isotropic scale.

    Generative process, with `z` in `{0, ..., K-1}` and `x: [data_dim]`:

        z ~ Categorical(softmax(logits))
        x | z ~ N(mu_z, sigma^2 I),      sigma = softplus(raw_scale)

    `log p(x) = logsumexp_k [log pi_k + log N(x; mu_k, sigma^2 I)]` exactly (`log_marginal`). Nodes: `z`
    (latent, discrete), `x` (observed).

    Args:
      num_components: `K`.
      data_dim: size of `x`.
      scale: initial (and, with `learn_scale=False`, fixed) `sigma`.
      learn_scale: whether `sigma` is trained.
      seed: seed of the initialiser of the means (standard normal).
    """

    def __init__(self, num_components, data_dim, scale=1., learn_scale=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_components, self.data_dim = num_components, data_dim
        self.initial_scale, self.learn_scale, self.seed = scale, learn_scale, seed
        self.logits = self.add_weight(shape=(num_components,), initializer="zeros", name="logits")
        self.means = self.add_weight(
            shape=(num_components, data_dim), initializer=keras.initializers.RandomNormal(seed=seed), name="means")
        self.raw_scale = self.add_positive_weight("raw_scale", scale, trainable=learn_scale)

    @property
    def scale(self):
        """Scalar `Tensor`: the component standard deviation `sigma`."""
        return tf.nn.softplus(self.raw_scale)

    def joint_distribution(self):
        logits, means, scale = self.logits.value, self.means.value, self.scale

        def model():
            z = yield Root(tfd.Categorical(logits=logits, name="z"))
            yield tfd.Independent(tfd.Normal(tf.gather(means, z), scale), 1, name="x")

        return tfd.JointDistributionCoroutine(model)

    def marginal(self):
        """The exact marginal as a `tfd.MixtureSameFamily`."""
        return tfd.MixtureSameFamily(
            tfd.Categorical(logits=self.logits), tfd.Independent(tfd.Normal(self.means, self.scale), 1))

    def log_marginal(self, x):
        """Exact `log p(x)` by logsumexp over components: `Tensor[M, data_dim] -> Tensor[M]`."""
        return self.marginal().log_prob(x)

    def get_config(self):
        return {**super().get_config(), "num_components": self.num_components, "data_dim": self.data_dim,
                "scale": self.initial_scale, "learn_scale": self.learn_scale, "seed": self.seed}
