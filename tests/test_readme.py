"""The README's Python examples run as written (with smaller sizes) and do what they say."""

import pathlib
import re

import numpy as np
import tensorflow as tf

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_usage_example_trains_and_answers(tmp_path, monkeypatch):
    usage = _python_blocks()[0]
    estimator = _block_containing("surrogate_log_marginal(model.joint_distribution, x_batch")
    x = np.random.default_rng(0).normal(size=[400, 2]).astype(np.float32) + np.array([[2., 0.]], np.float32)
    namespace = {"x_train": x[:300], "x_test": x[300:]}
    quick = usage.replace("epochs=20", "epochs=1").replace("num_sleep=1000", "num_sleep=200")
    exec(quick, namespace)  # pylint: disable=exec-used
    responsibilities = namespace["learner"].posterior_expectation(namespace["x_test"], lambda s: tf.one_hot(s["z"], 3))
    assert responsibilities.shape == [100, 3]
    # Ridge estimates of probabilities: rows sum to at most about 1 (less where the barely trained model's
    # sleep samples do not reach the data, since kernel ridge shrinks towards 0 away from its inputs).
    totals = tf.reduce_sum(responsibilities, 1).numpy()
    assert np.all(np.isfinite(totals)) and np.all(totals < 1.1) and np.median(totals) > 0.8

    namespace.update(model=namespace["learner"].generative_model, x_batch=namespace["x_test"][:8])
    exec(estimator.replace("num_sleep=2000", "num_sleep=200"), namespace)  # pylint: disable=exec-used
    assert [g.shape for g in namespace["per_point"]] == [[8, 3], [8, 3, 2]]

    # The monitoring example: early stopping, the best checkpoint and TensorBoard on val_log_likelihood.
    monkeypatch.chdir(tmp_path)
    namespace["x_val"] = x[300:]
    quick = _block_containing("val_log_likelihood").replace("epochs=100", "epochs=2")
    exec(quick, namespace)  # pylint: disable=exec-used
    assert (tmp_path / "best.keras").exists() and any((tmp_path / "logs").rglob("*.v2"))


def _block_containing(text):
    return next(block for block in _python_blocks() if text in block)


def test_image_generation_example_learns_digits():
    block = _block_containing("load_digits()").replace("epochs=10", "epochs=6").replace(
        "print(frechet_distance", "distance = (frechet_distance")
    namespace = {}
    exec(block, namespace)  # pylint: disable=exec-used
    untrained = namespace["ImageDecoderModel"]((8, 8), latent_dim=8, hidden_units=(64, 128), seed=0)
    features = namespace["pca_features"]
    baseline = namespace["frechet_distance"](features(untrained.decode(tf.random.stateless_normal([1000, 8], [0, 1])),
                                                      namespace["train"], 16),
                                             features(namespace["test"], namespace["train"], 16))
    # Measured: 4.8 untrained, 1.6 after 6 epochs (2.0 after 4, 1.1 after 10); the training digits score 0.11.
    assert float(namespace["distance"]) < 0.4 * float(baseline)


def test_feature_ridge_example_builds_a_learner_on_summary_statistics():
    namespace = {}
    exec(_block_containing("BlowflySummaries()"), namespace)  # pylint: disable=exec-used
    regression, series = namespace["regression"], tf.random.stateless_normal([6, 180], [0, 2]) + 5.
    weights = regression(series, series[:2])
    assert weights.shape == [2, 6]
    assert regression.kernel_inputs(series, series[:2])[0].shape == [6, 29]
    assert namespace["learner"].regression is regression


def test_neural_process_example_predicts_better_than_the_prior():
    namespace = {}
    exec(_block_containing("predict_from_context(model"), namespace)  # pylint: disable=exec-used
    mean, best = namespace["mean"], namespace["best"]
    assert mean.shape == best.shape == [8, 50]
    # The prediction should be nearer the Bayes-optimal one than the constant 0 is (the prior mean is
    # 0.24 sin t, small next to the amplitudes); measured after 5 epochs: 0.26 of its squared distance.
    assert float(tf.reduce_mean((mean - best) ** 2)) < 0.5 * float(tf.reduce_mean(best ** 2))
