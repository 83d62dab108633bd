"""HierarchicalPoissonModel: exact log-likelihood, amortised gradients against it, empirical Bayes by fit."""

import math

import keras
import numpy as np
import pytest

from tfp_amortised.evaluation import median_relative_error, per_point_gradients
from tfp_amortised import surrogate_log_marginal
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.hierarchical import HierarchicalPoissonModel
from tfp_amortised.ridge import KernelRidge


def test_log_marginal_matches_quadrature_over_the_rate():
    # p(x) = int Gamma(r; alpha, beta) prod_i Poisson(x_i; r) dr by the trapezoid rule on a fine grid of r
    # (10^5 points on (0, 60], where the integrand is negligible beyond); agreement to 1e-5 in log space.
    model = HierarchicalPoissonModel(4, concentration=3., rate=0.5)
    x = np.array([[0., 3., 7., 2.], [12., 9., 4., 10.]])
    rates = np.linspace(1e-6, 60., 100_000)
    log_prior = 3. * math.log(0.5) - math.lgamma(3.) + 2. * np.log(rates) - 0.5 * rates
    expected = []
    for row in x:
        log_likelihood = sum(value * np.log(rates) - rates - math.lgamma(value + 1.) for value in row)
        density = np.exp(log_prior + log_likelihood)
        expected.append(math.log(np.sum((density[1:] + density[:-1]) / 2. * np.diff(rates))))
    np.testing.assert_allclose(model.log_marginal(x), expected, atol=1e-5)


def test_estimated_gradient_matches_exact_gradient():
    # Only the Gamma prior depends on (alpha, beta), so the joint and conditional forms regress the same target
    # (measured equal); the joint form is tested. Exact gradient:
    # autodiff of the closed form. 20 groups of 5 counts; measured median relative error 9% at N = 500 and 6% at
    # N = 2000 (seed (0, 7)): bound 15% at N = 500 and a decrease with N.
    model = HierarchicalPoissonModel(5, concentration=3., rate=0.5)
    x = model.joint_distribution().sample(20, seed=[3, 4]).x
    exact = per_point_gradients(lambda: model.log_marginal(x), model.trainable_variables)
    errors = [median_relative_error(per_point_gradients(
        lambda: surrogate_log_marginal(model.joint_distribution, x, num_sleep=num_sleep, seed=[0, 7]),
        model.trainable_variables), exact) for num_sleep in (500, 2000)]
    assert errors[0] < 0.15 and errors[1] < errors[0]


def test_fit_reaches_the_exact_maximum_likelihood():
    # 2000 groups of 5 counts at alpha = 3, beta = 0.5. Exact MLE (Adam on the closed form, 1500 steps):
    # alpha = 2.997, beta = 0.494. Amortised learning, 300 steps (minibatch 200, N = 500): measured 2.95, 0.484.
    # Tolerance 10% of the MLE: the sampling error of the MLE itself is ~5% at this data size.
    data = HierarchicalPoissonModel(5, concentration=3., rate=0.5).joint_distribution().sample(2000, seed=[1, 1]).x
    model = HierarchicalPoissonModel(5)
    learner = AmortisedLearner(model, num_sleep=500, form="conditional", seed=1, num_holdout=0,
                               regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    learner.fit(data, batch_size=200, epochs=30, verbose=0)
    np.testing.assert_allclose([float(model.concentration), float(model.rate)], [2.997, 0.494], rtol=0.1)


@pytest.mark.parametrize("kwargs, message", [
    ({"group_size": 0}, "Received: group_size=0"),
    ({"group_size": 3, "rate": -1.}, "Received: rate=-1.0"),
])
def test_invalid_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HierarchicalPoissonModel(**kwargs)


def test_config_round_trip():
    model = HierarchicalPoissonModel(3, concentration=2., rate=4.)
    rebuilt = HierarchicalPoissonModel.from_config(model.get_config())
    assert rebuilt.group_size == 3
    np.testing.assert_allclose([rebuilt.concentration, rebuilt.rate], [2., 4.], rtol=1e-6)
