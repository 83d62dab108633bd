"""Solvers for kernel ridge weights: exact Cholesky, random Fourier features and Nystrom (Wenliang et al., 2020).

Each is a pure function `(kernel, sleep_x, query_x, ridge, ...) -> (weights [M, N], jitter, condition)` computing

    alpha(x) = (K + N lam I)^{-1} k(X, x),    K_ij = k(x_i, x_j),

exactly or through a low-rank approximation of the kernel:

    cholesky          exact; O(N^2 D / 2) Gram (lower half), O(N^3 / 3) Cholesky, O(N^2 M) solve, O(N^2) memory
    random_features   k(x, y) ~ phi(x) . phi(y) with F random Fourier features; O(N F (D + F) + N M F)
    nystrom           k(x, y) ~ k(x, U) K_UU^{-1} k(U, y) on R inducing points; O(N R (D + R) + N M R)

The two approximations are linear in N (time and memory) for a fixed wake batch M. `kernel` is a
`tfp.math.psd_kernels` kernel; `KernelRidge` (in `tfp_amortised.ridge`) chooses it and the bandwidth.

Every solver factorises one square ridge system (`K + N lam I`, or `Phi^T Phi + N lam I` for features) and returns
an estimate of its 2-norm condition number (`linalg.solve_with_condition`). The relative error of a Cholesky
solve in a precision with machine epsilon `eps` is of order `condition * eps` (Higham, 2002, section 10.1): with
`escalate=True` (default) a float32 system whose `condition * eps` exceeds `CONDITION_TOLERANCE` is factorised and
solved again in float64 (`solve`). That happens with small ridges on duplicated (discrete) observations: the Gram
matrix has rank the number of distinct values, so its smallest eigenvalues are `N lam` while the largest grow with
the duplicates, and float32 rounding in the factorisation, not in the Gram matrix, swamps `N lam`.
"""

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import linalg

psd_kernels = tfp.math.psd_kernels

# Degrees of freedom 2 nu of the Student-t spectral density of each Matern kernel; None for the Gaussian one.
_DEGREES_OF_FREEDOM = {
    psd_kernels.ExponentiatedQuadratic: None,
    psd_kernels.MaternOneHalf: 1,
    psd_kernels.MaternThreeHalves: 3,
    psd_kernels.MaternFiveHalves: 5,
}

CONDITION_TOLERANCE = 1e-2
"""A solve is trusted while its condition estimate times the machine epsilon of its precision stays below this:
`condition < 8.4e4` in float32 (2^-23), `condition < 4.5e13` in float64. A kernel with unit amplitude has
`condition <= 1 + 1 / lam`, so the default `lam = 1e-3` is always trusted; below about `lam = 1e-5`, duplicated
observations exceed the float32 limit. Measured on duplicated Poisson counts (N = 1000 and 2000, Gaussian kernel,
bandwidth 0.5 and 1): the float32 prediction error against float64 was about 2e-4 at `condition * eps = 0.1`,
3e-3 at 0.5 and 3e-2 at 6, for targets in [0, 1]."""


def ridge_weights(kernel, sleep_x, query_x, ridge, escalate=True):
    """Kernel ridge weights `alpha = (K + N ridge I)^{-1} k(X, x)`, transposed to one row per query.

    The Gram matrix and the cross kernel come from one pass, `gram_and_cross` (the lower block columns of `K`
    only, each computed with the queries' rows of the same columns); the factorisation and solve are `solve`:
    `tfp_amortised.linalg.retrying_cholesky`, which reads only the lower triangle and retries a matrix that is not
    numerically positive definite with growing diagonal jitter, and the solve with a condition estimate, redone
    in float64 when float32 cannot be trusted. Its gradient (of a learning regression's hyperparameters) reuses
    the factor instead of differentiating it (`linalg.positive_definite_solve`).

    Args:
      kernel: a `tfp.math.psd_kernels.PositiveSemidefiniteKernel` with one feature dimension.
      sleep_x: `Tensor[N, D]`, the regression inputs (sleep observations).
      query_x: `Tensor[M, D]`, the points where the regression is evaluated (wake observations).
      ridge: scalar `lam > 0`; the Gram matrix is regularised by `N lam`.
      escalate: whether an ill-conditioned float32 system is solved again in float64 (`solve`).

    Returns:
      weights: `Tensor[M, N]`; `weights @ t` is the ridge prediction at each query for targets `t: [N, ...]`.
      jitter: scalar `Tensor`, the diagonal shift the Cholesky needed beyond `N ridge` (0 when none).
      condition: scalar `Tensor`, the estimated condition number of `K + N ridge I` (`solve`).
    """
    gram, cross = gram_and_cross(kernel, sleep_x, query_x)
    return _cholesky_weights(gram, cross, ridge, escalate)


