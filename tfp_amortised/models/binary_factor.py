"""A factor model with non-negative bounded latents and binary observations, for reconstruction and denoising."""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root

_EPSILON = 1e-6  # latents are clipped to [eps, 1 - eps] before the logit, so a draw of exactly 0 stays finite


@keras.saving.register_keras_serializable(package="tfp_amortised")
class BinaryFactorModel(GenerativeModel):
    """Uniform latents in `(0, 1)` mixed through a logistic link into independent binary pixels.

    Generative process, with `z: [num_factors]` and `x: [data_dim]` in `{0, 1}`:

        z_k ~ U(0, 1)                                                  k = 1..K
        x_d | z ~ Bernoulli(sigmoid(sum_k W_dk logit(z_k) + b_d))      d = 1..D

    `logit(z_k)` is standard logistic, so each factor pushes its pixels on or off; the latents are bounded
    and non-negative, and the posterior has no convenient reparameterisation. With no encoder, the trained
    model reconstructs and denoises by posterior expectations from the sleep regression (Wenliang,
    Moskovitz, Kanagawa, Sahani, "Amortised Learning by Wake-Sleep", ICML 2020, downstream tasks):
    `E[sigmoid(logits(z)) | x]` (`AmortisedLearner.posterior_expectation` with `pixel_probabilities`) or
    `decode(E[z | x])`. Nodes: `z` (latent), `x` (observed, float 0/1). `W` is unconstrained here; the
    authors' public code for their factor-model experiment keeps `W >= 0` with a Gamma prior on it.

    Args:
      num_factors: `K`.
      data_dim: `D`.
      seed: seed of the initialiser of `W` (normal, standard deviation 1).

    #### Examples

    ```python
    clean, _ = bars(2000, image_size=5, seed=0)
    x = flip_pixels(clean, 0.1, seed=1)  # noisy training images: the model learns the flip rate too
    model = BinaryFactorModel(10, 25, seed=0)
    learner = AmortisedLearner(model, num_sleep=1000, form="conditional", seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(3e-2))
    learner.fit(x, batch_size=100, epochs=15)
    denoised = learner.posterior_expectation(x[:100], lambda s: model.pixel_probabilities(s["z"])) > 0.5
    ```
    """

    def __init__(self, num_factors, data_dim, seed=None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("num_factors", num_factors), ("data_dim", data_dim)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        self.num_factors, self.data_dim, self.seed = num_factors, data_dim, seed
        self.loading = self.add_weight(
            shape=(data_dim, num_factors), initializer=keras.initializers.RandomNormal(stddev=1., seed=seed),
            name="loading")
        self.bias = self.add_weight(shape=(data_dim,), initializer="zeros", name="bias")

    def logits(self, z):
        """Pixel logits `W logit(z) + b`: `Tensor[*batch, num_factors] -> Tensor[*batch, data_dim]`."""
        z = tf.clip_by_value(tf.convert_to_tensor(z, self.compute_dtype), _EPSILON, 1. - _EPSILON)
        return tf.linalg.matvec(self.loading, tf.math.log(z) - tf.math.log1p(-z)) + self.bias

    def pixel_probabilities(self, z):
        """`p(x_d = 1 | z) = sigmoid(logits(z))`: `Tensor[*batch, num_factors] -> Tensor[*batch, data_dim]`."""
        return tf.sigmoid(self.logits(z))

    def joint_distribution(self):
        def model():
            z = yield Root(tfd.Independent(tfd.Uniform(tf.zeros(self.num_factors), 1.), 1, name="z"))
            yield tfd.Independent(tfd.Bernoulli(logits=self.logits(z), dtype=tf.float32), 1, name="x")

        return tfd.JointDistributionCoroutine(model)

    def get_config(self):
        return {**super().get_config(), "num_factors": self.num_factors, "data_dim": self.data_dim,
                "seed": self.seed}


def bars(num, image_size=5, seed=0, probability=0.2):
    """A seeded data set of binary "bars" images: the union of randomly chosen rows and columns.

    Each of the `2 S` bars (the `S` rows and `S` columns of an `S x S` image) is on independently with
    `probability`; a pixel is 1 when its row or its column is on.

    Args:
      num: number of images.
      image_size: side `S`.
      seed: integer seed (stateless).
      probability: probability that a bar is on.

    Returns:
      images: `float32[num, S * S]` in `{0, 1}` (flattened row by row).
      factors: `float32[num, 2 S]`, the bars that are on (rows first).
    """
    factors = tf.cast(tf.random.stateless_uniform([num, 2 * image_size], [seed, 0]) < probability, tf.float32)
    rows, columns = factors[:, :image_size, None], factors[:, None, image_size:]
    images = tf.maximum(rows, columns)
    return tf.reshape(images, [num, image_size * image_size]), factors


def flip_pixels(images, rate, seed):
    """Binary noise: each pixel of `images: [M, D]` in `{0, 1}` is flipped with probability `rate`."""
    images = tf.convert_to_tensor(images, tf.float32)
    flip = tf.cast(tf.random.stateless_uniform(tf.shape(images), [seed, 1]) < rate, tf.float32)
    return tf.abs(images - flip)
