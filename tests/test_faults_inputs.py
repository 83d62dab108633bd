"""Values that would make the estimate meaningless are refused, naming the argument and the value (arrays, before
training), or skipped and counted (a dataset's batches, seen only while training: see test_faults_nonfinite.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import ridge_expectation, surrogate_log_marginal
from tfp_amortised.generative import GenerativeModel
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel
from tfp_amortised.ridge import KernelRidge

tfd = tfp.distributions
BATCH = 8


@pytest.fixture(name="data", scope="module")
def _data():
    return FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(4 * BATCH, seed=[1, 2])[1].numpy()


def _learner(model=None, **compile_arguments):
    learner = AmortisedLearner(model or FactorAnalysisModel(1, 2, seed=1), num_sleep=32, num_holdout=8, seed=3,
                               form="joint", regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.Adam(0.05), **compile_arguments)
    return learner


def _weights(learner):
    return [v.numpy() for v in learner.trainable_variables + learner.optimizer.variables]


@pytest.mark.parametrize("num_sleep", [0, 1, -5, 2.5, True])
def test_posterior_expectation_refuses_a_bad_num_sleep_instead_of_the_default(num_sleep):
    with pytest.raises(ValueError, match=f"num_sleep must be an integer >= 2. Received: num_sleep={num_sleep!r}"):
        _learner().posterior_expectation(np.zeros([3, 2], np.float32), lambda sample: sample["z"],
                                         num_sleep=num_sleep)


@pytest.mark.parametrize("batch_size", [-1, 0, 2.5])
def test_fit_refuses_a_batch_size_that_is_not_a_positive_integer(data, batch_size):
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer or None. "
                                         f"Received: batch_size={batch_size!r}"):
        _learner().fit(data, batch_size=batch_size, epochs=1, verbose=0)


def test_fit_refuses_an_array_with_no_rows():
    with pytest.raises(ValueError, match=r"x has no rows.*Received: x.shape=\(0, 2\)"):
        _learner().fit(np.zeros([0, 2], np.float32), epochs=1, verbose=0)


@pytest.mark.parametrize("run_eagerly", [True, False], ids=["eager", "graph"])
def test_an_empty_batch_of_a_dataset_is_skipped_not_averaged_into_nan(data, run_eagerly):
    """A dataset yielding a batch with no rows (its mean loss would be NaN, its gradient zero, and Adam would still
    step on its momentum): skipped and counted as an invalid batch; the run is the run without it."""
    clean = _learner(run_eagerly=run_eagerly)
    clean_history = clean.fit(tf.data.Dataset.from_tensor_slices(data).batch(BATCH), epochs=1, verbose=0)
    with_empty = tf.data.Dataset.from_tensor_slices(data).batch(BATCH).concatenate(
        tf.data.Dataset.from_tensors(np.zeros([0, 2], np.float32)))
    learner = _learner(run_eagerly=run_eagerly)
    with pytest.warns(RuntimeWarning, match="1 training steps, 1 for their batch.*a batch with no rows"):
        history = learner.fit(with_empty, epochs=1, verbose=0)
    assert history.history["invalid_batches"] == [1.]
    np.testing.assert_array_equal(history.history["loss"], clean_history.history["loss"])
    for expected, actual in zip(_weights(clean), _weights(learner)):
        np.testing.assert_array_equal(actual, expected)


class _CountModel(GenerativeModel):
    """z ~ N(0, 1);  x_d | z ~ Bernoulli(sigmoid(w_d z + b_d)) as int32: an integer observed node."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.w = self.add_weight(shape=(2,), initializer="ones", name="w")
        self.b = self.add_weight(shape=(2,), initializer="zeros", name="b")

    def joint_distribution(self):
        w, b = self.w.value, self.b.value

        def model():
            z = yield tfd.JointDistributionCoroutine.Root(tfd.Normal(0., 1., name="z"))
            yield tfd.Independent(tfd.Bernoulli(logits=w * z[..., None] + b, dtype=tf.int32), 1, name="x")

        return tfd.JointDistributionCoroutine(model)


def _binary_data(fraction=None):
    x = np.array([[0., 1.], [1., 1.], [0., 0.], [1., 0.]] * 4, np.float32)
    if fraction is not None:
        x[5, 1] = fraction
    return x


