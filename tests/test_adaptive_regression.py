"""The regression adapts: learned bandwidth and lambda (`KernelRidge(learn=True)`), ARD length scales, and the
held-out objective they minimise (`regression_loss` of `amortised_step`), against exact answers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised import AmortisedLearner, KernelRidge, amortised_step
from tfp_amortised.estimator import gradient_projections, held_out_targets, regression_loss, split_half_variance
from tfp_amortised.evaluation import median_relative_error, per_point_gradients
from tfp_amortised.models import FactorAnalysisModel, GaussianMixtureModel
from tfp_amortised import ridge as ridge_module
from tfp_amortised.ridge import kernel_ridge_weights, nearest_neighbour_distance

COMPILE = {"eager": lambda fn: fn, "function": tf.function, "xla": lambda fn: tf.function(fn, jit_compile=True)}


def _mixture(seed=1):
    """A 1-D five-component mixture at its true parameters (means -6..6, scale 0.8) and 100 of its points."""
    model = GaussianMixtureModel(5, 1, scale=0.8, seed=seed)
    model.means.assign(np.linspace(-6., 6., 5)[:, None])
    return model, model.joint_distribution().sample(100, seed=[seed, 0])[1]


def test_gradient_projections_are_jacobian_vector_products():
    model = FactorAnalysisModel(2, 3, seed=1)
    sample = model.joint_distribution().sample(7, seed=[1, 2])
    named = {"z": sample[0], "x": sample[1]}
    projections = gradient_projections(model.joint_distribution, named, model.trainable_variables, [3, 4],
                                       num_projections=3)
    with tf.GradientTape() as tape:
        log_joint = model.joint_distribution().log_prob(sample)
    jacobian = tf.concat([tf.reshape(j, [7, -1]) for j in tape.jacobian(log_joint, model.trainable_variables)], 1)
    # The same directions, rebuilt from the documented seeds: v_k ~ N(0, I) per variable.
    for k in range(3):
        seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in([3, 4], k), 3)
        direction = tf.concat([tf.reshape(tf.random.stateless_normal(v.shape, seeds[i]), [-1])
                               for i, v in enumerate(model.trainable_variables)], 0)
        np.testing.assert_allclose(projections[:, k], tf.linalg.matvec(jacobian, direction), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["joint", "conditional"])
def test_regression_loss_is_the_held_out_squared_error_written_out(form):
    model, x = _mixture()
    draws = model.joint_distribution().sample(40, seed=[5, 6])
    sample = {"z": draws[0], "x": draws[1]}
    fitted, target = held_out_targets(model.joint_distribution, {name: value[:30] for name, value in sample.items()},
                                      {name: value[30:] for name, value in sample.items()}, "x", form,
                                      model.trainable_variables, [7, 8])
    weights = KernelRidge(bandwidth=1.)(sample["x"][:30], sample["x"][30:])  # [10, 30]
    value = regression_loss(fitted, target, weights)
    fitted, target, weights = fitted.numpy(), target.numpy(), weights.numpy()
    if form == "joint":  # g_n(x_h) = g_n: [30, K]
        prediction = weights @ fitted
    else:  # g_n(x_h): [10, 30, K], each held-out row weighting its own paired values
        prediction = np.stack([weights[h] @ fitted[h] for h in range(10)])
    expected = np.mean(np.sum((target - prediction)**2, -1)) / np.sum(np.var(target, 0))
    np.testing.assert_allclose(value, expected, rtol=1e-5)


@pytest.mark.parametrize("bandwidth, ridge", [(0.4, 1e-6), (0.4, 1e-2), (1.5, 1e-4)])
def test_split_half_variance_is_the_variance_of_the_predictions_over_sleep_sets(bandwidth, ridge):
    """Its mean over sleep sets against the variance of the full-set predictions over 300 sleep sets (1-D
    regression of sin(2x) + noise, 20 fixed held-out points), both relative to the held-out targets' variance."""
    rng = np.random.default_rng(4)
    held_x = rng.normal(size=[20, 1])
    target = np.sin(2. * held_x) + 0.5 * rng.normal(size=[20, 1])
    regression = KernelRidge(bandwidth=bandwidth, ridge=ridge, dtype="float64")

    @tf.function
    def step(sleep_x, fitted):
        weights = regression(sleep_x, held_x)
        return weights @ fitted, split_half_variance(regression, sleep_x, held_x, fitted, target, weights)

    results = [step(sleep_x, np.sin(2. * sleep_x) + 0.5 * rng.normal(size=[200, 1]))
               for sleep_x in rng.normal(size=[300, 200, 1])]
    expected = np.mean(np.var(np.stack([prediction for prediction, _ in results]), axis=0)) / np.var(target)
    np.testing.assert_allclose(np.mean([float(estimate) for _, estimate in results]), expected, rtol=0.2)


