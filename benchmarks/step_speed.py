"""Train-step speed of `AmortisedLearner` against the sum of its irreducible parts, and the linear-cost solvers.

For each model, ridge solver and number `N` of sleep samples, one fresh process (so that its peak memory is
its own) times

  - the learner's train step as `fit` runs it (`train_on_batch`: the same `tf.function`, no XLA on CPU);
  - each irreducible part alone, as a `tf.function`: drawing the `N` sleep samples, one forward and backward
    pass of the model's log-density over them, the ridge weights (exact solver: the `N x N` Gram matrix and
    the cross kernel, one Cholesky, one solve for the wake and hold-out queries; an approximate solver: its
    whole weight computation);
  - for every solver, the error of the gradient it gives on the softplus gradient-estimation model, against
    the exact gradient of its quadrature `log p(x)` (median over wake points of the relative error);
  - exact solver, side by side in the same process (interleaved repeats): the package's factorisation
    (`tfp_amortised.linalg.retrying_cholesky`) against SciPy's `cho_factor` (LAPACK potrf) on the same matrix;
    the step of the previous exact path (two full kernel matrices, `tf.linalg.cholesky` through TFP's
    `retrying_cholesky`), for the ratio of the two steps; and the step compiled with `jit_compile=True`
    (N <= 4000), for the ratio to the default step;
  - the held-out targets of the learner's `ridge_r2` diagnostic (K = 2 double backward passes of the
    log-density over the N + 64 samples), reported beside the parts: a learning regression's step and evaluation
    compute them, a fixed regression's training step does not.

`--only autobatched` times the conditional-form step (with gradient, with and without the held-out targets) of
one Gaussian mixture written as an AutoBatched and as an explicitly batched JointDistributionCoroutine;
`--only auto` tabulates step time and softplus gradient error of every solver and of `solver="auto"` for
N = 500 .. 50 000.

Models: `BinaryImageModel` below (20 Gaussian latents, a hidden layer of 256, 784 Bernoulli pixels: the
model of issue 5) and `tfp_amortised.models.circle.CircleModel` (10 x 10 images, one angle latent).
Times are medians over repeats after a warm-up call.

    python -m benchmarks.step_speed            # full size (tens of minutes on two cores)
    python -m benchmarks.step_speed --quick    # small sizes, a few minutes
    python -m benchmarks.step_speed --only binary:random_features   # the full-size rows of one model and solver
    python -m benchmarks.step_speed --only binary:cholesky --only circle:cholesky   # the exact-solver ratios
    python -m benchmarks.step_speed --only auto          # solver="auto" against each fixed solver
    python -m benchmarks.step_speed --only autobatched   # AutoBatched / batched conditional step

SciPy timings: run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` (see `benchmarks/cholesky_speed.py`).
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
import scipy.linalg
import tensorflow as tf
import tensorflow_probability as tfp

from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised.evaluation import median_relative_error, per_point_gradients
from tfp_amortised import _joint, linalg, sleep, solvers, surrogate_log_marginal
from tfp_amortised.estimator import amortised_step, gradient_projections
from tfp_amortised.generative import GenerativeModel
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.circle import CircleModel
from tfp_amortised.models.softplus import SoftplusGaussianModel
from tfp_amortised.ridge import KERNELS, KernelRidge, flatten_events, median_bandwidth
from tfp_amortised.solvers import SOLVERS, gram_and_cross

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
QUICK = [("binary", "cholesky", 1000), ("circle", "cholesky", 1000), ("binary", "random_features", 1000),
         ("binary", "nystrom", 1000)]
AUTO_SIZES = (500, 1000, 2000, 4000, 8000, 16000, 32000, 50000)
AUTO = [("binary", solver, n) for n in AUTO_SIZES for solver in ("auto", "cholesky", "nystrom", "random_features")
        if solver != "cholesky" or n <= 8000]
QUICK_AUTO = [("binary", solver, n) for n in (500, 2000) for solver in ("auto", "cholesky", "nystrom")]
SOLVER_OPTIONS = {"cholesky": {}, "random_features": {"num_features": 1024}, "nystrom": {"num_inducing": 512},
                  "auto": {"num_inducing": 512}}
QUICK_OPTIONS = {"cholesky": {}, "random_features": {"num_features": 256}, "nystrom": {"num_inducing": 128},
                 "auto": {"num_inducing": 128}}
MAX_PREVIOUS, MAX_JIT = 8000, 4000  # largest N at which the previous exact step and the XLA step are timed


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
    return _interleaved_times({"fn": fn}, repeats)["fn"]


def _interleaved_times(fns, repeats):
    """`{name: (median wall, median CPU)}` of each zero-argument callable, after one warm-up call of each; the
    repeats are interleaved (one call of every callable per round), so that a slow spell hits them alike."""
    for fn in fns.values():
        _block(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            _block(fn())
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: tuple(float(t) for t in np.median(value, axis=0)) for name, value in times.items()}


def _block(value):
    for tensor in tf.nest.flatten(value, expand_composites=True):  # IndexedSlices gradients too
        if tf.is_tensor(tensor):
            tensor.numpy()


def _peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def _build_model(name):
    return BinaryImageModel() if name == "binary" else CircleModel(image_size=10, seed=0)


def _previous_ridge_weights(kernel, sleep_x, query_x, ridge, escalate=True):
    """The exact solver of the previous release, for the side-by-side ratio: two full kernel matrices and
    `tf.linalg.cholesky` through TFP's `retrying_cholesky` (no condition estimate: NaN; no escalation)."""
    del escalate
    gram = kernel.matrix(sleep_x, sleep_x)
    gram = tf.linalg.set_diag(gram, tf.linalg.diag_part(gram) + tf.cast(tf.shape(gram)[0], gram.dtype) * ridge)
    chol, jitter = tfp.experimental.distributions.marginal_fns.retrying_cholesky(gram)
    return (tf.transpose(tf.linalg.cholesky_solve(chol, kernel.matrix(sleep_x, query_x))), jitter,
            tf.constant(float("nan"), gram.dtype))


