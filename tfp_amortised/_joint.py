"""Name-based access to the nodes of any TFP JointDistribution.

Coroutine, Sequential and Named joint distributions (batched or AutoBatched) return samples in three different
structures; the estimator works with one: a dict from node name to value. This is the only module that touches
TFP's JointDistribution internals (`_flat_resolve_names`, `_model_flatten`), so a change there is mended here.
"""

import tensorflow as tf
import tensorflow_probability as tfp

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
    """Raises a ValueError naming the nodes when `observed` is not one of them."""
    names = node_names(joint)
    if observed not in names:
        raise ValueError(
            f"observed={observed!r} is not a node of the joint distribution; its nodes are {list(names)}.")


def log_prob(joint, named_value):
    """`joint.log_prob` of a `{node name: Tensor}` dict; the batch shape follows the values' sample shape."""
    return joint.log_prob(**named_value)


def log_prob_parts(joint, named_value):
    """`joint.log_prob_parts` of a `{node name: Tensor}` dict, as a dict `{node name: Tensor}`: each node's own term
    (its log-density given its parents), with the batch shape of the values that node's term depends on."""
    return as_named(joint, joint.log_prob_parts(**named_value))


def stop_gradient(named_value):
    """Detaches every node of a `{node name: Tensor}` dict."""
    return {name: tf.stop_gradient(v) for name, v in named_value.items()}
