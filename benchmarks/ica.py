"""Independent component analysis: recovery of a known mixing matrix by amortised learning and by references.

Data: `K` Laplace(0, 1) sources mixed by a known square matrix `A` (`K = 2`: the matrix of the model's tests;
`K = 4`: `I + 0.5 G` with `G` a fixed standard-normal draw, condition number 3.8), plus N(0, 0.1^2) noise:
2000 training and 2000 test points, drawn afresh for every seed. Every learner starts from the same random
`IndependentComponentsModel(K, K, seed=seed)` (Amari index about 0.4 to the truth) and runs Adam(0.02) on
minibatches of 100:

  - amortised learning (`AmortisedLearner`), joint and conditional forms, two sleep sizes `N`;
  - a VAE (`VariationalLearner`, `MeanFieldEncoder` with Gaussian `q(s | x)`, one hidden layer of 64).

References: scikit-learn's FastICA (logcosh contrast), and exact maximum likelihood of the noiseless square
model, `log p(x) = sum_k log Laplace((W x)_k) + log |det W|`, by Amari's natural-gradient ascent to
convergence (Amari, Cichocki, Yang, "A new learning algorithm for blind signal separation", NIPS 1995).
With noise 0.1 against sources of standard deviation 1.41 the noiseless model is nearly right.

Scores: the Amari index of the learned mixing matrix to the truth (`amari_index`; 0 is perfect recovery up to
order, sign and scale), the learned noise scale, and the held-out log-likelihood per point. The noisy model's
`log p(x)` has no closed form; for square `A` it is `-log |det A| + log E_eps[prod_k Laplace((A^{-1}(x + sigma
eps))_k)]` with `eps ~ N(0, I)` (a change of variables in the integral over `s`), estimated with 1000 draws
of `eps` per point (Monte Carlo error printed; exact for `sigma = 0`). CPU seconds (process time, all
threads) per training run include tracing.

    python -m benchmarks.ica [--quick]
    python -m benchmarks.ica --regressions fixed,learned --sleep-sizes 1000   # the learner's default regression too
"""

import time

import keras
import matplotlib
import numpy as np
from scipy.special import logsumexp
from sklearn.decomposition import FastICA

from benchmarks import _regressions as regressions
from benchmarks._report import EpochRecorder, benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised.baselines import MeanFieldEncoder, VariationalLearner
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.ica import IndependentComponentsModel, amari_index

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TRUE_NOISE, NUM_TRAIN, NUM_TEST, BATCH_SIZE, LEARNING_RATE = 0.1, 2000, 2000, 100, 0.02
LAPLACE_VARIANCE = 2.


def true_mixing(num_sources):
    """`float64[K, K]`: the known mixing matrix of `K` sources."""
    if num_sources == 2:
        return np.array([[1., 0.6], [-0.4, 1.]])
    return np.eye(num_sources) + 0.5 * np.random.default_rng(0).normal(size=(num_sources, num_sources))


def simulate(num_sources, seed):
    """Training and test data `float32[2000, K]` each, drawn from the true model with noise 0.1."""
    truth = IndependentComponentsModel(num_sources, num_sources, noise_scale=TRUE_NOISE)
    truth.mixing.assign(true_mixing(num_sources))
    x = truth.joint_distribution().sample(NUM_TRAIN + NUM_TEST, seed=[seed, num_sources]).x.numpy()
    return x[:NUM_TRAIN], x[NUM_TRAIN:]


def held_out_log_likelihood(mixing, noise_scale, x, num_draws=1000, seed=0):
    """Mean `log p(x)` per point under Laplace sources, square mixing `A` and noise `sigma`, and its MC error.

    `p(x) = |det A|^{-1} E_eps[prod_k Laplace((A^{-1}(x + sigma eps))_k)]`, `eps ~ N(0, I_K)`: exact when
    `sigma = 0`, else `num_draws` draws per point (the same draws for every model: common random numbers).

    Args:
      mixing: `[K, K]`; noise_scale: float; x: `[M, K]`.

    Returns:
      `(mean log-likelihood, standard error of that mean from the Monte Carlo draws)`.
    """
    mixing, x = np.asarray(mixing, np.float64), np.asarray(x, np.float64)
    eps = np.random.default_rng(seed).normal(size=(num_draws, 1, x.shape[1]))
    sources = np.linalg.solve(mixing, (x[None] + noise_scale * eps).reshape(-1, x.shape[1]).T).T
    log_prior = np.sum(-np.abs(sources) - np.log(2.), axis=-1).reshape(num_draws, len(x))  # [draws, M]
    log_mean = logsumexp(log_prior, axis=0) - np.log(num_draws)
    weights = np.exp(log_prior - log_mean)  # relative to their mean, per point
    standard_error = np.sqrt(np.sum(weights.var(0) / num_draws)) / len(x)  # delta method, points independent
    return float(np.mean(log_mean) - np.linalg.slogdet(mixing)[1]), float(standard_error)


