"""`tf.distribute` training: MirroredStrategy on 2 logical CPUs, MultiWorkerMirroredStrategy on 2 local workers.

TensorFlow fixes its devices when it starts, so each run is a fresh interpreter (tests/distributed_worker.py);
the pytest process is unaffected. Every subprocess has a timeout and is killed when the test ends.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
TIMEOUT = 600  # seconds of wall time; the machine is shared, a run takes 1-3 minutes


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(kind, out_path, tf_config=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, WORKER, kind, str(out_path)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _finish(processes):
    """Waits for every process (bounded), kills any still running, fails with the stderr of one that failed."""
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, stderr[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module", name="runs")
def _runs(tmp_path_factory):
    """Starts the MirroredStrategy run and the two MultiWorkerMirroredStrategy workers together."""
    out = tmp_path_factory.mktemp("distributed")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = [_start("mirrored", out / "mirrored.json")] + [
        _start("multi_worker", out / f"worker{index}.json",
               {"cluster": cluster, "task": {"type": "worker", "index": index}}) for index in range(2)]
    _finish(processes)
    return {name: json.loads((out / f"{name}.json").read_text()) for name in ("mirrored", "worker0", "worker1")}


@pytest.mark.parametrize("form", ["joint", "conditional"])
def test_summed_replica_gradients_equal_the_single_device_gradient(runs, form):
    """Two replicas, each differentiating its own half of the sleep set against the all-gathered global ridge
    weights: their summed gradient of `surrogate_log_marginal` is the one-device gradient on the same global sleep
    set, computed independently from per-sample Jacobians. Only the order of float32 sums differs (relative error
    ~1e-7 measured); tolerance rtol 1e-5, atol 1e-6."""
    report = runs["mirrored"]
    assert report["num_replicas"] == 2
    np.testing.assert_allclose(report[form]["surrogate"], report[form]["oracle"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["joint", "conditional"])
def test_learner_step_applies_the_surrogate_gradient(runs, form):
    """One `AmortisedLearner` step with SGD at learning rate 1 under MirroredStrategy moves the weights by minus the
    replica-summed gradient of `surrogate_log_marginal` with the learner's first step seed: the same step."""
    report = runs["mirrored"][form]
    np.testing.assert_allclose(report["learner"], report["surrogate"], rtol=1e-5, atol=1e-6)


def test_the_replicas_of_an_auto_form_learner_choose_the_same_form(runs):
    """Each replica measures both forms on its own held-out samples; the errors are summed over the replicas
    before the choice, so both weight their sleep samples in the same form and the applied gradient is that form's
    single-device gradient (a split choice would apply half of each, matching neither)."""
    report = runs["mirrored"]
    choices = np.array(report["auto"]["choices"])  # [seed, replica]; with 8 held-out samples per replica, each
    assert (choices[:, 0] == choices[:, 1]).all()  # replica's own errors order the forms differently at some seeds
    chosen = "conditional" if report["auto"]["conditional_form"] == 1. else "joint"
    assert report["auto"]["conditional_form"] in (0., 1.)
    np.testing.assert_allclose(report["auto"]["learner"], report[chosen]["oracle"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["joint", "conditional"])
def test_replicas_log_the_single_device_log_likelihood_estimate(runs, form):
    # Each replica holds half the wake rows and its own N / 2 + H sleep samples; the logged estimate is the
    # importance-sampling estimate of all the rows over the global sleep set, the same on both replicas.
    report = runs["mirrored"][form]["log_likelihood"]
    assert len(report["replicas"]) == 2
    np.testing.assert_allclose(report["replicas"], [report["oracle"]] * 2, rtol=1e-5)


def test_mirrored_fit_is_finite_and_never_terminated(runs):
    """`fit` under MirroredStrategy runs its 2 epochs (TerminateOnNaN never fires) with finite metrics."""
    history = runs["mirrored"]["fit"]["history"]
    assert len(history["loss"]) == 2
    assert all(np.isfinite(history[name]).all() for name in ("loss", "bandwidth", "jitter"))
    assert min(history["bandwidth"]) > 0


def test_multi_worker_fit_matches_the_mirrored_fit(runs):
    """Two worker processes on 127.0.0.1 (one replica each) train the same weights as 2 replicas in one process:
    the same sleep shares (replica id folded into the seed), the same data shards, the same all-reduce. Only
    the order of float32 sums may differ: atol 1e-6."""
    assert runs["worker0"]["num_replicas"] == runs["worker1"]["num_replicas"] == 2
    for ours, theirs, mirrored in zip(runs["worker0"]["fit"]["weights"], runs["worker1"]["fit"]["weights"],
                                      runs["mirrored"]["fit"]["weights"]):
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_allclose(ours, mirrored, atol=1e-6)


def test_a_learning_regression_trains_under_mirrored_strategy(runs):
    """`KernelRidge(learn=True)` under MirroredStrategy: each replica's held-out error (its share) trains the one
    set of mirrored hyperparameters; the fit is finite and the bandwidth moves from its initial value."""
    report = runs["mirrored"]["learned"]
    assert report["regression_steps"] == 4  # 2 epochs of 2 batches
    assert all(np.isfinite(report["history"][name]).all() for name in ("loss", "bandwidth", "ridge_r2"))
    assert report["bandwidth"] != report["history"]["bandwidth"][0]


def test_mirrored_skipped_steps_change_neither_weights_nor_adam(runs):
    """Under MirroredStrategy two all-NaN batches after two good ones are skipped on both replicas (the cond
    runs in the cross-replica context): the same weights and Adam moments as the good batches alone, 2 iterations,
    and 2 skipped steps counted once, not once per replica."""
    skip = runs["mirrored"]["skip"]
    np.testing.assert_array_equal(skip["poisoned"]["state"], skip["clean"]["state"])
    assert skip["clean"]["iterations"] == skip["poisoned"]["iterations"] == 2
    assert (skip["poisoned"]["skipped_steps"], skip["poisoned"]["invalid_batches"]) == (2., 2.)
    assert skip["clean"]["skipped_steps"] == 0.
