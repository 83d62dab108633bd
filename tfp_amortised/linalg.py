"""Fast Cholesky factorisation and solve of symmetric positive-definite matrices, in TensorFlow ops only.

On CPU `tf.linalg.cholesky` runs on one core, while `tf.matmul` uses them all. `cholesky` below is a
right-looking blocked factorisation whose work is almost all in `tf.matmul`, so it is several times faster
for the `N x N` Gram matrices of the exact kernel-ridge solver; `retrying_cholesky` adds TFP's diagonal-jitter
retry on top of it, and `cholesky_solve` is the blocked solve with the factor. `solve_with_condition` is the same
solve with an estimate of the condition number, and `positive_definite_solve` solves `A X = B` with both,
differentiated as a linear solve, without going back through the factorisation.
"""

import numbers

import tensorflow as tf
from tensorflow.python.ops import control_flow_util

# On CPU, up to this size the blocked factorisation does not pay (its gradient does), and blocks of this size
# were the fastest: measurements in `cholesky`'s docstring. On GPU tf.linalg.cholesky is cuSOLVER's.
_MAX_UNBLOCKED_ROWS = 768
_BLOCK_SIZE = 256


def cholesky(matrix, block_size=None):
    """Lower Cholesky factor `L` of symmetric positive-definite matrices, `A = L L^T`.

    The same factor as `tf.linalg.cholesky`, and the same gradient, computed by a blocked algorithm whose
    work is matrix products. Only the lower triangle of `matrix` is read. A matrix that is not numerically
    positive definite gives a factor that is all NaN (as `tf.linalg.cholesky`'s is, in its lower triangle).

    Works eagerly, in `tf.function` and under XLA: the loop over blocks is a Python loop, unrolled for the
    static `N`. When `N` is not known statically, or on GPU, this is one call to `tf.linalg.cholesky`. Under
    XLA (`jit_compile=True`) the default factorisation is XLA's own (blocked) Cholesky, and the gradient is
    the blocked one below.

    #### Mathematical details

    Blocks of `b` rows and columns, `A = [[A11, A21^T], [A21, A22]]` with `A11: [b, b]`. One step:

        L11 = chol(A11)                        tf.linalg.cholesky, b x b
        L21 = A21 L11^{-T}                     tf.linalg.triangular_solve, [N - b, b]
        S   = A22 - L21 L21^T                  tf.matmul, lower block columns only
        L22 = chol(S)                          the next steps, on the Schur complement S

    `N^3 / 3` multiply-adds in all, of which all but `O(N^2 b)` are in the trailing update. Only the blocks
    on or below the diagonal of `S` are computed, one block column at a time (measured faster than one
    `[N - b, N - b]` product, which does twice the work).

    The gradient is the symmetric one of `tf.linalg.cholesky` (Murray, 2016, for one block),
    `A_bar = sym(L^{-T} Phi(L^T L_bar) L^{-1})`, with `Phi` taking the lower triangle and halving the
    diagonal and `sym(X) = (X + X^T) / 2`; it is computed by the reverse of the blocks above, from the last
    block to the first, with `G` the gradient of the trailing matrix `S` (symmetric):

        L21_bar <- L21_bar - 2 G L21
        A21_bar  = L21_bar L11^{-1}
        L11_bar <- L11_bar - A21_bar^T L21
        A11_bar  = sym(L11^{-T} Phi(L11^T L11_bar) L11^{-1})
        A_bar    = [[A11_bar, A21_bar^T / 2], [A21_bar / 2, G]]

    again matrix products apart from `b x b` blocks and triangular solves with `b` columns.

    Default rule, on CPU: `N <= 768`, one call to `tf.linalg.cholesky`; larger `N`, blocks of `b = 256`.
    The gradient is in blocks of 256 at every `N` (forward and backward with one block / blocks of 256 /
    `tf.linalg.cholesky`'s, one run: N = 600, 0.019 / 0.013 / 0.022 s; N = 768, 0.041 / 0.017 / 0.031 s).
    Median seconds, float32 Gaussian Gram matrices, 2-core Xeon shared with other jobs (noisy: a few
    interleaved repeats; `benchmarks/cholesky_speed.py` measures it again):

        N      tf.linalg.cholesky   b=128   b=192   b=256   b=384   b=512
        600    0.0030               0.0033  0.0034  0.0037  0.0035
        750    0.0050               0.0049  0.0049  0.0052  0.0051
        1000   0.0100               0.0088  0.0086  0.0091  0.0092
        2000   0.093                0.033   0.029   0.028   0.034   0.038
        4000   0.59                 0.28    0.26    0.25    0.26    0.28
        8000   4.2                  1.28    1.27    1.19    1.55

    Blocks of 768 and 1024 were slower still (4000: 0.59 and 0.63 s). Computing the full trailing product
    instead of its lower block columns was slower at every block size (one run: 4000, 0.35 s at best against
    0.25 s; 8000, 5.1 s against 1.9 s). Forward and backward at N = 4000 (b = 256, one run): 1.5 s, against
    6.9 s for `tf.linalg.cholesky` and 2.5 s for automatic differentiation through the blocks (whose gradient
    is moreover the lower-triangle one, not `tf.linalg.cholesky`'s symmetric one). Under XLA on CPU (one
    run): the forward 0.85 s for XLA's Cholesky, 1.5 s blocked; forward and backward 2.0 s with XLA's forward
    and the blocked backward, 2.6 s blocked throughout, 8.4 s for `tf.linalg.cholesky`'s. XLA's Cholesky is
    slow on small blocks (0.23 ms at 32 rows, 12 ms at 256, where TensorFlow's takes 0.8 ms), so blocks of 256
    whose diagonal blocks were factored again in 32s ran 3.6x faster than it at N = 1000 (15 against 54 ms)
    and 1.1x at 4000. It was not kept: XLA compiles the unrolled blocks for 7 s at N = 1000 and 28 s at 4000
    per factorisation, and a learner's step holds several (retry, float64 escalation, gradient): one
    `jit_compile=True` step of the default learner at N = 2000 took 96 s instead of 26 s in the test suite.

    #### References

    [1] Iain Murray. Differentiation of the Cholesky decomposition. arXiv:1602.07527, 2016.
    [2] Gene H. Golub, Charles F. Van Loan. Matrix Computations, 4th ed., 2013, section 4.2 (block Cholesky).

    Args:
      matrix: `Tensor[..., N, N]`, symmetric positive definite, float32 or float64.
      block_size: rows per block, a positive `int`; `None` (default) for the rule above. A block size at
        least `N` is one call to `tf.linalg.cholesky`. An explicit size is used on GPU too.

    Returns:
      `Tensor[..., N, N]`, lower triangular, the dtype of `matrix`.

    Raises:
      ValueError: `matrix` has fewer than 2 dimensions or is not square; `block_size` is not a positive int.
    """
    matrix = _checked_matrix(matrix)
    return _factor_with_gradient(matrix, *_partitions(matrix, block_size))


