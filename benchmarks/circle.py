"""Latent on the unit circle: Gabor patches of uniform orientation, learned by amortised learning.

Data: `gabor_patches` (10 x 10 odd-phase Gabor patches, orientation uniform on the circle, pixel noise 0.1).
`AmortisedLearner` (conditional form) trains `CircleModel` (uniform angle, MLP decoder of `(cos z, sin z)`,
learned noise scale). Scores: uniformity of the orientations of sampled mean images (Kuiper's test, on
orientations estimated by matched filtering), their mean squared error to the nearest true Gabor, the
reconstruction error of held-out patches by `E[decode(z) | x]` (sleep regression, no encoder) against the
noise-free patch, and the held-out log-likelihood per patch by quadrature on the circle. References: the
untrained model, and the true process (its exact posterior mean and log-likelihood, by quadrature). One row per
regression (`--regressions`, `benchmarks/_regressions.py`): fixed, learned (the learner's default) and a deep
kernel (learned on features of the patches), each from the same initial model.

    python -m benchmarks.circle [--quick] [--regressions fixed,learned,deep]
"""

import math
import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from benchmarks import _regressions
from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.circle import (CircleModel, circle_log_marginal, gabor, gabor_patches, kuiper_test,
                                         match_gabor)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

IMAGE_SIZE, NOISE_SCALE = 10, 0.1


def exact_reconstruction(x, num_points=1024):
    """`E[G(z) | x]` under the true process, by quadrature: `[M, S, S] -> [M, S, S]`."""
    angles = tf.linspace(-math.pi, math.pi, num_points + 1)[:-1]
    templates = gabor(angles, IMAGE_SIZE)
    log_weights = -tf.reduce_sum(tf.square(x[:, None] - templates[None]), axis=[-2, -1]) / (2. * NOISE_SCALE**2)
    return tf.einsum("mk,kij->mij", tf.nn.softmax(log_weights, axis=-1), templates)


def scores(learner, x_test, clean_test, num_samples, seed):
    """Uniformity, sample error, reconstruction error and held-out log-likelihood of a trained learner."""
    model = learner.generative_model
    angle, error = match_gabor(model.decode(learner.sample(num_samples, seed=[seed, 1])["z"]))
    statistic, p_value = kuiper_test(angle)
    reconstruction = learner.posterior_expectation(x_test, lambda sample: model.decode(sample["z"]),
                                                   seed=[seed, 2])
    return {"kuiper V": float(statistic), "p-value": float(p_value), "sample MSE": float(tf.reduce_mean(error)),
            "reconstruction MSE": float(tf.reduce_mean(tf.square(reconstruction - clean_test))),
            "log-likelihood": float(tf.reduce_mean(model.log_marginal(x_test))), "sigma": float(model.scale),
            "angles": angle.numpy(), "means": model.decode(tf.linspace(-math.pi, math.pi, 17)[:-1]).numpy()}


def plot(result, path):
    """Mean images at 16 angles of the latent, and the histogram of the orientations of sampled images."""
    figure = plt.figure(figsize=(10, 3.2))
    for i, image in enumerate(result["means"]):
        axis = figure.add_subplot(2, 16, i + 1)
        axis.imshow(image, cmap="gray", vmin=-1., vmax=1.)
        axis.set_axis_off()
        axis.set_title(f"{360 * i // 16 - 180}°", fontsize=6)
    axis = figure.add_subplot(2, 1, 2)
    axis.hist(np.degrees(result["angles"]), bins=36, range=(-180, 180), color="0.4")
    axis.axhline(len(result["angles"]) / 36, color="k", linestyle="--", label="uniform")
    axis.set_xlabel("orientation of sampled mean image (degrees, matched filter)")
    axis.set_ylabel("count")
    axis.legend(fontsize=7)
    figure.suptitle("CircleModel after amortised learning: decoded images at latent angles z (top)", fontsize=9)
    save_figure(figure, path)


def main():
    parser = benchmark_parser(__doc__, "1000 patches, N=500, 6 epochs")
    _regressions.add_option(parser)
    args = parser.parse_args()
    settings = args.regressions
    num_train, num_sleep, epochs, num_samples = (1000, 500, 6, 500) if args.quick else (2000, 1000, 15, 2000)
    start = time.time()
    keras.utils.set_random_seed(0)
    x, _ = gabor_patches(num_train, IMAGE_SIZE, seed=0, noise_scale=NOISE_SCALE)
    x_test, angle_test = gabor_patches(500, IMAGE_SIZE, seed=1, noise_scale=NOISE_SCALE)
    clean_test = gabor(angle_test, IMAGE_SIZE)
    columns = ["kuiper V", "p-value", "sample MSE", "reconstruction MSE", "log-likelihood", "sigma", "CPU s"]
    rows = []
    for setting in settings:
        learner = AmortisedLearner(CircleModel(IMAGE_SIZE, hidden_units=(64,), scale=0.1, seed=0),
                                   num_sleep=num_sleep, form="conditional",
                                   regression=_regressions.regression(setting, (IMAGE_SIZE, IMAGE_SIZE)), seed=0)
        learner.compile(optimizer=keras.optimizers.Adam(1e-2))
        if not rows:
            untrained = scores(learner, x_test, clean_test, num_samples, seed=2)
            rows.append(["untrained model", *[untrained.get(name, "") for name in columns]])
        cpu = time.process_time()
        learner.fit(x, batch_size=100, epochs=epochs, verbose=0)
        trained = {**scores(learner, x_test, clean_test, num_samples, seed=2), "CPU s": time.process_time() - cpu}
        rows.append([f"amortised learning, {setting} regression", *[trained[name] for name in columns]])
        path = plot_path(f"circle_{setting}" if len(settings) > 1 else "circle", quick=args.quick)
        plot(trained, path)
        print(f"{setting}: {[trained[name] for name in columns]}; plot {path}", flush=True)
    truth = {"kuiper V": float(kuiper_test(angle_test)[0]), "p-value": float(kuiper_test(angle_test)[1]),
             "sample MSE": 0., "sigma": NOISE_SCALE,
             "reconstruction MSE": float(tf.reduce_mean(tf.square(exact_reconstruction(x_test) - clean_test))),
             "log-likelihood": float(tf.reduce_mean(circle_log_marginal(
                 x_test, lambda z: gabor(z, IMAGE_SIZE), NOISE_SCALE)))}
    noisy = {"reconstruction MSE": float(tf.reduce_mean(tf.square(x_test - clean_test)))}
    rows.append(["true process (exact posterior)", *[truth.get(name, "") for name in columns]])
    rows.append(["noisy input (no reconstruction)", *[noisy.get(name, "") for name in columns]])
    print(machine_header())
    print(f"{num_train} training patches {IMAGE_SIZE}x{IMAGE_SIZE}, noise {NOISE_SCALE}; N={num_sleep}, {epochs} "
          f"epochs of minibatches of 100, Adam 1e-2; Kuiper's test on {num_samples} sampled orientations "
          f"(true process: on the 500 test orientations); 500 test patches; CPU s: process time of fit\n")
    print(markdown_table(["model", *columns], rows))
    print(f"\nwall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
