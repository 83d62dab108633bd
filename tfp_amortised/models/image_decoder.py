"""Image generation: a Gaussian latent decoded to an image by a deep network, with a Fréchet-distance score."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.estimator import check_seed
from tfp_amortised.generative import GenerativeModel
from tfp_amortised.models._mlp import apply_over_batch, mlp

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root

_IMAGES_EXTRA = 'pip install "tfp_amortised[images]"'


@keras.saving.register_keras_serializable(package="tfp_amortised")
class ImageDecoderModel(GenerativeModel):
    """A standard-normal latent decoded by a multilayer perceptron to the mean of a Gaussian image.

    Generative process, with `z: [latent_dim]` and `x: [height, width]`:

        z ~ N(0, I_latent_dim)
        x | z ~ N(f_w(z), sigma^2 I),       sigma = softplus(raw_scale)

    where `f_w` is a Keras MLP (`hidden_units`, `activation`) whose last layer has `height * width` units and
    `output_activation` (`"sigmoid"` keeps the mean image in `[0, 1]`, the range of `load_digits`). With
    `hidden_units=()` and `output_activation=None` the decoder is `W z + b` and the model is probabilistic
    PCA: `log_marginal` then gives the exact `log p(x) = log N(x; b, W W^T + sigma^2 I)` (ground truth for
    tests); for a deep decoder `log p(x)` has no closed form. Nodes: `z` (latent), `x` (observed).

    This is the image-generation experiment of Wenliang, Moskovitz, Kanagawa, Sahani, "Amortised Learning by
    Wake-Sleep" (ICML 2020), in miniature: the paper trained convolutional decoders on larger image sets;
    this is a small MLP version for 8 x 8 digits (`load_digits`) or MNIST (`load_mnist`), scored by the
    Fréchet distance of samples to held-out images (`frechet_distance`). Amortised learning needs no
    encoder; the `baselines` train the same model as a VAE for comparison.

    Args:
      image_shape: `(height, width)` of `x`.
      latent_dim: size of `z`.
      hidden_units: widths of the decoder's hidden layers.
      activation: activation of the hidden layers.
      output_activation: activation of the output layer (`None` for linear).
      scale: initial (and, with `learn_scale=False`, fixed) `sigma`.
      learn_scale: whether `sigma` is trained.
      seed: seed of the decoder's initialisers.

    #### Examples

    ```python
    images, labels = load_digits()
    model = ImageDecoderModel((8, 8), latent_dim=8, hidden_units=(64, 128), seed=0)
    learner = AmortisedLearner(model, num_sleep=1000, form="conditional", seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(3e-3))
    learner.fit(images[:1300], batch_size=100, epochs=30)
    samples = model.decode(learner.sample(1000)["z"])                      # [1000, 8, 8] mean images
    features = lambda x: pca_features(x, images[:1300], num_components=16)
    frechet_distance(features(samples), features(images[1300:]))
    ```

    #### References

    [1] Li K. Wenliang, Theodore Moskovitz, Heishiro Kanagawa, Maneesh Sahani. Amortised Learning by
        Wake-Sleep. ICML 2020.
    """

    def __init__(self, image_shape=(8, 8), latent_dim=8, hidden_units=(64, 128), activation="relu",
                 output_activation="sigmoid", scale=0.3, learn_scale=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        image_shape = tuple(image_shape)
        if len(image_shape) != 2 or not all(isinstance(side, int) and side >= 1 for side in image_shape):
            raise ValueError(f"image_shape must be (height, width), positive integers. Received: "
                             f"image_shape={image_shape!r}")
        if not (isinstance(latent_dim, int) and latent_dim >= 1):
            raise ValueError(f"latent_dim must be a positive integer. Received: latent_dim={latent_dim!r}")
        self.image_shape, self.latent_dim, self.hidden_units = image_shape, latent_dim, tuple(hidden_units)
        self.activation, self.output_activation = activation, output_activation
        self.initial_scale, self.learn_scale, self.seed = scale, learn_scale, seed
        self.decoder = mlp(latent_dim, self.hidden_units, image_shape[0] * image_shape[1], activation=activation,
                           output_activation=output_activation, seed=seed)
        self.raw_scale = self.add_positive_weight("raw_scale", scale, trainable=learn_scale)

    @property
    def scale(self):
        """Scalar `Tensor`: the pixel noise standard deviation `sigma`."""
        return tf.nn.softplus(self.raw_scale)

    def decode(self, z):
        """The mean image `f_w(z)`: `Tensor[*batch, latent_dim] -> Tensor[*batch, height, width]`."""
        return apply_over_batch(self.decoder, tf.cast(z, self.compute_dtype), self.image_shape)

    def joint_distribution(self):
        scale = self.scale

        def model():
            z = yield Root(tfd.Sample(tfd.Normal(0., 1.), self.latent_dim, name="z"))
            yield tfd.Independent(tfd.Normal(self.decode(z), scale), 2, name="x")

        return tfd.JointDistributionCoroutine(model)

    def log_marginal(self, x):
        """Exact `log p(x)` of the linear decoder (probabilistic PCA): `Tensor[M, height, width] -> Tensor[M]`.

        Raises a ValueError for a deep or non-linear decoder, whose marginal has no closed form.
        """
        if self.hidden_units or self.output_activation not in (None, "linear"):
            raise ValueError("log_marginal is exact only for a linear decoder (hidden_units=() and "
                             f"output_activation=None). Received: hidden_units={self.hidden_units}, "
                             f"output_activation={self.output_activation!r}")
        layer = self.decoder.layers[0]
        loading = tf.transpose(layer.kernel.value)  # [height * width, latent_dim]
        covariance = tf.matmul(loading, loading, transpose_b=True) + self.scale**2 * tf.eye(tf.shape(loading)[0])
        marginal = tfd.MultivariateNormalTriL(layer.bias.value, tf.linalg.cholesky(covariance))
        x = tf.cast(x, self.compute_dtype)
        return marginal.log_prob(tf.reshape(x, [tf.shape(x)[0], -1]))

    def estimate_log_marginal(self, x, num_samples=1000, seed=(0, 0), chunk_size=100, max_iterations=200):
        """Importance-sampling estimate of `log p(x)` for any decoder, with a Laplace proposal per image.

        For each image the proposal `q` is a multivariate Student-t (4 degrees of freedom) with the location and
        scale of a Laplace approximation: the posterior mode `z*` (L-BFGS on `log p(z, x)` from `z = 0`) and the
        Gauss-Newton covariance `(J^T J / sigma^2 + I)^-1`, `J` the Jacobian of `f_w` at `z*`. The estimate is
        `log (1/K) sum_k p(z_k, x) / q(z_k)`, `z_k ~ q`: unbiased for `p(x)` inside the log, so on average a lower
        bound on `log p(x)` (Jensen), tight when `q` covers the posterior. Tests: within 0.02 nats of the linear
        decoder's `log_marginal`, within 0.03 of quadrature on a two-dimensional latent. Its gradient with respect
        to the decoder's weights is the self-normalised importance-sampling estimate of `grad log p(x)` (`q` is
        held fixed). Cost: `K M` decoder passes, in chunks of `chunk_size` samples, and the modes' L-BFGS.

        Args:
          x: `Tensor[M, height, width]` images.
          num_samples: number `K` of importance samples per image.
          seed: a stateless seed (`int32[2]`); the same seed gives the same estimate.
          chunk_size: samples per decoder pass (memory: `chunk_size * M * height * width` values).
          max_iterations: L-BFGS iterations for the modes.

        Returns:
          `Tensor[M]`.
        """
        for argument, value in (("num_samples", num_samples), ("chunk_size", chunk_size),
                                ("max_iterations", max_iterations)):
            if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{argument} must be a positive integer. Received: {argument}={value!r}")
        x = tf.cast(x, self.compute_dtype)
        if x.shape.rank != 3 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape [num_images, {self.image_shape[0]}, {self.image_shape[1]}]. "
                             f"Received: x of shape {x.shape}")
        seed = check_seed(seed)
        joint = self.joint_distribution()
        mode, scale = _laplace_approximations(self, x, max_iterations)
        proposal = tfd.MultivariateStudentTLinearOperator(
            tf.constant(4., x.dtype), mode, tf.linalg.LinearOperatorLowerTriangular(scale))
        num_chunks = -(-num_samples // chunk_size)
        seeds = tf.random.experimental.stateless_split(seed, num_chunks)
        log_weights = []
        for index, chunk_seed in enumerate(tf.unstack(seeds)):
            size = min(chunk_size, num_samples - index * chunk_size)
            z = proposal.sample(size, seed=chunk_seed)  # [size, M, latent_dim]
            log_weights.append(joint.log_prob(z, x) - proposal.log_prob(z))
        log_weights = tf.concat(log_weights, axis=0)  # [K, M]
        return tf.reduce_logsumexp(log_weights, axis=0) - tf.math.log(tf.cast(num_samples, x.dtype))

    def get_config(self):
        return {**super().get_config(), "image_shape": list(self.image_shape), "latent_dim": self.latent_dim,
                "hidden_units": list(self.hidden_units), "activation": self.activation,
                "output_activation": self.output_activation, "scale": self.initial_scale,
                "learn_scale": self.learn_scale, "seed": self.seed}


@tf.function(reduce_retracing=True, autograph=False)
def _laplace_approximations(model, x, max_iterations):
    """Posterior mode and Gauss-Newton covariance of an `ImageDecoderModel` for each image of `x: [M, height,
    width]` (compiled: TFP's L-BFGS loop is slow eagerly).

    Returns:
      `(mode [M, latent_dim], scale [M, latent_dim, latent_dim])`: `mode = argmax_z log p(z, x)` by L-BFGS from
      `z = 0`, and `scale` the lower Cholesky factor of `(J^T J / sigma^2 + I)^-1`, `J` the decoder's Jacobian at
      `mode`.
    """
    joint = model.joint_distribution()

    def negative_log_joint(z):  # [M, latent_dim] -> ([M], [M, latent_dim])
        return tfp.math.value_and_gradient(lambda z: -joint.log_prob(z, x), z)

    start = tf.zeros(tf.stack([tf.shape(x)[0], model.latent_dim]), x.dtype)
    mode = tfp.optimizer.lbfgs_minimize(negative_log_joint, start, max_iterations=max_iterations).position
    with tf.GradientTape() as tape:
        tape.watch(mode)
        mean = tf.reshape(model.decode(mode), [tf.shape(x)[0], -1])
    jacobian = tape.batch_jacobian(mean, mode)  # [M, height * width, latent_dim]
    precision = tf.matmul(jacobian, jacobian, transpose_a=True) / model.scale**2 + tf.eye(model.latent_dim,
                                                                                          dtype=x.dtype)
    return tf.stop_gradient(mode), tf.stop_gradient(tf.linalg.cholesky(tf.linalg.inv(precision)))


def load_digits(dtype="float32"):
    """The 1797 handwritten digits of scikit-learn (8 x 8, UCI optical digits), scaled to `[0, 1]`.

    Shipped inside scikit-learn, so no network is needed. The rows are ordered by writer, not by class:
    a leading slice is a fair training set and the rest a test set.

    Args:
      dtype: floating dtype of the images.

    Returns:
      images: `dtype[1797, 8, 8]` in `[0, 1]` (the raw counts 0..16 divided by 16).
      labels: `int32[1797]`, the digit 0..9.
    """
    try:
        from sklearn import datasets
    except ImportError as error:
        raise ImportError(f"load_digits needs scikit-learn: {_IMAGES_EXTRA}") from error
    digits = datasets.load_digits()
    return _prepare_images(digits.images, digits.target, 16., dtype)


def load_mnist(dtype="float32"):
    """MNIST (28 x 28 handwritten digits) through `keras.datasets.mnist`, scaled to `[0, 1]` like `load_digits`.

    The first call downloads the data (11 MB) into `~/.keras/datasets` and so needs a network connection;
    later calls read the cached file.

    Args:
      dtype: floating dtype of the images.

    Returns:
      `((train_images, train_labels), (test_images, test_labels))`: images `dtype[60000 | 10000, 28, 28]`
      in `[0, 1]` (grey levels divided by 255), labels `int32[60000 | 10000]`.
    """
    (train_images, train_labels), (test_images, test_labels) = keras.datasets.mnist.load_data()
    return (_prepare_images(train_images, train_labels, 255., dtype),
            _prepare_images(test_images, test_labels, 255., dtype))


def _prepare_images(images, labels, max_value, dtype="float32"):
    """Grey-level images `[num, height, width]` divided by `max_value` into `[0, 1]`; labels as int32 `[num]`."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"images must have shape [num, height, width] and labels [num]. Received: "
                         f"images.shape={images.shape}, labels.shape={labels.shape}")
    if not max_value > 0:
        raise ValueError(f"max_value must be positive. Received: max_value={max_value!r}")
    scaled = np.clip(images.astype(np.float64) / max_value, 0., 1.)
    return scaled.astype(dtype), labels.astype(np.int32)


