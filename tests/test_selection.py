"""Closed-form hyperparameter selection against brute-force refits, definitions, Cholesky solves and exact gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised import KernelRidge, linalg, surrogate_log_marginal
from tfp_amortised.estimator import sleep
from tfp_amortised.evaluation import median_relative_error, per_point_gradients
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import GaussianMixtureModel
from tfp_amortised.selection import (SelectRegression, cross_validation_errors, loo_residuals, loo_sample_errors,
                                     paired_difference, ridge_path, select_hyperparameters, select_regression,
                                     selection_targets)

RIDGES = np.array([1e-4, 1e-2, 3e-1])
RIDGES_DEFAULT = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.)  # tfp_amortised.selection.RIDGES


def _gram(x, bandwidth):
    """Gaussian Gram matrix written out in NumPy, float64."""
    return np.exp(-0.5 * ((x[:, None, :] - x[None, :, :])**2).sum(-1) / bandwidth**2)


def _problem(num_sleep=30, seed=0):
    """Inputs `[N, 2]` and two noisy targets `[N, 2]`, float64."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=[num_sleep, 2])
    y = np.stack([np.sin(2. * x[:, 0]) + x[:, 1], np.cos(x[:, 1])], axis=1) + 0.1 * rng.normal(size=[num_sleep, 2])
    return x, y


def _brute_force_loo(gram, y, ridge):
    """Residuals `y_i - f_{-i}(x_i)` of refits without point `i`, each with the diagonal shift `N ridge`: `[N, K]`."""
    num_sleep = len(y)
    residuals = np.empty_like(y)
    for i in range(num_sleep):
        keep = np.arange(num_sleep) != i
        coefficients = np.linalg.solve(gram[np.ix_(keep, keep)] + num_sleep * ridge * np.eye(num_sleep - 1), y[keep])
        residuals[i] = y[i] - gram[i, keep] @ coefficients
    return residuals


def _sample_errors(x, y, bandwidth, ridge):
    """Per-sample squared refit residuals relative to each column's variance, summed over columns: `[N]`."""
    return ((_brute_force_loo(_gram(x, bandwidth), y, ridge)**2) / y.var(0)).sum(1)


