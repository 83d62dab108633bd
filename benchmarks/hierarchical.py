"""Hierarchical Gamma-Poisson model: learned against true hyperparameters, with exact maximum likelihood beside.

Two settings of `HierarchicalPoissonModel` (groups of `n` counts sharing a Gamma(alpha, beta) rate): `n = 5`,
`(alpha, beta) = (3, 0.5)` (rates around 6, the setting of the model's tests) and `n = 10`, `(alpha, beta) =
(0.5, 0.25)` (over-dispersed: rates around 2 with standard deviation 2.8, many all-zero groups). For each seed,
2000 training and 2000 test groups are drawn afresh; `AmortisedLearner` (conditional form; the joint form
has the same gradient here, since only the Gamma prior depends on the parameters) trains from `alpha = beta = 1`
with Adam(0.05) on minibatches of 200 groups: with the default Gaussian kernel on the raw counts for two sleep
sizes `N`, and with the kernel on the log of the group total, `log(1 + sum_i x_i)` (`KernelRidge(features=...)`;
the total is a sufficient statistic for the rate), and with the learner's default, a learning kernel on the raw
counts (`KernelRidge(learn=True)`, 64 held-out sleep samples), at the larger `N`.

References: exact maximum likelihood of the same training data, L-BFGS (SciPy) on the closed-form `log p(x)`
(`HierarchicalPoissonModel.log_marginal`) to gradient norm 1e-6; and the fair oracle of the learners,
exact-gradient ascent (`ExactGradientLearner`) from the same start with the same optimiser, batches and epochs.
Scores: the learned `alpha`, `beta` and prior mean `alpha / beta` (mean ± sd over seeds), their difference to the
exact MLE of the same data, and the exact held-out log-likelihood per group. CPU seconds (process time, all
threads) include tracing.

    python -m benchmarks.hierarchical [--quick]
"""

import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from scipy.optimize import minimize

from benchmarks._report import EpochRecorder, benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised.baselines.exact import ExactGradientLearner
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.hierarchical import HierarchicalPoissonModel
from tfp_amortised.ridge import KernelRidge

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SETTINGS = ((5, 3., 0.5), (10, 0.5, 0.25))  # (group_size, alpha, beta)
NUM_TRAIN, NUM_TEST, BATCH_SIZE, LEARNING_RATE = 2000, 2000, 200, 0.05
PARAMETERS = ("alpha", "beta", "alpha / beta")


def simulate(group_size, alpha, beta, seed):
    """Training and test groups, `float32[2000, group_size]` each, from the true model."""
    truth = HierarchicalPoissonModel(group_size, concentration=alpha, rate=beta)
    x = truth.joint_distribution().sample(NUM_TRAIN + NUM_TEST, seed=[seed, group_size]).x.numpy()
    return x[:NUM_TRAIN], x[NUM_TRAIN:]


def log_total_count(x):
    """`log(1 + sum_i x_i)`: `[B, n] -> [B, 1]`, the kernel's input for the sufficient-statistic variant."""
    return tf.math.log1p(tf.reduce_sum(x, -1, keepdims=True))


def amortised(num_sleep, ridge):
    """A factory `(model, seed) -> AmortisedLearner` (conditional form) with `num_sleep` and the regression `ridge()`;
    held-out sleep samples only for a learning regression."""
    def make(model, seed):
        regression = ridge()
        return AmortisedLearner(model, num_sleep=num_sleep, form="conditional", regression=regression,
                                num_holdout=64 if regression.learn else 0, seed=seed)
    return make


def learners(sleep_sizes):
    """`{label: learner factory}`: exact-gradient ascent (the fair oracle: the same start, optimiser and batches);
    the fixed kernel at every size; at the last, the total-count kernel and the learner's default, a learning
    kernel on the raw counts (`KernelRidge(learn=True)`)."""
    variants = {"exact gradient": ExactGradientLearner}
    variants.update({f"amortised, N={size}": amortised(size, KernelRidge) for size in sleep_sizes})
    variants[f"amortised, N={sleep_sizes[-1]}, kernel on log(1+Σx)"] = amortised(
        sleep_sizes[-1], lambda: KernelRidge(features=log_total_count))
    variants[f"amortised, N={sleep_sizes[-1]}, learned"] = amortised(sleep_sizes[-1], lambda: KernelRidge(learn=True))
    return variants


