"""Name-based access to the nodes of any TFP JointDistribution.

Coroutine, Sequential and Named joint distributions (batched or AutoBatched) return samples in three different
structures; the estimator works with one: a dict from node name to value. This is the only module that touches
TFP's JointDistribution internals (`_flat_resolve_names`, `_model_flatten`), so a change there is mended here.
"""

import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised import _observations

tfd = tfp.distributions


def resolve_joint(joint):
    """Returns `joint` itself, or calls it when it is a zero-argument factory of a JointDistribution."""
    if isinstance(joint, tfd.JointDistribution):
        return joint
    if callable(joint):
        built = joint()
        if isinstance(built, tfd.JointDistribution):
            return built
        raise TypeError(
            "joint must be a tfd.JointDistribution or a zero-argument callable returning one. "
            f"Received: a callable returning {type(built).__name__}")
    raise TypeError(
        "joint must be a tfd.JointDistribution or a zero-argument callable returning one. "
        f"Received: joint of type {type(joint).__name__}")


def node_names(joint):
    """The node names of `joint`, in the model's order (unnamed Sequential nodes get TFP's generated names)."""
    return tuple(joint._flat_resolve_names())  # pylint: disable=protected-access


def as_named(joint, value):
    """Converts a value in `joint`'s own structure to a dict `{node name: Tensor}`."""
    flat = joint._model_flatten(value)  # pylint: disable=protected-access
    return dict(zip(node_names(joint), flat))


def check_observed(joint, observed):
    """`observed` normalised (`_observations.normalise`: a node name, or a tuple of several); a ValueError naming
    the nodes when it names one that is not a node of `joint`."""
    observed = _observations.normalise(observed)
    names = node_names(joint)
    unknown = [name for name in _observations.names(observed) if name not in names]
    if unknown:
        received = observed if isinstance(observed, str) else list(observed)
        raise ValueError(f"observed={received!r} is not a node of the joint distribution; its nodes are "
                         f"{list(names)}{'' if isinstance(observed, str) else f' (unknown: {unknown})'}.")
    return observed


def log_prob(joint, named_value):
    """`joint.log_prob` of a `{node name: Tensor}` dict; the batch shape follows the values' sample shape."""
    return joint.log_prob(**named_value)


def log_prob_parts(joint, named_value):
    """`joint.log_prob_parts` of a `{node name: Tensor}` dict, as a dict `{node name: Tensor}`: each node's own term
    (its log-density given its parents), with the batch shape of the values that node's term depends on."""
    return as_named(joint, joint.log_prob_parts(**named_value))


def paired_log_prob(joint, sleep_sample, observations, observed):
    """`log p(z_n, x_m)` of every sleep draw's latents `z_n` with every observation `x_m`: `Tensor[M, N]`.

    With several observed nodes, `x_m` sets every one of them to its wake value.

    An explicitly batched joint evaluates the pairs by broadcasting, latents as `[1, N, ...]` against observations
    as `[M, 1, ...]`, in one `log_prob`. An AutoBatched joint vectorises `log_prob` over all `M N` pairs with
    `tf.vectorized_map`, which runs any op it cannot vectorise (a `tf.gather` from a variable, for one) in a loop
    of `M N` iterations. When one node is observed and it is the model's last (no node depends on it), an
    AutoBatched joint is instead run once over the `N` sleep draws (`sample_distributions` with the draws as
    values) and the observed node's conditional distribution `p(x | z_n)`, of batch shape `[N]`, is evaluated at
    the observations by broadcasting: `log p(z_n, x_m) = sum_latents log p(z_n) + log p(x_m | z_n)`, the same value
    from `N` model evaluations.

    Args:
      joint: a `tfd.JointDistribution` with scalar batch shape.
      sleep_sample: dict `{node name: Tensor[N, *event_shape]}`, every node (the observed node's values are not
        paired).
      observations: `Tensor[M, *event_shape]` of the node `observed`, or with several observed nodes a dict
        `{node: Tensor[M, *event_shape]}` (`_observations`).
      observed: name of the observed node, or a tuple of names.

    Returns:
      `Tensor[M, N]`, or a shape that broadcasts to it (an explicitly batched model whose log-density does not
      depend on every pair).
    """
    names = node_names(joint)
    if getattr(joint, "use_vectorized_map", False) and names[-1] == observed:
        value = joint._model_unflatten([sleep_sample[name] for name in names])  # pylint: disable=protected-access
        distributions, _ = joint.sample_distributions(value=value)
        distributions = joint._model_flatten(distributions)  # pylint: disable=protected-access
        prior = sum(distribution.log_prob(sleep_sample[name])
                    for name, distribution in zip(names[:-1], distributions[:-1]))
        return prior + distributions[-1].log_prob(tf.expand_dims(observations, 1))
    paired = {name: value[tf.newaxis] for name, value in sleep_sample.items()}
    observations = _observations.as_named(observations, observed)
    paired.update({name: value[:, tf.newaxis] for name, value in observations.items()})
    return log_prob(joint, paired)


def stop_gradient(named_value):
    """Detaches every node of a `{node name: Tensor}` dict."""
    return {name: tf.stop_gradient(v) for name, v in named_value.items()}
