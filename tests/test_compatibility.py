"""Files written by release 0.1.0 load in this release and continue the run they were saved from.

The fixtures (tests/fixtures, made by the script beside them with tfp_amortised 0.1.0) hold an `AmortisedLearner`
whose regression layer was then stored under the attribute `ridge` with a third, diagnostic variable, and a
`ReweightedWakeSleepLearner` written before the learners shared a base class.
"""

import importlib
import json
import pathlib

import keras
import numpy as np
import pytest

from tfp_amortised import AmortisedLearner, KernelRidge
from tfp_amortised.baselines import ReweightedWakeSleepLearner

importlib.import_module("tfp_amortised.models")  # registers the model classes the files name, as a user's script would

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(name="reference", scope="module")
def _reference():
    return json.loads((FIXTURES / "reference_0.1.0.json").read_text())


@pytest.fixture(name="data", scope="module")
def _data():
    return dict(np.load(FIXTURES / "data_0.1.0.npz"))


def test_amortised_learner_of_0_1_0_loads_and_continues_the_same_run(reference, data):
    learner = keras.models.load_model(FIXTURES / "amortised_learner_0.1.0.keras")
    assert isinstance(learner, AmortisedLearner) and isinstance(learner.regression, KernelRidge)
    assert (learner.regression.kernel_name, learner.regression.bandwidth_rule) == ("matern32", 0.8)
    assert learner.regression.solver == "cholesky"  # saved by name: the default's change to "auto" leaves it
    np.testing.assert_allclose(float(learner.regression.ridge), 3e-3, rtol=1e-6)
    assert (learner.num_sleep, learner.form, learner.num_holdout, learner.seed) == (96, "conditional", 16, 3)
    for saved, loaded in zip(reference["amortised"]["weights"], learner.trainable_variables):
        np.testing.assert_array_equal(loaded.numpy(), np.asarray(saved, np.float32))
    np.testing.assert_array_equal(learner.seed_generator.state.numpy(), reference["amortised"]["seed_state"])
    assert int(learner.optimizer.iterations) == reference["amortised"]["iterations"]
    # One more unshuffled epoch: the same sleep draws, regression and Adam state as 0.1.0's own continuation, so
    # the weights agree up to float32 reassociation in the reorganised step (measured equal; atol 1e-6).
    learner.fit(data["fa"], batch_size=64, epochs=1, shuffle=False, verbose=0)
    for expected, resumed in zip(reference["amortised"]["weights_after_one_more_epoch"],
                                 learner.trainable_variables):
        np.testing.assert_allclose(resumed.numpy(), expected, atol=1e-6)


def test_reweighted_wake_sleep_learner_of_0_1_0_loads(reference, data):
    learner = keras.models.load_model(FIXTURES / "reweighted_wake_sleep_learner_0.1.0.keras")
    assert isinstance(learner, ReweightedWakeSleepLearner)
    for saved, loaded in zip(reference["rws"]["weights"], learner.trainable_variables):
        np.testing.assert_array_equal(loaded.numpy(), np.asarray(saved, np.float32))
    np.testing.assert_allclose([float(learner.baseline_total), float(learner.baseline_weight)],
                               reference["rws"]["baseline"], rtol=1e-6)
    assert int(learner.optimizer.iterations) == reference["rws"]["iterations"]
    history = learner.fit(data["mixture"], batch_size=64, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