@pytest.mark.parametrize("form", ["joint", "conditional"])
def test_the_learning_objective_discounts_the_variance_by_variance_weight(form):
    """`regression_loss` of the step is the held-out error less `(1 - w)` times the split-half variance: linear
    in `w`, with `ridge_r2` (the error itself) the same for every `w`."""
    model, x = _mixture()
    results = {}
    for weight in (0., 0.25, 1.):
        regression = KernelRidge(learn=True, bandwidth=1., variance_weight=weight)
        step = amortised_step(model.joint_distribution, x, num_sleep=200, seed=[2, 3], regression=regression,
                              form=form, num_holdout=32, variables=model.trainable_variables)
        results[weight] = float(step.regression_loss), float(step.diagnostics["ridge_r2"])
    np.testing.assert_allclose(results[1.][0], 1. - results[1.][1], rtol=1e-6)
    np.testing.assert_allclose([results[0.][1], results[0.25][1]], results[1.][1], rtol=1e-6)
    variance = results[1.][0] - results[0.][0]
    assert variance > 0.
    np.testing.assert_allclose(results[0.25][0], results[1.][0] - 0.75 * variance, rtol=1e-5)


def test_variance_weight_is_checked_saved_and_one_for_older_files():
    with pytest.raises(ValueError, match="Received: variance_weight=1.5"):
        KernelRidge(learn=True, variance_weight=1.5)
    with pytest.raises(ValueError, match="Received: variance_weight='low'"):
        KernelRidge(learn=True, variance_weight="low")
    assert KernelRidge(learn=True).variance_weight == 1.
    config = KernelRidge(learn=True, variance_weight=0.3).get_config()
    assert KernelRidge.from_config(config).variance_weight == 0.3
    del config["variance_weight"]  # a layer saved before the argument existed learned on the squared error
    assert KernelRidge.from_config(config).variance_weight == 1.


@pytest.mark.parametrize("solver", ["cholesky", "random_features", "nystrom"])
@pytest.mark.parametrize("parameter", ["log_bandwidth", "log_ridge"])
def test_regression_loss_gradient_matches_finite_differences(parameter, solver):
    """The hyperparameter gradient through each solver (exact; 64 random features, whose frequencies scale with
    the bandwidth; 16 Nystrom inducing points), in float64, against central differences."""
    rng = np.random.default_rng(3)
    sleep_x, held_x = rng.normal(size=[60, 2]), rng.normal(size=[20, 2])
    fitted = np.sin(2. * sleep_x[:, :1]) + 0.1 * rng.normal(size=[60, 1])
    target = np.sin(2. * held_x[:, :1]) + 0.1 * rng.normal(size=[20, 1])
    regression = KernelRidge(learn=True, bandwidth=0.7, ridge=0.1, dtype="float64", solver=solver, num_features=64,
                             num_inducing=16)
    regression.log_ridge.assign(np.log(1e-2))  # below the cap (the starting ridge 0.1), where lambda is smooth
    variable = getattr(regression, parameter)

    def loss():
        return regression_loss(fitted, target, regression(sleep_x, held_x))

    with tf.GradientTape() as tape:
        value = loss()
    gradient = float(tape.gradient(value, variable))
    start, step = float(variable), 1e-5
    variable.assign(start + step)
    above = float(loss())
    variable.assign(start - step)
    below = float(loss())
    variable.assign(start)
    np.testing.assert_allclose(gradient, (above - below) / (2. * step), rtol=1e-5)
    assert abs(gradient) > 1e-3  # the loss depends on it at this point


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_the_step_with_a_learning_regression_is_the_same_eager_and_compiled(mode):
    model, x = _mixture()
    regression = KernelRidge(learn=True)
    regression.initialise(model.joint_distribution().sample(300, seed=[1, 1])[1])

    def step():
        with tf.GradientTape() as tape:
            result = amortised_step(model.joint_distribution, x, num_sleep=300, seed=[2, 3], regression=regression,
                                    form="conditional", num_holdout=32, variables=model.trainable_variables)
        return result.loss, result.regression_loss, tape.gradient(result.regression_loss,
                                                                  regression.trainable_variables)

    eager, compiled = step(), COMPILE[mode](step)()
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-4)
    np.testing.assert_allclose(compiled[1], eager[1], rtol=1e-3)
    for got, want in zip(compiled[2], eager[2]):
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-4)  # through a float32 Cholesky