def _learner(model_name, solver, num_sleep, options, jit_compile=False, previous=False):
    """A compiled `AmortisedLearner` on a fresh model (the same initial weights every time); `previous=True`
    traces its step with the previous exact solver (`_previous_ridge_weights`)."""
    keras.utils.set_random_seed(0)
    model = _build_model(model_name)
    ridge = KernelRidge(solver=solver, **options)
    learner = AmortisedLearner(model, num_sleep=num_sleep, form="joint", regression=ridge,
                               num_holdout=NUM_HOLDOUT, seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    if not previous:
        return model, ridge, learner.train_on_batch

    def previous_step(wake_x, **kwargs):
        current, SOLVERS["cholesky"] = SOLVERS["cholesky"], _previous_ridge_weights
        try:  # traced at the first call: the graph keeps the previous solver
            return learner.train_on_batch(wake_x, **kwargs)
        finally:
            SOLVERS["cholesky"] = current

    return model, ridge, previous_step


def measure(model_name, solver, num_sleep, options, repeats, side_by_side=True):
    """Times one configuration in this process; returns a dict of seconds, GB and the gradient error. With
    `side_by_side`, also the previous exact step and the XLA step (not needed by the `auto` table)."""
    model, ridge, step = _learner(model_name, solver, num_sleep, options)
    wake_x = sleep(model.joint_distribution(), NUM_WAKE, seed=[1, 2])["x"]
    baseline_gb = _peak_rss_gb()
    steps = {"step": lambda: step(wake_x, return_dict=True)}
    if side_by_side and solver == "cholesky" and num_sleep <= MAX_PREVIOUS:
        previous = _learner(model_name, solver, num_sleep, options, previous=True)[2]
        steps["step_previous"] = lambda: previous(wake_x, return_dict=True)
    if side_by_side and num_sleep <= MAX_JIT:
        compiled = _learner(model_name, solver, num_sleep, options, jit_compile=True)[2]
        steps["step_jit"] = lambda: compiled(wake_x, return_dict=True)
    result = _interleaved_times(steps, repeats)
    result["peak_gb"], result["baseline_gb"] = _peak_rss_gb(), baseline_gb
    result.update(_part_times(model, ridge, solvers.choose_solver(solver, num_sleep), num_sleep,
                              solvers.options_for(solvers.choose_solver(solver, num_sleep), options), wake_x,
                              repeats))
    result["gradient_error"] = _gradient_error(solver, num_sleep, options)
    return result


def _part_times(model, ridge, solver, num_sleep, options, wake_x, repeats):
    """Times the irreducible parts of one step, each alone as a `tf.function` on fixed inputs, and the held-out
    targets of the `ridge_r2` diagnostic; for the exact solver, also the factorisation against SciPy's."""
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

    held_out = sleep(model.joint_distribution(), num_sleep + NUM_HOLDOUT, seed)
    times = {"sample": _median_time(draw, repeats), "log_density": _median_time(log_density, repeats),
             "held_out_targets": _median_time(tf.function(lambda: gradient_projections(
                 model.joint_distribution, held_out, model.trainable_variables, seed)), repeats)}
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

    gram = tf.function(lambda: gram_and_cross(kernel, sleep_x, queries))
    matrix, cross = gram()
    matrix = tf.linalg.set_diag(matrix, tf.linalg.diag_part(matrix) + num_sleep * lam)
    chol, _ = linalg.retrying_cholesky(matrix)
    factor = tf.function(lambda: linalg.retrying_cholesky(matrix))
    matrix_np = matrix.numpy()
    times.update(_interleaved_times({
        "gram": gram, "cholesky": factor,
        "cholesky_scipy": lambda: scipy.linalg.cho_factor(matrix_np, lower=True, check_finite=False)[0],
        "solve": tf.function(lambda: linalg.cholesky_solve(chol, cross))}, repeats))
    return times


def autobatched_ratio(num_sleep, repeats, num_wake=NUM_WAKE):
    """Seconds of the conditional-form step of one Gaussian mixture written as an AutoBatched and as an explicitly
    batched JointDistributionCoroutine, timed interleaved: the training step of a fixed regression (surrogate and
    gradient) and the step with the held-out targets (a learning regression's, and evaluation's)."""
    keras.utils.set_random_seed(0)
    logits = keras.Variable(np.zeros(3, np.float32))
    means = keras.Variable(np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32))

    def mixture(root):
        def model():
            z = yield root(tfd.Categorical(logits=logits.value, name="z"))
            yield tfd.Independent(tfd.Normal(tf.gather(means.value, z), 1.), 1, name="x")
        return model

    kinds = {"autobatched": lambda: tfd.JointDistributionCoroutineAutoBatched(mixture(lambda d: d)),
             "batched": lambda: tfd.JointDistributionCoroutine(mixture(Root))}
    wake_x = sleep(kinds["batched"](), num_wake, seed=[1, 2])["x"]

    def step_fn(joint, held_out_error):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                result = amortised_step(joint, wake_x, num_sleep=num_sleep, seed=tf.constant([3, 4]),
                                        form="conditional", num_holdout=NUM_HOLDOUT, variables=[logits, means],
                                        held_out_error=held_out_error)
            return tape.gradient(result.loss, [logits, means]), result.diagnostics
        return step

    return _interleaved_times({f"{kind}{'_held_out' if held_out else ''}": step_fn(joint, held_out)
                               for kind, joint in kinds.items() for held_out in (False, True)}, repeats)


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


