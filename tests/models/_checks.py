"""Checks shared by the model tests: exact gradients against central differences, eager against compiled."""

import numpy as np
import tensorflow as tf

COMPILE = {"function": tf.function, "xla": lambda fn: tf.function(fn, jit_compile=True)}


def assert_gradients_match_central_differences(fn, variables, step=1e-6, **tolerances):
    """The tape gradient of a scalar `fn()` against central differences, entry by entry of each variable.

    Use float64 variables: with `step = 1e-6` the truncation error is ~ step^2 |f'''| and the round-off
    ~ 1e-16 |f| / step, both far below the tolerances (`np.testing.assert_allclose` keyword arguments).
    """
    with tf.GradientTape() as tape:
        value = fn()
    gradients = tape.gradient(value, variables)
    for variable, gradient in zip(variables, gradients):
        initial = np.array(variable.numpy())  # an array also for a scalar variable
        differences = np.zeros_like(initial)
        for index in np.ndindex(initial.shape):
            values = []
            for sign in (1., -1.):
                shifted = initial.copy()
                shifted[index] += sign * step
                variable.assign(shifted)
                values.append(float(fn()))
            differences[index] = (values[0] - values[1]) / (2. * step)
        variable.assign(initial)
        np.testing.assert_allclose(gradient, differences, err_msg=variable.name, **tolerances)


def assert_log_marginal_compiles(model, x, mode, gradient_atol=1e-5):
    """`model.log_marginal(x)` and its gradient agree eagerly and compiled (`mode` a key of `COMPILE`), up to float32
    reassociation (rtol 1e-5 on the value, 1e-4 on the gradient)."""
    def value_and_gradient():
        with tf.GradientTape() as tape:
            value = model.log_marginal(x)
        return value, tape.gradient(value, model.trainable_variables)

    eager, compiled = value_and_gradient(), COMPILE[mode](value_and_gradient)()
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-5)
    for got, want in zip(compiled[1], eager[1]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=gradient_atol)


def cosine_of_mean_gradients(model, x, num_sleep=2000, seed=(0, 1), form="conditional"):
    """Cosine between the exact mean gradient of `log p(x)` and the amortised estimate of it (default regression)."""
    from tfp_amortised import surrogate_log_marginal  # pylint: disable=import-outside-toplevel

    def mean_gradient(fn):
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(fn())
        return tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(value, model.trainable_variables)], 0)

    exact = mean_gradient(lambda: model.log_marginal(x))
    estimate = mean_gradient(lambda: surrogate_log_marginal(model.joint_distribution, x, num_sleep=num_sleep,
                                                            seed=seed, form=form))
    return float(tf.reduce_sum(exact * estimate) / tf.norm(exact) / tf.norm(estimate))


def reload_in_a_learner(model, path):
    """Saves an `AmortisedLearner` wrapping `model` (with a built Adam) to `path` and returns the loaded model."""
    import keras  # pylint: disable=import-outside-toplevel
    from tfp_amortised import AmortisedLearner  # pylint: disable=import-outside-toplevel
    learner = AmortisedLearner(model, num_sleep=50, form="conditional", seed=1)
    learner.compile(optimizer=keras.optimizers.Adam(0.01))
    learner.optimizer.build(learner.trainable_variables)
    learner.save(path)
    loaded = keras.models.load_model(path).generative_model
    assert isinstance(loaded, type(model))
    return loaded
