"""AmortisedLearner: learning, compiled steps, posterior expectations and input checks through `fit`."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import KernelRidge, amortised_step, surrogate_log_marginal
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel, GaussianMixtureModel

tfd = tfp.distributions

TRUE_MEANS = np.array([[-3., 0.], [0., 3.], [3., 0.]], np.float32)


def _mixture_data(num_points, seed=(1, 2)):
    truth = GaussianMixtureModel(num_components=3, data_dim=2, scale=0.5)
    truth.means.assign(TRUE_MEANS)
    return truth, truth.joint_distribution().sample(num_points, seed=seed)[1].numpy()


def _best_permutation_error(learned, true):
    """Largest coordinate error of the learned means under the best matching of components."""
    return min(np.abs(learned[list(p)] - true).max() for p in itertools.permutations(range(len(true))))


def test_fit_recovers_mixture_parameters():
    # 2000 points from 3 well-separated components: the maximum-likelihood means are within about
    # 0.5 / sqrt(667) = 0.02 of the truth, so 0.2 bounds the amortised estimate's remaining bias and noise
    # after 8 epochs (measured: 0.12 on the means, 0.505 for sigma).
    _, x = _mixture_data(2000)
    model = GaussianMixtureModel(num_components=3, data_dim=2, scale=1., seed=5)
    learner = AmortisedLearner(model, num_sleep=500, form="conditional", seed=3)
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    history = learner.fit(x, batch_size=100, epochs=8, verbose=0)
    assert _best_permutation_error(model.means.numpy(), TRUE_MEANS) < 0.2
    assert abs(float(model.scale) - 0.5) < 0.1
    np.testing.assert_allclose(tf.nn.softmax(model.logits), np.full(3, 1. / 3.), atol=0.06)
    # Training logs what the update computes: the default regression learns on its held-out error, so R^2 is
    # logged (a fixed regression's is an evaluation metric only: test_keras_workflow).
    assert set(history.history) == {"loss", "log_likelihood", "bandwidth", "ridge_r2", "jitter", "condition",
                                    "skipped_steps", "invalid_batches"}
    assert history.history["skipped_steps"] == [0.] * 8
    assert history.history["loss"][-1] < history.history["loss"][0]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_one_step_moves_along_the_exact_gradient(jit_compile):
    # With SGD at learning rate 1, one step adds the estimated mean gradient of log p(x) to the parameters.
    # Exact: autodiff of the closed-form factor-analysis marginal. N = 2000: the per-point estimate is within
    # 10% (test_estimator), but the ridge's shrinkage bias shares a direction across points, so the mean
    # gradient's error does not average away: measured 0.12 (tf.function) and 0.17 (XLA, whose float32
    # Cholesky rounds differently). A wrong sign gives about 2, a lost term about 1.
    model = FactorAnalysisModel(latent_dim=1, data_dim=2, seed=1)
    x = model.joint_distribution().sample(50, seed=(3, 4))[1]
    with tf.GradientTape() as tape:
        mean_log_marginal = tf.reduce_mean(model.log_marginal(x))
    exact = tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(mean_log_marginal, model.trainable_variables)], 0)
    before = tf.concat([tf.reshape(v, [-1]) for v in model.trainable_variables], 0)
    learner = AmortisedLearner(model, num_sleep=2000, form="conditional", seed=0)
    learner.compile(optimizer=keras.optimizers.SGD(1.), jit_compile=jit_compile)
    learner.fit(x, batch_size=50, epochs=1, verbose=0, shuffle=False)
    step = tf.concat([tf.reshape(v, [-1]) for v in model.trainable_variables], 0) - before
    assert float(tf.norm(step - exact) / tf.norm(exact)) < 0.25


def test_train_step_is_traced_once():
    model = GaussianMixtureModel(num_components=3, data_dim=2, seed=5)
    builds = []
    joint_distribution = model.joint_distribution
    # Python side effects inside a tf.function run only while it is traced.
    model.joint_distribution = lambda: (tf.inside_function() and builds.append(1)) or joint_distribution()
    learner = AmortisedLearner(model, num_sleep=100, seed=3, form="joint", regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.Adam(0.01))
    _, x = _mixture_data(200)
    learner.fit(x, batch_size=50, epochs=1, verbose=0)
    after_first_epoch = len(builds)
    learner.fit(x, batch_size=50, epochs=3, verbose=0)
    assert after_first_epoch >= 1
    assert len(builds) == after_first_epoch  # no retrace in later epochs or a second fit


def test_posterior_expectation_matches_exact_responsibilities():
    # E[one_hot(z) | x] are the mixture responsibilities, exact by Bayes' rule. With N = 2000 sleep draws,
    # measured over three sleep seeds: mean absolute error 0.040, largest 0.116, every point's most probable
    # component right.
    truth, x = _mixture_data(20, seed=(5, 6))
    learner = AmortisedLearner(truth, num_sleep=2000, seed=1, form="joint", regression=KernelRidge())
    estimate = learner.posterior_expectation(x, lambda sample: tf.one_hot(sample["z"], 3))
    components = truth.marginal().components_distribution.log_prob(x[:, None, :])
    exact = tf.nn.softmax(tf.nn.log_softmax(truth.logits) + components, axis=-1)
    assert estimate.shape == [20, 3]
    errors = np.abs(estimate - exact)
    assert errors.mean() < 0.06 and errors.max() < 0.2
    np.testing.assert_array_equal(np.argmax(estimate, 1), np.argmax(exact, 1))


def test_sample_shapes_and_seeds():
    learner = AmortisedLearner(GaussianMixtureModel(num_components=3, data_dim=2, seed=5), num_sleep=10)
    sample = learner.sample(7, seed=(1, 2))
    assert sample["z"].shape == [7] and sample["x"].shape == [7, 2]
    np.testing.assert_array_equal(learner.sample(7, seed=(1, 2))["x"], sample["x"])


def test_same_seed_same_run():
    _, x = _mixture_data(300)
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        model = GaussianMixtureModel(num_components=3, data_dim=2, seed=5)
        learner = AmortisedLearner(model, num_sleep=100, seed=7, form="joint", regression=KernelRidge())
        learner.compile(optimizer=keras.optimizers.Adam(0.05))
        learner.fit(x, batch_size=100, epochs=2, verbose=0, shuffle=False)
        runs.append(model.means.numpy())
    np.testing.assert_array_equal(runs[0], runs[1])


class TestBadInput:
    def _learner(self, **kwargs):
        learner = AmortisedLearner(GaussianMixtureModel(num_components=2, data_dim=3, seed=5), num_sleep=20,
                                   **kwargs)
        learner.compile(optimizer="adam")
        return learner

    @pytest.mark.parametrize("bad_value", [np.nan, np.inf])
    def test_non_finite_data_fails_before_training(self, bad_value):
        learner = self._learner()
        means = learner.generative_model.means.numpy()
        x = np.zeros([10, 3], np.float32)
        x[4, 1] = bad_value
        with pytest.raises(ValueError, match="x: wake_x contains NaN or infinite values"):
            learner.fit(x, epochs=1, verbose=0)
        np.testing.assert_array_equal(learner.generative_model.means.numpy(), means)

    def test_wrong_trailing_shape(self):
        with pytest.raises(ValueError, match=r"shape \[M, 3\].*Received: wake_x.shape=\(10, 4\)"):
            self._learner().fit(np.zeros([10, 4], np.float32), verbose=0)

    def test_wrong_dtype(self):
        with pytest.raises(TypeError, match="dtype=string"):
            self._learner().fit(tf.constant([["a", "b", "c"]]), verbose=0)

    def test_bad_validation_data(self):
        with pytest.raises(ValueError, match="validation_data: wake_x must have shape"):
            self._learner().fit(np.zeros([10, 3], np.float32), validation_data=(np.zeros([4, 2]),), verbose=0)

    def test_unknown_observed_node(self):
        model = GaussianMixtureModel(num_components=2, data_dim=3)
        model.observed = "y"
        with pytest.raises(ValueError, match=r"observed='y' is not a node.*\['z', 'x'\]"):
            AmortisedLearner(model)

    @pytest.mark.parametrize("num_sleep", [1, 0, -5, 10.])
    def test_num_sleep(self, num_sleep):
        with pytest.raises(ValueError, match=f"Received: num_sleep={num_sleep}"):
            AmortisedLearner(GaussianMixtureModel(num_components=2, data_dim=3), num_sleep=num_sleep)

    def test_not_a_generative_model(self):
        with pytest.raises(TypeError, match="Received: generative_model of type Dense"):
            AmortisedLearner(keras.layers.Dense(3))

    def test_bad_form(self):
        with pytest.raises(ValueError, match="Received: form='marginal'"):
            AmortisedLearner(GaussianMixtureModel(num_components=2, data_dim=3), form="marginal")


@pytest.mark.parametrize("intercept", [False, True])
def test_posterior_responsibilities_match_the_exact_posterior(intercept):
    model = GaussianMixtureModel(num_components=3, data_dim=2, seed=1)
    x = model.joint_distribution().sample(200, seed=[3, 4])[-1]
    components = tfd.Independent(tfd.Normal(model.means.value, model.scale), 1)
    exact = tf.nn.softmax(tf.nn.log_softmax(model.logits.value) + components.log_prob(x[:, None]), axis=-1)
    learner = AmortisedLearner(model, num_sleep=1000, regression=KernelRidge(intercept=intercept), seed=0)

    def responsibilities(points):
        return learner.posterior_expectation(points, lambda sample: tf.one_hot(sample["z"], 3), seed=[5, 6])

    # Measured mean absolute error 0.025 with or without the intercept (N = 1000).
    assert float(tf.reduce_mean(tf.abs(responsibilities(x) - exact))) < 0.04
    far_totals = tf.reduce_sum(responsibilities(x + 8.), axis=-1)  # no sleep sample comes near these points
    if intercept:  # each query's weights sum to one, so probabilities do too, near the data or far from it
        np.testing.assert_allclose(tf.reduce_sum(responsibilities(x), -1), 1., atol=1e-5)
        np.testing.assert_allclose(far_totals, 1., atol=1e-5)
    else:  # plain kernel ridge shrinks towards 0 away from the sleep observations
        assert float(tf.reduce_max(far_totals)) < 0.01


@pytest.mark.parametrize("form", ["joint", "conditional"])
@pytest.mark.parametrize("num_holdout", [0, 16])
def test_a_learner_step_is_the_surrogate_of_the_function_api(form, num_holdout):
    """`AmortisedLearner`'s first step uses the seed `SeedGenerator(seed).next()`: its loss is minus the mean of
    `surrogate_log_marginal` with that seed, and one SGD step at learning rate 1 moves the weights by minus the
    surrogate's gradient. Held-out samples are drawn after the regression's, so they change neither."""
    model = FactorAnalysisModel(latent_dim=1, data_dim=2, seed=1)
    x = model.joint_distribution().sample(40, seed=(3, 4))[1]
    regression = KernelRidge(kernel="matern52", ridge=1e-2)
    step_seed = keras.random.SeedGenerator(7).next()
    with tf.GradientTape() as tape:
        surrogate = surrogate_log_marginal(model.joint_distribution, x, num_sleep=200, seed=step_seed,
                                           regression=regression, form=form)
        loss = -tf.reduce_mean(surrogate)
    gradients = tape.gradient(loss, model.trainable_variables)

    learner = AmortisedLearner(model, num_sleep=200, form=form, regression=regression, num_holdout=num_holdout,
                               seed=7)
    learner_loss, logs = learner.objective(x, step_seed)
    if num_holdout == 0:
        np.testing.assert_array_equal(learner_loss, loss)  # the same function on the same draws
    else:  # the sleep draws of N + H samples share only the first N with a draw of N: compare the step itself
        step = amortised_step(model.joint_distribution, x, num_sleep=200, seed=step_seed, regression=regression,
                              form=form, num_holdout=num_holdout)
        np.testing.assert_array_equal(learner_loss, step.loss)
        assert set(step.diagnostics) == {"bandwidth", "jitter", "condition", "ridge_r2"}
        assert "ridge_r2" not in logs  # training: a fixed regression does not measure it
        evaluation_loss, evaluation_logs = learner.objective(x, step_seed, training=False)
        np.testing.assert_array_equal(evaluation_loss, step.loss)
        projected = amortised_step(model.joint_distribution, x, num_sleep=200, seed=step_seed, regression=regression,
                                   form=form, num_holdout=num_holdout, variables=model.trainable_variables)
        np.testing.assert_array_equal(evaluation_logs["ridge_r2"], projected.diagnostics["ridge_r2"])
        with tf.GradientTape() as tape:
            loss = amortised_step(model.joint_distribution, x, num_sleep=200, seed=step_seed, regression=regression,
                                  form=form, num_holdout=num_holdout).loss
        gradients = tape.gradient(loss, model.trainable_variables)
    before = [v.numpy() for v in model.trainable_variables]
    learner.compile(optimizer=keras.optimizers.SGD(1.))
    learner.fit(x, batch_size=40, epochs=1, shuffle=False, verbose=0)
    for old, new, gradient in zip(before, model.trainable_variables, gradients):
        np.testing.assert_allclose(old - new.numpy(), gradient, rtol=1e-5, atol=1e-6)  # tf.function vs eager


def test_a_gathered_weight_gets_the_dense_adam_update():
    """The mixture's means reach the log-density through a gather at sampled components: their gradient is an
    IndexedSlices with repeated indices. Adam's first step must be the dense one, `lr * g / (|g| + eps)`, i.e.
    +-lr for every entry with a gradient (0.1.0 behaviour; Keras' sparse Adam gave steps up to 3.6 lr)."""
    model = GaussianMixtureModel(num_components=3, data_dim=2, scale=1.5, seed=4)
    _, x = _mixture_data(100)
    learner = AmortisedLearner(model, num_sleep=500, form="conditional", seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    before = model.means.numpy()
    learner.train_on_batch(x)
    np.testing.assert_allclose(np.abs(model.means.numpy() - before), 0.05, rtol=1e-3)
