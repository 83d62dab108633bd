"""Image generation on 8 x 8 digits: amortised learning against a VAE with the same decoder.

Data: scikit-learn's 1797 digits (`load_digits`), the first 1297 for training, the last 500 held out.
Model: `ImageDecoderModel` (z ~ N(0, I_8), MLP decoder 64-128 relu units with sigmoid output, learned pixel
noise). Methods, with the same decoder, initial weights, minibatches of 100, Adam 3e-3 and number of epochs:
`AmortisedLearner` (conditional form) and `VariationalLearner` (VAE, `MeanFieldEncoder` with 128-64 tanh
units); also the VAE with 5 times the epochs (still about a third of amortised learning's CPU time).
Score: Fréchet distance of 2000 model samples to the 500 test digits, for the mean images `f_w(z)` and for
the noisy samples `x`, in two feature spaces: (a) the 16 leading principal components of the training
digits, (b) the 32-unit penultimate layer of a small Keras classifier trained here on the training labels; and the
test digits' log-likelihood, importance-sampled (`ImageDecoderModel.estimate_log_marginal`).
References: the training digits themselves (the floor set by finite test samples) and the untrained model.
Amortised learning runs once per regression (`--regressions`, `benchmarks/_regressions.py`): by default fixed,
learned (the learner's default) and a deep kernel (learned on features of the images); `learned-w1` (learned on the
held-out mean squared error) on request.

    python -m benchmarks.image_generation [--quick] [--regressions fixed,learned,deep]
"""

import argparse
import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from benchmarks import _regressions
from benchmarks._report import machine_header, markdown_table, plot_path
from tfp_amortised.baselines import MeanFieldEncoder, VariationalLearner
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.image_decoder import ImageDecoderModel, frechet_distance, load_digits, pca_features

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NUM_TRAIN, LATENT_DIM, NUM_COMPONENTS, NUM_SAMPLES = 1297, 8, 16, 2000
COLUMNS = ["PCA, means", "PCA, samples", "classifier, means", "classifier, samples"]


def train_classifier(images, labels, test_images, test_labels, epochs):
    """A 128-32-10 relu classifier; returns its penultimate-layer feature map and its test accuracy."""
    classifier = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(),
                                   keras.layers.Dense(128, activation="relu"),
                                   keras.layers.Dense(32, activation="relu", name="penultimate"),
                                   keras.layers.Dense(10)])
    classifier.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classifier.fit(images, labels, batch_size=64, epochs=epochs, verbose=0)
    accuracy = classifier.evaluate(test_images, test_labels, verbose=0, return_dict=True)["accuracy"]
    features = keras.Model(classifier.inputs, classifier.get_layer("penultimate").output)
    return (lambda x: features(tf.convert_to_tensor(x, tf.float32))), accuracy


def make_learner(method, seed, num_sleep, regression=None):
    """`method`: "vae", or "amortised-<regression setting>" (with `regression`, a `KernelRidge` instead of the
    setting's)."""
    model = ImageDecoderModel((8, 8), latent_dim=LATENT_DIM, hidden_units=(64, 128), scale=0.3, seed=seed)
    if method.startswith("amortised"):
        if regression is None:
            regression = _regressions.regression(method.split("-", 1)[1], (8, 8), seed)
        learner = AmortisedLearner(model, num_sleep=num_sleep, form="conditional", regression=regression, seed=seed)
    else:
        encoder = MeanFieldEncoder({"z": ("normal", LATENT_DIM)}, hidden_units=(128, 64), seed=seed)
        learner = VariationalLearner(model, encoder, seed=seed)
    learner.compile(optimizer=keras.optimizers.Adam(3e-3))
    return learner, model


def scores(model, test, feature_maps, seed):
    """Fréchet distances of mean images and noisy samples to the test digits in each feature space."""
    z, x = model.joint_distribution().sample(NUM_SAMPLES, seed=[seed, 99])
    means = model.decode(z)
    result = {}
    for space, features in feature_maps.items():
        reference = features(test)
        result[f"{space}, means"] = float(frechet_distance(features(means), reference))
        result[f"{space}, samples"] = float(frechet_distance(features(x), reference))
    return result, means.numpy()


def test_log_likelihood(model, test):
    """Mean over the test digits of the importance-sampled `log p(x)` (`estimate_log_marginal`, 2000 samples)."""
    return float(tf.reduce_mean(model.estimate_log_marginal(test, 2000, seed=[0, 1])))


