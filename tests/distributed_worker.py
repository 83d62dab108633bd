"""Subprocess for tests/test_distributed.py: checks the distributed step on a fresh TensorFlow runtime.

`python tests/distributed_worker.py mirrored OUT.json` splits the CPU into 2 logical devices (before TensorFlow
starts) and uses `MirroredStrategy`; `python tests/distributed_worker.py multi_worker OUT.json` uses
`MultiWorkerMirroredStrategy` with the cluster in `TF_CONFIG`. It writes JSON with the weights and losses of
a short `fit` and, with `mirrored`, for each form the summed per-replica gradient and the single-device
gradient on the same global sleep set.
"""

import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import tensorflow as tf  # noqa: E402

NUM_SLEEP, NUM_HOLDOUT, NUM_WAKE = 64, 8, 32
SEED = (4, 5)  # the step seed (a Python pair, so TensorFlow is not initialised before the devices are set)


def _strategy(kind):
    if kind == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    return tf.distribute.MultiWorkerMirroredStrategy()


def _global_sleep_set(joint, num_replicas):
    """The sleep set the replicas draw together: replica r's N / R samples with the seed folded with r."""
    from tfp_amortised.estimator import sleep  # pylint: disable=import-outside-toplevel
    shares = [sleep(joint, NUM_SLEEP // num_replicas + NUM_HOLDOUT, tf.random.experimental.stateless_fold_in(SEED, r))
              for r in range(num_replicas)]
    return {name: tf.concat([share[name][:NUM_SLEEP // num_replicas] for share in shares], 0) for name in shares[0]}


def _single_device_gradient(learner, wake_x):
    """Gradient of `-mean_m s_m` on one device, from the global sleep set built by hand."""
    from tfp_amortised.estimator import weighted_log_joint  # pylint: disable=import-outside-toplevel
    with tf.GradientTape() as tape:
        joint = learner.joint_distribution()
        sleep_set = _global_sleep_set(joint, 2)
        weights = learner.ridge(sleep_set["x"], wake_x)
        loss = -tf.reduce_mean(weighted_log_joint(joint, sleep_set, weights, wake_x, form=learner.form))
    return tape.gradient(loss, learner.trainable_variables)


def _distributed_gradient(strategy, learner, wake_x):
    """Sum over replicas of each replica's gradient of its loss share, replica r holding wake rows r*M/2..."""
    half = NUM_WAKE // strategy.num_replicas_in_sync
    shards = strategy.experimental_distribute_values_from_function(
        lambda context: wake_x[context.replica_id_in_sync_group * half:(context.replica_id_in_sync_group + 1) * half])

    @tf.function
    def step(shard):
        def summed_gradient(local_wake_x):
            with tf.GradientTape() as tape:
                terms = learner._surrogate_terms(local_wake_x, SEED)  # pylint: disable=protected-access
            gradients = tape.gradient(terms["loss"], learner.trainable_variables)
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, gradients)

        return strategy.run(summed_gradient, args=(shard,))

    return [strategy.experimental_local_results(g)[0] for g in step(shards)]


def main(kind, out_path):
    strategy = _strategy(kind)
    import keras  # pylint: disable=import-outside-toplevel
    from tfp_amortised.learner import AmortisedLearner  # pylint: disable=import-outside-toplevel
    from tfp_amortised.models import FactorAnalysisModel  # pylint: disable=import-outside-toplevel

    data = FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(NUM_WAKE * 2, seed=[1, 2])[1]
    report = {"num_replicas": strategy.num_replicas_in_sync}
    for form in ("joint", "conditional") if kind == "mirrored" else ():  # the gradient check runs on one machine
        with strategy.scope():
            learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=NUM_SLEEP, form=form,
                                       num_holdout=NUM_HOLDOUT, seed=3)
        report[form] = {
            "distributed": [g.numpy().ravel().tolist() for g in _distributed_gradient(strategy, learner, data[:NUM_WAKE])],
            "single_device": [g.numpy().ravel().tolist() for g in _single_device_gradient(learner, data[:NUM_WAKE])]}

    with strategy.scope():
        learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=NUM_SLEEP, num_holdout=NUM_HOLDOUT,
                                   seed=3)
        learner.compile(optimizer=keras.optimizers.Adam(0.05))
    history = learner.fit(data, batch_size=NUM_WAKE, epochs=2, shuffle=False, verbose=0,
                          callbacks=[keras.callbacks.TerminateOnNaN()])
    report["fit"] = {"weights": [v.numpy().ravel().tolist() for v in learner.trainable_variables],
                     "history": history.history}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