def retrying_cholesky(matrix, jitter=None, max_iters=5, block_size=None):
    """`cholesky`, retried with growing diagonal jitter when the matrix is not numerically positive definite.

    The semantics of `tfp.experimental.distributions.marginal_fns.retrying_cholesky`: factor `A`; for each
    matrix of the batch whose factor is not finite, factor `A + s I` with `s = jitter`, then `10 jitter`, ...,
    at most `max_iters` retries. The gradient is `cholesky`'s at `A + s I`; `s` has none.

    #### Mathematical details

        s = 0;  L = chol(A)
        if L not finite:  s = jitter
        repeat at most max_iters times, while some L is not finite:
            L = chol(A + s I);  if L not finite: s = 10 s

    #### References

    [1] Nicholas Higham. What is a modified Cholesky factorization? 2020.
        https://nhigham.com/2020/12/22/what-is-a-modified-cholesky-factorization/
    [2] TensorFlow Probability 0.25, `tfp.experimental.distributions.marginal_fns.retrying_cholesky`.

    Args:
      matrix: `Tensor[..., N, N]`, symmetric, float32 or float64.
      jitter: first diagonal shift, a positive scalar; `None` (default) for 1e-6 (float32) or 1e-10 (float64).
      max_iters: maximum number of retries, a non-negative `int`.
      block_size: as in `cholesky`.

    Returns:
      chol: `Tensor[..., N, N]`, the lower Cholesky factor of `A + s I`; all NaN for a matrix of the batch that
        still failed after `max_iters` retries.
      jitter_used: `Tensor[...]`, the shift `s` of each matrix (0 where `A` factored; for one that still
        failed, as in TFP, 10 times the last shift tried).

    Raises:
      ValueError: as `cholesky`, or `max_iters` is not a non-negative int.
    """
    matrix = _checked_matrix(matrix)
    if not isinstance(max_iters, int) or max_iters < 0:
        raise ValueError(f"`max_iters` must be a non-negative int. Received: max_iters={max_iters!r}")
    if jitter is None:
        jitter = 1e-10 if matrix.dtype == tf.float64 else 1e-6
    forward_blocks, backward_blocks = _partitions(matrix, block_size)

    @tf.custom_gradient
    def factor_with_retries(matrix):
        chol, shift = _retry(matrix, tf.convert_to_tensor(jitter, matrix.dtype), max_iters, forward_blocks)
        return (chol, shift), lambda chol_grad, shift_grad: _factor_gradient(chol, chol_grad, backward_blocks)

    return factor_with_retries(matrix)


