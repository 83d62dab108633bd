"""The generative-model contract: a Keras layer that owns the parameters and builds a JointDistribution."""

import inspect

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from keras.src.saving.serialization_lib import SerializableDict
from keras.src.utils import python_utils

tfb = tfp.bijectors

# NumPy dtype kinds whose values survive JSON: bool, signed and unsigned integers, floats, unicode strings.
_JSON_DTYPE_KINDS = "biufU"
_NUMPY_TAG, _TUPLE_TAG = "__numpy__", "__tuple__"


class ConstrainedWeight(tfp.util.DeferredTensor):
    """A parameter `bijector.forward(weight)` whose unconstrained `weight` is a Keras weight.

    Returned by `GenerativeModel.add_constrained_weight`. It is a `tfp.util.DeferredTensor`: TFP distributions
    and bijectors take it as a parameter and read `bijector.forward(weight)` afresh every time it is used
    (`tf.convert_to_tensor`, arithmetic, `log_prob`), so a `JointDistribution` built from it inside a
    `tf.GradientTape` differentiates through to `weight`. `float(...)`, `.numpy()` and `np.asarray(...)` give
    the current constrained value; `assign(value)` sets it (in the constrained space).

    Attributes:
      weight: the unconstrained `keras.Variable`, tracked by the layer that created it (trained by the
        optimiser, saved in `.keras` files).
      bijector: the `tfb.Bijector` mapping `weight` to the parameter.
    """

    def __init__(self, weight, bijector):
        # The DeferredTensor wraps the tf.Variable behind the Keras variable: TFP treats only tf.Variables and
        # tf.Modules as references and converts anything else, a keras.Variable included, to a constant at
        # construction, which would freeze the parameter at its initial value.
        super().__init__(weight.value, bijector, name=weight.name)
        self._weight, self._bijector = weight, bijector

    @property
    def weight(self):
        return self._weight

    @property
    def bijector(self):
        return self._bijector

    def assign(self, value):
        """Sets the constrained value: `weight <- bijector.inverse(value)`, computed as at creation (eagerly).

        Args:
          value: array-like broadcastable to the shape, in the bijector's range.

        Raises:
          ValueError: if `bijector.inverse(value)` is not finite.
        """
        self._weight.assign(np.broadcast_to(_unconstrained(value, self._bijector, self._weight.dtype, "value"),
                                            self._weight.shape))

    def __float__(self):
        return float(self.numpy())


