"""The generative-model contract: a Keras layer that owns the parameters and builds a JointDistribution."""

import keras
import numpy as np
import tensorflow_probability as tfp


class GenerativeModel(keras.layers.Layer):
    """Base class of generative models trained by `AmortisedLearner`.

    A subclass creates its parameters as Keras weights (`add_weight`, or sub-layers built in `__init__`) and
    implements `joint_distribution()`, which builds `p_theta(z, x)` from them as a `tfd.JointDistribution`
    with scalar batch shape. The learner calls it inside its gradient tape at every step, so building must
    be cheap and must read the weights afresh (never cache the distribution).

    Contract, in the manner of the Inference Gym's model contract:
      - `observed`: name of the observed node (default `"x"`); every other node is a latent.
      - `joint_distribution()`: the model; sampling it gives `{node: Tensor[N, *event_shape]}`.
      - `log_marginal(x)` (optional): the exact `log p_theta(x)`, `Tensor[M, *event_shape] -> Tensor[M]`, for
        models where it has a closed form; tests and benchmarks use it as ground truth.

    A sub-layer called inside the model must accept any number of leading batch dimensions: the
    conditional form of the estimator evaluates the model on latents of shape `[1, N, ...]`.
    """

    observed = "x"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True

    def add_positive_weight(self, name, value, trainable=True):
        """A scalar weight `raw` initialised so that `tf.nn.softplus(raw) == value`: a positive parameter."""
        initial = float(tfp.math.softplus_inverse(np.float64(value)))
        return self.add_weight(shape=(), initializer=keras.initializers.Constant(initial), trainable=trainable,
                               name=name)

    def joint_distribution(self):
        """Returns `p_theta(z, x)` as a `tfd.JointDistribution` built from the current weights."""
        raise NotImplementedError(f"{type(self).__name__} must implement joint_distribution().")