def gram_and_cross(kernel, sleep_x, query_x, block_size=None):
    """The lower block columns of the Gram matrix `K = k(X, X)` and the cross kernel `k(X, Q)`, in one pass.

    The sleep rows are split into the blocks of `tfp_amortised.linalg.cholesky` (`linalg.block_partition`).
    For each block column `[start, stop)` one kernel evaluation gives `k([X[start:]; Q], X[start:stop])`: the
    Gram matrix on and below the diagonal block, and the queries' rows of the same columns. The blocks above
    the diagonal blocks are never computed (zeros): about `N^2 / 2 + N M` kernel entries instead of
    `N^2 + N M`. Every consumer reads only the lower triangle (`linalg.retrying_cholesky`), and the gradient
    of an entry below the diagonal counts both of its mirror images (`_lower_triangle_gradient`), so the
    gradient with respect to the kernel's inputs and parameters is that of the full symmetric matrix.
    When `N` is not known statically, the whole matrix is computed (one kernel evaluation).

    Args:
      kernel: a `tfp.math.psd_kernels.PositiveSemidefiniteKernel` with one feature dimension.
      sleep_x: `Tensor[N, D]`.
      query_x: `Tensor[M, D]`.
      block_size: rows per block column, or None for `cholesky`'s default.

    Returns:
      gram: `Tensor[N, N]`, equal to `K` on and below the diagonal blocks, zero above them.
      cross: `Tensor[N, M]`, `k(X, Q)`.
    """
    num_sleep = sleep_x.shape[0]
    if num_sleep is None:
        both = kernel.matrix(tf.concat([sleep_x, query_x], axis=0), sleep_x)  # [N + M, N]
        num_sleep = tf.shape(sleep_x)[0]
        return both[:num_sleep], tf.transpose(both[num_sleep:])
    gram_columns, cross_columns = [], []
    for start, stop in linalg.block_partition(num_sleep, block_size):
        column = kernel.matrix(tf.concat([sleep_x[start:], query_x], axis=0), sleep_x[start:stop])
        gram_columns.append(tf.pad(column[:num_sleep - start], [[start, 0], [0, 0]]))
        cross_columns.append(column[num_sleep - start:])
    gram = _lower_triangle_gradient(tf.concat(gram_columns, axis=1))
    return gram, tf.transpose(tf.concat(cross_columns, axis=1))


@tf.custom_gradient
def _lower_triangle_gradient(matrix):
    """Identity on `matrix: [N, N]` standing for the symmetric matrix of its lower triangle.

    A function of the symmetric matrix passes back a symmetric gradient `G`; the entry `(i, j)`, `i > j`, stands
    for both `(i, j)` and `(j, i)`, so its gradient is `2 G_ij`, the diagonal's `G_ii`, and entries above the
    diagonal get none.
    """
    def gradient(upstream):
        doubled = tf.linalg.band_part(upstream + tf.linalg.matrix_transpose(upstream), -1, 0)
        return tf.linalg.set_diag(doubled, tf.linalg.diag_part(upstream))

    return tf.identity(matrix), gradient