def run(configs, options, repeats, side_by_side=True):
    """Runs every configuration in a fresh process (clean peak memory); returns one result dict each."""
    results = []
    for model_name, solver, num_sleep in configs:
        spec = json.dumps({"model": model_name, "solver": solver, "num_sleep": num_sleep,
                           "options": options[solver], "repeats": repeats, "side_by_side": side_by_side})
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


def _ratio(result, numerator, denominator):
    return result[numerator][0] / result[denominator][0] if numerator in result and denominator in result else "-"


def table(results, options):
    """Wall-time columns (step, parts, their sum and ratios), the same ratio in CPU time, memory, gradient error,
    and the side-by-side ratios: factorisation / SciPy, step / previous exact step, XLA step / default step."""
    names = ("sample", "log_density", "gram", "cholesky", "solve", "weights")
    header = ["model", "solver", "N", "step (s)", "sample", "log-density f+b", "Gram + cross", "Cholesky", "solve",
              "weights (approx.)", "sum of parts", "step / sum", "CPU step / sum",
              "held-out targets (learning step, evaluation)", "SciPy cho_factor", "Cholesky / SciPy",
              "previous step (s)", "step / previous", "XLA step (s)", "XLA / default", "peak RSS (GB)",
              "grad. error (softplus)", "median bandwidth: subsample", "all points"]
    rows = []
    for r in results:
        wall = sum(r[name][0] for name in names if name in r)
        cpu = sum(r[name][1] for name in names if name in r)
        solver = r["solver"] + "".join(f" {key}={value}" for key, value in options[r["solver"]].items())
        rows.append([r["model"], solver, r["num_sleep"], r["step"][0]]
                    + [r[name][0] if name in r else "-" for name in names]
                    + [wall, r["step"][0] / wall, r["step"][1] / cpu, r["held_out_targets"][0],
                       r["cholesky_scipy"][0] if "cholesky_scipy" in r else "-",
                       _ratio(r, "cholesky", "cholesky_scipy"),
                       r["step_previous"][0] if "step_previous" in r else "-", _ratio(r, "step", "step_previous"),
                       r["step_jit"][0] if "step_jit" in r else "-", _ratio(r, "step_jit", "step"),
                       f"{r['peak_gb']:.2f}", r["gradient_error"],
                       r["bandwidth"][0], r["bandwidth_all"][0] if "bandwidth_all" in r else "-"])
    return markdown_table(header, rows, float_format="{:.3g}")


