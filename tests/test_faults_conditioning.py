"""Ill-conditioned regression (issue 12, item 3): a small ridge on duplicated discrete observations makes the float32
solve wrong with no jitter; every solver reports a condition estimate, escalates such a solve to float64, and warns
when the result cannot be trusted, eagerly and after `fit`."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import KernelRidge, linalg, solvers
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import HierarchicalPoissonModel
from tfp_amortised.ridge import RegressionWarning, kernel_ridge_weights

psd_kernels = tfp.math.psd_kernels
SOLVERS = {"cholesky": {}, "random_features": {"num_features": 256}, "nystrom": {"num_inducing": 256}}
MODES = {"eager": lambda f: f, "graph": tf.function, "xla": lambda f: tf.function(f, jit_compile=True)}
MODES_COMPILE = {"eager": {"run_eagerly": True}, "graph": {}, "xla": {"jit_compile": True}}
FLOAT32_LIMIT = solvers.CONDITION_TOLERANCE / np.finfo(np.float32).eps  # 8.4e4


def _counts(num_sleep=2000, seed=0):
    """Poisson counts `x: [N, 1]` of Gamma(2, 1) rates `z` (about 14 distinct values), the target `1[z > 4]`, and
    its mean in each cell of `x` (the ideal regression for discrete inputs), with the cells and their sizes."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2., 1., size=num_sleep)
    x = rng.poisson(rates).astype(np.float64)[:, None]
    target = (rates > 4.).astype(np.float64)
    cells, sizes = np.unique(x, return_counts=True)
    cell_means = np.array([target[x[:, 0] == cell].mean() for cell in cells])
    return x, target, cells[:, None], cell_means, sizes


def _prediction(x, target, query, dtype, **arguments):
    weights, diagnostics = kernel_ridge_weights(tf.constant(x, dtype), tf.constant(query, dtype), bandwidth=1.,
                                                ridge=1e-8, **arguments)
    return weights.numpy().astype(np.float64) @ target, diagnostics


def test_the_issue_example_was_wrong_in_float32_and_is_escalated_to_the_cell_means():
    """N = 2000 Poisson counts, lam = 1e-8, exact solver: K + N lam I has condition 4.6e7 (numpy), beyond float32
    (1 / eps = 8.4e6) although the Cholesky needs no jitter. Float32 without escalation misses the cell means by
    0.06 in a cell of 100 samples; escalated, it agrees with them (and with float64) to 1e-5. The error was the
    float32 factorisation's: float32 Gram entries solved in float64 are right."""
    x, target, cells, cell_means, sizes = _counts()
    populated = sizes >= 20  # cells the regression sees often enough to reach their mean at this ridge
    with pytest.warns(RegressionWarning, match="too ill-conditioned for float32"):
        plain, plain_diagnostics = _prediction(x, target, cells, tf.float32, solver="cholesky", escalate=False)
    assert float(plain_diagnostics.jitter) == 0.  # the old diagnostic saw nothing
    assert np.max(np.abs(plain - cell_means)[populated]) > 0.03
    escalated, diagnostics = _prediction(x, target, cells, tf.float32, solver="cholesky")
    double, _ = _prediction(x, target, cells, tf.float64, solver="cholesky")
    np.testing.assert_allclose(escalated[populated], cell_means[populated], atol=1e-5)
    np.testing.assert_allclose(escalated, double, atol=1e-5)
    assert 3e7 < float(diagnostics.condition) <= 4.6e7


@pytest.mark.parametrize("solver", ["random_features", "nystrom"])
def test_approximate_solvers_on_the_issue_example_agree_with_their_float64_answer(solver):
    """The same data through the feature solvers (F = 256 features, R = 256 inducing points): the escalated float32
    answer equals the cell means within the approximation error (0.003 for Nystrom, whose K_UU of duplicated points
    needs jitter; 1e-5 for random features) and reports a condition above the float32 limit."""
    x, target, cells, cell_means, sizes = _counts()
    populated = sizes >= 20
    escalated, diagnostics = _prediction(x, target, cells, tf.float32, solver=solver, **SOLVERS[solver])
    tolerance = 3e-3 if solver == "nystrom" else 1e-4
    np.testing.assert_allclose(escalated[populated], cell_means[populated], atol=tolerance)
    assert float(diagnostics.condition) > FLOAT32_LIMIT


def _systems():
    """Ridge systems `(sleep_x [N, D], lam)`: continuous and duplicated observations, lam from 1e-2 to 1e-8."""
    rng = np.random.default_rng(3)
    continuous = rng.normal(size=[300, 2])
    duplicated = rng.poisson(rng.gamma(2., 1., 300)).astype(np.float64)[:, None]
    return [(x - x.mean(0), lam) for x in (continuous, duplicated) for lam in (1e-2, 1e-5, 1e-8)]


