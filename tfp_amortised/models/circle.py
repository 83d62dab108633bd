"""A latent on the unit circle decoded to images: Gabor patches of every orientation (a non-Euclidean latent)."""

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel
from tfp_amortised.models._mlp import apply_over_batch, mlp

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root

_ENVELOPE_WIDTH = 0.5  # standard deviation of the Gaussian envelope, in units of the half-width of the patch
_FREQUENCY = 0.5  # cycles of the carrier per unit length (one cycle across the patch)


@keras.saving.register_keras_serializable(package="tfp_amortised")
class CircleModel(GenerativeModel):
    """An angle latent, uniform on the circle, decoded by a small MLP to a Gaussian image.

    Generative process, with `z` an angle in `[-pi, pi)` and `x: [image_size, image_size]`:

        z ~ VonMises(0, 0)                                  (uniform on the circle)
        x | z ~ N(f_w([cos z, sin z]), sigma^2 I),          sigma = softplus(raw_scale)

    where `f_w` is a Keras MLP (`tanh` hidden layers, linear output). The decoder sees `z` only through
    `(cos z, sin z)`, so the mean image is a continuous function on the circle: the latent needs no
    reparameterisation, no wrapping and no encoder, which is what amortised learning allows (Wenliang,
    Moskovitz, Kanagawa, Sahani, "Amortised Learning by Wake-Sleep", ICML 2020, latents on non-Euclidean
    spaces). Nodes: `z` (latent, scalar angle), `x` (observed image).

    `log_marginal` is the one-dimensional integral over the circle by the trapezoid rule
    (`circle_log_marginal`), exponentially accurate for the smooth periodic integrand: ground truth for
    benchmarks. `gabor_patches` makes data from the same family, with `f` a Gabor patch of orientation `z`.

    Args:
      image_size: side `S` of the square image.
      hidden_units: sizes of the decoder's hidden layers.
      scale: initial (and, with `learn_scale=False`, fixed) `sigma`.
      learn_scale: whether `sigma` is trained.
      seed: seed of the decoder's initialisers.

    #### Examples

    ```python
    x, _ = gabor_patches(2000, image_size=10, seed=0)
    model = CircleModel(10, hidden_units=(64,), scale=0.1, seed=0)
    learner = AmortisedLearner(model, num_sleep=500, form="conditional", seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(1e-2))
    learner.fit(x, batch_size=100, epochs=20)
    angle, error = match_gabor(model.decode(learner.sample(500)["z"]))  # orientations, MSE to nearest Gabor
    statistic, p_value = kuiper_test(angle)
    ```
    """

    def __init__(self, image_size=10, hidden_units=(32,), scale=0.5, learn_scale=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(image_size, int) and image_size >= 2):
            raise ValueError(f"image_size must be an integer >= 2. Received: image_size={image_size!r}")
        self.image_size, self.hidden_units = image_size, tuple(hidden_units)
        self.initial_scale, self.learn_scale, self.seed = scale, learn_scale, seed
        self.decoder = mlp(2, self.hidden_units, image_size * image_size, seed=seed)
        self.raw_scale = self.add_positive_weight("raw_scale", scale, trainable=learn_scale)

    @property
    def scale(self):
        """Scalar `Tensor`: the observation noise standard deviation `sigma`."""
        return tf.nn.softplus(self.raw_scale)

    def decode(self, z):
        """The mean image `f_w([cos z, sin z])`: `Tensor[*batch] -> Tensor[*batch, image_size, image_size]`."""
        z = tf.convert_to_tensor(z, self.compute_dtype)
        return apply_over_batch(self.decoder, tf.stack([tf.cos(z), tf.sin(z)], axis=-1),
                                (self.image_size, self.image_size))

    def joint_distribution(self):
        scale = self.scale

        def model():
            z = yield Root(tfd.VonMises(0., 0., name="z"))
            yield tfd.Independent(tfd.Normal(self.decode(z), scale), 2, name="x")

        return tfd.JointDistributionCoroutine(model)

    def log_marginal(self, x, num_points=1024):
        """`log p(x)` by quadrature on the circle: `Tensor[M, image_size, image_size] -> Tensor[M]`."""
        return circle_log_marginal(x, self.decode, self.scale, num_points)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "hidden_units": list(self.hidden_units),
                "scale": self.initial_scale, "learn_scale": self.learn_scale, "seed": self.seed}


def circle_log_marginal(x, mean_fn, scale, num_points=1024):
    """`log p(x) = log (1 / 2 pi) int N(x; mean_fn(z), scale^2 I) dz` by the trapezoid rule on the circle.

    The integrand is smooth and periodic in `z`, so the rule on `num_points` equally spaced angles converges
    exponentially; the spacing must resolve the posterior width `~ scale / |d mean_fn / dz|`.

    Args:
      x: `Tensor[M, *event_shape]` observations.
      mean_fn: maps angles `Tensor[K]` to mean images `Tensor[K, *event_shape]`.
      scale: scalar noise standard deviation.
      num_points: number `K` of quadrature angles.

    Returns:
      `Tensor[M]`.
    """
    angles = tf.linspace(-math.pi, math.pi, num_points + 1)[:-1]
    means = mean_fn(angles)  # [K, *event_shape]
    event_ndims = means.shape.rank - 1
    likelihood = tfd.Independent(tfd.Normal(means, scale), event_ndims)
    log_likelihood = likelihood.log_prob(tf.cast(x, means.dtype)[:, tf.newaxis])  # [M, K]
    return tf.reduce_logsumexp(log_likelihood, axis=-1) - math.log(num_points)


