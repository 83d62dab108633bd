"""Same seed, same run: what else is asked of the learner (samples, posterior expectations, validation) draws from
its evaluation seed stream, never from the training one, so it never changes the trained weights."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel
from tfp_amortised.ridge import KernelRidge


@pytest.fixture(name="data", scope="module")
def _data():
    return FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(64, seed=[1, 2])[1].numpy()


def _learner(**compile_arguments):
    learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=32, num_holdout=8, seed=3, form="joint",
                               regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.Adam(0.05), **compile_arguments)
    return learner


class _AskTheLearner(keras.callbacks.Callback):
    """Samples and estimates posterior expectations with the learner's default seeds after every batch."""

    def on_train_batch_end(self, batch, logs=None):
        self.model.sample(5)
        self.model.posterior_expectation(np.zeros([3, 2], np.float32), lambda sample: sample["z"], num_sleep=16)


@pytest.mark.parametrize("run_eagerly", [True, False], ids=["eager", "graph"])
def test_sampling_and_validation_during_fit_leave_the_trained_weights_identical(data, run_eagerly):
    """A fit interleaved with `sample`, `posterior_expectation` (every batch) and validation (every epoch) ends on
    exactly the weights of a plain fit: the same seeds, the same float operations."""
    plain = _learner(run_eagerly=run_eagerly)
    plain.fit(data, batch_size=16, epochs=2, shuffle=False, verbose=0)
    busy = _learner(run_eagerly=run_eagerly)
    busy.sample(7)
    busy.fit(data, batch_size=16, epochs=2, shuffle=False, verbose=0, validation_data=data[:16],
             callbacks=[_AskTheLearner()])
    for expected, actual in zip(plain.trainable_variables, busy.trainable_variables):
        np.testing.assert_array_equal(actual.numpy(), expected.numpy())
    np.testing.assert_array_equal(busy.seed_generator.state.numpy(), plain.seed_generator.state.numpy())


def test_evaluation_seeds_differ_from_training_seeds_and_repeat_with_the_seed():
    """The evaluation stream is its own: its first seed is not the training stream's, and the same learner seed
    gives the same samples."""
    first, second = _learner(), _learner()
    np.testing.assert_array_equal(first.sample(4)["x"], second.sample(4)["x"])
    training_seed = tf.cast(first.seed_generator.next(), tf.int32)  # [3, 0], the first step's
    assert not np.array_equal(first.next_seed(None).numpy(), training_seed.numpy())
    assert not np.array_equal(second.sample(4)["x"], first.sample(4, seed=training_seed)["x"])


def test_both_seed_states_are_saved_and_restored(data, tmp_path):
    """A saved learner restores the evaluation seed state with the training one: the loaded learner's next
    default-seeded sample is the original's."""
    learner = _learner()
    learner.fit(data, batch_size=16, epochs=1, verbose=0)
    learner.sample(3)
    learner.save(tmp_path / "learner.keras")
    loaded = keras.models.load_model(tmp_path / "learner.keras")
    np.testing.assert_array_equal(loaded.evaluation_seed_generator.state.numpy(),
                                  learner.evaluation_seed_generator.state.numpy())
    np.testing.assert_array_equal(loaded.sample(3)["x"], learner.sample(3)["x"])
    assert "lambda" not in json.dumps(loaded.get_config())
