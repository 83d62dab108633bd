"""Regression quality: fixed (median heuristic), learned and selected kernel ridge hyperparameters (issue 11).

Rows are regression settings: `fixed` = `KernelRidge()` (median heuristic bandwidth, lambda 1e-3); `learned` =
`KernelRidge(learn=True)` (log bandwidth and log ridge trained online on the held-out mean squared error, the
authors' objective, with `regression_optimizer=keras.optimizers.Adam(lr)`; within the bounds of `KernelRidge`'s
`learn`: the ridge at most its start 1e-3, the bandwidth between the nearest-neighbour distance and the median);
`learned-mse` = the same, named explicitly (`variance_weight=1.`, the default since the cap; tables made before
it have `learned` rows with `variance_weight=0.1`); `learned-w0.1` = noise + bias^2 + 0.1 variance
(`variance_weight=0.1`); `learned-r<lambda>` = learned from (and capped at) another starting ridge, e.g.
`learned-r1e-5`; the last three only in (b) when named in `--settings`; `learned-ard` =
`KernelRidge(learn=True, ard=True)`; on the state-space model also the kernel on lag-0..5 autocovariances of the
series (`*-acov`); in (b) also `selected` = `KernelRidge(bandwidth=1.)` whose bandwidth and lambda
`SelectRegression(every=20)` chooses by exact leave-one-out error every 20 steps (`tfp_amortised.selection`). Both
forms.

Three measurements, on six models with an exact `log_marginal`:

  (a) gradient: median relative error of the amortised estimate of the per-point `grad log p(x)` against the exact
      one, on 100 training points at the *initial* parameters, N = 1000 and 2000. A learned regression is first
      trained alone (an `AmortisedLearner` whose model optimiser is `SGD(0.)`, so the model does not move) for
      `--hyper-steps` steps. On the Bernoulli mixture, the ideal regression for discrete x (the mean of the sleep
      targets in each cell of identical x) is an oracle row.
  (b) learning: final exact held-out log-likelihood per observation of the amortised learner minus that of
      `ExactGradientLearner` (exact gradient ascent) from the same initialisation, with the same optimiser
      (Adam, same learning rate), the same batches (`shuffle=False`), batch size and epochs; goal: within
      0.01 nats per observation (0.2 nats per series on the state-space model).
  (c) timing: the median train-step time of learned (and learned-mse, ARD) relative to fixed, in the joint form,
      and of learned in the conditional and "auto" forms, at N = 1000 and 4000 on the 1-D mixture and the
      sigmoid belief network, measured in one interleaved run (warm up, then alternate).

    python -m benchmarks.regression_quality                  # full size
    python -m benchmarks.regression_quality --quick          # a few minutes
    python -m benchmarks.regression_quality --only timing    # one part: gradient, learning or timing
    python -m benchmarks.regression_quality --only learning --settings fixed,selected --forms joint
    python -m benchmarks.regression_quality --only learning --models mixture_1d --epochs-scale 5
    python -m benchmarks.regression_quality --only gradient --solvers cholesky,nystrom,nystrom:2048 --forms joint
    python -m benchmarks.regression_quality --only gradient --hindsight --gradient-sizes 2000

With `--hindsight` (a) instead scores every (bandwidth, lambda) of the closed-form selection's grid, widened, by
the gradient error itself and reports the best, chosen in hindsight, beside the fixed regression: what no choice of
these two hyperparameters from the grid can beat.

With `--solvers` (a) compares solvers instead of settings: the fixed regression (median heuristic, lambda 1e-3,
and `fixed-acov` on the state-space model) with each solver, `name` or `name:size` (`num_inducing` of Nystrom,
`num_features` of random features; default sizes otherwise), in the forms of `--forms`. Every solver sees the
same sleep samples of each seed, so its error ratio to the first solver listed (the reference, normally
`cholesky`) is paired per seed.
"""

import math
import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised import surrogate_log_marginal
from tfp_amortised.baselines.exact import ExactGradientLearner
from tfp_amortised.estimator import FORMS as ESTIMATOR_FORMS, sleep
from tfp_amortised.evaluation import median_relative_error, per_point_gradients
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import (AutoregressiveStateSpaceModel, BernoulliMixtureModel, FactorAnalysisModel,
                                  GaussianMixtureModel, SigmoidBeliefNetworkModel, SoftplusGaussianModel)
from tfp_amortised.ridge import KernelRidge, median_bandwidth
from tfp_amortised.selection import BANDWIDTH_FACTORS, RIDGES, SelectRegression

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FORMS = ("joint", "conditional")
REGRESSION_LRS = (0.05, 0.1, 0.2)
ARD_IN_LEARNING = False  # set by --learning-ard
LEARNING_SETTINGS = None  # (b)'s settings, all when None: set by --settings
LEARNING_FORMS = FORMS  # (b)'s forms: set by --forms


@keras.saving.register_keras_serializable(package="benchmarks")
class AutocovarianceFeatures(keras.layers.Layer):
    """Lag-0..`max_lag` autocovariances of a series about zero: `[B, T] -> [B, max_lag + 1]`.

    `gamma_k = mean_t x_t x_{t+k}`: the sufficient statistics of a stationary zero-mean Gaussian series (up to
    edge terms), so a kernel on them compares series by what their likelihood depends on.
    """

    def __init__(self, max_lag=5, **kwargs):
        super().__init__(**kwargs)
        self.max_lag = max_lag

    def call(self, x):
        x = tf.convert_to_tensor(x, self.compute_dtype)
        num_steps = x.shape[-1]
        return tf.stack([tf.reduce_mean(x[..., :num_steps - lag] * x[..., lag:], axis=-1)
                         for lag in range(self.max_lag + 1)], axis=-1)

    def get_config(self):
        return {**super().get_config(), "max_lag": self.max_lag}


def _ridge_start(setting):
    """The starting ridge of a `learned-r<number>` setting (e.g. `learned-r1e-5`), else None."""
    try:
        start = float(setting[len("learned-r"):]) if setting.startswith("learned-r") else None
    except ValueError:
        return None
    return start if start is not None and start > 0. else None