def gabor(angle, image_size):
    """Odd-phase Gabor patches of the given orientations: `Tensor[*batch] -> Tensor[*batch, S, S]`.

    With pixel coordinates `(u, v)` on `[-1, 1]^2`,

        G(u, v; a) = exp(-(u^2 + v^2) / (2 w^2)) sin(2 pi k (u cos a + v sin a)),   w = 0.5, k = 1,

    so that `G(a + pi) = -G(a)`: the patches of all angles in `[-pi, pi)` are distinct and form a circle.
    """
    angle = tf.convert_to_tensor(angle, tf.float32)
    grid = tf.linspace(-1., 1., image_size)
    v, u = tf.meshgrid(grid, grid, indexing="ij")  # v: rows, u: columns
    envelope = tf.exp(-(u**2 + v**2) / (2. * _ENVELOPE_WIDTH**2))
    cos, sin = tf.cos(angle)[..., None, None], tf.sin(angle)[..., None, None]
    return envelope * tf.sin(2. * math.pi * _FREQUENCY * (u * cos + v * sin))


def gabor_patches(num, image_size=10, seed=0, noise_scale=0.1):
    """A seeded data set of noisy Gabor patches with orientations uniform on the circle.

    Args:
      num: number of patches.
      image_size: side `S` of each patch.
      seed: integer seed (stateless: the same seed gives the same data).
      noise_scale: standard deviation of the i.i.d. Gaussian pixel noise.

    Returns:
      patches: `float32[num, S, S]`, `gabor(angle, S) + noise_scale * eps`.
      angles: `float32[num]`, the orientations, uniform on `[-pi, pi)`.
    """
    angle_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split([seed, 0], 2))
    angles = tf.random.stateless_uniform([num], angle_seed, -math.pi, math.pi)
    noise = tf.random.stateless_normal([num, image_size, image_size], noise_seed, stddev=noise_scale)
    return gabor(angles, image_size) + noise, angles


def match_gabor(images, num_angles=720):
    """Orientation of each image by matched filtering against Gabor templates, and the distance to it.

    The templates all have the same norm, so the template of largest correlation is also the one of
    smallest squared error.

    Args:
      images: `Tensor[M, S, S]`.
      num_angles: number of template orientations on the circle (resolution `2 pi / num_angles`).

    Returns:
      angle: `Tensor[M]`, the orientation of the best template, in `[-pi, pi)`.
      mse: `Tensor[M]`, the mean squared pixel error to that template.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    angles = tf.linspace(-math.pi, math.pi, num_angles + 1)[:-1]
    templates = gabor(angles, images.shape[-1])  # [A, S, S]
    square_error = tf.reduce_mean(tf.square(images[:, None] - templates[None]), axis=[-2, -1])  # [M, A]
    best = tf.argmin(square_error, axis=-1)
    return tf.gather(angles, best), tf.reduce_min(square_error, axis=-1)


def kuiper_test(angles, num_terms=100):
    """Kuiper's test of uniformity on the circle: the statistic `V` and its asymptotic p-value.

    With `u_(1) <= ... <= u_(n)` the sorted angles divided by `2 pi` (shifted into `[0, 1)`),

        V = max_i (i / n - u_(i)) + max_i (u_(i) - (i - 1) / n),
        p = Q(lam),  lam = (sqrt(n) + 0.155 + 0.24 / sqrt(n)) V,
        Q(lam) = 2 sum_{j >= 1} (4 j^2 lam^2 - 1) exp(-2 j^2 lam^2)

    (Kuiper, 1960; Stephens's finite-sample correction; Press et al., Numerical Recipes, section on the
    Kolmogorov-Smirnov test). `V` does not depend on where the circle is cut, unlike Kolmogorov-Smirnov.

    Args:
      angles: `Tensor[n]`, angles in radians (any range; taken modulo `2 pi`).
      num_terms: terms of the series `Q`.

    Returns:
      statistic: scalar `V`.
      p_value: scalar, the probability of a larger `V` under uniformity (1 for `lam < 0.4`, where the
        series is numerically 1).
    """
    angles = tf.convert_to_tensor(angles, tf.float32)
    u = tf.sort(tf.math.floormod(angles, 2. * math.pi) / (2. * math.pi))
    n = tf.cast(tf.size(u), tf.float32)
    rank = tf.range(1., n + 1.)
    statistic = tf.reduce_max(rank / n - u) + tf.reduce_max(u - (rank - 1.) / n)
    lam = (tf.sqrt(n) + 0.155 + 0.24 / tf.sqrt(n)) * statistic
    j2 = tf.range(1., num_terms + 1.)**2
    series = 2. * tf.reduce_sum((4. * j2 * lam**2 - 1.) * tf.exp(-2. * j2 * lam**2))
    p_value = tf.where(lam < 0.4, 1., tf.clip_by_value(series, 0., 1.))
    return statistic, p_value
