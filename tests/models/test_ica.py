"""IndependentComponentsModel: moments, log-density against a closed form, recovery of the mixing matrix."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.ica import IndependentComponentsModel, amari_index
from tfp_amortised.ridge import KernelRidge

MIXING = np.array([[1., 0.6], [-0.4, 1.]], np.float32)


def _model(source="laplace", noise_scale=0.1, **kwargs):
    model = IndependentComponentsModel(2, 2, source=source, noise_scale=noise_scale, **kwargs)
    model.mixing.assign(MIXING)
    return model


@pytest.mark.parametrize("source, source_variance", [("laplace", 2.), ("student_t", 5. / 3.)])
def test_covariance_is_mixing_times_source_variance(source, source_variance):
    # Cov(x) = v A A^T + sigma^2 I with v = 2 (Laplace(0, 1)) or df / (df - 2) (Student-t, df = 5). 40000 draws;
    # each entry within 5 standard errors of the mean of x_i x_j (estimated from the draws: the fourth moment of
    # a t_5 is infinite, so its standard error is itself noisy and 5 rather than 4 leaves room for that).
    model = _model(source, noise_scale=0.3, df=5.)
    x = np.asarray(model.joint_distribution().sample(40000, seed=[2, 5]).x, np.float64)
    products = x[:, :, None] * x[:, None, :]
    expected = source_variance * MIXING @ MIXING.T + 0.09 * np.eye(2)
    standard_error = products.std(0) / math.sqrt(x.shape[0])
    assert np.all(np.abs(products.mean(0) - expected) < 5. * standard_error)


def test_log_prob_matches_closed_form_in_both_estimator_forms():
    # log p(s, x) = sum_k (-|s_k| - log 2) + sum_d log N(x_d; (A s)_d, sigma^2), in float64; float32 rtol 1e-5.
    model = _model(noise_scale=0.5)
    joint = model.joint_distribution()
    sample = joint.sample(4, seed=[1, 1])
    s, x = np.asarray(sample.s, np.float64), np.asarray(sample.x, np.float64)
    other_x = np.asarray(joint.sample(3, seed=[2, 2]).x, np.float64)

    def log_joint(s_n, x_m):
        residual = x_m - MIXING.astype(np.float64) @ s_n
        return (np.sum(-np.abs(s_n) - math.log(2.))
                + np.sum(-0.5 * (residual / 0.5)**2 - math.log(0.5) - 0.5 * math.log(2. * math.pi)))

    np.testing.assert_allclose(joint.log_prob(sample), [log_joint(a, b) for a, b in zip(s, x)], rtol=1e-5)
    conditional = joint.log_prob([sample.s[tf.newaxis], tf.constant(other_x[:, None], tf.float32)])
    assert conditional.shape == (3, 4)
    np.testing.assert_allclose(conditional, [[log_joint(a, b) for a in s] for b in other_x], rtol=1e-5)


def test_amari_index_ignores_order_sign_and_scale_only():
    permuted = MIXING[:, ::-1] * np.array([-2., 0.5])
    assert amari_index(permuted, MIXING) == pytest.approx(0., abs=1e-12)
    assert amari_index(MIXING @ np.array([[1., 0.5], [0., 1.]]), MIXING) > 0.1


def test_fit_recovers_the_mixing_matrix():
    # 1000 points from Laplace sources mixed by A (sigma = 0.1); a random start has Amari index 0.41 to A.
    # 200 Adam steps (minibatch 100, N = 300 sleep samples, conditional form) measured 0.035; the index
    # fluctuates between steps by ~0.05 (measured 0.03 to 0.09 from step 100 to 400), so the bound is 0.15.
    data = _model().joint_distribution().sample(1000, seed=[1, 1]).x
    model = IndependentComponentsModel(2, 2, seed=0)
    assert amari_index(model.mixing.numpy(), MIXING) > 0.35
    learner = AmortisedLearner(model, num_sleep=300, form="conditional", seed=1, num_holdout=0,
                               regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.Adam(0.02))
    learner.fit(data, batch_size=100, epochs=20, verbose=0)
    assert amari_index(model.mixing.numpy(), MIXING) < 0.15


@pytest.mark.parametrize("kwargs, message", [
    ({"num_sources": 3, "data_dim": 2}, "Received: num_sources=3, data_dim=2"),
    ({"num_sources": 1, "data_dim": 2, "source": "cauchy"}, "Received: source='cauchy'"),
    ({"num_sources": 1, "data_dim": 2, "noise_scale": 0.}, "Received: noise_scale=0.0"),
])
def test_invalid_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IndependentComponentsModel(**kwargs)
