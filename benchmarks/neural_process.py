"""Neural-process-like function model on sine data: prediction error at target points vs number of context points.

Data: `sine_functions` (`a sin(t - s) + 0.1 eps` on a grid of 16 points on [-pi, pi], `a ~ U(-0.5, 1)`,
`s ~ U(-0.5, 0.5)`). One `NeuralProcessModel` (2-d Gaussian latent, MLP decoder of `[z, t]`, learned noise)
is trained by `AmortisedLearner` (conditional form) and another, identical at initialisation, by the VAE
(`VariationalLearner`, `MeanFieldEncoder` on the whole 16-vector), for the same number of steps. Given `C`
context entries of a held-out function, each predicts the noise-free function at 64 target points on
[-pi, pi] (mostly off the grid); the score is the mean squared error to the true `a sin(t - s)`.

Predictors:
  - amortised, ridge: `predict_from_context` (kernel ridge regression on the context entries of sleep samples;
    no encoder);
  - amortised, importance: the amortised model's posterior mean by self-normalised importance sampling
    from the prior (`importance_predict`; separates the quality of the trained model from that of the
    ridge prediction);
  - VAE, importance: the VAE-trained decoder with the same importance sampler (its encoder takes the whole
    16-vector and cannot condition on a subset, so the fair use of the VAE's model is its exact posterior
    mean, here approximated by importance sampling);
  - Bayes-optimal: `sine_posterior_mean` under the true prior and noise (quadrature);
  - prior mean `E[a] E[cos s] sin t` and the constant 0;
  - with `--learned`, amortised learned, importance: a third model, identical at initialisation, trained with the
    learner's defaults (`AmortisedLearner(model)`: "auto" form, learning regression), scored as the
    amortised one.

    python -m benchmarks.neural_process [--quick] [--learned]
"""

import math
import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised import sleep
from tfp_amortised.baselines import MeanFieldEncoder, VariationalLearner
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.ridge import KernelRidge
from tfp_amortised.models.neural_process import (NeuralProcessModel, predict_from_context, sine, sine_functions,
                                                  sine_posterior_mean)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

tfd = tfp.distributions

NUM_INPUTS, NOISE, LATENT_DIM, HIDDEN_UNITS = 16, 0.1, 2, (32, 32)
CONTEXT_SIZES = (1, 2, 4, 8)
METHODS = ("amortised, ridge", "amortised, importance", "VAE, importance", "Bayes-optimal", "prior mean", "zero")


def importance_predict(model, context_index, context_values, at, num_samples, seed):
    """`E[g(z, at) | x_context]` by self-normalised importance sampling from the prior: `[M, C] -> [M, T]`."""
    z = sleep(model.joint_distribution(), num_samples, seed)["z"]  # [S, latent_dim]
    context_means = tf.gather(model.decode(z), context_index, axis=-1)  # [S, C]
    log_weights = tf.reduce_sum(tfd.Normal(context_means, model.scale).log_prob(context_values[:, None, :]), -1)
    return tf.matmul(tf.nn.softmax(log_weights, axis=-1), model.decode(z, at))  # [M, S] @ [S, T]


def sample_diagnostics(functions, at):
    """Sine fit of sampled functions `[S, T]`: fraction with a negative `sin t` coefficient, its sd, non-sine RMS.

    Each row is fitted by least squares with `b1 sin t + b2 cos t + b0`; for `a sin(t - s)`, `b1 = a cos s`.
    """
    basis = tf.stack([tf.sin(at), tf.cos(at), tf.ones_like(at)], axis=1)  # [T, 3]
    coefficients = tf.linalg.lstsq(basis, tf.transpose(functions))  # [3, S]
    residual = tf.matmul(basis, coefficients) - tf.transpose(functions)
    return {"P(b1 < 0)": float(tf.reduce_mean(tf.cast(coefficients[0] < 0., tf.float32))),
            "sd(b1)": float(tf.math.reduce_std(coefficients[0])),
            "non-sine RMS": float(tf.sqrt(tf.reduce_mean(tf.square(residual))))}


