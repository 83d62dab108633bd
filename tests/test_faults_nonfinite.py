"""Non-finite steps: a step whose batch holds NaN or whose loss or gradient is not finite is skipped, leaving the
weights and the whole optimiser state (Adam's moments, `iterations`) untouched, is counted in the logs and named in
a warning at the end of `fit`, eagerly, in a `tf.function` and under XLA."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel
from tfp_amortised.ridge import KernelRidge

tfd = tfp.distributions
MODES = {"eager": {"run_eagerly": True}, "graph": {}, "xla": {"jit_compile": True}}
BATCH, GOOD_BATCHES = 8, 5


@pytest.fixture(name="data", scope="module")
def _data():
    return FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(BATCH * GOOD_BATCHES, seed=[1, 2])[1].numpy()


def _learner(mode, model=None):
    learner = AmortisedLearner(model or FactorAnalysisModel(1, 2, seed=1), num_sleep=32, num_holdout=8, seed=3,
                               form="joint", regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.Adam(0.05), **MODES[mode])
    return learner


def _state(learner):
    return [v.numpy().copy() for v in learner.trainable_variables + learner.optimizer.variables]


def _assert_same_state(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("mode", MODES)
def test_nan_batches_of_a_dataset_are_skipped_without_moving_weights_or_adam(data, mode):
    """Five good batches then five all-NaN ones (a tf.data pipeline, checked only while training): exactly the
    weights, Adam moments and iteration count of the five good steps alone, the epoch's mean loss of those steps,
    5 skipped steps counted as invalid batches, and a warning naming the pipeline. (With zero gradients passed to
    Adam instead, its momentum moved the weights by about 0.1 on each NaN batch and `iterations` counted them.)"""
    clean = _learner(mode)
    clean_history = clean.fit(tf.data.Dataset.from_tensor_slices(data).batch(BATCH), epochs=1, verbose=0)
    poisoned_data = np.concatenate([data, np.full_like(data, np.nan)])
    learner = _learner(mode)
    with pytest.warns(RuntimeWarning, match="skipped steps .*epoch 1: 5 training steps, 5 for their batch.*tf.data"):
        history = learner.fit(tf.data.Dataset.from_tensor_slices(poisoned_data).batch(BATCH), epochs=1, verbose=0)

    _assert_same_state(_state(learner), _state(clean))
    assert int(learner.optimizer.iterations) == GOOD_BATCHES
    assert history.history["skipped_steps"] == [5.] and history.history["invalid_batches"] == [5.]
    assert clean_history.history["skipped_steps"] == [0.]
    np.testing.assert_array_equal(history.history["loss"], clean_history.history["loss"])


@tf.custom_gradient
def _nan_gradient_if(value, poisoned):
    """`value`, whose gradient is NaN when `poisoned` (samples and log-density stay finite)."""
    return tf.identity(value), lambda upstream: (upstream * tf.where(poisoned, np.float32(np.nan), 1.), None)


class _PoisonableModel(GenerativeModel):
    """z ~ N(0, 1);  x | z ~ N(w z + b, I): the gradient of `w` is NaN once the non-trainable `poison` is 1."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.w = self.add_weight(shape=(2,), initializer="ones", name="w")
        self.b = self.add_weight(shape=(2,), initializer="zeros", name="b")
        self.poison = self.add_weight(shape=(), initializer="zeros", trainable=False, name="poison")

    def joint_distribution(self):
        w, b = _nan_gradient_if(self.w.value, self.poison.value > 0), self.b.value

        def model():
            z = yield tfd.JointDistributionCoroutine.Root(tfd.Normal(0., 1., name="z"))
            yield tfd.Independent(tfd.Normal(w * z[..., None] + b, 1.), 1, name="x")

        return tfd.JointDistributionCoroutine(model)


@pytest.mark.parametrize("mode", MODES)
def test_a_nan_gradient_skips_the_step_and_is_not_counted_as_invalid_data(data, mode):
    """After a clean epoch the model's gradient turns NaN: the next epoch changes neither the weights nor Adam's
    state, and logs 5 skipped steps of which no invalid batch; the warning names the non-finite loss or gradient."""
    learner = _learner(mode, _PoisonableModel(name="poisonable"))
    learner.fit(data, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    before = _state(learner)
    learner.generative_model.poison.assign(1.)
    with pytest.warns(RuntimeWarning,
                      match="epoch 1: 5 training steps, 0 for their batch.*NaN or infinite loss or gradient"):
        history = learner.fit(data, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    _assert_same_state(_state(learner), before)
    assert int(learner.optimizer.iterations) == GOOD_BATCHES
    assert history.history["skipped_steps"] == [5.] and history.history["invalid_batches"] == [0.]


def test_train_step_called_directly_skips_a_nan_batch_before_the_optimizer_is_built(data):
    """An unbuilt optimiser is built before the skip (its variables cannot be created inside a cond branch): a
    first step on a NaN batch leaves the weights as initialised and `iterations` at 0."""
    learner = _learner("eager")
    weights = [v.numpy().copy() for v in learner.trainable_variables]
    logs = learner.train_step(tf.fill([BATCH, 2], np.float32(np.nan)))
    assert learner.optimizer.built and int(learner.optimizer.iterations) == 0
    _assert_same_state([v.numpy() for v in learner.trainable_variables], weights)
    assert float(logs["skipped_steps"]) == 1. and float(logs["invalid_batches"]) == 1.
    learner.train_step(data[:BATCH])
    assert int(learner.optimizer.iterations) == 1


def test_nan_validation_batches_are_left_out_of_the_validation_means(data):
    """A NaN validation batch is skipped and counted (val_skipped_steps) instead of turning val_loss into NaN."""
    validation = np.concatenate([data[:BATCH], np.full_like(data[:BATCH], np.nan)])
    learner = _learner("graph")
    with pytest.warns(RuntimeWarning, match="1 validation steps, 1 for their batch"):
        history = learner.fit(data, batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
                              validation_data=tf.data.Dataset.from_tensor_slices(validation).batch(BATCH))
    assert history.history["val_skipped_steps"] == [1.] and history.history["skipped_steps"] == [0.]
    assert np.isfinite(history.history["val_loss"]).all()
