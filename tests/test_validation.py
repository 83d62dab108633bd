"""Bad input and numerical faults: every public entry point fails with one message naming the argument, and a
singular Gram matrix or a degenerate step never writes NaN into the weights."""

import hypothesis
import hypothesis.extra.numpy as hnp
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import strategies as st

from tfp_amortised import KernelRidge, ridge_expectation, sleep, surrogate_log_marginal
from tfp_amortised.generative import GenerativeModel
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel, GaussianMixtureModel
from tfp_amortised.ridge import kernel_ridge_weights

ARGUMENTS = ("sleep_x", "query_x", "wake_x", "num_sleep", "observed", "form", "bandwidth")
# Finite values stay below 1e4 in magnitude: squared distances and Gaussian log-densities then fit float32
# with room to spare; beyond ~1e18 the squares overflow, which is outside the documented input range.
VALUES = st.one_of(st.floats(-1e4, 1e4, width=32),
                   st.sampled_from([np.float32(v) for v in (np.nan, np.inf, -np.inf, 0., 1e-40)]))
DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_, np.complex64])
PROPERTY = hypothesis.settings(max_examples=60, deadline=None, derandomize=True,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _arrays(shapes):
    """Arrays of any of DTYPES, with float values from VALUES (NaN and infinities made 0 for integer dtypes)."""
    return st.tuples(hnp.arrays(np.float32, shapes, elements=VALUES), DTYPES).map(lambda pair: _cast(*pair))


def _cast(values, dtype):
    with np.errstate(all="ignore"):
        if np.issubdtype(dtype, np.inexact):
            return values.astype(dtype)  # float16 turns values beyond 65504 into infinities
        return np.nan_to_num(values, posinf=0., neginf=0.).astype(dtype)


def _answers_finitely_or_names_the_argument(call, expected_shape):
    try:
        result = call()
    except (ValueError, TypeError) as error:
        assert any(argument in str(error) for argument in ARGUMENTS), str(error)
        return
    assert tuple(result.shape) == expected_shape
    assert np.all(np.isfinite(result.numpy()))


@PROPERTY
@hypothesis.given(sleep_x=_arrays(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6)),
                  query_x=_arrays(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)),
                  bandwidth=st.one_of(st.just("median"), st.floats(1e-3, 1e3)))
def test_kernel_ridge_answers_finitely_or_raises_a_named_error(sleep_x, query_x, bandwidth):
    """`KernelRidge()(sleep_x, query_x)` is finite `[M, N]`, or a ValueError/TypeError naming the argument."""
    _answers_finitely_or_names_the_argument(lambda: KernelRidge(bandwidth=bandwidth)(sleep_x, query_x),
                                            (query_x.shape[0], sleep_x.shape[0]))


@PROPERTY
@hypothesis.given(wake_x=_arrays(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)),
                  num_sleep=st.sampled_from([0, 1, 2, 16, 2.5]), observed=st.sampled_from(["x", "z", "y"]),
                  form=st.sampled_from(["joint", "conditional", "natural"]))
def test_surrogate_answers_finitely_or_raises_a_named_error(wake_x, num_sleep, observed, form):
    """`surrogate_log_marginal` is finite `[M]`, or a ValueError/TypeError naming the argument."""
    model = FactorAnalysisModel(1, 2, seed=1)
    _answers_finitely_or_names_the_argument(
        lambda: surrogate_log_marginal(model.joint_distribution, wake_x, num_sleep=num_sleep, seed=[1, 2],
                                       observed=observed, form=form),
        wake_x.shape[:1])


@pytest.mark.parametrize("argument, value", [("bandwidth", 0.), ("bandwidth", -1.), ("bandwidth", float("nan")),
                                             ("ridge", 0.), ("ridge", -1e-3), ("ridge", float("inf"))])
def test_kernel_ridge_rejects_non_positive_hyperparameters(argument, value):
    with pytest.raises(ValueError, match=f"{argument} must be .*Received: {argument}="):
        KernelRidge(**{argument: value})


@pytest.fixture(name="learner")
def _learner():
    learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=32, num_holdout=0, seed=3, form="joint",
                               regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    return learner