def noiseless_maximum_likelihood(x, initial_mixing, learning_rate=0.05, tolerance=1e-7, max_steps=20000):
    """Exact ML of the noiseless square model with Laplace sources by natural-gradient ascent; returns `A [K, K]`.

    Update `W <- W + eta (I - mean_n sign(y_n) y_n^T) W` with `y_n = W x_n` (the natural gradient of the mean
    log-likelihood), until the step's norm is below `tolerance`.
    """
    x = np.asarray(x, np.float64)
    unmixing = np.linalg.inv(np.asarray(initial_mixing, np.float64))
    unmixing /= np.mean(np.abs(x @ unmixing.T), axis=0)[:, None]  # rows scaled to the fixed point mean |y_k| = 1
    identity = np.eye(x.shape[1])
    for _ in range(max_steps):
        y = x @ unmixing.T
        direction = (identity - np.sign(y).T @ y / len(x)) @ unmixing
        unmixing += learning_rate * direction
        if np.linalg.norm(direction) < tolerance:
            break
    return np.linalg.inv(unmixing)


def fast_ica(x, seed):
    """FastICA's mixing matrix, columns rescaled to Laplace(0, 1) sources (FastICA's have unit variance)."""
    estimator = FastICA(x.shape[1], whiten="unit-variance", max_iter=2000, tol=1e-6, random_state=seed)
    estimator.fit(x)
    return estimator.mixing_ / np.sqrt(LAPLACE_VARIANCE)


def train(method, x_train, seed, epochs, num_sleep=None, setting="fixed"):
    """Trains a fresh model by `method` ("joint", "conditional" or "vae"), amortised with the regression `setting`
    of `benchmarks._regressions`; returns `(model, curve, CPU s)`."""
    keras.utils.set_random_seed(seed)
    num_sources = x_train.shape[1]
    model = IndependentComponentsModel(num_sources, num_sources, seed=seed)
    if method == "vae":
        encoder = MeanFieldEncoder({"s": ("normal", num_sources)}, hidden_units=(64,), seed=seed)
        learner = VariationalLearner(model, encoder, seed=seed)
    else:
        ridge = regressions.regression(setting, (num_sources,), seed)
        learner = AmortisedLearner(model, num_sleep=num_sleep, form=method, regression=ridge,
                                   num_holdout=64 if ridge.learn else 0, seed=seed)
    learner.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE))
    truth = true_mixing(num_sources)
    recorder = EpochRecorder(lambda: amari_index(model.mixing.numpy(), truth))
    start = time.process_time()
    learner.fit(x_train, batch_size=BATCH_SIZE, epochs=epochs, callbacks=[recorder], verbose=0)
    return model, np.array(recorder.values), time.process_time() - start


def amortised_name(form, size, setting):
    """The table's name of an amortised learner (the fixed regression unnamed, as in the first tables)."""
    return f"amortised {form}, N={size}" + ("" if setting == "fixed" else f", {setting}")


