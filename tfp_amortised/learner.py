"""`AmortisedLearner`: maximum-likelihood training of a generative model with `model.fit`."""

import keras
import numpy as np
import tensorflow as tf

from tfp_amortised import distributed
from tfp_amortised.base_learner import Learner, check_observations
from tfp_amortised.estimator import (amortised_step, check_form, check_num_holdout, check_num_sleep,
                                     ridge_expectation, sleep)
from tfp_amortised.export import export_learner
from tfp_amortised.ridge import KernelRidge, check_regression


@keras.saving.register_keras_serializable(package="tfp_amortised")
class AmortisedLearner(Learner):
    """Trains a `GenerativeModel` by amortised learning by wake-sleep (Wenliang et al., ICML 2020).

    Each training step is `tfp_amortised.estimator.amortised_step` on a minibatch of data `x_1..x_M` (wake):

    1. sleep: draw `num_sleep + num_holdout` detached samples `(z_n, x_n)` from the current model, with a
       stateless seed from the learner's `keras.random.SeedGenerator`;
    2. regress: kernel ridge weights `alpha: [M, N]` from the first `num_sleep` sleep observations to the
       minibatch (one Cholesky factor, the `regression` layer);
    3. update: inside a `tf.GradientTape`, the surrogate `s_m` (`form` "joint" or "conditional"), and one
       optimiser step on `-mean_m s_m`, whose gradient estimates `-mean_m grad log p_theta(x_m)`.

    Metrics each step: `loss` (`-mean s`), `bandwidth` (the kernel's length scale; the mean one with ARD),
    `ridge_r2` (the fraction of the variance of the regressed gradient, projected on random directions, that the
    ridge regression predicts at `num_holdout` held-out sleep points: an out-of-sample check of the regression
    the step relies on, comparable across steps) and `jitter` (the diagonal shift the Cholesky needed; nonzero
    flags a near-singular Gram matrix, which was repaired), and the counts `skipped_steps` and `invalid_batches`:
    a step whose batch is invalid or whose loss or gradient is not finite is skipped, leaving the weights and the
    optimiser state untouched, and `fit` warns about it (`Learner`).

    Under a `tf.distribute` strategy (create the learner inside `strategy.scope()`), each of the `R` replicas
    draws `num_sleep / R` sleep samples with the seed folded with its replica id, the sleep observations are
    all-gathered so all replicas use the same global ridge weights, and each replica differentiates only its
    own sleep samples: the summed gradient is the single-device gradient on the global sleep set
    (`tfp_amortised.distributed`).

    Saving: `save("m.keras")` / `keras.models.load_model` and the `BackupAndRestore` / `ModelCheckpoint`
    callbacks keep the weights, the regression's hyperparameters, the optimiser state and the sleep seed state,
    so a restored learner continues the same run. `export(path)` writes a SavedModel for serving.

    Args:
      generative_model: a `GenerativeModel` (a Keras layer that owns the parameters and implements
        `joint_distribution()`).
      num_sleep: number `N >= 2` of sleep samples per step.
      form: `"joint"` or `"conditional"` surrogate.
      regression: a `KernelRidge` layer (the regulariser lambda is its `ridge` argument); default `KernelRidge()`.
        With `KernelRidge(learn=True)` its hyperparameters are trained each step on the held-out regression error
        (`regression_loss` of `amortised_step`, on `num_holdout` held-out sleep samples), with the
        `regression_optimizer` given to `compile`.
      num_holdout: number of extra sleep samples held out of the regression for `ridge_r2`; 0 disables it.
      seed: integer seed of the sleep samples; the same seed, data and initial weights give the same run.

    #### Examples

    ```python
    learner = AmortisedLearner(GaussianMixtureModel(3, 2), num_sleep=1000, regression=KernelRidge(ridge=1e-4))
    learner.compile(optimizer=keras.optimizers.Adam(1e-2))
    learner.fit(x_train, batch_size=100, epochs=20)
    learner.posterior_expectation(x_test, lambda sample: tf.one_hot(sample["z"], 3))  # [M, 3]
    ```
    """

    metric_names = ("loss", "bandwidth", "ridge_r2", "jitter")

    def __init__(self, generative_model, num_sleep=1000, form="joint", regression=None, num_holdout=64, seed=None,
                 **kwargs):
        if "ridge" in kwargs:
            raise TypeError(
                "AmortisedLearner takes its regression layer as `regression=`; `ridge` is the regulariser lambda, a "
                "number given to KernelRidge: AmortisedLearner(model, regression=KernelRidge(ridge=1e-3)). "
                f"Received: ridge={kwargs['ridge']!r}")
        if not check_num_holdout(num_holdout):  # no held-out samples, no ridge_r2 (not a constant 0)
            self.metric_names = tuple(name for name in self.metric_names if name != "ridge_r2")
        super().__init__(generative_model, seed=seed, **kwargs)
        check_form(form)
        check_regression(regression)
        self.num_sleep, self.num_holdout = check_num_sleep(num_sleep), check_num_holdout(num_holdout)
        self.form = form
        self.regression = KernelRidge() if regression is None else regression
        if self.regression.learn and not self.num_holdout:
            raise ValueError("A learning regression (KernelRidge(learn=True)) is trained on held-out sleep samples: "
                             f"num_holdout must be positive. Received: num_holdout={num_holdout!r}")

    def compile(self, optimizer="rmsprop", regression_optimizer=None, **kwargs):
        """`keras.Model.compile`, and the optimiser of a learning regression's hyperparameters.

        Args:
          optimizer: the generative model's optimiser (as in Keras).
          regression_optimizer: the optimiser of the regression's trainable hyperparameters (`KernelRidge(
            learn=True)`): a Keras optimiser or its name; default `keras.optimizers.Adam(0.01)`. Unused when the
            regression does not learn.
          **kwargs: passed on to `keras.Model.compile`.
        """
        super().compile(optimizer=optimizer, **kwargs)
        self.regression_optimizer = keras.optimizers.get(
            keras.optimizers.Adam(0.01) if regression_optimizer is None else regression_optimizer)
        self._compile_config.config["regression_optimizer"] = self.regression_optimizer

    def compile_from_config(self, config):
        """Keras loading hook: compiles with both optimisers of `get_compile_config()` and builds them."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        self.optimizer.build(self._model_variables())
        self.regression_optimizer.build(self.regression.trainable_variables)

    def objective(self, wake_x, seed):
        """`amortised_step` on the wake batch: its loss (plus the held-out regression loss when the regression
        learns), and the global loss and diagnostics to log."""
        step = amortised_step(self.joint_distribution, wake_x, num_sleep=self.num_sleep, seed=seed,
                              observed=self.observed, regression=self.regression, form=self.form,
                              num_holdout=self.num_holdout, variables=self.generative_model.trainable_variables)
        loss = step.loss + step.regression_loss if self.regression.learn else step.loss
        return loss, {"loss": distributed.total(tf.stop_gradient(step.loss)), **step.diagnostics}

    def apply_gradients(self, gradients):
        """The model's gradients with `optimizer`, the learning regression's with `regression_optimizer`."""
        regression_ids = {id(variable) for variable in self.regression.trainable_variables}
        pairs = list(zip(gradients, self.trainable_variables))
        self.optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) not in regression_ids])
        if regression_ids:
            self.regression_optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) in regression_ids])

    def build_optimizers(self):
        """Builds the model's optimiser on the model's variables and the regression's on its hyperparameters."""
        if not self.optimizer.built:
            self.optimizer.build(self._model_variables())
        if self.regression.trainable_variables and not self.regression_optimizer.built:
            self.regression_optimizer.build(self.regression.trainable_variables)

    def _model_variables(self):
        regression_ids = {id(variable) for variable in self.regression.trainable_variables}
        return [v for v in self.trainable_variables if id(v) not in regression_ids]

    def fit(self, x=None, *args, **kwargs):
        """`Learner.fit`, after starting a learning regression from the median heuristic on a sleep set."""
        if self.regression.learn:  # eagerly, in the strategy's scope: variables cannot be created in a step
            with self.distribute_strategy.scope():
                self.regression.initialise(self.sample(self.num_sleep, seed=[0, 1])[self.observed])
                if not self.regression_optimizer.built:
                    self.regression_optimizer.build(self.regression.trainable_variables)
        return super().fit(x, *args, **kwargs)

    def sample(self, num_samples, seed=None):
        """Draws `num_samples` from the model: dict `{node name: Tensor[num_samples, *event_shape]}`.

        Without `seed`, the seed comes from the learner's evaluation stream, never the training one: sampling does
        not change a later `fit`.
        """
        return sleep(self.joint_distribution(), num_samples, self.next_seed(seed))

    def posterior_expectation(self, x, fn, num_sleep=None, seed=None):
        """Estimates `E[fn(z, x) | x_m]` for each row of `x`, with no encoder (regression on a sleep set).

        Args:
          x: `[M, *event_shape]` observations.
          fn: maps the sleep dict `{node name: Tensor[N, *event_shape]}` to `Tensor[N, ...]`.
          num_sleep: size of the sleep set, an integer >= 2; default (None) the learner's `num_sleep`.
          seed: stateless seed; default the next seed of the learner's evaluation stream (not the training one).

        Returns:
          `Tensor[M, ...]`: `sum_n alpha_n(x_m) fn(sleep)_n`.

        Raises:
          ValueError: naming `num_sleep`, or `x` and its offending value (`check_observations`).
        """
        sample = self.sample(self.num_sleep if num_sleep is None else check_num_sleep(num_sleep), seed)
        x = check_observations(x, sample[self.observed], self.observed)
        return ridge_expectation(sample[self.observed], x, fn(sample), self.regression)

    def check_data(self, data, argument, batch_size=None):
        """`Learner.check_data`, and that an array's wake batch is no larger than the sleep set."""
        super().check_data(data, argument)
        if argument != "x" or not isinstance(data, (np.ndarray, tf.Tensor)):
            return
        batch = min(32 if batch_size is None else batch_size, data.shape[0])  # Keras' default batch_size is 32
        if batch > self.num_sleep:
            raise ValueError(
                f"num_sleep={self.num_sleep} is smaller than the wake batch of {batch} observations: the ridge "
                f"regression from N sleep points to M wake points needs N >= M. Raise num_sleep or lower "
                f"batch_size. Received: batch_size={batch_size}")

    def export(self, filepath, num_sleep=None, seed=(0, 0), verbose=False):
        """Writes a TensorFlow SavedModel with endpoints `sample`, `log_joint` and `posterior_mean`.

        See `tfp_amortised.export.export_learner`; the SavedModel needs only TensorFlow to load.
        """
        export_learner(self, filepath, num_sleep=num_sleep, seed=seed, verbose=verbose)

    def get_config(self):
        return {**super().get_config(), "num_sleep": self.num_sleep, "form": self.form,
                "num_holdout": self.num_holdout, "regression": keras.saving.serialize_keras_object(self.regression)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "ridge" in config:  # written by 0.1.0, where the regression layer was called `ridge`
            config["regression"] = config.pop("ridge")
        config["regression"] = keras.saving.deserialize_keras_object(config["regression"])
        return super().from_config(config)