def frechet_distance(features_a, features_b):
    """Fréchet distance between Gaussians fitted to two feature sets (the FID of Heusel et al., 2017).

    With means `m_a, m_b` and covariances `C_a, C_b` (unbiased, divisor `num - 1`) of the two sets,

        d^2 = |m_a - m_b|^2 + tr C_a + tr C_b - 2 tr (C_a^{1/2} C_b C_a^{1/2})^{1/2}

    the squared 2-Wasserstein distance between `N(m_a, C_a)` and `N(m_b, C_b)`. Both square roots are taken
    by symmetric eigendecomposition (`tf.linalg.eigh`), with round-off negative eigenvalues clipped to zero;
    the computation runs in float64. Returned is `d^2`, as FID reports it. With Inception features this is
    the FID; here any features serve (e.g. `pca_features`, or a classifier's penultimate layer).

    Args:
      features_a: `Tensor[num_a, F]`.
      features_b: `Tensor[num_b, F]`.

    Returns:
      Scalar float64 `Tensor`: `d^2 >= 0`.

    #### References

    [1] Martin Heusel, Hubert Ramsauer, Thomas Unterthiner, Bernhard Nessler, Sepp Hochreiter. GANs Trained
        by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium. NeurIPS 2017.
    """
    features_a = tf.cast(features_a, tf.float64)
    features_b = tf.cast(features_b, tf.float64)
    too_few = [features.shape[0] is not None and features.shape[0] < 2 for features in (features_a, features_b)
               if features.shape.rank == 2]
    if (features_a.shape.rank != 2 or features_b.shape.rank != 2 or any(too_few)
            or not features_a.shape[1:].is_compatible_with(features_b.shape[1:])):
        raise ValueError(f"features_a and features_b must have shapes [num_a, F] and [num_b, F] with num >= 2. "
                         f"Received: features_a.shape={features_a.shape}, features_b.shape={features_b.shape}")
    mean_a, covariance_a = _moments(features_a)
    mean_b, covariance_b = _moments(features_b)
    root_a = _symmetric_sqrt(covariance_a)
    product = tf.matmul(root_a, tf.matmul(covariance_b, root_a))
    eigenvalues = tf.linalg.eigvalsh(0.5 * (product + tf.transpose(product)))
    trace_root = tf.reduce_sum(tf.sqrt(tf.maximum(eigenvalues, 0.)))
    distance = (tf.reduce_sum(tf.square(mean_a - mean_b)) + tf.linalg.trace(covariance_a)
                + tf.linalg.trace(covariance_b) - 2. * trace_root)
    return tf.maximum(distance, 0.)


