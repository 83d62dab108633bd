"""Binary factor model: reconstruction and denoising of binary "bars" images with no encoder.

Data: 5 x 5 `bars` images (each of the 10 rows and columns on with probability 0.2), with 10% of the pixels
flipped in the training set, so that the model learns the bars and the noise. `AmortisedLearner`
(conditional form) trains `BinaryFactorModel(10, 25)`. Reconstruction and denoising need no encoder:
`E[p(x | z) | x]` (or `decode(E[z | x])`) by the sleep regression (`posterior_expectation`), thresholded
at 1/2. Scores: pixel error rate against the clean test images, for clean inputs (reconstruction) and
inputs with 5%, 10% and 20% of pixels flipped (denoising). Baseline: a VAE (`VariationalLearner`) on the
same generative model with a logit-normal mean-field encoder, its denoiser `E_q[p(x | z)]` (64 samples).
Amortised learning runs once per regression (`--regressions`, `benchmarks/_regressions.py`); a learning
regression's model also denoises with a fixed `KernelRidge()` (`posterior_expectation(..., regression=...)`).

    python -m benchmarks.binary_factor [--quick] [--regressions fixed,learned,deep]
"""

import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from benchmarks import _regressions
from benchmarks._report import benchmark_parser, machine_header, markdown_table, plot_path, save_figure
from tfp_amortised.baselines import MeanFieldEncoder, VariationalLearner
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.binary_factor import BinaryFactorModel, bars, flip_pixels
from tfp_amortised.ridge import KernelRidge

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

tfd, tfb = tfp.distributions, tfp.bijectors
IMAGE_SIZE, NUM_FACTORS, TRAIN_FLIP = 5, 10, 0.1
TEST_FLIPS = (0.05, 0.1, 0.2)


class LogitNormalEncoder(MeanFieldEncoder):
    """`MeanFieldEncoder` whose Gaussian heads are squashed into `(0, 1)`: `q(z | x)` logit-normal per factor."""

    @staticmethod
    def _node(kind, size, output, name):
        loc, raw_scale = output[..., :size], output[..., size:]
        normal = tfd.Normal(loc, tf.nn.softplus(raw_scale) + 1e-4)
        squash = tfb.Sigmoid(low=1e-6, high=1. - 1e-6)  # keeps z inside the support of U(0, 1) in float32
        return tfd.Independent(tfd.TransformedDistribution(normal, squash), 1, name=name)


def error_rate(probabilities, clean):
    """Fraction of pixels where `probabilities > 1/2` disagrees with the clean image."""
    return float(tf.reduce_mean(tf.cast((probabilities > 0.5) != (clean > 0.5), tf.float32)))


def amortised_denoisers(learner, label, regression=None):
    """Two encoder-free denoisers, `E[p(x | z) | x]` and `p(x | E[z | x])`, each `[M, D] -> [M, D]`, by
    `regression` (default: the learner's own), named after `label`."""
    model = learner.generative_model
    return {
        f"{label}: posterior mean of p(x given z)": lambda x: learner.posterior_expectation(
            x, lambda s: model.pixel_probabilities(s["z"]), seed=[5, 6], regression=regression),
        f"{label}: p(x given posterior mean of z)": lambda x: model.pixel_probabilities(
            learner.posterior_expectation(x, lambda s: s["z"], seed=[5, 6], regression=regression)),
    }


def vae_denoiser(vae, num_samples=64):
    """`E_q[p(x | z)]` with `z ~ q(z | x)`, the VAE's encoder: `[M, D] -> [M, D]`."""
    def denoise(x):
        z = vae.encoder(x).sample(num_samples, seed=[7, 8])["z"]  # [K, M, F]
        return tf.reduce_mean(vae.generative_model.pixel_probabilities(z), axis=0)
    return denoise


