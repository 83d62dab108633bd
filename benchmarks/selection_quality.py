"""Closed-form hyperparameter selection (leave-one-out / GCV) against the fixed median heuristic (issue 11).

Rows are regression settings on the six models of `benchmarks.regression_quality` (same truth, data and
initial parameters): `fixed` = `KernelRidge()` (median heuristic, lambda 1e-3); `<criterion>-<targets>/<n>` =
`KernelRidge(bandwidth=1.)` whose bandwidth and lambda `tfp_amortised.selection.select_regression` chose on a
fresh sleep set of `n` samples, by the criterion (`loo`, `gcv`) of the regression of the targets (`gradient<k>`:
`k` random projections of the per-sample log-joint gradient; `log_joint`: the centred log-joint), over the grid
`BANDWIDTH_FACTORS` x median and `RIDGES`.

  (a) gradient: median relative error of the amortised per-point `grad log p(x)` against the exact one, on 100
      training points at the initial parameters, N = 1000 and 2000, both forms (as regression_quality (a)).
  (b) cost: median time of one selection call (compiled), of one fixed and of one learned (`KernelRidge(
      learn=True)`) train step (`AmortisedLearner`, joint form, num_holdout 64), interleaved; each relative to
      the fixed step, and a selection's overhead per step when it runs every 20 steps.

    python -m benchmarks.selection_quality                 # both parts, N = 1000 and 2000
    python -m benchmarks.selection_quality --quick         # N = 300 and 600, fewer timing repeats
    python -m benchmarks.selection_quality --only cost --timing-sizes 1000,4000
"""

import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from benchmarks.regression_quality import FORMS, problems
from tfp_amortised import surrogate_log_marginal
from tfp_amortised.evaluation import median_relative_error, per_point_gradients
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.ridge import KernelRidge
from tfp_amortised.selection import select_regression

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (criterion, targets, number of random projections of the gradient, sleep samples selected on)
SELECTIONS = (("loo", "gradient", 2, 500), ("loo", "gradient", 8, 500), ("loo", "log_joint", 1, 500),
              ("gcv", "gradient", 2, 500))
EVERY = 20


def setting_name(criterion, targets, projections, subsample):
    return f"{criterion}-{targets}{projections if targets == 'gradient' else ''}/{subsample}"


def selected_layer(model, criterion, targets, projections, subsample, seed):
    """A `KernelRidge` whose bandwidth and ridge were selected on a fresh sleep set; and the selection."""
    regression = KernelRidge(bandwidth=1., solver="cholesky")
    selection = select_regression(regression, model.joint_distribution, num_sleep=subsample, seed=seed,
                                  targets=targets, variables=model.trainable_variables,
                                  num_projections=projections, criterion=criterion)
    return regression, selection


def gradient_part(problem_list, args):
    """Rows `(model, setting, form, N, error, bandwidth, ridge)`."""
    results = []
    for problem in problem_list:
        x = tf.constant(problem.train[:args.num_wake])
        for num_sleep in args.sizes:
            for form in FORMS:
                start = time.perf_counter()
                model = problem.initial_model(0)
                exact = per_point_gradients(lambda: model.log_marginal(x), model.trainable_variables)  # noqa: B023
                layers = {"fixed": (KernelRidge(solver="cholesky"), None)}
                for selection in SELECTIONS:
                    layers[setting_name(*selection)] = selected_layer(model, *selection, [11, num_sleep])
                for setting, (regression, selection) in layers.items():
                    error = np.mean([median_relative_error(per_point_gradients(
                        lambda: surrogate_log_marginal(model.joint_distribution, x, num_sleep=num_sleep,  # noqa
                                                       seed=[repeat, num_sleep], regression=regression, form=form),
                        model.trainable_variables), exact) for repeat in range(args.repeats)])
                    chosen = (None, None) if selection is None else (float(selection.bandwidth / selection.bandwidths[
                        4]), float(selection.ridge))
                    results.append((problem.name, setting, form, num_sleep, error, *chosen))
                print(f"  gradient {problem.name} N={num_sleep} {form}: {time.perf_counter() - start:.0f} s",
                      flush=True)
        print(f"\n(partial, after {problem.name})\n{gradient_table(results, args.sizes)}\n", flush=True)
    return results


def gradient_table(results, sizes):
    """One row per (model, setting); columns form x N, each `error` and, for a selection, `(factor, ridge)`."""
    columns = [(form, size) for form in FORMS for size in sizes]
    table = {}
    for name, setting, form, size, error, factor, ridge in results:
        choice = "" if factor is None else f" ({factor:g}, {ridge:.0e})"
        table.setdefault((name, setting), {})[form, size] = f"{error:.3f}{choice}"
    rows = [[name, setting, *[row.get(c, "-") for c in columns]] for (name, setting), row in table.items()]
    return markdown_table(["model", "regression", *[f"{form} N={size}" for form, size in columns]], rows)


def summary_table(results, sizes):
    """Geometric-mean error ratio of each setting to fixed, per form and N, over the models."""
    fixed = {(n, f, s): e for n, setting, f, s, e, *_ in results if setting == "fixed"}
    ratios = {}
    for name, setting, form, size, error, *_ in results:
        ratio = error / fixed[name, form, size]
        ratios.setdefault(setting, {}).setdefault((form, size), []).append(float(np.log(ratio)))
    columns = [(form, size) for form in FORMS for size in sizes]
    rows = [[setting, *[f"{np.exp(np.mean(values[c])):.3f}" if c in values else "-" for c in columns],
             f"{np.exp(max(max(v) for v in values.values())):.2f}"] for setting, values in ratios.items()]
    return markdown_table(["regression", *[f"{form} N={size}" for form, size in columns], "worst ratio"], rows)


