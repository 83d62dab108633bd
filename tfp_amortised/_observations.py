"""Observations of one or several observed nodes: their names, the structure data take, and its conversion.

A model observes one node (`observed="x"`) or several (`observed=("x", "y")`). Observations of one node are a
Tensor `[M, *event_shape]`; of several, a dict `{node: Tensor[M, *event_shape_node]}` keyed by exactly those
nodes, a `tf.nest` structure (`tf.nest.map_structure` acts node by node). Data for one node may also come as a
one-key dict `{node: array}`, as Keras and `tf.data` give dict data. Ragged data (a `tf.RaggedTensor`, a list of
rows of unequal lengths, a NumPy object array) are refused with an error naming the argument.
"""

import collections.abc

import numpy as np
import tensorflow as tf


def normalise(observed):
    """`observed` as a node name, or a tuple of two or more distinct names (a list or tuple of one name is that
    name); a TypeError or ValueError naming `observed` otherwise."""
    if isinstance(observed, str):
        return observed
    if not (isinstance(observed, (list, tuple)) and observed and all(isinstance(name, str) for name in observed)):
        raise TypeError("observed must be a node name or a non-empty list of node names. "
                        f"Received: observed={observed!r}")
    if len(set(observed)) != len(observed):
        raise ValueError(f"observed must name each node once. Received: observed={observed!r}")
    return observed[0] if len(observed) == 1 else tuple(observed)


def names(observed):
    """The observed node names as a tuple."""
    return (observed,) if isinstance(observed, str) else tuple(observed)


def select(named_value, observed):
    """The observations in a `{node name: Tensor}` dict: the Tensor of one node, or a dict of several."""
    return named_value[observed] if isinstance(observed, str) else {name: named_value[name] for name in observed}


def as_named(observations, observed):
    """Observations (a Tensor of one node, or a dict of several) as a dict `{node name: Tensor}`."""
    return {observed: observations} if isinstance(observed, str) else dict(observations)


def num_rows(observations):
    """The number of rows `M` of a Tensor `[M, ...]` or of a dict of them (its first node's): a scalar Tensor."""
    return tf.shape(tf.nest.flatten(observations)[0])[0]


def convert(value, observed, argument):
    """Data of the observed nodes as observations: a Tensor for one node, a dict of Tensors for several.

    Args:
      value: for one node, an array-like `[M, *event_shape]` or a one-key dict `{node: array-like}`; for several,
        a dict keyed by exactly the observed nodes, with the same number of rows in each.
      observed: the observed node name, or a tuple of them (`normalise`).
      argument: the argument's name in the messages.

    Raises:
      ValueError: naming `argument` and the missing or unexpected keys of a dict, a ragged value, or nodes with
        different numbers of rows; TypeError for a value that is not a dict when several nodes are observed.
    """
    expected = names(observed)
    if isinstance(value, collections.abc.Mapping):
        if set(value) != set(expected):
            raise ValueError(
                f"{argument} must be keyed by the observed nodes {list(expected)}: missing "
                f"{sorted(set(expected) - set(value))}, unexpected {sorted(set(value) - set(expected), key=str)}. "
                f"Received: {argument} with keys {list(value)}")
        value = {name: as_tensor(value[name], f"{argument}[{name!r}]") for name in expected}
        rows = {name: node.shape[0] for name, node in value.items() if node.shape.rank}
        if len(set(rows.values()) - {None}) > 1:
            raise ValueError(f"{argument} must have the same number of rows for every observed node. "
                             f"Received: rows {rows}")
        return select(value, observed)
    if not isinstance(observed, str):
        raise TypeError(f"{argument} must be a dict with one array per observed node {list(expected)}. "
                        f"Received: {argument} of type {type(value).__name__}")
    return as_tensor(value, argument)


def as_tensor(value, argument):
    """`value` as a Tensor, or a dict of values as a dict of Tensors; a ValueError naming `argument` for ragged
    data (a `tf.RaggedTensor`, rows of unequal lengths, a NumPy array of Python objects)."""
    if isinstance(value, collections.abc.Mapping):
        return {name: as_tensor(node, f"{argument}[{name!r}]") for name, node in value.items()}
    ragged = (f"{argument} is ragged (rows of unequal lengths), which is not supported: pad or crop the rows to "
              "one length, or summarise each row by a fixed number of features.")
    if isinstance(value, tf.RaggedTensor):
        raise ValueError(f"{ragged} Received: {argument} of type RaggedTensor")
    if isinstance(value, np.ndarray) and value.dtype == object:
        raise ValueError(f"{ragged} Received: {argument}, a NumPy array of dtype object and shape {value.shape}")
    try:
        return tf.convert_to_tensor(value)
    except (ValueError, TypeError):
        if isinstance(value, (list, tuple)):
            raise ValueError(f"{ragged} Received: {argument}, a {type(value).__name__} that is not rectangular "
                             "numbers") from None
        raise


def cast_like(observations, reference):
    """Each node of `observations` cast to the dtype of the same node of `reference` (`[B, *event_shape]`, or
    dicts of them), with the reference's static event shape (a distributed batch loses it)."""
    return tf.nest.map_structure(
        lambda value, like: tf.ensure_shape(tf.cast(value, like.dtype), [None, *like.shape[1:]]),
        observations, reference)
