"""Export of a trained `AmortisedLearner` as a TensorFlow SavedModel that needs only TensorFlow to serve.

Endpoints (all `tf.function`s with input signatures):

    sample(num_samples: int32[], seed: int32[2]) -> {node: [num_samples, *event_shape]}    (stateless seed)
    log_joint(*nodes) -> [B]        one input per node, in the model's order, each [B, *event_shape], named
                                    after the node in the serving signature
    posterior_mean(x: [M, *event_shape]) -> {latent: float [M, *event_shape],
                                             categorical latent + "_probabilities": float [M, *event_shape, C]}
                                    with several observed nodes, one input per observed node, in the order of
                                    `observed`, each named after its node

`posterior_mean` is the encoder-free posterior expectation of amortised learning (Wenliang et al., 2020):

    E[z | x] ~= sum_n alpha_n(x) z_n,      alpha(x) = (K + N lam I)^{-1} k(X, x),

for every latent except a categorical one (a `tfd.Categorical` node, possibly inside `tfd.Independent` or
`tfd.Sample`), whose mean label index means nothing: for such a latent `z` with `C` classes the output is
`z_probabilities`, the estimated class probabilities `p(z = c | x) ~= sum_n alpha_n(x) one_hot(z_n)_c`, and there
is no `z` output. (Ridge estimates are not constrained to [0, 1]: they may fall slightly outside it, and sum to one
only with `KernelRidge(intercept=True)`.)

on a sleep set `(z_n, x_n)` drawn at export time and stored in the SavedModel (variable collection
`sleep_set`), by a copy of the learner's `KernelRidge` regression (same kernel, solver, `lam` and feature map,
the map shared with the learner) whose bandwidth is frozen at its export-time value: the median heuristic on the
stored set's kernel inputs, or the fixed bandwidth. With the exact solver (the default) each call factorises the
`N x N` Gram matrix, O(N^3 / 3).
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import _joint, _observations
from tfp_amortised.estimator import sleep
from tfp_amortised.ridge import KernelRidge, flatten_events, median_bandwidth

tfd = tfp.distributions


def export_learner(learner, filepath, num_sleep=None, seed=(0, 0), verbose=False):
    """Writes `learner`'s generative model as a SavedModel with `sample`, `log_joint` and `posterior_mean` (class
    probabilities `{name}_probabilities` for a categorical latent; module docstring).

    Load it with `tf.saved_model.load(filepath)` (no `tfp_amortised` or TFP import needed) or in Keras 3 with
    `keras.layers.TFSMLayer(filepath, call_endpoint="posterior_mean")`.

    Args:
      learner: an `AmortisedLearner`.
      filepath: directory to write.
      num_sleep: size `N` of the stored sleep set of `posterior_mean`; default `learner.num_sleep`.
      seed: stateless seed `int32[2]` of the stored sleep set.
      verbose: print the archive's endpoints.

    #### Examples

    ```python
    learner.export("/tmp/fa")
    served = tf.saved_model.load("/tmp/fa")
    served.posterior_mean(x)["z"]                       # [M, latent_dim]
    served.sample(tf.constant(5), tf.constant([1, 2]))  # {"z": [5, ...], "x": [5, ...]}
    ```
    """
    num_sleep = learner.num_sleep if num_sleep is None else num_sleep
    joint = learner.joint_distribution()
    names = _joint.node_names(joint)
    sleep_set = sleep(joint, num_sleep, seed)
    stored = {name: keras.Variable(value, trainable=False, name=f"sleep_{name}") for name, value in sleep_set.items()}
    frozen_regression = KernelRidge.from_config({
        **learner.regression.get_config(), "name": "frozen_regression", "ridge": float(learner.regression.ridge),
        "bandwidth": float(_frozen_bandwidth(learner.regression, _observations.select(sleep_set, learner.observed))),
        "features": learner.regression.features})

    def sample(num_samples, seed):
        joint = learner.joint_distribution()
        return _joint.as_named(joint, joint.sample(num_samples, seed=seed))

    def log_joint(*values):
        return _joint.log_prob(learner.joint_distribution(), dict(zip(names, values)))

    classes = categorical_classes(joint)

    observed = _observations.names(learner.observed)

    def posterior_mean(*x):
        return posterior_means(frozen_regression, {name: v.value for name, v in stored.items()}, learner.observed,
                               _observations.select(dict(zip(observed, x)), learner.observed), classes)

    archive = keras.export.ExportArchive()
    archive.track(learner)
    archive.track(frozen_regression)
    archive.add_variable_collection("sleep_set", list(stored.values()))
    archive.add_endpoint("sample", sample, input_signature=[
        tf.TensorSpec([], tf.int32, name="num_samples"), tf.TensorSpec([2], tf.int32, name="seed")])
    archive.add_endpoint("log_joint", log_joint, input_signature=[
        tf.TensorSpec([None, *value.shape[1:]], value.dtype, name=name) for name, value in sleep_set.items()])
    archive.add_endpoint("posterior_mean", posterior_mean, input_signature=[
        tf.TensorSpec([None, *sleep_set[name].shape[1:]], sleep_set[name].dtype, name=name) for name in observed])
    archive.write_out(filepath, verbose=verbose)


def _frozen_bandwidth(regression, sleep_x):
    """The bandwidth `posterior_mean` uses: the median heuristic on what the kernel sees of the stored sleep set
    (`regression.kernel_inputs`: its features, standardised if the regression does so), or the fixed one."""
    if regression.bandwidth_rule != "median":
        return regression.bandwidth
    sleep_inputs, _ = regression.kernel_inputs(sleep_x, tf.nest.map_structure(lambda node: node[:1], sleep_x))
    return median_bandwidth(sleep_inputs, regression.bandwidth_subsample)


def categorical_classes(joint):
    """`{node name: number of classes C}` of the nodes of `joint` that are `tfd.Categorical` (possibly inside
    `tfd.Independent` or `tfd.Sample`), read from the distributions' logits or probabilities."""
    distributions, _ = joint.sample_distributions(seed=(0, 0))
    classes = {}
    for name, distribution in _joint.as_named(joint, distributions).items():
        while isinstance(distribution, (tfd.Independent, tfd.Sample)):
            distribution = distribution.distribution
        if isinstance(distribution, tfd.Categorical):
            parameter = distribution.logits if distribution.logits is not None else distribution.probs
            classes[name] = int(parameter.shape[-1])
    return classes


def posterior_means(regression, sleep_set, observed, x, classes):
    """Ridge regression of each latent of `sleep_set` on its observations, evaluated at `x` (`[M, *event_shape]`, a
    dict of them for several observed nodes): `{latent: [M, *event_shape]}`, or for a latent with
    `classes[latent] = C` classes `{latent + "_probabilities": [M, *event_shape, C]}`."""
    weights = regression(_observations.select(sleep_set, observed), x)  # [M, N]
    outputs = {}
    for name, value in sleep_set.items():
        if name in _observations.names(observed):
            continue
        if name in classes:
            name, value = f"{name}_probabilities", tf.one_hot(value, classes[name], dtype=weights.dtype)
        outputs[name] = tf.reshape(tf.matmul(weights, tf.cast(flatten_events(value), weights.dtype)),
                                   tf.concat([[_observations.num_rows(x)], tf.shape(value)[1:]], 0))
    return outputs