def _cholesky_weights(gram, cross, ridge, escalate):
    """`(gram + N ridge I)^{-1} cross`, transposed, the jitter and the condition estimate: `gram: [N, N]` (its lower
    triangle is read), `cross: [N, M]` -> `[M, N]`."""
    num_sleep = tf.cast(tf.shape(gram)[0], gram.dtype)
    gram = tf.linalg.set_diag(gram, tf.linalg.diag_part(gram) + num_sleep * ridge)
    solution, jitter, condition = solve(gram, cross, escalate)
    return tf.transpose(solution), jitter, condition


def solve(matrix, rhs, escalate=True, float64_matrix=None):
    """`matrix^{-1} rhs` by Cholesky, with its jitter and condition estimate; float32 escalated to float64 if needed.

    The factor, solve and condition estimate are `linalg.positive_definite_solve`'s. When `matrix` is
    float32, `escalate` is True and `condition * eps32` is not below `CONDITION_TOLERANCE` (or not finite), the
    factorisation and solve are redone in float64 and cast back; `condition` is then the larger of the two
    estimates. The float64 matrix is `matrix` cast (for a kernel Gram matrix float32 rounding of the entries is
    harmless: the error came from the factorisation), or `float64_matrix()` when the float32 entries themselves
    carry the error (sums of products, `Phi^T Phi`). The decision is a `tf.cond` on a tensor (eager, `tf.function`,
    XLA and `tf.distribute` alike): a well-conditioned system pays only the estimate (`O(S^2)`), an escalated one a
    float64 factorisation too. Measured (median wall seconds of the factorisation and solve, float32 Gaussian Gram
    matrices, 100 right-hand sides, 2-core CPU shared with other jobs): N = 1000, 0.0146 without the estimate,
    0.0145 with it, 0.037 escalated; N = 4000, 0.204, 0.207 and 1.13 (slower still on GPUs with slow float64).

    Args:
      matrix: `Tensor[S, S]`, symmetric positive definite (its lower triangle is read).
      rhs: `Tensor[S, K]`.
      escalate: whether to redo an ill-conditioned float32 solve in float64.
      float64_matrix: None, or a callable returning `matrix` computed in float64, `Tensor[S, S]`.

    Returns:
      solution: `Tensor[S, K]`.
      jitter: scalar `Tensor`, the diagonal shift the factorisation needed.
      condition: scalar `Tensor`, the estimate of the 2-norm condition number of `matrix`.
    """
    solution, jitter, condition = linalg.positive_definite_solve(matrix, rhs)
    if not escalate or matrix.dtype != tf.float32:
        return solution, jitter, condition

    def in_float64():
        matrix64 = tf.cast(matrix, tf.float64) if float64_matrix is None else float64_matrix()
        solution64, jitter64, condition64 = linalg.positive_definite_solve(matrix64, tf.cast(rhs, tf.float64))
        condition64 = tf.cast(condition64, tf.float32)  # the larger estimate, and float64's if float32's is NaN
        return (tf.cast(solution64, tf.float32), tf.cast(jitter64, tf.float32),
                tf.where(condition > condition64, condition, condition64))

    return tf.cond(trusted(condition, tf.float32, escalate=False), lambda: (solution, jitter, condition), in_float64)


def trusted(condition, dtype, escalate=True):
    """Whether a solve of `dtype` (float32 or float64) with this condition estimate can be trusted: `condition`
    times the machine epsilon of the precision it was solved in (float64 when `escalate` applied) is below
    `CONDITION_TOLERANCE`. Works on NumPy values and tensors; False for a non-finite `condition`."""
    precision = np.float64 if escalate or tf.as_dtype(dtype) == tf.float64 else np.float32
    return condition * np.finfo(precision).eps < CONDITION_TOLERANCE


