"""A neural-process-like latent function model, its encoder-free prediction from context points, and sine data."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.estimator import ridge_expectation, sleep
from tfp_amortised.generative import GenerativeModel
from tfp_amortised.models._mlp import apply_over_batch, mlp

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root

AMPLITUDE_RANGE = (-0.5, 1.)
SHIFT_RANGE = (-0.5, 0.5)


@keras.saving.register_keras_serializable(package="tfp_amortised")
class NeuralProcessModel(GenerativeModel):
    """A random function `g_w(z, .)` with a Gaussian latent, observed with noise on a fixed grid of inputs.

    Generative process, with `z: [latent_dim]`, the grid `t: [K]` (`inputs`) and `x: [K]`:

        z ~ N(0, I_latent_dim)
        x_k | z ~ N(g_w(z, t_k), sigma^2)  independently, k = 1..K,      sigma = softplus(raw_scale)

    where the decoder `g_w([z, t])` is a Keras MLP on the concatenation of the latent and one input location
    (`tanh` hidden layers, scalar linear output), so `decode(z, at)` evaluates the random function anywhere.
    Nodes: `z` (latent), `x` (observed function values on the grid). Amortised learning trains `w` and
    `sigma` by maximum likelihood on whole vectors `x` with no encoder, as in the neural-process experiment of
    Wenliang, Moskovitz, Kanagawa, Sahani, "Amortised Learning by Wake-Sleep", ICML 2020.

    How this differs from a neural process (Garnelo et al., 2018): a neural process has an encoder that
    aggregates any set of (input, value) pairs into a distribution over `z`, and is trained on random
    context/target splits at arbitrary input locations. Here the observed node lives on the fixed grid
    `inputs`, and there is no encoder: `predict_from_context` conditions on any subset of grid entries (the context) by
    kernel ridge regression on those entries of sleep samples, and evaluates the posterior mean function
    `E[g_w(z, t) | x_context]` at any `t`, on or off the grid.

    Args:
      inputs: the grid `t: [K]` of input locations of the observed node (a 1-D sequence of floats).
      latent_dim: size of `z`.
      hidden_units: sizes of the decoder's hidden layers; `()` gives a decoder linear in `[z, t]` (the model is
        then linear-Gaussian).
      scale: initial (and, with `learn_scale=False`, fixed) `sigma`.
      learn_scale: whether `sigma` is trained.
      seed: seed of the decoder's initialisers.

    #### Examples

    ```python
    inputs = tf.linspace(-math.pi, math.pi, 16)
    y, _, _ = sine_functions(2000, inputs, seed=0)
    model = NeuralProcessModel(inputs, latent_dim=2, hidden_units=(32, 32), seed=0)
    learner = AmortisedLearner(model, num_sleep=500, form="conditional", seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(3e-3))  # 1e-2 collapsed sigma early in trial runs
    learner.fit(y, batch_size=100, epochs=50)
    at = tf.linspace(-math.pi, math.pi, 100)
    context = [1, 5, 9, 13]
    values = tf.gather(y[:10], context, axis=1)                           # [10, 4]
    mean = predict_from_context(model, context, values, at, num_sleep=2000, seed=[0, 1])  # [10, 100]
    ```

    #### References

    [1] Li K. Wenliang, Theodore Moskovitz, Heishiro Kanagawa, Maneesh Sahani. Amortised Learning by
        Wake-Sleep. ICML 2020.
    [2] Marta Garnelo, Jonathan Schwarz, Dan Rosenbaum, Fabio Viola, Danilo J. Rezende, S. M. Ali Eslami,
        Yee Whye Teh. Neural Processes. arXiv:1807.01622, 2018.
    """

    def __init__(self, inputs, latent_dim=2, hidden_units=(32, 32), scale=0.2, learn_scale=True, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        self.inputs = [float(t) for t in np.reshape(np.asarray(inputs, np.float64), [-1])]
        if len(self.inputs) < 1:
            raise ValueError(f"inputs must hold at least one input location. Received: inputs={inputs!r}")
        if not (isinstance(latent_dim, int) and latent_dim >= 1):
            raise ValueError(f"latent_dim must be a positive integer. Received: latent_dim={latent_dim!r}")
        self.latent_dim, self.hidden_units = latent_dim, tuple(hidden_units)
        self.initial_scale, self.learn_scale, self.seed = scale, learn_scale, seed
        self.decoder = mlp(latent_dim + 1, self.hidden_units, 1, seed=seed)
        self.raw_scale = self.add_positive_weight("raw_scale", scale, trainable=learn_scale)

    @property
    def scale(self):
        """Scalar `Tensor`: the observation noise standard deviation `sigma`."""
        return tf.nn.softplus(self.raw_scale)

    def decode(self, z, at=None):
        """The random function at input locations: `g_w(z, at_j)` for every `z` and `at_j`.

        Args:
          z: `Tensor[*batch, latent_dim]`.
          at: `Tensor[T]` input locations, anywhere; default the grid `inputs` (`T = K`).

        Returns:
          `Tensor[*batch, T]`.
        """
        z = tf.convert_to_tensor(z, self.compute_dtype)
        at = tf.convert_to_tensor(self.inputs if at is None else at, self.compute_dtype)
        pairs_shape = tf.concat([tf.shape(z)[:-1], tf.shape(at)], axis=0)  # [*batch, T]
        pairs = tf.concat([tf.broadcast_to(z[..., None, :], tf.concat([pairs_shape, [self.latent_dim]], axis=0)),
                           tf.broadcast_to(at[:, None], tf.concat([pairs_shape, [1]], axis=0))], axis=-1)
        return apply_over_batch(self.decoder, pairs, ())  # [*batch, T]

    def joint_distribution(self):
        scale = self.scale

        def model():
            z = yield Root(tfd.Sample(tfd.Normal(0., 1.), self.latent_dim, name="z"))
            yield tfd.Independent(tfd.Normal(self.decode(z), scale), 1, name="x")

        return tfd.JointDistributionCoroutine(model)

    def get_config(self):
        return {**super().get_config(), "inputs": self.inputs, "latent_dim": self.latent_dim,
                "hidden_units": list(self.hidden_units), "scale": self.initial_scale,
                "learn_scale": self.learn_scale, "seed": self.seed}


def predict_from_context(model, context_index, context_values, at, *, num_sleep, seed, regression=None):
    """The posterior mean function given context entries, `E[g_w(z, at) | x_context]`, with no encoder.

    The neural process's task: given the values of `C` entries of `x` (the context, at grid indices
    `context_index`), predict the function anywhere. With `N` detached sleep samples `(z_n, x_n) ~ p` and kernel
    ridge weights `alpha` regressing on the sleep context entries `x_n[context_index]`,

        E[g_w(z, at_j) | x_context = c_m]  ~  sum_n alpha_n(c_m) g_w(z_n, at_j)

    (the posterior-expectation estimator of Wenliang et al., ICML 2020, on a subset of the observed entries:
    the regression needs only samples of the joint, so any subset can be conditioned on with no retraining).

    Args:
      model: a `NeuralProcessModel` (or any `GenerativeModel` with latent `z`, a vector observed node on the grid
        `inputs`, and `decode(z, at)`).
      context_index: `int[C]` grid indices of the context entries, `0 <= index < K`.
      context_values: `Tensor[M, C]` observed values at those entries, one row per function.
      at: `Tensor[T]` input locations where the function is predicted.
      num_sleep: Python int `N >= 2`.
      seed: a stateless seed, `int32[2]`.
      regression: a `KernelRidge` layer, or None for the default kernel ridge regression (`regression_weights`).

    Returns:
      `Tensor[M, T]`.
    """
    context_values = tf.convert_to_tensor(context_values)
    context_index = _check_context(model, context_index, context_values)
    sample = sleep(model.joint_distribution(), num_sleep, seed)
    sleep_context = tf.gather(sample[model.observed], context_index, axis=-1)  # [N, C]
    return ridge_expectation(sleep_context, tf.cast(context_values, sleep_context.dtype),
                             model.decode(sample["z"], at), regression)


def sine_functions(num, inputs, seed, noise=0.1, amplitude_range=AMPLITUDE_RANGE, shift_range=SHIFT_RANGE):
    """A seeded data set of noisy sine functions on a grid: `y_k = a sin(t_k - s) + noise eps_k`.

    The amplitude `a` and the shift `s` are uniform on their ranges (the defaults, and noise 0.1, are the sine
    family that the public code of Wenliang et al., ICML 2020, uses for its neural-process experiment).

    Args:
      num: number of functions `M`.
      inputs: `Tensor[K]`, the input grid `t`.
      seed: integer seed (stateless: the same seed gives the same data).
      noise: standard deviation of the i.i.d. Gaussian noise.
      amplitude_range, shift_range: `(low, high)` of the uniform amplitude and shift.

    Returns:
      y: `float32[M, K]`.
      amplitude: `float32[M]`.
      shift: `float32[M]`.
    """
    inputs = tf.convert_to_tensor(inputs, tf.float32)
    amplitude_seed, shift_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split([seed, 0], 3))
    amplitude = tf.random.stateless_uniform([num], amplitude_seed, *amplitude_range)
    shift = tf.random.stateless_uniform([num], shift_seed, *shift_range)
    clean = sine(amplitude, shift, inputs)
    return clean + tf.random.stateless_normal(tf.shape(clean), noise_seed, stddev=noise), amplitude, shift


def sine(amplitude, shift, at):
    """`a sin(t - s)`: `amplitude: [*batch]`, `shift: [*batch]`, `at: [T]` -> `[*batch, T]`."""
    return amplitude[..., None] * tf.sin(tf.convert_to_tensor(at, tf.float32) - shift[..., None])


def sine_posterior_mean(context_index, context_values, at, noise=0.1, *, inputs, amplitude_range=AMPLITUDE_RANGE,
                        shift_range=SHIFT_RANGE, num_points=128):
    """The Bayes-optimal prediction under the sine prior, `E[a sin(at - s) | y_context]`, by 2-D quadrature.

    With the uniform prior on `(a, s)` and the Gaussian likelihood of the context values `c_i` at inputs
    `u_i = inputs[context_index[i]]`,

        log p(c | a, s) = const - (a^2 Q(s) - 2 a P(s)) / (2 noise^2),
        P(s) = sum_i c_i sin(u_i - s),   Q(s) = sum_i sin(u_i - s)^2,

    the posterior is evaluated on the midpoints of a `num_points x num_points` grid over the rectangle, and
    `E[a sin(t - s)] = sum_s sin(t - s) sum_a a w(a, s)`. The midpoint rule is accurate while the grid
    resolves the posterior (with the default ranges, cells of `1.5 / num_points` in `a`; the posterior width of
    `a` is about `noise sqrt(2 / C)`). With no context (`C = 0`) it is the prior mean `E[a] E[cos s] sin t`.
    Memory: `M num_points^2` floats.

    Args:
      context_index: `int[C]` grid indices of the context entries.
      context_values: `Tensor[M, C]`.
      at: `Tensor[T]` prediction locations.
      noise: the observation noise standard deviation.
      inputs: `Tensor[K]`, the input grid.
      amplitude_range, shift_range: the uniform prior's ranges.
      num_points: grid points per dimension.

    Returns:
      `Tensor[M, T]`.
    """
    amplitude = _midpoints(amplitude_range, num_points)  # [A]
    shift = _midpoints(shift_range, num_points)  # [S]
    context_inputs = tf.gather(tf.convert_to_tensor(inputs, tf.float32), tf.cast(context_index, tf.int32))  # [C]
    context_sine = tf.sin(context_inputs[:, None] - shift[None, :])  # [C, S]
    projection = tf.matmul(tf.convert_to_tensor(context_values, tf.float32), context_sine)  # P: [M, S]
    square = tf.reduce_sum(context_sine**2, axis=0)  # Q: [S]
    log_likelihood = (2. * amplitude[None, :, None] * projection[:, None, :]
                      - amplitude[None, :, None]**2 * square[None, None, :]) / (2. * noise**2)  # [M, A, S]
    num_rows = tf.shape(log_likelihood)[0]
    posterior = tf.reshape(tf.nn.softmax(tf.reshape(log_likelihood, [num_rows, -1]), axis=-1), tf.shape(log_likelihood))
    amplitude_mean = tf.einsum("mas,a->ms", posterior, amplitude)  # [M, S]
    return tf.matmul(amplitude_mean, tf.sin(tf.convert_to_tensor(at, tf.float32)[None, :] - shift[:, None]))


def _midpoints(value_range, num_points):
    low, high = value_range
    width = (high - low) / num_points
    return tf.linspace(low + width / 2., high - width / 2., num_points)


def _check_context(model, context_index, context_values):
    """`context_index` as `int32[C]`, after checking it against the grid and `context_values: Tensor[M, C]`."""
    num_inputs = len(model.inputs)
    index = tf.convert_to_tensor(context_index, tf.int32)
    if index.shape.rank != 1 or (tf.executing_eagerly() and not tf.reduce_all((index >= 0) & (index < num_inputs))):
        raise ValueError(
            f"context_index must be a 1-D sequence of grid indices in [0, {num_inputs}). "
            f"Received: context_index={context_index!r}")
    values_shape = context_values.shape
    if values_shape.rank != 2 or not values_shape[1:].is_compatible_with([index.shape[0]]):
        raise ValueError(
            f"context_values must have shape [M, {index.shape[0]}] (one column per context index). "
            f"Received: context_values.shape={values_shape}")
    return index