def parameters(model):
    """`(alpha, beta, alpha / beta)` of a model, as floats."""
    alpha, beta = float(model.concentration), float(model.rate)
    return alpha, beta, alpha / beta


def mean_log_likelihood(model, x):
    """Exact mean `log p(x)` per group."""
    return float(tf.reduce_mean(model.log_marginal(x)))


def exact_maximum_likelihood(x):
    """The maximum-likelihood `HierarchicalPoissonModel` of groups `x: [M, n]` by L-BFGS on `log_marginal`."""
    model = HierarchicalPoissonModel(x.shape[1])
    variables = model.trainable_variables

    def loss_and_gradient(raw):
        for variable, value in zip(variables, raw):
            variable.assign(value)
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(model.log_marginal(x))
        return float(loss), np.array([float(g) for g in tape.gradient(loss, variables)], np.float64)

    start = np.array([float(variable.numpy()) for variable in variables], np.float64)
    result = minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B", options={"gtol": 1e-6})
    loss_and_gradient(result.x)
    return model


def train(x_train, make_learner, seed, epochs):
    """Trains `make_learner(model, seed)` from `alpha = beta = 1` (the same batches for every learner of a seed);
    returns `(model, path [epochs + 1, 2], CPU seconds)`."""
    keras.utils.set_random_seed(seed)
    model = HierarchicalPoissonModel(x_train.shape[1])
    learner = make_learner(model, seed)
    learner.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE))
    recorder = EpochRecorder(lambda: parameters(model)[:2])
    start = time.process_time()
    learner.fit(x_train, batch_size=BATCH_SIZE, epochs=epochs, callbacks=[recorder], verbose=0)
    return model, np.array(recorder.values), time.process_time() - start


def run_setting(setting, seeds, sleep_sizes, epochs):
    """Every method on each seed's data: `{method: {"parameters": [seeds, 3], "log_lik": [seeds], "cpu": [seeds],
    "path": [...]}}` and seed 0's training data."""
    group_size, alpha, beta = setting
    variants = learners(sleep_sizes)
    methods = ["truth", "exact ML", *variants]
    results = {method: {"parameters": [], "log_lik": [], "cpu": [], "path": []} for method in methods}
    first_train = None
    for seed in seeds:
        x_train, x_test = simulate(group_size, alpha, beta, seed)
        first_train = x_train if first_train is None else first_train
        fitted = {"truth": (HierarchicalPoissonModel(group_size, concentration=alpha, rate=beta), None, np.nan)}
        start = time.process_time()
        fitted["exact ML"] = (exact_maximum_likelihood(x_train), None, time.process_time() - start)
        for label, make_learner in variants.items():
            fitted[label] = train(x_train, make_learner, seed, epochs)
        for method, (model, path, cpu) in fitted.items():
            results[method]["parameters"].append(parameters(model))
            results[method]["log_lik"].append(mean_log_likelihood(model, x_test))
            results[method]["cpu"].append(cpu)
            results[method]["path"].append(path)
    return {method: {key: np.array(value) if key != "path" else value for key, value in result.items()}
            for method, result in results.items()}, first_train


def table_rows(setting, results):
    """Markdown rows: one per parameter and one for the held-out log-likelihood, one column per method, then
    each trained learner's difference to the exact MLE of the same data (mean ± sd over seeds)."""
    def spread(values, digits=3):
        return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"

    label = f"n={setting[0]}"
    trained = [method for method in results if method not in ("truth", "exact ML")]
    rows = []
    for index, name in enumerate(PARAMETERS):
        column = {method: result["parameters"][:, index] for method, result in results.items()}
        rows.append([label, name, f"{column['truth'][0]:.3f}", spread(column["exact ML"]),
                     *[spread(column[method]) for method in trained],
                     *[spread(column[method] - column["exact ML"]) for method in trained]])
    column = {method: result["log_lik"] for method, result in results.items()}
    rows.append([label, "held-out log p(x) / group", spread(column["truth"]), spread(column["exact ML"]),
                 *[spread(column[method]) for method in trained],
                 *[spread(column[method] - column["exact ML"], 4) for method in trained]])
    rows.append([label, "CPU s / run", "", f"{np.mean(results['exact ML']['cpu']):.1f}",
                 *[f"{np.mean(results[method]['cpu']):.1f}" for method in trained], *[""] * len(trained)])
    return rows