def test_a_learning_regression_trains_under_xla():
    """XLA draws other random numbers than eager TensorFlow from the same stateless seed on this CPU (so the steps
    are not comparable number for number): a compiled fit trains the hyperparameters and stays finite."""
    model, x = _mixture()
    learner = AmortisedLearner(model, num_sleep=100, form="conditional", regression=KernelRidge(learn=True),
                               num_holdout=16, seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(0.01), regression_optimizer=keras.optimizers.Adam(0.1),
                    jit_compile=True)
    learner.regression.initialise(learner.sample(100, seed=[0, 1])["x"])
    initial = float(learner.regression.bandwidth)
    history = learner.fit(x.numpy(), batch_size=50, epochs=1, shuffle=False, verbose=0)
    assert int(learner.regression_optimizer.iterations) == 2
    assert all(np.isfinite(history.history[name]).all() for name in ("loss", "bandwidth", "ridge_r2"))
    assert float(learner.regression.bandwidth) != initial


def _held_out_loss(model, x, regression, form, seeds=range(6)):
    """Mean regression_loss over sleep seeds, with 256 held-out samples."""
    return np.mean([float(amortised_step(model.joint_distribution, x, num_sleep=300, seed=[s, 11],
                                         regression=regression, form=form, num_holdout=256,
                                         variables=model.trainable_variables).regression_loss) for s in seeds])


@pytest.mark.parametrize("form", ["joint", "conditional"])
def test_learned_hyperparameters_lower_the_held_out_error_and_the_gradient_error(form):
    """On the five well-separated clusters, the median heuristic (4.5) over-smooths. Training only the regression
    (the model's optimiser has learning rate 0) for 60 steps moves the bandwidth down (measured: to 0.91 joint,
    0.65 conditional); the held-out error falls (0.71 -> 0.27 joint, 1.54 -> 0.28 conditional) and so does the
    median relative error of the gradient against the exact one at N = 1000 (0.73 -> 0.075 joint, 1.24 -> 0.069
    conditional). Bounds: about twice the measured ratios."""
    model, x = _mixture()
    learner = AmortisedLearner(model, num_sleep=300, form=form, regression=KernelRidge(learn=True), seed=0)
    learner.compile(optimizer=keras.optimizers.SGD(0.), regression_optimizer=keras.optimizers.Adam(0.1))
    learner.regression.initialise(learner.sample(300, seed=[0, 1])["x"])
    initial = KernelRidge(bandwidth=float(learner.regression.bandwidth))
    before = [v.numpy() for v in model.trainable_variables]
    learner.fit(x.numpy(), batch_size=100, epochs=60, shuffle=False, verbose=0)
    for old, new in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(new.numpy(), old)  # only the regression learned
    learned = KernelRidge(bandwidth=float(learner.regression.bandwidth), ridge=float(learner.regression.ridge))
    assert float(learned.bandwidth) < 0.4 * float(initial.bandwidth)
    assert _held_out_loss(model, x, learned, form) < 0.8 * _held_out_loss(model, x, initial, form)
    exact = per_point_gradients(lambda: model.log_marginal(x), model.trainable_variables)

    def gradient_error(regression):
        return median_relative_error(per_point_gradients(lambda: amortised_step(
            model.joint_distribution, x, num_sleep=1000, seed=[4, 5], regression=regression,
            form=form).surrogate, model.trainable_variables), exact)

    assert gradient_error(learned) < 0.2 * gradient_error(initial)


