"""Subprocess for tests/test_distributed.py: checks the distributed step on a fresh TensorFlow runtime.

`python tests/distributed_worker.py mirrored OUT.json` splits the CPU into 2 logical devices (before TensorFlow
starts) and uses `MirroredStrategy`; `python tests/distributed_worker.py multi_worker OUT.json` uses
`MultiWorkerMirroredStrategy` with the cluster in `TF_CONFIG`. It writes JSON with the weights and losses of
a short `fit` and, with `mirrored`, for each form: the replicas' summed gradient of `surrogate_log_marginal`,
the change of the weights made by one `AmortisedLearner` step with SGD at learning rate 1 (minus the gradient it
applied), and the single-device gradient on the same global sleep set computed independently, by contracting
per-sample Jacobians of the log-joint with the ridge weights; and the step of an `"auto"` form learner.
"""

import json
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import tensorflow as tf  # noqa: E402

NUM_SLEEP, NUM_HOLDOUT, NUM_WAKE = 64, 8, 32
SEED = 3  # the learner's seed; its first step seed is keras.random.SeedGenerator(SEED).next()


def _strategy(kind):
    if kind == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    return tf.distribute.MultiWorkerMirroredStrategy()


def _flat(gradients):
    return tf.concat([tf.reshape(g, [-1]) for g in gradients], 0).numpy().tolist()