def cholesky_solve(chol, rhs, block_size=None):
    """`(L L^T)^{-1} B` from the lower Cholesky factor `L`: `tf.linalg.cholesky_solve`, by blocks on CPU.

    Forward substitution `L Y = B` then back substitution `L^T X = Y`, one block of `b` rows at a time: each
    block is a `b x b` triangular solve after subtracting the product of the rows already solved, a
    `tf.matmul` that uses every core (`tf.linalg.triangular_solve` on CPU runs on one). Only the lower triangle
    of `chol` is read; gradients follow by automatic differentiation.

    Default rule, as `cholesky`'s forward: one call to `tf.linalg.cholesky_solve` up to `N = 768`, when `N` is not
    known statically, on GPU and under XLA; blocks of 256 rows otherwise. Measured (2-core CPU shared with
    other jobs, load average 15; median of 7 interleaved calls, float32, 164 right-hand sides):
    `tf.linalg.cholesky_solve` / blocks of 256: N = 1000, 32 / 35 ms; 2000, 127 / 53 ms; 4000, 325 / 108 ms.

    Args:
      chol: `Tensor[..., N, N]`, lower triangular (what `cholesky` returns).
      rhs: `Tensor[..., N, K]`.
      block_size: rows per block, a positive int, or None for the rule above.

    Returns:
      `Tensor[..., N, K]`.
    """
    chol, rhs = _checked_matrix(chol), tf.convert_to_tensor(rhs)
    blocks = _partitions(chol, block_size)[0]
    if len(blocks) == 1:
        return tf.linalg.cholesky_solve(chol, rhs)
    solved = []  # forward substitution, L Y = B
    for start, stop in blocks:
        residual = rhs[..., start:stop, :]
        if solved:
            residual -= tf.matmul(chol[..., start:stop, :start], tf.concat(solved, axis=-2))
        solved.append(tf.linalg.triangular_solve(chol[..., start:stop, start:stop], residual, lower=True))
    result = []  # back substitution, L^T X = Y, from the last block up
    for (start, stop), residual in zip(reversed(blocks), reversed(solved)):
        if result:
            residual -= tf.matmul(chol[..., stop:, start:stop], tf.concat(result, axis=-2), transpose_a=True)
        result.insert(0, tf.linalg.triangular_solve(chol[..., start:stop, start:stop], residual, lower=True,
                                                    adjoint=True))
    return tf.concat(result, axis=-2)


