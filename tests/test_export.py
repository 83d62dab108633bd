"""SavedModel export of `AmortisedLearner`: endpoints served without tfp_amortised, and through Keras' TFSMLayer."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel, GaussianMixtureModel
from tfp_amortised.ridge import KernelRidge

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root

NUM_STORED = 1000

# Runs in a fresh interpreter: loads the SavedModel with TensorFlow alone and calls every endpoint.
_SERVE = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    served = tf.saved_model.load(sys.argv[1])
    inputs = np.load(sys.argv[2])
    sample = served.sample(tf.constant(5), tf.constant([1, 2]))
    by_name = served.signatures["log_joint"](z=tf.constant(inputs["z"]), x=tf.constant(inputs["x"]))
    np.savez(sys.argv[3], sample_z=sample["z"], sample_x=sample["x"],
             log_joint=served.log_joint(tf.constant(inputs["z"]), tf.constant(inputs["x"])),
             log_joint_by_name=by_name["output_0"], posterior_mean=served.posterior_mean(inputs["x"])["z"],
             stored_size=served.sleep_set[0].shape[0])
    assert not any(name.startswith(("tfp_amortised", "tensorflow_probability")) for name in sys.modules)
""")


def _exact_factor_analysis_posterior_mean(model, x):
    """`E[z | x] = W^T (W W^T + diag(psi))^{-1} (x - b)` for factor analysis: `[M, latent_dim]`."""
    covariance = model.marginal().covariance()
    return tf.transpose(tf.matmul(model.loading, tf.linalg.solve(covariance, tf.transpose(x - model.bias)),
                                  transpose_a=True))


def test_savedmodel_endpoints_in_a_fresh_process(tmp_path):
    """A fresh interpreter with only TensorFlow reproduces `sample` and `log_joint` exactly, and `posterior_mean`
    matches the closed-form factor-analysis posterior mean.

    Tolerance of the posterior mean: loadings (2, -1.5) make Var[z | x] = 0.14 and sd(E[z | x]) = 0.94; ridge
    regression of z on x from 1000 stored sleep pairs has RMSE 0.038-0.059 over 8 sleep seeds, so 0.1 is about
    twice the worst of them and a tenth of the signal.
    """
    model = FactorAnalysisModel(1, 2, seed=1)
    model.loading.assign([[2.], [-1.5]])
    learner = AmortisedLearner(model, num_sleep=NUM_STORED, seed=3, form="joint", regression=KernelRidge())
    learner.export(str(tmp_path / "served"))
    query = learner.sample(64, seed=[5, 6])
    np.savez(tmp_path / "inputs.npz", z=query["z"].numpy(), x=query["x"].numpy())

    subprocess.run([sys.executable, "-c", _SERVE, str(tmp_path / "served"), str(tmp_path / "inputs.npz"),
                    str(tmp_path / "outputs.npz")], check=True, timeout=300)
    served = np.load(tmp_path / "outputs.npz")

    expected_sample = learner.sample(5, seed=tf.constant([1, 2]))
    np.testing.assert_array_equal(served["sample_z"], expected_sample["z"])
    np.testing.assert_array_equal(served["sample_x"], expected_sample["x"])
    expected_log_joint = learner.joint_distribution().log_prob(query["z"], query["x"])
    np.testing.assert_allclose(served["log_joint"], expected_log_joint, rtol=1e-6)
    np.testing.assert_allclose(served["log_joint_by_name"], expected_log_joint, rtol=1e-6)
    assert served["stored_size"] == NUM_STORED
    exact = _exact_factor_analysis_posterior_mean(model, query["x"])
    assert served["posterior_mean"].shape == (64, 1)
    rmse = float(np.sqrt(np.mean((served["posterior_mean"] - exact) ** 2)))
    assert rmse < 0.1, rmse