def feature_ridge_weights(sleep_features, query_features, ridge, escalate=True):
    """Ridge weights for a kernel that is an inner product of `F` features, `k(x, y) = phi(x) . phi(y)`.

    With `Phi = phi(X): [N, F]`, the push-through identity `(Phi Phi^T + N lam I)^{-1} Phi =
    Phi (Phi^T Phi + N lam I)^{-1}` turns the `N x N` system into an `F x F` one:

        alpha(x) = Phi (Phi^T Phi + N lam I_F)^{-1} phi(x).

    Cost O(N F^2 + F^3 / 3 + N M F): linear in `N`. When `F > N` (known statically) the `N x N` system
    `alpha(x) = (Phi Phi^T + N lam I)^{-1} Phi phi(x)` is the smaller one, and is solved instead. An escalated
    solve (`solve`) forms the system from the features cast to float64 (float32 sums of `N` products carry
    rounding of the size of the ridge).

    Args:
      sleep_features: `Tensor[N, F]`, the features `phi(x_n)` of the sleep observations.
      query_features: `Tensor[M, F]`, the features of the query points.
      ridge: scalar `lam > 0`.
      escalate: whether an ill-conditioned float32 system is solved again in float64 (`solve`).

    Returns:
      weights: `Tensor[M, N]`.
      jitter: scalar `Tensor`, the diagonal shift the Cholesky needed beyond `N ridge`.
      condition: scalar `Tensor`, the estimated condition number of the system solved (`F x F` or `N x N`).
    """
    num_sleep, num_features = sleep_features.shape[0], sleep_features.shape[-1]
    dual = num_sleep is not None and num_features is not None and num_features > num_sleep

    def system(dtype):  # Phi^T Phi + N lam I_F, or Phi Phi^T + N lam I_N for the dual
        features = tf.cast(sleep_features, dtype)
        matrix = tf.matmul(features, features, transpose_a=not dual, transpose_b=dual)
        num_sleep = tf.cast(tf.shape(features)[0], dtype)
        return tf.linalg.set_diag(matrix, tf.linalg.diag_part(matrix) + num_sleep * tf.cast(ridge, dtype))

    rhs = (tf.matmul(sleep_features, query_features, transpose_b=True) if dual  # [N, M]
           else tf.transpose(query_features))  # [F, M]
    solution, jitter, condition = solve(system(sleep_features.dtype), rhs, escalate,
                                        lambda: system(tf.float64))
    if dual:
        return tf.transpose(solution), jitter, condition
    return tf.matmul(solution, sleep_features, transpose_a=True, transpose_b=True), jitter, condition


def fourier_frequencies(kernel, dim, num_frequencies, seed, dtype=tf.float32):
    """Frequencies `omega: [D, num_frequencies]` drawn from the spectral density of a stationary kernel.

    Bochner's theorem: `k(x - y) = E_omega[cos(omega . (x - y))]` with `omega` drawn from the kernel's
    normalised spectral density (Rahimi and Recht, 2007). For the length scale `l`:

        ExponentiatedQuadratic:   omega ~ N(0, I / l^2)
        Matern, order nu:         omega ~ multivariate Student-t, 2 nu degrees of freedom, scale I / l^2,
                                  i.e. omega = g sqrt(2 nu / u) / l, g ~ N(0, I), u ~ chi^2(2 nu)

    The chi-squared draw is a sum of `2 nu` (1, 3 or 5) squared normals, so the frequencies are the same in
    eager, `tf.function` and XLA.

    Args:
      kernel: a `tfp.math.psd_kernels` `ExponentiatedQuadratic`, `MaternOneHalf`, `MaternThreeHalves` or
        `MaternFiveHalves` with scalar parameters.
      dim: the feature size `D` of the inputs.
      num_frequencies: number of frequencies.
      seed: a stateless seed, `int32[2]`.
      dtype: dtype of the result.

    Returns:
      `Tensor[D, num_frequencies]`.
    """
    if type(kernel) not in _DEGREES_OF_FREEDOM:
        raise ValueError(
            "Random Fourier features need a kernel with a known spectral density, one of "
            f"{[k.__name__ for k in _DEGREES_OF_FREEDOM]}. Received: kernel of type {type(kernel).__name__}")
    normal_seed, chi2_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    frequencies = tf.random.stateless_normal([dim, num_frequencies], normal_seed, dtype=dtype)
    degrees_of_freedom = _DEGREES_OF_FREEDOM[type(kernel)]
    if degrees_of_freedom is not None:
        chi2 = tf.reduce_sum(
            tf.random.stateless_normal([degrees_of_freedom, num_frequencies], chi2_seed, dtype=dtype)**2, axis=0)
        frequencies *= tf.sqrt(degrees_of_freedom / chi2)
    return frequencies / tf.cast(kernel.length_scale, dtype)


