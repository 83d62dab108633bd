"""Test configuration: quiet TensorFlow, deterministic Keras initialisers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_keras():
    """Every test starts from the same global Keras seed, so weight initialisers are reproducible."""
    keras.utils.set_random_seed(0)