def summary(runs, name):
    """`mean ± sd` over seeds of `runs[i][name]`."""
    values = np.array([run[name] for run in runs])
    return f"{values.mean():.3g} ± {values.std(ddof=1):.2g}" if len(values) > 1 else f"{values[0]:.3g}"


def plot(grids, path):
    """10 x 10 grids of test digits and of mean images of each method, side by side."""
    figure, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.5))
    for axis, (title, images) in zip(axes, grids.items()):
        padded = np.pad(images[:100], ((0, 0), (1, 1), (1, 1)))  # a blank pixel between tiles
        tiles = padded.reshape(10, 10, 10, 10).transpose(0, 2, 1, 3).reshape(100, 100)
        axis.imshow(tiles, cmap="gray_r", vmin=0., vmax=1.)
        axis.set_title(title, fontsize=9)
        axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, N=500, 10 epochs")
    _regressions.add_option(parser)
    parser.add_argument("--no-vae", action="store_true", help="amortised learning only")
    args = parser.parse_args()
    seeds, num_sleep, epochs = ([0], 500, 10) if args.quick else ([0, 1, 2], 1000, 50)
    start = time.time()
    keras.utils.set_random_seed(0)
    images, labels = load_digits()
    train, test = images[:NUM_TRAIN], images[NUM_TRAIN:]
    classifier_features, accuracy = train_classifier(train, labels[:NUM_TRAIN], test, labels[NUM_TRAIN:],
                                                     epochs=100)
    feature_maps = {"PCA": lambda x: pca_features(x, train, NUM_COMPONENTS), "classifier": classifier_features}
    floor = {}
    for space, features in feature_maps.items():
        floor[f"{space}, means"] = floor[f"{space}, samples"] = float(frechet_distance(features(train),
                                                                                       features(test)))
    methods = {f"amortised learning (conditional, {setting} regression)": (f"amortised-{setting}", 1,
                                                                           f"amortised, {setting}")
               for setting in args.regressions}  # name: (method, epoch multiple, plot title)
    if not args.no_vae:
        methods.update({"VAE (mean-field encoder)": ("vae", 1, "VAE"), "VAE, 5x epochs": ("vae", 5, None)})
    runs = {name: [] for name in ["untrained model", *methods]}
    grids = {"test digits": test}
    for seed in seeds:
        for name, (method, multiple, title) in methods.items():
            learner, model = make_learner(method, seed, num_sleep)
            if name == next(iter(methods)):
                runs["untrained model"].append({**scores(model, test, feature_maps, seed)[0],
                                                "test log p(x)": test_log_likelihood(model, test), "sigma": 0.3,
                                                "CPU s": 0.})
            cpu = time.process_time()
            learner.fit(train, batch_size=100, epochs=epochs * multiple, verbose=0)
            cpu = time.process_time() - cpu
            result, means = scores(model, test, feature_maps, seed)
            runs[name].append({**result, "test log p(x)": test_log_likelihood(model, test),
                               "sigma": float(model.scale), "CPU s": cpu})
            if seed == seeds[0] and title:
                grids[title] = means
            print(f"seed {seed}, {name}: {result}, CPU {cpu:.0f} s", flush=True)
    path = plot_path("image_generation", quick=args.quick)
    plot(grids, path)
    rows = [["training digits (floor)", *[f"{floor[column]:.3g}" for column in COLUMNS], "", "", ""]]
    rows += [[name, *[summary(result, column) for column in [*COLUMNS, "test log p(x)", "sigma", "CPU s"]]]
             for name, result in runs.items()]
    print(machine_header())
    print(f"{NUM_TRAIN} training / {len(test)} test digits (8 x 8); latent dim {LATENT_DIM}, decoder 64-128 relu, "
          f"sigmoid output; {epochs} epochs of minibatches of 100, Adam 3e-3; N={num_sleep} sleep samples; "
          f"seeds {seeds} (mean ± sd); Fréchet distance of {NUM_SAMPLES} samples to the test digits; "
          f"classifier test accuracy {accuracy:.3f}\n")
    print(markdown_table(["model", *[f"FD {column}" for column in COLUMNS], "test log p(x)", "sigma", "CPU s"],
                         rows))
    print(f"\nplot: {path}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
