"""Closed-form selection of the kernel ridge hyperparameters by leave-one-out or generalised cross-validation.

With `A = K + N lam I` the ridge smoother is `H = K A^{-1}` and `I - H = N lam A^{-1}`, so for targets
`y: [N, K]` the exact leave-one-out residual of point `i` and the generalised cross-validation (GCV) score are

    e_i = y_i - f_{-i}(x_i) = [A^{-1} y]_i / [A^{-1}]_ii,
    GCV = (1/N) |(I - H) y|^2 / ((1/N) tr(I - H))^2 = (1/N) |A^{-1} y|^2 / ((1/N) tr A^{-1})^2

(Wahba, 1990; Golub, Heath and Wahba, 1979). One eigendecomposition `K = U S U^T` gives both for a whole grid of
`lam`, since `A^{-1} = U (S + N lam I)^{-1} U^T`:

    A^{-1} y = U (S + N lam)^{-1} U^T y,     [A^{-1}]_ii = sum_j U_ij^2 / (s_j + N lam),

so a grid of `L` ridges costs one `O(N^3)` eigendecomposition and `O(N^2 (K + L))` more, and a grid of `B`
bandwidths `B` eigendecompositions. `select_hyperparameters` returns the grid point with the smallest error,
`select_regression` runs it on a fresh sleep set and writes the choice into a `KernelRidge`'s variables, and the
callback `SelectRegression` does so every few training steps. Nothing here is differentiated (the choice is a
discrete arg-min over a grid); everything runs inside `tf.function` and under XLA (where TensorFlow's stateless
sampler draws other numbers for the same seed, so `select_regression` selects on another sleep set, and the
Jacobi eigendecomposition is less accurate: 3e-4 relative on the errors at the smallest shift of the tests).

One-standard-error rule (leave-one-out only): given the setting held now (`current=(bandwidth, ridge)`, evaluated
exactly as one more point), `select_hyperparameters` keeps it unless the grid's best is better by more than
`tolerance` standard errors of the paired difference of the `N` per-sample squared residuals,

    d_i = sum_k (e_ik(current)^2 - e_ik(best)^2) / var(y_k),    switch iff mean(d) > tolerance * std(d) / sqrt(N),

and `SelectRegression(tolerance=1.)` applies it from its second selection on, so that the choice does not move
on noise (`tolerance=0`: the arg-min every time). It leaves the 1-D mixture and factor analysis at the exact-
gradient oracle, but it does not rescue the 50-step state-space model (joint form): 16.4 nats per series short
over 5 seeds against 14.2 without it and 3.6 for the median heuristic. There the later selections' moves pass the
rule, and selecting once before the first step (`SelectRegression(every=<more than the steps>)`) ends near the
median heuristic (4.35 short): re-selecting after the model has moved is what hurts (`benchmarks/RESULTS.md`,
"one-standard-error rule"). GCV has no per-sample residuals: it runs without the rule (`tolerance=0`).

The targets are what the step regresses: the per-sample gradient of the log-joint projected on a few random
directions (`tfp_amortised.estimator.gradient_projections`), whose mean squared error over directions is the
squared error of the regressed gradient, or, cheaper, the centred log-joint itself. Both are joint-form targets:
the conditional form regresses the same conditional expectation `E[grad log p(z, x) | x]` through functions of
`z`, and is given the hyperparameters chosen for the joint form, which can be far from right for it: on a 50-step
state-space model they raised its gradient error from 1.2 to 4.8 (`benchmarks/RESULTS.md`, issue 11), so keep
the median heuristic for the conditional form.

The selection uses the exact formulas on (a subsample of) the sleep set whatever the layer's solver: random
features and Nystrom then use the chosen values in their approximate solve.

#### References

[1] Gene H. Golub, Michael Heath, Grace Wahba. Generalized cross-validation as a method for choosing a good ridge
    parameter. Technometrics, 1979.
[2] Grace Wahba. Spline Models for Observational Data. SIAM, 1990 (section 4.2).
[3] Li K. Wenliang, Theodore Moskovitz, Heishiro Kanagawa, Maneesh Sahani. Amortised Learning by Wake-Sleep.
    ICML 2020.
"""