def regression_layer(setting, **options):
    """The `KernelRidge` of a setting name: fixed, learned, learned-ard, selected; `-acov` for the series features.

    `selected` holds a numeric start bandwidth (1, replaced before the first step) for `SelectRegression` to write.
    `options`: further `KernelRidge` arguments (the solver's); the solver is the exact `"cholesky"` unless given
    (the tables in RESULTS.md were measured with it, before `"auto"` became the default).
    """
    options = {"solver": "cholesky", **options}
    if setting.endswith("-acov"):
        options.update(features=AutocovarianceFeatures(), standardise_features=True)
        setting = setting[:-len("-acov")]
    if setting == "fixed":
        return KernelRidge(**options)
    if setting == "selected":
        return KernelRidge(bandwidth=1., **options)
    if setting == "learned-mse":  # the authors' objective, the held-out mean squared error (the default)
        return KernelRidge(learn=True, variance_weight=1., **options)
    if setting == "learned-w0.1":  # noise + bias^2 + 0.1 variance
        return KernelRidge(learn=True, variance_weight=0.1, **options)
    if _ridge_start(setting) is not None:  # another starting ridge (and so cap)
        return KernelRidge(learn=True, ridge=_ridge_start(setting), **options)
    return KernelRidge(learn=True, ard=setting == "learned-ard", **options)


class Problem:
    """A model, its truth, data (train / held out), initial weights per seed, and its learning settings."""

    def __init__(self, name, build, set_truth, initialise, num_train, num_test, learning_rate, batch_size, epochs,
                 goal, unit="observation", extra_settings=()):
        self.name, self.build, self.initialise = name, build, initialise
        self.learning_rate, self.batch_size, self.epochs = learning_rate, batch_size, epochs
        self.goal, self.unit, self.extra_settings = goal, unit, tuple(extra_settings)
        truth = build()
        set_truth(truth)
        x = sleep(truth.joint_distribution(), num_train + num_test, [2020, 1])["x"].numpy()
        self.train, self.test = x[:num_train], x[num_train:]
        self.truth_test = self.held_out(truth)
        self.data_dim = int(np.prod(self.train.shape[1:]))

    def held_out(self, model):
        """Mean exact log-likelihood of the held-out set per observation (per series for the state-space model)."""
        return float(tf.reduce_mean(model.log_marginal(self.test)))

    def initial_model(self, seed):
        model = self.build(seed)
        self.initialise(model, seed, self.train)
        return model

    @property
    def steps(self):
        return self.epochs * math.ceil(len(self.train) / self.batch_size)


def _softplus_inverse(value):
    return np.log(np.expm1(np.asarray(value, np.float64))).astype(np.float32)


def _nothing(*_):
    pass


def problems(quick, epochs_scale=1.):
    """The six models. Step counts (epochs x batches) are chosen so the exact-gradient oracle has about converged,
    then multiplied by `epochs_scale` (`--epochs-scale`; halved more with `quick`)."""
    scale = (0.5 if quick else 1.) * epochs_scale

    def mixture_truth(model):
        model.means.assign(np.linspace(-6., 6., 5, dtype=np.float32)[:, None])
        model.raw_scale.assign(_softplus_inverse(0.8))

    def mixture_init(model, seed, train):
        index = np.random.default_rng(seed).choice(len(train), 5, replace=False)
        model.means.assign(np.sort(train[index], axis=0))

    def softplus_truth(model):  # a setting of benchmarks/gradient_estimation.py: b = (1, 1), sigma_x = 0.5
        model.loading.assign([1., 1.])
        model.raw_noise_scale.assign(_softplus_inverse(0.5))

    def softplus_init(model, seed, _):  # as benchmarks/learning_quality.py: b ~ N(0, I) by the seed
        model.loading.assign(np.random.default_rng(seed).normal(size=2).astype(np.float32))

    def state_space_truth(model):
        model.raw_ar_coefficient.assign(float(np.arctanh(0.8)))
        model.loading.assign(1.)
        model.raw_transition_scale.assign(_softplus_inverse(0.6))
        model.raw_observation_scale.assign(_softplus_inverse(0.5))

    def epochs(value):
        return max(2, int(round(value * scale)))

    return [
        Problem("mixture_1d", lambda seed=None: GaussianMixtureModel(5, 1), mixture_truth, mixture_init, 1500, 1500,
                0.05, 100, epochs(4), 0.01),
        Problem("factor_analysis", lambda seed=100: FactorAnalysisModel(latent_dim=2, data_dim=6, seed=seed),
                _nothing, _nothing, 1000, 1000, 0.05, 100, epochs(15), 0.01),
        Problem("softplus", lambda seed=None: SoftplusGaussianModel(), softplus_truth, softplus_init, 1000, 1000,
                0.05, 100, epochs(12), 0.01),
        Problem("bernoulli_mixture", lambda seed=100: BernoulliMixtureModel(3, 6, seed=seed), _nothing, _nothing,
                2000, 1000, 0.05, 100, epochs(5), 0.01),
        Problem("sigmoid_belief", lambda seed=100: SigmoidBeliefNetworkModel(latent_dim=8, data_dim=20, seed=seed),
                _nothing, _nothing, 2000, 1000, 0.05, 100, epochs(9), 0.01),
        Problem("state_space", lambda seed=None: AutoregressiveStateSpaceModel(num_steps=50), state_space_truth,
                _nothing, 64, 64, 0.05, 32, epochs(45), 0.2, unit="series",
                extra_settings=("fixed-acov", "learned-acov")),
    ]


# ---------------------------------------------------------------------------------------------------------------
# (a) gradient error at the initial parameters


def train_hyperparameters(model, problem, setting, num_sleep, form, regression_lr, steps, seed, regression=None):
    """Trains only the regression's hyperparameters (the model optimiser is SGD(0.)); returns the layer.

    `regression`: a learning layer to continue training (already initialised), else a new one of `setting`.
    """
    regression = regression_layer(setting) if regression is None else regression
    if not regression.learn:
        return regression
    learner = AmortisedLearner(model, num_sleep=num_sleep, form=form, regression=regression, seed=seed)
    learner.compile(optimizer=keras.optimizers.SGD(0.), regression_optimizer=keras.optimizers.Adam(regression_lr))
    data = tf.data.Dataset.from_tensor_slices(problem.train).repeat().batch(problem.batch_size, drop_remainder=True)
    learner.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return regression


