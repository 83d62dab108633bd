"""End-to-end demo: learn a Gaussian mixture (a discrete latent) with `model.fit`, no encoder.

    python -m tfp_amortised.demo [--epochs 15] [--output amortised_demo.png]

Simulates 3000 points from a 3-component mixture in 2-D, trains `GaussianMixtureModel` with `AmortisedLearner`
(Keras progress bar), tracks the exact held-out log-likelihood after each epoch with a Keras callback, prints
a table of true and learned parameters, and writes a two-panel plot.
"""

import argparse
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfp_amortised.learner import AmortisedLearner  # noqa: E402
from tfp_amortised.models import GaussianMixtureModel  # noqa: E402

TRUE_MEANS = [[-3., 0.], [0., 3.], [3., -1.]]
TRUE_LOGITS = [0., 0.5, -0.5]
TRUE_SCALE = 0.6


def simulate(num_points, seed):
    """The true model and `num_points` observations `[num_points, 2]` from it."""
    truth = GaussianMixtureModel(num_components=3, data_dim=2, scale=TRUE_SCALE)
    truth.means.assign(TRUE_MEANS)
    truth.logits.assign(TRUE_LOGITS)
    return truth, truth.joint_distribution().sample(num_points, seed=seed).x.numpy()


def _matched(learned_means):
    """Order of the learned components that best matches the true ones."""
    return min(itertools.permutations(range(3)),
               key=lambda order: np.abs(learned_means[list(order)] - np.array(TRUE_MEANS)).sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--num-sleep", type=int, default=500)
    parser.add_argument("--output", default="amortised_demo.png")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    truth, x = simulate(3000, seed=(1, 2))
    x_train, x_test = x[:2500], x[2500:]
    model = GaussianMixtureModel(num_components=3, data_dim=2, scale=1.5, seed=4)
    learner = AmortisedLearner(model, num_sleep=args.num_sleep, seed=0)  # the defaults
    learner.compile(optimizer=keras.optimizers.Adam(0.05))

    held_out = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: held_out.append(float(tf.reduce_mean(model.log_marginal(x_test)))))
    print(f"Fitting a 3-component mixture to {len(x_train)} points with {args.num_sleep} sleep samples per step.")
    learner.fit(x_train, batch_size=100, epochs=args.epochs, callbacks=[record], verbose=2)

    order = list(_matched(model.means.numpy()))
    weights = tf.nn.softmax(model.logits).numpy()[order]
    true_weights = tf.nn.softmax(truth.logits).numpy()
    best = float(tf.reduce_mean(truth.log_marginal(x_test)))
    print("\n| parameter | true | learned |\n|---|---|---|")
    for k, component in enumerate(order):
        print(f"| mean {k} | {np.round(TRUE_MEANS[k], 2)} | {np.round(model.means.numpy()[component], 2)} |")
        print(f"| weight {k} | {true_weights[k]:.3f} | {weights[k]:.3f} |")
    print(f"| scale | {TRUE_SCALE:.3f} | {float(model.scale):.3f} |")
    print(f"| held-out log p(x) per point | {best:.3f} (true parameters) | {held_out[-1]:.3f} |")
    _plot(x_train, model, held_out, best, args.output)
    print(f"\nWrote {args.output}")


def _plot(x, model, held_out, best, path):
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.scatter(x[:, 0], x[:, 1], s=3, alpha=0.3, color="grey", label="data")
    angle = np.linspace(0., 2. * np.pi, 100)
    for k, mean in enumerate(model.means.numpy()):
        radius = 2. * float(model.scale)
        left.plot(mean[0] + radius * np.cos(angle), mean[1] + radius * np.sin(angle), color=f"C{k}")
        left.scatter(*mean, color=f"C{k}", marker="x", s=80)
    left.scatter(*np.array(TRUE_MEANS).T, color="black", marker="+", s=120, label="true means")
    left.set(title="Learned components (mean, 2 sigma)", aspect="equal")
    left.legend(loc="lower left")
    right.plot(np.arange(1, len(held_out) + 1), held_out, marker="o", label="amortised learning")
    right.axhline(best, color="black", linestyle="--", label="true parameters")
    right.set(title="Exact held-out log-likelihood", xlabel="epoch", ylabel="mean log p(x)")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
