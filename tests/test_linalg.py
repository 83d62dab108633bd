"""`tfp_amortised.linalg`: the blocked Cholesky factor and its gradient against `tf.linalg.cholesky`'s, the
jitter retry, eager / `tf.function` / XLA agreement, and which path the default rule takes (no timing)."""

import types

import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised import linalg

TOLERANCE = {np.float32: 2e-5, np.float64: 1e-11}


def spd_matrix(num_rows, dtype=np.float64, batch_shape=(), seed=0):
    """`X X^T / D + I`: well conditioned, entries of order one."""
    points = np.random.default_rng(seed).normal(size=batch_shape + (num_rows, num_rows + 3))
    return (points @ np.swapaxes(points, -1, -2) / (num_rows + 3) + np.eye(num_rows)).astype(dtype)


def low_rank_gram(num_rows, rank=3, dtype=np.float64, seed=0):
    """`X X^T` with `X: [N, rank]`: positive semi-definite and singular."""
    points = np.random.default_rng(seed).normal(size=(num_rows, rank))
    return (points @ points.T).astype(dtype)


def close(actual, expected, dtype):
    """Max absolute difference relative to the size of `expected`, under the dtype's tolerance."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    return np.abs(actual - expected).max() <= TOLERANCE[dtype] * max(1.0, np.abs(expected).max())


def factor_and_gradient(factorise, matrix, weights):
    """`factorise(matrix)` and the gradient of `sum(factorise(matrix) * weights)` with respect to `matrix`."""
    matrix = tf.convert_to_tensor(matrix)
    with tf.GradientTape() as tape:
        tape.watch(matrix)
        chol = factorise(matrix)
        loss = tf.reduce_sum(chol * weights)
    return chol, tape.gradient(loss, matrix)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_rows, block_size", [
    (1, 4), (5, 2), (100, 256), (256, 64), (300, 64), (700, 128)])
def test_factor_equals_tf_cholesky_and_reconstructs(num_rows, block_size, dtype):
    """N = 1, N below one block, N a multiple of the block and not, float32 and float64."""
    matrix = spd_matrix(num_rows, dtype)
    chol = linalg.cholesky(matrix, block_size).numpy()
    assert chol.dtype == dtype and chol.shape == (num_rows, num_rows)
    assert close(chol, tf.linalg.cholesky(matrix), dtype)
    assert close(chol @ chol.T, matrix, dtype)
    assert np.all(np.triu(chol, 1) == 0)


def test_batch_of_matrices():
    """Leading batch dimensions: each matrix factored as on its own."""
    matrices = spd_matrix(150, batch_shape=(2, 3))
    chol = linalg.cholesky(matrices, 32).numpy()
    assert chol.shape == (2, 3, 150, 150)
    assert close(chol, tf.linalg.cholesky(matrices), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_rows, block_size", [(50, 64), (300, 64), (301, 100)])
def test_gradient_equals_tf_cholesky(num_rows, block_size, dtype):
    """The symmetric gradient of `tf.linalg.cholesky`, for weights on the whole matrix (upper part ignored)."""
    matrix = spd_matrix(num_rows, dtype)
    weights = np.random.default_rng(1).normal(size=(num_rows, num_rows)).astype(dtype)
    _, gradient = factor_and_gradient(lambda a: linalg.cholesky(a, block_size), matrix, weights)
    _, expected = factor_and_gradient(tf.linalg.cholesky, matrix, weights)
    assert close(gradient, expected, dtype)


@pytest.mark.parametrize("bad_row", [3, 299])
def test_not_positive_definite_gives_nan(bad_row):
    """A negative pivot in the first or the last block makes the whole factor NaN, not finite garbage."""
    matrix = spd_matrix(300)
    matrix[bad_row, bad_row] = -1.0
    assert np.all(np.isnan(linalg.cholesky(matrix, 64).numpy()))
    assert np.all(np.isnan(linalg.cholesky(matrix).numpy()))  # one block


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_retrying_cholesky_repairs_a_singular_gram_matrix(dtype):
    """A rank-3 Gram matrix fails, is retried with jitter 10^k times the first, and the factor is of A + s I.

    (`A + s I` is too ill-conditioned for its factor to be compared entrywise with `tf.linalg.cholesky`'s.)
    """
    matrix = low_rank_gram(300, dtype=dtype)
    assert np.all(np.isnan(linalg.cholesky(matrix, 64).numpy()))
    first = 1e-6 if dtype == np.float32 else 1e-10
    chol, jitter = linalg.retrying_cholesky(matrix, max_iters=8, block_size=64)
    chol, jitter = chol.numpy(), float(jitter)
    powers = np.log10(jitter / first)
    assert jitter > 0 and abs(powers - round(powers)) < 1e-3, jitter
    assert np.all(np.isfinite(chol))
    shifted = matrix + jitter * np.eye(300, dtype=dtype)
    assert close(chol @ chol.T, shifted, dtype)


def test_retrying_cholesky_semantics_of_tfp():
    """Per-matrix shifts in a batch: 0 for a positive-definite one; `max_iters=0` gives NaN and `jitter`."""
    matrices = np.stack([spd_matrix(200), low_rank_gram(200)])
    chol, jitter = linalg.retrying_cholesky(matrices, jitter=1e-4, block_size=64)
    assert float(jitter[0]) == 0 and float(jitter[1]) >= 1e-4
    assert close(chol[0], tf.linalg.cholesky(matrices[0]), np.float64)
    chol, jitter = linalg.retrying_cholesky(matrices[1], jitter=1e-4, max_iters=0, block_size=64)
    assert np.all(np.isnan(chol.numpy())) and float(jitter) == 1e-4


def test_retrying_cholesky_gradient_is_that_of_the_shifted_matrix():
    matrix = low_rank_gram(200)
    weights = np.random.default_rng(1).normal(size=(200, 200))
    matrix_t = tf.constant(matrix)
    with tf.GradientTape() as tape:
        tape.watch(matrix_t)
        chol, jitter = linalg.retrying_cholesky(matrix_t, jitter=1e-2, block_size=64)
        loss = tf.reduce_sum(chol * weights)
    gradient = tape.gradient(loss, matrix_t)
    assert float(jitter) > 0
    _, expected = factor_and_gradient(tf.linalg.cholesky, matrix + float(jitter) * np.eye(200), weights)
    assert close(gradient, expected, np.float64)


def test_eager_function_and_xla_agree():
    """Factor, gradient and retry (with its while loop) in the three modes."""
    matrix = spd_matrix(150, np.float32)
    singular = low_rank_gram(150, dtype=np.float32)
    weights = np.random.default_rng(1).normal(size=(150, 150)).astype(np.float32)

    def run(matrix, singular):
        chol, gradient = factor_and_gradient(lambda a: linalg.cholesky(a, 64), matrix, weights)
        return chol, gradient, linalg.retrying_cholesky(singular, jitter=1e-2, block_size=64)

    eager = run(matrix, singular)
    assert float(eager[2][1]) > 0  # the retry ran
    for compiled in (tf.function(run), tf.function(run, jit_compile=True)):
        result = compiled(tf.constant(matrix), tf.constant(singular))
        for actual, expected in zip(tf.nest.flatten(result), tf.nest.flatten(eager)):
            assert close(actual, expected, np.float32)


def count_ops(function, signature, op_type):
    """How many `op_type` ops the graph of `function` traced for `signature` has (nothing is run)."""
    graph = tf.function(function).get_concrete_function(signature).graph
    return sum(op.type == op_type for op in graph.get_operations())


def test_default_rule_uses_tf_cholesky_for_small_matrices():
    small, large = tf.TensorSpec([768, 768]), tf.TensorSpec([769, 769])
    assert count_ops(linalg.cholesky, small, "Cholesky") == 1
    assert count_ops(linalg.cholesky, small, "MatrixTriangularSolve") == 0
    assert count_ops(linalg.cholesky, large, "Cholesky") == 4  # blocks of 256, the last of one row
    assert count_ops(lambda a: linalg.cholesky(a, 700), large, "Cholesky") == 2


def test_small_matrices_have_the_blocked_gradient():
    """N <= 768: one Cholesky op, but the gradient in blocks of 256 (2 solves per block, 1 per panel)."""
    def gradient(matrix):
        return factor_and_gradient(linalg.cholesky, matrix, tf.ones_like(matrix))[1]

    spec = tf.TensorSpec([768, 768])
    assert count_ops(gradient, spec, "Cholesky") == 1
    assert count_ops(gradient, spec, "MatrixTriangularSolve") == 3 * 2 + 2


def test_xla_default_factor_is_xla_cholesky_with_the_blocked_gradient():
    """Under XLA the default rule factors with one Cholesky op; the gradient is blocked (triangular solves).

    (Traced, not compiled; the blocked gradient serves any factor, and `test_eager_function_and_xla_agree`
    runs it under XLA.)
    """
    def gradient(matrix):
        return factor_and_gradient(linalg.cholesky, matrix, tf.ones_like(matrix))[1]

    spec = tf.TensorSpec([800, 800], tf.float64)
    graph = tf.function(gradient, jit_compile=True).get_concrete_function(spec).graph
    assert sum(op.type == "Cholesky" for op in graph.get_operations()) == 1
    assert sum(op.type == "MatrixTriangularSolve" for op in graph.get_operations()) > 4


def test_unknown_size_uses_tf_cholesky():
    """Without a static N, one block: the factor and gradient still equal `tf.linalg.cholesky`'s."""
    unknown = tf.TensorSpec([None, None], tf.float64)
    assert count_ops(lambda a: linalg.cholesky(a, 64), unknown, "Cholesky") == 1
    matrix = spd_matrix(100)
    weights = np.random.default_rng(1).normal(size=(100, 100))
    function = tf.function(lambda a: factor_and_gradient(lambda a: linalg.cholesky(a, 64), a, weights),
                           input_signature=[unknown])
    for actual, expected in zip(function(matrix), factor_and_gradient(tf.linalg.cholesky, matrix, weights)):
        assert close(actual, expected, np.float64)


def test_default_rule_uses_tf_cholesky_on_gpu():
    """The device decides; an explicit block size is used on any device."""
    def placed(device):
        return types.SimpleNamespace(shape=tf.TensorShape([2000, 2000]), device=device)

    gpu, cpu = placed("/job:localhost/replica:0/task:0/device:GPU:0"), placed("/device:CPU:0")
    assert linalg._partitions(gpu, None) == ([(0, 2000)], [(0, 2000)])
    assert [len(blocks) for blocks in linalg._partitions(cpu, None)] == [8, 8]
    assert [len(blocks) for blocks in linalg._partitions(gpu, 500)] == [4, 4]


@pytest.mark.parametrize("call, message", [
    (lambda: linalg.cholesky(np.eye(3), block_size=0), "block_size=0"),
    (lambda: linalg.cholesky(np.eye(3), block_size=2.0), "block_size=2.0"),
    (lambda: linalg.cholesky(np.eye(3), block_size=True), "block_size=True"),
    (lambda: linalg.cholesky(np.ones([2, 3])), "matrix of shape (2, 3)"),
    (lambda: linalg.cholesky(np.ones([3])), "matrix of shape (3,)"),
    (lambda: linalg.retrying_cholesky(np.eye(3), max_iters=-1), "max_iters=-1"),
])
def test_invalid_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


@pytest.mark.parametrize("num_rows,block_size,batch_shape", [(50, 16, ()), (40, 7, (2,)), (1000, None, ())])
def test_cholesky_solve_equals_tf_cholesky_solve_with_its_gradient(num_rows, block_size, batch_shape):
    """Blocked substitution against `tf.linalg.cholesky_solve` (the previous path): values, and the gradient with
    respect to the factor and the right-hand sides (1000 rows: the default rule's blocks of 256)."""
    chol = tf.linalg.cholesky(spd_matrix(num_rows, batch_shape=batch_shape))
    rhs = tf.random.stateless_normal([*batch_shape, num_rows, 3], [1, 2], dtype=tf.float64)
    weights = tf.random.stateless_normal([*batch_shape, num_rows, 3], [3, 4], dtype=tf.float64)
    results = []
    for solve in (lambda c, b: linalg.cholesky_solve(c, b, block_size), tf.linalg.cholesky_solve):
        with tf.GradientTape() as tape:
            tape.watch([chol, rhs])
            solution = solve(chol, rhs)
            loss = tf.reduce_sum(solution * weights)
        results.append([solution, *tape.gradient(loss, [chol, rhs])])
    for blocked, reference in zip(*results):
        np.testing.assert_allclose(blocked, reference, rtol=1e-9, atol=1e-9 * float(np.abs(reference).max()))


def test_cholesky_solve_reads_only_the_lower_triangle():
    chol = tf.linalg.cholesky(spd_matrix(30))
    rhs = tf.random.stateless_normal([30, 2], [1, 2], dtype=tf.float64)
    garbage = chol + tf.linalg.band_part(tf.ones_like(chol), 0, -1) - tf.linalg.band_part(tf.ones_like(chol), 0, 0)
    np.testing.assert_allclose(linalg.cholesky_solve(garbage, rhs, 8), tf.linalg.cholesky_solve(chol, rhs),
                               rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_rows, block_size", [(40, 16), (301, 100), (1000, None)])
def test_positive_definite_solve_has_the_gradient_of_the_solve(num_rows, block_size, dtype):
    """Values and gradients with respect to the matrix and the right-hand sides against automatic differentiation
    of `tf.linalg.cholesky_solve(tf.linalg.cholesky(A), B)` (the matrix entered symmetrically, `(S + S^T) / 2`,
    so that both sides differentiate a symmetric matrix); 301 rows: blocks that do not divide N."""
    base = tf.constant(spd_matrix(num_rows, dtype))
    rhs = tf.random.stateless_normal([num_rows, 3], [1, 2], dtype=dtype)
    weights = tf.random.stateless_normal([num_rows, 3], [3, 4], dtype=dtype)
    results = []
    for solve in (lambda a, b: linalg.positive_definite_solve(a, b, block_size)[0],
                  lambda a, b: tf.linalg.cholesky_solve(tf.linalg.cholesky(a), b)):
        with tf.GradientTape() as tape:
            tape.watch([base, rhs])
            matrix = 0.5 * (base + tf.transpose(base))
            loss = tf.reduce_sum(solve(matrix, rhs) * weights)
        results.append([solve(base, rhs), *tape.gradient(loss, [base, rhs])])
    for ours, reference in zip(*results):
        assert close(ours, reference, dtype)


def test_positive_definite_solve_returns_the_jitter_and_condition_of_a_singular_matrix():
    gram = low_rank_gram(30)
    rhs = tf.random.stateless_normal([30, 2], [1, 2], dtype=tf.float64)
    solution, jitter, condition = linalg.positive_definite_solve(gram, rhs)
    _, expected_jitter = linalg.retrying_cholesky(gram)
    assert float(jitter) == float(expected_jitter) > 0
    shifted = gram + float(jitter) * np.eye(30)
    # Condition number about 1e11 (rank 3 plus a shift of 1e-10): residuals of order 1e-5; the estimate is a
    # lower bound within a factor 10 of the true condition number.
    np.testing.assert_allclose(shifted @ solution.numpy(), rhs, atol=1e-4)
    assert np.linalg.cond(shifted) / 10 < float(condition) <= np.linalg.cond(shifted) * 1.01