def ideal_cell_mean_gradients(model, x, num_sleep, seed):
    """Ideal regression for discrete x: mean of `grad log p(z_n, x_n)` over the sleep samples with `x_n = x_m`.

    Returns `(Tensor[M, P], number of wake points whose cell holds no sleep sample (estimate 0 there))`.
    """
    sample = sleep(model.joint_distribution(), num_sleep, seed)
    per_sample = per_point_gradients(lambda: model.joint_distribution().log_prob(sample["z"], sample["x"]),
                                     model.trainable_variables)
    match = tf.cast(tf.reduce_all(x[:, None, :] == sample["x"][None, :, :], axis=-1), per_sample.dtype)  # [M, N]
    counts = tf.reduce_sum(match, axis=1, keepdims=True)
    return (match @ per_sample) / tf.maximum(counts, 1.), int(tf.reduce_sum(tf.cast(counts == 0., tf.int32)))


def gradient_errors(model, x, exact, num_sleep, regression, form, repeats):
    """Median relative error of the amortised per-point gradients against `exact: [M, P]`, one per sleep seed
    `[repeat, num_sleep]`, `repeat < repeats` (a list of floats)."""
    return [median_relative_error(per_point_gradients(
        lambda: surrogate_log_marginal(model.joint_distribution, x, num_sleep=num_sleep,  # noqa: B023
                                       seed=[repeat, num_sleep], regression=regression, form=form),  # noqa: B023
        model.trainable_variables), exact) for repeat in range(repeats)]


def gradient_part(problem_list, args):
    """Rows `(model, setting, lr, form, N, error)`; the learned settings are trained at each (N, form)."""
    results, best_lr, trained = [], {}, {}
    for problem in problem_list:
        x = tf.constant(problem.train[:args.num_wake])
        settings = [("fixed", None)] + [("learned", lr) for lr in REGRESSION_LRS] + [("learned-ard", None)]
        settings += [(name, None if name.startswith("fixed") else 0.1)
                     for name in problem.extra_settings]
        for num_sleep in args.gradient_sizes:
            for form in FORMS:
                start = time.perf_counter()
                model = problem.initial_model(0)
                exact = per_point_gradients(lambda: model.log_marginal(x), model.trainable_variables)  # noqa: B023
                errors = {}
                for setting, lr in settings:
                    if setting == "learned-ard":  # the best learning rate of the plain learned setting here
                        lr = min((value for value in REGRESSION_LRS if ("learned", value) in errors),
                                 key=lambda value: errors["learned", value])  # noqa: B023
                    if setting == "learned-ard" and problem.data_dim == 1:
                        errors[setting, lr] = errors["learned", lr]  # one input dimension: ARD is the same layer
                        results.append((problem.name, setting + " (= learned, 1-d)", lr, form, num_sleep,
                                        errors[setting, lr]))
                        continue
                    if num_sleep != args.gradient_sizes[0]:  # larger N: fixed, and learned with the best lr
                        if setting.startswith("learned-") and not setting.endswith("-acov"):
                            continue
                        if setting == "learned":
                            if lr != best_lr[problem.name, form]:
                                continue
                    if num_sleep == args.gradient_sizes[0]:
                        regression = train_hyperparameters(model, problem, setting, num_sleep, form, lr or 0.,
                                                           args.hyper_steps, seed=1)
                        trained[problem.name, setting, lr, form] = regression
                    else:  # continue the layer trained at the smallest N, for fewer steps
                        regression = train_hyperparameters(
                            model, problem, setting, num_sleep, form, lr or 0., args.hyper_steps_more, seed=2,
                            regression=trained.get((problem.name, setting, lr, form)))
                    error = np.mean(gradient_errors(model, x, exact, num_sleep, regression, form, args.repeats))
                    errors[setting, lr] = error
                    results.append((problem.name, setting, lr, form, num_sleep, error))
                if problem.name == "bernoulli_mixture" and form == "joint":
                    ideal = [ideal_cell_mean_gradients(model, x, num_sleep, [repeat, num_sleep])
                             for repeat in range(args.repeats)]
                    error = np.mean([median_relative_error(estimate, exact) for estimate, _ in ideal])
                    empty = max(count for _, count in ideal)
                    results.append((problem.name, f"ideal (cell means; {empty} empty cells)", None, "both",
                                    num_sleep, error))
                if num_sleep == args.gradient_sizes[0]:
                    best_lr[problem.name, form] = min(REGRESSION_LRS,
                                                      key=lambda value: errors["learned", value])  # noqa: B023
                print(f"  gradient {problem.name} N={num_sleep} {form}: {time.perf_counter() - start:.0f} s",
                      flush=True)
        print(f"\n(partial, after {problem.name})\n{gradient_table(results, args.gradient_sizes)}\n", flush=True)
    return results


HINDSIGHT_FACTORS = (1 / 64, 1 / 32) + BANDWIDTH_FACTORS + (8., 16., 32., 64., 128., 256.)
HINDSIGHT_RIDGES = (1e-9, 1e-8) + RIDGES


