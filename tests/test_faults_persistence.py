"""What is written out means what it says: the exported posterior of a categorical latent is its class
probabilities (not a mean label index), and resuming from a `BackupAndRestore` backup continues the same run."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel, GaussianMixtureModel
from tfp_amortised.ridge import KernelRidge


def test_exported_posterior_of_a_categorical_latent_is_its_class_probabilities(tmp_path):
    """Three components: `posterior_mean(x)` returns `z_probabilities` `[M, 3]`, the responsibilities exact by
    Bayes' rule, and no meaningless mean label `z`. From 2000 stored sleep pairs (as
    test_learner.py::test_posterior_expectation_matches_exact_responsibilities, with the same tolerances):
    measured mean absolute error 0.040, largest 0.108; every point's most probable component right."""
    truth = GaussianMixtureModel(num_components=3, data_dim=2, scale=0.5)
    truth.means.assign([[-3., 0.], [0., 3.], [3., 0.]])  # test_learner.py's TRUE_MEANS
    x = truth.joint_distribution().sample(20, seed=[5, 6])[1]
    learner = AmortisedLearner(truth, num_sleep=2000, seed=1, form="joint", regression=KernelRidge())
    learner.export(str(tmp_path / "served"), seed=(2, 3))
    loaded = tf.saved_model.load(str(tmp_path / "served"))  # referenced while its functions run
    served = loaded.posterior_mean(x)

    components = truth.marginal().components_distribution.log_prob(x[:, None, :])
    exact = tf.nn.softmax(tf.nn.log_softmax(truth.logits) + components, axis=-1)
    assert set(served) == {"z_probabilities"}
    estimate = served["z_probabilities"].numpy()
    assert estimate.shape == (20, 3)
    errors = np.abs(estimate - exact)
    assert errors.mean() < 0.06 and errors.max() < 0.2, (errors.mean(), errors.max())
    np.testing.assert_array_equal(np.argmax(estimate, 1), np.argmax(exact, 1))
    # The same numbers as the learner's own estimate on the stored sleep set (same seed, frozen bandwidth).
    stored = learner.posterior_expectation(x, lambda sample: tf.one_hot(sample["z"], 3), seed=(2, 3))
    np.testing.assert_allclose(estimate, stored, atol=1e-5)


def test_exported_posterior_mean_of_a_real_latent_is_kept(tmp_path):
    learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=0), num_sleep=200, seed=0, form="joint",
                               regression=KernelRidge())
    learner.export(str(tmp_path / "served"))
    loaded = tf.saved_model.load(str(tmp_path / "served"))
    served = loaded.posterior_mean(tf.zeros([4, 2]))
    assert set(served) == {"z"} and served["z"].shape == (4, 1)


BATCH, EPOCHS = 32, 3


class _InterruptAtBatch(keras.callbacks.Callback):
    """Raises at the start of batch `batch` of epoch `epoch`, like a job pre-empted mid-epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.epoch, self.batch, self.current_epoch = epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.current_epoch, batch) == (self.epoch, self.batch):
            raise RuntimeError("interrupted")


def _resume_learner():
    learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=64, num_holdout=8, seed=3, form="joint",
                               regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    return learner


@pytest.fixture(name="data")
def _data():
    return FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(4 * BATCH, seed=[1, 2])[1].numpy()


def _interrupted_and_resumed(data, tmp_path, save_freq, epoch, batch):
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=save_freq)
    with pytest.raises(RuntimeError, match="interrupted"):
        _resume_learner().fit(data, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
                              callbacks=[backup, _InterruptAtBatch(epoch, batch)])
    resumed = _resume_learner()
    resumed.fit(data, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[backup])
    return resumed


def _assert_same_weights(actual, expected):
    for a, e in zip(actual.trainable_variables + actual.optimizer.variables,
                    expected.trainable_variables + expected.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), e.numpy(), atol=1e-6)


def test_resume_from_an_epoch_backup_is_the_uninterrupted_run(data, tmp_path):
    """`save_freq="epoch"`, interrupted mid-epoch 1: the backup of the end of epoch 0 restarts epoch 1 from its first
    batch with the weights, Adam state and both seed states of that moment: the uninterrupted run (atol 1e-6 for
    float32 round-off)."""
    uninterrupted = _resume_learner()
    uninterrupted.fit(data, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    _assert_same_weights(_interrupted_and_resumed(data, tmp_path, "epoch", epoch=1, batch=2), uninterrupted)


def test_resume_from_a_mid_epoch_backup_replays_the_epochs_first_batches(data, tmp_path):
    """`save_freq=1`, interrupted before batch 2 of epoch 1: Keras restores the backup taken after batch 1 but
    restarts epoch 1 from its first batch (it saves the batch index and does not use it), so batches 0 and 1 of
    epoch 1 are trained twice. The resumed run is exactly the uninterrupted run over that sequence of batches
    (same seed stream, same Adam state): epoch 0, batches 0-1 of epoch 1, then epochs 1 and 2 whole. It is not
    the uninterrupted run of 3 epochs."""
    resumed = _interrupted_and_resumed(data, tmp_path, 1, epoch=1, batch=2)
    replayed = _resume_learner()
    replayed.fit(data, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    replayed.fit(data[:2 * BATCH], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    replayed.fit(data, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    _assert_same_weights(resumed, replayed)
    uninterrupted = _resume_learner()
    uninterrupted.fit(data, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    assert not np.allclose(resumed.trainable_variables[0].numpy(), uninterrupted.trainable_variables[0].numpy(),
                           atol=1e-4)