def positive_definite_solve(matrix, rhs, block_size=None):
    """`X = A^{-1} B` for a symmetric positive-definite `A`, by `retrying_cholesky` and `solve_with_condition`,
    with the gradient of a linear solve instead of the reverse pass through the factorisation.

    With the upstream gradient `G` of `X`: `B_bar = A^{-1} G` and `A_bar = -sym(A^{-1} G X^T)` (the gradient with
    respect to the symmetric matrix, as `retrying_cholesky`'s), from the factor already computed: one more solve
    and an outer product, O(N^2 K), where differentiating `cholesky` costs O(N^3) (measured forward and backward
    of the kernel ridge weights with K = 164 right-hand sides: 1.8x faster at N = 1000, 3.3x at N = 4000). The
    gradient is that of `(A + s I)^{-1} B` when jitter `s` was needed.

    Args:
      matrix: `Tensor[N, N]`, symmetric (only its lower triangle is read), float32 or float64.
      rhs: `Tensor[N, K]`.
      block_size: as in `cholesky`.

    Returns:
      solution: `Tensor[N, K]`.
      jitter: scalar `Tensor`, the shift `s` (`retrying_cholesky`), without gradient.
      condition: scalar `Tensor`, the estimate of the condition number of `A + s I` (`solve_with_condition`),
        without gradient.
    """
    chol, jitter = retrying_cholesky(tf.stop_gradient(matrix), block_size=block_size)
    diagonal = tf.stop_gradient(tf.linalg.diag_part(matrix))

    @tf.custom_gradient
    def solve(matrix, rhs):  # pylint: disable=unused-argument (matrix carries the gradient)
        solution, condition = solve_with_condition(chol, rhs, diagonal, block_size)

        def gradient(upstream, _):
            rhs_grad = cholesky_solve(chol, upstream, block_size)
            matrix_grad = -tf.matmul(rhs_grad, solution, transpose_b=True)
            return 0.5 * (matrix_grad + tf.linalg.matrix_transpose(matrix_grad)), rhs_grad

        return (solution, condition), gradient

    solution, condition = solve(matrix, rhs)
    return solution, jitter, tf.stop_gradient(condition)


def solve_with_condition(chol, rhs, diagonal=None, block_size=None):
    """`cholesky_solve(chol, rhs)` and an estimate of the 2-norm condition number of `A = L L^T`, nearly free.

    `kappa_2(A) = lambda_max / lambda_min`, each factor bounded below by a Rayleigh-type quotient at a cost of
    `O(N^2)` beside the `O(N^3 / 3)` factorisation: one product with `L`, and one more right-hand side of the solve
    (one step of inverse iteration). The diagonal of `L` alone is not enough: on the Gram matrix of 2000 duplicated
    discrete observations `max(diag L)^2 / min(diag L)^2` was 5e4 where `kappa_2` was 4.6e7 (it misses the size of
    `lambda_max`, which grows with the number of duplicates).

    #### Mathematical details

    With `u = 1`, `v` a fixed standard-normal vector (stateless seed `[0, 0]`) and `l_kk` the diagonal of `L`:

        lambda_max >= max(|L^T u|^2 / |u|^2, |L^T v|^2 / |v|^2, max_i A_ii)        (w^T A w / w^T w)
        1 / lambda_min >= max(|A^{-1} v| / |v|, 1 / min_k l_kk^2)          (l_kk^2 >= lambda_min)

    so `condition`, their product, is a lower bound on `kappa_2(A)` up to rounding (`A_ii` only when `diagonal` is
    given). The positive `u` catches the top eigenvalue of a Gram matrix with positive entries (Perron-Frobenius),
    the diagonal that of a feature system `Phi^T Phi` with signed features; `|A^{-1} v| / |v|` is about
    `sqrt(mean_i lambda_i^{-2})`, close to `1 / lambda_min` when many eigenvalues sit at the bottom of the spectrum
    (a ridge-regularised Gram matrix, whose kernel eigenvalues decay fast, has all but a few at `N lam`), about
    `sqrt(N)` times below it for one isolated small eigenvalue (20 times at N = 100 in the tests).

    Measured against `numpy.linalg.cond` (float64), `kappa_2 / condition` was 1.05 to 1.35 on Gaussian Gram
    matrices with ridge (N = 100 to 2000, lam = 1e-2 to 1e-8, continuous and duplicated Poisson observations), 2.3
    to 3.5 on random-feature systems `Phi^T Phi + N lam I` (F = 64) and below 8 on Nystrom ones (R = 50), with
    `diagonal`; `tests/test_faults_conditioning.py` asserts 1.5 and 10. A second power and inverse step
    brought such cases within 1.3, but cost 25% more than the factorisation and solve at N = 4000 (memory-bound
    products with `L` and a sequential one-column solve), and the row norms of `L` (for `A_ii` without `diagonal`)
    cost twice the product with `L`.

    Args:
      chol: `Tensor[..., N, N]`, lower triangular (what `cholesky` returns).
      rhs: `Tensor[..., N, K]`.
      diagonal: None, or `Tensor[..., N]`, the diagonal of `A` (free where the caller holds `A`).
      block_size: as in `cholesky_solve`.

    Returns:
      solution: `Tensor[..., N, K]`, `A^{-1} rhs`.
      condition: `Tensor[...]`, the estimate of `kappa_2(A)`, without gradient; NaN when `chol` is.
    """
    chol, rhs = _checked_matrix(chol), tf.convert_to_tensor(rhs)
    probe = tf.random.stateless_normal(tf.shape(rhs[..., :1]), seed=[0, 0], dtype=rhs.dtype)  # v: [..., N, 1]
    solved = cholesky_solve(chol, tf.concat([rhs, probe], axis=-1), block_size)
    chol, inverse_probe = tf.stop_gradient(chol), tf.stop_gradient(solved[..., -1:])  # inverse_probe = A^{-1} v
    probes = tf.concat([tf.ones_like(probe), probe], axis=-1)  # [..., N, 2]
    halves = tf.matmul(probes, chol, transpose_a=True)  # (L^T w)^T: w^T A w = |L^T w|^2
    largest = tf.reduce_max(tf.reduce_sum(tf.square(halves), axis=-1) / tf.reduce_sum(tf.square(probes), axis=-2),
                            axis=-1)
    if diagonal is not None:
        largest = tf.maximum(largest, tf.reduce_max(tf.stop_gradient(diagonal), axis=-1))
    smallest_pivot = tf.reduce_min(tf.square(tf.linalg.diag_part(chol)), axis=-1)
    inverse_smallest = tf.maximum(tf.norm(inverse_probe, axis=[-2, -1]) / tf.norm(probe, axis=[-2, -1]),
                                  tf.math.reciprocal(smallest_pivot))
    return solved[..., :-1], largest * inverse_smallest