def test_a_learning_bandwidth_is_the_median_until_initialised():
    """The median heuristic is the bandwidth of a learning layer's calls until `initialise`; after it, the weights
    are those of the learned bandwidth."""
    rng = np.random.default_rng(3)
    sleep_x, query_x = (rng.normal(size=[n, 2]).astype(np.float32) for n in (100, 7))
    regression = KernelRidge(learn=True)
    start = float(ridge_module.median_bandwidth(sleep_x - sleep_x.mean(0)))
    np.testing.assert_allclose(regression(sleep_x, query_x), KernelRidge(bandwidth=start)(sleep_x, query_x),
                               rtol=1e-4, atol=1e-6)
    regression.initialise(sleep_x)
    np.testing.assert_allclose(regression.bandwidth, start, rtol=1e-6)
    regression.log_bandwidth.assign(np.log(0.5))
    np.testing.assert_allclose(regression(sleep_x, query_x), KernelRidge(bandwidth=0.5)(sleep_x, query_x),
                               rtol=1e-4, atol=1e-6)


def test_ard_learns_a_long_length_scale_for_an_irrelevant_dimension():
    """Targets depend on the first input only; the second is noise of the same scale. Minimising the held-out
    error makes the second length scale grow much longer than the first (measured: 0.66 and 8.1)."""
    rng = np.random.default_rng(0)
    regression = KernelRidge(learn=True, ard=True, ridge=1e-3)
    regression.initialise(rng.normal(size=[200, 2]).astype(np.float32))
    optimizer = keras.optimizers.Adam(0.05)
    for step in range(150):
        x = rng.normal(size=[240, 2]).astype(np.float32)
        targets = np.sin(2. * x[:, :1]) + 0.1 * rng.normal(size=[240, 1]).astype(np.float32)
        with tf.GradientTape() as tape:
            loss = regression_loss(targets[:200], targets[200:], regression(x[:200], x[200:]))
        optimizer.apply_gradients(zip(tape.gradient(loss, regression.trainable_variables),
                                      regression.trainable_variables))
    length_scales = regression.bandwidth.numpy()
    assert length_scales.shape == (2,)
    assert length_scales[1] > 4. * length_scales[0]


def test_a_deep_kernel_learns_features_that_find_the_relevant_input():
    """A trainable linear feature map (5 inputs -> 2 features) learns with the bandwidth and ridge on the held-out
    error. Targets depend on the first input only; the other four are noise of the same scale. Measured after 150
    steps: held-out error 0.016 against 0.61 for the fixed median-heuristic kernel on the raw inputs (0.94 at the
    random start), and the map's weights from the first input have norm 1.86 against at most 0.54 from the others.
    """
    rng = np.random.default_rng(0)
    features = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, kernel_initializer=keras.initializers.
                                                                       GlorotUniform(1))])
    regression = KernelRidge(learn=True, features=features, ridge=1e-3)
    regression.initialise(rng.normal(size=[200, 5]).astype(np.float32))
    assert len(regression.trainable_variables) == 4  # log bandwidth, log ridge, the map's kernel and bias
    optimizer = keras.optimizers.Adam(0.05)

    def batch():
        x = rng.normal(size=[240, 5]).astype(np.float32)
        return x, np.sin(2. * x[:, :1]) + 0.1 * rng.normal(size=[240, 1]).astype(np.float32)

    @tf.function
    def step(x, targets):
        with tf.GradientTape() as tape:
            loss = regression_loss(targets[:200], targets[200:], regression(x[:200], x[200:]))
        optimizer.apply_gradients(zip(tape.gradient(loss, regression.trainable_variables),
                                      regression.trainable_variables))

    for _ in range(150):
        step(*batch())
    x, targets = batch()
    fixed = regression_loss(targets[:200], targets[200:], KernelRidge(ridge=1e-3)(x[:200], x[200:]))
    assert regression_loss(targets[:200], targets[200:], regression(x[:200], x[200:])) < 0.1 * fixed
    norms = np.linalg.norm(features.layers[0].kernel.numpy(), axis=1)
    assert norms[0] > 2. * norms[1:].max()


