"""Learning quality: amortised learning against VAE, IWAE and RWS on models with an exact log-likelihood.

Every method trains the same generative model from the same initial weights, on the same data, batches,
optimiser (Adam) and seeds, for the same compute budget; the table reads each learning curve twice: after
the same number of steps (`--steps`) and at the end of the budget (`--budget`). The clock is the
process CPU time (user + system, all threads): on a dedicated machine it is wall time times the cores used,
and unlike wall time it is not inflated by other jobs sharing the machine. It includes `tf.function` tracing.
The held-out exact log-likelihood per point is measured every `--eval-every` steps (evaluation time excluded
from the clock) and compared with the exact maximum-likelihood fit of the training data (EM, or gradient ascent on the
quadrature likelihood for the softplus model).

    python -m benchmarks.learning_quality            # full size
    python -m benchmarks.learning_quality --quick    # a few minutes

Models: factor analysis (6-d data, 2 latents), a mixture of 5 isotropic Gaussians in 2-d, and the softplus
model of the gradient experiment (Wenliang et al., ICML 2020) when `tfp_amortised.models.softplus` exists.
"""

import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from benchmarks import _reference
from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised.baselines import (ImportanceWeightedLearner, MeanFieldEncoder, ReweightedWakeSleepLearner,
                                     VariationalLearner)
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel, GaussianMixtureModel, SoftplusGaussianModel
from tfp_amortised.ridge import KernelRidge

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

THRESHOLD = 0.1  # nats per point: "within reach of the MLE"
METHODS = ("amortised", "vae", "iwae", "rws")


def make_learner(method, model, encoder, seed, num_sleep, num_samples):
    """One learner per method, on the same model object (the encoder is unused by amortised learning)."""
    if method == "amortised":
        return AmortisedLearner(model, num_sleep=num_sleep, form="conditional", regression=KernelRidge(),
                                num_holdout=0, seed=seed)
    if method == "vae":
        return VariationalLearner(model, encoder, num_samples=1, seed=seed)
    if method == "iwae":
        return ImportanceWeightedLearner(model, encoder, num_samples=num_samples, seed=seed)
    return ReweightedWakeSleepLearner(model, encoder, num_samples=num_samples, seed=seed)


class Problem:
    """A model family, its true parameters, data, initial weights per seed and the exact-MLE reference."""

    def __init__(self, name, build, latents, truth, initialise, mle, num_train, num_test):
        self.name, self.build, self.latents = name, build, latents
        self.truth = build()
        truth(self.truth)
        sample = self.truth.joint_distribution().sample(num_train + num_test, seed=[2020, 1])[1].numpy()
        self.train, self.test = sample[:num_train], sample[num_train:]
        self.initialise = initialise
        self.mle = build()
        mle(self.mle, self.train)
        self.mle_test = self.held_out(self.mle)
        self.truth_test = self.held_out(self.truth)

    def held_out(self, model):
        """Mean exact log-likelihood of the test set per point."""
        return float(tf.reduce_mean(model.log_marginal(self.test)))

    def initial_model(self, seed):
        model = self.build()
        self.initialise(model, np.random.default_rng(seed), self.train)
        return model


def factor_analysis_problem(num_train, num_test):
    def truth(model):
        rng = np.random.default_rng(7)
        model.loading.assign(rng.normal(size=(6, 2)).astype(np.float32))
        model.bias.assign(rng.normal(size=6).astype(np.float32))
        model.raw_noise.assign(_softplus_inverse(np.linspace(0.3, 1.0, 6)))

    def initialise(model, rng, _):
        model.loading.assign(rng.normal(size=(6, 2)).astype(np.float32))

    def mle(model, x):
        loading, mean, psi = _reference.factor_analysis_em(x, 2)
        model.loading.assign(loading.astype(np.float32))
        model.bias.assign(mean.astype(np.float32))
        model.raw_noise.assign(_softplus_inverse(np.sqrt(psi)))

    return Problem("factor_analysis", lambda: FactorAnalysisModel(2, 6), {"z": ("normal", 2)}, truth, initialise,
                   mle, num_train, num_test)