def plot(clean, noisy, denoised, loading, path):
    """Rows: clean, 10%-flipped and denoised test images; then the learned loadings `W[:, k]` as images."""
    shape = (IMAGE_SIZE, IMAGE_SIZE)
    figure, axes = plt.subplots(4, 10, figsize=(8, 3.6))
    rows = [("clean", clean), ("flipped 10%", noisy), ("denoised", denoised), ("loadings W[:, k]", loading.T)]
    for row, (title, images) in zip(axes, rows):
        for axis, image in zip(row, images[:10]):
            if title == "loadings W[:, k]":
                axis.imshow(np.reshape(image, shape), cmap="RdBu_r")
            else:
                axis.imshow(np.reshape(image, shape), cmap="gray", vmin=0., vmax=1.)
            axis.set_xticks([])
            axis.set_yticks([])
        row[0].set_ylabel(title, fontsize=7)
    figure.suptitle("BinaryFactorModel after amortised learning: denoised = E[p(x=1|z) | x] (grey scale 0-1), "
                    "no encoder", fontsize=9)
    save_figure(figure, path)


def main():
    parser = benchmark_parser(__doc__, "N=500, 4 epochs")
    _regressions.add_option(parser)
    args = parser.parse_args()
    num_sleep, epochs = (500, 4) if args.quick else (1000, 15)
    start = time.time()
    keras.utils.set_random_seed(0)
    clean, _ = bars(2000, IMAGE_SIZE, seed=0)
    x = flip_pixels(clean, TRAIN_FLIP, seed=1)
    test, _ = bars(500, IMAGE_SIZE, seed=2)
    noisy = {rate: flip_pixels(test, rate, seed=3) for rate in TEST_FLIPS}
    data_dim = IMAGE_SIZE * IMAGE_SIZE

    denoisers, learners = {"noisy input (no denoising)": lambda x: x}, []
    for setting in args.regressions:
        learner = AmortisedLearner(BinaryFactorModel(NUM_FACTORS, data_dim, seed=0), num_sleep=num_sleep,
                                   form="conditional", regression=_regressions.regression(setting, (data_dim,)),
                                   seed=0)
        learner.compile(optimizer=keras.optimizers.Adam(3e-2))
        learner.fit(x, batch_size=100, epochs=epochs, verbose=0)
        learners.append(learner)
        denoisers.update(amortised_denoisers(learner, f"amortised, {setting} regression"))
        if learner.regression.learn:
            denoisers.update(amortised_denoisers(learner, f"amortised, {setting} regression, predicted by the fixed "
                                                 "one", KernelRidge()))
    amortised_time = time.time() - start
    vae = VariationalLearner(BinaryFactorModel(NUM_FACTORS, data_dim, seed=0),
                             LogitNormalEncoder({"z": ("normal", NUM_FACTORS)}, hidden_units=(64,), seed=0), seed=0)
    vae.compile(optimizer=keras.optimizers.Adam(3e-2))
    vae.fit(x, batch_size=100, epochs=epochs, verbose=0)

    denoisers["VAE: mean of p(x given z) under q(z given x)"] = vae_denoiser(vae)
    rows = [[name, error_rate(denoise(test), test), *[error_rate(denoise(noisy[rate]), test) for rate in TEST_FLIPS]]
            for name, denoise in denoisers.items()]
    path = plot_path("binary_factor", quick=args.quick)
    first = next(name for name in denoisers if name.startswith("amortised"))  # the first setting's E[p(x | z) | x]
    plot(test.numpy(), noisy[0.1].numpy(), denoisers[first](noisy[0.1]).numpy(),
         learners[0].generative_model.loading.numpy(), path)
    print(machine_header())
    print(f"5x5 bars, 2000 training images with {TRAIN_FLIP:.0%} flipped pixels; BinaryFactorModel(10, 25); "
          f"amortised: N={num_sleep}, conditional form; both methods {epochs} epochs of minibatches of 100, "
          f"Adam 3e-2; pixel error rate against 500 clean test images (12,500 pixels, standard error <= 0.004)\n")
    header = ["method", "reconstruction (clean input)", *[f"denoising, {r:.0%} flipped" for r in TEST_FLIPS]]
    print(markdown_table(header, rows, "{:.4f}"))
    print(f"\nplot: {path}; wall time {time.time() - start:.0f} s (amortised training and scoring "
          f"{amortised_time:.0f} s)")


if __name__ == "__main__":
    main()
