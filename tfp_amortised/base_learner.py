"""`Learner`: the Keras shell every learner of the package shares; a subclass supplies only its `objective`.

A learner is a `keras.Model` that trains a `GenerativeModel` with `compile` / `fit`. This base class holds what
every method needs: the model contract check, the observed node, the two seed streams (training; evaluation and
sampling) and their saving hooks, metric trackers, configuration, data checks, the skipping of non-finite steps
and `train_step` / `test_step`. `AmortisedLearner` and the encoder baselines (VAE, IWAE, RWS) differ only in
`objective`.
"""

import collections.abc
import inspect
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfp_amortised import _joint, _observations, distributed
from tfp_amortised.estimator import check_wake_x, sleep
from tfp_amortised.generative import check_trainable

_SEED_STATE = "seed_generator_state"
_EVALUATION_SEED_STATE = "evaluation_seed_generator_state"
# Folded into the evaluation stream's seeds, so that they differ from the training seeds [seed, step].
_EVALUATION_STREAM = 1
# Counts logged by every learner (sums over the epoch's steps, not means).
SKIP_METRICS = ("skipped_steps", "invalid_batches")


class Learner(keras.Model):
    """Base class of the learners: trains a generative model by minimising a subclass's `objective`.

    `train_step` draws a stateless step seed from the learner's training `keras.random.SeedGenerator`, evaluates
    `objective(wake_x, seed, training=True)` inside a `tf.GradientTape`, and applies the gradient of its loss to
    every trainable variable. `test_step` evaluates the objective only (`training=False`), with seeds from a
    second, evaluation stream that `sample`, `posterior_expectation` and `bound` also draw from: what else the
    learner is asked never changes training.

    Skipped steps: a step is skipped, leaving the weights, the optimiser state (moments, `iterations`) and
    `after_train_step`'s state untouched, when its batch is invalid (no rows on any replica; NaN or infinite
    values, also after the cast to the observed node's dtype; non-integer values for an integer observed node) or
    its loss or gradient is NaN or infinite (on any replica: the replicas agree). Its seed is still consumed.
    Two sums over the epoch's steps are logged with the means of `metric_names`: `skipped_steps` (all skipped
    steps) and `invalid_batches` (those skipped for their batch); skipped steps add nothing to the means. `fit`
    warns (`RuntimeWarning`) at its end when any step was skipped, naming the likely causes. Arrays given to
    `fit` are checked before training instead, and refused with a ValueError (`check_data`).

    A subclass sets `metric_names` and implements `objective`; it may implement `after_train_step` (state updated
    once the gradient is applied, such as a moving-average baseline).

    Args:
      generative_model: a `GenerativeModel` instance (a Keras layer that owns the parameters and implements
        `joint_distribution()`); its `observed` attribute names the observed node (default `"x"`), or is a list
        of names: data are then dicts keyed by them (`fit({"x": x, "y": y})`, a `tf.data` dataset of dicts), and
        one-node data may be such a dict too (`tfp_amortised.estimator.check_wake_x`). A
        `tf.Variable` it holds that Keras does not track (so no optimiser would train it) is refused, with its
        attribute path (`tfp_amortised.generative.check_trainable`).
      seed: integer seed of the sampling; the same seed, data and initial weights give the same run, whatever else
        (`sample`, `posterior_expectation`, validation) was asked of the learner during it.
    """

    metric_names = ("loss",)

    def __init__(self, generative_model, seed=None, **kwargs):
        super().__init__(**kwargs)
        _check_generative_model(generative_model)
        check_trainable(generative_model)
        self.generative_model = generative_model
        self.observed = _joint.check_observed(generative_model.joint_distribution(),
                                              getattr(generative_model, "observed", "x"))
        # Two samples of the observed nodes: the shapes and dtypes that data are checked against.
        self._reference_x = _observations.select(sleep(generative_model.joint_distribution(), 2, [0, 0]),
                                                 self.observed)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.evaluation_seed_generator = keras.random.SeedGenerator(seed)  # its seeds are folded: a distinct stream
        self.trackers = {name: keras.metrics.Mean(name) for name in self.metric_names}
        self.trackers.update({name: keras.metrics.Sum(name) for name in SKIP_METRICS})
        self.built = True

    def compile(self, optimizer="rmsprop", *, auto_scale_loss=False, **kwargs):
        """`keras.Model.compile` without loss scaling: the learners compute their loss and gradients in float32
        whatever the global dtype policy, so under `mixed_float16` Keras' default `LossScaleOptimizer` would divide
        gradients that were never scaled (a silently 2^15 times smaller step).

        Raises:
          ValueError: for `auto_scale_loss=True`.
        """
        if auto_scale_loss:
            raise ValueError(f"{type(self).__name__} computes in float32 whatever the dtype policy: loss scaling "
                             "does not apply. Received: auto_scale_loss=True")
        super().compile(optimizer=optimizer, auto_scale_loss=False, **kwargs)

    def compile_from_config(self, config):
        """Keras loading hook (Keras skips it for a custom `compile`): compiles with `get_compile_config()`, every
        optimiser included, and builds the optimisers so their saved state can be loaded."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.build_optimizers()

    @property
    def metrics(self):
        return list(self.trackers.values())

    def joint_distribution(self):
        """The generative model's current `tfd.JointDistribution`."""
        return self.generative_model.joint_distribution()

    def objective(self, wake_x, seed, training=True):
        """The loss to minimise and the values to log, for a batch `wake_x: [M, *event_shape]`.

        Args:
          wake_x: `Tensor[M, *event_shape]` observations, checked against the observed node (with several observed
            nodes, a dict `{node: Tensor[M, *event_shape]}`).
          seed: stateless seed `[2]` of this step.
          training: True in `train_step`, False in `test_step` (evaluation and validation), where a subclass may
            compute diagnostics that the update does not need.

        Returns:
          `(loss, logs)`: a scalar `Tensor` to differentiate (under a `tf.distribute` strategy, this replica's
          share: the replicas' losses add up to the global loss) and a dict `{metric name: scalar Tensor}`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement objective(wake_x, seed, training).")

    def after_train_step(self, logs):
        """Hook run after the gradient step with the objective's logs; nothing by default."""

    def apply_gradients(self, gradients):
        """Applies `gradients` (one per variable of `trainable_variables`, or None) with the optimiser.

        A subclass whose variables have optimisers of their own overrides it, and `build_optimizers`.
        """
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))

    def build_optimizers(self):
        """Builds the optimiser's variables if it has none yet (they cannot be created inside a step's cond)."""
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def train_step(self, data):
        wake_x, valid = self.step_batch(data)
        seed = self.seed_generator.next()
        with tf.GradientTape() as tape:
            loss, logs = self.objective(wake_x, seed, training=True)
        # Dense gradients: a gather from a weight (a mixture's means at sampled components) gives IndexedSlices with
        # repeated indices, for which Keras' sparse Adam squares each slice before summing, not the sum.
        gradients = [None if g is None else tf.convert_to_tensor(g)
                     for g in tape.gradient(loss, self.trainable_variables)]
        valid, finite = _agree(wake_x, valid, [loss, *gradients])
        self.apply_if(valid & finite, gradients, logs)
        return self.update_metrics(logs, valid & finite, valid)

    def test_step(self, data):
        wake_x, valid = self.step_batch(data)
        loss, logs = self.objective(wake_x, self.next_seed(None), training=False)
        valid, finite = _agree(wake_x, valid, [loss])
        return self.update_metrics(logs, valid & finite, valid)

    def apply_if(self, apply, gradients, logs):
        """Applies `gradients` and runs `after_train_step(logs)` when the scalar bool `apply` is true; else nothing.

        Works eagerly, in a `tf.function`, under XLA and under `tf.distribute` strategies. The optimiser is built
        first, as variables cannot be created inside a `tf.cond` branch. Strategies that need a `merge_call`
        to apply gradients (MirroredStrategy) cannot have it inside a `tf.cond` in the replica context: there the
        cond runs in the cross-replica context and calls the update for each replica inside it, as Keras'
        `LossScaleOptimizer` does; `apply` is the same on every replica (`_agree`).
        """
        self.build_optimizers()

        def update(gradients, logs):
            self.apply_gradients(gradients)
            self.after_train_step(logs)

        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(apply, lambda: update(gradients, logs), lambda: None)
            return

        def cross_replica(strategy, apply, gradients, logs):
            apply = strategy.experimental_local_results(apply)[0]
            tf.cond(apply, lambda: strategy.extended.call_for_each_replica(update, args=(gradients, logs)),
                    lambda: None)

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(apply, gradients, logs))

    def update_metrics(self, logs, applied=True, valid=True):
        """Adds a step's values to the trackers; returns as `fit` logs the results of the trackers the step logs
        (a metric the objective computes only in evaluation is not reported as 0 in training) and the skip counts.

        Args:
          logs: dict `{metric name: scalar Tensor}` of the step (the `objective`'s).
          applied: scalar bool, false for a skipped step, whose values are left out of the means.
          valid: scalar bool, false when the step was skipped for its batch.
        """
        replica_id, _ = distributed.replica_id_and_count()
        once = tf.cast(tf.equal(replica_id, 0), tf.float32)  # the replicas' updates of a Sum add up
        for name, tracker in self.trackers.items():
            if name in logs:
                value = tf.convert_to_tensor(logs[name])
                tracker.update_state(tf.where(applied, value, tf.zeros_like(value)),
                                     sample_weight=tf.cast(applied, value.dtype))
        self.trackers["skipped_steps"].update_state(once * (1. - tf.cast(applied, tf.float32)))
        self.trackers["invalid_batches"].update_state(once * (1. - tf.cast(valid, tf.float32)))
        names = [name for name in self.trackers if name in logs or name in SKIP_METRICS]
        return distributed.as_logs(dict(zip(names, _global_results([self.trackers[name] for name in names]))))

    def step_batch(self, data):
        """The observations of a `fit` batch for a step, and whether the batch is valid.

        Unlike `wake_batch`, never raises for the values (a dataset's batch is only seen when traced): NaN or
        infinite values (also those of float data beyond the range of the observed node's float dtype, after the
        cast) are replaced by zeros and non-integer values for an integer node are flagged, so the objective stays
        finite and the step is skipped and counted (`Learner`).

        Returns:
          `(wake_x, valid)`: `Tensor[M, *event_shape]` (a dict of them for several observed nodes) and a scalar
          bool `Tensor` (this replica's batch only).
        """
        wake_x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _refuse_sample_weight(self, sample_weight)
        wake_x = _observations.as_named(_observations.convert(wake_x, self.observed, "x"), self.observed)
        reference = _observations.as_named(self._reference_x, self.observed)
        repaired = {name: _repaired(value, reference[name].dtype) for name, value in wake_x.items()}
        wake_x = _observations.select({name: value for name, (value, _) in repaired.items()}, self.observed)
        valid = tf.reduce_all([node_valid for _, node_valid in repaired.values()])
        return check_wake_x(wake_x, self._reference_x, self.observed), valid

    def wake_batch(self, data):
        """The observations of a `fit` batch (`x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`), checked.

        Raises a ValueError when the batch carries sample weights, which the learners do not use.
        """
        wake_x, _, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        _refuse_sample_weight(self, sample_weight)
        return check_wake_x(wake_x, self._reference_x, self.observed)

    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit`, after checking `batch_size` and array data (`check_data`), with a callback that warns
        at the end when steps were skipped (`Learner`)."""
        arguments = inspect.signature(keras.Model.fit).bind(self, x, *args, **kwargs).arguments
        _refuse_sample_weight(self, arguments.get("sample_weight"))  # Keras drops it when y is None
        batch_size = arguments.get("batch_size")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None. Received: batch_size={batch_size!r}")
        self.check_data(x, "x")
        validation_data = arguments.get("validation_data")
        self.check_data(keras.utils.unpack_x_y_sample_weight(validation_data)[0], "validation_data")
        arguments["callbacks"] = [*(arguments.get("callbacks") or []), *self.fit_callbacks()]
        del arguments["self"]
        return super().fit(**arguments)

    def evaluate(self, x=None, *args, **kwargs):
        """`keras.Model.evaluate`, after checking array data (`check_data`)."""
        self.check_data(x, "x")
        return super().evaluate(x, *args, **kwargs)

    def fit_callbacks(self):
        """Callbacks `fit` adds to the user's: the warning about skipped steps (a subclass may add its own)."""
        return [_SkippedStepsWarning()]

    def check_data(self, data, argument):
        """Checks array data (arrays, Tensors, lists and dicts of them: `check_observations`, and at least one row)
        before `fit`, `evaluate` and `predict`; datasets and generators are checked batch by batch in the steps,
        which skip and count an invalid batch."""
        if not isinstance(data, (np.ndarray, tf.Tensor, tf.RaggedTensor, list, collections.abc.Mapping)):
            return
        data = check_observations(data, self._reference_x, self.observed, argument)
        for name, value in _observations.as_named(data, self.observed).items():
            if value.shape.rank and value.shape[0] == 0:
                node = "" if isinstance(self.observed, str) else f"[{name!r}]"
                raise ValueError(f"{argument}{node} has no rows: there are no observations. "
                                 f"Received: {argument}{node}.shape={tuple(value.shape)}")

    def save_own_variables(self, store):
        """Keras saving hook: also stores both seed states, so a restored learner continues its seed streams."""
        super().save_own_variables(store)
        store[_SEED_STATE] = self.seed_generator.state
        store[_EVALUATION_SEED_STATE] = self.evaluation_seed_generator.state

    def load_own_variables(self, store):
        """Keras loading hook: restores the seed states (either is absent from files written before it was saved)."""
        keys = list(store.keys())
        for key, generator in ((_SEED_STATE, self.seed_generator),
                               (_EVALUATION_SEED_STATE, self.evaluation_seed_generator)):
            if key in keys:
                generator.state.assign(store[key])
        super().load_own_variables({key: store[key] for key in keys
                                    if key not in (_SEED_STATE, _EVALUATION_SEED_STATE)})

    def get_config(self):
        return {**super().get_config(),
                "generative_model": keras.saving.serialize_keras_object(self.generative_model), "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["generative_model"] = keras.saving.deserialize_keras_object(config["generative_model"])
        return cls(**config)

    def next_seed(self, seed):
        """`seed`, or when it is None the next seed `int32[2]` of the evaluation stream (`sample`, `bound`,
        `test_step`), which training never reads: evaluating does not change the training run."""
        if seed is not None:
            return seed
        return tf.random.experimental.stateless_fold_in(tf.cast(self.evaluation_seed_generator.next(), tf.int32),
                                                         _EVALUATION_STREAM)


def _check_generative_model(generative_model):
    if isinstance(generative_model, type):
        raise TypeError("generative_model must be an instance of a GenerativeModel, not the class itself. "
                        f"Received: generative_model={generative_model.__name__} (a class); call it to build one")
    if not callable(getattr(generative_model, "joint_distribution", None)):
        raise TypeError(
            "generative_model must be a Keras layer with a joint_distribution() method (see GenerativeModel). "
            f"Received: generative_model of type {type(generative_model).__name__}")


def _refuse_sample_weight(learner, sample_weight):
    if sample_weight is not None:
        raise ValueError(f"{type(learner).__name__} does not weight data points: pass the observations only. "
                         "Received: sample_weight")


def _global_results(trackers):
    """The results of `Mean` and `Sum` trackers over every replica: `fit` averages the replicas' logs, and a
    replica's tracker holds only its own updates. One all-reduce of the local totals and counts; with one replica,
    the trackers' results."""
    _, num_replicas = distributed.replica_id_and_count()
    if num_replicas == 1:
        return [tracker.result() for tracker in trackers]
    parts = distributed.total(tf.stack([[tf.cast(tracker.total, tf.float32),
                                         tf.cast(getattr(tracker, "count", 1.), tf.float32)] for tracker in trackers]))
    return [parts[i, 0] if isinstance(tracker, keras.metrics.Sum) else tf.math.divide_no_nan(parts[i, 0], parts[i, 1])
            for i, tracker in enumerate(trackers)]


def _repaired(wake_x, dtype):
    """One node's batch for `step_batch`: `(values, valid)`, the values cast to the node's float `dtype` with NaN or
    infinite values replaced by zeros; `valid` false if there were any, or non-integer values for an integer node."""
    if not wake_x.dtype.is_floating:
        return wake_x, tf.constant(True)
    if dtype.is_floating:
        wake_x = tf.cast(wake_x, dtype)
    finite = tf.math.is_finite(wake_x)
    valid = tf.reduce_all(finite)
    wake_x = tf.where(finite, wake_x, tf.zeros_like(wake_x))
    if not dtype.is_floating:
        valid &= tf.reduce_all(tf.equal(wake_x, tf.round(wake_x)))
    return wake_x, valid


def _agree(wake_x, valid, values):
    """`(valid, finite)` of a step, the same on every replica (one all-reduce): the batch is valid when every
    replica's is and there is at least one row in all; finite when every `values` Tensor of every replica is."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in values if v is not None])
    counts = distributed.total(tf.stack([tf.cast(_observations.num_rows(wake_x), tf.float32),
                                         1. - tf.cast(valid, tf.float32), 1. - tf.cast(finite, tf.float32)]))
    return (counts[0] > 0) & tf.equal(counts[1], 0.), tf.equal(counts[2], 0.)


def check_observations(x, reference_x, observed, argument="x"):
    """Checks observations eagerly against samples of the observed node; returns them as a Tensor.

    `check_wake_x` (shape, dtype, finite values), then the values the cast to the node's dtype would corrupt.

    Args:
      x: `[M, *event_shape]` observations (or a one-key dict of them), or with several observed nodes a dict
        `{node: [M, *event_shape]}` keyed by exactly them.
      reference_x: `Tensor[B, *event_shape]` samples of the observed node (its dtype and event shape), or a dict
        of them for several.
      observed: name of the observed node, or a tuple of names.
      argument: the argument's name in the messages.

    Raises:
      ValueError: naming `argument` and the value, for float values beyond the range of the node's float dtype
        (which would become infinite) and non-integer values for an integer node (which would be truncated);
        the errors of `check_wake_x`.
    """
    try:
        x = check_wake_x(x, reference_x, observed)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{argument}: {error}") from None
    reference = _observations.as_named(reference_x, observed)
    for name, value in _observations.as_named(x, observed).items():
        _check_cast(value, reference[name].dtype, name, argument)
    return x


def _check_cast(x, dtype, observed, argument):
    """A ValueError naming `argument` and the node `observed` when the cast of `x` to the node's `dtype` would
    corrupt values (`check_observations`)."""
    if not x.dtype.is_floating or tf.size(x) == 0:
        return
    if dtype.is_floating and x.dtype.size > dtype.size:
        largest = float(tf.reduce_max(tf.abs(x)))
        if largest > float(dtype.max):
            raise ValueError(f"{argument} holds values beyond the range of the observed node {observed!r} "
                             f"({dtype.name}, largest {dtype.max:.4g}), which would become infinite. "
                             f"Received: {argument} with a value of magnitude {largest:.6g}")
    if not dtype.is_floating:
        fractional = tf.boolean_mask(x, tf.not_equal(x, tf.round(x)))
        if tf.size(fractional):
            raise ValueError(f"{argument} holds non-integer values for the observed node {observed!r}, whose dtype is "
                             f"{dtype.name}: they would be truncated. Received: {argument} with the value "
                             f"{float(fractional[0])!r}")


class _SkippedStepsWarning(keras.callbacks.Callback):
    """Warns (`RuntimeWarning`) at the end of `fit` when steps were skipped (`Learner`), with their epochs and
    likely causes."""

    def __init__(self):
        super().__init__()
        self.skipped = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for prefix, kind in (("", "training"), ("val_", "validation")):
            skipped = float(np.sum(logs.get(f"{prefix}skipped_steps", 0.)))
            if skipped:
                invalid = float(np.sum(logs.get(f"{prefix}invalid_batches", 0.)))
                self.skipped.append(f"epoch {epoch + 1}: {skipped:.0f} {kind} steps, {invalid:.0f} for their batch")

    def on_train_end(self, logs=None):
        if self.skipped:
            warnings.warn(
                f"{type(self.model).__name__}.fit skipped steps ({'; '.join(self.skipped)}); a skipped step changes "
                "neither the weights nor the optimiser state, and is left out of the epoch's means (logged as "
                "skipped_steps and invalid_batches). Invalid batches: a batch with no rows, NaN or infinite values "
                "(a tf.data pipeline or generator is only checked batch by batch, while training; float64 data "
                "beyond the float32 range become infinite), or non-integer values for an integer observed node. "
                "The other skips had a NaN or infinite loss or gradient: non-finite sleep samples or log-density "
                "(parameters at extreme values, observations outside the model's support).",
                RuntimeWarning, stacklevel=2)