def pca_features(images, reference, num_components):
    """Projections of images on the leading principal components of a reference set.

    Args:
      images: `Tensor[M, *image_shape]`.
      reference: `Tensor[R, *image_shape]` (e.g. the training images), which fixes the mean and components.
      num_components: number `K` of components kept.

    Returns:
      `Tensor[M, K]` (float32): `(flatten(images) - mean) @ V_K`, `V_K` the top `K` right singular vectors of
      the centred reference.
    """
    reference = tf.cast(tf.reshape(reference, [tf.shape(reference)[0], -1]), tf.float32)
    images = tf.cast(tf.reshape(images, [tf.shape(images)[0], -1]), tf.float32)
    mean = tf.reduce_mean(reference, axis=0)
    _, _, right = tf.linalg.svd(reference - mean)  # right: [pixels, min(R, pixels)], by decreasing value
    return tf.matmul(images - mean, right[:, :num_components])


def _moments(features):
    """Mean `[F]` and unbiased covariance `[F, F]` of `features: [num, F]`."""
    mean = tf.reduce_mean(features, axis=0)
    centred = features - mean
    count = tf.cast(tf.shape(features)[0], features.dtype)
    return mean, tf.matmul(centred, centred, transpose_a=True) / (count - 1.)


def _symmetric_sqrt(matrix):
    """`V diag(sqrt(max(lambda, 0))) V^T` for a symmetric `matrix = V diag(lambda) V^T`: `[F, F] -> [F, F]`."""
    eigenvalues, eigenvectors = tf.linalg.eigh(0.5 * (matrix + tf.transpose(matrix)))
    return tf.matmul(eigenvectors * tf.sqrt(tf.maximum(eigenvalues, 0.)), eigenvectors, transpose_b=True)