def run_size(num_sources, seeds, sleep_sizes, epochs, settings=("fixed",)):
    """All methods on `len(seeds)` data sets of `K = num_sources`: `{method: {"amari", "noise", "log_lik",
    "cpu", "curve": lists over seeds}}` and the largest Monte Carlo standard error of a held-out score.
    `settings`: the amortised learners' regressions (`benchmarks._regressions`)."""
    truth = true_mixing(num_sources)
    methods = ["truth", "exact ML (noiseless)", "FastICA"] + [
        amortised_name(form, size, setting) for form in ("joint", "conditional") for size in sleep_sizes
        for setting in settings]
    results = {method: {key: [] for key in ("amari", "noise", "log_lik", "cpu", "curve")} for method in
               methods + ["VAE"]}
    largest_error = 0.

    def record(method, mixing, noise, cpu, curve=None):
        nonlocal largest_error
        log_lik, error = held_out_log_likelihood(mixing, noise, x_test)
        largest_error = max(largest_error, error)
        for key, value in (("amari", amari_index(mixing, truth)), ("noise", noise), ("log_lik", log_lik),
                           ("cpu", cpu), ("curve", curve)):
            results[method][key].append(value)

    for seed in seeds:
        x_train, x_test = simulate(num_sources, seed)
        record("truth", truth, TRUE_NOISE, np.nan)
        initial = IndependentComponentsModel(num_sources, num_sources, seed=seed).mixing.numpy()
        start = time.process_time()
        record("exact ML (noiseless)", noiseless_maximum_likelihood(x_train, initial), 0.,
               time.process_time() - start)
        start = time.process_time()
        record("FastICA", fast_ica(x_train, seed), 0., time.process_time() - start)
        for form in ("joint", "conditional"):
            for size in sleep_sizes:
                for setting in settings:
                    model, curve, cpu = train(form, x_train, seed, epochs, size, setting)
                    record(amortised_name(form, size, setting), model.mixing.numpy(), float(model.noise_scale), cpu,
                           curve)
        model, curve, cpu = train("vae", x_train, seed, epochs)
        record("VAE", model.mixing.numpy(), float(model.noise_scale), cpu, curve)
    return results, largest_error


def table_rows(num_sources, results):
    """Markdown rows `K, method, Amari index, noise, held-out log-likelihood, CPU s` (mean ± sd over seeds)."""
    def spread(values, digits):
        return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"

    rows = []
    for method, result in results.items():
        cpu = "" if method == "truth" else f"{np.mean(result['cpu']):.1f}"
        rows.append([num_sources, method, spread(result["amari"], 3), spread(result["noise"], 3),
                     spread(result["log_lik"], 3), cpu])
    return rows


def plot(all_results, path):
    """Amari index against epoch, one panel per `K`: every learner's seeds, the references' mean as lines."""
    figure, axes = plt.subplots(1, len(all_results), figsize=(5 * len(all_results), 3.8), squeeze=False)
    for axis, (num_sources, results) in zip(axes[0], all_results.items()):
        learners = [method for method, result in results.items() if result["curve"][0] is not None]
        for colour, method in enumerate(learners):
            for index, curve in enumerate(results[method]["curve"]):
                axis.plot(curve, color=f"C{colour}", alpha=0.7, label=method if index == 0 else None)
        for style, method in ((":", "exact ML (noiseless)"), ("--", "FastICA")):
            axis.axhline(np.mean(results[method]["amari"]), color="k", linestyle=style, label=f"{method} (mean)")
        axis.set(yscale="log", xlabel="epoch (20 steps)", ylabel="Amari index to the true mixing",
                 title=f"K = {num_sources} Laplace sources, one line per seed")
        axis.legend(fontsize=7)
    save_figure(figure, path)


def main():
    parser = benchmark_parser(__doc__, "K = 2 only, one seed, N = 200, 6 epochs")
    regressions.add_option(parser, default=("fixed",))
    parser.add_argument("--sleep-sizes", default=None, help="comma-separated N of the amortised learners (default "
                        "250,1000; quick 200)")
    args = parser.parse_args()
    sizes, seeds, sleep_sizes, epochs = ((2,), range(1), (200,), 6) if args.quick else \
        ((2, 4), range(3), (250, 1000), 20)
    if args.sleep_sizes:
        sleep_sizes = tuple(int(size) for size in args.sleep_sizes.split(","))
    start = time.time()
    all_results, largest_error, rows = {}, 0., []
    for num_sources in sizes:
        all_results[num_sources], error = run_size(num_sources, seeds, sleep_sizes, epochs, args.regressions)
        largest_error = max(largest_error, error)
        rows += table_rows(num_sources, all_results[num_sources])
    path = plot_path("ica", quick=args.quick)
    plot(all_results, path)
    print(machine_header())
    print(f"\nsquare noisy ICA, Laplace sources, noise 0.1; {NUM_TRAIN} training / {NUM_TEST} test points per seed; "
          f"{len(seeds)} seeds; learners: {epochs} epochs of {NUM_TRAIN // BATCH_SIZE} Adam({LEARNING_RATE}) steps "
          f"on minibatches of {BATCH_SIZE}. Mean ± sd over seeds. Held-out log p(x) per point: Monte Carlo "
          f"standard error <= {largest_error:.1e} (exact for noise 0)\n")
    print(markdown_table(["K", "method", "Amari index", "noise scale (truth 0.1)", "held-out log p(x) / point",
                          "CPU s / run"], rows))
    print(f"\nplot: {path}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