@pytest.mark.parametrize("data, error, message", [
    (np.array([[0., np.nan]] * 8, np.float32), ValueError, "x: .*NaN or infinite"),
    (np.array([[0., np.inf]] * 8, np.float32), ValueError, "x: .*NaN or infinite"),
    (np.zeros([8, 3], np.float32), ValueError, r"x: wake_x must have shape \[M, 2\].*Received: wake_x.shape"),
    (np.zeros([8], np.float32), ValueError, r"x: wake_x must have shape \[M, 2\]"),
    (np.full([8, 2], "a"), TypeError, "x: wake_x must hold numbers.*Received: wake_x.dtype=string"),
])
def test_fit_rejects_bad_data_before_training(learner, data, error, message):
    with pytest.raises(error, match=message):
        learner.fit(data, epochs=1, verbose=0)


def test_posterior_expectation_rejects_nan_observations(learner):
    with pytest.raises(ValueError, match="NaN or infinite"):
        learner.posterior_expectation(np.array([[np.nan, 0.]], np.float32), lambda sample: sample["z"])


class _MisnamedModel(FactorAnalysisModel):
    observed = "y"


def test_unknown_observed_node_is_named():
    with pytest.raises(ValueError, match=r"observed='y' is not a node .*\['z', 'x'\]"):
        AmortisedLearner(_MisnamedModel(1, 2), num_sleep=8)
    with pytest.raises(ValueError, match="observed='y' is not a node"):
        surrogate_log_marginal(FactorAnalysisModel(1, 2).joint_distribution, np.zeros([3, 2], np.float32),
                               num_sleep=8, seed=[1, 2], observed="y")


def test_singular_gram_matrix_is_repaired_with_reported_jitter():
    """Sleep points repeated 8 times with a ridge far below float32 resolution: the Cholesky of K + N lam I fails,
    is retried with diagonal jitter (reported), and the weights still interpolate a smooth target at the
    repeated points (the regression error is of the order of the jitter relative to the kernel, < 1e-3)."""
    distinct = np.array([[0.], [1.], [2.5], [4.]], np.float32)
    sleep_x = np.repeat(distinct, 8, axis=0)
    ridge = KernelRidge(bandwidth=1., ridge=1e-12)
    weights, diagnostics = ridge(sleep_x, distinct, return_diagnostics=True)
    assert float(diagnostics.jitter) > 0
    target = np.sin(sleep_x[:, 0])
    np.testing.assert_allclose(weights.numpy() @ target, np.sin(distinct[:, 0]), atol=1e-2)


@pytest.mark.parametrize("model", [FactorAnalysisModel(1, 2, seed=1), GaussianMixtureModel(2, 2, seed=1)],
                         ids=["factor_analysis", "gaussian_mixture"])
