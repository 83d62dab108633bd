"""`AmortisedLearner`: maximum-likelihood training of a generative model with `model.fit`."""

import keras
import numpy as np
import tensorflow as tf

from tfp_amortised import _joint, distributed
from tfp_amortised.estimator import (_check_form, _check_num_sleep, check_wake_x, flatten_events, ridge_expectation,
                                     sleep, weighted_log_joint)
from tfp_amortised.export import export_learner
from tfp_amortised.ridge import KernelRidge

_SEED_STATE = "seed_generator_state"


@keras.saving.register_keras_serializable(package="tfp_amortised")
class AmortisedLearner(keras.Model):
    """Trains a `GenerativeModel` by amortised learning by wake-sleep (Wenliang et al., ICML 2020).

    Each training step, for a minibatch of data `x_1..x_M` (the wake phase):

    1. sleep: draw `num_sleep + num_holdout` detached samples `(z_n, x_n)` from the current model, with a
       stateless seed from the learner's `keras.random.SeedGenerator`;
    2. regress: kernel ridge weights `alpha: [M, N]` from the first `num_sleep` sleep observations to the
       minibatch (one Cholesky factor, `KernelRidge`);
    3. update: inside a `tf.GradientTape`, the surrogate `s_m` (`surrogate_log_marginal`, `form` "joint" or
       "conditional"), and one optimiser step on `-mean_m s_m`, whose gradient estimates
       `-mean_m grad log p_theta(x_m)`.

    Metrics each step: `loss` (`-mean s`), `bandwidth` (the ridge kernel's length scale), `ridge_r2` (the
    fraction of variance of the sleep log-joint that the ridge regression predicts at `num_holdout` held-out
    sleep points: a cheap out-of-sample check of the regression, comparable across steps) and `jitter` (the
    diagonal shift the Cholesky needed; nonzero flags a near-singular Gram matrix, which was repaired). A step
    whose gradient is not finite is applied as a zero gradient, so NaN never reaches the weights.

    Under a `tf.distribute` strategy (create the learner inside `strategy.scope()`), each of the `R` replicas
    draws `num_sleep / R` sleep samples with the seed folded with its replica id, the sleep observations are
    all-gathered so all replicas use the same global ridge weights, and each replica differentiates only its
    own sleep samples: the summed gradient is the single-device gradient on the global sleep set
    (`tfp_amortised.distributed`).

    Saving: `save("m.keras")` / `keras.models.load_model` and the `BackupAndRestore` / `ModelCheckpoint`
    callbacks keep the weights, the ridge hyperparameters, the optimiser state and the sleep seed state, so a
    restored learner continues the same run. `export(path)` writes a SavedModel for serving.

    Args:
      generative_model: a `GenerativeModel` (a Keras layer that owns the parameters and implements
        `joint_distribution()`).
      num_sleep: number `N >= 2` of sleep samples per step.
      form: `"joint"` or `"conditional"` surrogate.
      ridge: a `KernelRidge` layer; default `KernelRidge()`.
      num_holdout: number of extra sleep samples held out of the regression for `ridge_r2`; 0 disables it.
      seed: integer seed of the sleep samples; the same seed, data and initial weights give the same run.

    #### Examples

    ```python
    learner = AmortisedLearner(GaussianMixtureModel(3, 2), num_sleep=1000)
    learner.compile(optimizer=keras.optimizers.Adam(1e-2))
    learner.fit(x_train, batch_size=100, epochs=20)
    learner.posterior_expectation(x_test, lambda sample: tf.one_hot(sample["z"], 3))  # [M, 3]
    ```
    """

    def __init__(self, generative_model, num_sleep=1000, form="joint", ridge=None, num_holdout=64, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        if not callable(getattr(generative_model, "joint_distribution", None)):
            raise TypeError(
                "generative_model must be a Keras layer with a joint_distribution() method (see GenerativeModel). "
                f"Received: generative_model of type {type(generative_model).__name__}")
        _check_num_sleep(num_sleep)
        _check_form(form)
        if not (isinstance(num_holdout, int) and num_holdout >= 0):
            raise ValueError(f"num_holdout must be a non-negative integer. Received: num_holdout={num_holdout!r}")
        self.generative_model = generative_model
        self.observed = getattr(generative_model, "observed", "x")
        _joint.check_observed(generative_model.joint_distribution(), self.observed)
        self.num_sleep, self.form, self.num_holdout, self.seed = num_sleep, form, num_holdout, seed
        self.ridge = KernelRidge() if ridge is None else ridge
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name) for name in ("loss", "bandwidth", "ridge_r2", "jitter")}
        self.built = True

    @property
    def metrics(self):
        return list(self.trackers.values())

    def joint_distribution(self):
        """The generative model's current `tfd.JointDistribution`."""
        return self.generative_model.joint_distribution()

    def sample(self, num_samples, seed=None):
        """Draws `num_samples` from the model: dict `{node name: Tensor[num_samples, *event_shape]}`."""
        return sleep(self.joint_distribution(), num_samples, self._next_seed(seed))

    def posterior_expectation(self, x, fn, num_sleep=None, seed=None):
        """Estimates `E[fn(z, x) | x_m]` for each row of `x`, with no encoder (regression on a sleep set).

        Args:
          x: `[M, *event_shape]` observations.
          fn: maps the sleep dict `{node name: Tensor[N, *event_shape]}` to `Tensor[N, ...]`.
          num_sleep: size of the sleep set; default the learner's `num_sleep`.
          seed: stateless seed; default the learner's seed generator.

        Returns:
          `Tensor[M, ...]`: `sum_n alpha_n(x_m) fn(sleep)_n`.
        """
        sample = self.sample(num_sleep or self.num_sleep, seed)
        x = check_wake_x(x, sample[self.observed], self.observed)
        return ridge_expectation(flatten_events(sample[self.observed]), flatten_events(x), fn(sample), self.ridge)

    def train_step(self, data):
        wake_x = _wake_batch(data)
        seed = self.seed_generator.next()
        with tf.GradientTape() as tape:
            terms = self._surrogate_terms(wake_x, seed)
        gradients = _finite_or_zero(tape.gradient(terms["loss"], self.trainable_variables))
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._update_metrics(terms)

    def test_step(self, data):
        return self._update_metrics(self._surrogate_terms(_wake_batch(data), self.seed_generator.next()))

    def fit(self, x=None, *args, **kwargs):
        """`keras.Model.fit`, after checking array data (finite, shape and dtype of the observed node) and that
        the wake batch is no larger than the sleep set (`num_sleep >= batch_size`)."""
        self._check_data(x, "x")
        self._check_batch_size(x, args[1] if len(args) > 1 else kwargs.get("batch_size"))
        validation_data = kwargs.get("validation_data")
        self._check_data(validation_data[0] if isinstance(validation_data, tuple) else validation_data,
                         "validation_data")
        return super().fit(x, *args, **kwargs)

    def export(self, filepath, num_sleep=None, seed=(0, 0), verbose=False):
        """Writes a TensorFlow SavedModel with endpoints `sample`, `log_joint` and `posterior_mean`.

        See `tfp_amortised.export.export_learner`; the SavedModel needs only TensorFlow to load.
        """
        export_learner(self, filepath, num_sleep=num_sleep, seed=seed, verbose=verbose)

    def save_own_variables(self, store):
        """Keras saving hook: also stores the sleep seed state, so a restored learner continues its seed stream."""
        super().save_own_variables(store)
        store[_SEED_STATE] = self.seed_generator.state

    def load_own_variables(self, store):
        """Keras loading hook: restores the sleep seed state (absent from files written before it was saved)."""
        keys = list(store.keys())
        if _SEED_STATE in keys:
            self.seed_generator.state.assign(store[_SEED_STATE])
        super().load_own_variables({key: store[key] for key in keys if key != _SEED_STATE})

    def get_config(self):
        return {
            **super().get_config(),
            "generative_model": keras.saving.serialize_keras_object(self.generative_model),
            "num_sleep": self.num_sleep, "form": self.form, "num_holdout": self.num_holdout, "seed": self.seed,
            "ridge": keras.saving.serialize_keras_object(self.ridge),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["generative_model"] = keras.saving.deserialize_keras_object(config["generative_model"])
        config["ridge"] = keras.saving.deserialize_keras_object(config["ridge"])
        return cls(**config)

    def _surrogate_terms(self, wake_x, seed):
        """Builds the model in the caller's tape; returns this replica's loss share and the diagnostics.

        Under a `tf.distribute` strategy with `R` replicas this replica draws `num_sleep / R` sleep samples
        (seed folded with its id), the sleep and wake observations are all-gathered so every replica solves
        the same global ridge regression, and `loss` is this replica's share of the global loss, differentiated
        through its own sleep samples only (see `tfp_amortised.distributed`). With one replica, `surrogate` is
        the `[M]` surrogate of `surrogate_log_marginal` and `loss = -mean(surrogate)`.

        Returns:
          dict with `surrogate: [M]` (this replica's part, for the `M` wake points of all replicas), `loss`
          (scalar, to differentiate), `total_loss` (scalar, the global loss, detached) and, when
          `num_holdout > 0`, `ridge_r2`.
        """
        joint = self.joint_distribution()
        num_local = distributed.local_num_sleep(self.num_sleep)
        with tf.name_scope("sleep"):
            sample = sleep(joint, num_local + self.num_holdout, distributed.replica_seed(seed))
        fit = {name: value[:num_local] for name, value in sample.items()}
        wake_x = tf.cast(check_wake_x(wake_x, sample[self.observed], self.observed), sample[self.observed].dtype)
        wake_x = tf.ensure_shape(wake_x, [None, *sample[self.observed].shape[1:]])  # distributed batches lose it
        queries = tf.concat([wake_x, sample[self.observed][num_local:]], axis=0)  # wake, then held-out sleep
        weights = self._ridge_weights(distributed.gather(fit[self.observed]), queries)  # [M_r + H, N]
        num_wake = tf.shape(wake_x)[0]
        all_weights = distributed.gather(weights[:num_wake])  # [M, N]: every replica's wake rows
        # One pass of the log-density over the local sleep and held-out samples serves the joint-form
        # surrogate and the R^2 diagnostic.
        log_joint = _joint.log_prob(joint, sample) if self.form == "joint" or self.num_holdout else None
        surrogate = weighted_log_joint(joint, fit, distributed.own_columns(all_weights, num_local),
                                       distributed.gather(wake_x), observed=self.observed, form=self.form,
                                       sleep_log_joint=None if log_joint is None else log_joint[:num_local])
        loss = -tf.reduce_sum(surrogate) / tf.cast(tf.shape(surrogate)[0], surrogate.dtype)
        terms = {"surrogate": surrogate, "loss": loss, "total_loss": distributed.total(tf.stop_gradient(loss))}
        if self.num_holdout:
            fitted = distributed.gather(log_joint[:num_local])  # [N] sleep log-joint of every replica
            terms["ridge_r2"] = _holdout_r2(fitted, log_joint[num_local:], weights[num_wake:])
        return terms

    def _ridge_weights(self, sleep_x, query_x):
        return self.ridge(flatten_events(sleep_x), flatten_events(query_x))

    def _update_metrics(self, terms):
        self.trackers["loss"].update_state(terms["total_loss"])
        self.trackers["bandwidth"].update_state(self.ridge.bandwidth)
        self.trackers["jitter"].update_state(self.ridge.jitter)
        if "ridge_r2" in terms:
            self.trackers["ridge_r2"].update_state(terms["ridge_r2"])
        return distributed.as_logs({name: tracker.result() for name, tracker in self.trackers.items()})

    def _next_seed(self, seed):
        return self.seed_generator.next() if seed is None else seed

    def _check_data(self, data, argument):
        if not isinstance(data, (np.ndarray, tf.Tensor)):
            return  # datasets and generators are checked batch by batch, at trace time, by `check_wake_x`
        reference = self.sample(2, seed=[0, 0])[self.observed]
        try:
            check_wake_x(data, reference, self.observed)
        except (ValueError, TypeError) as error:
            raise type(error)(f"{argument}: {error}") from None

    def _check_batch_size(self, data, batch_size):
        if not isinstance(data, (np.ndarray, tf.Tensor)):
            return
        batch = min(32 if batch_size is None else batch_size, data.shape[0])  # Keras' default batch_size is 32
        if batch > self.num_sleep:
            raise ValueError(
                f"num_sleep={self.num_sleep} is smaller than the wake batch of {batch} observations: the ridge "
                f"regression from N sleep points to M wake points needs N >= M. Raise num_sleep or lower "
                f"batch_size. Received: batch_size={batch_size}")


def _wake_batch(data):
    """The observations of a `fit` batch: `x`, or the first element of `(x,)`, `(x, y)` or `(x, y, w)`."""
    return data[0] if isinstance(data, (tuple, list)) else data


def _holdout_r2(fitted, target, holdout_weights):
    """Out-of-sample R^2 of the ridge prediction of the sleep log-joint at held-out sleep points.

    Args:
      fitted: `Tensor[N]`, log-joint of the sleep samples the regression was fitted on.
      target: `Tensor[H]`, log-joint of the held-out sleep samples.
      holdout_weights: `Tensor[H, N]`, ridge weights at the held-out observations.
    """
    target = tf.stop_gradient(tf.cast(target, holdout_weights.dtype))
    fitted = tf.stop_gradient(tf.cast(fitted, holdout_weights.dtype))
    prediction = tf.linalg.matvec(holdout_weights, fitted)
    residual = tf.reduce_mean(tf.square(target - prediction))
    return 1. - residual / (tf.math.reduce_variance(target) + np.finfo(np.float32).tiny)


def _finite_or_zero(gradients):
    """The gradients, or zeros for all of them when any is NaN or infinite: a failed step never writes NaN."""
    checks = [tf.reduce_all(tf.math.is_finite(g)) for g in gradients if g is not None]
    if not checks:
        return gradients
    finite = tf.reduce_all(checks)
    return [g if g is None else tf.where(finite, g, tf.zeros_like(g)) for g in gradients]