import typing

import keras
import numpy as np
import tensorflow as tf

from tfp_amortised import _joint
from tfp_amortised.estimator import check_seed, gradient_projections, sleep
from tfp_amortised.ridge import KERNELS, median_bandwidth

CRITERIA = ("loo", "gcv")
TARGETS = ("gradient", "log_joint")
BANDWIDTH_FACTORS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1., 2., 4.)  # times the median heuristic
RIDGES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.)


class Selection(typing.NamedTuple):
    """The chosen hyperparameters and the error of every grid point.

    Attributes:
      bandwidth: scalar `Tensor`, the chosen length scale.
      ridge: scalar `Tensor`, the chosen `lam`.
      errors: `Tensor[B, L]`, the criterion at every (bandwidth, ridge) of the grid, each target column relative
        to its variance and summed (about `K` for a regression no better than the targets' mean).
      bandwidths: `Tensor[B]`, the bandwidth grid.
      kept: scalar bool `Tensor`, whether the `current` setting was kept (False without one).
      current_error: scalar `Tensor`, the leave-one-out error of the `current` setting, as `errors` (NaN without
        one).
      standard_error: scalar `Tensor`, the standard error of `current_error - min(errors)` from the samples'
        paired squared residuals (NaN without a current setting).
    """

    bandwidth: tf.Tensor
    ridge: tf.Tensor
    errors: tf.Tensor
    bandwidths: tf.Tensor
    kept: tf.Tensor
    current_error: tf.Tensor
    standard_error: tf.Tensor


def ridge_path(gram, targets, ridges):
    """`A^{-1} y` and `diag(A^{-1})` for every `lam` of a grid, `A = K + N lam I`, from one eigendecomposition.

    Args:
      gram: `Tensor[N, N]`, the symmetric Gram matrix `K` (both triangles).
      targets: `Tensor[N, K]`.
      ridges: `Tensor[L]`, the grid of `lam > 0`.

    Returns:
      `(solutions, inverse_diagonal)`: `Tensor[L, N, K]` and `Tensor[L, N]`.
    """
    num_sleep = tf.cast(tf.shape(gram)[0], gram.dtype)
    eigenvalues, eigenvectors = tf.linalg.eigh(gram)  # [N], [N, N]
    inverse = 1. / (tf.maximum(eigenvalues, 0.)[tf.newaxis, :] + num_sleep * ridges[:, tf.newaxis])  # [L, N]
    projected = tf.matmul(eigenvectors, targets, transpose_a=True)  # U^T y: [N, K]
    solutions = tf.einsum("ij,lj,jk->lik", eigenvectors, inverse, projected)
    inverse_diagonal = tf.matmul(inverse, tf.square(eigenvectors), transpose_b=True)  # [L, N]
    return solutions, inverse_diagonal


def loo_residuals(gram, targets, ridges):
    """Exact leave-one-out residuals `e_i = y_i - f_{-i}(x_i) = [A^{-1} y]_i / [A^{-1}]_ii` for a grid of `lam`.

    `f_{-i}` is the ridge regression refitted without point `i`, with the same diagonal shift `N lam`.

    Args:
      gram: `Tensor[N, N]`, symmetric.
      targets: `Tensor[N, K]`.
      ridges: `Tensor[L]`.

    Returns:
      `Tensor[L, N, K]`.
    """
    solutions, inverse_diagonal = ridge_path(gram, targets, ridges)
    return solutions / inverse_diagonal[..., tf.newaxis]


def loo_sample_errors(gram, targets, ridges):
    """Each sample's squared leave-one-out residual, each target column relative to its variance and summed.

    Their mean over the samples is `cross_validation_errors(..., "loo")`; two settings' difference per sample is
    what `select_hyperparameters`' one-standard-error rule averages.

    Args:
      gram: `Tensor[N, N]`, symmetric.
      targets: `Tensor[N, K]`.
      ridges: `Tensor[L]`.

    Returns:
      `Tensor[L, N]`.
    """
    squared = tf.square(loo_residuals(gram, targets, ridges))  # [L, N, K]
    return tf.reduce_sum(squared / _target_variance(targets), axis=-1)