def _factorised_matrix(solver, kernel, x, lam):
    """The square matrix `solver` factorises for sleep inputs `x: [N, D]`, computed in NumPy float64."""
    num_sleep = x.shape[0]
    if solver == "cholesky":
        return kernel.matrix(x, x).numpy() + num_sleep * lam * np.eye(num_sleep)
    if solver == "random_features":
        frequencies = solvers.fourier_frequencies(kernel, x.shape[1], 32, tf.constant([0, 0]), tf.float64)
        features = solvers.random_fourier_features(tf.constant(x), frequencies, kernel.amplitude).numpy()
    else:
        inducing = x[:50]
        chol = np.linalg.cholesky(kernel.matrix(inducing, inducing).numpy())
        features = np.linalg.solve(chol, kernel.matrix(inducing, x).numpy()).T
    return features.T @ features + num_sleep * lam * np.eye(features.shape[1])


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_condition_estimate_is_a_lower_bound_within_a_stated_factor_of_numpy(solver):
    """`condition` against `numpy.linalg.cond` of the matrix each solver factorises (float64, no escalation):
    never above it, and within a factor 1.5 for the exact Gram matrix, 10 for the feature systems (64 random
    features, 50 inducing points), whose top eigenvector the Rayleigh probes of `linalg.solve_with_condition` catch
    less well. Nystrom's K_UU of
    duplicated points is singular (jitter), so it is checked on the continuous observations only."""
    kernel = psd_kernels.ExponentiatedQuadratic(length_scale=np.float64(1.))
    factor = 1.5 if solver == "cholesky" else 10.
    options = {"random_features": {"num_features": 64}, "nystrom": {"num_inducing": 50}}.get(solver, {})
    for x, lam in _systems()[:3] if solver == "nystrom" else _systems():
        _, jitter, condition = solvers.SOLVERS[solver](kernel, tf.constant(x), tf.constant(x[:4]),
                                                       tf.constant(lam, tf.float64), **options)
        assert float(jitter) == 0.
        exact = np.linalg.cond(_factorised_matrix(solver, kernel, x, lam))
        assert exact / factor <= float(condition) <= exact * (1. + 1e-6), (lam, exact, float(condition))


def test_linalg_estimate_on_prescribed_spectra():
    """`solve_with_condition` on `Q diag(s) Q^T` (N = 100) with known condition, the top eigenvector positive as in
    a Gram matrix: many small eigenvalues (the ridge-regression case) within a factor 1.5; one isolated small
    eigenvalue about sqrt(N) = 10 times below, times the probe's chance alignment with it (measured 20; asserted
    30). With a random top eigenvector it is still a lower bound. Batched matrices get
    one estimate each, and the solution is the solve's."""
    rng = np.random.default_rng(0)
    spectra = [np.concatenate([np.geomspace(1e3, 1., 10), np.full(90, 1e-4)]),  # condition 1e7
               np.concatenate([np.linspace(2., 1., 99), [1e-6]])]  # condition 2e6, one isolated
    positive = np.linalg.qr(np.concatenate([np.ones([100, 1]), rng.normal(size=[100, 99])], axis=1))[0]
    random = np.linalg.qr(rng.normal(size=[100, 100]))[0]
    matrices = np.stack([basis @ np.diag(spectrum) @ basis.T for basis in (positive, random) for spectrum in spectra])
    solution, condition = linalg.solve_with_condition(np.linalg.cholesky(matrices), np.ones([4, 100, 3]),
                                                      np.diagonal(matrices, axis1=-2, axis2=-1))
    np.testing.assert_allclose(solution, np.linalg.solve(matrices, np.ones([4, 100, 3])), rtol=1e-6)
    exact = np.array([s.max() / s.min() for s in spectra] * 2)
    assert np.all(condition.numpy() <= exact * (1. + 1e-6))
    assert condition[0] >= exact[0] / 1.5 and condition[1] >= exact[1] / 30.


