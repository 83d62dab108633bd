"""BlowflyModel: data loading, the recursion against NumPy, closed-form moments, log-density, a short fit;
BlowflySummaries against NumPy and in a saved learner."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models.blowfly import MAX_DELAY, BlowflyModel, BlowflySummaries, load_blowfly
from tfp_amortised.ridge import KernelRidge

NODES = ("delay", "reproduction_noise", "survival_noise", "log_counts")


def _peaked_logits(delay):
    """Logits putting all but ~1e-12 of the mass on `tau = delay`."""
    return [40. if k == delay - 1 else 0. for k in range(MAX_DELAY)]


def _numpy_log_means(model, delay_index, reproduction_noise, survival_noise, log_counts):
    """`log z_t` by an explicit loop over t, from the observed past (float64)."""
    p = {name: float(value) for name, value in model.parameters().items() if name != "delay_probs"}
    tau = int(delay_index) + 1
    counts = np.exp(np.asarray(log_counts, np.float64))
    initial = model.initial_values["initial_count"]
    log_means = []
    for t in range(len(counts)):
        delayed = counts[t - tau] if t - tau >= 0 else initial
        previous = counts[t - 1] if t >= 1 else initial
        z = (p["growth"] * delayed * math.exp(-delayed / p["threshold"]) * reproduction_noise[t]
             + previous * math.exp(-p["death"] * survival_noise[t]))
        log_means.append(math.log(z))
    return np.array(log_means)


def _gamma_log_pdf(x, shape, rate):
    return shape * math.log(rate) - math.lgamma(shape) + (shape - 1.) * np.log(x) - rate * x


def _numpy_log_joint(model, delay_index, reproduction_noise, survival_noise, log_counts):
    """`log p(tau, e, eps, y)` by a hand-written loop over t (float64)."""
    p = {name: np.asarray(value, np.float64) for name, value in model.parameters().items()}
    e, eps = np.asarray(reproduction_noise, np.float64), np.asarray(survival_noise, np.float64)
    log_means = _numpy_log_means(model, delay_index, e, eps, log_counts)
    scale = float(p["observation_scale"])
    log_likelihood = np.sum(
        -0.5 * ((log_counts - log_means) / scale)**2 - math.log(scale) - 0.5 * math.log(2 * math.pi))
    shape_p, shape_d = float(p["reproduction_scale"])**-2, float(p["survival_scale"])**-2
    return (math.log(p["delay_probs"][int(delay_index)]) + np.sum(_gamma_log_pdf(e, shape_p, shape_p))
            + np.sum(_gamma_log_pdf(eps, shape_d, shape_d)) + log_likelihood)


def test_load_blowfly_returns_nicholsons_series():
    counts = load_blowfly()
    assert counts.shape == (180,) and counts.dtype == np.float64
    np.testing.assert_array_equal(counts[:4], [948., 942., 911., 858.])
    assert counts.min() == 60. and counts.max() == 8921.


def test_sampling_is_reproducible_and_seed_dependent():
    joint = BlowflyModel(num_steps=30).joint_distribution()
    first, again = joint.sample(5, seed=[1, 2]), joint.sample(5, seed=[1, 2])
    other = joint.sample(5, seed=[1, 3])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first.log_counts, other.log_counts)


@pytest.mark.parametrize("sample_shape", [(4,), (2, 3)])
def test_sampled_series_follow_the_recursion(sample_shape):
    # With sigma_n = 1e-5 a sample is the recursion driven by its own (tau, e, eps) up to N(0, 1e-10) noise per
    # step, which the dynamics may amplify over 30 steps; float32 rounding of exp/log adds ~1e-6 per step.
    # 1e-3 on log counts is far above both and far below a wrong lag or a wrong term (of order 0.1 or more).
    model = BlowflyModel(num_steps=30, growth=6.5, threshold=400., death=0.16, observation_scale=1e-5)
    sample = model.joint_distribution().sample(sample_shape, seed=[4, 2])
    assert sample.log_counts.shape == (*sample_shape, 30)
    flat = [np.reshape(np.asarray(v, np.float64), (-1,) + tuple(v.shape[len(sample_shape):])) for v in sample]
    for delay, e, eps, y in zip(*flat):
        np.testing.assert_allclose(y, _numpy_log_means(model, delay, e, eps, y), atol=1e-3)


def test_degenerate_case_is_the_deterministic_recursion():
    # sigma_p = sigma_d = 1e-4 and a point-mass delay tau = 3: every sample is the noiseless recursion
    # x_t = P x_{t-3} exp(-x_{t-3} / N0) + x_{t-1} exp(-delta), which the NumPy loop runs with e = eps = 1.
    # Noise of relative size 1e-4 per step, over 40 steps of these (stable) dynamics: rtol 5e-3.
    model = BlowflyModel(num_steps=40, growth=2., threshold=400., death=0.5, reproduction_scale=1e-4,
                         survival_scale=1e-4, delay_logits=_peaked_logits(3), observation_scale=1e-5,
                         initial_count=100.)
    sample = model.joint_distribution().sample(3, seed=[0, 9])
    np.testing.assert_array_equal(sample.delay, [2, 2, 2])
    counts = [100.] * 3
    for _ in range(40):
        counts.append(2. * counts[-3] * math.exp(-counts[-3] / 400.) + counts[-1] * math.exp(-0.5))
    np.testing.assert_allclose(np.exp(sample.log_counts), np.tile(counts[3:], (3, 1)), rtol=5e-3)


def test_first_count_has_the_closed_form_mean():
    # x_1 = z_1 exp(sigma_n eta) with z_1 = P x_0 exp(-x_0 / N0) e_1 + x_0 exp(-delta eps_1) for every tau
    # (the history is constant), so E[x_1] = exp(sigma_n^2 / 2) [P x_0 exp(-x_0 / N0)
    # + x_0 (1 + delta sigma_d^2)^(-1 / sigma_d^2)] by the Gamma moment generating function. 20000 draws:
    # 4 standard errors of the sample mean (a false failure once in ~16000 runs with a fixed seed: never).
    growth, threshold, death, sigma_d, sigma_n, initial = 6.5, 400., 0.16, 0.3, 0.1, 1000.
    model = BlowflyModel(num_steps=2, growth=growth, threshold=threshold, death=death, reproduction_scale=0.5,
                         survival_scale=sigma_d, observation_scale=sigma_n, initial_count=initial)
    first = np.exp(np.asarray(model.joint_distribution().sample(20000, seed=[3, 1]).log_counts[:, 0], np.float64))
    expected = math.exp(sigma_n**2 / 2) * (growth * initial * math.exp(-initial / threshold)
                                           + initial * (1. + death * sigma_d**2)**(-1. / sigma_d**2))
    assert abs(first.mean() - expected) < 4. * first.std() / math.sqrt(first.size)


def test_log_prob_matches_numpy_loop_in_both_estimator_forms():
    # Joint form: N samples scored as they are. Conditional form: latents [1, N, ...] against series [M, 1, T]
    # give [M, N]. Reference: float64 loop over t; float32 sums of ~40 terms of size <= 1e3: rtol 1e-4.
    model = BlowflyModel(num_steps=12, growth=6.5, threshold=400., death=0.16, reproduction_scale=0.5,
                         survival_scale=0.3, observation_scale=0.2, delay_logits=np.linspace(-1., 1., MAX_DELAY))
    joint = model.joint_distribution()
    latents = joint.sample(3, seed=[7, 7])
    other_series = joint.sample(2, seed=[8, 8]).log_counts
    numpy_latents = [np.asarray(v, np.float64) for v in latents[:3]]

    joint_form = joint.log_prob(latents)
    expected = [_numpy_log_joint(model, d, e, eps, y) for d, e, eps, y in zip(*numpy_latents, latents.log_counts)]
    np.testing.assert_allclose(joint_form, expected, rtol=1e-4)

    paired = [v[tf.newaxis] for v in latents[:3]] + [other_series[:, tf.newaxis]]
    conditional_form = joint.log_prob(paired)
    assert conditional_form.shape == (2, 3)
    expected = [[_numpy_log_joint(model, d, e, eps, np.asarray(y, np.float64)) for d, e, eps in zip(*numpy_latents)]
                for y in other_series]
    np.testing.assert_allclose(conditional_form, expected, rtol=1e-4)


def test_config_round_trip_rebuilds_the_same_model():
    model = BlowflyModel(num_steps=7, growth=3., delay_logits=np.arange(MAX_DELAY) / 10.)
    rebuilt = BlowflyModel.from_config(model.get_config())
    for name, value in model.parameters().items():
        np.testing.assert_allclose(rebuilt.parameters()[name], value, rtol=1e-6)


@pytest.mark.parametrize("argument, value", [
    ("num_steps", 0), ("growth", -1.), ("threshold", 0.), ("observation_scale", float("inf"))])
def test_invalid_arguments_are_named(argument, value):
    with pytest.raises(ValueError, match=f"Received: {argument}={value!r}"):
        BlowflyModel(**{argument: value})


def test_delay_logits_must_have_twenty_entries():
    with pytest.raises(ValueError, match="delay_logits must hold 20 floats. Received: 3 values"):
        BlowflyModel(delay_logits=[0., 0., 0.])


def test_short_fit_moves_growth_and_death_to_the_truth():
    # Eight series of T = 180 simulated at P = 6.5, delta = 0.16 (Wood's (2010) order of magnitude); the model
    # starts at P = 12, delta = 0.4 with every other parameter at the truth and frozen. 80 Adam steps with
    # N = 300 sleep series; the path is not monotone (delta first overshoots to ~0.9, and P moves once delta is
    # back), measured end point P = 7.1, delta = 0.159. Tolerance: each error below a quarter of its initial
    # value, outside the step-to-step jitter of the estimates near the truth (about 0.3 for P, 0.01 for delta).
    truth = dict(num_steps=180, growth=6.5, threshold=400., death=0.16, reproduction_scale=0.5, survival_scale=0.3,
                 delay_logits=_peaked_logits(14))
    series = BlowflyModel(**truth).joint_distribution().sample(8, seed=[5, 5]).log_counts
    model = BlowflyModel(**{**truth, "growth": 12., "death": 0.4})
    for weight in model.trainable_weights:
        weight.trainable = weight.name in ("raw_growth", "raw_death")
    learner = AmortisedLearner(model, num_sleep=300, num_holdout=0, seed=1, form="joint", regression=KernelRidge())
    learner.compile(optimizer=keras.optimizers.Adam(0.2))
    learner.fit(series, batch_size=8, epochs=80, verbose=0)
    learned = model.parameters()
    assert abs(float(learned["growth"]) - 6.5) < 0.25 * (12. - 6.5)
    assert abs(float(learned["death"]) - 0.16) < 0.25 * (0.4 - 0.16)


def _numpy_summaries(y, max_lag):
    """The statistics of `BlowflySummaries` for one series, by hand in float64."""
    y = np.asarray(y, np.float64)
    centred, num_steps = y - y.mean(), len(y)
    variance = np.mean(centred**2)
    acf = [np.sum(centred[k:] * centred[:num_steps - k]) / ((num_steps - k) * variance) for k in range(1, max_lag + 1)]
    d = np.diff(y)
    ordered = np.sort(y)
    quantiles = [ordered[int(np.floor(q * (num_steps - 1)))] for q in (0.1, 0.5, 0.9)]
    return np.array([y.mean(), np.sqrt(variance), *acf, np.mean(np.abs(d)), np.std(d), *quantiles])


@pytest.mark.parametrize("sample_shape", [(3,), (2, 2)])
def test_summaries_match_numpy(sample_shape):
    # Simulated log series, T = 180, any leading shape. float32 sums of 180 terms of size ~10: rtol 1e-4, and
    # atol 1e-4 for autocorrelations near 0.
    series = BlowflyModel().joint_distribution().sample(sample_shape, seed=[6, 1]).log_counts
    summaries = BlowflySummaries()(series)
    assert summaries.shape == (*sample_shape, 29)
    assert BlowflySummaries().compute_output_shape(series.shape) == (*sample_shape, 29)
    expected = [_numpy_summaries(y, 22) for y in np.reshape(series, [-1, 180])]
    np.testing.assert_allclose(np.reshape(summaries, [-1, 29]), expected, rtol=1e-4, atol=1e-4)


def test_summaries_of_a_known_series():
    # A permutation of 0..T-1 has mean (T - 1) / 2, sd sqrt((T^2 - 1) / 12) and order statistics
    # floor(q (T - 1)); a period-19 cosine has its largest autocorrelation at lag 19. A constant series has
    # autocorrelations 0, not NaN. Exact up to float32 rounding: rtol 1e-5.
    num_steps = 60
    permutation = np.random.default_rng(0).permutation(num_steps).astype(np.float32)
    stats = BlowflySummaries(max_lag=20)(permutation[None])[0].numpy()
    np.testing.assert_allclose(stats[:2], [(num_steps - 1) / 2, np.sqrt((num_steps**2 - 1) / 12)], rtol=1e-5)
    np.testing.assert_allclose(stats[-3:], np.floor(np.array([0.1, 0.5, 0.9]) * (num_steps - 1)), rtol=1e-5)
    cosine = np.cos(2. * np.pi * np.arange(num_steps) / 19.).astype(np.float32)
    assert np.argmax(BlowflySummaries(max_lag=25)(cosine[None])[0, 2:27]) + 1 == 19
    constant = BlowflySummaries(max_lag=5)(tf.fill([2, 10], 7.)).numpy()
    np.testing.assert_array_equal(constant[:, 2:7], 0.)
    np.testing.assert_allclose(constant[:, [0, -1]], 7., rtol=1e-6)


def test_summaries_config_and_errors():
    assert BlowflySummaries.from_config(BlowflySummaries(max_lag=7).get_config()).max_lag == 7
    with pytest.raises(ValueError, match="Received: max_lag=0"):
        BlowflySummaries(max_lag=0)
    with pytest.raises(ValueError, match=r"Received: log_counts.shape=\(4, 10\)"):
        BlowflySummaries(max_lag=10)(tf.zeros([4, 10]))


def test_learner_with_summary_kernel_saves_and_loads(tmp_path):
    """A learner whose ridge acts on standardised BlowflySummaries: the .keras file restores its weights and
    ridge exactly, and the ridge sees 7 + max_lag standardised statistics."""
    ridge = KernelRidge(features=BlowflySummaries(max_lag=5), standardise_features=True)
    learner = AmortisedLearner(BlowflyModel(num_steps=30), num_sleep=64, num_holdout=8, seed=2, regression=ridge)
    learner.compile(optimizer=keras.optimizers.Adam(0.05))
    series = BlowflyModel(num_steps=30).joint_distribution().sample(4, seed=[3, 3]).log_counts.numpy()
    learner.fit(series, batch_size=4, epochs=2, verbose=0)
    learner.save(tmp_path / "learner.keras")
    loaded = keras.models.load_model(tmp_path / "learner.keras")

    assert isinstance(loaded.regression.features, BlowflySummaries) and loaded.regression.features.max_lag == 5
    for saved, restored in zip(learner.variables, loaded.variables):
        np.testing.assert_array_equal(restored.numpy(), saved.numpy())
    sleep_x = learner.sample(64, seed=[4, 4])["log_counts"]
    np.testing.assert_array_equal(loaded.regression(sleep_x, series), learner.regression(sleep_x, series))
    sleep_features, _ = loaded.regression.kernel_inputs(sleep_x, series)
    assert sleep_features.shape == (64, 12)
    np.testing.assert_allclose(np.std(sleep_features, 0), 1., rtol=1e-4)  # float32 standardisation
