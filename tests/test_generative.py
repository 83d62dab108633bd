"""The `GenerativeModel` contract as users write it: TFP-style parameters, untracked variables, saving without
`get_config`. Every model here is a user's own registered subclass, not one of `tfp_amortised.models`."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import ConstrainedWeight, GenerativeModel, check_trainable, untracked_variables
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.ridge import KernelRidge

tfb, tfd = tfp.bijectors, tfp.distributions
Root = tfd.JointDistributionCoroutine.Root


@keras.saving.register_keras_serializable(package="test")
class NoisyGaussian(GenerativeModel):
    """z ~ N(0, 1), x | z ~ N(z, scale^2), the scale held the TFP way, as a `TransformedVariable`."""

    def __init__(self, scale=1., learn_scale=True, **kwargs):
        super().__init__(**kwargs)
        self.scale = tfp.util.TransformedVariable(scale, tfb.Softplus(), trainable=learn_scale)

    def joint_distribution(self):
        def model():
            z = yield Root(tfd.Normal(0., 1., name="z"))
            yield tfd.Normal(z, self.scale, name="x")

        return tfd.JointDistributionCoroutine(model)


def _one_adam_step(model, x, learning_rate):
    """Fits `model` to `x` for one full-batch Adam step."""
    learner = AmortisedLearner(model, num_sleep=64, num_holdout=0, seed=0, form="joint", regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.Adam(learning_rate))
    learner.fit(x, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return learner


def _softplus_inverse(value):
    return np.log(np.expm1(np.float64(value)))


def _softplus(raw):
    return np.log1p(np.exp(np.float64(raw)))


@pytest.mark.parametrize("data_scale, direction", [(4., 1.), (0.01, -1.)])
def test_transformed_variable_scale_is_trained(data_scale, direction):
    """A `TransformedVariable` attribute becomes a Keras weight that the learner trains, in the right direction.

    x ~ N(0, 1 + scale^2) under the model. Data with standard deviation 4 (0.01) push the scale up (down).
    Adam's first step moves every weight by the learning rate against the sign of its gradient, so after one
    step the raw weight is `softplus^-1(1) + 0.5 * direction` (to `0.5 * epsilon / |gradient|`, below 1e-4);
    five more steps down keep the scale positive while the raw weight is negative.
    """
    model = NoisyGaussian()
    assert isinstance(model.scale, ConstrainedWeight)
    assert [v.name for v in model.trainable_variables] == ["scale"]
    x = (data_scale * np.random.default_rng(0).standard_normal((64, 1))).astype("float32")
    learner = _one_adam_step(model, x[:, 0], learning_rate=0.5)
    raw = _softplus_inverse(1.) + 0.5 * direction
    np.testing.assert_allclose(model.scale.weight.numpy(), raw, atol=1e-4)
    np.testing.assert_allclose(float(model.scale), _softplus(raw), atol=1e-4)
    if direction < 0:
        learner.fit(x[:, 0], batch_size=64, epochs=5, shuffle=False, verbose=0)
        assert model.scale.weight.numpy() < -1.
        assert 0. < float(model.scale) < _softplus(raw)


def test_setattr_converts_transformed_variable_and_tf_variable():
    """Assigning a `TransformedVariable` or `tf.Variable` stores the equivalent Keras weight: same bijector,
    value, dtype and trainable flag; user code reading the attribute keeps working."""

    class Holder(GenerativeModel):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.rate = tfp.util.TransformedVariable(np.array([0.2, 0.7]), tfb.Sigmoid(), trainable=False)
            self.shift = tf.Variable([1., 2., 3.])

    model = Holder()
    assert isinstance(model.rate, ConstrainedWeight) and isinstance(model.rate.bijector, tfb.Sigmoid)
    assert (model.rate.weight.dtype, model.rate.weight.trainable, model.rate.shape) == ("float64", False, (2,))
    np.testing.assert_allclose(model.rate.numpy(), [0.2, 0.7], rtol=1e-15)
    assert isinstance(model.shift, keras.Variable) and model.shift.dtype == "float32"
    np.testing.assert_array_equal(model.shift.numpy(), [1., 2., 3.])
    assert [v.name for v in model.trainable_variables] == ["shift"]
    assert [v.name for v in model.non_trainable_variables] == ["rate"]
    assert untracked_variables(model) == []


@keras.saving.register_keras_serializable(package="test")
class ConstrainedModel(GenerativeModel):
    """z ~ Bernoulli(rate), x | z ~ N(z, scale^2): two `add_constrained_weight` parameters."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scale = self.add_constrained_weight("scale", 2.)
        self.rate = self.add_constrained_weight("rate", 0.3, tfb.Sigmoid())

    def joint_distribution(self):
        def model():
            z = yield Root(tfd.Bernoulli(probs=self.rate, dtype=tf.float32, name="z"))
            yield tfd.Normal(z, self.scale, name="x")

        return tfd.JointDistributionCoroutine(model)


