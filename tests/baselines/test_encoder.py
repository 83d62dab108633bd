"""MeanFieldEncoder and the encoder contract checks of the learners."""

import keras
import pytest
import tensorflow as tf

from tfp_amortised.baselines import (ImportanceWeightedLearner, MeanFieldEncoder, ReweightedWakeSleepLearner,
                                     VariationalLearner)
from tfp_amortised.baselines._encoder_learner import sample_encoder
from tfp_amortised.models import GaussianMixtureModel


@pytest.mark.parametrize("num_points, num_samples", [(1, 1), (7, 3)])
@pytest.mark.parametrize("event_shape", [(2,), (2, 3)])
def test_shapes_and_score_split(num_points, num_samples, event_shape):
    encoder = MeanFieldEncoder({"c": ("categorical", 4), "z": ("normal", 3)}, hidden_units=(8,), seed=0)
    posterior = encoder(tf.random.stateless_normal((num_points,) + event_shape, seed=[0, 1]))
    z, log_q, log_q_score = sample_encoder(posterior, num_samples, seed=[1, 2])
    assert z["c"].shape == (num_samples, num_points) and z["c"].dtype == tf.int32
    assert z["z"].shape == (num_samples, num_points, 3)
    assert log_q.shape == log_q_score.shape == (num_samples, num_points)
    # The score part is exactly the categorical node's log-probability; the Gaussian part is path-wise.
    tf.debugging.assert_near(log_q_score, posterior.model["c"].log_prob(z["c"]), atol=1e-6)
    tf.debugging.assert_near(log_q - log_q_score, posterior.model["z"].log_prob(z["z"]), atol=1e-5)


def test_normal_scale_is_positive_and_reparameterised():
    encoder = MeanFieldEncoder({"z": ("normal", 2)}, hidden_units=(), seed=0)
    x = tf.random.stateless_normal([5, 3], seed=[0, 2])
    with tf.GradientTape() as tape:
        z, log_q, log_q_score = sample_encoder(encoder(x), 2, seed=[3, 4])
        total = tf.reduce_sum(z["z"])
    assert all(g is not None for g in tape.gradient(total, encoder.trainable_variables))
    tf.debugging.assert_equal(log_q_score, tf.zeros_like(log_q))


def test_invalid_latent_kind_names_the_argument():
    with pytest.raises(ValueError, match=r"latents\['z'\].*Received"):
        MeanFieldEncoder({"z": ("gamma", 2)})


def test_learner_rejects_an_encoder_over_other_nodes():
    with pytest.raises(ValueError, match=r"latent nodes \['z'\].*Received: nodes \['w'\]"):
        VariationalLearner(GaussianMixtureModel(3, 2), MeanFieldEncoder({"w": ("categorical", 3)}))


@pytest.mark.parametrize("cls", [VariationalLearner, ImportanceWeightedLearner, ReweightedWakeSleepLearner])
def test_config_round_trip(cls):
    learner = cls(GaussianMixtureModel(3, 2), MeanFieldEncoder({"z": ("categorical", 3)}, hidden_units=(4,)),
                  num_samples=3, seed=5)
    config = learner.get_config()
    clone = cls.from_config(keras.saving.serialize_keras_object(learner)["config"])
    assert clone.get_config() == config
    assert clone.encoder.latents == {"z": ("categorical", 3)}


@pytest.mark.parametrize("cls", [VariationalLearner, ImportanceWeightedLearner, ReweightedWakeSleepLearner])
def test_objective_in_eager_tf_function_and_xla(cls):
    learner = cls(GaussianMixtureModel(3, 2, seed=1), MeanFieldEncoder({"z": ("categorical", 3)}, hidden_units=(4,)),
                  num_samples=3)
    x = tf.random.stateless_normal([5, 2], seed=[1, 1])
    seed = tf.constant([3, 4])

    def value_and_gradients():
        with tf.GradientTape() as tape:
            loss, bound, _ = learner.estimate(x, seed)
        return [loss, bound] + tape.gradient(loss, learner.trainable_variables)

    eager = value_and_gradients()
    # Same stateless seed, same draws in a graph: equal up to float32 round-off.
    for got, want in zip(tf.function(value_and_gradients)(), eager):
        tf.debugging.assert_near(got, want, rtol=1e-5, atol=1e-5)
    # XLA's stateless generators draw other numbers for the same seed: check it compiles, shapes and finiteness.
    for got, want in zip(tf.function(value_and_gradients, jit_compile=True)(), eager):
        assert got.shape == want.shape
        tf.debugging.assert_all_finite(got, "XLA objective")