def cost_part(problem_list, args):
    """Rows `(model, N, setting, median seconds, ratio to the fixed step, overhead selecting every EVERY steps)`."""
    rows = []
    for problem in problem_list:
        batch = tf.constant(problem.train[:problem.batch_size])
        for num_sleep in args.timing_sizes:
            learner = AmortisedLearner(problem.initial_model(0), num_sleep=num_sleep, form="joint", seed=0,
                                       regression=KernelRidge(solver="cholesky"))
            learner.compile(optimizer=keras.optimizers.Adam(problem.learning_rate))
            model = learner.generative_model
            learning = AmortisedLearner(problem.initial_model(0), num_sleep=num_sleep, form="joint", seed=0,
                                        regression=KernelRidge(learn=True, solver="cholesky"))
            learning.compile(optimizer=keras.optimizers.Adam(problem.learning_rate))
            calls = {"fixed step": lambda: learner.train_on_batch(batch),  # noqa: B023
                     "learned step": lambda: learning.train_on_batch(batch)}  # noqa: B023
            for criterion, targets, projections, subsample in SELECTIONS:
                select = tf.function(lambda seed, c=criterion, t=targets, k=projections, n=subsample,
                                     r=KernelRidge(bandwidth=1.): select_regression(
                                         r, model.joint_distribution, num_sleep=n, seed=seed, targets=t,  # noqa
                                         variables=model.trainable_variables, num_projections=k, criterion=c).ridge)
                calls[setting_name(criterion, targets, projections, subsample)] = lambda f=select: f(
                    tf.constant([1, 2]))
            for call in calls.values():  # warm up: trace, then one call
                call(), call()
            times = {name: [] for name in calls}
            for _ in range(args.timing_repeats):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - start)
            step = float(np.median(times["fixed step"]))
            for name, values in times.items():
                median = float(np.median(values))
                overhead = "" if name.endswith("step") else f"{median / (EVERY * step):.2f}"
                rows.append((problem.name, num_sleep, name, median, median / step, overhead))
            print(f"  cost {problem.name} N={num_sleep} done", flush=True)
    return rows


def cost_table(rows):
    return markdown_table(["model", "N", "call", "median time (s)", "relative to the fixed step",
                           f"overhead per step, every {EVERY} steps"],
                          [[name, size, call, f"{median:.4f}", f"{ratio:.2f}", overhead]
                           for name, size, call, median, ratio, overhead in rows])


def plot(results, sizes, path):
    names = list(dict.fromkeys(row[0] for row in results))
    settings = list(dict.fromkeys(row[1] for row in results))
    figure, axes = plt.subplots(1, len(FORMS), figsize=(13, 4), squeeze=False)
    width = 0.8 / len(settings)
    for axis, form in zip(axes[0], FORMS):
        for index, setting in enumerate(settings):
            values = [next((e for n, s, f, size, e, *_ in results if n == name and s == setting and f == form
                            and size == sizes[0]), np.nan) for name in names]
            axis.bar(np.arange(len(names)) + index * width, values, width, label=setting)
        axis.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=20, fontsize=7)
        axis.set_yscale("log")
        axis.set(ylabel="median relative gradient error", title=f"{form} form, N={sizes[0]}")
    axes[0][0].legend(fontsize=7)
    save_figure(figure, path)


def _sizes(text, default):
    return default if text is None else tuple(int(value) for value in text.split(","))


def main():
    parser = benchmark_parser(__doc__, "N = 300 and 600, 1 sleep seed, 5 timing repeats")
    parser.add_argument("--only", choices=("gradient", "cost"), default=None)
    parser.add_argument("--models", default=None, help="comma-separated subset of the model names")
    parser.add_argument("--sizes", default=None, help="comma-separated N of (a) (default 1000,2000)")
    parser.add_argument("--timing-sizes", default=None, help="comma-separated N of (b) (default 1000)")
    parser.add_argument("--repeats", type=int, default=None, help="sleep seeds per gradient error (default 2)")
    args = parser.parse_args()
    args.sizes = _sizes(args.sizes, (300, 600) if args.quick else (1000, 2000))
    args.timing_sizes = _sizes(args.timing_sizes, (300,) if args.quick else (1000,))
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.timing_repeats = 5 if args.quick else 10
    args.num_wake = 100
    problem_list = problems(quick=True)  # only the data and initial parameters are used: no learning runs here
    if args.models:
        problem_list = [problem for problem in problem_list if problem.name in args.models.split(",")]
    start = time.perf_counter()
    print(machine_header(), flush=True)
    outputs = []
    if args.only in (None, "gradient"):
        results = gradient_part(problem_list, args)
        suffix = f"_{args.models.replace(',', '_')}" if args.models else ""
        path = plot_path(f"selection_quality{suffix}", quick=args.quick)
        plot(results, args.sizes, path)
        outputs += [f"### (a) Gradient error (median relative error, mean over {args.repeats} sleep seeds; "
                    "selections: (chosen bandwidth / median, chosen ridge))\n\n" + gradient_table(results, args.sizes),
                    "Geometric-mean error ratio to fixed over the models\n\n" + summary_table(results, args.sizes),
                    f"plot: {path}"]
    if args.only in (None, "cost"):
        outputs.append("### (b) Cost\n\n" + cost_table(cost_part(problem_list, args)))
    print("\n" + "\n\n".join(outputs))
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s, CPU time {time.process_time():.0f} s")


if __name__ == "__main__":
    main()