def test_the_learner_trains_a_deep_kernel_with_the_regression_optimizer():
    """The feature map's weights are hyperparameters: the regression's optimiser moves them, the model's does not
    (here it has learning rate 0, so the model stays where it is)."""
    features = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="tanh")])
    model = FactorAnalysisModel(1, 2, seed=1)
    learner = AmortisedLearner(model, num_sleep=64, num_holdout=16, seed=3,
                               regression=KernelRidge(learn=True, features=features))
    learner.compile(optimizer=keras.optimizers.SGD(0.), regression_optimizer=keras.optimizers.Adam(0.1))
    x = FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(64, seed=[1, 2])[1].numpy()
    before_model = [v.numpy() for v in model.trainable_variables]
    before_map = [v.numpy() for v in features.trainable_variables]
    learner.fit(x, batch_size=32, epochs=2, shuffle=False, verbose=0)
    for old, new in zip(before_model, model.trainable_variables):
        np.testing.assert_array_equal(new.numpy(), old)
    assert all(np.abs(new.numpy() - old).max() > 1e-3 for old, new in zip(before_map, features.trainable_variables))


def test_a_learning_regression_saves_loads_and_resumes_exactly(tmp_path):
    x = FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(128, seed=[1, 2])[1].numpy()

    def learner():
        result = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=96, num_holdout=16, seed=3,
                                  regression=KernelRidge(learn=True, ard=True))
        result.compile(optimizer=keras.optimizers.Adam(0.05), regression_optimizer=keras.optimizers.Adam(0.1))
        return result

    uninterrupted = learner()
    uninterrupted.fit(x, batch_size=64, epochs=3, shuffle=False, verbose=0)
    first = learner()
    first.fit(x, batch_size=64, epochs=2, shuffle=False, verbose=0)
    first.save(tmp_path / "learner.keras")
    loaded = keras.models.load_model(tmp_path / "learner.keras")
    assert loaded.regression.learn and loaded.regression.ard
    assert int(loaded.regression_optimizer.iterations) == 4
    np.testing.assert_allclose(float(loaded.regression_optimizer.learning_rate), 0.1, rtol=1e-6)
    loaded.fit(x, batch_size=64, epochs=1, shuffle=False, verbose=0)
    for expected, resumed in zip(uninterrupted.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(resumed.numpy(), expected.numpy(), atol=1e-6)
    assert not np.allclose(uninterrupted.regression.bandwidth, first.regression.bandwidth)  # they did move


def test_learn_and_ard_arguments_are_checked():
    with pytest.raises(ValueError, match="Received: learn='yes'"):
        KernelRidge(learn="yes")
    with pytest.raises(ValueError, match="ard=True.*learn=True.*Received: ard=True, learn=False"):
        KernelRidge(ard=True)


def test_the_learner_defaults_to_a_learning_regression_in_the_auto_form():
    """The defaults chosen by benchmarks/regression_quality and benchmarks/blowfly (issue 11); a saved learner keeps
    its own settings."""
    learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=16)
    assert learner.form == "auto"
    assert learner.regression.learn and not learner.regression.ard and learner.regression.variance_weight == 1.
    config = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=16, form="joint",
                              regression=KernelRidge()).get_config()
    restored = AmortisedLearner.from_config(config)
    assert restored.form == "joint" and not restored.regression.learn
    with pytest.raises(ValueError, match=r"num_holdout must be positive, or pass a fixed regression, "
                                         r"regression=KernelRidge\(\)\. Received: num_holdout=0"):
        AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_holdout=0)
    with pytest.raises(ValueError, match=r"num_holdout must be positive, or pass form='joint' or form='conditional'"):
        AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_holdout=0, regression=KernelRidge())
    assert AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_holdout=0, regression=KernelRidge(),
                            form="conditional").num_holdout == 0  # a fixed regression in a given form needs none
    with pytest.raises(TypeError, match="Received: regression=0.001"):
        learner.posterior_expectation(np.zeros([3, 2], np.float32), lambda sample: sample["z"], regression=1e-3)
    # Predictions may use another regression than the one the learner trains with (learner.posterior_expectation).
    x = FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(8, seed=[1, 2])[1]
    narrow = KernelRidge(bandwidth=0.3)
    means = learner.posterior_mean(x, seed=[3, 4], regression=narrow)["z"]
    np.testing.assert_allclose(means, learner.posterior_expectation(x, lambda sample: sample["z"], seed=[3, 4],
                                                                    regression=narrow), rtol=1e-5, atol=1e-6)
    assert np.abs(means - learner.posterior_mean(x, seed=[3, 4])["z"]).max() > 1e-2