def _flat_problem(seed, num_sleep=150):
    """Inputs `[N, 2]` and targets `[N, 2]` whose signal is 8% of their variance: a flat leave-one-out surface."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=[num_sleep, 2])
    return x, 0.3 * np.stack([np.sin(2. * x[:, 0]), np.cos(x[:, 1])], 1) + rng.normal(size=[num_sleep, 2])


def _reference_rule(x, y, selection, current):
    """NumPy: the current setting's error, the arg-min's, and the standard error of their paired difference."""
    errors = selection.errors.numpy()
    row, column = np.unravel_index(np.argmin(errors), errors.shape)
    best = _sample_errors(x, y, float(selection.bandwidths[row]), RIDGES_DEFAULT[column])
    held = _sample_errors(x, y, *current)
    difference = held - best
    return held.mean(), best.mean(), difference.std(ddof=1) / np.sqrt(len(difference)), (row, column)


def test_loo_residuals_match_refits():
    x, y = _problem()
    gram = _gram(x, 0.7)
    residuals = loo_residuals(tf.constant(gram), tf.constant(y), tf.constant(RIDGES)).numpy()
    assert residuals.shape == (len(RIDGES), 30, 2)
    for index, ridge in enumerate(RIDGES):
        np.testing.assert_allclose(residuals[index], _brute_force_loo(gram, y, ridge), rtol=0, atol=1e-8)


def test_loo_sample_errors_match_refits():
    x, y = _problem()
    errors = loo_sample_errors(tf.constant(_gram(x, 0.7)), tf.constant(y), tf.constant(RIDGES)).numpy()
    assert errors.shape == (len(RIDGES), 30)
    for index, ridge in enumerate(RIDGES):
        np.testing.assert_allclose(errors[index], _sample_errors(x, y, 0.7, ridge), rtol=1e-7)
    np.testing.assert_allclose(errors.mean(1), cross_validation_errors(
        tf.constant(_gram(x, 0.7)), tf.constant(y), tf.constant(RIDGES)), rtol=1e-12)


def test_paired_difference_matches_numpy():
    rng = np.random.default_rng(2)
    first, second = rng.normal(size=[2, 50]) + [[0.3], [0.]]
    mean, standard_error = paired_difference(tf.constant(first), tf.constant(second))
    difference = first - second
    np.testing.assert_allclose(mean, difference.mean(), rtol=1e-12)
    np.testing.assert_allclose(standard_error, difference.std(ddof=1) / np.sqrt(50), rtol=1e-12)
    assert float(standard_error) == pytest.approx(0.20296, abs=1e-5)  # not the std 1.435, nor 0.20092 (ddof=0)


def test_rule_keeps_the_held_setting_on_a_flat_surface():
    # Two samples of one distribution; the setting chosen on the first is held while selecting on the second. The
    # two samples' arg-mins are exchangeable (equal in distribution); on the second, its own arg-min is favoured.
    first, (x, y) = _flat_problem(4), _flat_problem(5)
    held = select_hyperparameters(tf.constant(first[0]), tf.constant(first[1]))
    current = float(held.bandwidth), float(held.ridge)
    assert float(held.bandwidth / held.bandwidths[4]) == 0.5 and current[1] == pytest.approx(0.1)
    plain = select_hyperparameters(tf.constant(x), tf.constant(y))
    rule = select_hyperparameters(tf.constant(x), tf.constant(y), current=current)
    held_error, best_error, standard_error, best = _reference_rule(x, y, rule, current)
    np.testing.assert_allclose(rule.current_error, held_error, rtol=1e-7)
    np.testing.assert_allclose(rule.standard_error, standard_error, rtol=1e-6)
    # Measured: held 2.0306, arg-min (median, 1) 2.0195, standard error 0.0240: 0.46 standard errors better.
    assert best == (4, 7) and (held_error - best_error) / standard_error == pytest.approx(0.463, abs=1e-3)
    assert bool(rule.kept) and (float(rule.bandwidth), float(rule.ridge)) == current
    assert float(plain.ridge) == 1. and (float(plain.bandwidth), float(plain.ridge)) != current
    # tolerance=0: the plain arg-min, the held setting still evaluated.
    zero = select_hyperparameters(tf.constant(x), tf.constant(y), current=current, tolerance=0.)
    assert not bool(zero.kept) and float(zero.current_error) == float(rule.current_error)
    assert (float(zero.bandwidth), float(zero.ridge)) == (float(plain.bandwidth), float(plain.ridge))
    np.testing.assert_array_equal(zero.errors, plain.errors)
    assert np.isnan(float(plain.standard_error)) and not bool(plain.kept)


def test_rule_switches_to_a_clearly_better_setting():
    x, y = _problem(num_sleep=60, seed=1)
    current = (20., 1.)  # 15 times the median heuristic and the largest ridge: about the targets' mean
    rule = select_hyperparameters(tf.constant(x), tf.constant(y), current=current)
    held_error, best_error, standard_error, best = _reference_rule(x, y, rule, current)
    np.testing.assert_allclose(rule.current_error, held_error, rtol=1e-7)
    np.testing.assert_allclose(rule.standard_error, standard_error, rtol=1e-6)
    # Measured: held 2.88, arg-min (median, 1e-4) 0.141, standard error 0.211: 13 standard errors better.
    assert best == (4, 3) and (held_error - best_error) / standard_error == pytest.approx(12.96, abs=0.01)
    assert not bool(rule.kept)
    assert float(rule.bandwidth) == float(rule.bandwidths[4]) and float(rule.ridge) == pytest.approx(1e-4)


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_rule_switches_beyond_tolerance_standard_errors(mode):
    x, y = _problem(num_sleep=60, seed=1)
    current = (1.2, 1e-3)  # near the arg-min (1.35, 1e-4)
    select = lambda tolerance: select_hyperparameters(  # noqa: E731
        tf.constant(x), tf.constant(y), current=current, tolerance=tolerance)
    if mode == "xla":
        select = tf.function(select, jit_compile=True)
    held_error, best_error, standard_error, _ = _reference_rule(x, y, select(1.), current)
    ratio = float((held_error - best_error) / standard_error)
    assert ratio == pytest.approx(1.623, abs=1e-3)  # measured
    below, above = select(0.99 * ratio), select(1.01 * ratio)
    assert not bool(below.kept) and float(below.ridge) == pytest.approx(1e-4)
    assert bool(above.kept) and (float(above.bandwidth), float(above.ridge)) == pytest.approx(current, rel=1e-12)


def test_rule_is_leave_one_out_only():
    x, y = _problem()
    with pytest.raises(ValueError, match="GCV does not have"):
        select_hyperparameters(tf.constant(x), tf.constant(y), criterion="gcv", current=(1., 1e-3))
    with pytest.raises(ValueError, match="pass tolerance=0 with criterion='gcv'"):
        SelectRegression(criterion="gcv")
    assert SelectRegression(criterion="gcv", tolerance=0).tolerance == 0.
    with pytest.raises(ValueError, match="tolerance must be a number >= 0"):
        SelectRegression(tolerance=-1.)


def test_gcv_matches_its_definition():
    x, y = _problem()
    gram = _gram(x, 0.7)
    errors = cross_validation_errors(tf.constant(gram), tf.constant(y), tf.constant(RIDGES), "gcv").numpy()
    num_sleep = len(y)
    for index, ridge in enumerate(RIDGES):
        residual_maker = np.eye(num_sleep) - gram @ np.linalg.inv(gram + num_sleep * ridge * np.eye(num_sleep))
        gcv = ((residual_maker @ y)**2).mean(0) / (np.trace(residual_maker) / num_sleep)**2  # [K]
        np.testing.assert_allclose(errors[index], (gcv / y.var(0)).sum(), rtol=1e-9)


def test_eigen_grid_matches_cholesky_solves():
    x, y = _problem(num_sleep=60)
    gram = tf.constant(_gram(x, 0.5))
    solutions, inverse_diagonal = ridge_path(gram, tf.constant(y), tf.constant(RIDGES))
    for index, ridge in enumerate(RIDGES):
        chol, jitter = linalg.retrying_cholesky(gram + 60 * ridge * tf.eye(60, dtype=tf.float64))
        assert float(jitter) == 0.
        np.testing.assert_allclose(solutions[index], linalg.cholesky_solve(chol, tf.constant(y)), rtol=1e-7,
                                   atol=1e-9)
        inverse = linalg.cholesky_solve(chol, tf.eye(60, dtype=tf.float64))
        np.testing.assert_allclose(inverse_diagonal[index], tf.linalg.diag_part(inverse), rtol=1e-7)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_selection_picks_the_brute_force_loo_minimiser(mode):
    x, y = _problem(num_sleep=40, seed=1)
    factors, ridges = (0.25, 0.5, 1., 2.), (1e-5, 1e-3, 1e-1)
    select = lambda x, y: select_hyperparameters(x, y, bandwidth_factors=factors, ridges=ridges)  # noqa: E731
    if mode != "eager":
        select = tf.function(select, jit_compile=mode == "xla")
    selection = select(tf.constant(x), tf.constant(y))
    brute = np.array([[((_brute_force_loo(_gram(x, float(bandwidth)), y, ridge)**2).mean(0) / y.var(0)).sum()
                       for ridge in ridges] for bandwidth in selection.bandwidths.numpy()])
    # XLA's eigendecomposition (Jacobi) is less accurate: 3e-4 relative at the smallest shift, N lam = 4e-4.
    np.testing.assert_allclose(selection.errors, brute, rtol=1e-3 if mode == "xla" else 1e-6)
    best = np.unravel_index(np.argmin(brute), brute.shape)
    assert best != (0, 0) and best[0] != len(factors) - 1  # an interior choice, not a corner of the grid
    assert float(selection.bandwidth) == pytest.approx(selection.bandwidths.numpy()[best[0]], rel=1e-12)
    assert float(selection.ridge) == pytest.approx(ridges[best[1]], rel=1e-12)


def test_float32_inputs_are_selected_in_float64():
    x, y = _problem(num_sleep=40, seed=1)
    factors, ridges = (0.25, 0.5, 1., 2.), (1e-7, 1e-5, 1e-3)
    double = select_hyperparameters(tf.constant(x), tf.constant(y), bandwidth_factors=factors, ridges=ridges)
    single = select_hyperparameters(tf.constant(x, tf.float32), tf.constant(y, tf.float32),
                                    bandwidth_factors=factors, ridges=ridges)
    assert single.bandwidth.dtype == tf.float32
    # Only the inputs' rounding to float32 differs (a float32 eigendecomposition is off by 11% at N lam = 4e-6).
    np.testing.assert_allclose(single.errors, double.errors, rtol=1e-3)


def test_log_joint_targets_are_the_centred_log_joint():
    model, _ = _mixture()
    sample = sleep(model.joint_distribution(), 50, [1, 1])
    log_joint = model.joint_distribution().log_prob(sample["z"], sample["x"]).numpy()
    targets = selection_targets(model.joint_distribution, sample, targets="log_joint")
    np.testing.assert_allclose(targets[:, 0], log_joint - log_joint.mean(), rtol=1e-5, atol=1e-5)


def _mixture():
    """The 1-D mixture where the median heuristic over-smooths: 5 components, means -6..6, scale 0.8."""
    model = GaussianMixtureModel(5, 1)
    model.means.assign(np.linspace(-6., 6., 5, dtype=np.float32)[:, None])
    model.raw_scale.assign(np.log(np.expm1(0.8)).astype(np.float32))
    x = sleep(model.joint_distribution(), 60, [7, 7])["x"]
    model.means.assign(np.linspace(-4., 4., 5, dtype=np.float32)[:, None])  # away from the truth: larger gradients
    return model, x


def _gradient_error(model, x, regression, num_sleep=800):
    exact = per_point_gradients(lambda: model.log_marginal(x), model.trainable_variables)
    estimate = per_point_gradients(lambda: surrogate_log_marginal(
        model.joint_distribution, x, num_sleep=num_sleep, seed=[3, 4], regression=regression),
        model.trainable_variables)
    return median_relative_error(estimate, exact)


@pytest.mark.parametrize("targets", ["gradient", "log_joint"])
def test_selection_beats_the_median_heuristic_on_a_separated_mixture(targets):
    model, x = _mixture()
    regression = KernelRidge(bandwidth=10.)  # a start value worse than the median heuristic
    selection = select_regression(regression, model.joint_distribution, num_sleep=800, seed=[5, 6],
                                  targets=targets, variables=model.trainable_variables)
    median = float(selection.bandwidths[4])  # factor 1: the median heuristic on the same sleep set
    assert float(regression.bandwidth) == pytest.approx(float(selection.bandwidth), rel=1e-6)
    assert float(regression.ridge) == pytest.approx(float(selection.ridge), rel=1e-6)
    assert float(selection.bandwidth) < 0.6 * median
    fixed, selected = _gradient_error(model, x, KernelRidge()), _gradient_error(model, x, regression)
    # Measured: fixed 0.60; selected 0.11 (8 gradient projections), 0.13 (log-joint); bandwidth median / 2, ridge
    # 1e-6 and 1e-7.
    assert selected < 0.4 * fixed


@pytest.mark.parametrize("solver, options", [("random_features", {"num_features": 512}),
                                             ("nystrom", {"num_inducing": 200})])
def test_approximate_solvers_use_the_exact_selection(solver, options):
    model, x = _mixture()
    regression = KernelRidge(bandwidth=10., solver=solver, **options)  # a start value worse than the median
    select_regression(regression, model.joint_distribution, num_sleep=500, seed=[5, 6],
                      variables=model.trainable_variables)
    fixed = _gradient_error(model, x, KernelRidge(solver=solver, **options))
    # Measured: fixed 0.63 (random features), 0.60 (Nystrom); selected (median / 8, 1e-3) 0.25 and 0.24.
    assert _gradient_error(model, x, regression) < 0.5 * fixed


def test_select_regression_needs_a_fixed_bandwidth():
    model, _ = _mixture()
    with pytest.raises(ValueError, match="bandwidth='median'"):
        select_regression(KernelRidge(), model.joint_distribution, num_sleep=50, seed=[0, 0], targets="log_joint")


def test_callback_selects_every_few_steps_and_the_choice_survives_saving(tmp_path):
    model, x = _mixture()
    learner = AmortisedLearner(model, num_sleep=200, regression=KernelRidge(bandwidth=1.), num_holdout=0, seed=3,
                               form="conditional")
    learner.compile(optimizer=keras.optimizers.SGD(0.))  # the model stays put: every selection sees the same model
    callback = SelectRegression(every=2, num_sleep=300, targets="log_joint", tolerance=0)  # the plain arg-min
    learner.fit(x, batch_size=20, epochs=1, verbose=0, callbacks=[callback])  # 3 steps: selections before 1 and 3
    chosen = float(learner.regression.bandwidth), float(learner.regression.ridge)
    expected = select_regression(KernelRidge(bandwidth=1.), model.joint_distribution, num_sleep=300, seed=[3, 2],
                                 targets="log_joint")
    assert chosen == pytest.approx((float(expected.bandwidth), float(expected.ridge)), rel=1e-6)
    assert chosen[0] != 1.
    learner.save(tmp_path / "learner.keras")
    loaded = keras.saving.load_model(tmp_path / "learner.keras")
    assert (float(loaded.regression.bandwidth), float(loaded.regression.ridge)) == pytest.approx(chosen, rel=1e-7)


def test_callback_keeps_its_first_choice_within_one_standard_error():
    model, x = _mixture()
    learner = AmortisedLearner(model, num_sleep=200, regression=KernelRidge(bandwidth=1.), num_holdout=0, seed=3,
                               form="conditional")
    learner.compile(optimizer=keras.optimizers.SGD(0.))
    callback = SelectRegression(every=2, num_sleep=300, targets="log_joint")  # tolerance=1.
    learner.fit(x, batch_size=20, epochs=1, verbose=0, callbacks=[callback])  # selections before steps 1 and 3
    (_, first), (_, second) = callback.history
    assert not bool(first.kept) and np.isnan(float(first.standard_error))  # the start value is not held
    expected = KernelRidge(bandwidth=1.)
    select_regression(expected, model.joint_distribution, num_sleep=300, seed=[3, 0], targets="log_joint")
    fresh = select_regression(KernelRidge(bandwidth=1.), model.joint_distribution, num_sleep=300, seed=[3, 2],
                              targets="log_joint")
    held = select_regression(expected, model.joint_distribution, num_sleep=300, seed=[3, 2], targets="log_joint",
                             tolerance=1.)
    # Measured: the second sleep set's arg-min (1.60, 1e-7) is within one standard error of the first's (1.50, 1e-7).
    assert bool(second.kept) and bool(held.kept) and float(fresh.bandwidth) != float(first.bandwidth)
    assert float(second.standard_error) == pytest.approx(float(held.standard_error), rel=1e-6)
    chosen = float(learner.regression.bandwidth), float(learner.regression.ridge)
    assert chosen == pytest.approx((float(first.bandwidth), float(first.ridge)), rel=1e-6)
