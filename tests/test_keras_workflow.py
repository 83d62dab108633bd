"""The Keras workflow on models written as the README shows: the log_likelihood metric and callbacks monitoring it,
predict, TensorBoard, batches larger than the sleep set, column observations, and encoder checks (issue 14)."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from tensorboard.backend.event_processing import event_accumulator

import tfp_amortised
from tfp_amortised import AmortisedLearner, GenerativeModel, KernelRidge, amortised_step, prior_log_likelihood, sleep
from tfp_amortised.baselines import MeanFieldEncoder, VariationalLearner

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root


class Mixture(GenerativeModel):
    """The README's model: z ~ Categorical(pi), x | z ~ N(mu_z, I)."""

    def __init__(self, num_components, data_dim, **kwargs):
        super().__init__(**kwargs)
        self.logits = self.add_weight(shape=(num_components,), initializer="zeros", name="logits")
        self.means = self.add_weight(shape=(num_components, data_dim), initializer="random_normal", name="means")

    def joint_distribution(self):
        logits, means = self.logits.value, self.means.value

        def model():
            z = yield Root(tfd.Categorical(logits=logits, name="z"))
            yield tfd.Independent(tfd.Normal(tf.gather(means, z), 1.), 1, name="x")

        return tfd.JointDistributionCoroutine(model)


def mixture_log_marginal(model, x):
    """Exact `log p(x)` of `Mixture` by logsumexp: `[M]`."""
    components = tfd.Independent(tfd.Normal(model.means.value, 1.), 1).log_prob(x[:, None])
    return tf.reduce_logsumexp(tf.nn.log_softmax(model.logits.value) + components, axis=-1)


def mixture_responsibilities(model, x):
    components = tfd.Independent(tfd.Normal(model.means.value, 1.), 1).log_prob(x[:, None])
    return tf.nn.softmax(tf.nn.log_softmax(model.logits.value) + components, axis=-1)


class ExactMixture(Mixture):
    """The same model with its exact `log_marginal`, as the README's model contract allows."""

    def log_marginal(self, x):
        return mixture_log_marginal(self, x)


class Location(GenerativeModel):
    """z ~ N(0, I), x | z ~ N(loc + z, scale^2 I) with a constrained (positive) scale.

    Exact: x ~ N(loc, (1 + scale^2) I) and E[z | x] = (x - loc) / (1 + scale^2)."""

    def __init__(self, data_dim, **kwargs):
        super().__init__(**kwargs)
        self.loc = self.add_weight(shape=(data_dim,), initializer="zeros", name="loc")
        self.scale = self.add_constrained_weight("scale", 1.0)

    def joint_distribution(self):
        loc, scale = self.loc.value, self.scale

        def model():
            z = yield Root(tfd.Sample(tfd.Normal(0., 1.), tf.shape(loc), name="z"))
            yield tfd.Independent(tfd.Normal(loc + z, scale), 1, name="x")

        return tfd.JointDistributionCoroutine(model)

    def exact_log_marginal(self, x):
        return tfd.Independent(tfd.Normal(self.loc.value, tf.sqrt(1. + tf.square(self.scale))), 1).log_prob(x)


def _mixture(seed=0):
    model = Mixture(3, 2)
    model.means.assign([[-3., 0.], [0., 3.], [3., 0.]])
    model.logits.assign([0., 0.5, -0.5])
    return model


# --- log_likelihood ---------------------------------------------------------------------------------------------


def test_prior_log_likelihood_matches_the_exact_log_marginal_within_monte_carlo_error():
    model = _mixture()
    x = sleep(model.joint_distribution(), 50, [1, 2])["x"]
    num_sleep = 4000
    sample = sleep(model.joint_distribution(), num_sleep, [3, 4])
    estimate = prior_log_likelihood(model.joint_distribution(), sample, x)
    exact = mixture_log_marginal(model, x)
    # Delta method: the standard error of log mean_n w_n is std(w) / (sqrt(N) mean(w)), w_n = p(x_m | z_n).
    w = tf.exp(tfd.Independent(tfd.Normal(tf.gather(model.means, sample["z"]), 1.), 1).log_prob(x[:, None]))
    standard_error = tf.math.reduce_std(w, -1) / (np.sqrt(num_sleep) * tf.reduce_mean(w, -1))
    assert estimate.shape == [50]
    assert np.all(np.abs(estimate - exact) < 4. * standard_error + 1e-5)
    assert float(tf.reduce_mean(standard_error)) < 0.03  # an informative comparison