def test_add_constrained_weight_gradient_is_chain_rule():
    """`d log p / d raw = d log p / d value * bijector.forward'(raw)`, by hand, at z = 1, x = 4.

    Softplus, scale = 2: d/d scale log N(4; 1, scale) = -1/scale + 9/scale^3 = 0.625, and softplus' = sigmoid(raw)
    = 1 - exp(-scale), so the gradient is 0.625 (1 - e^-2). Sigmoid, rate = 0.3: d/d rate log rate = 1/rate and
    sigmoid' = rate (1 - rate), so the gradient is 1 - rate = 0.7.
    """
    model = ConstrainedModel()
    np.testing.assert_array_equal(model.scale.weight.numpy(), np.float32(_softplus_inverse(2.)))
    assert (float(model.scale), model.scale.numpy().dtype) == (pytest.approx(2., rel=1e-7), np.float32)
    with tf.GradientTape() as tape:
        log_prob = model.joint_distribution().log_prob([1., 4.])
    gradients = tape.gradient(log_prob, model.trainable_variables)
    assert [v.name for v in model.trainable_variables] == ["scale", "rate"]
    np.testing.assert_allclose(gradients, [0.625 * (1. - np.exp(-2.)), 0.7], rtol=1e-6)


def test_constrained_weight_initial_value_assign_and_range_check():
    """The raw weight is `bijector.inverse` computed in float64, then rounded once to float32 (at 0.7 the float32
    computation gives 0.013659 against 0.013658998); `assign` works in the constrained space; an initial value
    outside the bijector's range is refused."""
    model = ConstrainedModel()
    precise = model.add_constrained_weight("precise", 0.7)
    np.testing.assert_array_equal(precise.weight.numpy(), np.float32(_softplus_inverse(0.7)))
    model.scale.assign(0.7)
    np.testing.assert_array_equal(model.scale.weight.numpy(), np.float32(_softplus_inverse(0.7)))
    np.testing.assert_allclose(float(model.scale), 0.7, rtol=1e-6)
    with pytest.raises(ValueError, match=r"initial_value must lie in the range of softplus.*initial_value=-1\.0"):
        model.add_constrained_weight("negative", -1.)


class Decoder(keras.layers.Layer):
    """A plain Keras layer (not a GenerativeModel) holding a raw `tf.Variable`: Keras does not track it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scale = tf.Variable(1.)
        self.loc = self.add_weight(shape=(), initializer="zeros", name="loc")


class Untracked(GenerativeModel):
    """Raw variables hidden in a sub-layer, a dict attribute and a `tf.Module`; tracked ones beside them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.decoder = Decoder()
        self.params = {"shift": tf.Variable(0.), "weight": self.add_weight(shape=(), name="weight")}
        self.prior = tf.Module()
        self.prior.scale = tfp.util.TransformedVariable(1., tfb.Exp())
        self.noise = self.add_constrained_weight("noise", 1.)


def test_untracked_variables_reports_paths():
    model = Untracked()
    found = untracked_variables(model)
    assert [path for path, _ in found] == ["decoder.scale", "params['shift']", "prior.scale"]
    expected = [model.decoder.scale, model.params["shift"], model.prior.scale.pretransformed_input]
    assert all(variable is want for (_, variable), want in zip(found, expected))


def test_check_trainable_raises_with_path():
    message = (r"Received: attribute 'decoder\.scale' holding a tf\.Variable that Keras does not track "
               r"\(shape \(\), dtype float32\); attribute 'params\['shift'\]'")
    with pytest.raises(ValueError, match=message):
        check_trainable(Untracked())
    with pytest.raises(ValueError, match="add_constrained_weight"):
        check_trainable(Untracked())
    check_trainable(ConstrainedModel())


