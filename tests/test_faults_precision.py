"""Precision policies: under a global `mixed_float16` / `mixed_bfloat16` Keras policy the regression computes in
float32 (there is no half-precision Cholesky) and training is the float32 training, eagerly and compiled."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised import KernelRidge
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel

POLICIES = ["mixed_float16", "mixed_bfloat16"]


@functools.lru_cache(maxsize=None)  # the float32 references are shared by both policies
def _fit(policy, run_eagerly, learn=False):
    """The weights after one epoch of a small learner fitted under the global `policy`, and its history."""
    x = FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(64, seed=[1, 2])[1].numpy()
    keras.config.set_dtype_policy(policy)
    try:
        model = FactorAnalysisModel(1, 2, seed=1)
        learner = AmortisedLearner(model, num_sleep=64, num_holdout=16, seed=3, regression=KernelRidge(learn=learn))
        learner.compile(optimizer=keras.optimizers.Adam(0.05), run_eagerly=run_eagerly)
        history = learner.fit(x, batch_size=16, epochs=1, shuffle=False, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    return [v.numpy() for v in learner.trainable_variables], history.history


@pytest.mark.parametrize("policy", POLICIES)
def test_the_regression_layer_computes_in_float32(policy):
    x = np.random.default_rng(0).normal(size=[64, 2]).astype(np.float32)
    keras.config.set_dtype_policy(policy)
    try:
        regression = KernelRidge()
        weights = regression(x, x[:4])
    finally:
        keras.config.set_dtype_policy("float32")
    assert regression.compute_dtype == "float32" and weights.dtype == tf.float32
    np.testing.assert_allclose(weights, KernelRidge()(x, x[:4]), rtol=1e-6)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("run_eagerly, learn", [(False, False), (True, False), (False, True)],
                         ids=["compiled", "eager", "compiled-learning"])
def test_fit_under_a_mixed_policy_trains_as_in_float32(policy, run_eagerly, learn):
    """Four Adam steps move the weights by about 0.2; under the mixed policy they end where float32 training ends
    (the generative model and the regression compute in float32 whatever the policy), to float32 round-off."""
    expected, _ = _fit("float32", run_eagerly, learn)
    weights, history = _fit(policy, run_eagerly, learn)
    assert history["skipped_steps"] == [0.]
    initial = [v.numpy() for v in AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=64,
                                                   regression=KernelRidge(learn=learn)).trainable_variables]
    assert max(np.abs(e - i).max() for e, i in zip(expected, initial)) > 0.05  # training moved the weights
    for actual, reference in zip(weights, expected):
        np.testing.assert_allclose(actual, reference, rtol=1e-5, atol=1e-6)


def test_loss_scaling_is_refused():
    """Keras wraps the optimiser in a `LossScaleOptimizer` under `mixed_float16` by default, which divides the
    gradients by the loss scale; the learners' losses are float32 and never scaled, so it is off and refused."""
    learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=16)
    with pytest.raises(ValueError, match="loss scaling does not apply"):
        learner.compile(optimizer="adam", auto_scale_loss=True)