def cross_validation_errors(gram, targets, ridges, criterion="loo"):
    """Leave-one-out or GCV mean squared error for every `lam` of a grid, relative to the targets' variance.

    `loo`: `sum_k mean_i e_ik^2 / var(y_k)` with `e_ik = [A^{-1} y]_ik / [A^{-1}]_ii` (exact for kernel ridge);
    `gcv`: `sum_k mean_i [A^{-1} y]_ik^2 / (mean_i [A^{-1}]_ii)^2 / var(y_k)`. Each target column weighs alike.

    Args:
      gram: `Tensor[N, N]`, symmetric.
      targets: `Tensor[N, K]`.
      ridges: `Tensor[L]`.
      criterion: `"loo"` or `"gcv"`.

    Returns:
      `Tensor[L]`.
    """
    check_criterion(criterion)
    if criterion == "loo":
        return tf.reduce_mean(loo_sample_errors(gram, targets, ridges), axis=1)
    solutions, inverse_diagonal = ridge_path(gram, targets, ridges)
    squared = (tf.reduce_mean(tf.square(solutions), axis=1)
               / tf.square(tf.reduce_mean(inverse_diagonal, axis=1, keepdims=True)))  # [L, K]
    return tf.reduce_sum(squared / _target_variance(targets), axis=-1)


def _target_variance(targets):
    """`Tensor[K]`: each column's variance, kept above zero."""
    return tf.math.reduce_variance(targets, axis=0) + np.finfo(np.float32).tiny


def paired_difference(first, second):
    """Mean and standard error of the per-sample difference `first - second` (paired, same samples).

    Args:
      first, second: `Tensor[N]`, per-sample errors of two settings on the same samples (`N >= 2`).

    Returns:
      `(mean, standard_error)`: scalar `Tensor`s, `standard_error = std(first - second, ddof=1) / sqrt(N)`.
    """
    difference = first - second
    count = tf.cast(tf.size(difference), difference.dtype)
    mean = tf.reduce_mean(difference)
    return mean, tf.sqrt(tf.reduce_sum(tf.square(difference - mean)) / ((count - 1.) * count))