def test_train_on_batch_and_eager_calls_start_learning_from_the_median(monkeypatch):
    """The bandwidth is learned from the first step whatever the entry point (it stayed at the median heuristic,
    untrained, until a `fit` initialised it); the starting sleep set is drawn once, not at every `train_on_batch`
    (an eager draw that took 2.5x the step it preceded)."""
    model, x = _mixture()
    learner = AmortisedLearner(model, num_sleep=200, regression=KernelRidge(learn=True), seed=0)
    learner.compile(optimizer=keras.optimizers.SGD(0.), regression_optimizer=keras.optimizers.Adam(0.1))
    draws, sample = [], learner.sample
    monkeypatch.setattr(learner, "sample", lambda *args, **kwargs: draws.append(args) or sample(*args, **kwargs))
    learner.train_on_batch(x[:50])
    assert float(learner.regression.initialised) == 1.
    started = float(learner.regression.log_bandwidth)
    for _ in range(3):
        learner.train_on_batch(x[:50])
    assert float(learner.regression.log_bandwidth) != started
    assert len(draws) == 1
    layer = KernelRidge(learn=True)
    sleep_x = model.joint_distribution().sample(100, seed=[1, 2])[1]
    _, diagnostics = layer(sleep_x, x, return_diagnostics=True)
    assert float(layer.initialised) == 1.
    np.testing.assert_allclose(diagnostics.bandwidth, np.exp(float(layer.log_bandwidth)), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_rows, subsample", [(9, 512), (300, 128), (1000, 512)])
def test_nearest_neighbour_distance_matches_numpy(num_rows, subsample, dtype):
    """The first `subsample // 2` rows against all rows but themselves, away from the origin (the expansion of the
    squared distance must not cancel), with duplicated rows: the square root of numpy's median nearest square
    distance, eagerly, in `tf.function` and under XLA."""
    rng = np.random.default_rng(num_rows)
    x = rng.normal(size=[num_rows, 3]) + 50.
    x[1] = x[0]  # a duplicate: its nearest distance is 0
    rows = min(subsample, num_rows) // 2
    square = ((x[:rows, None] - x[None])**2).sum(-1)
    square[np.arange(rows), np.arange(rows)] = np.inf
    expected = np.sqrt(np.median(square.min(-1)))
    for mode in COMPILE.values():
        value = mode(lambda x: nearest_neighbour_distance(x, subsample))(tf.constant(x, dtype))
        assert value.dtype == dtype
        np.testing.assert_allclose(value, expected, rtol=1e-4 if dtype == np.float32 else 1e-10)
    duplicated = np.repeat(x[:5], 3, axis=0)
    assert float(nearest_neighbour_distance(tf.constant(duplicated, dtype))) == 0.


@pytest.mark.parametrize("ard", [False, True])
@pytest.mark.parametrize("bound", ["floor", "cap"])
def test_a_learned_bandwidth_is_held_between_the_nearest_neighbour_distance_and_the_median(bound, ard):
    """Set below the sleep set's nearest-neighbour distance `d` (or above its median heuristic `m`), a learned
    bandwidth gives the weights of the fixed bandwidth `d` (`m`) (ARD: length scales scaled together until
    `d(x / l) = 1`, `m(x / l) = 1`) and the gradient of the bandwidth used where descent would move it back
    inside, 0 where it would push it further out; inside both it is the bandwidth as learned, with its gradient,
    of either sign."""
    rng = np.random.default_rng(0)
    sleep_x, query_x = rng.normal(size=[400, 2]), rng.normal(size=[7, 2])
    ratios = np.array([1., 3.]) if ard else np.ones([1])
    inputs = tf.constant(sleep_x / ratios)
    limit = {"floor": float(nearest_neighbour_distance(inputs)),
             "cap": float(ridge_module.median_bandwidth(inputs - tf.reduce_mean(inputs, 0)))}[bound]
    outside = {"floor": 0.3, "cap": 4.}[bound]
    inside = float(np.sqrt(limit * {"floor": 5., "cap": 0.2}[bound] * limit))  # within both bounds
    for scale, bound_binds in ((outside * limit, True), (inside, False)):
        regression = KernelRidge(learn=True, ard=ard, bandwidth=1., dtype="float64")
        if ard:
            regression.build(sleep_x.shape)
        regression.log_bandwidth.assign(tf.reshape(np.log(scale * ratios), regression.log_bandwidth.shape))
        used_scale = limit if bound_binds else scale
        used = tf.Variable(np.log(used_scale * ratios) if ard else np.log(used_scale))
        signs, noise = set(), rng.normal(size=[7, 400])
        for sign in (1., -1.):
            upstream = sign * noise
            with tf.GradientTape() as tape:
                weights, diagnostics = regression(sleep_x, query_x, return_diagnostics=True)
                total = tf.reduce_sum(weights * upstream)
            gradient = tape.gradient(total, regression.log_bandwidth).numpy()
            with tf.GradientTape() as tape:  # the same kernel on x / l with unit length scale
                fixed = kernel_ridge_weights(sleep_x / tf.exp(used), query_x / tf.exp(used), bandwidth=1.)[0]
                fixed_total = tf.reduce_sum(fixed * upstream)
            expected = tape.gradient(fixed_total, used).numpy()
            signs.update(np.sign(expected).ravel())
            np.testing.assert_allclose(diagnostics.bandwidth, np.exp(used.numpy()), rtol=1e-10)
            np.testing.assert_allclose(weights, fixed, rtol=1e-6, atol=1e-7)
            # Descent moves log l by -gradient: at the floor only raising it passes, at the cap only lowering it.
            kept = {"floor": np.minimum, "cap": np.maximum}[bound](expected, 0.)
            np.testing.assert_allclose(gradient, kept if bound_binds else expected, rtol=1e-6)
        assert signs == {-1., 1.}  # both cases met


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_learned_ridge_is_capped_at_its_starting_value(dtype):
    """Set above its starting value `ridge`, a learned ridge gives the weights of the fixed ridge and the gradient
    of the ridge used where descent would lower it, 0 where it would raise it; below the cap it is the ridge as
    learned, with its gradient, of either sign. A fixed ridge is not capped."""
    rng = np.random.default_rng(1)
    sleep_x, query_x = rng.normal(size=[300, 2]), rng.normal(size=[6, 2])
    start = 1e-3
    for value, capped in ((8. * start, True), (0.05 * start, False)):
        regression = KernelRidge(learn=True, bandwidth=0.7, ridge=start, dtype=dtype)
        regression.log_ridge.assign(np.log(value))
        used = tf.Variable(np.log(start if capped else value), dtype=dtype)
        signs = set()
        for sign in (1., -1.):
            upstream = tf.constant(sign * rng.normal(size=[6, 300]), dtype)
            with tf.GradientTape() as tape:
                total = tf.reduce_sum(regression(sleep_x, query_x) * upstream)
            gradient = float(tape.gradient(total, regression.log_ridge))
            with tf.GradientTape() as tape:
                fixed = kernel_ridge_weights(tf.constant(sleep_x, dtype), tf.constant(query_x, dtype),
                                             bandwidth=0.7, ridge=tf.exp(used))[0]
                fixed_total = tf.reduce_sum(fixed * upstream)
            expected = float(tape.gradient(fixed_total, used))
            signs.add(np.sign(expected))
            tolerance = {"float32": 2e-3, "float64": 1e-6}[dtype]
            np.testing.assert_allclose(regression.ridge, np.exp(used.numpy()), rtol=tolerance)
            np.testing.assert_allclose(regression(sleep_x, query_x), fixed, rtol=tolerance, atol=tolerance)
            assert np.isclose(gradient, max(expected, 0.) if capped else expected, rtol=tolerance,
                              atol=tolerance * abs(expected))
        assert signs == {-1., 1.}  # both cases met
    fixed = KernelRidge(bandwidth=0.7, ridge=start)
    fixed.log_ridge.assign(np.log(8. * start))  # as select_regression writes it
    np.testing.assert_allclose(fixed.ridge, 8. * start, rtol=1e-6)


def test_the_floor_keeps_the_gradient_finite_on_duplicated_observations():
    """Binary observations, most of them repeated: the nearest-neighbour distance is 0, the floor does not bind,
    and the held-out error has the finite gradient of the unfloored bandwidth."""
    x = (np.random.default_rng(0).random([300, 4]) < 0.3).astype(np.float32)
    assert float(nearest_neighbour_distance(tf.constant(x))) == 0.
    regression = KernelRidge(learn=True, bandwidth=0.8)
    with tf.GradientTape() as tape:
        loss = regression_loss(x[:250, :1], x[250:, :1], regression(x[:250], x[250:]))
    gradient = tape.gradient(loss, [regression.log_bandwidth, regression.log_ridge])
    with tf.GradientTape() as tape:
        bandwidth = tf.Variable(0.8)
        weights = kernel_ridge_weights(x[:250], x[250:], bandwidth=bandwidth)[0]
        unfloored = regression_loss(x[:250, :1], x[250:, :1], weights)
    np.testing.assert_allclose(loss, unfloored, rtol=1e-6)
    assert np.all(np.isfinite(gradient))
    np.testing.assert_allclose(gradient[0], 0.8 * tape.gradient(unfloored, bandwidth), rtol=1e-4)


def test_the_auto_form_leaves_the_conditional_form_for_good_and_saves_that(tmp_path):
    """On the 60-step blowfly series the conditional form's held-out error is 15-27 times the joint form's at the
    first step (tests/test_estimator.py), so an `"auto"` learner takes the joint form there and keeps it: its
    `conditional_failed` weight is set, saved and loaded. A factor-analysis learner keeps the conditional form on
    every step, and takes the joint form once the weight is set by hand."""
    from tfp_amortised.models.blowfly import BlowflyModel, load_blowfly  # pylint: disable=import-outside-toplevel
    series = np.log(load_blowfly())[None, :60].astype(np.float32)
    learner = AmortisedLearner(BlowflyModel(num_steps=60), num_sleep=200, regression=KernelRidge(), seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    history = learner.fit(series, batch_size=1, epochs=3, verbose=0).history
    assert history["conditional_form"] == [0., 0., 0.] and float(learner.conditional_failed) == 1.
    learner.save(tmp_path / "blowfly.keras")
    assert float(keras.models.load_model(tmp_path / "blowfly.keras").conditional_failed) == 1.

    x = FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(64, seed=[1, 2])[1]
    learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=200, regression=KernelRidge(), seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    assert learner.fit(x, batch_size=32, epochs=2, verbose=0).history["conditional_form"] == [1., 1.]
    assert float(learner.conditional_failed) == 0.
    learner.conditional_failed.assign(1.)
    assert learner.fit(x, batch_size=32, epochs=1, verbose=0).history["conditional_form"] == [0.]