def gaussian_mixture_problem(num_train, num_test):
    def truth(model):
        angles = 2. * np.pi * np.arange(5) / 5
        model.means.assign((3. * np.stack([np.cos(angles), np.sin(angles)], 1)).astype(np.float32))
        model.logits.assign(np.log([0.1, 0.15, 0.2, 0.25, 0.3]).astype(np.float32))
        model.raw_scale.assign(_softplus_inverse(0.7))

    def initialise(model, rng, x):
        model.means.assign(x[rng.choice(len(x), 5, replace=False)])  # means at 5 random training points

    def mle(model, x):
        (log_weights, means, scale), _ = _reference.gaussian_mixture_em(x, 5)
        model.logits.assign(log_weights.astype(np.float32))
        model.means.assign(means.astype(np.float32))
        model.raw_scale.assign(_softplus_inverse(scale))

    return Problem("gaussian_mixture", lambda: GaussianMixtureModel(5, 2), {"z": ("categorical", 5)}, truth,
                   initialise, mle, num_train, num_test)


def softplus_problem(num_train, num_test):
    def truth(model):
        model.loading.assign([1.5, 1.0])
        model.raw_noise_scale.assign(_softplus_inverse(0.5))

    def initialise(model, rng, _):
        model.loading.assign(rng.normal(size=2).astype(np.float32))

    def mle(model, x):
        # No closed form: full-batch Adam on the exact (quadrature) log-likelihood, run to convergence.
        model.loading.assign([1.5, 1.0])
        optimiser = keras.optimizers.Adam(0.02)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = -tf.reduce_mean(model.log_marginal(x))
            optimiser.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

        for _ in range(400):  # two effective parameters (||b||, sigma_x), starting near the optimum
            step()

    return Problem("softplus", lambda: SoftplusGaussianModel(quadrature_degree=64), {"z": ("normal", 2)}, truth,
                   initialise, mle, num_train, num_test)


class Clock(keras.callbacks.Callback):
    """Records (steps, training CPU time, held-out exact log-likelihood) after every epoch; stops at the budget."""

    def __init__(self, problem, model, budget, steps_per_epoch):
        super().__init__()
        self.problem, self.model_under_test, self.budget = problem, model, budget
        self.steps_per_epoch = steps_per_epoch
        self.elapsed, self.curve = 0., [(0, 0., problem.held_out(model))]

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.elapsed += time.process_time() - self.start
        self.curve.append(((epoch + 1) * self.steps_per_epoch, self.elapsed,
                           self.problem.held_out(self.model_under_test)))
        if self.elapsed >= self.budget:
            self.model.stop_training = True


def run(problem, method, seed, args):
    """Trains one method from the seed's initial weights for the budget; returns `[evaluations, 3]` rows
    `(steps, CPU seconds, held-out log-likelihood)`."""
    keras.utils.set_random_seed(seed)
    model = problem.initial_model(seed)
    encoder = MeanFieldEncoder(problem.latents, hidden_units=(32,), seed=seed)
    learner = make_learner(method, model, encoder, seed, args.num_sleep, args.num_samples)
    learner.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    data = (tf.data.Dataset.from_tensor_slices(problem.train).shuffle(len(problem.train), seed=seed)
            .repeat().batch(args.batch_size, drop_remainder=True))
    clock = Clock(problem, model, args.budget, args.eval_every)
    learner.fit(data, steps_per_epoch=args.eval_every, epochs=10**6, callbacks=[clock], verbose=0)
    return np.array(clock.curve)