def select_hyperparameters(sleep_x, targets, *, kernel="gaussian", bandwidth_factors=BANDWIDTH_FACTORS,
                           ridges=RIDGES, criterion="loo", bandwidth_subsample=512, current=None, tolerance=1.):
    """The (bandwidth, ridge) of a grid with the smallest cross-validation error, or the current one if not worse.

    The bandwidth grid is `bandwidth_factors` times the median heuristic (`median_bandwidth` of the first
    `bandwidth_subsample` rows); each bandwidth costs one `N x N` Gram matrix and eigendecomposition, computed in
    float64 (the Gaussian kernel's eigenvalues fall far below float32's resolution of its largest ones, so a
    float32 eigendecomposition misstates the error at the small ridges: by 11% at `N lam = 4e-6` in the tests).

    One-standard-error rule (leave-one-out only): with a `current` setting, evaluated exactly as one more point
    (one more eigendecomposition), the grid's best point replaces it only if its error is lower by more than
    `tolerance` standard errors of the paired difference of the `N` per-sample squared residuals
    (`loo_sample_errors`, `paired_difference`), so a flat error surface does not move the choice on noise.
    `tolerance=0` is the plain arg-min over the grid (the current setting is evaluated and reported, never kept).

    Args:
      sleep_x: `Tensor[N, D]` kernel inputs of i.i.d. sleep draws.
      targets: `Tensor[N, K]`, what the regression predicts (`selection_targets`).
      kernel: a key of `tfp_amortised.ridge.KERNELS`.
      bandwidth_factors: `B` positive numbers.
      ridges: `L` positive numbers, the grid of `lam`.
      criterion: `"loo"` (default) or `"gcv"` (which has no per-sample residuals: no `current`).
      bandwidth_subsample: rows the median heuristic looks at.
      current: None, or the pair `(bandwidth, ridge)` of scalars held now (e.g. the previous selection).
      tolerance: a number `>= 0` of standard errors.

    Returns:
      `Selection` (bandwidth, ridge and bandwidths in the dtype of `sleep_x`, the errors in float64).
    """
    check_criterion(criterion)
    check_tolerance(tolerance)
    if current is not None and criterion != "loo":
        raise ValueError("The one-standard-error rule compares per-sample leave-one-out residuals, which GCV does "
                         "not have: pass current=None (or tolerance=0 to SelectRegression) with criterion='gcv', "
                         f"or criterion='loo'. Received: criterion={criterion!r}, current={current!r}")
    dtype = sleep_x.dtype
    sleep_x = tf.cast(sleep_x - tf.reduce_mean(sleep_x, axis=0), tf.float64)
    targets = tf.cast(targets, tf.float64)
    ridge_grid = tf.constant(ridges, tf.float64)
    bandwidths = median_bandwidth(sleep_x, bandwidth_subsample) * tf.constant(bandwidth_factors, tf.float64)
    gram = lambda bandwidth: KERNELS[kernel](length_scale=bandwidth).matrix(sleep_x, sleep_x)  # noqa: E731
    errors, samples = _grid_errors(gram, targets, bandwidths, ridge_grid, criterion)
    best = tf.argmin(tf.reshape(errors, [-1]))
    best = best // len(ridges), best % len(ridges)
    selection = Selection(bandwidths[best[0]], ridge_grid[best[1]], errors, bandwidths, tf.constant(False),
                          *[tf.constant(np.nan, tf.float64)] * 2)
    if current is not None:
        current = [tf.reshape(tf.cast(tf.convert_to_tensor(value, dtype_hint=tf.float64), tf.float64), [])
                   for value in current]  # a Python float stays float64
        current_samples = loo_sample_errors(gram(current[0]), targets, current[1][tf.newaxis])[0]  # [N]
        selection = _keep_or_switch(selection, current, current_samples, samples[best[0], best[1]], tolerance)
    return selection._replace(bandwidth=tf.cast(selection.bandwidth, dtype), ridge=tf.cast(selection.ridge, dtype),
                              bandwidths=tf.cast(bandwidths, dtype))


def _grid_errors(gram, targets, bandwidths, ridges, criterion):
    """The criterion at every grid point, and the per-sample leave-one-out errors behind it.

    Args:
      gram: callable, scalar bandwidth to `Tensor[N, N]`.
      targets: `Tensor[N, K]`.
      bandwidths: `Tensor[B]`; ridges: `Tensor[L]`.
      criterion: `"loo"` or `"gcv"`.

    Returns:
      `(errors, samples)`: `Tensor[B, L]` and `Tensor[B, L, N]` (`loo_sample_errors`; None for GCV).
    """
    if criterion == "gcv":
        return tf.stack([cross_validation_errors(gram(b), targets, ridges, criterion)
                         for b in tf.unstack(bandwidths)]), None
    samples = tf.stack([loo_sample_errors(gram(b), targets, ridges) for b in tf.unstack(bandwidths)])
    return tf.reduce_mean(samples, axis=-1), samples


def _keep_or_switch(selection, current, current_samples, best_samples, tolerance):
    """The one-standard-error rule: `selection` with `current` kept if the grid's best is not clearly better.

    Args:
      selection: `Selection` of the grid's arg-min.
      current: `(bandwidth, ridge)`, scalar `Tensor`s.
      current_samples, best_samples: `Tensor[N]`, per-sample errors (`loo_sample_errors`) of the two settings.
      tolerance: standard errors of the paired difference the best must gain (0: always the best).

    Returns:
      `Selection` with `kept`, `current_error` and `standard_error` filled in.
    """
    improvement, standard_error = paired_difference(current_samples, best_samples)
    kept = tf.logical_and(tolerance > 0, improvement <= tolerance * standard_error)
    return selection._replace(bandwidth=tf.where(kept, current[0], selection.bandwidth),
                              ridge=tf.where(kept, current[1], selection.ridge), kept=kept,
                              current_error=tf.reduce_mean(current_samples), standard_error=standard_error)