def _checked_matrix(matrix):
    """`matrix` as a `Tensor[..., N, N]`, or a ValueError naming its shape."""
    matrix = tf.convert_to_tensor(matrix)
    shape = matrix.shape
    if shape.rank is not None and (shape.rank < 2 or not shape[-2:].is_compatible_with([shape[-1]] * 2)):
        raise ValueError(f"`matrix` must be a square matrix or a batch of them, [..., N, N]. Received: "
                         f"matrix of shape {shape}")
    return matrix


def _partitions(matrix, block_size):
    """The `(start, stop)` rows of each block, for the factorisation and for its gradient.

    One block (one `tf.linalg.cholesky`) when `N` is unknown, or by default on GPU; by default on CPU, the
    gradient in blocks of `_BLOCK_SIZE`, and the factorisation too unless `N <= _MAX_UNBLOCKED_ROWS` or
    under XLA (whose own Cholesky is blocked, and was faster there).
    """
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral)
                                   or block_size < 1):
        raise ValueError(f"`block_size` must be a positive int. Received: block_size={block_size!r}")
    num_rows = matrix.shape[-1]
    if num_rows is None or (block_size is None and _on_gpu(matrix)):
        return [(0, num_rows)], [(0, num_rows)]
    blocks = block_partition(num_rows, block_size)
    if block_size is None and (num_rows <= _MAX_UNBLOCKED_ROWS or in_xla_context()):
        return [(0, num_rows)], blocks
    return blocks, blocks


def block_partition(num_rows, block_size=None):
    """`(start, stop)` of consecutive blocks of `block_size` rows (default: `cholesky`'s), the last possibly shorter.

    Args:
      num_rows: `N`, a Python int.
      block_size: rows per block, a positive int, or None for the block size of `cholesky`'s default rule.

    Returns:
      list of `(start, stop)` Python int pairs covering `range(N)`.
    """
    block_size = int(block_size or _BLOCK_SIZE)
    return [(start, min(start + block_size, num_rows)) for start in range(0, num_rows, block_size)]


def in_xla_context():
    """Whether the ops being built are compiled by XLA (`tf.function(jit_compile=True)`)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _on_gpu(matrix):
    """Whether `matrix`'s ops run on a GPU: its device if placed, else whether TensorFlow sees a GPU."""
    device = getattr(matrix, "device", "") or ""
    if device:
        return "GPU" in device.upper()
    return bool(tf.config.list_logical_devices("GPU"))


def _factor_with_gradient(matrix, forward_blocks, backward_blocks):
    """`_factor` with the blocked reverse pass `_factor_gradient` as its gradient (any blocks serve it)."""
    @tf.custom_gradient
    def factor(matrix):
        chol = _factor(matrix, forward_blocks)
        return chol, lambda chol_grad: _factor_gradient(chol, chol_grad, backward_blocks)

    return factor(matrix)