def test_terminate_on_nan_never_fires_on_the_example_models(model):
    data = model.joint_distribution().sample(96, seed=[3, 4])[1]
    learner = AmortisedLearner(model, num_sleep=64, num_holdout=16, seed=3, form="joint", regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    history = learner.fit(data.numpy(), batch_size=32, epochs=2, verbose=0,
                          callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


class _PointMassModel(GenerativeModel):
    """z ~ N(0, 1);  x = m exactly (a zero-width Gaussian): every sleep x coincides, the median bandwidth is 0."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.m = self.add_weight(shape=(2,), initializer="ones", name="m")

    def joint_distribution(self):
        import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
        tfd = tfp.distributions
        m = self.m.value

        def model():
            z = yield tfd.JointDistributionCoroutine.Root(tfd.Normal(0., 1., name="z"))
            yield tfd.Independent(tfd.Normal(m + 0. * z[..., None], 0.), 1, name="x")

        return tfd.JointDistributionCoroutine(model)


def test_degenerate_step_never_writes_nan_into_the_weights():
    """When the ridge weights are NaN (all sleep points coincide), the step's gradient is zeroed: weights stay."""
    learner = AmortisedLearner(_PointMassModel(name="point_mass"), num_sleep=16, num_holdout=0, seed=3, form="joint",
                               regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.SGD(0.1))
    learner.fit(tf.ones([8, 2]), batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(learner.generative_model.m.numpy(), [1., 1.])


_REGRESSION_KINDS = [1e-3, "cholesky", keras.layers.Dense(3)]


@pytest.mark.parametrize("value", _REGRESSION_KINDS, ids=["number", "string", "layer"])
def test_a_wrong_kind_of_regression_fails_at_construction_naming_the_argument(value):
    model = FactorAnalysisModel(1, 2, seed=1)
    with pytest.raises(TypeError, match=r"regression must be None .* or a KernelRidge layer.*Received: regression="):
        AmortisedLearner(model, regression=value)
    x = np.zeros([3, 2], np.float32)
    with pytest.raises(TypeError, match="Received: regression="):
        surrogate_log_marginal(model.joint_distribution, x, num_sleep=8, seed=[1, 2], regression=value)
    with pytest.raises(TypeError, match="Received: regression="):
        ridge_expectation(x, x, x, regression=value)


def test_the_old_ridge_argument_of_the_learner_names_its_replacement():
    with pytest.raises(TypeError, match=r"regression=KernelRidge\(ridge=1e-3\).*Received: ridge=0.001"):
        AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), ridge=1e-3)
    with pytest.raises(TypeError, match="Received: ridge=<KernelRidge"):
        AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), ridge=KernelRidge())


@pytest.mark.parametrize("arguments, error, message", [
    ({"ridge": "small"}, TypeError, "ridge is the regulariser lambda.*Received: ridge='small' of type str"),
    ({"ridge": None}, TypeError, "Received: ridge=None"),
    ({"ridge": True}, TypeError, "Received: ridge=True"),
    ({"ridge": -1.}, ValueError, "ridge must be positive and finite.*Received: ridge=-1.0"),
    ({"bandwidth": None}, TypeError, "bandwidth is the kernel length scale.*Received: bandwidth=None"),
    ({"bandwidth": [1.]}, TypeError, r"Received: bandwidth=\[1.0\]"),
    ({"bandwidth_subsample": 2.5}, ValueError, "Received: bandwidth_subsample=2.5"),
])
def test_a_wrong_kind_of_lambda_or_bandwidth_fails_in_the_layer_and_the_function(arguments, error, message):
    with pytest.raises(error, match=message):
        KernelRidge(**arguments)
    x = tf.random.stateless_normal([8, 2], seed=[1, 2])
    with pytest.raises(error, match=message):
        kernel_ridge_weights(x, x, **arguments)


def test_numpy_numbers_are_accepted_where_python_numbers_are():
    model = FactorAnalysisModel(1, 2, seed=1)
    learner = AmortisedLearner(model, num_sleep=np.int64(16), num_holdout=np.int32(4),
                               regression=KernelRidge(ridge=np.float32(1e-3), bandwidth=np.float64(0.5)))
    assert (learner.num_sleep, learner.num_holdout) == (16, 4)
    assert isinstance(learner.get_config()["num_sleep"], int)
    assert learner.sample(1)["x"].shape == [1, 2]


@pytest.mark.parametrize("learner_class", ["amortised", "variational"])
def test_a_model_class_instead_of_an_instance_is_named(learner_class):
    from tfp_amortised.baselines import MeanFieldEncoder, VariationalLearner  # pylint: disable=import-outside-toplevel
    with pytest.raises(TypeError, match="instance of a GenerativeModel, not the class.*FactorAnalysisModel"):
        if learner_class == "amortised":
            AmortisedLearner(FactorAnalysisModel)
        else:
            VariationalLearner(FactorAnalysisModel, MeanFieldEncoder({"z": ("normal", 1)}))


def test_sample_weights_are_refused_not_ignored(learner):
    x = np.random.default_rng(0).normal(size=[16, 2]).astype(np.float32)
    with pytest.raises(ValueError, match="does not weight data points.*Received: sample_weight"):
        learner.fit(x, sample_weight=np.ones(16, np.float32), batch_size=8, epochs=1, verbose=0)