def summarise(problem, results, steps):
    """Markdown rows per method: held-out log-likelihood after `steps` steps and at the budget, gap to the MLE
    at the budget, CPU time to come within THRESHOLD of the MLE, steps done in the budget."""
    rows = [["exact MLE (EM / quadrature)", "", f"{problem.mle_test:.3f}", "0", "", ""],
            ["true parameters", "", f"{problem.truth_test:.3f}", f"{problem.mle_test - problem.truth_test:.3f}",
             "", ""]]
    for method in METHODS:
        curves = results[method]
        at_steps = [curve[curve[:, 0] <= steps][-1] for curve in curves]
        at_steps_text = _mean_spread([row[2] for row in at_steps])
        if min(row[0] for row in at_steps) < steps:
            at_steps_text += f" (stopped at {min(row[0] for row in at_steps):.0f})"
        final = np.array([curve[-1, 2] for curve in curves])
        reach = [_first_time(curve, problem.mle_test - THRESHOLD) for curve in curves]
        reached = [t for t in reach if t is not None]
        reach_text = (f"{np.median(reached):.1f} ({len(reached)}/{len(curves)})" if reached
                      else f"never (0/{len(curves)})")
        rows.append([method, at_steps_text, _mean_spread(final), _mean_spread(problem.mle_test - final), reach_text,
                     f"{np.mean([curve[-1, 0] for curve in curves]):.0f}"])
    header = ["method", f"log p(x) / point after {steps} steps", "log p(x) / point at budget",
              "gap to MLE at budget (nats)", f"CPU s to within {THRESHOLD} nats (median; seeds reached)",
              "steps in budget"]
    return markdown_table(header, rows)


def plot(problem, results, quick=False):
    figure, axis = plt.subplots(figsize=(6, 4))
    for colour, method in zip(("C0", "C1", "C2", "C3"), METHODS):
        for index, curve in enumerate(results[method]):
            axis.plot(curve[:, 1], curve[:, 2], color=colour, alpha=0.7, label=method if index == 0 else None)
    axis.axhline(problem.mle_test, color="k", linestyle="--", label="exact MLE")
    axis.axhline(problem.mle_test - THRESHOLD, color="k", linestyle=":", linewidth=0.8,
                 label=f"MLE - {THRESHOLD}")
    lowest = min(curve[:, 2].min() for curves in results.values() for curve in curves)
    axis.set_ylim(max(lowest, problem.mle_test - 3.) - 0.1, problem.mle_test + 0.2)
    axis.set(xlabel="training CPU time (s)", ylabel="held-out exact log p(x) per point",
             title=f"{problem.name}: one line per seed")
    axis.legend(loc="lower right", fontsize=8)
    path = plot_path(f"learning_quality_{problem.name}", quick=quick)
    save_figure(figure, path)
    return path


def main():
    parser = benchmark_parser(__doc__, "small data, few steps and one seed")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="the equal-steps read-out of the curves")
    parser.add_argument("--budget", type=float, default=None, help="CPU seconds per run")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=2e-2)
    parser.add_argument("--num-sleep", type=int, default=500, help="amortised learning's sleep samples")
    parser.add_argument("--num-samples", type=int, default=10, help="IWAE and RWS importance samples K")
    parser.add_argument("--models", default="factor_analysis,gaussian_mixture,softplus")
    args = parser.parse_args()
    defaults = dict(seeds=1, steps=100, budget=5., eval_every=25) if args.quick else \
        dict(seeds=3, steps=300, budget=10., eval_every=50)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    num_train, num_test = (500, 500) if args.quick else (2000, 1000)
    factories = {"factor_analysis": factor_analysis_problem, "gaussian_mixture": gaussian_mixture_problem,
                 "softplus": softplus_problem}
    names = [name for name in args.models.split(",") if name in factories]
    start = time.perf_counter()
    print(machine_header())
    print(f"\nsettings: {vars(args)}; train/test points {num_train}/{num_test}; Adam; amortised: conditional form, "
          f"N={args.num_sleep}; VAE K=1; IWAE and RWS K={args.num_samples}; encoder MLP(32, tanh), mean field")
    print("\nEvery method runs every model here: VAE and IWAE train the mixture's discrete z by the score function "
          "(moving-average baseline); RWS and amortised learning never differentiate through a sample.")
    for name in names:
        problem = factories[name](num_train, num_test)
        results = {method: [run(problem, method, seed, args) for seed in range(args.seeds)] for method in METHODS}
        path = plot(problem, results, args.quick)
        print(f"\n### {name}\n\n{summarise(problem, results, args.steps)}\n\nplot: {path}")
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s, CPU time {time.process_time():.0f} s")


def _first_time(curve, level):
    above = np.nonzero(curve[:, 2] >= level)[0]
    return float(curve[above[0], 1]) if len(above) else None


def _mean_spread(values):
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def _softplus_inverse(value):
    return np.log(np.expm1(np.asarray(value, np.float64))).astype(np.float32)


if __name__ == "__main__":
    main()
