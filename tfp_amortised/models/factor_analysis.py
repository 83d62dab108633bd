"""Factor analysis: a linear-Gaussian model whose log-likelihood and its gradient are exact."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root


@keras.saving.register_keras_serializable(package="tfp_amortised")
class FactorAnalysisModel(GenerativeModel):
    """Factor analysis (probabilistic PCA when the noise scales are tied).

    Generative process, with `z: [latent_dim]` and `x: [data_dim]`:

        z ~ N(0, I)
        x | z ~ N(W z + b, diag(psi)),      psi = softplus(raw_noise)^2

    so that `x ~ N(b, W W^T + diag(psi))` exactly (`log_marginal`), and maximum likelihood has the closed
    form of factor analysis. Nodes: `z` (latent), `x` (observed).

    Args:
      latent_dim: size of `z`.
      data_dim: size of `x`.
      seed: seed of the weight initialisers.
    """

    def __init__(self, latent_dim, data_dim, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim, self.data_dim, self.seed = latent_dim, data_dim, seed
        self.loading = self.add_weight(
            shape=(data_dim, latent_dim), initializer=keras.initializers.RandomNormal(stddev=1., seed=seed),
            name="loading")
        self.bias = self.add_weight(shape=(data_dim,), initializer="zeros", name="bias")
        self.raw_noise = self.add_weight(
            shape=(data_dim,), initializer=keras.initializers.Constant(0.5413), name="raw_noise")  # scale 1

    @property
    def noise_scale(self):
        """`Tensor[data_dim]`: the observation noise standard deviations `sqrt(psi)`."""
        return tf.nn.softplus(self.raw_noise)

    def joint_distribution(self):
        loading, bias, noise_scale = self.loading.value, self.bias.value, self.noise_scale

        def model():
            z = yield Root(tfd.Sample(tfd.Normal(0., 1.), self.latent_dim, name="z"))
            loc = tf.linalg.matvec(loading, z) + bias
            yield tfd.Independent(tfd.Normal(loc, noise_scale), 1, name="x")

        return tfd.JointDistributionCoroutine(model)

    def marginal(self):
        """The exact marginal `p(x) = N(b, W W^T + diag(psi))`."""
        covariance = tf.matmul(self.loading, self.loading, transpose_b=True) + tf.linalg.diag(self.noise_scale**2)
        return tfd.MultivariateNormalTriL(self.bias, tf.linalg.cholesky(covariance))

    def log_marginal(self, x):
        """Exact `log p(x)`: `Tensor[M, data_dim] -> Tensor[M]`."""
        return self.marginal().log_prob(x)

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim, "data_dim": self.data_dim, "seed": self.seed}