def selection_targets(joint, sample, *, targets="gradient", variables=None, seed=None, num_projections=8):
    """The regression targets of each sleep sample: projected log-joint gradients or the centred log-joint.

    Args:
      joint: a zero-argument callable returning the `tfd.JointDistribution` (a distribution is enough for
        `targets="log_joint"`).
      sample: dict `{node name: Tensor[N, *event_shape]}` of sleep samples, detached.
      targets: `"gradient"`: `gradient_projections` of `log p(z_n, x_n)` on `num_projections` random directions
        over `variables` (one double backward pass, or forward passes for an AutoBatched joint); `"log_joint"`:
        `log p(z_n, x_n)` minus its mean (the level does not enter the gradient).
      variables: the model's trainable variables (`targets="gradient"`).
      seed: stateless seed of the projections (`targets="gradient"`).
      num_projections: number of directions.

    Returns:
      `Tensor[N, K]`, detached (`K = num_projections`, or 1 for the log-joint).
    """
    check_targets(targets)
    if targets == "gradient":
        if variables is None or seed is None:
            raise ValueError("targets='gradient' projects the gradient with respect to the model's variables on "
                             f"random directions: pass variables and seed. Received: variables={variables!r}, "
                             f"seed={seed!r}")
        return gradient_projections(joint, sample, variables, seed, num_projections)
    log_joint = _joint.log_prob(_joint.resolve_joint(joint), sample)
    return tf.stop_gradient(log_joint - tf.reduce_mean(log_joint))[:, tf.newaxis]


def select_regression(regression, joint, *, num_sleep, seed, observed="x", targets="gradient", variables=None,
                      num_projections=8, criterion="loo", bandwidth_factors=BANDWIDTH_FACTORS, ridges=RIDGES,
                      tolerance=0.):
    """Draws a sleep set, selects the hyperparameters on it, and writes them into `regression`'s variables.

    Cost: `num_sleep` sleep draws and targets, then `B` Gram matrices and eigendecompositions of size
    `num_sleep` (`select_hyperparameters`): select on a subsample (`num_sleep` about 500-1000) when the step's own
    sleep set is larger; the chosen `lam` is used as it is at the step's `N` (the Gram matrix gets `N lam`).

    Args:
      regression: a `KernelRidge` with a fixed numeric `bandwidth` and `learn=False`; its (non-trainable)
        `log_bandwidth` and `log_ridge` are assigned, so `.keras` saving keeps the choice.
      joint: a zero-argument callable returning the model's `tfd.JointDistribution`.
      num_sleep: number of sleep samples to select on.
      seed: stateless seed `int32[2]` of the sleep draws (and of the projections, folded with 1).
      observed: name of the observed node.
      targets, variables, num_projections: see `selection_targets`.
      criterion, bandwidth_factors, ridges: see `select_hyperparameters`.
      tolerance: 0 (default): the grid's arg-min; `> 0`: `regression`'s current bandwidth and ridge are kept
        unless the grid's best is better by more than `tolerance` standard errors (`select_hyperparameters`).

    Returns:
      `Selection`.
    """
    if regression.learn or isinstance(regression.bandwidth_rule, str):
        raise ValueError("select_regression writes the bandwidth and ridge of a KernelRidge that holds them fixed: "
                         "pass KernelRidge(bandwidth=<a number>) (its start value), not a learning or median-"
                         f"heuristic one. Received: bandwidth={regression.bandwidth_rule!r}, learn={regression.learn}")
    seed = check_seed(seed)
    sample = sleep(joint, num_sleep, seed)
    values = selection_targets(joint, sample, targets=targets, variables=variables,
                               seed=tf.random.experimental.stateless_fold_in(seed, 1), num_projections=num_projections)
    sleep_x, _ = regression.kernel_inputs(sample[observed], sample[observed][:1])
    current = (regression.bandwidth, regression.ridge) if tolerance > 0 else None
    selection = select_hyperparameters(sleep_x, values, kernel=regression.kernel_name,
                                       bandwidth_factors=bandwidth_factors, ridges=ridges, criterion=criterion,
                                       bandwidth_subsample=regression.bandwidth_subsample, current=current,
                                       tolerance=tolerance)
    regression.log_bandwidth.assign(tf.math.log(tf.cast(selection.bandwidth, regression.log_bandwidth.dtype)))
    regression.log_ridge.assign(tf.math.log(tf.cast(selection.ridge, regression.log_ridge.dtype)))
    return selection