def train(learner, y, epochs, learning_rate):
    """Fits `learner` (minibatches of 100, Adam); returns the CPU seconds it took."""
    learner.compile(optimizer=keras.optimizers.Adam(learning_rate))
    start = time.process_time()
    learner.fit(y, batch_size=100, epochs=epochs, verbose=0)
    return time.process_time() - start


def run_seed(seed, inputs, at, config, learned=False):
    """Trains the models on one data set (with `learned`, also one with the learner's default regression);
    returns `{(method, C): mse}`, CPU seconds, sample diagnostics per model and an example."""
    y, _, _ = sine_functions(config["num_train"], inputs, seed=seed, noise=NOISE)
    y_test, amplitude, shift = sine_functions(config["num_test"], inputs, seed=1000 + seed, noise=NOISE)
    truth = sine(amplitude, shift, at)
    models = {name: NeuralProcessModel(inputs, LATENT_DIM, HIDDEN_UNITS, scale=0.2, seed=seed)
              for name in ("amortised", "VAE") + (("amortised learned",) if learned else ())}
    cpu = {
        "amortised": train(AmortisedLearner(models["amortised"], num_sleep=config["num_sleep"], form="conditional",
                                            regression=KernelRidge(), seed=seed),
                           y, config["epochs"], config["learning_rate"]),
        "VAE": train(VariationalLearner(models["VAE"], MeanFieldEncoder({"z": ("normal", LATENT_DIM)}, (32,),
                                                                        seed=seed), seed=seed),
                     y, config["epochs"], config["learning_rate"]),
    }
    if learned:
        cpu["amortised learned"] = train(AmortisedLearner(models["amortised learned"], num_sleep=config["num_sleep"],
                                                          seed=seed), y, config["epochs"], config["learning_rate"])
    rng = np.random.default_rng(seed)
    errors, example = {}, None
    for size in CONTEXT_SIZES:
        index = np.sort(rng.choice(NUM_INPUTS, size, replace=False))
        values = tf.gather(y_test, index, axis=1)
        start = time.process_time()
        predictions = {"amortised, ridge": predict_from_context(models["amortised"], index, values, at,
                                                   num_sleep=config["predict_sleep"], seed=[seed, size],
                                                   regression=KernelRidge(solver="cholesky"))}
        cpu.setdefault("ridge prediction", 0.)
        cpu["ridge prediction"] += time.process_time() - start
        for name in models:
            predictions[f"{name}, importance"] = importance_predict(
                models[name], index, values, at, config["importance_samples"], seed=[seed, 100 + size])
        predictions["Bayes-optimal"] = sine_posterior_mean(index, values, at, NOISE, inputs=inputs)
        predictions["prior mean"] = tf.broadcast_to(
            sine_posterior_mean([], tf.zeros([1, 0]), at, NOISE, inputs=inputs), truth.shape)
        predictions["zero"] = tf.zeros_like(truth)
        for method in methods(learned):
            errors[method, size] = float(tf.reduce_mean(tf.square(predictions[method] - truth)))
        if size == 4:
            example = {"index": index, "values": values[0].numpy(), "truth": truth[0].numpy(),
                       **{method: predictions[method][0].numpy() for method in methods(learned)[:4]}}
    z = tf.random.stateless_normal([config["num_samples"], LATENT_DIM], [seed, 7])
    samples = {name: sample_diagnostics(model.decode(z, at), at) for name, model in models.items()}
    for name, model in models.items():
        samples[name]["sigma"] = float(model.scale)
    return errors, cpu, samples, example


def methods(learned):
    """The predictors scored: `METHODS`, and the learned model's importance prediction with `--learned`."""
    return METHODS + (("amortised learned, importance",) if learned else ())


