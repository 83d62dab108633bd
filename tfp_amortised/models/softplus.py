"""A two-latent softplus-Gaussian model whose log-likelihood and its gradient are exact by quadrature."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root

LATENT_DIM = 2


def _hermite_grid(degree):
    """Tensor-product Gauss-Hermite rule for `E_{z ~ N(0, I_2)}[f(z)]`.

    Args:
      degree: number of nodes per dimension.

    Returns:
      nodes: `np.ndarray[Q, 2]` and log weights `np.ndarray[Q]` (the weights sum to 1), `Q <= degree^2`;
      nodes whose weight underflows to 0 in float64 are dropped.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(degree)
    keep = weights > 0.
    nodes, log_weights = nodes[keep], np.log(weights[keep] / np.sqrt(2. * np.pi))
    grid = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), axis=-1).reshape(-1, LATENT_DIM)
    return grid, (log_weights[:, None] + log_weights[None, :]).reshape(-1)


@keras.saving.register_keras_serializable(package="tfp_amortised")
class SoftplusGaussianModel(GenerativeModel):
    """Two Gaussian latents seen through a softplus: a model for testing estimates of `grad log p(x)`.

    It follows this project's specification of the paper's gradient-estimation experiment (Wenliang et al.,
    2020); we could not check its exact form against the paper's text.

    Generative process, with `z: [2]` and `x: [1]`:

        z ~ N(0, I_2)
        x | z ~ N(softplus(b . z) - ||b||^2, sigma_x^2),      sigma_x = softplus(raw_noise_scale)

    The posterior `p(z | x)` is non-Gaussian (the softplus folds the half-line `b . z < 0` onto a small range
    of `x`), so ELBO gradients are biased, while `log p(x)` is a two-dimensional integral that Gauss-Hermite
    quadrature computes to near machine precision (`log_marginal`), differentiably in `b` and `sigma_x`:
    ground truth for `grad_b log p(x)`. Nodes: `z` (latent), `x` (observed).

    Args:
      loading: initial `b`, a pair of floats.
      noise_scale: initial `sigma_x > 0`.
      quadrature_degree: Gauss-Hermite nodes per latent dimension (`degree^2` nodes in all). The rule is
        accurate while the posterior is wide compared with the node spacing near 0 (about
        `pi / sqrt(2 degree)`): with the default 96, `log p(x)` agrees with a dense one-dimensional integral to
        float32 precision (~1e-6) for `||b|| <= 2.1` and `sigma_x >= 0.25 ||b||`; use more nodes below that.

    #### References

    [1] Li K. Wenliang, Theodore Moskovitz, Heishiro Kanagawa, Maneesh Sahani. Amortised Learning by
        Wake-Sleep. ICML 2020 (its log-likelihood gradient estimation experiment motivates this model).
    """

    def __init__(self, loading=(1., 1.), noise_scale=1., quadrature_degree=96, **kwargs):
        super().__init__(**kwargs)
        loading = tuple(float(value) for value in loading)
        if len(loading) != LATENT_DIM:
            raise ValueError(f"loading must be a pair of floats. Received: loading={loading!r}")
        if not noise_scale > 0:
            raise ValueError(f"noise_scale must be positive. Received: noise_scale={noise_scale!r}")
        if not (isinstance(quadrature_degree, int) and quadrature_degree >= 2):
            raise ValueError(
                f"quadrature_degree must be an integer >= 2. Received: quadrature_degree={quadrature_degree!r}")
        self.initial_loading, self.initial_noise_scale = loading, float(noise_scale)
        self.quadrature_degree = quadrature_degree
        self.loading = self.add_weight(
            shape=(LATENT_DIM,), initializer=keras.initializers.Constant(loading), name="loading")
        self.raw_noise_scale = self.add_positive_weight("raw_noise_scale", noise_scale)
        nodes, log_weights = _hermite_grid(quadrature_degree)
        self._nodes = tf.constant(nodes, self.compute_dtype)  # [Q, 2]
        self._log_weights = tf.constant(log_weights, self.compute_dtype)  # [Q]

    @property
    def noise_scale(self):
        """Scalar `Tensor`: `sigma_x`."""
        return tf.nn.softplus(self.raw_noise_scale)

    def mean(self, z):
        """`E[x | z] = softplus(b . z) - ||b||^2`: `Tensor[..., 2] -> Tensor[..., 1]`."""
        loading = self.loading.value
        projection = tf.reduce_sum(z * loading, axis=-1, keepdims=True)
        return tf.nn.softplus(projection) - tf.reduce_sum(loading**2)

    def joint_distribution(self):
        noise_scale = self.noise_scale

        def model():
            z = yield Root(tfd.Sample(tfd.Normal(0., 1.), LATENT_DIM, name="z"))
            yield tfd.Independent(tfd.Normal(self.mean(z), noise_scale), 1, name="x")

        return tfd.JointDistributionCoroutine(model)

    def log_marginal(self, x):
        """Exact `log p(x)` by Gauss-Hermite quadrature: `Tensor[..., 1] -> Tensor[...]`, differentiable."""
        return tf.reduce_logsumexp(self._log_weighted_likelihood(x), axis=-1)

    def posterior_moments(self, x):
        """Posterior mean and covariance of `z` by quadrature.

        Args:
          x: `Tensor[..., 1]`.

        Returns:
          mean `Tensor[..., 2]` and covariance `Tensor[..., 2, 2]` of `p(z | x)`.
        """
        weights = tf.nn.softmax(self._log_weighted_likelihood(x), axis=-1)  # [..., Q]
        mean = tf.linalg.matvec(self._nodes, weights, transpose_a=True)
        second = tf.einsum("...q,qi,qj->...ij", weights, self._nodes, self._nodes)
        return mean, second - mean[..., :, None] * mean[..., None, :]

    def _log_weighted_likelihood(self, x):
        """`log w_q + log p(x | z_q)` at every quadrature node: `Tensor[..., 1] -> Tensor[..., Q]`."""
        x = tf.convert_to_tensor(x, self.compute_dtype)
        likelihood = tfd.Independent(tfd.Normal(self.mean(self._nodes), self.noise_scale), 1)  # batch [Q]
        return self._log_weights + likelihood.log_prob(x[..., tf.newaxis, :])

    def get_config(self):
        return {**super().get_config(), "loading": self.initial_loading, "noise_scale": self.initial_noise_scale,
                "quadrature_degree": self.quadrature_degree}