def random_fourier_features(x, frequencies, amplitude=None):
    """Random Fourier features `phi(x) = a [cos(omega^T x), sin(omega^T x)] / sqrt(F / 2)`.

    `phi(x) . phi(y) = a^2 mean_j cos(omega_j . (x - y))`, an unbiased estimate of `k(x, y)` when the
    `omega_j` come from `fourier_frequencies`.

    Args:
      x: `Tensor[B, D]`.
      frequencies: `Tensor[D, F / 2]`.
      amplitude: the kernel's amplitude `a` (scalar), or None for 1.

    Returns:
      `Tensor[B, F]`.
    """
    projection = tf.matmul(x, frequencies)
    scale = tf.math.rsqrt(tf.cast(tf.shape(frequencies)[-1], x.dtype))
    if amplitude is not None:
        scale *= tf.cast(amplitude, x.dtype)
    return scale * tf.concat([tf.cos(projection), tf.sin(projection)], axis=-1)


def random_feature_ridge_weights(kernel, sleep_x, query_x, ridge, num_features=1024, seed=(0, 0), escalate=True):
    """Approximate ridge weights from `num_features` random Fourier features (Rahimi and Recht, 2007).

    The kernel is replaced by `phi(x) . phi(y)` (`random_fourier_features`), whose error falls as
    `1 / sqrt(num_features)`; the weights come from `feature_ridge_weights`. Cost O(N F (D + F) + N M F).

    Args:
      kernel: a stationary kernel that `fourier_frequencies` accepts.
      sleep_x: `Tensor[N, D]`.
      query_x: `Tensor[M, D]`.
      ridge: scalar `lam > 0`.
      num_features: even number `F` of features (`F / 2` frequencies, each giving a cosine and a sine).
      seed: stateless seed of the frequencies, `int32[2]`: the same seed gives the same features.
      escalate: as in `feature_ridge_weights`.

    Returns:
      weights: `Tensor[M, N]`.
      jitter, condition: scalar `Tensor`s (see `feature_ridge_weights`).
    """
    frequencies = fourier_frequencies(kernel, sleep_x.shape[-1], num_features // 2, seed, sleep_x.dtype)
    return feature_ridge_weights(random_fourier_features(sleep_x, frequencies, kernel.amplitude),
                                 random_fourier_features(query_x, frequencies, kernel.amplitude), ridge, escalate)


def nystrom_ridge_weights(kernel, sleep_x, query_x, ridge, num_inducing=512, escalate=True):
    """Approximate ridge weights from the Nystrom approximation on `num_inducing` sleep points.

    With inducing points `U`, the first `R = num_inducing` sleep rows (a uniform random subset, the rows being
    i.i.d. draws), and `L L^T = K_UU`, the features `phi(x) = L^{-1} k(U, x)` give the Nystrom kernel
    `k(x, U) K_UU^{-1} k(U, y)` (Williams and Seeger, 2001), exact when `U` is the whole sleep set; the
    weights come from `feature_ridge_weights`. Cost O(N R (D + R) + N M R).

    Args:
      kernel: a `tfp.math.psd_kernels` kernel with one feature dimension.
      sleep_x: `Tensor[N, D]`.
      query_x: `Tensor[M, D]`.
      ridge: scalar `lam > 0`.
      num_inducing: number `R` of inducing points (all `N` when `R >= N`).
      escalate: as in `feature_ridge_weights`.

    Returns:
      weights: `Tensor[M, N]`.
      jitter: scalar `Tensor`, the diagonal shifts the Cholesky factorisations of `K_UU` and of the
        `R x R` ridge system needed.
      condition: scalar `Tensor`, the estimated condition number of the `R x R` ridge system. (`K_UU` has no
        ridge: duplicated inducing points make it singular, which its jitter repairs and reports.)
    """
    inducing = sleep_x[:num_inducing]
    chol, inducing_jitter = linalg.retrying_cholesky(
        kernel.matrix(inducing, inducing))

    def features(x):
        return tf.transpose(tf.linalg.triangular_solve(chol, kernel.matrix(inducing, x)))

    weights, jitter, condition = feature_ridge_weights(features(sleep_x), features(query_x), ridge, escalate)
    return weights, inducing_jitter + jitter, condition


SOLVERS = {
    "cholesky": ridge_weights,
    "random_features": random_feature_ridge_weights,
    "nystrom": nystrom_ridge_weights,
}
SOLVER_NAMES = (*SOLVERS, "auto")
"""Accepted `solver` settings: a key of `SOLVERS`, or `"auto"` (`choose_solver`)."""

AUTO_MAX_EXACT = 1000
"""`solver="auto"` solves exactly up to this many sleep samples, and by `AUTO_APPROXIMATION` above (measurements
in `choose_solver`)."""
AUTO_APPROXIMATION = "nystrom"

# Which options each solver takes (beyond kernel, sleep_x, query_x, ridge).
_OPTIONS = {"cholesky": (), "random_features": ("num_features", "seed"), "nystrom": ("num_inducing",)}


def choose_solver(solver, num_sleep):
    """The solver to run for `solver` and `N` sleep samples: `solver` itself, or for `"auto"` a key of `SOLVERS`.

    `"auto"` is the exact `"cholesky"` up to `AUTO_MAX_EXACT` sleep samples (and when `N` is not known
    statically), and `AUTO_APPROXIMATION` (Nystrom, 512 inducing points by default) above, where it was faster at
    the same gradient error. Measured on a 2-core CPU shared with other jobs (load average 9-14), float32:
    median process CPU seconds of the learner's train step on the binary-image model of
    `benchmarks/step_speed.py` (M = 100, 64 held-out samples; 5 interleaved repeats), and the median relative
    error of the softplus model's gradient (`benchmarks/step_speed.py`), exact / Nystrom R = 512 / random
    features F = 1024:

        N      step CPU s               gradient error
        500    0.061 / 0.073 / 0.066    0.0634 / 0.0635 / 0.0604
        1000   0.122 / 0.122 / 0.134    0.0304 / 0.0304 / 0.0353
        1500   0.185 / 0.156 / 0.173    0.0403 / 0.0403 / 0.0392
        2000   0.291 / 0.218 / 0.236    0.0313 / 0.0313 / 0.0343
        3000   0.511 / 0.313 / 0.336    0.0295 / 0.0295 / 0.0310

    Nystrom's error equals the exact solver's at every N here (the softplus observation is 1-D), so the
    threshold is where its step became cheaper: a tie at 1000, 16% cheaper at 1500. `python -m
    benchmarks.step_speed --only auto` measures it again, to N = 50 000. On higher-dimensional observations
    (`python -m benchmarks.regression_quality --only gradient --solvers cholesky,nystrom`: factor analysis 6-d,
    Bernoulli mixture 6 binary, sigmoid belief network 20 binary, AR(1) series of 50 steps and its kernel on
    autocovariances) Nystrom's median gradient error at N = 2000-8000 was 1.000-1.032 times the exact solve's
    (joint form; conditional form 1.000-1.029 to N = 4000), 2 sleep seeds, `benchmarks/RESULTS.md`.

    Args:
      solver: a name in `SOLVER_NAMES`.
      num_sleep: `N`, a Python int, or None when unknown.

    Returns:
      A key of `SOLVERS`.
    """
    if solver != "auto":
        return solver
    return "cholesky" if num_sleep is None or num_sleep <= AUTO_MAX_EXACT else AUTO_APPROXIMATION


def options_for(solver, options):
    """The entries of `options` that `solver` (a key of `SOLVERS`) takes: `"auto"` passes every solver's options,
    and each chosen solver keeps its own."""
    return {name: value for name, value in options.items() if name in _OPTIONS[solver]}
