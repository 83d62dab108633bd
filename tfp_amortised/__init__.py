"""tfp_amortised: amortised learning by wake-sleep (Wenliang et al., ICML 2020) on TensorFlow Probability.

Fit latent-variable models written as TFP JointDistributions by maximum likelihood, without an encoder:
kernel ridge regression on samples of the model itself turns the log-joint into an estimate of the gradient
of the log marginal likelihood.
"""

from tfp_amortised.base_learner import Learner
from tfp_amortised.callbacks import TensorBoard
from tfp_amortised.estimator import (AmortisedStep, amortised_step, prior_log_likelihood, ridge_expectation, sleep,
                                     surrogate_log_marginal, weighted_log_joint)
from tfp_amortised.generative import ConstrainedWeight, GenerativeModel
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.ridge import (KernelRidge, RegressionDiagnostics, RegressionWarning, median_bandwidth,
                                 regression_weights)
from tfp_amortised.selection import SelectRegression, select_regression
from tfp_amortised.solvers import ridge_weights

__version__ = "0.1.0"

__all__ = [
    "AmortisedLearner",
    "AmortisedStep",
    "ConstrainedWeight",
    "GenerativeModel",
    "KernelRidge",
    "Learner",
    "TensorBoard",
    "RegressionDiagnostics",
    "RegressionWarning",
    "SelectRegression",
    "amortised_step",
    "median_bandwidth",
    "prior_log_likelihood",
    "regression_weights",
    "select_regression",
    "ridge_expectation",
    "ridge_weights",
    "sleep",
    "surrogate_log_marginal",
    "weighted_log_joint",
]
