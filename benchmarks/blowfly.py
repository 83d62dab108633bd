"""Blowfly model: recover known parameters from simulated series, then fit Nicholson's series.

    python -m benchmarks.blowfly            # full run (see RESULTS.md for its wall time)
    python -m benchmarks.blowfly --quick    # a few minutes
    python -m benchmarks.blowfly --features # kernel on summary statistics (BlowflySummaries) of the log series
    python -m benchmarks.blowfly --defaults # the learner's defaults: "auto" form, learning regression

Prints two markdown tables (true vs learned parameters on simulated data, one column per seed; summary
statistics of the real series against simulations of the model learned from it) and writes
benchmarks/plots/blowfly.png (the real series against trajectories of the learned model).
"""

import time

import keras
import matplotlib
import numpy as np

from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.blowfly import MAX_DELAY, BlowflyModel, BlowflySummaries, load_blowfly
from tfp_amortised.ridge import KernelRidge

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TRUE_DELAY = 14
TRUTH = dict(growth=6.5, threshold=400., death=0.16, reproduction_scale=0.5, survival_scale=0.3,
             delay_logits=[3. if k == TRUE_DELAY - 1 else 0. for k in range(MAX_DELAY)])
SCALARS = ("growth", "threshold", "death", "reproduction_scale", "survival_scale")


def fit(series, num_sleep, steps, seed, features=False, defaults=False):
    """Fits a default-initialised `BlowflyModel` to log-count series `[M, 180]` (joint form, Adam 0.05, the fixed
    `KernelRidge()` of the tables); with `features`, the kernel acts on the standardised `BlowflySummaries` of
    the series; with `defaults`, the learner's defaults (the `"auto"` form, `KernelRidge(learn=True)`)."""
    model = BlowflyModel()
    if defaults:
        learner = AmortisedLearner(model, num_sleep=num_sleep, seed=seed)
    else:
        ridge = KernelRidge(features=BlowflySummaries(), standardise_features=True) if features else KernelRidge()
        learner = AmortisedLearner(model, num_sleep=num_sleep, form="joint", seed=seed, regression=ridge)
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    history = learner.fit(series, batch_size=series.shape[0], epochs=steps, verbose=0).history
    if "conditional_form" in history:  # the "auto" form's choice
        print(f"  seed {seed}: conditional form on {np.mean(history['conditional_form']):.0%} of the steps", flush=True)
    return model


def summary(model):
    """Learned scalars, the most probable delay and p(tau = 14)."""
    values = {name: float(value) for name, value in model.parameters().items() if name in SCALARS}
    probs = model.parameters()["delay_probs"].numpy()
    return {**values, "mode of tau": int(np.argmax(probs)) + 1, "p(tau = 14)": float(probs[TRUE_DELAY - 1])}


def series_statistics(log_counts):
    """Mean and sd of log counts, and the lag of the largest autocorrelation after lag 2, per series."""
    centred = log_counts - log_counts.mean(-1, keepdims=True)
    acf = np.stack([np.mean(centred[:, k:] * centred[:, :centred.shape[1] - k], -1) for k in range(40)], -1)
    return {"mean log count": log_counts.mean(-1), "sd log count": log_counts.std(-1),
            "cycle length (acf peak lag)": np.argmax(acf[:, 3:], -1) + 3.}


def main():
    parser = benchmark_parser(__doc__, "fewer sleep samples, steps and seeds")
    parser.add_argument("--features", action="store_true", help="kernel on summary statistics of the series")
    parser.add_argument("--defaults", action="store_true", help="the learner's defaults: \"auto\" form, "
                        "learning regression on the log counts")
    args = parser.parse_args()
    num_sleep, steps, seeds = (300, 60, (0,)) if args.quick else (1000, 300, (0, 1))
    start = time.time()
    truth = BlowflyModel(**TRUTH)

    simulated_fits = []
    for seed in seeds:
        series = truth.joint_distribution().sample(8, seed=[seed, 100]).log_counts
        simulated_fits.append(fit(series, num_sleep, steps, seed, args.features, args.defaults))
    true_values = summary(truth)
    rows = [[name, true_values[name]] + [summary(model)[name] for model in simulated_fits] for name in true_values]
    header = ["parameter", "true"] + [f"learned (seed {seed})" for seed in seeds]

    real = np.log(load_blowfly())[None].astype(np.float32)
    real_model = fit(real, num_sleep, steps, 0, args.features, args.defaults)
    learned_real = summary(real_model)
    simulations = real_model.joint_distribution().sample(200, seed=[9, 9]).log_counts.numpy()
    data_stats, model_stats = series_statistics(real), series_statistics(simulations)
    real_rows = [[name, value] for name, value in learned_real.items()]
    stats_rows = [[name, float(data_stats[name][0]), f"{model_stats[name].mean():.3g} ± {model_stats[name].std():.2g}"]
                  for name in data_stats]
    wall = time.time() - start

    print(machine_header())
    kernel_input = "29 standardised summary statistics" if args.features else "180 log counts"
    setting = "\"auto\" form, learning regression" if args.defaults else "joint form, fixed regression"
    print(f"\nN = {num_sleep} sleep series, {steps} Adam steps (lr 0.05), {setting}, Gaussian kernel on the "
          f"{kernel_input}; simulated data: 8 series per seed. Wall time {wall:.0f} s.\n")
    print(markdown_table(header, rows))
    print("\nLearned from Nicholson's series:\n")
    print(markdown_table(["parameter", "learned"], real_rows))
    print("\nNicholson's series against 200 simulations of the learned model (mean ± sd over simulations):\n")
    print(markdown_table(["statistic", "data", "learned model"], stats_rows))
    path = plot_path("blowfly" + ("_features" if args.features else "") + ("_defaults" if args.defaults else ""),
                     quick=args.quick)
    plot(real[0], simulations[:3], path)
    print(f"\nPlot: {path}")


def plot(real, simulations, path):
    """Nicholson's counts against three trajectories of the learned model."""
    figure, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True, sharey=True)
    axes[0].plot(np.exp(real), color="black")
    axes[0].set_title("Nicholson's blowflies (data)")
    for trajectory in simulations:
        axes[1].plot(np.exp(trajectory), alpha=0.8)
    axes[1].set_title("simulations of the model learned by amortised learning")
    axes[1].set_xlabel("time step")
    for axis in axes:
        axis.set_ylabel("adult flies")
    save_figure(figure, path)


if __name__ == "__main__":
    main()