@keras.saving.register_keras_serializable(package="test")
class ShiftedModel(GenerativeModel):
    """z ~ N(0, I), x | z ~ N(z + offsets, scale^2 I): NumPy, list and float constructor arguments, no get_config."""

    def __init__(self, offsets, layout, scale=0.5, mask=None, **kwargs):
        super().__init__(**kwargs)
        self.offsets, self.layout, self.initial_scale, self.mask = offsets, layout, scale, mask
        self.loc = self.add_weight(shape=offsets.shape, initializer="random_normal", name="loc")
        self.scale = self.add_constrained_weight("scale", scale)

    def joint_distribution(self):
        loc, offsets = self.loc.value, tf.constant(self.offsets, tf.float32)

        def model():
            z = yield Root(tfd.Independent(tfd.Normal(loc, 1.), 1, name="z"))
            yield tfd.Independent(tfd.Normal(z + offsets, self.scale), 1, name="x")

        return tfd.JointDistributionCoroutine(model)


def test_user_model_without_get_config_saves_in_learner(tmp_path):
    """A learner of a model taking a NumPy array, a list (holding a tuple) and a float, trained for a step, saves
    to `.keras` and loads with equal weights and equal arguments: arrays with their dtype and shape, tuples as
    tuples."""
    offsets = np.array([1., -2.], np.float64)
    mask = np.array([[True], [False]])
    model = ShiftedModel(offsets, [3, (4, "a")], scale=0.25, mask=mask)
    x = model.joint_distribution().sample(32, seed=[1, 2])[1].numpy()
    learner = _one_adam_step(model, x, learning_rate=0.1)
    learner.save(tmp_path / "shifted.keras")
    loaded = keras.models.load_model(tmp_path / "shifted.keras").generative_model
    assert type(loaded) is ShiftedModel
    for name in ("offsets", "mask"):
        assert (getattr(loaded, name).dtype, getattr(loaded, name).shape) == (getattr(model, name).dtype,
                                                                                getattr(model, name).shape)
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert (loaded.layout, loaded.initial_scale) == ([3, (4, "a")], 0.25)
    assert [v.name for v in loaded.variables] == [v.name for v in model.variables]
    for restored, trained in zip(loaded.variables, model.variables):
        np.testing.assert_array_equal(restored.numpy(), trained.numpy())
    assert float(loaded.scale) == float(model.scale) != pytest.approx(0.25, rel=1e-6)  # trained, then restored


@keras.saving.register_keras_serializable(package="test")
class TransformedModel(NoisyGaussian):
    """A model taking a callable and a nested object: neither can be saved without a `get_config`."""

    def __init__(self, transform=np.tanh, options=None, **kwargs):
        super().__init__(**kwargs)
        self.transform, self.options = transform, options


def test_unserialisable_argument_error_names_it(tmp_path):
    model = TransformedModel()
    with pytest.raises(NotImplementedError, match=r"TransformedModel cannot be saved: its constructor argument "
                                                  r"`transform` \(a ufunc\).*Implement TransformedModel\.get_config"
                                                  r".*\"Writing a model\""):
        model.get_config()
    learner = AmortisedLearner(TransformedModel(transform=None, options={"levels": [1, object()]}), num_sleep=64,
                               num_holdout=0, seed=0, form="joint", regression=KernelRidge())
    with pytest.raises(NotImplementedError, match=r"argument `options\['levels'\]\[1\]` \(a object\)"):
        learner.save(tmp_path / "transformed.keras")


@keras.saving.register_keras_serializable(package="test")
class OwnConfigModel(TransformedModel):
    """The same unserialisable constructor, with the user's own `get_config`: it is used unchanged."""

    def __init__(self, transform=np.tanh, scale=1., **kwargs):
        super().__init__(transform=transform, scale=scale, **kwargs)
        self.initial_scale = scale

    def get_config(self):
        return {**super().get_config(), "scale": self.initial_scale}


def test_own_get_config_is_used_unchanged():
    config = OwnConfigModel(scale=2.).get_config()
    assert sorted(config) == ["dtype", "name", "scale", "trainable"]
    assert float(OwnConfigModel.from_config(config).scale) == pytest.approx(2., rel=1e-7)