def auto_table(results):
    """One row per N: step time (s) and softplus gradient error of each solver, and the solver "auto" chose."""
    solver_names = ("auto", "cholesky", "nystrom", "random_features")
    header = (["N", "auto picks"] + [f"{name} step (s)" for name in solver_names]
              + [f"{name} grad. error" for name in solver_names])
    by_key = {(r["num_sleep"], r["solver"]): r for r in results}
    rows = []
    for num_sleep in sorted({r["num_sleep"] for r in results}):
        cells = [by_key.get((num_sleep, name)) for name in solver_names]
        rows.append([num_sleep, solvers.choose_solver("auto", num_sleep)]
                    + [cell["step"][0] if cell else "-" for cell in cells]
                    + [cell["gradient_error"] if cell else "-" for cell in cells])
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
                        help="run only these rows of the table (repeatable), e.g. binary:random_features; "
                             "'auto' for the solver='auto' table, 'autobatched' for the AutoBatched ratio")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration, JSON, in this process
    args = parser.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(measure(spec["model"], spec["solver"], spec["num_sleep"], spec["options"],
                                 spec["repeats"], spec["side_by_side"])))
        return
    start = time.time()
    options = QUICK_OPTIONS if args.quick else SOLVER_OPTIONS
    repeats = 2 if args.quick else 3
    only = set(args.only or ["autobatched", *{f"{model}:{solver}" for model, solver, _ in FULL}])
    configs = [config for config in (QUICK if args.quick else FULL) if f"{config[0]}:{config[1]}" in only]
    if args.only and not configs and not only & {"auto", "autobatched"}:
        parser.error(f"--only {args.only} matches no row; rows are MODEL:SOLVER with MODEL in binary, circle "
                     f"and SOLVER in {sorted(SOLVERS)}, or auto, or autobatched")
    print(machine_header())
    if configs:
        results = run(configs, options, repeats)
        print(table(results, options))
        suffix = "".join("_" + row.replace(":", "_") for row in sorted(args.only or []))
        path = plot_path(f"step_speed{suffix}", quick=args.quick)
        plot(results, path)
        print(f"plot: {path}")
    if "autobatched" in only:
        num_sleep = 500 if args.quick else 1000
        times = autobatched_ratio(num_sleep, repeats)
        print(markdown_table(["N", "M", "step", "AutoBatched (s)", "batched (s)", "AutoBatched / batched"],
                             [[num_sleep, NUM_WAKE, label, times[f"autobatched{key}"][0], times[f"batched{key}"][0],
                               times[f"autobatched{key}"][0] / times[f"batched{key}"][0]]
                              for label, key in (("training (fixed regression)", ""),
                                                 ("with held-out targets (learning, evaluation)", "_held_out"))],
                             float_format="{:.3g}"))
    if "auto" in only:
        print(auto_table(run(QUICK_AUTO if args.quick else AUTO, options, repeats, side_by_side=False)))
    print(f"wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