def hindsight_part(problem_list, args):
    """(a) with `--hindsight`: rows `(model, form, N, fixed error, best error, best factor, best lambda)`.

    Every `(factor, lambda)` of `HINDSIGHT_FACTORS` (times the median heuristic of a sleep draw of size `N`) and
    `HINDSIGHT_RIDGES` (the selection grid, widened) is scored by the gradient error itself, at the initial
    parameters, on the same sleep seeds; the best is chosen in hindsight, so no selection from this grid can do
    better.
    """
    rows = []
    for problem in problem_list:
        model = problem.initial_model(0)
        x = tf.constant(problem.train[:args.num_wake])
        exact = per_point_gradients(lambda: model.log_marginal(x), model.trainable_variables)  # noqa: B023
        for num_sleep in args.gradient_sizes:
            sleep_x = sleep(model.joint_distribution(), num_sleep, [args.repeats, num_sleep])["x"]
            median = float(median_bandwidth(tf.reshape(sleep_x, [num_sleep, -1])))
            for form in LEARNING_FORMS:
                start = time.perf_counter()

                def error(regression):
                    try:
                        return np.mean(gradient_errors(model, x, exact, num_sleep, regression, form,  # noqa: B023
                                                       args.repeats))
                    except ValueError:  # non-finite weights: the kernel is too narrow for these sleep samples
                        return np.inf

                grid = {(factor, ridge): error(KernelRidge(bandwidth=factor * median, ridge=ridge, solver="cholesky"))
                        for factor in HINDSIGHT_FACTORS for ridge in HINDSIGHT_RIDGES}
                (factor, ridge), best = min(grid.items(), key=lambda item: item[1])
                rows.append((problem.name, form, num_sleep, error(regression_layer("fixed")), best, factor, ridge))
                print(f"  hindsight {problem.name} N={num_sleep} {form}: {time.perf_counter() - start:.0f} s\n\n"
                      f"(partial)\n{hindsight_table(rows)}\n", flush=True)
    return rows


def hindsight_table(rows):
    """One row per (model, form, N); "on the grid's edge" when the best factor or lambda is an end of its grid."""
    def on_edge(factor, ridge):
        return factor in (HINDSIGHT_FACTORS[0], HINDSIGHT_FACTORS[-1]) or ridge in (HINDSIGHT_RIDGES[0],
                                                                                  HINDSIGHT_RIDGES[-1])

    return markdown_table(
        ["model", "form", "N", "fixed (median, 1e-3)", "best of the grid in hindsight", "its bandwidth / median",
         "its lambda", "on the grid's edge", "goal 0.05 reachable"],
        [[name, form, size, f"{fixed:.3f}", f"{best:.3f}", f"{factor:g}", f"{ridge:g}",
          "yes" if on_edge(factor, ridge) else "no",
          "yes" if best <= 0.05 else "no"] for name, form, size, fixed, best, factor, ridge in rows])


def plot_hindsight(rows, path):
    """Bars of the fixed and the best-in-hindsight error per (model, form, N), with the issue's goal of 0.05."""
    figure, axis = plt.subplots(figsize=(max(6., 0.6 * len(rows)), 4.))
    positions = np.arange(len(rows))
    axis.bar(positions - 0.2, [row[3] for row in rows], 0.4, label="fixed (median heuristic, lambda 1e-3)")
    axis.bar(positions + 0.2, [row[4] for row in rows], 0.4, label="best (bandwidth, lambda) of the grid")
    axis.axhline(0.05, color="k", linestyle="--", label="goal 0.05")
    axis.set_xticks(positions, [f"{name}\n{form} N={size}" for name, form, size, *_ in rows], rotation=60,
                    fontsize=7, ha="right")
    axis.set(yscale="log", ylabel="median relative gradient error", title="(a) the best fixed hyperparameters "
             "in hindsight, at the initial parameters")
    axis.legend(fontsize=7)
    save_figure(figure, path)


SIZE_OPTIONS = {"nystrom": "num_inducing", "random_features": "num_features"}


def parse_solvers(text):
    """`--solvers`: comma-separated `name` or `name:size` -> `[(label, KernelRidge keyword arguments)]`."""
    solvers = []
    for label in text.split(","):
        name, _, size = label.partition(":")
        if name not in SIZE_OPTIONS and (name != "cholesky" or size):
            raise ValueError(f"--solvers: {label!r} is not cholesky, nystrom[:size] or random_features[:size]")
        solvers.append((label, {"solver": name, **({SIZE_OPTIONS[name]: int(size)} if size else {})}))
    return solvers


def solver_gradient_part(problem_list, args):
    """(a) with `--solvers`: rows `(model, form, setting, solver label, N, [error per sleep seed])` for the fixed
    settings (`fixed`, and `fixed-acov` on the state-space model)."""
    rows = []
    for problem in problem_list:
        model = problem.initial_model(0)
        x = tf.constant(problem.train[:args.num_wake])
        exact = per_point_gradients(lambda: model.log_marginal(x), model.trainable_variables)  # noqa: B023
        settings = ["fixed"] + [name for name in problem.extra_settings if name.startswith("fixed")]
        for form in LEARNING_FORMS:
            for num_sleep in args.gradient_sizes:
                start = time.perf_counter()
                for setting in settings:
                    for label, options in args.solvers:
                        regression = regression_layer(setting, **options)
                        rows.append((problem.name, form, setting, label, num_sleep,
                                     gradient_errors(model, x, exact, num_sleep, regression, form, args.repeats)))
                print(f"  gradient {problem.name} N={num_sleep} {form}: {time.perf_counter() - start:.0f} s\n\n"
                      f"(partial)\n{solver_table(rows, args.gradient_sizes)}\n", flush=True)
    return rows


def solver_table(rows, sizes):
    """One row per (model, form, setting, solver); per N the mean error [min, max over seeds] and the mean of the
    per-seed ratios to the first solver's error (same setting, same seed)."""
    errors = {row[:5]: row[5] for row in rows}
    reference = rows[0][3]
    cells = []
    for name, form, setting, label in dict.fromkeys(row[:4] for row in rows):
        cell = [name, form, setting, label]
        for size in sizes:
            values, base = errors.get((name, form, setting, label, size)), errors.get(
                (name, form, setting, reference, size))
            cell += (["-", "-"] if values is None else
                     [f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]",
                      f"{np.mean(np.divide(values, base)):.3f}"])
        cells.append(cell)
    header = ["model", "form", "regression", "solver"]
    for size in sizes:
        header += [f"N={size} error [seeds]", f"N={size} / {reference}"]
    return markdown_table(header, cells)


def gradient_table(results, sizes):
    """One row per (model, setting, lr); columns form x N."""
    columns = [(form, size) for form in FORMS for size in sizes]
    table = {}
    for name, setting, lr, form, size, error in results:
        row = table.setdefault((name, setting, "" if lr is None else f"{lr:g}"), {})
        for column_form in (FORMS if form == "both" else (form,)):
            row[column_form, size] = error
    rows = [[name, setting, lr, *[f"{row[c]:.3f}" if c in row else "-" for c in columns]]
            for (name, setting, lr), row in table.items()]
    header = ["model", "regression", "reg. lr", *[f"{form} N={size}" for form, size in columns]]
    return markdown_table(header, rows)