def _oracle_gradient(learner, wake_x, step_seed, form, num_replicas):
    """Gradient of the single-device loss `-(1/M) sum_m sum_n alpha_mn log p(z_n, x_n or x_m)` on the global sleep
    set (replica r's N / R samples, drawn with the step seed folded with r), computed from its definition:
    per-sample Jacobians of the log-joint, `[N, P]` or `[M, N, P]`, contracted with the ridge weights `[M, N]`."""
    from tfp_amortised.estimator import sleep  # pylint: disable=import-outside-toplevel
    joint = learner.joint_distribution()
    shares = [sleep(joint, NUM_SLEEP // num_replicas + NUM_HOLDOUT,
                    tf.random.experimental.stateless_fold_in(tf.cast(step_seed, tf.int32), r))
              for r in range(num_replicas)]
    sleep_set = {name: tf.concat([s[name][:NUM_SLEEP // num_replicas] for s in shares], 0) for name in shares[0]}
    weights = learner.regression(sleep_set["x"], wake_x)  # [M, N]
    with tf.GradientTape(persistent=True) as tape:
        joint = learner.joint_distribution()
        if form == "joint":
            log_joint = joint.log_prob(sleep_set["z"], sleep_set["x"])  # [N]
        else:
            log_joint = joint.log_prob(sleep_set["z"][None], wake_x[:, None])  # [M, N]
    gradients = []
    for jacobian in tape.jacobian(log_joint, learner.trainable_variables):
        jacobian = tf.reshape(jacobian, [*log_joint.shape, -1])  # [N, P] or [M, N, P]
        if form == "joint":
            gradients.append(-tf.reduce_mean(tf.matmul(weights, jacobian), 0))
        else:
            gradients.append(-tf.reduce_mean(tf.einsum("mn,mnp->mp", weights, jacobian), 0))
    return tf.concat(gradients, 0).numpy().tolist()


def _surrogate_gradient(strategy, learner, wake_x, step_seed):
    """Replica-summed gradient of `-mean surrogate_log_marginal`, replica r holding wake rows r*M/R..."""
    from tfp_amortised import surrogate_log_marginal  # pylint: disable=import-outside-toplevel
    share = NUM_WAKE // strategy.num_replicas_in_sync
    shards = strategy.experimental_distribute_values_from_function(
        lambda context: wake_x[context.replica_id_in_sync_group * share:(context.replica_id_in_sync_group + 1) * share])

    @tf.function
    def step(shard):
        def summed_gradient(local_wake_x):
            with tf.GradientTape() as tape:
                surrogate = surrogate_log_marginal(learner.joint_distribution, local_wake_x, num_sleep=NUM_SLEEP,
                                                   seed=step_seed, regression=learner.regression, form=learner.form)
                loss = -tf.reduce_sum(surrogate) / NUM_WAKE
            gradients = tape.gradient(loss, learner.trainable_variables)
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, gradients)

        return strategy.run(summed_gradient, args=(shard,))

    return _flat([strategy.experimental_local_results(g)[0] for g in step(shards)])


def _log_likelihood(strategy, learner, wake_x, step_seed):
    """The step's `log_likelihood` diagnostic on each replica (wake rows shared out), and the single-device
    `prior_log_likelihood` of all wake rows over the global sleep set: every replica's N / R + H samples."""
    from tfp_amortised import amortised_step, prior_log_likelihood  # pylint: disable=import-outside-toplevel
    from tfp_amortised.estimator import sleep  # pylint: disable=import-outside-toplevel
    num_replicas = strategy.num_replicas_in_sync
    share = NUM_WAKE // num_replicas
    shards = strategy.experimental_distribute_values_from_function(
        lambda context: wake_x[context.replica_id_in_sync_group * share:(context.replica_id_in_sync_group + 1) * share])

    @tf.function
    def step(shard):
        return strategy.run(lambda local_wake_x: amortised_step(
            learner.joint_distribution, local_wake_x, num_sleep=NUM_SLEEP, seed=step_seed, form=learner.form,
            num_holdout=NUM_HOLDOUT, log_likelihood=True).diagnostics["log_likelihood"], args=(shard,))

    shares = [sleep(learner.joint_distribution(), NUM_SLEEP // num_replicas + NUM_HOLDOUT,
                    tf.random.experimental.stateless_fold_in(tf.cast(step_seed, tf.int32), r))
              for r in range(num_replicas)]
    sleep_set = {name: tf.concat([s[name] for s in shares], 0) for name in shares[0]}
    oracle = tf.reduce_mean(prior_log_likelihood(learner.joint_distribution(), sleep_set, wake_x))
    return {"replicas": [float(v) for v in strategy.experimental_local_results(step(shards))],
            "oracle": float(oracle)}


def _learner_step(strategy, learner, wake_x):
    """Minus the change of the weights made by one `fit` step with SGD at learning rate 1 (the applied gradient),
    and the step's logs."""
    import keras  # pylint: disable=import-outside-toplevel
    with strategy.scope():
        learner.compile(optimizer=keras.optimizers.SGD(1.))
    before = _flat(learner.trainable_variables)
    history = learner.fit(wake_x, batch_size=NUM_WAKE, epochs=1, shuffle=False, verbose=0)
    return [b - a for b, a in zip(before, _flat(learner.trainable_variables))], history.history


def _auto_choices(strategy, learner, wake_x, num_seeds=20):
    """Each replica's `conditional_form` in `"auto"` steps at `num_seeds` seeds: `[[replica 0, replica 1], ...]`."""
    from tfp_amortised import amortised_step  # pylint: disable=import-outside-toplevel
    share = NUM_WAKE // strategy.num_replicas_in_sync
    shards = strategy.experimental_distribute_values_from_function(
        lambda context: wake_x[context.replica_id_in_sync_group * share:(context.replica_id_in_sync_group + 1) * share])

    @tf.function
    def step(shard, seed):
        return strategy.run(lambda local_wake_x: amortised_step(
            learner.joint_distribution, local_wake_x, num_sleep=NUM_SLEEP, seed=seed, form="auto",
            num_holdout=NUM_HOLDOUT, variables=learner.generative_model.trainable_variables,
            regression=learner.regression).diagnostics["conditional_form"], args=(shard,))

    return [[float(v) for v in strategy.experimental_local_results(step(shards, tf.constant([seed, 0])))]
            for seed in range(num_seeds)]


def _skipped_steps(strategy, data):
    """Adam fits on the data's 2 batches, then on the same batches followed by 2 all-NaN ones: the weights and
    optimiser variables of both, the iteration counts and the second fit's skip counts."""
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from tfp_amortised.learner import AmortisedLearner  # pylint: disable=import-outside-toplevel
    from tfp_amortised.models import FactorAnalysisModel  # pylint: disable=import-outside-toplevel
    from tfp_amortised.ridge import KernelRidge  # pylint: disable=import-outside-toplevel

    report = {}
    for name, x in (("clean", data.numpy()), ("poisoned", np.concatenate([data, np.full(data.shape, np.nan)]))):
        with strategy.scope():
            learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=NUM_SLEEP,
                                       num_holdout=NUM_HOLDOUT, seed=SEED, form="joint", regression=KernelRidge())
            learner.compile(optimizer=keras.optimizers.Adam(0.05))
        history = learner.fit(tf.data.Dataset.from_tensor_slices(x.astype("float32")).batch(NUM_WAKE), epochs=1,
                              verbose=0)
        report[name] = {"state": _flat(learner.trainable_variables + learner.optimizer.variables[1:]),
                        "iterations": int(learner.optimizer.iterations.numpy()),
                        "skipped_steps": history.history["skipped_steps"][0],
                        "invalid_batches": history.history["invalid_batches"][0]}
    return report


def main(kind, out_path):
    strategy = _strategy(kind)
    import keras  # pylint: disable=import-outside-toplevel
    from tfp_amortised.learner import AmortisedLearner  # pylint: disable=import-outside-toplevel
    from tfp_amortised.models import FactorAnalysisModel  # pylint: disable=import-outside-toplevel
    from tfp_amortised.ridge import KernelRidge  # pylint: disable=import-outside-toplevel

    data = FactorAnalysisModel(1, 2, seed=5).joint_distribution().sample(NUM_WAKE * 2, seed=[1, 2])[1]
    report = {"num_replicas": strategy.num_replicas_in_sync}
    step_seed = keras.random.SeedGenerator(SEED).next()  # the seed of the learner's first step
    for form in ("joint", "conditional") if kind == "mirrored" else ():  # the gradient checks run on one machine
        with strategy.scope():
            learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=NUM_SLEEP, form=form,
                                       num_holdout=NUM_HOLDOUT, seed=SEED, regression=KernelRidge())
        wake_x = data[:NUM_WAKE]
        report[form] = {"oracle": _oracle_gradient(learner, wake_x, step_seed, form, strategy.num_replicas_in_sync),
                        "surrogate": _surrogate_gradient(strategy, learner, wake_x, step_seed),
                        "log_likelihood": _log_likelihood(strategy, learner, wake_x, step_seed),
                        "learner": _learner_step(strategy, learner, wake_x)[0]}
    if kind == "mirrored":  # the auto form: the replicas must choose the same form, whose step is then the above
        with strategy.scope():
            learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=NUM_SLEEP, form="auto",
                                       num_holdout=NUM_HOLDOUT, seed=SEED, regression=KernelRidge())
        applied, logs = _learner_step(strategy, learner, data[:NUM_WAKE])
        report["auto"] = {"learner": applied, "conditional_form": logs["conditional_form"][0],
                          "choices": _auto_choices(strategy, learner, data[:NUM_WAKE])}

    with strategy.scope():
        learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=NUM_SLEEP, num_holdout=NUM_HOLDOUT,
                                   seed=SEED, form="joint", regression=KernelRidge())
        learner.compile(optimizer=keras.optimizers.Adam(0.05))
    history = learner.fit(data, batch_size=NUM_WAKE, epochs=2, shuffle=False, verbose=0,
                          callbacks=[keras.callbacks.TerminateOnNaN()])
    report["fit"] = {"weights": [v.numpy().ravel().tolist() for v in learner.trainable_variables],
                     "history": history.history}
    if kind == "mirrored":  # a learning regression: hyperparameters trained on the replicas' held-out errors
        with strategy.scope():
            learner = AmortisedLearner(FactorAnalysisModel(1, 2, seed=1), num_sleep=NUM_SLEEP, form="conditional",
                                       num_holdout=NUM_HOLDOUT, seed=SEED, regression=KernelRidge(learn=True))
            learner.compile(optimizer=keras.optimizers.Adam(0.05), regression_optimizer=keras.optimizers.Adam(0.1))
        initial = float(learner.regression.bandwidth) if learner.regression.built else None
        history = learner.fit(data, batch_size=NUM_WAKE, epochs=2, shuffle=False, verbose=0)
        report["learned"] = {"history": history.history, "initialised_bandwidth": initial,
                             "bandwidth": float(learner.regression.bandwidth),
                             "regression_steps": int(learner.regression_optimizer.iterations.numpy())}
    if kind == "mirrored":
        report["skip"] = _skipped_steps(strategy, data)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
