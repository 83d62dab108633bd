"""`TensorBoard`: Keras' TensorBoard callback with what amortised learning adds to watch.

Keras' `keras.callbacks.TensorBoard` already writes every logged metric (`epoch_log_likelihood`,
`epoch_bandwidth`, `epoch_ridge_r2`, ... under `train/`, the `val_` ones under `validation/`). This subclass adds,
at the end of every epoch, under `train/`:

    regression/ridge                the regulariser lambda of the learner's `KernelRidge` (learned or fixed)
    regression/bandwidth            its length scale when it is a parameter (fixed or learned; the mean with ARD,
                                    and a histogram `regression/bandwidths` of the length scales); the median
                                    heuristic's per-step value is the metric `bandwidth`
    sleep/<node>                    a histogram of `num_samples` samples of every node of the current model

The samples are drawn with the stateless seed `[epoch, 0]`: no seed stream of the learner is consumed, so the
callback changes neither training nor validation. It needs the `tensorboard` package (`pip install
"tfp_amortised[tensorboard]"`).
"""

import os

import keras
import tensorflow as tf

from tfp_amortised.estimator import check_num_sleep, sleep


class TensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard`, with the regression's hyperparameters and sleep-sample histograms.

    Args:
      log_dir: directory of the event files (as in Keras).
      num_samples: number of model samples per epoch in the `sleep/<node>` histograms, an integer >= 1.
      **kwargs: passed on to `keras.callbacks.TensorBoard` (`histogram_freq`, `update_freq`, ...).

    #### Examples

    ```python
    learner.fit(x, validation_data=x_val, epochs=20, callbacks=[tfp_amortised.TensorBoard("logs")])
    # tensorboard --logdir logs
    ```
    """

    def __init__(self, log_dir="logs", num_samples=1000, **kwargs):
        super().__init__(log_dir=log_dir, **kwargs)
        self.num_samples = check_num_sleep(num_samples, minimum=1, argument="num_samples")
        self._amortised_writer = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._amortised_writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        with self._amortised_writer.as_default(step=epoch):
            regression = getattr(self.model, "regression", None)
            if regression is not None:
                tf.summary.scalar("regression/ridge", regression.ridge)
                if regression.bandwidth is not None:
                    bandwidth = tf.convert_to_tensor(regression.bandwidth)
                    tf.summary.scalar("regression/bandwidth", tf.reduce_mean(bandwidth))
                    if bandwidth.shape.rank:
                        tf.summary.histogram("regression/bandwidths", bandwidth)
            for name, value in sleep(self.model.joint_distribution(), self.num_samples, [epoch, 0]).items():
                tf.summary.histogram(f"sleep/{name}", tf.cast(value, tf.float32))
        self._amortised_writer.flush()

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self._amortised_writer.close()
