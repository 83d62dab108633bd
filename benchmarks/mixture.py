"""Five-component Gaussian mixture: amortised learning against exact maximum likelihood (EM).

Data: 2-D, five isotropic clusters on a circle of radius 3 (sigma 0.6, unequal weights). The reference is
exact maximum likelihood: EM (NumPy, `benchmarks._reference.gaussian_mixture_em`, best of 20 restarts). For
each seed, `AmortisedLearner` trains `GaussianMixtureModel(5, 2)` from five distinct training points chosen by
the seed as means, equal weights and scale 1, and so does `ExactGradientLearner` (exact-gradient ascent: the fair
oracle, from the same start with the same optimiser and batches), which shows where the exact gradient goes from
that start: EM's best of 20 restarts may be another optimum. Score: held-out log-likelihood per point, exact by
logsumexp.

    python -m benchmarks.mixture [--quick]
    python -m benchmarks.mixture --regressions fixed,learned    # the learner's default regression too
"""

import time

import keras
import matplotlib
import numpy as np

from benchmarks import _regressions as regressions
from benchmarks._reference import gaussian_mixture_em
from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised.baselines.exact import ExactGradientLearner
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.gaussian_mixture import GaussianMixtureModel

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NUM_COMPONENTS, DATA_DIM = 5, 2
FORMS = ("joint", "conditional")


def simulate(num_points, seed=0):
    """`float32[num_points, 2]` draws from the five-cluster mixture and the true model that drew them."""
    angles = 2. * np.pi * np.arange(NUM_COMPONENTS) / NUM_COMPONENTS
    truth = GaussianMixtureModel(NUM_COMPONENTS, DATA_DIM, scale=0.6)
    truth.means.assign(3. * np.stack([np.cos(angles), np.sin(angles)], axis=-1))
    truth.logits.assign(np.log([0.3, 0.25, 0.2, 0.15, 0.1]))
    return truth.joint_distribution().sample(num_points, seed=[seed, 0])[1].numpy(), truth


def initial_means(x, seed):
    """`[5, 2]`: five distinct rows of `x` chosen by `seed` (the learner's initial means)."""
    return x[np.random.default_rng(seed).choice(len(x), NUM_COMPONENTS, replace=False)]


def amortised(form, num_sleep, setting="fixed"):
    """A factory `(model, seed) -> AmortisedLearner` in `form` with `num_sleep` sleep samples and the regression
    `setting` of `benchmarks._regressions`."""
    return lambda model, seed: AmortisedLearner(model, num_sleep=num_sleep, form=form, seed=seed,
                                                regression=regressions.regression(setting, (DATA_DIM,), seed))


def learn(x_train, x_test, init_means, make_learner, *, epochs, seed, learning_rate=0.05, batch_size=100):
    """Trains `make_learner(model, seed)` (`amortised(...)`, or `ExactGradientLearner`: the fair oracle, from the
    same start, optimiser and batches) from the means `init_means`, keras.utils.set_random_seed(seed) first so
    that every learner of a seed sees the same batches; returns the held-out log-likelihood per point after each
    epoch, `[epochs]`."""
    keras.utils.set_random_seed(seed)
    model = GaussianMixtureModel(NUM_COMPONENTS, DATA_DIM, seed=seed)
    model.means.assign(init_means)
    learner = make_learner(model, seed)
    learner.compile(optimizer=keras.optimizers.Adam(learning_rate))
    curve = []
    for _ in range(epochs):
        learner.fit(x_train, batch_size=batch_size, epochs=1, verbose=0)
        curve.append(float(np.mean(model.log_marginal(x_test))))
    return np.array(curve)


def em_score(x_train, x_test, restarts=20):
    """Held-out log-likelihood per point of the maximum-likelihood fit by EM (best of `restarts`)."""
    (log_weights, means, scale), _ = gaussian_mixture_em(x_train, NUM_COMPONENTS, restarts=restarts)
    fitted = GaussianMixtureModel(NUM_COMPONENTS, DATA_DIM, scale=float(scale))
    fitted.logits.assign(log_weights)
    fitted.means.assign(means)
    return float(np.mean(fitted.log_marginal(x_test)))


def variant_name(form, setting):
    """An amortised learner's name in the table and plot: its form, and its regression unless the fixed one."""
    return form if setting == "fixed" else f"{form}, {setting}"


def plot(curves, em, truth_score, path):
    """Learning curves (held-out log-likelihood per epoch) of every seed and variant beside EM's value."""
    figure, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.5), sharey=True, squeeze=False)
    axes = axes[0]
    for axis, form in zip(axes, curves):
        for seed, curve in enumerate(curves[form]):
            axis.plot(np.arange(1, len(curve) + 1), curve, label=f"seed {seed}")
        axis.axhline(em, color="k", linestyle="-", label="EM (exact ML)")
        axis.axhline(truth_score, color="k", linestyle="--", label="true parameters")
        axis.set_title(f"amortised learning, {form} form", fontsize=9)
        axis.set_xlabel("epoch")
        axis.set_ylim(truth_score - 0.6, truth_score + 0.1)
    axes[0].set_ylabel("held-out log-likelihood per point")
    axes[-1].legend(fontsize=7)
    save_figure(figure, path)


def main():
    parser = benchmark_parser(__doc__, "two seeds, 8 epochs, N=300")
    regressions.add_option(parser, default=("fixed",))
    args = parser.parse_args()
    seeds, epochs, num_sleep = (range(2), 8, 300) if args.quick else (range(5), 25, 1000)
    start = time.time()
    x, truth = simulate(4000)
    x_train, x_test = x[:2000], x[2000:]
    truth_score = float(np.mean(truth.log_marginal(x_test)))
    em = em_score(x_train, x_test)
    variants = {"exact gradient": ExactGradientLearner,
                **{variant_name(form, setting): amortised(form, num_sleep, setting)
                   for setting in args.regressions for form in FORMS}}
    curves = {name: [learn(x_train, x_test, initial_means(x_train, seed), make_learner, epochs=epochs, seed=seed)
                     for seed in seeds] for name, make_learner in variants.items()}
    path = plot_path("mixture" if args.regressions == ("fixed",) else f"mixture_{'_'.join(args.regressions)}",
                     quick=args.quick)
    plot(curves, em, truth_score, path)
    final = {name: np.array([curve[-1] for curve in values]) for name, values in curves.items()}
    rows = [[seed, *[final[name][seed] for name in final], *[final[name][seed] - em for name in final]]
            for seed in seeds]
    rows.append(["mean", *[float(final[name].mean()) for name in final],
                 *[float(final[name].mean() - em) for name in final]])
    print(machine_header())
    print(f"held-out log-likelihood per point: EM (exact ML) {em:.4f}, true parameters {truth_score:.4f}; "
          f"amortised: N={num_sleep}, {epochs} epochs of 20 minibatches of 100\n")
    print(markdown_table(["seed", *[name if name == "exact gradient" else f"amortised {name}" for name in final],
                          *[f"{name} − EM" for name in final]], rows, "{:.4f}"))
    print(f"\nplot: {path}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