def _factor(matrix, blocks):
    """Right-looking blocked Cholesky; all NaN (per matrix of the batch) when a diagonal block fails."""
    trailing = [matrix[..., start:, start:stop] for start, stop in blocks]  # lower block columns of S
    columns = []
    for j, (start, stop) in enumerate(blocks[:-1]):
        width = stop - start
        diagonal = tf.linalg.cholesky(trailing[j][..., :width, :])
        below = tf.linalg.matrix_transpose(
            tf.linalg.triangular_solve(diagonal, tf.linalg.matrix_transpose(trailing[j][..., width:, :])))
        columns.append(_pad_top(tf.concat([diagonal, below], axis=-2), start))
        for k in range(j + 1, len(blocks)):
            rows = below[..., blocks[k][0] - stop:, :]
            trailing[k] -= tf.matmul(rows, rows[..., :blocks[k][1] - blocks[k][0], :], transpose_b=True)
    columns.append(_pad_top(tf.linalg.cholesky(trailing[-1]), blocks[-1][0]))
    chol = tf.concat(columns, axis=-1)
    # A failed block makes every later one NaN, the last diagonal entry included.
    return tf.where(tf.math.is_finite(chol[..., -1:, -1:]), chol, tf.constant(float("nan"), chol.dtype))


def _pad_top(column, rows):
    """`column: [..., M, b]` below `rows` rows of zeros."""
    if rows == 0:
        return column
    paddings = [[0, 0]] * (column.shape.rank - 2) + [[rows, 0], [0, 0]]
    return tf.pad(column, paddings)


def _factor_gradient(chol, chol_grad, blocks):
    """Symmetric gradient of `A` from that of its factor `chol`, by the reverse of `_factor`'s blocks."""
    start = blocks[-1][0]
    grad = _block_gradient(chol[..., start:, start:], chol_grad[..., start:, start:])
    for start, stop in reversed(blocks[:-1]):
        diagonal, below = chol[..., start:stop, start:stop], chol[..., stop:, start:stop]
        below_grad = (tf.linalg.matrix_transpose(chol_grad[..., stop:, start:stop])
                      - 2 * tf.matmul(below, grad, transpose_a=True))  # [b, M], transposed
        below_grad = tf.linalg.triangular_solve(diagonal, below_grad, adjoint=True)  # A21_bar^T
        diagonal_grad = _block_gradient(
            diagonal, chol_grad[..., start:stop, start:stop] - tf.matmul(below_grad, below))
        grad = tf.concat([tf.concat([diagonal_grad, 0.5 * below_grad], axis=-1),
                          tf.concat([0.5 * tf.linalg.matrix_transpose(below_grad), grad], axis=-1)], axis=-2)
    return grad


def _block_gradient(chol, chol_grad):
    """`sym(L^{-T} Phi(L^T L_bar) L^{-1})`, the gradient `tf.linalg.cholesky` uses (Murray, 2016)."""
    middle = tf.linalg.band_part(tf.matmul(chol, chol_grad, adjoint_a=True), -1, 0)
    middle = tf.linalg.set_diag(middle, 0.5 * tf.linalg.diag_part(middle))
    grad = tf.linalg.triangular_solve(chol, middle, adjoint=True)  # L^{-T} Phi
    grad = tf.linalg.matrix_transpose(tf.linalg.triangular_solve(chol, tf.linalg.matrix_transpose(grad),
                                                                 adjoint=True))
    return 0.5 * (grad + tf.linalg.matrix_transpose(grad))


def _retry(matrix, jitter, max_iters, blocks):
    """TFP's retry loop around `_factor`: returns the factor and the shift of each matrix of the batch."""
    def failed(chol):
        return ~tf.math.is_finite(chol[..., -1, -1])

    def retry(shift, chol):
        chol = _factor(tf.linalg.set_diag(matrix, tf.linalg.diag_part(matrix) + shift[..., tf.newaxis]), blocks)
        return tf.where(failed(chol), 10 * shift, shift), chol

    chol = _factor(matrix, blocks)
    shift = tf.where(failed(chol), jitter, tf.zeros([], matrix.dtype))
    return tf.while_loop(lambda shift, chol: tf.reduce_any(failed(chol)), retry, (shift, chol),
                         maximum_iterations=max_iters)[::-1]
