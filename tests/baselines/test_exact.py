"""ExactGradientLearner: exact-gradient ascent reaches the closed-form maximum-likelihood estimate."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised.baselines import ExactGradientLearner
from tfp_amortised.models import BinaryFactorModel, GaussianMixtureModel


def test_one_sgd_step_is_the_exact_mean_gradient():
    model = GaussianMixtureModel(3, 2, seed=1)
    x = GaussianMixtureModel(3, 2, seed=2).joint_distribution().sample(50, seed=[1, 2])[1]
    with tf.GradientTape() as tape:
        mean_log_likelihood = tf.reduce_mean(model.log_marginal(x))
    gradients = tape.gradient(mean_log_likelihood, model.trainable_variables)
    before = [v.numpy() for v in model.trainable_variables]
    learner = ExactGradientLearner(model)
    learner.compile(optimizer=keras.optimizers.SGD(1.))
    history = learner.fit(x.numpy(), batch_size=50, epochs=1, verbose=0)
    for old, new, gradient in zip(before, model.trainable_variables, gradients):
        np.testing.assert_allclose(new.numpy() - old, gradient, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(history.history["log_likelihood"][0], mean_log_likelihood, rtol=1e-6)


def test_reaches_the_gaussian_maximum_likelihood_estimate():
    # One component: the maximum-likelihood mean is the sample mean and sigma^2 the mean squared deviation per
    # coordinate, exactly. 400 full-batch Adam steps at rate 0.05 converge to float32 precision (measured 1e-6).
    x = np.random.default_rng(0).normal([1., -2.], 1.5, size=[200, 2]).astype(np.float32)
    model = GaussianMixtureModel(1, 2, seed=3)
    learner = ExactGradientLearner(model)
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    learner.fit(tf.data.Dataset.from_tensors(x).repeat(400), epochs=1, shuffle=False, verbose=0)  # 400 steps
    np.testing.assert_allclose(model.means.numpy()[0], x.mean(0), atol=1e-3)
    np.testing.assert_allclose(float(model.scale), np.sqrt(np.mean((x - x.mean(0))**2)), rtol=1e-3)


def test_a_model_without_an_exact_likelihood_is_refused():
    with pytest.raises(TypeError, match="exact log_marginal.*Received: generative_model of type BinaryFactorModel"):
        ExactGradientLearner(BinaryFactorModel(2, 4))
