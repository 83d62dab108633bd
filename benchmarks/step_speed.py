"""Train-step speed of `AmortisedLearner` against the sum of its irreducible parts, and the linear-cost solvers.

For each model, ridge solver and number `N` of sleep samples, one fresh process (so that its peak memory is
its own) times

  - the learner's train step as `fit` runs it (`train_on_batch`: the same `tf.function`, no XLA on CPU);
  - each irreducible part alone, as a `tf.function`: drawing the `N` sleep samples, one forward and backward
    pass of the model's log-density over them, the ridge weights (exact solver: the `N x N` Gram matrix and
    the cross kernel, one Cholesky, one solve for the wake and hold-out queries; an approximate solver: its
    whole weight computation);
  - for every solver, the error of the gradient it gives on the softplus gradient-estimation model, against
    the exact gradient of its quadrature `log p(x)` (median over wake points of the relative error).

Models: `BinaryImageModel` below (20 Gaussian latents, a hidden layer of 256, 784 Bernoulli pixels: the
model of issue 5) and `tfp_amortised.models.circle.CircleModel` (10 x 10 images, one angle latent).
Times are medians over repeats after a warm-up call.

    python -m benchmarks.step_speed            # full size (tens of minutes on two cores)
    python -m benchmarks.step_speed --quick    # small sizes, a few minutes
    python -m benchmarks.step_speed --only binary:random_features   # the full-size rows of one model and solver
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised.evaluation import median_relative_error, per_point_gradients
from tfp_amortised import _joint, sleep, surrogate_log_marginal
from tfp_amortised.estimator import flatten_events
from tfp_amortised.generative import GenerativeModel
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.circle import CircleModel
from tfp_amortised.models.softplus import SoftplusGaussianModel
from tfp_amortised.ridge import KERNELS, KernelRidge, median_bandwidth
from tfp_amortised.solvers import SOLVERS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root

NUM_WAKE = 100
NUM_HOLDOUT = 64  # the learner's default
FULL = ([("binary", "cholesky", n) for n in (500, 1000, 2000, 4000, 8000)]
        + [("circle", "cholesky", n) for n in (500, 1000, 2000, 4000, 8000)]
        + [("binary", "random_features", n) for n in (4000, 8000, 16000, 32000, 50000)]
        + [("binary", "nystrom", n) for n in (4000, 8000, 16000, 32000)]
        + [("circle", "random_features", n) for n in (4000, 32000)])
QUICK = [("binary", "cholesky", 500), ("circle", "cholesky", 500), ("binary", "random_features", 1000),
         ("binary", "random_features", 2000), ("binary", "nystrom", 1000)]
SOLVER_OPTIONS = {"cholesky": {}, "random_features": {"num_features": 1024}, "nystrom": {"num_inducing": 512}}
QUICK_OPTIONS = {"cholesky": {}, "random_features": {"num_features": 256}, "nystrom": {"num_inducing": 128}}


class BinaryImageModel(GenerativeModel):
    """A sigmoid-belief decoder: Gaussian latents, one hidden layer, Bernoulli pixels.

        z ~ N(0, I_20)
        h = relu(W_1 z + b_1),                 W_1: [256, 20]
        x | z ~ Bernoulli(sigmoid(W_2 h + b_2)),  x: [784] binary pixels

    The weights are applied with `tensordot`, so the decoder takes any leading batch dimensions.
    """

    def __init__(self, latent_dim=20, hidden_units=256, data_dim=784, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.hidden = self.add_weight(shape=(latent_dim, hidden_units), initializer="glorot_uniform", name="hidden")
        self.hidden_bias = self.add_weight(shape=(hidden_units,), initializer="zeros", name="hidden_bias")
        self.output_kernel = self.add_weight(shape=(hidden_units, data_dim), initializer="glorot_uniform",
                                             name="output_kernel")
        self.output_bias = self.add_weight(shape=(data_dim,), initializer="zeros", name="output_bias")

    def joint_distribution(self):
        hidden, hidden_bias = self.hidden.value, self.hidden_bias.value
        output_kernel, output_bias = self.output_kernel.value, self.output_bias.value

        def model():
            z = yield Root(tfd.Sample(tfd.Normal(0., 1.), self.latent_dim, name="z"))
            h = tf.nn.relu(tf.tensordot(z, hidden, axes=1) + hidden_bias)
            logits = tf.tensordot(h, output_kernel, axes=1) + output_bias
            yield tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1, name="x")

        return tfd.JointDistributionCoroutine(model)


def _median_time(fn, repeats):
    """Median wall and process CPU times of `fn()` over `repeats` calls, after a warm-up call (which traces).

    The CPU time (all threads of this process) is less sensitive than the wall time to other jobs on the
    machine, though still inflated by their contention for caches and memory bandwidth.
    """
    _block(fn())
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        _block(fn())
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return tuple(float(t) for t in np.median(times, axis=0))


def _block(value):
    for tensor in tf.nest.flatten(value):
        if tf.is_tensor(tensor):
            tensor.numpy()


def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def _build_model(name):
    return BinaryImageModel() if name == "binary" else CircleModel(image_size=10, seed=0)


def measure(model_name, solver, num_sleep, options, repeats):
    """Times one configuration in this process; returns a dict of seconds, GB and the gradient error."""
    keras.utils.set_random_seed(0)
    model = _build_model(model_name)
    ridge = KernelRidge(solver=solver, **options)
    learner = AmortisedLearner(model, num_sleep=num_sleep, regression=ridge, num_holdout=NUM_HOLDOUT, seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(1e-3))
    wake_x = sleep(model.joint_distribution(), NUM_WAKE, seed=[1, 2])["x"]
    baseline_gb = _peak_rss_gb()
    result = {"step": _median_time(lambda: learner.train_on_batch(wake_x, return_dict=True), repeats)}
    result["peak_gb"], result["baseline_gb"] = _peak_rss_gb(), baseline_gb
    result.update(_part_times(model, ridge, solver, num_sleep, options, wake_x, repeats))
    result["gradient_error"] = _gradient_error(solver, num_sleep, options)
    return result


def _part_times(model, ridge, solver, num_sleep, options, wake_x, repeats):
    """Times the irreducible parts of one step, each alone as a `tf.function` on fixed inputs."""
    seed = tf.constant([3, 4])
    sample = sleep(model.joint_distribution(), num_sleep, seed)
    event_ndims = wake_x.shape.rank - 1
    sleep_x = flatten_events(sample["x"], event_ndims)
    holdout_x = flatten_events(sleep(model.joint_distribution(), NUM_HOLDOUT, [5, 6])["x"], event_ndims)
    queries = tf.concat([flatten_events(wake_x, event_ndims), holdout_x], axis=0)
    sleep_x, queries = sleep_x - tf.reduce_mean(sleep_x, 0), queries - tf.reduce_mean(sleep_x, 0)
    target_weights = tf.random.stateless_normal([num_sleep], [7, 8])

    @tf.function
    def draw():
        return sleep(model.joint_distribution(), num_sleep, seed)

    @tf.function
    def log_density():
        with tf.GradientTape() as tape:
            log_prob = _joint.log_prob(model.joint_distribution(), sample)
            loss = tf.reduce_sum(target_weights * log_prob)
        return tape.gradient(loss, model.trainable_variables)

    times = {"sample": _median_time(draw, repeats), "log_density": _median_time(log_density, repeats)}
    # Not irreducible, so not in the sum: the median heuristic as the ridge runs it (a 512-point subsample),
    # and over all N points (N^2 / 4 distances) for comparison.
    times["bandwidth"] = _median_time(tf.function(lambda: median_bandwidth(sleep_x)), repeats)
    if num_sleep <= 4000:
        times["bandwidth_all"] = _median_time(tf.function(lambda: median_bandwidth(sleep_x, num_sleep)), repeats)
    kernel = KERNELS[ridge.kernel_name](length_scale=median_bandwidth(sleep_x))
    lam = tf.constant(ridge.initial_ridge)
    if solver != "cholesky":
        solve = tf.function(lambda: SOLVERS[solver](kernel, sleep_x, queries, lam, **options))
        times["weights"] = _median_time(solve, repeats)
        return times

    @tf.function
    def gram():
        return kernel.matrix(sleep_x, sleep_x), kernel.matrix(sleep_x, queries)

    matrix, cross = gram()
    matrix = tf.linalg.set_diag(matrix, tf.linalg.diag_part(matrix) + num_sleep * lam)
    chol = tf.linalg.cholesky(matrix)
    times["gram"] = _median_time(gram, repeats)
    times["cholesky"] = _median_time(tf.function(lambda: tf.linalg.cholesky(matrix)), repeats)
    times["solve"] = _median_time(tf.function(lambda: tf.linalg.cholesky_solve(chol, cross)), repeats)
    return times


def _gradient_error(solver, num_sleep, options, num_wake=NUM_WAKE):
    """Median relative error of the estimated `grad log p(x)` on the softplus model, against quadrature."""
    model = SoftplusGaussianModel()
    wake_x = sleep(model.joint_distribution(), num_wake, seed=[9, 10])["x"]
    ridge = KernelRidge(solver=solver, **options)
    estimate = per_point_gradients(
        lambda: surrogate_log_marginal(model.joint_distribution, wake_x, num_sleep=num_sleep, seed=[11, 12],
                                       regression=ridge), model.trainable_variables)
    exact = per_point_gradients(lambda: model.log_marginal(wake_x), model.trainable_variables)
    return median_relative_error(estimate, exact)


def run(configs, options, repeats):
    """Runs every configuration in a fresh process (clean peak memory); returns one result dict each."""
    results = []
    for model_name, solver, num_sleep in configs:
        spec = json.dumps({"model": model_name, "solver": solver, "num_sleep": num_sleep,
                           "options": options[solver], "repeats": repeats})
        child = subprocess.run([sys.executable, "-m", "benchmarks.step_speed", "--one", spec], capture_output=True,
                               text=True, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if child.returncode != 0:
            print(child.stderr[-3000:], file=sys.stderr)
            raise RuntimeError(f"configuration {spec} failed")
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result.update(model=model_name, solver=solver, num_sleep=num_sleep)
        print(json.dumps(result), file=sys.stderr)
        results.append(result)
    return results


def table(results, options):
    """Wall-time columns (step, parts, their sum and ratio), the same ratio in CPU time, memory, gradient error."""
    names = ("sample", "log_density", "gram", "cholesky", "solve", "weights")
    header = ["model", "solver", "N", "step (s)", "sample", "log-density f+b", "Gram", "Cholesky", "solve",
              "weights (approx.)", "sum of parts", "step / sum", "CPU step / sum", "peak RSS (GB)",
              "grad. error (softplus)", "median bandwidth: subsample", "all points"]
    rows = []
    for r in results:
        wall = sum(r[name][0] for name in names if name in r)
        cpu = sum(r[name][1] for name in names if name in r)
        solver = r["solver"] + "".join(f" {key}={value}" for key, value in options[r["solver"]].items())
        rows.append([r["model"], solver, r["num_sleep"], r["step"][0]]
                    + [r[name][0] if name in r else "-" for name in names]
                    + [wall, r["step"][0] / wall, r["step"][1] / cpu, f"{r['peak_gb']:.2f}", r["gradient_error"],
                       r["bandwidth"][0], r["bandwidth_all"][0] if "bandwidth_all" in r else "-"])
    return markdown_table(header, rows, float_format="{:.3g}")


def plot(results, path):
    figure, axis = plt.subplots(figsize=(6, 4))
    for key in sorted({(r["model"], r["solver"]) for r in results}):
        rows = sorted((r for r in results if (r["model"], r["solver"]) == key), key=lambda r: r["num_sleep"])
        axis.loglog([r["num_sleep"] for r in rows], [r["step"][0] for r in rows], "o-", label=" ".join(key))
    axis.set_xlabel("number of sleep samples N")
    axis.set_ylabel("train step (s)")
    axis.legend(fontsize=8)
    save_figure(figure, path)


def main():
    parser = benchmark_parser(__doc__, "small sizes and few repeats")
    parser.add_argument("--only", action="append", metavar="MODEL:SOLVER",
                        help="run only these rows of the table (repeatable), e.g. binary:random_features")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration, JSON, in this process
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(measure(spec["model"], spec["solver"], spec["num_sleep"], spec["options"],
                                 spec["repeats"])))
        return
    start = time.time()
    options = QUICK_OPTIONS if args.quick else SOLVER_OPTIONS
    configs = QUICK if args.quick else FULL
    if args.only:
        configs = [config for config in configs if f"{config[0]}:{config[1]}" in args.only]
        if not configs:
            parser.error(f"--only {args.only} matches no row; rows are MODEL:SOLVER with MODEL in binary, circle "
                         f"and SOLVER in {sorted(SOLVER_OPTIONS)}")
    results = run(configs, options, repeats=2 if args.quick else 3)
    print(machine_header())
    print(table(results, options))
    suffix = "".join("_" + row.replace(":", "_") for row in sorted(args.only or []))
    path = plot_path(f"step_speed{'_quick' if args.quick else ''}{suffix}.png")
    plot(results, path)
    print(f"plot: {path}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
