"""A short training run on a well-separated Gaussian mixture, checked against its generating parameters."""

import itertools

import keras
import numpy as np
import tensorflow as tf

from tfp_amortised.baselines import MeanFieldEncoder
from tfp_amortised.models import GaussianMixtureModel

MEANS = np.array([[-2., 0.], [2., 0.], [0., 2.5]], np.float32)
SCALE = 0.4


def assert_learns_mixture(make_learner, num_points=600, epochs=25):
    """Fits `make_learner(model, encoder)` for 150 Adam steps from near-zero means; checks means and log p(x)."""
    truth = GaussianMixtureModel(3, 2, scale=SCALE)
    truth.means.assign(MEANS)
    x = truth.joint_distribution().sample(num_points, seed=[7, 8])[1]
    model = GaussianMixtureModel(3, 2, seed=3)
    learner = make_learner(model, MeanFieldEncoder({"z": ("categorical", 3)}, hidden_units=(16,), seed=0))
    learner.compile(optimizer=keras.optimizers.Adam(5e-2))
    before = float(tf.reduce_mean(model.log_marginal(x)))
    learner.fit(x, batch_size=100, epochs=epochs, shuffle=False, verbose=0)
    reference = float(tf.reduce_mean(truth.log_marginal(x)))
    after = float(tf.reduce_mean(model.log_marginal(x)))
    # From ~1 nat below the truth to within 0.05 nats of it (the MLE is above the truth by ~p/(2n) = 0.006 nats
    # per point; 0.05 allows an unfinished optimiser, not a wrong mode, which costs ~0.3 nats).
    assert before < reference - 0.5, (before, reference)
    assert after > reference - 0.05, (after, reference)
    # Means up to relabelling: the sample mean of ~200 points per component has standard error 0.03.
    learned = model.means.numpy()
    error = min(np.abs(learned[list(p)] - MEANS).max() for p in itertools.permutations(range(3)))
    assert error < 0.15, learned