def likelihood_surface(x, alphas, betas):
    """Exact mean training `log p(x)` on the grid `alphas x betas`: `[len(betas), len(alphas)]`."""
    model = HierarchicalPoissonModel(x.shape[1])
    surface = np.empty((len(betas), len(alphas)))
    for i, beta in enumerate(betas):
        for j, alpha in enumerate(alphas):
            model.raw_concentration.assign(np.log(np.expm1(alpha)))
            model.raw_rate.assign(np.log(np.expm1(beta)))
            surface[i, j] = mean_log_likelihood(model, x)
    return surface


def plot(all_results, path):
    """Per setting: seed 0's exact log-likelihood surface over `(alpha, beta)` with every learner's path (one
    per seed), the exact MLEs and the truth."""
    figure, axes = plt.subplots(1, len(all_results), figsize=(5.5 * len(all_results), 4.5), squeeze=False)
    for axis, (setting, (results, x_first)) in zip(axes[0], all_results.items()):
        group_size, alpha, beta = setting
        alphas = np.linspace(alpha / 5., max(alpha * 2.5, 1.2), 40)  # the grids cover the start (1, 1)
        betas = np.linspace(beta / 5., max(beta * 2.5, 1.2), 40)
        surface = likelihood_surface(x_first, alphas, betas)
        peak = surface.max()
        axis.contour(alphas, betas, peak - surface, levels=[0.001, 0.01, 0.03, 0.1, 0.3, 1.], colors="grey",
                     linewidths=0.7)
        trained = [method for method in results if method not in ("truth", "exact ML")]
        for colour, method in enumerate(trained):
            for index, trajectory in enumerate(results[method]["path"]):
                axis.plot(trajectory[:, 0], trajectory[:, 1], color=f"C{colour}", linewidth=0.8, alpha=0.8,
                          label=method if index == 0 else None)
        mle = results["exact ML"]["parameters"]
        axis.plot(mle[:, 0], mle[:, 1], "k+", markersize=9, label="exact ML (one per seed)")
        axis.plot([alpha], [beta], "r*", markersize=11, label="truth")
        axis.set(xlabel="alpha", ylabel="beta",
                 title=f"n={group_size}: contours of seed 0's mean log p(x) below its peak\n"
                       "(0.001, 0.01, 0.03, 0.1, 0.3, 1 nats); paths from (1, 1)")
        axis.title.set_fontsize(8)
        axis.legend(fontsize=7)
    save_figure(figure, path)


def main():
    parser = benchmark_parser(__doc__, "one seed, N = 200, 8 epochs")
    args = parser.parse_args()
    seeds, sleep_sizes, epochs = (range(1), (200,), 8) if args.quick else (range(4), (200, 1000), 30)
    start = time.time()
    all_results = {setting: run_setting(setting, seeds, sleep_sizes, epochs) for setting in SETTINGS}
    path = plot_path("hierarchical", quick=args.quick)
    plot(all_results, path)
    rows = [row for setting, (results, _) in all_results.items() for row in table_rows(setting, results)]
    print(machine_header())
    print(f"\nHierarchicalPoissonModel, {NUM_TRAIN} training / {NUM_TEST} test groups per seed, {len(seeds)} seeds "
          f"(mean ± sd); amortised: conditional form, {epochs} epochs of {NUM_TRAIN // BATCH_SIZE} Adam"
          f"({LEARNING_RATE}) steps on minibatches of {BATCH_SIZE}, from alpha = beta = 1. Truth: n=5 (3, 0.5), "
          f"n=10 (0.5, 0.25)\n")
    trained = list(learners(sleep_sizes))
    print(markdown_table(["setting", "quantity", "truth", "exact ML", *trained,
                          *[f"{method} − exact ML" for method in trained]], rows))
    print(f"\nplot: {path}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