class GenerativeModel(keras.layers.Layer):
    """Base class of generative models trained by `AmortisedLearner`.

    A subclass creates its parameters as Keras weights (`add_weight`, `add_constrained_weight`, or sub-layers
    built in `__init__`) and implements `joint_distribution()`, which builds `p_theta(z, x)` from them as a
    `tfd.JointDistribution` with scalar batch shape. The learner calls it inside its gradient tape at every
    step, so building must be cheap and must read the weights afresh (never cache the distribution).

    Contract, in the manner of the Inference Gym's model contract:
      - `observed`: name of the observed node (default `"x"`), or a list of names (several observed nodes, whose
        data are dicts keyed by them); every other node is a latent.
      - `joint_distribution()`: the model; sampling it gives `{node: Tensor[N, *event_shape]}`.
      - `log_marginal(x)` (optional): the exact `log p_theta(x)`, `Tensor[M, *event_shape] -> Tensor[M]`, for
        models where it has a closed form; tests and benchmarks use it as ground truth.

    A sub-layer called inside the model must accept any number of leading batch dimensions: the
    conditional form of the estimator evaluates the model on latents of shape `[1, N, ...]`.

    Parameters held the TFP way are made trainable: assigning a `tfp.util.TransformedVariable` to an attribute
    stores instead the equivalent `add_constrained_weight` (same bijector, value, dtype and trainable flag),
    and assigning a `tf.Variable` stores the equivalent Keras weight (`add_weight`), so the optimiser trains them
    and `.keras` files keep them. The Keras weight is named after the attribute and holds a copy of the
    variable's value: another reference to the original variable no longer shares it. Only direct attributes
    are converted; `check_trainable(model)` reports any other `tf.Variable` that Keras does not track (in a
    list or dict attribute, a plain Keras sub-layer or a `tf.Module`).

    Serialisation: a subclass whose constructor takes only numbers, strings, booleans, `None`, NumPy arrays
    (numeric, boolean or string) and lists, tuples and string-keyed dicts of these needs no `get_config`:
    the constructor arguments are recorded and restored, arrays with their dtype and shape, tuples as tuples
    and NumPy scalars as Python numbers. The values are those passed (an array mutated after construction is
    saved mutated). Any other argument (a layer, a callable, a `tf.Tensor`, an arbitrary object) needs a `get_config`
    of the subclass's own; `get_config` says which argument it is.
    """

    observed = "x"

    def __new__(cls, *args, **kwargs):
        instance = super().__new__(cls, *args, **kwargs)
        # Keras records the constructor arguments only when every one is a Python scalar, string or None; record
        # them here when they are also NumPy arrays, or else which argument is not serialisable (by its path and
        # type only: keeping the value would keep, for instance, a tf.Variable reachable from the layer).
        instance._unserialisable_argument = None
        if getattr(instance, "_auto_config", None) is None and not getattr(instance, "_auto_config_error_args", False):
            arguments = _constructor_arguments(cls, args, kwargs)
            if arguments is not None:
                failure = next(filter(None, (_first_unserialisable(value, name)
                                             for name, value in arguments.items())), None)
                if failure is None:
                    instance._auto_config = SerializableDict(**arguments)
                else:
                    instance._unserialisable_argument = failure
        return instance

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True

    def __setattr__(self, name, value):
        if isinstance(value, tfp.util.TransformedVariable):
            raw = value.pretransformed_input
            weight = self.add_weight(shape=raw.shape, dtype=raw.dtype.name, initializer=_constant(raw.numpy()),
                                     trainable=raw.trainable, autocast=False, name=name)
            value = ConstrainedWeight(weight, value.bijector)
        elif isinstance(value, tf.Variable):
            value = self.add_weight(shape=value.shape, dtype=value.dtype.name, initializer=_constant(value.numpy()),
                                    trainable=value.trainable, name=name)
        super().__setattr__(name, value)

    def add_positive_weight(self, name, value, trainable=True):
        """A scalar weight `raw` initialised so that `tf.nn.softplus(raw) == value`: a positive parameter."""
        initial = float(tfp.math.softplus_inverse(np.float64(value)))
        return self.add_weight(shape=(), initializer=keras.initializers.Constant(initial), trainable=trainable,
                               name=name)

    def add_constrained_weight(self, name, initial_value, bijector=tfb.Softplus(), shape=None, trainable=True,
                               dtype=None):
        """A parameter `bijector.forward(weight)`, with `weight` an unconstrained Keras weight.

        The weight is tracked by Keras like any `add_weight` (trained by the optimiser, saved in `.keras`
        files and SavedModels) and starts at `bijector.inverse(initial_value)`, computed in float64 (in the
        bijector's dtype if it has parameters) and then cast, so `initial_value` is recovered to the
        precision of `dtype`. The return value is a `ConstrainedWeight`, a `tfp.util.DeferredTensor`: pass it
        to TFP distributions as is, or use it as a tensor; it reads `bijector.forward(weight)` afresh each time,
        so the learner's gradient reaches `weight` (`d/d weight = d/d value * bijector.forward'(weight)`).

        A `DeferredTensor` over the Keras variable itself does not work (TFP converts a `keras.Variable` to a
        constant when the DeferredTensor is built), hence the wrapper over the `tf.Variable` that stores it.

        Args:
          name: name of the weight.
          initial_value: the parameter's initial value, in the bijector's range: array-like of shape `shape`
            (or broadcastable to it).
          bijector: `tfb.Bijector` from the unconstrained weight to the parameter; default `tfb.Softplus()`
            (a positive parameter).
          shape: shape of the weight; default the shape of `initial_value`. Bijectors that change the shape
            (such as `tfb.FillScaleTriL`) need the unconstrained shape here.
          trainable: whether the optimiser trains it.
          dtype: dtype of the weight; default the layer's variable dtype.

        Returns:
          `ConstrainedWeight` of shape `bijector.forward_event_shape(shape)`; its `.weight` is the Keras weight.

        Raises:
          ValueError: if `bijector.inverse(initial_value)` is not finite (the value is outside the range).
        """
        dtype = dtype or self.variable_dtype
        raw = _unconstrained(initial_value, bijector, dtype, "initial_value")
        shape = raw.shape if shape is None else tuple(shape)
        weight = self.add_weight(shape=shape, dtype=dtype, initializer=_constant(np.broadcast_to(raw, shape)),
                                 trainable=trainable, autocast=False, name=name)
        return ConstrainedWeight(weight, bijector)

    def joint_distribution(self):
        """Returns `p_theta(z, x)` as a `tfd.JointDistribution` built from the current weights."""
        raise NotImplementedError(f"{type(self).__name__} must implement joint_distribution().")

    @python_utils.default
    def get_config(self):
        """The layer's config; for a subclass without a `get_config` of its own, its constructor arguments.

        Raises:
          NotImplementedError: if the subclass has no `get_config` and a constructor argument is not
            serialisable (see the class docstring).
        """
        if not python_utils.is_default(self.get_config):
            return super().get_config()  # the subclass's own get_config adds its arguments
        if self._unserialisable_argument is not None:
            path, type_name = self._unserialisable_argument
            raise NotImplementedError(
                f"{type(self).__name__} cannot be saved: its constructor argument `{path}` (a {type_name}) is not "
                "serialisable automatically (only numbers, strings, booleans, None, NumPy arrays and lists, tuples "
                f"and dicts of these are). Implement {type(self).__name__}.get_config() returning "
                "{**super().get_config(), ...} with every constructor argument in a JSON-serialisable form (and "
                "from_config if they need converting back): see the README section \"Writing a model\".")
        return _encode(super().get_config())

    @classmethod
    def from_config(cls, config):
        """Builds the model from `get_config()`, with NumPy arrays and tuples restored."""
        return super().from_config(_decode(config))


