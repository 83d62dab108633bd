"""AmortisedLearner on a 1-D five-component mixture against the fair oracle: exact-gradient ascent from the same
initial weights, with the same optimiser, batches and number of steps (`ExactGradientLearner`)."""

import keras
import numpy as np
import pytest

from tfp_amortised import AmortisedLearner, KernelRidge
from tfp_amortised.baselines import ExactGradientLearner
from tfp_amortised.models import GaussianMixtureModel


def _data(seed):
    """1000 training and 1000 held-out points of five unit-weight components at -6, -3, 0, 3, 6 with scale 0.8."""
    truth = GaussianMixtureModel(5, 1, scale=0.8)
    truth.means.assign(np.linspace(-6., 6., 5)[:, None])
    x = truth.joint_distribution().sample(2000, seed=[seed, 0])[1].numpy()
    return x[:1000], x[1000:]


def _held_out_after_training(learner_factory, x_train, x_test, seed):
    """Held-out log-likelihood per point after 120 Adam steps (rate 0.1) from means at five training points."""
    model = GaussianMixtureModel(5, 1, seed=seed)
    model.means.assign(np.sort(x_train[np.random.default_rng(seed).choice(len(x_train), 5, replace=False)], 0))
    learner = learner_factory(model)
    learner.compile(optimizer=keras.optimizers.Adam(0.1))
    learner.fit(x_train, batch_size=100, epochs=12, shuffle=False, verbose=0)
    return float(np.mean(model.log_marginal(x_test)))


@pytest.mark.parametrize("seed", [1, 2])
def test_amortised_learning_stays_near_exact_gradient_ascent(seed):
    x_train, x_test = _data(seed)
    oracle = _held_out_after_training(ExactGradientLearner, x_train, x_test, seed)
    default = _held_out_after_training(
        lambda model: AmortisedLearner(model, num_sleep=300, form="conditional", seed=seed), x_train, x_test, seed)
    narrow = _held_out_after_training(
        lambda model: AmortisedLearner(model, num_sleep=300, form="conditional", seed=seed,
                                       regression=KernelRidge(bandwidth=0.5)), x_train, x_test, seed)
    # Measured gaps to the oracle (nats per point): 0.033 and 0.019 with the median bandwidth, which
    # over-smooths these well-separated clusters; 0.005 and -0.005 with bandwidth 0.5. The initial means are
    # about 0.3 nats below. Bounds: twice the measured gaps.
    assert default > oracle - 0.07
    assert narrow > oracle - 0.015