def test_non_integer_values_for_an_integer_observed_node_are_refused_naming_the_node_and_value():
    """0.5 for an int32 Bernoulli node would be truncated to 0 by the cast: refused by fit and
    posterior_expectation, naming the node and the value; integral floats are accepted."""
    learner = _learner(_CountModel(name="counts"))
    with pytest.raises(ValueError, match="x holds non-integer values for the observed node 'x', whose dtype is int32"
                                         r".*Received: x with the value 0.5"):
        learner.fit(_binary_data(0.5), batch_size=BATCH, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="non-integer values for the observed node 'x'.*value 0.25"):
        learner.posterior_expectation(_binary_data(0.25), lambda sample: sample["z"])
    learner.fit(_binary_data(), batch_size=BATCH, epochs=1, verbose=0)


def test_non_integer_values_in_a_dataset_for_an_integer_node_are_skipped_and_counted():
    """In a dataset (checked only when traced) the batch holding 0.5 is skipped as invalid; the warning names it."""
    learner = _learner(_CountModel(name="counts"))
    with pytest.warns(RuntimeWarning, match="1 training steps, 1 for their batch.*non-integer values"):
        history = learner.fit(tf.data.Dataset.from_tensor_slices(_binary_data(0.5)).batch(BATCH), epochs=1, verbose=0)
    assert history.history["invalid_batches"] == [1.] and int(learner.optimizer.iterations) == 1


def test_float64_values_beyond_float32_are_refused_naming_the_value(data):
    """1e39 in float64 data for a float32 node would become inf after the cast: refused, naming its magnitude."""
    x = data.astype(np.float64)
    x[3, 1] = -1e39
    with pytest.raises(ValueError, match=r"x holds values beyond the range of the observed node 'x' \(float32.*"
                                         "Received: x with a value of magnitude 1e\\+39"):
        _learner().fit(x, batch_size=BATCH, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="beyond the range .*magnitude 1e\\+39"):
        _learner().posterior_expectation(x, lambda sample: sample["z"])


def test_float64_values_beyond_float32_in_a_dataset_are_skipped_and_counted(data):
    x = data.astype(np.float64)
    x[3, 1] = 1e39
    learner = _learner()
    with pytest.warns(RuntimeWarning, match="1 training steps, 1 for their batch.*float64 data beyond the float32"):
        history = learner.fit(tf.data.Dataset.from_tensor_slices(x).batch(BATCH), epochs=1, verbose=0)
    assert history.history["invalid_batches"] == [1.] and int(learner.optimizer.iterations) == 3


RAGGED = {"RaggedTensor": lambda: tf.ragged.constant([[0.1, 0.2], [0.3]]),
          "list": lambda: [[0.1, 0.2], [0.3]],
          "object array": lambda: np.array([np.zeros(2), np.zeros(1)], dtype=object)}
RAGGED_MESSAGE = "is ragged \\(rows of unequal lengths\\), which is not supported"


@pytest.mark.parametrize("kind", RAGGED)
@pytest.mark.parametrize("entry", ["fit", "validation_data", "evaluate", "predict", "posterior_expectation",
                                   "posterior_mean", "fit dict"])
def test_ragged_data_are_refused_naming_the_argument(kind, entry):
    learner, ragged = _learner(), RAGGED[kind]()
    calls = {
        "fit": (lambda: learner.fit(ragged, verbose=0), "x"),
        "validation_data": (lambda: learner.fit(np.zeros([4, 2], np.float32), validation_data=(ragged, None),
                                                verbose=0), "validation_data"),
        "evaluate": (lambda: learner.evaluate(ragged, verbose=0), "x"),
        "predict": (lambda: learner.predict(ragged, verbose=0), "x"),
        "posterior_expectation": (lambda: learner.posterior_expectation(ragged, lambda sample: sample["z"]), "x"),
        "posterior_mean": (lambda: learner.posterior_mean(ragged), "wake_x"),
        "fit dict": (lambda: learner.fit({"x": ragged}, verbose=0), r"x: wake_x\['x'\]"),
    }
    call, argument = calls[entry]
    with pytest.raises(ValueError, match=f"{argument}[: wake_x]* {RAGGED_MESSAGE}"):
        call()


@pytest.mark.parametrize("kind", RAGGED)
def test_ragged_inputs_of_the_functions_are_refused_naming_the_argument(kind):
    model = FactorAnalysisModel(1, 2, seed=1)
    with pytest.raises(ValueError, match=f"wake_x {RAGGED_MESSAGE}"):
        surrogate_log_marginal(model.joint_distribution, RAGGED[kind](), num_sleep=8, seed=[1, 2])
    with pytest.raises(ValueError, match=f"sleep_x {RAGGED_MESSAGE}"):
        ridge_expectation(RAGGED[kind](), np.zeros([4, 2]), np.zeros([2]))
    with pytest.raises(ValueError, match=f"query_x {RAGGED_MESSAGE}"):
        ridge_expectation(np.zeros([2, 2]), RAGGED[kind](), np.zeros([2]))