def untracked_variables(layer):
    """Every `tf.Variable` reachable from `layer` that Keras does not track, so never trains nor saves.

    Walks the attributes of `layer` recursively through sub-layers, `tf.Module`s (a `tfp.util.DeferredTensor`
    is reported under its own attribute), lists, tuples and dicts, and keeps the `tf.Variable`s that do not
    store one of `layer.variables` (Keras variables, and so `add_weight` / `add_constrained_weight`, are
    tracked).

    Args:
      layer: a `keras.layers.Layer`.

    Returns:
      List of `(path, variable)`: `path` is the attribute path from `layer`, attributes joined by `.`, list
      items as `[i]` and dict items as `['key']` (e.g. `"decoder.scale"`, `"params['scale']"`).
    """
    tracked = {id(v.value) for v in layer.variables}
    found, seen = [], set()

    def visit(obj, path):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, tf.Variable):
            if id(obj) not in tracked:
                found.append((path, obj))
        elif isinstance(obj, tfp.util.DeferredTensor):
            visit(obj.pretransformed_input, path)
        elif isinstance(obj, (keras.layers.Layer, tf.Module)):
            # Public attributes first, so that a sub-layer is named by its attribute, not by Keras' lists.
            for name, value in sorted(vars(obj).items(), key=lambda item: item[0].startswith("_")):
                if not name.startswith("_self_"):  # TensorFlow's checkpoint bookkeeping
                    visit(value, f"{path}.{name}" if path else name)
        elif isinstance(obj, dict):
            for key, value in obj.items():
                visit(value, f"{path}[{key!r}]")
        elif isinstance(obj, (list, tuple)):
            for index, value in enumerate(obj):
                visit(value, f"{path}[{index}]")

    visit(layer, "")
    return found