@pytest.mark.parametrize("mode", MODES)
def test_escalation_happens_only_for_an_ill_conditioned_float32_system(mode):
    """`solvers.solve`, eager, in a tf.function and under XLA: a well-conditioned float32 system (lam = 1e-3) gives
    exactly the float32 solve; the issue's system (lam = 1e-8) gives the float64 solve rounded to float32 (float32
    alone differs from it by more than 1e-2, relative)."""
    x, _, cells, _, _ = _counts(num_sleep=1000)
    kernel = psd_kernels.ExponentiatedQuadratic(length_scale=np.float32(1.))
    gram, cross = solvers.gram_and_cross(kernel, tf.constant(x - x.mean(), tf.float32),
                                         tf.constant(cells - x.mean(), tf.float32))
    for lam, escalates in ((1e-3, False), (1e-8, True)):
        matrix = tf.linalg.set_diag(gram, tf.linalg.diag_part(gram) + 1000 * lam)
        solution, _, condition = MODES[mode](solvers.solve)(matrix, cross)
        float32_solution = MODES[mode](lambda m, c: linalg.cholesky_solve(linalg.retrying_cholesky(m)[0], c))(
            matrix, cross)
        float32_solution = float32_solution.numpy()
        float64_solution = np.linalg.solve(np.tril(matrix.numpy().astype(np.float64), -1).T
                                           + np.tril(matrix.numpy().astype(np.float64)), cross.numpy())
        scale = np.max(np.abs(float64_solution))
        assert (float(condition) > FLOAT32_LIMIT) == escalates
        if escalates:
            assert np.max(np.abs(float32_solution - float64_solution)) > 1e-2 * scale
            np.testing.assert_allclose(solution, float64_solution, atol=1e-5 * scale)
        else:
            np.testing.assert_allclose(solution, float32_solution, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_an_untrusted_solve_warns_eagerly_naming_lambda_and_the_remedy(solver):
    """Without escalation the float32 solve of the issue's system warns (function and layer); with it (default)
    there is no warning; a float64 system beyond float64 (lam = 1e-16) warns even escalated, advising a larger
    ridge."""
    x, _, cells, _, _ = _counts(num_sleep=1000)
    x32, cells32 = x.astype(np.float32), cells.astype(np.float32)
    options = SOLVERS[solver]
    with pytest.warns(RegressionWarning, match=r"float32: condition number about .* ridge=1e-08.*escalate=True"):
        kernel_ridge_weights(x32, cells32, bandwidth=1., ridge=1e-8, solver=solver, escalate=False, **options)
    with pytest.warns(RegressionWarning, match="condition number about"):
        KernelRidge(bandwidth=1., ridge=1e-8, solver=solver, escalate=False, **options)(x32, cells32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegressionWarning)
        kernel_ridge_weights(x32, cells32, bandwidth=1., ridge=1e-8, solver=solver, **options)
        kernel_ridge_weights(x32, cells32, bandwidth=1., ridge=1e-3, solver=solver, escalate=False, **options)
    if solver == "cholesky":
        with pytest.warns(RegressionWarning, match="float64: .* ridge=1e-16.* Use a larger ridge"):
            kernel_ridge_weights(x, cells, bandwidth=1., ridge=1e-16)


def _poisson_learner(solver, escalate, mode):
    """A learner of one Poisson count per observation (about 12 distinct values in 300 sleep samples) with lam
    = 1e-8: condition about 1e7 for every solver."""
    options = {"random_features": {"num_features": 64}, "nystrom": {"num_inducing": 64}}.get(solver, {})
    regression = KernelRidge(bandwidth=1., ridge=1e-8, solver=solver, escalate=escalate, **options)
    learner = AmortisedLearner(HierarchicalPoissonModel(1, concentration=2., rate=1.), num_sleep=300,
                               num_holdout=0, regression=regression, seed=3, form="conditional")
    learner.compile(optimizer=keras.optimizers.Adam(0.01), **MODES_COMPILE[mode])
    return learner


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_fit_logs_the_condition_and_warns_only_when_the_solve_cannot_be_trusted(solver):
    """Compiled `fit` logs `condition` (above the float32 limit here). Escalated (default): finite loss and
    weights, no warning. Without escalation: a `RegressionWarning` at the end of `fit` naming lambda and the remedy.
    (The escalation under XLA is `test_escalation_happens_only_for_an_ill_conditioned_float32_system[xla]`: an XLA
    fit compiles for over a minute.)"""
    data = HierarchicalPoissonModel(1, concentration=2., rate=1.).joint_distribution().sample(
        64, seed=[1, 2])[1].numpy()
    learner = _poisson_learner(solver, True, "graph")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegressionWarning)
        history = learner.fit(data, batch_size=32, epochs=1, verbose=0)
    assert history.history["condition"][0] > FLOAT32_LIMIT
    assert np.isfinite(history.history["loss"][0])
    assert all(np.isfinite(v.numpy()).all() for v in learner.trainable_variables)
    learner = _poisson_learner(solver, False, "graph")
    with pytest.warns(RegressionWarning, match=r"too ill-conditioned for float32.*ridge=1e-08"):
        history = learner.fit(data, batch_size=32, epochs=1, verbose=0)
    assert history.history["condition"][0] > FLOAT32_LIMIT


def test_eager_fit_warns_at_each_untrusted_step_and_after_fit():
    data = HierarchicalPoissonModel(1, concentration=2., rate=1.).joint_distribution().sample(
        32, seed=[1, 2])[1].numpy()
    learner = _poisson_learner("cholesky", False, "eager")
    with pytest.warns(RegressionWarning) as record:
        learner.fit(data, batch_size=32, epochs=1, verbose=0)
    assert len(record) >= 2 and all("ridge=1e-08" in str(warning.message) for warning in record)