@pytest.mark.parametrize("seed", [[1], [1, 2, 3], [[1, 2]], [0.5, 1.]])
def test_a_seed_of_the_wrong_shape_or_type_is_named(seed):
    with pytest.raises(ValueError, match="seed must be a stateless seed.*Received: seed of shape"):
        surrogate_log_marginal(FactorAnalysisModel(1, 2, seed=1).joint_distribution, np.zeros([3, 2], np.float32),
                               num_sleep=8, seed=seed)


@pytest.mark.parametrize("num_sleep", [0, 1, -3])
def test_a_tensor_num_sleep_below_two_is_named(num_sleep):
    with pytest.raises(ValueError, match=f"num_sleep must be an integer >= 2. Received: num_sleep={num_sleep}"):
        surrogate_log_marginal(FactorAnalysisModel(1, 2, seed=1).joint_distribution, np.zeros([3, 2], np.float32),
                               num_sleep=tf.constant(num_sleep), seed=[1, 2])


def test_median_bandwidth_of_one_row_is_named():
    from tfp_amortised import median_bandwidth  # pylint: disable=import-outside-toplevel
    with pytest.raises(ValueError, match=r"at least 2 rows. Received: x.shape=\(1, 3\)"):
        median_bandwidth(tf.zeros([1, 3]))


@pytest.mark.parametrize("values, error, message", [
    (np.zeros([7, 2], np.float32), ValueError, r"one row per sleep sample: shape \[8, ...\].*values.shape=\(7, 2\)"),
    (np.float32(1.), ValueError, "Received: values.shape=()"),
    (np.full([8], "a"), TypeError, "Received: values.dtype=string"),
])
def test_targets_of_the_wrong_length_or_dtype_are_named(values, error, message):
    x = np.random.default_rng(0).normal(size=[8, 2]).astype(np.float32)
    with pytest.raises(error, match=message):
        ridge_expectation(x, x[:3], values)
    learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=8, num_holdout=0, form="joint",
                               regression=KernelRidge())
    with pytest.raises(error, match="Received: values"):
        learner.posterior_expectation(x[:3], lambda sample: values)


def test_an_exact_solve_too_large_for_memory_fails_at_once_naming_the_option_that_fits():
    model = FactorAnalysisModel(1, 2, seed=1)
    with pytest.raises(ValueError, match=r"num_sleep=1000000 needs about 11176 GiB.*solver='random_features'"):
        surrogate_log_marginal(model.joint_distribution, np.zeros([3, 2], np.float32), num_sleep=10**6, seed=[1, 2],
                               regression=KernelRidge(solver="cholesky"))  # the default "auto" would use Nystrom


class _OverflowingModel(GenerativeModel):
    """z ~ N(0, 1e20), x | z ~ N(z^2, 1): the squares of the samples overflow float32."""

    def joint_distribution(self):
        import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
        tfd = tfp.distributions

        def model():
            z = yield tfd.JointDistributionCoroutine.Root(tfd.Normal(0., 1e20, name="z"))
            yield tfd.Normal(z**2, 1., name="x")

        return tfd.JointDistributionCoroutine(model)


def test_non_finite_sleep_samples_name_their_node():
    with pytest.raises(ValueError, match="samples of node 'x' are not finite"):
        surrogate_log_marginal(_OverflowingModel().joint_distribution, np.zeros([3], np.float32), num_sleep=16,
                               seed=[1, 2])


def test_ridge_r2_is_not_logged_without_held_out_samples(learner):
    history = learner.fit(np.random.default_rng(0).normal(size=[16, 2]).astype(np.float32), batch_size=8, epochs=1,
                          verbose=0)
    assert "ridge_r2" not in history.history and "bandwidth" in history.history


@pytest.mark.parametrize("validation", [False, True], ids=["measured_at_end", "validation"])
@pytest.mark.parametrize("regression",
                         [KernelRidge(bandwidth=1e-10), KernelRidge(bandwidth=1e10), KernelRidge(ridge=1e36)],
                         ids=["tiny_bandwidth", "huge_bandwidth", "huge_ridge"])
