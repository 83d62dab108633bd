"""`AmortisedLearner`: maximum-likelihood training of a generative model with `model.fit`."""

import warnings

import keras
import numpy as np
import tensorflow as tf

from tfp_amortised import _observations, distributed
from tfp_amortised.base_learner import Learner, check_observations
from tfp_amortised.estimator import (amortised_step, check_form, check_num_holdout, check_num_sleep, check_wake_x,
                                     ridge_expectation, sleep)
from tfp_amortised.export import categorical_classes, export_learner, posterior_means
from tfp_amortised.ridge import KernelRidge, RegressionWarning, check_regression, conditioning_message
from tfp_amortised.solvers import trusted


@keras.saving.register_keras_serializable(package="tfp_amortised")
class AmortisedLearner(Learner):
    """Trains a `GenerativeModel` by amortised learning by wake-sleep (Wenliang et al., ICML 2020).

    Each training step is `tfp_amortised.estimator.amortised_step` on a minibatch of data `x_1..x_M` (wake):

    1. sleep: draw `num_sleep + num_holdout` detached samples `(z_n, x_n)` from the current model, with a
       stateless seed from the learner's `keras.random.SeedGenerator`;
    2. regress: kernel ridge weights `alpha: [M, N]` from the first `num_sleep` sleep observations to the
       minibatch (one Cholesky factor, the `regression` layer);
    3. update: inside a `tf.GradientTape`, the surrogate `s_m` (`form` "joint", "conditional" or "auto"), and one
       optimiser step on `-mean_m s_m`, whose gradient estimates `-mean_m grad log p_theta(x_m)`.

    Metrics: `log_likelihood`, the mean `log p_theta(x_m)` over the batch: exact where the model has a
    `log_marginal(x)` that evaluates on model samples at construction (a model whose configuration has no closed
    form raises NotImplementedError or ValueError there), else, in evaluation and validation only, the prior
    importance-sampling estimate `log (1/N') sum_n p(x_m | z_n)` over the step's `N' = num_sleep + num_holdout`
    sleep latents (`estimator.prior_log_likelihood`, a lower bound on average) -- the measure of fit to monitor,
    `EarlyStopping(monitor="val_log_likelihood", mode="max")`; `loss` (`-mean s`, whose value is not a likelihood:
    only its gradient means something), `bandwidth` (the kernel's length scale; the mean one with ARD),
    `ridge_r2` (the fraction of the variance of the regressed gradient, projected on random directions, that the
    ridge regression predicts at `num_holdout` held-out sleep points: an out-of-sample check of the regression
    the step relies on, comparable across steps; in training when the regression learns or the form is `"auto"`,
    always in evaluation: `val_ridge_r2`), `conditional_form` (with the `"auto"` form: the share of steps in
    the conditional form), `jitter` (the diagonal shift the Cholesky needed; nonzero flags a near-singular Gram
    matrix, which was repaired) and `condition` (the estimated condition number of the regression's linear
    system; `fit` warns when it is too large for the precision solved in), and the counts `skipped_steps` and
    `invalid_batches`:
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

    Prediction: `predict(x)`, `predict_on_batch(x)` and `learner(x)` return `posterior_mean(x)`, the posterior
    mean of every latent (class probabilities for a categorical one) by the same regression, with no encoder.

    Args:
      generative_model: a `GenerativeModel` (a Keras layer that owns the parameters and implements
        `joint_distribution()`).
      num_sleep: number `N >= 2` of sleep samples per step.
      form: `"auto"` (default), `"conditional"` or `"joint"` surrogate. The conditional form evaluates `M x N`
        likelihood terms `log p(x_m | z_n)` a step, the joint form `N`. With a learning regression the conditional
        form trained as well as exact-gradient ascent on all six benchmarked models with an exact likelihood, the
        joint form on four; on the blowfly series the conditional form fails and the joint form does not. `"auto"`
        measures both forms' held-out error each step and takes the conditional form until the first step where
        its error is more than `estimator.CONDITIONAL_TOLERANCE` (10) times the joint form's, and the joint form
        from then on (the weight `conditional_failed`, saved and restored with the others); the metric
        `conditional_form` is the share of steps in the conditional form (README, "Choosing the settings").
      regression: a `KernelRidge` layer (the regulariser lambda is its `ridge` argument); default
        `KernelRidge(learn=True)`: its bandwidth and ridge start from the median heuristic and 1e-3 and are
        trained each step on the held-out regression error (`regression_loss` of `amortised_step`, on
        `num_holdout` held-out sleep samples), with the `regression_optimizer` given to `compile`. Pass
        `KernelRidge()` for the fixed regression of 0.1.0 (a step 2.7-4.5x cheaper, biased where the median
        heuristic over-smooths).
      num_holdout: number of extra sleep samples held out of the regression, on which a learning regression trains
        and `ridge_r2` is measured, and by which the `"auto"` form chooses; 0 disables them (a fixed regression in
        the joint or conditional form only).
      seed: integer seed of the sleep samples; the same seed, data and initial weights give the same run.

    #### Examples

    ```python
    learner = AmortisedLearner(GaussianMixtureModel(3, 2), num_sleep=1000, regression=KernelRidge(ridge=1e-4))
    learner.compile(optimizer=keras.optimizers.Adam(1e-2))
    learner.fit(x_train, batch_size=100, epochs=20)
    learner.posterior_expectation(x_test, lambda sample: tf.one_hot(sample["z"], 3))  # [M, 3]
    ```
    """

    metric_names = ("loss", "log_likelihood", "bandwidth", "ridge_r2", "conditional_form", "jitter", "condition")

    def __init__(self, generative_model, num_sleep=1000, form="auto", regression=None, num_holdout=64, seed=None,
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
        self.regression = KernelRidge(learn=True) if regression is None else regression
        self._categorical_classes = categorical_classes(self.joint_distribution())
        self._exact_log_marginal = _exact_log_marginal(generative_model, self._reference_x)
        if self.regression.learn and not self.num_holdout:
            raise ValueError("A learning regression (KernelRidge(learn=True), the default) is trained on held-out "
                             "sleep samples: num_holdout must be positive, or pass a fixed regression, "
                             f"regression=KernelRidge(). Received: num_holdout={num_holdout!r}")
        if form == "auto" and not self.num_holdout:
            raise ValueError("The 'auto' form (the default) chooses between the joint and conditional forms by their "
                             "error on held-out sleep samples: num_holdout must be positive, or pass form='joint' or "
                             f"form='conditional'. Received: num_holdout={num_holdout!r}")
        if form == "auto":  # 1 once the conditional form has failed: saved, so a resumed run keeps the joint form
            self.conditional_failed = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                                      aggregation="only_first_replica", name="conditional_failed")

    def compile(self, optimizer="rmsprop", regression_optimizer=None, **kwargs):
        """`keras.Model.compile`, and the optimiser of a learning regression's hyperparameters.

        Args:
          optimizer: the generative model's optimiser (as in Keras).
          regression_optimizer: the optimiser of the regression's trainable hyperparameters (`KernelRidge(
            learn=True)`): a Keras optimiser or its name; default `keras.optimizers.Adam(0.1)` (0.05 was too slow to
            follow the model in `benchmarks/regression_quality`). Unused when the regression does not learn.
          **kwargs: passed on to `keras.Model.compile`.
        """
        super().compile(optimizer=optimizer, **kwargs)
        self.regression_optimizer = keras.optimizers.get(
            keras.optimizers.Adam(0.1) if regression_optimizer is None else regression_optimizer)
        self._compile_config.config["regression_optimizer"] = self.regression_optimizer

    def objective(self, wake_x, seed, training=True):
        """`amortised_step` on the wake batch: its loss (plus the held-out regression loss when the regression
        learns), and the global loss and diagnostics to log.

        The diagnostics that cost extra passes over the model are computed where they are needed: in training,
        the held-out error (`ridge_r2`) only when the regression learns from it, and `log_likelihood` only when
        the model has an exact `log_marginal`; in evaluation (`training=False`: `evaluate`, validation), both,
        `log_likelihood` by the step's prior importance-sampling estimate when there is no exact one.
        """
        exact = self._exact_log_marginal
        step = amortised_step(self.joint_distribution, wake_x, num_sleep=self.num_sleep, seed=seed,
                              observed=self.observed, regression=self.regression, form=self.form,
                              num_holdout=self.num_holdout, variables=self.generative_model.trainable_variables,
                              log_likelihood=exact is None and not training,
                              held_out_error=self.regression.learn or not training,
                              conditional_allowed=self.form != "auto" or tf.equal(self.conditional_failed, 0.))
        loss = step.loss + step.regression_loss if self.regression.learn else step.loss
        logs = {"loss": distributed.total(tf.stop_gradient(step.loss)), **step.diagnostics}
        if exact is not None:
            log_marginal = tf.stop_gradient(exact(wake_x))
            logs["log_likelihood"] = distributed.total(tf.reduce_sum(log_marginal)) / distributed.total(
                tf.cast(tf.shape(log_marginal)[0], log_marginal.dtype))
        return loss, logs

    def after_train_step(self, logs):
        """With the `"auto"` form, marks the conditional form as failed after a step that left it (for good)."""
        if self.form == "auto":
            self.conditional_failed.assign(tf.maximum(self.conditional_failed, 1. - logs["conditional_form"]))

    def apply_gradients(self, gradients):
        """The model's gradients with `optimizer`, the learning regression's with `regression_optimizer`."""
        pairs = list(zip(gradients, self.trainable_variables))
        self.optimizer.apply_gradients([(g, v) for g, v in pairs if not self._is_hyperparameter(v)])
        if self.regression.trainable_variables:
            self.regression_optimizer.apply_gradients([(g, v) for g, v in pairs if self._is_hyperparameter(v)])

    def build_optimizers(self):
        """Builds the model's optimiser on the model's variables and the regression's on its hyperparameters."""
        if not self.optimizer.built:
            self.optimizer.build(self._model_variables())
        if self.regression.trainable_variables and not self.regression_optimizer.built:
            self.regression_optimizer.build(self.regression.trainable_variables)

    def _model_variables(self):
        return [v for v in self.trainable_variables if not self._is_hyperparameter(v)]

    def _is_hyperparameter(self, variable):
        """Whether `variable` is one of the learning regression's trainable hyperparameters."""
        return any(variable is hyperparameter for hyperparameter in self.regression.trainable_variables)

    def fit(self, x=None, *args, **kwargs):
        """`Learner.fit`, after starting a learning regression from the median heuristic on a sleep set."""
        self.initialise_regression()
        return super().fit(x, *args, **kwargs)

    def train_on_batch(self, x, *args, **kwargs):
        """`keras.Model.train_on_batch`, after `initialise_regression`."""
        self.initialise_regression()
        return super().train_on_batch(x, *args, **kwargs)

    def initialise_regression(self):
        """Starts a learning regression from the median heuristic on a sleep set and builds its optimiser, eagerly
        and in the strategy's scope (variables cannot be created in a step); nothing when it does not learn or has
        started already. `fit` and `train_on_batch` call it; call it before a custom training loop."""
        if not self.regression.learn:
            return
        with self.distribute_strategy.scope():
            if not self.regression.is_initialised:  # the sleep set is drawn once, not at every train_on_batch
                self.regression.initialise(_observations.select(self.sample(self.num_sleep, seed=[0, 1]),
                                                                self.observed))
            self.build_optimizers()

    def sample(self, num_samples, seed=None):
        """Draws `num_samples` from the model: dict `{node name: Tensor[num_samples, *event_shape]}`.

        Without `seed`, the seed comes from the learner's evaluation stream, never the training one: sampling does
        not change a later `fit`.
        """
        return sleep(self.joint_distribution(), num_samples, self.next_seed(seed))

    def posterior_expectation(self, x, fn, num_sleep=None, seed=None, regression=None):
        """Estimates `E[fn(z, x) | x_m]` for each row of `x`, with no encoder (regression on a sleep set).

        Args:
          x: `[M, *event_shape]` observations (a dict `{node: [M, *event_shape]}` with several observed nodes).
          fn: maps the sleep dict `{node name: Tensor[N, *event_shape]}` to `Tensor[N, ...]`.
          num_sleep: size of the sleep set, an integer >= 2; default (None) the learner's `num_sleep`.
          seed: stateless seed; default the next seed of the learner's evaluation stream (not the training one).
          regression: the `KernelRidge` to regress with; default (None) the learner's. A learning regression's
            hyperparameters are tuned for the training gradient, whose variance averages over steps (its
            `variance_weight`); a one-off expectation has no such averaging, and a fixed `KernelRidge()` can be
            more accurate (denoising with a binary factor model: 0.058 against 0.096 pixel error).

        Returns:
          `Tensor[M, ...]`: `sum_n alpha_n(x_m) fn(sleep)_n`.

        Raises:
          ValueError: naming `num_sleep`, or `x` and its offending value (`check_observations`).
        """
        sample = self.sample(self.num_sleep if num_sleep is None else check_num_sleep(num_sleep), seed)
        sleep_x = _observations.select(sample, self.observed)
        x = check_observations(x, sleep_x, self.observed)
        return ridge_expectation(sleep_x, x, fn(sample), self._prediction_regression(regression))

    def posterior_mean(self, x, num_sleep=None, seed=None, regression=None):
        """Estimates the posterior mean of every latent node, `E[z | x_m]`, with no encoder.

        The kernel ridge regression of each latent on its observation over a fresh sleep set, evaluated at `x`
        (`posterior_expectation` with the identity). A categorical latent (a `tfd.Categorical` node, possibly
        inside `tfd.Independent` or `tfd.Sample`) with `C` classes gives instead its class probabilities
        `{name}_probabilities`, `E[one_hot(z) | x_m]`, as `export`'s `posterior_mean` endpoint does (ridge
        estimates may fall slightly outside [0, 1], and sum to one only with `KernelRidge(intercept=True)`).
        Works eagerly and inside a `tf.function`; `predict` and `learner(x)` call it.

        Args:
          x: `[M, *event_shape]` observations (`[M, 1]` is accepted for a scalar observed node), or a dict
            `{node: [M, *event_shape]}` with several observed nodes.
          num_sleep: size `N` of the sleep set, an integer >= 2; default (None) the learner's `num_sleep`.
          seed: stateless seed of the sleep set; default the next seed of the evaluation stream (not the training
            one), so each call, and each `predict` batch, draws its own sleep set.
          regression: the `KernelRidge` to regress with; default (None) the learner's (`posterior_expectation`).

        Returns:
          dict `{latent: Tensor[M, *event_shape]}` (float), with `{latent}_probabilities: Tensor[M, *event_shape,
          C]` in place of a categorical latent.

        Cost: one regression on `N` sleep samples, O(N^3 / 3) by the exact solve (the default up to N = 1000).
        """
        sample = self.sample(self.num_sleep if num_sleep is None else check_num_sleep(num_sleep), seed)
        sleep_x = _observations.select(sample, self.observed)
        x = _observations.cast_like(check_wake_x(x, sleep_x, self.observed), sleep_x)
        return posterior_means(self._prediction_regression(regression), sample, self.observed, x,
                               self._categorical_classes)

    def _prediction_regression(self, regression):
        """`regression` (checked), or the learner's own when it is None."""
        check_regression(regression)
        return self.regression if regression is None else regression

    def call(self, x):
        """`learner(x)`: `posterior_mean(x)`, with a sleep set from the evaluation stream."""
        return self.posterior_mean(x)

    def predict_step(self, data):
        """Keras' `predict` (and `predict_on_batch`) step: `posterior_mean` of the batch's observations, each batch
        with a sleep set of `num_sleep` samples from the evaluation stream."""
        return self.posterior_mean(self.wake_batch(data))

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`, after checking array data (`check_data`)."""
        self.check_data(x, "x")
        return super().predict(x, *args, **kwargs)

    def fit_callbacks(self):
        """`Learner.fit_callbacks` and warnings (`RegressionWarning`) when the regression's system was too
        ill-conditioned for its precision or the regression explains almost nothing."""
        checks = [_ConditioningCheck(), _RegressionQualityCheck()] if self.num_holdout else [_ConditioningCheck()]
        return [*super().fit_callbacks(), *checks]

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


def _exact_log_marginal(generative_model, reference_x):
    """The model's `log_marginal` method if it has one that evaluates on `reference_x: [B, *event_shape]`, else
    None: a model raises NotImplementedError or ValueError when its configuration has no closed form (for instance
    `ImageDecoderModel` with a deep decoder)."""
    log_marginal = getattr(generative_model, "log_marginal", None)
    if not callable(log_marginal):
        return None
    try:
        log_marginal(reference_x)
    except (NotImplementedError, ValueError):
        return None
    return log_marginal


# Below this held-out R^2 of the step's gradient estimate, the regression predicts hardly better than the mean.
RIDGE_R2_WARNING = 0.05


class _RegressionQualityCheck(keras.callbacks.Callback):
    """Warns (`RegressionWarning`) at the end of `fit` when the last epoch's held-out R^2 of the regression is
    below `RIDGE_R2_WARNING`, naming the hyperparameters and what to try. The R^2 is the epoch's mean
    `val_ridge_r2`, else its `ridge_r2` (logged in training by a learning regression), else one evaluation step's
    on a fresh sleep set of the evaluation stream (the wake points do not enter it); the bandwidth named is the one
    used there (a learned one may sit on a bound), not the layer's variable."""

    def __init__(self):
        super().__init__()
        self.last, self.bandwidth = None, None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.last = logs.get("val_ridge_r2", logs.get("ridge_r2", self.last))
        self.bandwidth = logs.get("bandwidth", self.bandwidth)

    def on_train_end(self, logs=None):
        learner = self.model
        if self.last is None:
            probe = _observations.select(learner.sample(1), learner.observed)
            logs = learner.objective(probe, learner.next_seed(None), training=False)[1]
            self.last, self.bandwidth = logs["ridge_r2"], logs["bandwidth"]
        if float(np.mean(self.last)) >= RIDGE_R2_WARNING:
            return
        regression = learner.regression
        remedies = "the fixed median-heuristic regression (KernelRidge()), " if regression.learn else (
            "KernelRidge(learn=True), ")
        warnings.warn(
            f"The regression explained almost nothing of the gradient at held-out sleep samples in the last epoch "
            f"(ridge_r2={float(np.mean(self.last)):.3g} < {RIDGE_R2_WARNING}): the gradient estimate is mostly bias. "
            f"Bandwidth: {float(np.mean(self.bandwidth)):.3g} (as used); ridge: {float(regression.ridge):.3g}; "
            f"num_sleep: {learner.num_sleep}. Try {remedies}a kernel on features of the observations "
            f"(KernelRidge(features=...)) or more sleep samples.",
            RegressionWarning, stacklevel=2)


class _ConditioningCheck(keras.callbacks.Callback):
    """Warns (`RegressionWarning`) at the end of `fit` when the last epoch's mean `condition` is too large for the
    precision the regression solved in (`tfp_amortised.solvers.trusted`), naming lambda and what to do."""

    def __init__(self):
        super().__init__()
        self.last = None

    def on_epoch_end(self, epoch, logs=None):
        self.last = (logs or {}).get("condition", self.last)

    def on_train_end(self, logs=None):
        regression = self.model.regression
        if self.last is None or trusted(float(np.mean(self.last)), regression.compute_dtype, regression.escalate):
            return
        warnings.warn(conditioning_message(np.mean(self.last), regression.ridge, regression.compute_dtype,
                                           regression.escalate), RegressionWarning, stacklevel=2)
