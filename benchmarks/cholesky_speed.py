"""Speed of `tfp_amortised.linalg.cholesky` against `tf.linalg.cholesky` and SciPy's LAPACK `potrf`, float32.

For each size `N` the matrix is a ridge-regularised Gaussian Gram matrix `K + N 1e-3 I` of `N` points in 5
dimensions, as the exact kernel-ridge solver factorises it. Timed, each as a `tf.function` (no XLA):

  - `tf.linalg.cholesky` (one core on CPU);
  - `cholesky` with its default block rule, and with each candidate block size below `N`;
  - `scipy.linalg.cho_factor(lower=True, check_finite=False)` on the same matrix (LAPACK potrf, OpenBLAS);
  - forward and backward (gradient of `sum(L * W)`, `W` fixed) of `tf.linalg.cholesky` and of `cholesky`.

Times are medians over repeats after one warm-up call of each; the repeats are interleaved (one call of every
method per round), so that a slow spell of the machine hits them alike. Prints the machine, the BLAS thread
pools (threadpoolctl, when installed) and two markdown tables; saves `plots/cholesky_speed.png` (time
against `N`, log-log).

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, when set in the environment, slow OpenBLAS: unset them for a fair
SciPy number (they do not affect TensorFlow):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.cholesky_speed          # N = 1000 .. 8000
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.cholesky_speed --quick  # N = 500, 1000
"""

import time

import matplotlib
import numpy as np
import scipy.linalg
import tensorflow as tf

from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised import linalg

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FULL_SIZES = (1000, 2000, 4000, 8000)
QUICK_SIZES = (500, 1000)
BLOCK_SIZES = (128, 256, 384, 512, 768, 1024)
RIDGE = 1e-3


def gram_matrix(num_rows, seed=0):
    """`K + N RIDGE I` for a Gaussian kernel (unit bandwidth) on `N` standard normal points in 5-D, float32."""
    points = np.random.default_rng(seed).normal(size=(num_rows, 5))
    squared_distances = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    return (np.exp(-0.5 * squared_distances) + num_rows * RIDGE * np.eye(num_rows)).astype(np.float32)


def forward_backward(factorise):
    """A `tf.function` `(A, W) -> d sum(factorise(A) * W) / dA`."""
    @tf.function
    def gradient(matrix, weights):
        with tf.GradientTape() as tape:
            tape.watch(matrix)
            loss = tf.reduce_sum(factorise(matrix) * weights)
        return tape.gradient(loss, matrix)

    return gradient


def methods(matrix_np):
    """`{name: zero-argument callable}` for one matrix; each returns a NumPy array (so the work is done)."""
    num_rows = matrix_np.shape[0]
    matrix = tf.constant(matrix_np)
    weights = tf.constant(np.tril(np.random.default_rng(1).normal(size=matrix_np.shape)).astype(np.float32))
    tf_cholesky, new_cholesky = tf.function(tf.linalg.cholesky), tf.function(linalg.cholesky)
    tf_gradient, new_gradient = forward_backward(tf.linalg.cholesky), forward_backward(linalg.cholesky)
    calls = {
        "tf.linalg.cholesky": lambda: tf_cholesky(matrix).numpy(),
        "cholesky": lambda: new_cholesky(matrix).numpy(),
        "scipy": lambda: scipy.linalg.cho_factor(matrix_np, lower=True, check_finite=False)[0],
        "tf.linalg.cholesky fwd+bwd": lambda: tf_gradient(matrix, weights).numpy(),
        "cholesky fwd+bwd": lambda: new_gradient(matrix, weights).numpy(),
    }
    for block_size in BLOCK_SIZES:
        if block_size < num_rows:
            blocked = tf.function(lambda matrix, block_size=block_size: linalg.cholesky(matrix, block_size))
            calls[f"b={block_size}"] = lambda blocked=blocked: blocked(matrix).numpy()
    return calls


def median_times(calls, repeats):
    """`{name: median seconds}` over `repeats` interleaved rounds, after one warm-up call of each."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def default_block_size(num_rows):
    """The block size of `cholesky`'s default rule for an `N x N` matrix here (`N`: one `tf.linalg.cholesky`)."""
    start, stop = linalg._partitions(tf.TensorSpec([num_rows, num_rows]), None)[0][0]
    return stop - start


def blas_header():
    """The BLAS thread pools NumPy and SciPy use, from threadpoolctl, or a note that it is not installed."""
    try:
        import threadpoolctl
    except ImportError:
        return "threadpoolctl not installed: BLAS thread pools unknown"
    pools = threadpoolctl.threadpool_info()
    return "; ".join(f"{pool['internal_api']} {pool.get('version')} ({pool['prefix']}), {pool['num_threads']} threads"
                     for pool in pools) or "no BLAS thread pool found"


def plot(sizes, results, quick=False):
    """Time against `N`, log-log, for the factorisations and the forward+backward passes."""
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for name in ("tf.linalg.cholesky", "cholesky", "scipy", "tf.linalg.cholesky fwd+bwd", "cholesky fwd+bwd"):
        axis.loglog(sizes, [results[n][name] for n in sizes], "o-", label=name)
    axis.set_xlabel("N")
    axis.set_ylabel("seconds (median)")
    axis.set_title("Cholesky of an N x N float32 Gram matrix")
    axis.legend()
    save_figure(figure, plot_path("cholesky_speed", quick=quick))


def main():
    args = benchmark_parser(__doc__, "N = 500, 1000 only (seconds)").parse_args()
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    print(machine_header())
    print(blas_header())
    results = {}
    for num_rows in sizes:
        results[num_rows] = median_times(methods(gram_matrix(num_rows)), repeats=5 if num_rows <= 2000 else 3)
        print(f"N = {num_rows}: done", flush=True)
    rows = []
    for n in sizes:
        times = results[n]
        rows.append([n, default_block_size(n), times["tf.linalg.cholesky"], times["cholesky"], times["scipy"],
                     times["cholesky"] / times["scipy"], times["cholesky"] / times["tf.linalg.cholesky"],
                     times["tf.linalg.cholesky fwd+bwd"], times["cholesky fwd+bwd"],
                     times["cholesky fwd+bwd"] / times["tf.linalg.cholesky fwd+bwd"]])
    print("\nSeconds (median), float32:\n")
    print(markdown_table(["N", "block", "tf.linalg.cholesky", "cholesky", "scipy cho_factor", "new / scipy",
                          "new / tf", "tf fwd+bwd", "new fwd+bwd", "new / tf fwd+bwd"], rows))
    print("\nSeconds (median) of `cholesky` for each block size:\n")
    print(markdown_table(["N"] + [f"b={b}" for b in BLOCK_SIZES],
                         [[n] + [results[n].get(f"b={b}", "-") for b in BLOCK_SIZES] for n in sizes]))
    plot(sizes, results, args.quick)


if __name__ == "__main__":
    main()