def test_amortised_step_logs_the_estimate_only_when_asked():
    model = _mixture()
    x = sleep(model.joint_distribution(), 20, [1, 2])["x"]
    step = amortised_step(model.joint_distribution, x, num_sleep=500, seed=[5, 6], num_holdout=16,
                          log_likelihood=True)
    # The step's estimate uses its N + H sleep samples, drawn with its seed.
    sample = sleep(model.joint_distribution(), 516, [5, 6])
    np.testing.assert_allclose(step.diagnostics["log_likelihood"],
                               tf.reduce_mean(prior_log_likelihood(model.joint_distribution(), sample, x)), rtol=1e-6)
    assert "log_likelihood" not in amortised_step(model.joint_distribution, x, num_sleep=500, seed=[5, 6]).diagnostics


class _ExactAtEpochEnd(keras.callbacks.Callback):
    """Records the exact mean log-likelihood of the validation data at every epoch's end, and the weights."""

    def __init__(self, x_val):
        super().__init__()
        self.x_val, self.exact, self.weights = x_val, [], []

    def on_epoch_end(self, epoch, logs=None):
        model = self.model.generative_model
        self.exact.append(float(tf.reduce_mean(mixture_log_marginal(model, self.x_val))))
        self.weights.append([w.numpy() for w in model.weights])


def _shifted_data():
    """Training data from a mixture shifted by +4 along the first axis, validation data from the unshifted one:
    from means started at -4, training moves the means through the validation optimum and past it, so the
    validation log-likelihood rises and then falls."""
    truth = _mixture()
    x_val = sleep(truth.joint_distribution(), 300, [7, 8])["x"].numpy()
    x_train = sleep(truth.joint_distribution(), 1000, [9, 10])["x"].numpy() + np.array([4., 0.], np.float32)
    return x_train, x_val


def _start_at(offset):
    model = _mixture()
    model.means.assign(model.means + np.array([offset, 0.], np.float32))
    return model


@pytest.mark.parametrize("model_class", [Mixture, ExactMixture])
def test_fit_logs_a_log_likelihood_that_tracks_the_exact_one(model_class):
    x_train, x_val = _shifted_data()
    model = model_class(3, 2)
    model.set_weights(_start_at(-4.).get_weights())
    learner = AmortisedLearner(model, num_sleep=1000, form="conditional", seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(0.1))
    exact = _ExactAtEpochEnd(x_val)
    history = learner.fit(x_train, batch_size=100, epochs=6, validation_data=x_val, callbacks=[exact], verbose=0)
    logged = np.array(history.history["val_log_likelihood"])
    if model_class is ExactMixture:  # the model's exact log_marginal, on the epoch-end weights
        np.testing.assert_allclose(logged, exact.exact, rtol=1e-5)
    else:  # prior importance sampling over the 1064 sleep latents of each validation batch: measured errors up to
        # 0.17 nats (a component's share of the draws is off by its binomial error, shared by the points it explains)
        np.testing.assert_allclose(logged, exact.exact, atol=0.3)
        assert np.argmax(logged) == np.argmax(exact.exact)
    assert np.ptp(exact.exact) > 1.5  # the curve moves by far more than the estimate's error (measured 2.09)
    # Training logs the exact value only: the estimate costs M (N + H) more likelihood terms a step.
    assert ("log_likelihood" in history.history) == (model_class is ExactMixture) and "loss" in history.history


class NoClosedFormMixture(Mixture):
    """A model whose `log_marginal` exists but has no closed form in this configuration (as `ImageDecoderModel`
    with a deep decoder): it raises a ValueError."""

    def log_marginal(self, x):
        raise ValueError("no closed form for this configuration")


def test_a_log_marginal_that_raises_leaves_the_estimate_in_its_place():
    model = NoClosedFormMixture(3, 2)
    model.set_weights(_mixture().get_weights())
    x = sleep(model.joint_distribution(), 100, [1, 2])["x"]
    learner = AmortisedLearner(model, num_sleep=2000, seed=0, form="joint", regression=KernelRidge())
    _, logs = learner.objective(x, tf.constant([3, 4]), training=False)
    # Measured errors of at most 0.003 nats over three step seeds against the exact mean (2064 prior draws).
    np.testing.assert_allclose(logs["log_likelihood"], tf.reduce_mean(mixture_log_marginal(model, x)), atol=0.05)