def plot(errors, example, inputs, at, path, learned=False):
    """MSE against the number of context points (mean and range over seeds), and one example with 4 points."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in METHODS[:5] + methods(learned)[len(METHODS):]:
        values = np.array([[run[method, size] for size in CONTEXT_SIZES] for run in errors])
        mean = values.mean(0)
        left.errorbar(CONTEXT_SIZES, mean, yerr=[mean - values.min(0), values.max(0) - mean], marker="o", capsize=3,
                      label=method)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xticks(CONTEXT_SIZES, [str(size) for size in CONTEXT_SIZES])
    left.set_xlabel("context points C")
    left.set_ylabel("target MSE to the noise-free function")
    left.legend(fontsize=7)
    right.plot(at, example["truth"], "k-", label="truth")
    for method, style in zip(METHODS[:4], ("C0-", "C1--", "C2:", "C3-.")):
        right.plot(at, example[method], style, label=method)
    right.plot(np.asarray(inputs)[example["index"]], example["values"], "ko", label="context")
    right.set_xlabel("t")
    right.legend(fontsize=7)
    right.set_title("one held-out function, C = 4 (first seed)", fontsize=9)
    save_figure(figure, path)


def main():
    parser = benchmark_parser(__doc__, "1 seed, 1000 functions, 10 epochs")
    parser.add_argument("--learned", action="store_true", help="also train a model with the learner's defaults "
                        "(\"auto\" form, learning regression)")
    args = parser.parse_args()
    config = {"num_train": 2000, "num_test": 500, "epochs": 50, "num_sleep": 500, "predict_sleep": 2000,
              "importance_samples": 5000, "num_samples": 4000, "learning_rate": 3e-3, "seeds": (0, 1, 2)}
    if args.quick:
        config.update(num_train=1000, num_test=200, epochs=10, num_samples=1000, seeds=(0,))
    start = time.time()
    keras.utils.set_random_seed(0)
    inputs = tf.linspace(-math.pi, math.pi, NUM_INPUTS)
    at = tf.linspace(-math.pi, math.pi, 64)
    results = [run_seed(seed, inputs, at, config, args.learned) for seed in config["seeds"]]
    errors = [result[0] for result in results]
    path = plot_path("neural_process" + ("_learned" if args.learned else ""), quick=args.quick)
    plot(errors, results[0][3], inputs, at, path, args.learned)

    def cell(method, size):
        values = np.array([run[method, size] for run in errors])
        return f"{values.mean():.4f} ± {values.std():.4f}"

    rows = [[method, *[cell(method, size) for size in CONTEXT_SIZES]] for method in methods(args.learned)]
    cpu = {name: np.mean([result[1][name] for result in results]) for name in results[0][1]}
    amplitude = tf.random.stateless_uniform([config["num_samples"]], [0, 8], -0.5, 1.)
    shift = tf.random.stateless_uniform([config["num_samples"]], [0, 9], -0.5, 0.5)
    truth = {**sample_diagnostics(sine(amplitude, shift, at), at), "sigma": NOISE}
    diagnostics = list(truth)
    sample_rows = [["true sine prior", *[truth[name] for name in diagnostics]]]
    for name in results[0][2]:
        cells = [np.array([result[2][name][diagnostic] for result in results]) for diagnostic in diagnostics]
        sample_rows.append([name, *[f"{values.mean():.3f} ± {values.std():.3f}" for values in cells]])
    print(machine_header())
    print(f"{config['num_train']} training functions on {NUM_INPUTS} grid points, noise {NOISE}; "
          f"{config['epochs']} epochs of minibatches of 100 (Adam {config['learning_rate']}) for both learners; "
          f"amortised: N = {config['num_sleep']}, conditional form; prediction: N = {config['predict_sleep']} sleep "
          f"samples (ridge), {config['importance_samples']} prior samples (importance); {config['num_test']} test "
          f"functions, 64 target points; mean ± sd over seeds {list(config['seeds'])}\n")
    print(markdown_table(["method", *[f"C = {size}" for size in CONTEXT_SIZES]], rows))
    print("\nCPU s per seed: " + ", ".join(f"{name} {value:.1f}" for name, value in cpu.items()) + "\n")
    print(f"Functions sampled from each trained model ({config['num_samples']} prior draws of z), fitted by "
          f"b1 sin t + b2 cos t + b0 (for the truth b1 = a cos s), and the learned noise scale:\n")
    print(markdown_table(["model", *diagnostics], sample_rows, float_format="{:.3f}"))
    print(f"\nplot: {path}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