def test_a_regression_that_explains_nothing_is_named_after_fit(regression, validation):
    """Accepted values that make the estimate meaningless (each sleep point its own island, all points alike, every
    weight zero) leave the held-out R^2 at or below 0: `fit` warns, naming the hyperparameters, from
    `val_ridge_r2` with validation data, else from one evaluation step at the end (a fixed regression's training
    steps do not measure it)."""
    from tfp_amortised.learner import RegressionWarning  # pylint: disable=import-outside-toplevel
    model = FactorAnalysisModel(1, 2, seed=1)
    learner = AmortisedLearner(model, num_sleep=64, num_holdout=32, form="joint", regression=regression,
                               seed=3)
    learner.compile(optimizer=keras.optimizers.Adam(0.01))
    x = model.joint_distribution().sample(32, seed=[1, 2])[1].numpy()
    with pytest.warns(RegressionWarning, match="ridge_r2=.*Bandwidth: .*ridge: ") as record:
        history = learner.fit(x, batch_size=32, epochs=1, verbose=0, validation_data=x if validation else None)
    if regression.bandwidth is not None:  # the bandwidth used is named (the median heuristic's is a value too)
        assert any(f"Bandwidth: {float(regression.bandwidth):.3g} (as used)" in str(w.message) for w in record)
    assert "ridge_r2" not in history.history
    if validation:
        assert history.history["val_ridge_r2"][0] < 0.05


def test_the_warning_about_a_learning_regression_suggests_the_fixed_one():
    """A learning regression that explains nothing (a huge fixed-start bandwidth) is named after fit, and the
    remedy offered is the fixed median-heuristic regression, not learning (which it already does)."""
    from tfp_amortised.learner import RegressionWarning  # pylint: disable=import-outside-toplevel
    model = FactorAnalysisModel(1, 2, seed=1)
    learner = AmortisedLearner(model, num_sleep=64, num_holdout=32, form="joint", seed=3,
                               regression=KernelRidge(learn=True, bandwidth=1e10))
    learner.compile(optimizer=keras.optimizers.Adam(0.01), regression_optimizer=keras.optimizers.SGD(0.))
    x = model.joint_distribution().sample(32, seed=[1, 2])[1].numpy()
    with pytest.warns(RegressionWarning, match=r"ridge_r2=.*Try the fixed median-heuristic regression "
                                               r"\(KernelRidge\(\)\)"):
        learner.fit(x, batch_size=32, epochs=1, verbose=0)


@pytest.mark.parametrize("validation", [False, True], ids=["measured_at_end", "validation"])
def test_a_working_regression_gives_no_warning(validation):
    import warnings as python_warnings  # pylint: disable=import-outside-toplevel
    from tfp_amortised.learner import RegressionWarning  # pylint: disable=import-outside-toplevel
    model = FactorAnalysisModel(1, 2, seed=1)
    learner = AmortisedLearner(model, num_sleep=500, num_holdout=64, form="conditional", seed=3)
    learner.compile(optimizer=keras.optimizers.Adam(0.01))
    x = model.joint_distribution().sample(64, seed=[1, 2])[1].numpy()
    with python_warnings.catch_warnings():
        python_warnings.simplefilter("error", RegressionWarning)
        history = learner.fit(x, batch_size=64, epochs=1, verbose=0, validation_data=x if validation else None)
    if validation:
        assert history.history["val_ridge_r2"][0] > 0.05


# Parameters that make a model's samples or log-densities non-finite: NaN, infinities, zero and extreme scales.
EXTREME = st.one_of(st.floats(-1e3, 1e3, width=32),
                    st.sampled_from([np.nan, np.inf, 0., 1e-30, 1e30, -1e30, 3e38]))
SCALES = st.one_of(st.floats(0.125, 1e3, width=32), st.sampled_from([np.nan, np.inf, 0., -1., 1e-30, 1e30, 3e38]))
# What a named error about non-finite model output says (`check_finite_sample`, `check_finite_log_density`,
# `kernel_ridge_weights`, the learner's data checks).
NON_FINITE_MESSAGES = ("are not finite", "log-density of", "ridge weights are not finite", "NaN or infinite")