def test_posterior_mean_through_keras_tfsm_layer(tmp_path):
    """`keras.layers.TFSMLayer(..., call_endpoint="posterior_mean")` gives the mixture's class probabilities.

    Two components: `z_probabilities[:, 1] = p(z = 1 | x)`, exact by Bayes' rule. Ridge regression of a {0, 1} label
    from 1000 sleep pairs: measured RMSE 0.03 against the exact responsibilities; tolerance 0.08.
    """
    model = GaussianMixtureModel(2, 2, scale=0.7, seed=2)
    learner = AmortisedLearner(model, num_sleep=NUM_STORED, seed=3, form="joint", regression=KernelRidge())
    learner.export(str(tmp_path / "served"))
    layer = keras.layers.TFSMLayer(str(tmp_path / "served"), call_endpoint="posterior_mean")
    x = learner.sample(64, seed=[7, 8])["x"]
    log_responsibility = tfd_components_log_prob(model, x)
    exact = tf.exp(log_responsibility[:, 1] - tf.reduce_logsumexp(log_responsibility, axis=1))

    served = layer(x)["z_probabilities"][:, 1]
    assert served.shape == (64,)
    rmse = float(tf.sqrt(tf.reduce_mean((served - exact) ** 2)))
    assert rmse < 0.08, rmse
    assert layer.non_trainable_weights  # the stored sleep set and the model's weights come with the layer


def tfd_components_log_prob(model, x):
    """`log pi_k + log N(x; mu_k, sigma^2 I)`: `[M, K]`."""
    return tf.nn.log_softmax(model.logits)[None] + model.marginal().components_distribution.log_prob(x[:, None])


class ScaledNoiseModel(GenerativeModel):
    """z ~ N(0, I_1);  x | z ~ N(w z, I) with x of any event shape (tests the endpoints' shapes)."""

    def __init__(self, event_shape, **kwargs):
        super().__init__(**kwargs)
        self.event_shape = event_shape
        self.w = self.add_weight(shape=(), initializer="ones", name="w")

    def joint_distribution(self):
        w, event_shape = self.w.value, self.event_shape

        def model():
            z = yield Root(tfd.Sample(tfd.Normal(0., 1.), 1, name="z"))
            loc = w * tf.reshape(z, [-1] + [1] * len(event_shape)) * tf.ones(event_shape)
            yield tfd.Independent(tfd.Normal(tf.reshape(loc, tf.concat([tf.shape(z)[:-1], event_shape], 0)), 1.),
                                  len(event_shape), name="x")

        return tfd.JointDistributionCoroutine(model)


@pytest.mark.parametrize("event_shape", [(3,), (2, 2)])
def test_endpoint_signatures_follow_the_nodes(event_shape, tmp_path):
    """`log_joint` takes one input per node, named after it, with the node's event shape; `posterior_mean`
    maps `[M, *event_shape]` observations to `[M, 1]` latent means."""
    learner = AmortisedLearner(ScaledNoiseModel(event_shape), num_sleep=16, num_holdout=0, seed=3, form="joint",
                               regression=KernelRidge())
    learner.export(str(tmp_path / "served"))
    served = tf.saved_model.load(str(tmp_path / "served"))
    _, inputs = served.signatures["log_joint"].structured_input_signature
    assert {name: spec.shape.as_list() for name, spec in inputs.items()} == {"z": [None, 1],
                                                                             "x": [None, *event_shape]}
    assert served.posterior_mean(tf.zeros([4, *event_shape]))["z"].shape == (4, 1)


def test_posterior_mean_with_a_featured_ridge_matches_the_learner(tmp_path):
    """A ridge whose kernel acts on standardised features of x: the served `posterior_mean` is the learner's own
    `posterior_expectation` on the same sleep set (export's seed), with the feature map's weights shared.

    Ground truth: the same sleep set, feature map, standardisation and median bandwidth on the features, so the
    two agree to float32 rounding of the solve (measured 1.4e-5; atol 1e-4 on posterior means of order 1).
    Without sharing the map and taking the bandwidth on the features, they differ by 0.2.
    """
    features = keras.layers.Dense(4, trainable=False)
    features.build((None, 2))
    features.kernel.assign(np.random.default_rng(5).normal(size=[2, 4]))  # not what a fresh copy would hold
    features.bias.assign(np.full(4, 30.))
    ridge = KernelRidge(features=features, standardise_features=True)
    model = FactorAnalysisModel(1, 2, seed=1)
    learner = AmortisedLearner(model, num_sleep=300, seed=3, regression=ridge)
    x = learner.sample(16, seed=[5, 6])["x"]
    expected = learner.posterior_expectation(x, lambda sample: sample["z"], seed=tf.constant([0, 0]))
    learner.export(str(tmp_path / "served"))
    served = tf.saved_model.load(str(tmp_path / "served"))
    np.testing.assert_allclose(served.posterior_mean(x)["z"], expected, atol=1e-4)