def check_trainable(layer):
    """Raises if a `tf.Variable` reachable from `layer` is not tracked by Keras (see `untracked_variables`).

    Raises:
      ValueError: naming the attribute path of each untracked variable.
    """
    untracked = untracked_variables(layer)
    if untracked:
        received = "; ".join(f"attribute '{path}' holding a tf.Variable that Keras does not track "
                             f"(shape {tuple(variable.shape)}, dtype {variable.dtype.name})"
                             for path, variable in untracked)
        raise ValueError(
            f"{type(layer).__name__} holds tf.Variables that Keras does not track: the optimiser would never train "
            "them and saving would drop them. Create parameters with self.add_weight(...), or, for a constrained "
            "parameter, self.add_constrained_weight(name, initial_value, bijector) (a tfp.util.TransformedVariable "
            f"or tf.Variable assigned directly as an attribute of a GenerativeModel is converted). Received: "
            f"{received}.")


def _unconstrained(value, bijector, dtype, argument):
    """`bijector.inverse(value)` computed in float64 (or the bijector's own dtype) and cast to `dtype`: ndarray."""
    work_dtype = tf.as_dtype(bijector.dtype or tf.float64)
    raw = tf.cast(bijector.inverse(tf.constant(np.asarray(value, work_dtype.as_numpy_dtype))), dtype).numpy()
    if not np.all(np.isfinite(raw)):
        raise ValueError(f"{argument} must lie in the range of {bijector.name} (its inverse must be finite). "
                         f"Received: {argument}={value!r}, whose inverse is {raw.tolist()}")
    return raw


def _constant(value):
    """A Keras initializer returning `value` (an ndarray of the weight's shape), cast to the weight's dtype."""
    return lambda shape, dtype=None: tf.cast(value, dtype)


def _constructor_arguments(cls, args, kwargs):
    """The keyword arguments `cls(*args, **kwargs)` binds (defaults included, `**kwargs` expanded, without
    `name`), or None if they cannot be replayed as keywords (positional-only or variadic positional)."""
    signature = inspect.signature(cls.__init__)
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError:
        return None  # __init__ will raise the error itself
    parameters = list(signature.parameters.values())[1:]
    if any(p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL) for p in parameters):
        return None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)))
    for p in parameters:
        if p.kind == p.VAR_KEYWORD:
            arguments.update(arguments.pop(p.name))
    arguments.pop("name", None)
    return arguments


def _first_unserialisable(value, path):
    """`(path, type name)` of the first value in the nest `value` that `_encode` cannot store, or None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    if isinstance(value, (np.ndarray, np.generic)):
        return None if value.dtype.kind in _JSON_DTYPE_KINDS else (path, f"NumPy array of dtype {value.dtype}")
    if isinstance(value, dict):
        items = value.items()
        if not all(isinstance(key, str) for key in value):
            return path, "dict with non-string keys"
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return path, type(value).__name__
    for key, item in items:
        failure = _first_unserialisable(item, f"{path}[{key!r}]" if isinstance(value, dict) else f"{path}[{key}]")
        if failure is not None:
            return failure
    return None


def _encode(value):
    """Makes a config JSON-ready: NumPy arrays and tuples become tagged dicts (`_decode` reverses it)."""
    if isinstance(value, np.ndarray):
        return {"class_name": _NUMPY_TAG, "config": {"value": value.tolist(), "dtype": value.dtype.str}}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"class_name": _TUPLE_TAG, "config": {"value": [_encode(item) for item in value]}}
    if isinstance(value, list):
        return [_encode(item) for item in value]
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    return value


def _decode(value):
    """Reverses `_encode`; also restores the arrays Keras itself writes as `__numpy__` dicts."""
    if isinstance(value, dict):
        if value.get("class_name") == _NUMPY_TAG and isinstance(value.get("config"), dict):
            return np.array(value["config"]["value"], dtype=value["config"]["dtype"])
        if value.get("class_name") == _TUPLE_TAG and isinstance(value.get("config"), dict):
            return tuple(_decode(item) for item in value["config"]["value"])
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value