def best_regression_lr(results):
    """The learning rate with the smallest geometric-mean ratio of its error to the fixed regression's."""
    smallest = min(size for *_, size, _ in results)  # the sweep runs at the smallest N only
    fixed = {(n, f, s): e for n, setting, _, f, s, e in results if setting == "fixed" and s == smallest}
    ratios = {lr: [] for lr in REGRESSION_LRS}
    for name, setting, lr, form, size, error in results:
        if setting == "learned" and (name, form, size) in fixed and lr in ratios:
            ratios[lr].append(math.log(error / fixed[name, form, size]))
    counts = {len(values) for values in ratios.values()}
    if not ratios or len(counts) != 1 or 0 in counts:
        return None, {}
    means = {lr: float(np.exp(np.mean(values))) for lr, values in ratios.items()}
    return min(means, key=means.get), means


# ---------------------------------------------------------------------------------------------------------------
# (b) learning against the exact-gradient oracle


class HeldOut(keras.callbacks.Callback):
    """Held-out exact log-likelihood per observation before training and after every `every`-th and the last epoch."""

    def __init__(self, problem, model, every=1):
        super().__init__()
        self.problem, self.model_under_test, self.every = problem, model, every
        self.values = [problem.held_out(model)]

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.problem.epochs:
            self.values.append(self.problem.held_out(self.model_under_test))


