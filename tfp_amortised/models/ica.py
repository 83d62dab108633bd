"""Noisy independent component analysis: heavy-tailed sources mixed linearly, identifiable up to sign and order."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root

SOURCES = ("laplace", "student_t")


def amari_index(estimate, truth):
    """Amari distance between two mixing matrices: 0 iff `estimate = truth P D` (P a permutation, D diagonal).

    Args:
      estimate: `array[D, K]` mixing matrix.
      truth: `array[D, K]` mixing matrix of full column rank.

    Returns:
      float in `[0, 1]`: `(sum_i (sum_j |c_ij| / max_j |c_ij| - 1) + sum_j (sum_i |c_ij| / max_i |c_ij| - 1))
      / (2 K (K - 1))` with `C = pinv(truth) @ estimate`.
    """
    c = np.abs(np.linalg.pinv(np.asarray(truth, np.float64)) @ np.asarray(estimate, np.float64))
    size = c.shape[0]
    rows = np.sum(c.sum(1) / c.max(1) - 1.)
    columns = np.sum(c.sum(0) / c.max(0) - 1.)
    return float((rows + columns) / (2. * size * (size - 1)))


@keras.saving.register_keras_serializable(package="tfp_amortised")
class IndependentComponentsModel(GenerativeModel):
    """Independent component analysis with observation noise (heavy-tailed sources, linear mixing).

    Generative process, with sources `s: [num_sources]` and observations `x: [data_dim]`:

        s_k ~ Laplace(0, 1)   or   s_k ~ StudentT(df, 0, 1),     k = 1..K, independently
        x | s ~ N(A s, sigma^2 I),                                sigma = softplus(raw_noise_scale)

    Non-Gaussian sources make `A` identifiable up to the order and signs of its columns (`amari_index`
    measures recovery). The posterior `p(s | x)` is non-Gaussian and, for Student-t sources, multimodal along
    each source axis; amortised learning (Wenliang et al., 2020) needs none of its structure, only samples of
    the model and `grad log p(s, x)`. `log p(x)` has no closed form here. Nodes: `s` (latent), `x` (observed).

    Args:
      num_sources: `K`.
      data_dim: `D >= K`.
      source: `"laplace"` (default) or `"student_t"`.
      df: degrees of freedom of Student-t sources.
      noise_scale: initial `sigma > 0`.
      seed: seed of the initialiser of `A` (standard normal).

    #### References

    [1] Li K. Wenliang, Theodore Moskovitz, Heishiro Kanagawa, Maneesh Sahani. Amortised Learning by
        Wake-Sleep. ICML 2020.
    [2] Aapo Hyvarinen, Erkki Oja. Independent component analysis: algorithms and applications. Neural
        Networks, 13(4-5):411-430, 2000.
    """

    def __init__(self, num_sources, data_dim, source="laplace", df=3., noise_scale=0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(num_sources, int) and isinstance(data_dim, int) and 1 <= num_sources <= data_dim):
            raise ValueError("num_sources and data_dim must be integers with 1 <= num_sources <= data_dim. "
                             f"Received: num_sources={num_sources!r}, data_dim={data_dim!r}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}. Received: source={source!r}")
        for name, value in (("df", df), ("noise_scale", noise_scale)):
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive finite number. Received: {name}={value!r}")
        self.num_sources, self.data_dim, self.source, self.df = num_sources, data_dim, source, float(df)
        self.initial_noise_scale, self.seed = float(noise_scale), seed
        self.mixing = self.add_weight(
            shape=(data_dim, num_sources), initializer=keras.initializers.RandomNormal(seed=seed), name="mixing")
        self.raw_noise_scale = self.add_positive_weight("raw_noise_scale", noise_scale)

    @property
    def noise_scale(self):
        """Scalar `Tensor`: the observation noise standard deviation `sigma`."""
        return tf.nn.softplus(self.raw_noise_scale.value)

    def source_distribution(self):
        """The distribution of one source, `Laplace(0, 1)` or `StudentT(df, 0, 1)`."""
        if self.source == "laplace":
            return tfd.Laplace(0., 1.)
        return tfd.StudentT(self.df, 0., 1.)

    def joint_distribution(self):
        mixing, noise_scale = self.mixing.value, self.noise_scale

        def model():
            s = yield Root(tfd.Sample(self.source_distribution(), self.num_sources, name="s"))
            yield tfd.Independent(tfd.Normal(tf.linalg.matvec(mixing, s), noise_scale), 1, name="x")

        return tfd.JointDistributionCoroutine(model)

    def get_config(self):
        return {**super().get_config(), "num_sources": self.num_sources, "data_dim": self.data_dim,
                "source": self.source, "df": self.df, "noise_scale": self.initial_noise_scale, "seed": self.seed}
