"""The README's Python examples run as written (with smaller sizes) and do what they say."""

import pathlib
import re

import numpy as np
import tensorflow as tf

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_usage_example_trains_and_answers():
    usage, estimator = _python_blocks()[:2]
    x = np.random.default_rng(0).normal(size=[400, 2]).astype(np.float32) + np.array([[2., 0.]], np.float32)
    namespace = {"x_train": x[:300], "x_test": x[300:]}
    exec(usage.replace("epochs=20", "epochs=1").replace("num_sleep=1000", "num_sleep=200"), namespace)  # pylint: disable=exec-used
    responsibilities = namespace["learner"].posterior_expectation(namespace["x_test"], lambda s: tf.one_hot(s["z"], 3))
    assert responsibilities.shape == [100, 3]
    # Ridge estimates of probabilities: rows sum to at most about 1 (less where the barely trained model's
    # sleep samples do not reach the data, since kernel ridge shrinks towards 0 away from its inputs).
    totals = tf.reduce_sum(responsibilities, 1).numpy()
    assert np.all(np.isfinite(totals)) and np.all(totals < 1.1) and np.median(totals) > 0.8

    namespace.update(model=namespace["learner"].generative_model, x_batch=namespace["x_test"][:8])
    exec(estimator.replace("num_sleep=2000", "num_sleep=200"), namespace)  # pylint: disable=exec-used
    assert [g.shape for g in namespace["per_point"]] == [[8, 3], [8, 3, 2]]
