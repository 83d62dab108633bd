"""The encoder contract of the baselines, and a mean-field encoder that satisfies it.

An encoder is the recognition model `q_phi(z | x)` that VAE, IWAE and reweighted wake-sleep learn next to the
generative model (amortised learning needs none). Contract:

  - it is a Keras layer (its weights are the encoder parameters `phi`, tracked by the learner);
  - `call(x)` takes a batch `x: [M, *event_shape]` of the observed node (with several observed nodes, the dict
    `{node: [M, *event_shape]}` of their batches) and returns a `tfd.JointDistribution`
    over the latent nodes of the generative model, with the same node names, batch shape `[M]` and, node by
    node, the event shape and dtype of the model's latent;
  - sampling it with a leading sample shape `[K]` gives `{name: Tensor[K, M, *event_shape]}`; nodes whose
    distribution is not reparameterisable (e.g. a `Categorical`) are trained by the score-function
    estimator, the others by the path-wise gradient.

Several latent nodes, dependent or not, are one `JointDistribution` (Named, Coroutine or Sequential), so a
structured posterior (e.g. `q(z1 | x) q(z2 | z1, x)`) is a custom `Encoder` subclass.
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

LATENT_KINDS = ("normal", "categorical")


class Encoder(keras.layers.Layer):
    """Base class of encoders `q_phi(z | x)`: `call(x: [M, *event_shape])` returns a JointDistribution.

    The returned distribution has batch shape `[M]` and one node per latent node of the generative model,
    with the same names (see the module docstring for the whole contract). It must be built from the
    layer's weights inside `call`, so that the learner's gradient tape sees them.
    """

    def call(self, x):
        raise NotImplementedError(f"{type(self).__name__} must implement call(x) returning a JointDistribution.")


@keras.saving.register_keras_serializable(package="tfp_amortised")
class MeanFieldEncoder(Encoder):
    """A multilayer perceptron from `x` to independent per-latent distributions (mean field).

        h = MLP(flatten(x)),      q(z | x) = prod_latent q_latent(z_latent | h)

    with, for each latent `kind`:
      - `("normal", size)`: `z: [size]`, `N(loc(h), diag(softplus(raw_scale(h))^2))`, reparameterised;
      - `("categorical", num_classes)`: scalar `z` in `{0..num_classes-1}` (int32), `Categorical(logits(h))`,
        not reparameterised (score function).

    Input shape: `[M, *event_shape]`. Output: `tfd.JointDistributionNamed` with batch shape `[M]`.
    A mean-field Gaussian cannot represent correlated posteriors (e.g. factor analysis with a non-diagonal
    posterior covariance): the VAE's bias then reaches the generative model; IWAE and RWS reduce it with `K`.

    Args:
      latents: dict `{latent name: (kind, size)}` as above.
      hidden_units: widths of the hidden layers (`tanh`); `()` makes the heads linear in `x`.
      seed: seed of the weight initialisers.

    #### Examples

    ```python
    encoder = MeanFieldEncoder({"z": ("categorical", 5)}, hidden_units=(32,))
    q = encoder(x)                    # batch shape [M]
    q.sample(10, seed=[0, 1])["z"]    # int32 [10, M]
    ```
    """

    def __init__(self, latents, hidden_units=(64,), seed=None, **kwargs):
        super().__init__(**kwargs)
        self.latents = {name: (kind, int(size)) for name, (kind, size) in dict(latents).items()}
        for name, (kind, size) in self.latents.items():
            if kind not in LATENT_KINDS or size < 1:
                raise ValueError(f"latents[{name!r}] must be (kind, size) with kind in {LATENT_KINDS} and size >= 1. "
                                 f"Received: latents[{name!r}]={(kind, size)!r}")
        self.hidden_units, self.seed = tuple(hidden_units), seed
        initializer = keras.initializers.GlorotUniform(seed=seed)
        self.hidden = [keras.layers.Dense(units, activation="tanh", kernel_initializer=initializer)
                       for units in self.hidden_units]
        widths = {"normal": 2, "categorical": 1}
        self.heads = {name: keras.layers.Dense(widths[kind] * size, kernel_initializer=initializer, name=f"head_{name}")
                      for name, (kind, size) in self.latents.items()}

    def build(self, input_shape):
        features = 1
        for dim in input_shape[1:]:
            features *= dim
        shape = (None, features)
        for layer in self.hidden:
            layer.build(shape)
            shape = (None, layer.units)
        for head in self.heads.values():
            head.build(shape)

    def call(self, x):
        h = tf.reshape(tf.cast(x, self.compute_dtype), [tf.shape(x)[0], -1])
        for layer in self.hidden:
            h = layer(h)
        return tfd.JointDistributionNamed(
            {name: self._node(kind, size, self.heads[name](h), name) for name, (kind, size) in self.latents.items()})

    @staticmethod
    def _node(kind, size, output, name):
        if kind == "categorical":
            return tfd.Categorical(logits=output, name=name)
        loc, raw_scale = output[..., :size], output[..., size:]
        return tfd.Independent(tfd.Normal(loc, tf.nn.softplus(raw_scale) + 1e-4), 1, name=name)

    def get_config(self):
        return {**super().get_config(), "latents": self.latents, "hidden_units": self.hidden_units,
                "seed": self.seed}
