"""Checkpoints and resume: `BackupAndRestore` and `ModelCheckpoint` with `AmortisedLearner`."""

import keras
import numpy as np
import pytest

from tfp_amortised import KernelRidge
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel

EPOCHS = 4


class _Interrupt(keras.callbacks.Callback):
    """Raises at the start of epoch `epoch`, like a pre-empted job."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


class _RecordWeights(keras.callbacks.Callback):
    """Keeps a copy of the trainable weights at the end of every epoch."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([v.numpy().copy() for v in self.model.trainable_variables])


def _learner(learn=False):
    learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=96, num_holdout=16, seed=3,
                               regression=KernelRidge(learn=learn))
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    return learner


@pytest.fixture(name="data")
def _data():
    return FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(128, seed=[1, 2])[1].numpy()


@pytest.mark.parametrize("learn", [False, True], ids=["fixed", "learning_regression"])
def test_interrupted_fit_resumes_from_backup_to_the_same_weights(data, tmp_path, learn):
    """Interrupted at epoch 2 and resumed by `BackupAndRestore` in a new learner: the uninterrupted weights.

    The backup holds the weights, both optimisers' states (a learning regression's hyperparameters have their
    own) and the seed states; unshuffled data make the epochs identical, so the runs agree to float32 round-off
    (atol 1e-6), the regression's hyperparameters included.
    """
    uninterrupted = _learner(learn)
    uninterrupted.fit(data, batch_size=64, epochs=EPOCHS, shuffle=False, verbose=0)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        _learner(learn).fit(data, batch_size=64, epochs=EPOCHS, shuffle=False, verbose=0,
                            callbacks=[backup, _Interrupt(2)])
    resumed = _learner(learn)
    history = resumed.fit(data, batch_size=64, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[backup])

    assert history.epoch == [2, 3]  # only the epochs the interrupted run had not finished
    assert len(resumed.trainable_variables) == len(uninterrupted.trainable_variables) == (5 if learn else 3)
    for expected, actual in zip(uninterrupted.trainable_variables, resumed.trainable_variables):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), atol=1e-6)
    if learn:  # the regression moved, and its optimiser continued rather than restarted
        assert int(resumed.regression_optimizer.iterations) == int(uninterrupted.regression_optimizer.iterations) == 8


def test_model_checkpoint_saves_the_weights_of_each_epoch(data, tmp_path):
    """`ModelCheckpoint` files (whole `.keras` models and `.weights.h5`) restore exactly the weights the learner
    had at the end of their epoch."""
    checkpoints = [keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.keras")),
                   keras.callbacks.ModelCheckpoint(str(tmp_path / "epoch{epoch}.weights.h5"), save_weights_only=True)]
    record = _RecordWeights()
    _learner().fit(data, batch_size=64, epochs=2, shuffle=False, verbose=0, callbacks=[*checkpoints, record])

    for epoch in (1, 2):
        from_weights = _learner()
        from_weights.optimizer.build(from_weights.trainable_variables)
        from_weights.load_weights(tmp_path / f"epoch{epoch}.weights.h5")
        for restored in (keras.models.load_model(tmp_path / f"epoch{epoch}.keras"), from_weights):
            for expected, actual in zip(record.weights[epoch - 1], restored.trainable_variables):
                np.testing.assert_array_equal(actual.numpy(), expected)