class SelectRegression(keras.callbacks.Callback):
    """Keras callback: `select_regression` on the learner's regression before every `every`-th training step.

    It runs when the model optimiser's iteration count is a multiple of `every` (so before the first step, and
    at the same steps after `.keras` save, load and resume: the choice lives in the layer's variables), on a
    fresh sleep set of `num_sleep` samples drawn with the seed `[learner seed, iteration]`. The first selection
    (iteration 0) is the grid's arg-min, the layer's start value being a placeholder; every later one keeps the
    layer's setting unless the grid's best is better by more than `tolerance` standard errors of the paired
    per-sample leave-one-out difference (`select_hyperparameters`), which stops the choice from jumping on a flat
    error surface. `tolerance=0` re-selects the arg-min every time (the behaviour before the rule). The
    callback's `history` lists `(iteration, Selection)` of the selections it ran.

    #### Examples

    ```python
    learner = AmortisedLearner(model, num_sleep=2000, regression=KernelRidge(bandwidth=1.))
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    learner.fit(x, epochs=10, callbacks=[SelectRegression(every=20)])
    ```

    Args:
      every: steps between selections.
      num_sleep: sleep samples to select on (500: `benchmarks/selection_quality`'s setting).
      targets, num_projections, criterion: see `select_regression` (defaults: its best setting in
        `benchmarks/selection_quality`).
      tolerance: standard errors a new setting must gain to replace the held one (`>= 0`; leave-one-out only:
        `criterion="gcv"` needs `tolerance=0`).
    """

    def __init__(self, every=20, num_sleep=500, targets="gradient", num_projections=8, criterion="loo",
                 tolerance=1.):
        super().__init__()
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every must be a positive integer. Received: every={every!r}")
        check_targets(targets)
        check_criterion(criterion)
        check_tolerance(tolerance)
        if criterion == "gcv" and tolerance > 0:
            raise ValueError("The one-standard-error rule compares per-sample leave-one-out residuals, which GCV "
                             "does not have: pass tolerance=0 with criterion='gcv'. Received: "
                             f"tolerance={tolerance!r}")
        self.every, self.num_sleep, self.targets, self.criterion = every, num_sleep, targets, criterion
        self.num_projections, self.tolerance = num_projections, float(tolerance)
        self.history = []
        self._select = None

    def on_train_batch_begin(self, batch, logs=None):
        iteration = int(self.model.optimizer.iterations.numpy())
        if iteration % self.every:
            return
        learner = self.model
        if self._select is None:  # traced once per tolerance (0 at iteration 0)
            self._select = tf.function(lambda seed, tolerance: select_regression(
                learner.regression, learner.joint_distribution, num_sleep=self.num_sleep, seed=seed,
                observed=learner.observed, targets=self.targets,
                variables=learner.generative_model.trainable_variables, num_projections=self.num_projections,
                criterion=self.criterion, tolerance=tolerance))
        seed = getattr(learner, "seed", None)
        self.history.append((iteration, self._select(
            tf.constant([0 if not isinstance(seed, int) else seed, iteration], tf.int32),
            self.tolerance if iteration else 0.)))


def check_criterion(criterion):
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}. Received: criterion={criterion!r}")


def check_tolerance(tolerance):
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number >= 0 of standard errors. Received: tolerance={tolerance!r}")


def check_targets(targets):
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}. Received: targets={targets!r}")