def learn(problem, setting, form, seed, args):
    """Trains from the seed's initial model; returns the held-out curve (one value per epoch, and the start)."""
    keras.utils.set_random_seed(seed)
    model = problem.initial_model(seed)
    if setting == "oracle":
        learner = ExactGradientLearner(model)
        learner.compile(optimizer=keras.optimizers.Adam(problem.learning_rate))
    else:
        learner = AmortisedLearner(model, num_sleep=args.num_sleep, form=form, regression=regression_layer(setting),
                                   seed=seed)
        learner.compile(optimizer=keras.optimizers.Adam(problem.learning_rate),
                        regression_optimizer=keras.optimizers.Adam(args.regression_lr))
    recorder = HeldOut(problem, model, every=max(1, problem.epochs // 10))
    selector = SelectRegression(every=args.select_every, tolerance=args.tolerance) if setting == "selected" else None
    history = learner.fit(problem.train, batch_size=problem.batch_size, epochs=problem.epochs, shuffle=False,
                          verbose=0, callbacks=[recorder] + ([selector] if selector else []))
    if selector:
        print(f"    {problem.name} {form} seed {seed}: {selection_trace(selector.history)}", flush=True)
    if form == "auto":
        print(f"    {problem.name} auto seed {seed}: conditional form on "
              f"{np.mean(history.history['conditional_form']):.0%} of the steps", flush=True)
    return np.array(recorder.values)


def selection_trace(history):
    """One line on `SelectRegression.history`: how often the held setting was kept, and the settings' sequence."""
    kept = sum(bool(selection.kept) for _, selection in history[1:])
    median = BANDWIDTH_FACTORS.index(1.)
    changes = [f"{iteration}: ({float(selection.bandwidth / selection.bandwidths[median]):.3g}, "
               f"{float(selection.ridge):.0e})" for iteration, selection in history if not bool(selection.kept)]
    return (f"kept {kept} of {len(history) - 1} re-selections; (bandwidth / median, lambda) set at "
            + ", ".join(changes))


def learning_runs(problem):
    """`(setting, form)` pairs of (b): fixed, learned and selected (ARD only with --learning-ard, for lack of time
    on a shared machine); on the state-space model also the learned kernel on autocovariances; each in
    `LEARNING_FORMS`, and only the `LEARNING_SETTINGS` when given."""
    settings = ["fixed", "learned"] + (["learned-ard"] if ARD_IN_LEARNING and 1 < problem.data_dim <= 20 else [])
    settings += [name for name in problem.extra_settings if name.startswith("learned")] + ["selected"]
    settings += ["learned-mse", "learned-w0.1"] if LEARNING_SETTINGS is not None else []
    settings += [name for name in LEARNING_SETTINGS or () if _ridge_start(name) is not None]
    return [(setting, form) for setting in settings if LEARNING_SETTINGS is None or setting in LEARNING_SETTINGS
            for form in LEARNING_FORMS]


def learning_part(problem_list, args):
    """`{(model, setting, form): [curve per seed]}`, with `(model, "oracle", "-")` the exact-gradient curves."""
    curves = {}
    start = time.perf_counter()
    for seed in range(args.seeds):
        for problem in problem_list:
            curves.setdefault((problem.name, "oracle", "-"), []).append(learn(problem, "oracle", None, seed, args))
            for setting, form in learning_runs(problem):
                curves.setdefault((problem.name, setting, form), []).append(learn(problem, setting, form, seed, args))
            print(f"  learning {problem.name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
        print(f"\n(partial, seeds 0..{seed})\n{learning_table(problem_list, curves)}\n", flush=True)
    return curves


def learning_table(problem_list, curves):
    rows = []
    for problem in problem_list:
        oracle = np.array([curve[-1] for curve in curves[problem.name, "oracle", "-"]])
        # convergence check of the oracle: its change over the last three held-out evaluations (mean over seeds)
        every = max(1, problem.epochs // 10)
        span = problem.epochs - (len(curves[problem.name, "oracle", "-"][0]) - 4) * every
        last_gain = np.mean([curve[-1] - curve[-4] for curve in curves[problem.name, "oracle", "-"]])
        rows.append([problem.name, "oracle (exact gradient)", "-", f"{oracle.mean():.4f}",
                     f"(truth {problem.truth_test:.4f}; oracle change over its last {span} of {problem.epochs} "
                     f"epochs {last_gain:+.4f})", "", ""])
        for setting, form in learning_runs(problem):
            gaps = np.array([curve[-1] for curve in curves[problem.name, setting, form]]) - oracle
            within = np.abs(gaps) <= problem.goal
            rows.append([problem.name, setting, form, f"{(oracle + gaps).mean():.4f}",
                         f"{gaps.mean():+.4f} [{gaps.min():+.4f}, {gaps.max():+.4f}]",
                         f"{problem.goal:g} / {problem.unit}",
                         f"{'yes' if within.all() else 'no'} ({within.sum()}/{len(gaps)})"])
    header = ["model", "regression", "form", "held-out log p(x) (mean)", "learner - oracle: mean [min, max]",
              "goal", "|gap| within goal (seeds)"]
    return markdown_table(header, rows)


# ---------------------------------------------------------------------------------------------------------------
# (c) step time


# (regression setting, form) pairs timed by (c), interleaved; the first is the reference of the ratios.
TIMED = (("fixed", "joint"), ("learned", "joint"), ("learned-mse", "joint"), ("learned-ard", "joint"),
         ("learned", "conditional"), ("learned", "auto"))


def timing_part(problem_list, args):
    """Rows `(model, N, setting, form, median step s, ratio to fixed joint)` from one interleaved run per (model,
    N): the `TIMED` pairs."""
    rows = []
    for problem in problem_list:
        if problem.name not in ("mixture_1d", "sigmoid_belief"):
            continue
        batch = tf.constant(problem.train[:problem.batch_size])
        for num_sleep in args.timing_sizes:
            learners = {}
            for setting, form in TIMED:
                learner = AmortisedLearner(problem.initial_model(0), num_sleep=num_sleep, form=form,
                                           regression=regression_layer(setting), seed=0)
                learner.compile(optimizer=keras.optimizers.Adam(problem.learning_rate),
                                regression_optimizer=keras.optimizers.Adam(args.regression_lr))
                if learner.regression.learn:
                    learner.regression.initialise(learner.sample(num_sleep, seed=[0, 1])["x"])
                for _ in range(3):  # warm up: trace, then two steps
                    learner.train_on_batch(batch)
                learners[setting, form] = learner
            times = {key: [] for key in learners}
            for _ in range(args.timing_repeats):
                for key, learner in learners.items():
                    start = time.perf_counter()
                    learner.train_on_batch(batch)
                    times[key].append(time.perf_counter() - start)
            fixed = float(np.median(times[TIMED[0]]))
            for (setting, form), values in times.items():
                median = float(np.median(values))
                rows.append((problem.name, num_sleep, setting, form, median, median / fixed))
            print(f"  timing {problem.name} N={num_sleep} done", flush=True)
    return rows


def timing_table(rows):
    return markdown_table(["model", "N", "regression", "form", "median step (s)", "relative to fixed joint"],
                          [[name, size, setting, form, f"{median:.4f}", f"{ratio:.2f}"]
                           for name, size, setting, form, median, ratio in rows])


# ---------------------------------------------------------------------------------------------------------------


def plot(problem_list, gradient_results, curves, args, path):
    panels = [gradient_results is not None, curves is not None]
    figure, axes = plt.subplots(sum(panels), 1, figsize=(11, 4.2 * sum(panels)), squeeze=False)
    axes = list(axes[:, 0])
    if gradient_results is not None:
        axis = axes.pop(0)
        size = args.gradient_sizes[0]
        names = [problem.name for problem in problem_list]
        keys = []
        for _, setting, lr, form, n, _ in gradient_results:
            key = (setting, lr if setting == "learned" else None, form)
            if n == size and key not in keys:
                keys.append(key)
        width = 0.8 / max(1, len(keys))
        for index, (setting, lr, form) in enumerate(keys):
            values = [next((e for n_, s, l_, f, n, e in gradient_results if n_ == name and s == setting
                            and (lr is None or l_ == lr) and f == form and n == size), np.nan) for name in names]
            label = f"{setting}{'' if lr is None else f' lr={lr:g}'}, {form}"
            axis.bar(np.arange(len(names)) + index * width, values, width, label=label,
                     hatch="//" if form == "conditional" else None)
        axis.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        axis.set_yscale("log")
        axis.set(ylabel=f"median relative gradient error (N={size})", title="(a) gradient error at the initial "
                 "parameters")
        axis.legend(fontsize=6, ncol=3)
    if curves is not None:
        axis = axes.pop(0)
        labels, means, lows, highs, colours = [], [], [], [], []
        for index, problem in enumerate(problem_list):
            oracle = np.array([curve[-1] for curve in curves[problem.name, "oracle", "-"]])
            for setting, form in learning_runs(problem):
                gaps = (np.array([curve[-1] for curve in curves[problem.name, setting, form]]) - oracle)
                gaps = gaps / problem.goal  # in units of the goal
                labels.append(f"{problem.name} {setting} {form[0]}")
                means.append(gaps.mean())
                lows.append(gaps.mean() - gaps.min())
                highs.append(gaps.max() - gaps.mean())
                colours.append(f"C{index}")
        _plot_gaps(axis, labels, means, lows, highs, colours)
    save_figure(figure, path)


def _plot_gaps(axis, labels, means, lows, highs, colours):
    """Panel (b): each setting's mean gap to the oracle in units of the goal, with its min-max bar."""
    positions = np.arange(len(labels))
    axis.errorbar(positions, means, yerr=[lows, highs], fmt="none", ecolor="k", capsize=2)
    axis.scatter(positions, means, c=colours, zorder=3)
    axis.axhspan(-1., 1., color="0.85", zorder=0, label="goal (|gap| <= 0.01 nats/obs., 0.2 nats/series)")
    axis.set_xticks(positions, labels, rotation=90, fontsize=6)
    axis.set_yscale("symlog", linthresh=1.)
    axis.set(ylabel="(learner - oracle) / goal", title="(b) final held-out log-likelihood: amortised minus "
             "exact-gradient learner (mean, min-max over seeds; j/c = form)")
    axis.legend(fontsize=7)


def _last_tables(text):
    """The last gradient and the last learning markdown table printed in a log: lists of cell rows."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    gradient = [t for t in tables if t[0][:3] == ["model", "regression", "reg. lr"]]
    learning = [t for t in tables if t[0][:3] == ["model", "regression", "form"]]
    return (gradient[-1] if gradient else None), (learning[-1] if learning else None)


def plot_from_logs(paths, path):
    """Plots the last (possibly partial) tables printed by runs of this benchmark, merged over their logs."""
    gradient_rows, learning_rows = [], []
    for log in paths:
        with open(log, encoding="utf-8") as handle:
            gradient, learning = _last_tables(handle.read())
        if gradient:  # each row as {column name: cell}: the runs' tables may have different N columns
            gradient_rows += [dict(zip(gradient[0], row)) for row in gradient[2:]]
        if learning:
            learning_rows += learning[2:]
    figure, axes = plt.subplots(2, 1, figsize=(12, 9))
    axis = axes[0]
    if gradient_rows:
        names = list(dict.fromkeys(row["model"] for row in gradient_rows))
        groups = ["fixed", "learned (best lr)", "learned-ard", "fixed-acov", "learned-acov", "ideal"]
        width = 0.8 / (2 * len(groups))
        for form_index, form in enumerate(FORMS):
            key = f"{form} N=1000"
            for group_index, group in enumerate(groups):
                values = []
                for name in names:
                    candidates = [float(row[key]) for row in gradient_rows if row["model"] == name
                                  and row.get(key, "-") != "-" and (
                                      row["regression"] == group
                                      or group == "ideal" and row["regression"].startswith("ideal")
                                      or group == "learned (best lr)" and row["regression"] == "learned"
                                      or group == "learned-ard" and row["regression"].startswith("learned-ard"))]
                    values.append(min(candidates) if candidates else np.nan)
                offset = (form_index * len(groups) + group_index) * width
                axis.bar(np.arange(len(names)) + offset, values, width, color=f"C{group_index}",
                         hatch="//" if form == "conditional" else None, edgecolor="k", linewidth=0.3,
                         label=group if form_index == 0 else None)
        axis.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        axis.set_yscale("log")
        axis.set(ylabel="median relative error", title="(a) gradient error at the initial parameters, N=1000 "
                 "(plain: joint form, hatched: conditional form)")
        axis.legend(fontsize=7, ncol=3)
    axis = axes[1]
    if learning_rows:
        labels, means, lows, highs, colours = [], [], [], [], []
        names = list(dict.fromkeys(row[0] for row in learning_rows))
        for row in learning_rows:
            if row[2] == "-":
                continue
            goal = float(row[5].split()[0])
            numbers = [float(value) for value in row[4].replace("[", " ").replace("]", " ").replace(",", " ").split()]
            mean, low, high = (value / goal for value in numbers)
            labels.append(f"{row[0]} {row[1]} {row[2][0]}")
            means.append(mean)
            lows.append(mean - low)
            highs.append(high - mean)
            colours.append(f"C{names.index(row[0])}")
        _plot_gaps(axis, labels, means, lows, highs, colours)
    save_figure(figure, path)


def main():
    parser = benchmark_parser(__doc__, "2 seeds, fewer steps, N smaller")
    parser.add_argument("--only", choices=("gradient", "learning", "timing"), default=None)
    parser.add_argument("--models", default=None, help="comma-separated subset of the model names")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--regression-lr", type=float, default=None,
                        help="the learned settings' Adam learning rate in (b) and (c) (default: the best of (a) "
                        "when it runs, else 0.1)")
    parser.add_argument("--learning-ard", action="store_true", help="also learn with learned-ard in (b)")
    parser.add_argument("--settings", default=None, help="comma-separated subset of (b)'s settings: fixed, learned, "
                        "learned-mse, learned-w0.1, learned-r<lambda> (e.g. learned-r1e-5), learned-ard, "
                        "learned-acov, selected (default: all but learned-mse, learned-w0.1 and learned-r*; the "
                        "oracle always runs)")
    parser.add_argument("--tolerance", type=float, default=None, help="SelectRegression's tolerance in standard "
                        "errors for the selected setting of (b) (default 1; 0: re-select the arg-min every time)")
    parser.add_argument("--select-every", type=int, default=20, help="steps between the selected setting's "
                        "selections in (b) (default 20; more than the steps: select once, before the first)")
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated forms of (b), and of (a) with "
                        "--solvers (default: both)")
    parser.add_argument("--solvers", default=None, help="(a) compares these solvers of the fixed regression, "
                        "comma-separated `name` or `name:size` (module docstring), e.g. cholesky,nystrom,nystrom:2048")
    parser.add_argument("--hindsight", action="store_true", help="(a) scores every (bandwidth factor, lambda) of "
                        "the selection grid by the gradient error itself and reports the best against fixed, in the "
                        "forms of --forms")
    parser.add_argument("--repeats", type=int, default=None, help="sleep seeds of (a) (default 2, quick 1)")
    parser.add_argument("--gradient-sizes", default=None, help="comma-separated N of (a) (default 1000,2000)")
    parser.add_argument("--sweep-lrs", default=None, help="comma-separated regression lrs of (a) (default "
                        "0.05,0.1,0.2)")
    parser.add_argument("--hyper-steps", type=int, default=None, help="hyperparameter steps in (a) (default 50)")
    parser.add_argument("--epochs-scale", type=float, default=1., help="multiplies every model's epochs in (b) "
                        "(e.g. 5: the 1-D mixture's 60 steps become 300, where its oracle has converged)")
    parser.add_argument("--plot-from", default=None, help="comma-separated logs of runs of this benchmark: plot "
                        "their last (possibly partial) tables, merged, to regression_quality.png, and exit")
    args = parser.parse_args()
    if args.plot_from:
        path = plot_path("regression_quality")
        plot_from_logs(args.plot_from.split(","), path)
        print(f"plot: {path}")
        return
    global ARD_IN_LEARNING, LEARNING_FORMS, LEARNING_SETTINGS, REGRESSION_LRS
    ARD_IN_LEARNING = args.learning_ard or args.settings is not None and "learned-ard" in args.settings.split(",")
    if args.settings:
        LEARNING_SETTINGS = tuple(args.settings.split(","))
        unknown = {name for name in LEARNING_SETTINGS if _ridge_start(name) is None} - {
            "fixed", "learned", "learned-mse", "learned-w0.1", "learned-ard", "learned-acov", "selected"}
        if unknown:
            parser.error(f"--settings: unknown {sorted(unknown)}. Received: --settings={args.settings}")
    LEARNING_FORMS = tuple(args.forms.split(","))
    if set(LEARNING_FORMS) - set(ESTIMATOR_FORMS):
        parser.error(f"--forms must be a subset of {','.join(ESTIMATOR_FORMS)}. Received: --forms={args.forms}")
    if args.sweep_lrs:
        REGRESSION_LRS = tuple(float(value) for value in args.sweep_lrs.split(","))
    args.seeds = args.seeds or (2 if args.quick else 5)
    run_suffix = (("" if args.tolerance is None else f"_tolerance{args.tolerance:g}")
                  + ("" if args.select_every == 20 else f"_every{args.select_every}")
                  + ("" if args.epochs_scale == 1. else f"_epochs{args.epochs_scale:g}x"))
    args.tolerance = 1. if args.tolerance is None else args.tolerance
    args.num_sleep = 300 if args.quick else 1000
    args.gradient_sizes = ((300, 600) if args.quick else (1000, 2000)) if args.gradient_sizes is None else tuple(
        int(value) for value in args.gradient_sizes.split(","))
    args.hyper_steps = args.hyper_steps or (30 if args.quick else 50)
    args.hyper_steps_more = 15 if args.quick else 25
    args.repeats = args.repeats or (1 if args.quick else 2)
    try:
        args.solvers = args.solvers and parse_solvers(args.solvers)
    except ValueError as error:
        parser.error(str(error))
    args.num_wake = 100
    args.timing_sizes = (300, 1000) if args.quick else (1000, 4000)
    args.timing_repeats = 5 if args.quick else 10
    fixed_lr = args.regression_lr
    args.regression_lr = fixed_lr or 0.1
    problem_list = problems(args.quick, args.epochs_scale)
    if args.models:
        problem_list = [problem for problem in problem_list if problem.name in args.models.split(",")]
    parts = (args.only,) if args.only else ("gradient", "learning", "timing")
    start = time.perf_counter()
    print(machine_header(), flush=True)
    print(f"\nsettings: seeds {args.seeds}; learning N={args.num_sleep}, num_holdout 64; gradient N="
          f"{args.gradient_sizes}, {args.num_wake} points, {args.repeats} sleep seeds, hyperparameters trained "
          f"{args.hyper_steps} steps; timing N={args.timing_sizes}, {args.timing_repeats} interleaved steps each",
          flush=True)
    for problem in problem_list:
        print(f"  {problem.name}: {len(problem.train)} train / {len(problem.test)} held out, Adam "
              f"{problem.learning_rate:g}, batch {problem.batch_size}, {problem.epochs} epochs = {problem.steps} "
              "steps", flush=True)
    gradient_results = curves = None
    outputs = []
    if "gradient" in parts and args.hindsight:
        rows = hindsight_part(problem_list, args)
        suffix = "_" + args.models.replace(",", "_") if args.models else ""
        path = plot_path(f"regression_quality_hindsight{suffix}", quick=args.quick)
        plot_hindsight(rows, path)
        outputs.append("### (a) Gradient error of the best fixed hyperparameters in hindsight (median relative "
                       f"error, mean over {args.repeats} sleep seeds)\n\n{hindsight_table(rows)}\n\nplot: {path}")
    elif "gradient" in parts and args.solvers:
        table = solver_table(solver_gradient_part(problem_list, args), args.gradient_sizes)
        outputs.append(f"### (a) Gradient error of the fixed regression by solver (median relative error, "
                       f"{args.repeats} sleep seeds)\n\n{table}")
    elif "gradient" in parts:
        gradient_results = gradient_part(problem_list, args)
        best, means = best_regression_lr(gradient_results)
        if best is not None and fixed_lr is None:
            args.regression_lr = best
        outputs.append("### (a) Gradient error at the initial parameters (median relative error, mean over "
                       f"{args.repeats} sleep seeds)\n\n{gradient_table(gradient_results, args.gradient_sizes)}\n\n"
                       "Learned rows: hyperparameters trained alone for "
                       f"{args.hyper_steps} steps (model optimiser SGD(0.)) at the same N and form. The learning-"
                       f"rate sweep and ARD run at N={args.gradient_sizes[0]} (ARD with the best lr of the sweep "
                       f"for that model and form); at N={args.gradient_sizes[-1]} only the row of that best lr is "
                       "filled, by the layer trained at the smaller N continued for "
                       f"{args.hyper_steps_more} steps at the larger N (-acov rows: lr 0.1). "
                       "Geometric-mean error ratio learned / fixed at N="
                       f"{args.gradient_sizes[0]} by lr: " + ", ".join(f"{lr:g}: {ratio:.3f}"
                                                                        for lr, ratio in means.items()))
    if "learning" in parts:
        curves = learning_part(problem_list, args)
        outputs.append(f"### (b) Learning: final held-out log-likelihood, amortised minus exact-gradient oracle "
                       f"({args.seeds} seeds; N={args.num_sleep}; learned: regression lr {args.regression_lr:g}; "
                       f"selected: SelectRegression(every={args.select_every}, tolerance={args.tolerance:g}), LOO "
                       "on 500 sleep "
                       "samples)"
                       f"\n\n{learning_table(problem_list, curves)}")
    if "timing" in parts:
        timing = timing_part(problem_list, args)
        outputs.append("### (c) Train-step time relative to fixed (joint form, one interleaved run, median of "
                       f"{args.timing_repeats} steps; machine shared with other jobs: rerun with --only timing on a "
                       f"quiet machine)\n\n{timing_table(timing)}")
    if gradient_results is not None or curves is not None:
        suffix = ((f"_{args.only}" if args.only else "") + (f"_{args.models.replace(',', '_')}" if args.models else "")
                  + run_suffix)
        path = plot_path(f"regression_quality{suffix}", quick=args.quick)
        plot(problem_list, gradient_results, curves, args, path)
        outputs.append(f"plot: {path}")
    print("\n" + "\n\n".join(outputs))
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s, CPU time {time.process_time():.0f} s")


if __name__ == "__main__":
    main()
