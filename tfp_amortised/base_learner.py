"""`Learner`: the Keras shell every learner of the package shares; a subclass supplies only its `objective`.

A learner is a `keras.Model` that trains a `GenerativeModel` with `compile` / `fit`. This base class holds what
every method needs: the model contract check, the observed node, the seed stream of the sampling and its saving
hooks, metric trackers, configuration, data checks, the non-finite guard and `train_step` / `test_step`.
`AmortisedLearner` and the encoder baselines (VAE, IWAE, RWS) differ only in `objective`.
"""

import keras
import numpy as np
import tensorflow as tf

from tfp_amortised import _joint, distributed
from tfp_amortised.estimator import check_wake_x, sleep
from tfp_amortised.generative import check_trainable

_SEED_STATE = "seed_generator_state"


class Learner(keras.Model):
    """Base class of the learners: trains a generative model by minimising a subclass's `objective`.

    `train_step` draws a stateless step seed from the learner's `keras.random.SeedGenerator`, evaluates
    `objective(wake_x, seed)` inside a `tf.GradientTape`, and applies the gradient of its loss to every trainable
    variable; a step whose gradient is not finite is applied as a zero gradient, so NaN never reaches the weights.
    `test_step` evaluates the objective only. The metrics are the means over the epoch's steps of the values the
    objective logs, under the names in `metric_names`.

    A subclass sets `metric_names` and implements `objective`; it may implement `after_train_step` (state updated
    once the gradient is applied, such as a moving-average baseline).

    Args:
      generative_model: a `GenerativeModel` instance (a Keras layer that owns the parameters and implements
        `joint_distribution()`); its `observed` attribute names the observed node (default `"x"`). A
        `tf.Variable` it holds that Keras does not track (so no optimiser would train it) is refused, with its
        attribute path (`tfp_amortised.generative.check_trainable`).
      seed: integer seed of the sampling; the same seed, data and initial weights give the same run.
    """

    metric_names = ("loss",)

    def __init__(self, generative_model, seed=None, **kwargs):
        super().__init__(**kwargs)
        _check_generative_model(generative_model)
        check_trainable(generative_model)
        self.generative_model = generative_model
        self.observed = getattr(generative_model, "observed", "x")
        _joint.check_observed(generative_model.joint_distribution(), self.observed)
        # Two samples of the observed node: the shape and dtype that data are checked against.
        self._reference_x = sleep(generative_model.joint_distribution(), 2, [0, 0])[self.observed]
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name) for name in self.metric_names}
        self.built = True

    @property
    def metrics(self):
        return list(self.trackers.values())

    def joint_distribution(self):
        """The generative model's current `tfd.JointDistribution`."""
        return self.generative_model.joint_distribution()

    def objective(self, wake_x, seed):
        """The loss to minimise and the values to log, for a batch `wake_x: [M, *event_shape]`.

        Args:
          wake_x: `Tensor[M, *event_shape]` observations, checked against the observed node.
          seed: stateless seed `[2]` of this step.

        Returns:
          `(loss, logs)`: a scalar `Tensor` to differentiate (under a `tf.distribute` strategy, this replica's
          share: the replicas' losses add up to the global loss) and a dict `{metric name: scalar Tensor}`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement objective(wake_x, seed).")

    def after_train_step(self, logs):
        """Hook run after the gradient step with the objective's logs; nothing by default."""

    def apply_gradients(self, gradients):
        """Applies `gradients` (one per variable of `trainable_variables`, or None) with the optimiser.

        A subclass whose variables have optimisers of their own overrides it.
        """
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))

    def train_step(self, data):
        wake_x = self.wake_batch(data)
        seed = self.seed_generator.next()
        with tf.GradientTape() as tape:
            loss, logs = self.objective(wake_x, seed)
        gradients = _finite_or_zero(tape.gradient(loss, self.trainable_variables))
        self.apply_gradients(gradients)
        self.after_train_step(logs)
        return self.update_metrics(logs)

    def test_step(self, data):
        _, logs = self.objective(self.wake_batch(data), self.seed_generator.next())
        return self.update_metrics(logs)

    def update_metrics(self, logs):
        """Adds a step's values of the `metric_names` to the trackers; returns every tracker's result as `fit` logs."""
        for name, tracker in self.trackers.items():
            if name in logs:
                tracker.update_state(logs[name])
        return distributed.as_logs({name: tracker.result() for name, tracker in self.trackers.items()})

    def wake_batch(self, data):
        """The observations of a `fit` batch (`x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`), checked.

        Raises a ValueError when the batch carries sample weights, which the learners do not use.
        """
        wake_x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__} does not weight data points: pass the observations only. "
                             "Received: sample_weight")
        return check_wake_x(wake_x, self._reference_x, self.observed)

    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit`, after checking array data (finite, shape and dtype of the observed node)."""
        self.check_data(x, "x", args[1] if len(args) > 1 else kwargs.get("batch_size"))
        validation_data = kwargs.get("validation_data")
        self.check_data(validation_data[0] if isinstance(validation_data, tuple) else validation_data,
                        "validation_data")
        return super().fit(x, *args, **kwargs)

    def check_data(self, data, argument, batch_size=None):
        """Checks array data before `fit`; datasets and generators are checked batch by batch when traced.

        A subclass may extend it (the batch size is passed for checks that depend on it).
        """
        if not isinstance(data, (np.ndarray, tf.Tensor)):
            return
        try:
            check_wake_x(data, self._reference_x, self.observed)
        except (ValueError, TypeError) as error:
            raise type(error)(f"{argument}: {error}") from None

    def save_own_variables(self, store):
        """Keras saving hook: also stores the sleep seed state, so a restored learner continues its seed stream."""
        super().save_own_variables(store)
        store[_SEED_STATE] = self.seed_generator.state

    def load_own_variables(self, store):
        """Keras loading hook: restores the seed state (absent from files written before it was saved)."""
        keys = list(store.keys())
        if _SEED_STATE in keys:
            self.seed_generator.state.assign(store[_SEED_STATE])
        super().load_own_variables({key: store[key] for key in keys if key != _SEED_STATE})

    def get_config(self):
        return {**super().get_config(),
                "generative_model": keras.saving.serialize_keras_object(self.generative_model), "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["generative_model"] = keras.saving.deserialize_keras_object(config["generative_model"])
        return cls(**config)

    def next_seed(self, seed):
        """`seed`, or the next seed of the learner's stream when it is None."""
        return self.seed_generator.next() if seed is None else seed


def _check_generative_model(generative_model):
    if isinstance(generative_model, type):
        raise TypeError("generative_model must be an instance of a GenerativeModel, not the class itself. "
                        f"Received: generative_model={generative_model.__name__} (a class); call it to build one")
    if not callable(getattr(generative_model, "joint_distribution", None)):
        raise TypeError(
            "generative_model must be a Keras layer with a joint_distribution() method (see GenerativeModel). "
            f"Received: generative_model of type {type(generative_model).__name__}")


def _finite_or_zero(gradients):
    """The gradients, or zeros for all of them when any is NaN or infinite: a failed step never writes NaN."""
    checks = [tf.reduce_all(tf.math.is_finite(g)) for g in gradients if g is not None]
    if not checks:
        return gradients
    finite = tf.reduce_all(checks)
    return [g if g is None else tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
