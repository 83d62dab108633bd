"""Keras saving of `AmortisedLearner`: `.keras` round trip of the learner, its model, ridge and optimiser state."""

import json

import keras
import numpy as np
import pytest

from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel, GaussianMixtureModel
from tfp_amortised.ridge import KernelRidge

MODELS = {
    "factor_analysis": lambda: FactorAnalysisModel(1, 2, seed=1),
    "gaussian_mixture": lambda: GaussianMixtureModel(2, 2, seed=1),
}


def _learner(model_name, form):
    learner = AmortisedLearner(MODELS[model_name](), num_sleep=96, form=form, num_holdout=16, seed=3,
                               regression=KernelRidge(kernel="matern32", ridge=3e-3))
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    return learner


def _data(model_name):
    return MODELS[model_name]().joint_distribution().sample(128, seed=[1, 2])[1].numpy()


@pytest.mark.parametrize("model_name, form", [("gaussian_mixture", "conditional")])  # FA/joint: test_resume.py
def test_loaded_learner_continues_fit_exactly(model_name, form, tmp_path):
    """Fit 2 epochs, save, load, fit 1 more: the same weights as 3 uninterrupted epochs.

    The weights, the Adam moments and step count and the sleep seed state are restored, and the data are not
    shuffled, so the two runs do the same float operations: equal to float32 round-off (atol 1e-6).
    """
    x = _data(model_name)
    uninterrupted = _learner(model_name, form)
    uninterrupted.fit(x, batch_size=64, epochs=3, shuffle=False, verbose=0)

    first = _learner(model_name, form)
    first.fit(x, batch_size=64, epochs=2, shuffle=False, verbose=0)
    first.save(tmp_path / "learner.keras")
    loaded = keras.models.load_model(tmp_path / "learner.keras")
    assert int(loaded.optimizer.iterations) == 4
    np.testing.assert_array_equal(loaded.seed_generator.state.numpy(), first.seed_generator.state.numpy())
    for saved, restored in zip(first.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    loaded.fit(x, batch_size=64, epochs=1, shuffle=False, verbose=0)

    for expected, resumed in zip(uninterrupted.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(resumed.numpy(), expected.numpy(), atol=1e-6)


def test_config_round_trip_keeps_hyperparameters(tmp_path):
    """The loaded learner has the same generative model, ridge and estimator settings; the config is plain JSON."""
    learner = AmortisedLearner(GaussianMixtureModel(3, 2, scale=0.5, learn_scale=False, seed=4), num_sleep=50,
                               form="conditional", num_holdout=8, seed=11,
                               regression=KernelRidge(kernel="matern52", bandwidth=0.7, ridge=2e-2))
    learner.compile(optimizer=keras.optimizers.Adam(0.01))
    learner.optimizer.build(learner.trainable_variables)
    learner.save(tmp_path / "learner.keras")
    loaded = keras.models.load_model(tmp_path / "learner.keras")

    config = json.dumps(loaded.get_config())  # serialisable: no lambdas or Python objects
    assert "lambda" not in config
    assert isinstance(loaded.generative_model, GaussianMixtureModel)
    assert (loaded.num_sleep, loaded.form, loaded.num_holdout, loaded.seed) == (50, "conditional", 8, 11)
    assert (loaded.regression.kernel_name, loaded.regression.bandwidth_rule) == ("matern52", 0.7)
    np.testing.assert_allclose(float(loaded.regression.ridge), 2e-2, rtol=1e-6)
    np.testing.assert_allclose(float(loaded.regression.bandwidth), 0.7, rtol=1e-6)
    assert not loaded.generative_model.raw_scale.trainable
    np.testing.assert_allclose(float(loaded.generative_model.scale), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(loaded.optimizer.learning_rate), 0.01, rtol=1e-6)
    for original, restored in zip(learner.variables + learner.optimizer.variables,
                                  loaded.variables + loaded.optimizer.variables):
        np.testing.assert_array_equal(original.numpy(), restored.numpy())
