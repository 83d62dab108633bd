"""The decoder network of the example models: a seeded Keras MLP applied over any leading batch dimensions."""

import keras
import tensorflow as tf


def mlp(input_dim, hidden_units, output_dim, activation="tanh", output_activation=None, seed=None,
        name="decoder"):
    """A built `keras.Sequential` of `Dense` layers mapping `[batch, input_dim]` to `[batch, output_dim]`.

    Args:
      input_dim: size of the input's last axis.
      hidden_units: sizes of the hidden layers, each with `activation`.
      output_dim: size of the output layer, with `output_activation` (linear by default).
      seed: base seed of the Glorot-uniform initialisers (layer `i` gets `seed + i`), or `None`.
    """
    sizes = (*hidden_units, output_dim)
    activations = (activation,) * len(hidden_units) + (output_activation,)
    network = keras.Sequential(
        [keras.layers.Dense(units, activation=act,
                            kernel_initializer=keras.initializers.GlorotUniform(None if seed is None else seed + i))
         for i, (units, act) in enumerate(zip(sizes, activations))], name=name)
    network.build((None, input_dim))
    return network


def apply_over_batch(network, inputs, output_shape):
    """`network` on the last axis of `inputs`, whatever its leading dimensions.

    JointDistributions and the conditional form call decoders on inputs of any rank, while `Dense` layers want
    rank 2: flatten the leading dimensions, apply, and restore them.

    Args:
      network: a Keras model mapping `[batch, D]` to `[batch, prod(output_shape)]`.
      inputs: `Tensor[*batch, D]`.
      output_shape: the event shape of one output, a tuple of ints.

    Returns:
      `Tensor[*batch, *output_shape]`.
    """
    batch_shape = tf.shape(inputs)[:-1]
    outputs = network(tf.reshape(inputs, [-1, inputs.shape[-1]]))
    return tf.reshape(outputs, tf.concat([batch_shape, tf.constant(output_shape, tf.int32)], axis=0))