def test_early_stopping_and_checkpoint_select_the_best_epoch_on_val_log_likelihood(tmp_path):
    x_train, x_val = _shifted_data()
    model = _start_at(-4.)
    learner = AmortisedLearner(model, num_sleep=1000, form="conditional", seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(0.05))  # measured: the validation fit peaks at epoch 4 of 12
    exact = _ExactAtEpochEnd(x_val)
    path = str(tmp_path / "best.keras")
    history = learner.fit(x_train, batch_size=100, epochs=30, validation_data=x_val, verbose=0, callbacks=[
        exact,
        keras.callbacks.EarlyStopping(monitor="val_log_likelihood", mode="max", patience=2, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(path, monitor="val_log_likelihood", mode="max", save_best_only=True)])
    logged = history.history["val_log_likelihood"]
    best = int(np.argmax(exact.exact))
    assert 0 < best < len(exact.exact) - 1  # the validation fit rose, then fell
    assert int(np.argmax(logged)) == best
    assert len(logged) == best + 3 < 30  # stopped after `patience` epochs without improvement
    best_weights = exact.weights[best]
    for restored, kept in zip(model.weights, best_weights):
        np.testing.assert_array_equal(restored.numpy(), kept)  # restore_best_weights
    saved = keras.models.load_model(path, custom_objects={"Mixture": Mixture})
    for saved_weight, kept in zip(saved.generative_model.weights, best_weights):
        np.testing.assert_array_equal(saved_weight.numpy(), kept)  # save_best_only kept the best epoch


# --- predict ----------------------------------------------------------------------------------------------------


def test_predict_gives_the_exact_posterior_responsibilities_of_a_user_mixture():
    model = _mixture()
    x = sleep(model.joint_distribution(), 200, [1, 2])["x"]
    exact = mixture_responsibilities(model, x)
    # A fixed bandwidth near the clusters' scale: the median heuristic (about 4 here) over-smooths the
    # responsibilities (measured mean absolute error 0.07 with it, for predict and posterior_expectation alike).
    learner = AmortisedLearner(model, num_sleep=2000, seed=0, regression=tfp_amortised.KernelRidge(bandwidth=1.))
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(64)
    for estimate in (learner.predict(x.numpy(), batch_size=64, verbose=0), learner.predict(dataset, verbose=0),
                     learner.predict_on_batch(x), learner(x)):
        assert set(estimate) == {"z_probabilities"}
        probabilities = np.asarray(estimate["z_probabilities"])
        assert probabilities.shape == (200, 3)
        # Measured mean absolute error 0.016-0.019 for the four routes (N = 2000).
        assert np.mean(np.abs(probabilities - exact)) < 0.04
        assert np.mean(np.argmax(probabilities, 1) == np.argmax(exact, 1)) > 0.95


def test_predict_gives_the_exact_posterior_mean_of_a_continuous_latent():
    model = Location(2)
    model.loc.assign([1., -2.])
    model.scale.assign(0.5)
    x = sleep(model.joint_distribution(), 100, [1, 2])["x"]
    exact = (x - model.loc) / (1. + 0.25)
    learner = AmortisedLearner(model, num_sleep=2000, seed=0, form="joint", regression=KernelRidge())
    estimate = learner.predict(x.numpy(), batch_size=50, verbose=0)
    assert set(estimate) == {"z"} and estimate["z"].shape == (100, 2)
    # Measured root-mean-square error 0.09 against a posterior standard deviation of 0.45.
    assert float(tf.sqrt(tf.reduce_mean(tf.square(estimate["z"] - exact)))) < 0.15


# --- TensorBoard ------------------------------------------------------------------------------------------------


def test_tensorboard_event_files_hold_the_metrics_hyperparameters_and_sleep_histograms(tmp_path):
    model = _mixture()
    x = sleep(model.joint_distribution(), 200, [1, 2])["x"].numpy()
    learner = AmortisedLearner(model, num_sleep=200, seed=0, form="conditional",
                               regression=tfp_amortised.KernelRidge(bandwidth=1.5, ridge=1e-2))
    learner.compile(optimizer=keras.optimizers.Adam(0.01))
    history = learner.fit(x, batch_size=100, epochs=2, validation_data=x[:100], verbose=0,
                          callbacks=[tfp_amortised.TensorBoard(str(tmp_path), num_samples=300)])

    def load(run):
        scalars, histograms = {}, {}
        for path in glob.glob(str(tmp_path / run / "events.out.tfevents.*")):
            events = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
            events.Reload()
            for tag in events.Tags()["tensors"]:
                for event in events.Tensors(tag):
                    value = tf.make_ndarray(event.tensor_proto)
                    (histograms if value.ndim else scalars).setdefault(tag, []).append(value)
        return scalars, histograms

    train, train_histograms = load("train")
    validation, _ = load("validation")
    for name in ("loss", "bandwidth"):
        np.testing.assert_allclose(train[f"epoch_{name}"], history.history[name], rtol=1e-6)
    for name in ("log_likelihood", "loss", "bandwidth", "ridge_r2"):
        np.testing.assert_allclose(validation[f"epoch_{name}"], history.history[f"val_{name}"], rtol=1e-6)
    # This model has no exact log_marginal, and its regression is fixed (in a given form; the "auto" form measures
    # the held-out error at every step): both are measured in validation only.
    assert "epoch_log_likelihood" not in train and "epoch_ridge_r2" not in train
    np.testing.assert_allclose(train["regression/ridge"], [1e-2, 1e-2], rtol=1e-6)
    np.testing.assert_allclose(train["regression/bandwidth"], [1.5, 1.5], rtol=1e-6)
    for node in ("z", "x"):
        assert len(train_histograms[f"sleep/{node}"]) == 2  # one per epoch
    histogram = train_histograms["sleep/x"][-1]  # [bucket, (left edge, right edge, count)]
    x_sample = sleep(model.joint_distribution(), 300, [1, 0])["x"]  # the last epoch's draw: seed [epoch, 0]
    assert histogram[:, 2].sum() == 600  # 300 samples of a 2-vector
    np.testing.assert_allclose([histogram[0, 0], histogram[-1, 1]],
                               [tf.reduce_min(x_sample), tf.reduce_max(x_sample)], rtol=1e-6)


# --- smaller points ---------------------------------------------------------------------------------------------


def test_fit_takes_a_wake_batch_larger_than_the_sleep_set():
    # One SGD step at learning rate 1 on a batch of 64 with N = 32 sleep samples applies minus the gradient of the
    # step's loss: the regression needs no N >= M.
    model = _mixture()
    x = sleep(model.joint_distribution(), 64, [1, 2])["x"]
    seed = keras.random.SeedGenerator(3).next()
    with tf.GradientTape() as tape:
        loss = amortised_step(model.joint_distribution, x, num_sleep=32, seed=seed, form="conditional",
                              num_holdout=0).loss
    gradients = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
    before = [v.numpy() for v in model.trainable_variables]
    learner = AmortisedLearner(model, num_sleep=32, num_holdout=0, form="conditional", seed=3, regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.SGD(1.))
    history = learner.fit(x.numpy(), batch_size=64, epochs=1, shuffle=False, verbose=0)
    assert history.history["skipped_steps"] == [0.]
    for old, new, gradient in zip(before, model.trainable_variables, gradients):
        np.testing.assert_allclose(old - new.numpy(), gradient, rtol=1e-5, atol=1e-6)


class Scalar(GenerativeModel):
    """z ~ N(0, 1), x | z ~ N(loc + z, 1): a scalar observed node."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loc = self.add_weight(shape=(), initializer="zeros", name="loc")

    def joint_distribution(self):
        loc = self.loc.value

        def model():
            z = yield Root(tfd.Normal(0., 1., name="z"))
            yield tfd.Normal(loc + z, 1., name="x")

        return tfd.JointDistributionCoroutine(model)


def test_a_column_of_observations_of_a_scalar_node_is_squeezed():
    x = np.linspace(-2., 4., 60).astype(np.float32)
    runs = []
    for data in (x, x[:, None]):
        learner = AmortisedLearner(Scalar(), num_sleep=100, seed=1, form="joint", regression=KernelRidge())
        learner.compile(optimizer=keras.optimizers.SGD(0.1))
        history = learner.fit(data, batch_size=20, epochs=2, shuffle=False, verbose=0)
        runs.append((float(learner.generative_model.loc), history.history["loss"],
                     learner.predict(data, verbose=0)["z"]))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert runs[0][0] > 0.1  # moved towards the data mean, 1
    assert runs[1][2].shape == (60,)
    np.testing.assert_array_equal(runs[0][2], runs[1][2])
    with pytest.raises(ValueError, match=r"shape \[M\]: .*Received: wake_x.shape=\(60, 2\)"):
        learner.fit(np.zeros([60, 2], np.float32), verbose=0)


class BinaryFactors(GenerativeModel):
    """h ~ Bernoulli(0.5)^3, x | h ~ N(W h, I): binary latents."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loadings = self.add_weight(shape=(3, 4), initializer="random_normal", name="loadings")

    def joint_distribution(self):
        loadings = self.loadings.value

        def model():
            h = yield Root(tfd.Independent(tfd.Bernoulli(logits=tf.zeros(3), dtype=tf.float32), 1, name="h"))
            yield tfd.Independent(tfd.Normal(tf.linalg.matvec(loadings, h, transpose_a=True), 1.), 1, name="x")

        return tfd.JointDistributionCoroutine(model)


def test_a_gaussian_encoder_for_binary_latents_is_refused_naming_the_latent():
    with pytest.raises(ValueError, match=r"latent 'h' is discrete \(Bernoulli\).*Received: encoder distribution "
                                         r"Normal for 'h'"):
        VariationalLearner(BinaryFactors(), MeanFieldEncoder({"h": ("normal", 3)}))
    with pytest.raises(ValueError, match=r"latent 'h' the model's dtype and event shape \(float32, \(3,\)\). "
                                         r"Received: int32, \(\)"):
        VariationalLearner(BinaryFactors(), MeanFieldEncoder({"h": ("categorical", 3)}))
