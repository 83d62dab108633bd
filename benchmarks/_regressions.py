"""The regression settings the image benchmarks compare: fixed, learned (the default), learned on the held-out mean
squared error and a deep kernel."""

import argparse

import keras

from tfp_amortised.ridge import KernelRidge

SETTINGS = ("fixed", "learned", "learned-w1", "deep")
DEFAULT_SETTINGS = ("fixed", "learned", "deep")


def deep_features(event_shape, hidden_units=64, num_features=16, seed=0):
    """A trainable feature map `[B, *event_shape] -> [B, D + num_features]`: the flattened observation (D values)
    followed by a tanh layer and a linear layer of it, so the kernel starts from the raw observations' information
    and learns what to add."""
    inputs = keras.Input(event_shape)
    flat = keras.layers.Flatten()(inputs)
    hidden = keras.layers.Dense(hidden_units, activation="tanh",
                                kernel_initializer=keras.initializers.GlorotUniform(seed))(flat)
    learned = keras.layers.Dense(num_features, kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(hidden)
    return keras.Model(inputs, keras.layers.Concatenate()([flat, learned]), name="deep_kernel_features")


def regression(setting, event_shape, seed=0):
    """The `KernelRidge` of a setting: `"fixed"` (median heuristic, lambda 1e-3), `"learned"` (`learn=True`, the
    learner's default: on the held-out mean squared error, within `learn`'s bounds), `"learned-w1"` (the same,
    named explicitly: `learn=True, variance_weight=1.`) or
    `"deep"` (`learn=True` on `deep_features` of the observations, whose weights it learns)."""
    if setting == "fixed":
        return KernelRidge()
    if setting == "learned":
        return KernelRidge(learn=True)
    if setting == "learned-w1":
        return KernelRidge(learn=True, variance_weight=1.)
    if setting == "deep":
        return KernelRidge(learn=True, features=deep_features(event_shape, seed=seed))
    raise ValueError(f"setting must be one of {SETTINGS}. Received: setting={setting!r}")


def add_option(parser, default=DEFAULT_SETTINGS):
    """Adds `--regressions` to a benchmark's `argparse` parser: comma-separated settings, parsed into a checked
    tuple from `SETTINGS` (default: `default`)."""
    parser.add_argument("--regressions", type=_parse, default=default,
                        help=f"comma-separated regression settings of amortised learning, one run each, from "
                        f"{','.join(SETTINGS)} (default {','.join(default)}; benchmarks/_regressions.py)")


def _parse(settings):
    chosen = tuple(name.strip() for name in settings.split(","))
    unknown = [name for name in chosen if name not in SETTINGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"takes names from {SETTINGS}. Received: {unknown}")
    return chosen