class _ExtremeModel(GenerativeModel):
    """z ~ Normal(loc, scale);  x | z ~ Normal(z, noise) or LogNormal(z, noise), with the three parameters as Keras
    weights holding any value, non-finite ones included (no constraint)."""

    def __init__(self, loc=0., scale=1., noise=1., log_normal=False, **kwargs):
        super().__init__(**kwargs)
        self.log_normal = log_normal
        self.parameters_ = [self.add_weight(shape=(), initializer=keras.initializers.Constant(value), name=name)
                            for name, value in (("loc", loc), ("scale", scale), ("noise", noise))]

    def joint_distribution(self):
        import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
        tfd = tfp.distributions
        loc, scale, noise = (weight.value for weight in self.parameters_)
        observation = tfd.LogNormal if self.log_normal else tfd.Normal

        def model():
            z = yield tfd.JointDistributionCoroutine.Root(tfd.Normal(loc, scale, name="z"))
            yield observation(z, noise, name="x")

        return tfd.JointDistributionCoroutine(model)


def _finite_or_named(call):
    """`call()`'s result if every value is finite, None after a ValueError/TypeError naming a non-finite value."""
    try:
        result = call()
    except (ValueError, TypeError) as error:
        assert any(message in str(error) for message in NON_FINITE_MESSAGES), str(error)
        return None
    assert np.all(np.isfinite(result.numpy())), result
    return result


@hypothesis.settings(PROPERTY, max_examples=40)
@hypothesis.given(loc=EXTREME, scale=SCALES, noise=SCALES, log_normal=st.booleans(),
                  form=st.sampled_from(["joint", "conditional"]))
def test_models_with_non_finite_output_answer_finitely_or_name_it(loc, scale, noise, log_normal, form):
    """`surrogate_log_marginal` and `ridge_expectation` on models whose samples or log-densities may be NaN or
    infinite (NaN, zero, huge or negative parameters): a finite answer, or a ValueError naming what is not finite,
    never a NaN."""
    model = _ExtremeModel(loc, scale, noise, log_normal)
    wake_x = np.array([0.5, 1., 2.], np.float32)
    _finite_or_named(lambda: surrogate_log_marginal(model.joint_distribution, wake_x, num_sleep=16, seed=[1, 2],
                                                    form=form))

    def posterior_mean():
        sample = sleep(model.joint_distribution(), 16, [3, 4])
        return ridge_expectation(sample["x"], wake_x, sample["z"])

    _finite_or_named(posterior_mean)


@hypothesis.settings(PROPERTY, max_examples=6)
@hypothesis.given(loc=EXTREME, scale=SCALES, log_normal=st.booleans())
def test_fit_on_models_with_non_finite_output_trains_skips_or_names_it(loc, scale, log_normal):
    """`AmortisedLearner.fit` (compiled) on such models: finite weights and loss; or every non-finite step skipped,
    counted and warned about with the weights left as they were; or a named ValueError (at construction, whose
    reference samples are checked) -- never NaN written into the weights."""
    import warnings as python_warnings  # pylint: disable=import-outside-toplevel
    model = _ExtremeModel(loc, scale, 1., log_normal)
    try:
        learner = AmortisedLearner(model, num_sleep=16, num_holdout=0, seed=3, form="joint", regression=KernelRidge())
    except (ValueError, TypeError) as error:
        assert any(message in str(error) for message in NON_FINITE_MESSAGES), str(error)
        return
    learner.compile(optimizer=keras.optimizers.SGD(1e-3))
    before = [weight.numpy().copy() for weight in model.parameters_]
    with python_warnings.catch_warnings(record=True) as caught:
        python_warnings.simplefilter("always")
        history = learner.fit(np.array([0.5, 1., 2., 3.], np.float32), batch_size=2, epochs=1, verbose=0)
    skipped = history.history["skipped_steps"][0]
    if skipped:
        assert any("skipped" in str(warning.message) for warning in caught)
    else:
        assert np.isfinite(history.history["loss"][0])
    after = [weight.numpy() for weight in model.parameters_]
    assert np.all(np.isfinite(after)), (before, after)
    if skipped == 2:
        np.testing.assert_array_equal(after, before)
