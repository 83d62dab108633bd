"""Sharing one amortised-learning step between the replicas of a `tf.distribute` strategy.

With `R` replicas and a global sleep budget `N`, replica `r` draws its own `N / R` sleep samples with the step
seed folded with `r`. The sleep observations of all replicas are all-gathered, so every replica computes the
same global ridge weights `alpha: [M, N]` (Wenliang et al., 2020) from the same `N` points; replica `r` then
differentiates only the log-joint of its own samples, weighted by its own columns of `alpha`:

    loss_r = -(1 / M) sum_m sum_{n in S_r} alpha_n(x_m) log p(z_n, x_n or x_m),      sum_r loss_r = loss,

so the all-reduced (summed) gradient is the gradient of the single-device loss on the global sleep set, and
the `M x N` log-density terms are split between the replicas. Dividing by the global batch `M` (the wake
rows are all-gathered too) is the `1 / R` loss scaling that Keras' summing of replica gradients expects. Outside
a strategy (or with one replica) every function here is the identity, and the seed is not folded.
"""

import tensorflow as tf


def replica_id_and_count():
    """`(replica id, number of replicas in sync)` of the current replica context; `(0, 1)` outside a strategy."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: one caller
        return 0, 1
    return context.replica_id_in_sync_group, context.num_replicas_in_sync


def local_num_sleep(num_sleep):
    """This replica's share `N / R` of the global sleep budget; `N` must be divisible by `R`."""
    _, count = replica_id_and_count()
    if count == 1:
        return num_sleep
    if num_sleep % count:
        raise ValueError(
            f"num_sleep must be divisible by the number of replicas ({count}) so that every replica draws the "
            f"same share of the sleep set. Received: num_sleep={num_sleep}")
    return num_sleep // count


def replica_seed(seed):
    """The step seed `int32[2]` folded with the replica id (unchanged with one replica)."""
    replica_id, count = replica_id_and_count()
    seed = tf.cast(seed, tf.int32)
    if count == 1:
        return seed
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica_id, tf.int32))


def gather(value):
    """Concatenates `value: [B_r, ...]` (each Tensor of a dict of them) of every replica along axis 0, in replica
    order (static shape kept)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value

    def gather_one(value):
        size = None if value.shape[0] is None else value.shape[0] * context.num_replicas_in_sync
        return tf.ensure_shape(context.all_gather(_placed(value), axis=0), [size, *value.shape[1:]])

    return tf.nest.map_structure(gather_one, value)


def total(value):
    """Sum of `value` over the replicas (all-reduce); `value` itself with one replica."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, _placed(value))


def own_columns(weights, num_local):
    """The columns of `weights: [M, N]` that belong to this replica's `num_local` sleep samples: `[M, N / R]`."""
    replica_id, count = replica_id_and_count()
    if count == 1:
        return weights
    return weights[:, replica_id * num_local:(replica_id + 1) * num_local]


def _placed(value):
    """`value` through an op: MultiWorkerMirroredStrategy's collectives reject a bare tf.function input (TF 2.21:
    "destinations can not be empty"), which is what a distributed dataset's batch is."""
    return tf.identity(value)


def as_logs(results):
    """Metric results as `fit` logs: rank 1 across several workers, where Keras 3's `fit` reduces each log with
    `strategy.reduce(MEAN, axis=0)` and fails on scalars (tensorflow/tensorflow#72388); unchanged otherwise."""
    extended = tf.distribute.get_strategy().extended
    if getattr(extended, "_in_multi_worker_mode", lambda: False)():  # pylint: disable=protected-access
        return {name: value[tf.newaxis] for name, value in results.items()}
    return results
