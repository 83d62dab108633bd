"""ImageDecoderModel, the digit loaders and the Fréchet distance: closed forms, exact gradients, a short fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import datasets

from tfp_amortised.evaluation import median_relative_error, per_point_gradients
from tfp_amortised import surrogate_log_marginal
from tfp_amortised.learner import AmortisedLearner
from tfp_amortised.models import FactorAnalysisModel
from tfp_amortised.models.image_decoder import (ImageDecoderModel, _laplace_approximations, _prepare_images,
                                                frechet_distance, load_digits, pca_features)


def _features_with_covariance(mean, variances, num, seed):
    """`num` points whose sample mean is `mean` and whose unbiased sample covariance is `diag(variances)` exactly."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(num, len(mean)))
    orthonormal, _ = np.linalg.qr(raw - raw.mean(axis=0))  # centred orthonormal columns
    return mean + np.sqrt(num - 1.) * orthonormal * np.sqrt(variances)


def _numpy_frechet(a, b):
    """Independent computation: tr sqrt(C_a^1/2 C_b C_a^1/2) = sum sqrt(eig(C_a C_b)), the same spectrum."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b).real
    return (np.sum((a.mean(0) - b.mean(0))**2) + np.trace(cov_a) + np.trace(cov_b)
            - 2. * np.sum(np.sqrt(np.clip(eigenvalues, 0., None))))


def test_frechet_distance_in_one_dimension():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1., 2., size=(50, 1)), rng.normal(-0.5, 0.7, size=(80, 1))
    expected = (a.mean() - b.mean())**2 + (a.std(ddof=1) - b.std(ddof=1))**2
    np.testing.assert_allclose(frechet_distance(a, b), expected, rtol=1e-10)  # float64 throughout


def test_frechet_distance_of_diagonal_covariances():
    mean_a, mean_b = np.array([0., 1., -2.]), np.array([0.5, 1., 1.])
    variances_a, variances_b = np.array([1., 4., 0.25]), np.array([2., 1., 0.25])
    a = _features_with_covariance(mean_a, variances_a, 40, seed=1)
    b = _features_with_covariance(mean_b, variances_b, 70, seed=2)
    expected = np.sum((np.sqrt(variances_a) - np.sqrt(variances_b))**2) + np.sum((mean_a - mean_b)**2)
    np.testing.assert_allclose(frechet_distance(a, b), expected, rtol=1e-10)


def test_frechet_distance_is_zero_for_identical_sets_and_symmetric():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(100, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(60, 5)) + 1.
    # Identical sets: exactly 0 up to float64 round-off of traces of size ~25 (eigenvalue errors ~1e-14 each).
    np.testing.assert_allclose(frechet_distance(a, a), 0., atol=1e-8)
    np.testing.assert_allclose(frechet_distance(a, b), frechet_distance(b, a), rtol=1e-10)


def test_frechet_distance_of_non_commuting_covariances_matches_numpy():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))  # correlated, axes not shared with b
    b = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 0.3
    np.testing.assert_allclose(frechet_distance(a, b), _numpy_frechet(a, b), rtol=1e-8)
    np.testing.assert_allclose(frechet_distance(tf.constant(a, tf.float32), b), _numpy_frechet(a, b), rtol=1e-5)


@pytest.mark.parametrize("compile_mode", ["eager", "function", "xla"])
def test_frechet_distance_compiles(compile_mode):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(40, 4)) @ rng.normal(size=(4, 4))
    fn = {"eager": frechet_distance, "function": tf.function(frechet_distance),
          "xla": tf.function(frechet_distance, jit_compile=True)}[compile_mode]
    # XLA's eigh is an iterative Jacobi solver (measured 1.3e-8 relative error here, LAPACK's 1e-15): 1e-6.
    np.testing.assert_allclose(fn(tf.constant(a), tf.constant(b)), _numpy_frechet(a, b), rtol=1e-6)


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match=r"features_b.shape=\(10, 4\)"):
        frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
def test_decode_shapes(batch_shape):
    model = ImageDecoderModel((4, 3), latent_dim=2, hidden_units=(5, 6), seed=0)
    z = tf.random.stateless_normal(batch_shape + (2,), [0, 1])
    assert model.decode(z).shape == batch_shape + (4, 3)


@pytest.mark.parametrize("z_batch, x_batch", [((5,), (5,)), ((1, 4), (3, 1)), ((2, 3), (2, 3))])
def test_log_joint_is_normal_latent_plus_normal_image(z_batch, x_batch):
    model = ImageDecoderModel((4, 3), latent_dim=2, hidden_units=(5,), scale=0.4, seed=0)
    z = tf.random.stateless_normal(z_batch + (2,), [0, 1])
    x = tf.random.stateless_uniform(x_batch + (4, 3), [0, 2])
    log_joint = model.joint_distribution().log_prob(z, x)
    mean = model.decode(z).numpy()
    log_prior = np.sum(-0.5 * z.numpy()**2 - 0.5 * np.log(2. * np.pi), axis=-1)
    log_likelihood = np.sum(-0.5 * ((x.numpy() - mean) / 0.4)**2 - np.log(0.4) - 0.5 * np.log(2. * np.pi),
                            axis=(-2, -1))
    assert log_joint.shape == np.broadcast_shapes(z_batch, x_batch)
    np.testing.assert_allclose(log_joint, log_prior + log_likelihood, rtol=1e-5)  # float32 sums of 14 terms


def _linear_model():
    """Probabilistic PCA as an ImageDecoderModel: 2 x 2 images, one latent, linear decoder."""
    model = ImageDecoderModel((2, 2), latent_dim=1, hidden_units=(), output_activation=None, scale=0.6, seed=1)
    model.decoder.layers[0].bias.assign([0.5, -1., 0., 1.])
    return model


def test_linear_log_marginal_is_factor_analysis_with_tied_noise():
    model = _linear_model()
    reference = FactorAnalysisModel(1, 4)
    reference.loading.assign(tf.transpose(model.decoder.layers[0].kernel))
    reference.bias.assign(model.decoder.layers[0].bias)
    reference.raw_noise.assign(tf.fill([4], model.raw_scale))
    x = model.joint_distribution().sample(8, seed=[2, 3])[1]
    np.testing.assert_allclose(model.log_marginal(x), reference.log_marginal(tf.reshape(x, [8, 4])), rtol=1e-5)
    with pytest.raises(ValueError, match=r"hidden_units=\(4,\)"):
        ImageDecoderModel((2, 2), hidden_units=(4,)).log_marginal(x)


def test_estimated_log_marginal_matches_the_linear_decoder_exactly():
    model = ImageDecoderModel((3, 3), latent_dim=2, hidden_units=(), output_activation=None, scale=0.3, seed=4)
    x = model.joint_distribution().sample(6, seed=[4, 5])[1]
    estimate = model.estimate_log_marginal(x, num_samples=2000, seed=[1, 2])
    assert estimate.shape == (6,)
    np.testing.assert_allclose(estimate, model.log_marginal(x), atol=0.02)  # measured within 0.006
    np.testing.assert_array_equal(estimate, model.estimate_log_marginal(x, num_samples=2000, seed=[1, 2]))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_samples": 0}, "num_samples must be a positive integer"),
    ({"num_samples": 10.}, "num_samples must be a positive integer"),
    ({"chunk_size": True}, "chunk_size must be a positive integer"),
    ({"max_iterations": -1}, "max_iterations must be a positive integer"),
    ({"seed": 3}, "seed must be a stateless seed"),
    ({"x": np.zeros([2, 3, 2], np.float32)}, r"x must have shape \[num_images, 2, 3\]"),
    ({"x": np.zeros([6], np.float32)}, r"x must have shape \[num_images, 2, 3\]")])
def test_estimated_log_marginal_names_a_bad_argument(kwargs, message):
    model = ImageDecoderModel((2, 3), latent_dim=2, hidden_units=(4,), seed=0)
    arguments = {"x": np.zeros([2, 2, 3], np.float32), **kwargs}
    with pytest.raises(ValueError, match=message):
        model.estimate_log_marginal(**arguments)


def test_estimated_log_marginal_of_a_deep_decoder_matches_quadrature():
    # Two latent dimensions, so log p(x) = log sum_grid p(z, x) dz on a 701 x 701 grid over [-7, 7]^2 (posterior
    # widths are about 0.05 here, 2.5 grid steps). Measured: within 0.013 of it at K = 2000, 0.006 at K = 20000.
    model = ImageDecoderModel((3, 3), latent_dim=2, hidden_units=(6,), activation="tanh", scale=0.2, seed=3)
    x = model.joint_distribution().sample(5, seed=[1, 2])[1]
    grid = np.linspace(-7., 7., 701)
    z = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 1, 2).astype(np.float32)
    quadrature = (tf.reduce_logsumexp(model.joint_distribution().log_prob(z, x[tf.newaxis]), axis=0)
                  + 2. * np.log(grid[1] - grid[0]))
    np.testing.assert_allclose(model.estimate_log_marginal(x, num_samples=2000, seed=[3, 4]), quadrature, atol=0.03)
    log_joint = model.joint_distribution().log_prob(z, x[tf.newaxis])  # [grid, 5]
    mode, _ = _laplace_approximations(model, x, max_iterations=200)  # the proposal's centre: the posterior mode
    np.testing.assert_allclose(mode, z[np.argmax(log_joint, axis=0), 0], atol=0.02)  # one grid step; measured 0.008


def test_conditional_gradient_matches_exact_gradient_of_linear_decoder():
    # Exact per-point gradient: autodiff of the closed-form marginal N(b, W W^T + sigma^2 I) with respect to
    # the decoder's kernel and bias and the noise scale. Median relative error over 20 wake points, averaged
    # over two sleep seeds (as for factor analysis in tests/test_estimator.py): measured 7.9% at N = 2000 and
    # 15% at N = 500 (single seeds range 6-10% and 12-19%): the regression error falls with N.
    model = _linear_model()
    wake_x = model.joint_distribution().sample(20, seed=[3, 4])[1]
    exact = per_point_gradients(lambda: model.log_marginal(wake_x), model.trainable_variables)

    def error(num_sleep):
        errors = [median_relative_error(per_point_gradients(
            lambda: surrogate_log_marginal(model.joint_distribution, wake_x, num_sleep=num_sleep, seed=seed,
                                           form="conditional"),
            model.trainable_variables), exact) for seed in ([0, 7], [1, 7])]
        return np.mean(errors)

    error_small, error_large = error(500), error(2000)
    assert error_large < 0.10
    assert error_large < 0.85 * error_small


def test_config_round_trip():
    model = ImageDecoderModel((3, 5), latent_dim=4, hidden_units=(7,), activation="tanh", scale=0.2, seed=3)
    clone = ImageDecoderModel.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    z = tf.random.stateless_normal([6, 4], [0, 1])
    np.testing.assert_allclose(clone.decode(z), model.decode(z))


@pytest.mark.parametrize("kwargs, message", [({"image_shape": (8,)}, "image_shape"),
                                             ({"latent_dim": 0}, "latent_dim=0")])
def test_invalid_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageDecoderModel(**kwargs)


def test_load_digits():
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int32
    assert images.min() == 0. and images.max() == 1.
    np.testing.assert_allclose(images * 16., np.round(images * 16.), atol=1e-5)  # raw counts 0..16
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(datasets.load_digits().target))
    assert np.all(np.bincount(labels) >= 170)  # about 180 of each digit


def test_prepare_images_scales_clips_and_checks():
    raw = datasets.load_digits()
    images, labels = _prepare_images(raw.images, raw.target, 16., dtype="float64")
    np.testing.assert_array_equal(images, raw.images / 16.)
    np.testing.assert_array_equal(labels, raw.target)
    grey = np.array([[[0, 128], [255, 300]]])  # 300 is out of range: clipped to 1
    np.testing.assert_allclose(_prepare_images(grey, [7], 255.)[0], [[[0., 128. / 255.], [1., 1.]]], rtol=1e-7)
    with pytest.raises(ValueError, match=r"labels.shape=\(2,\)"):
        _prepare_images(raw.images[:3], raw.target[:2], 16.)
    with pytest.raises(ValueError, match="max_value=0"):
        _prepare_images(raw.images[:3], raw.target[:3], 0)


def test_pca_features_have_the_reference_spectrum():
    images, _ = load_digits(dtype="float64")
    features = pca_features(images, images, num_components=5)
    eigenvalues = np.linalg.eigvalsh(np.cov(images.reshape(1797, 64), rowvar=False))[::-1][:5]
    # Projections on the top principal axes: centred, uncorrelated, with variances the top eigenvalues.
    # float32 features of 1797 points: agreement to ~1e-4 relative.
    np.testing.assert_allclose(np.mean(features, axis=0), 0., atol=1e-5)
    np.testing.assert_allclose(np.cov(features, rowvar=False), np.diag(eigenvalues), rtol=1e-3, atol=1e-5)


def test_short_fit_on_digits_lowers_the_frechet_distance():
    images, _ = load_digits()
    train, test = images[:1297], images[1297:]
    model = ImageDecoderModel((8, 8), latent_dim=8, hidden_units=(64, 128), scale=0.3, seed=0)
    learner = AmortisedLearner(model, num_sleep=500, form="conditional", seed=0)
    learner.compile(optimizer=keras.optimizers.Adam(3e-3))

    def distance():
        means = model.decode(learner.sample(1000, seed=[1, 2])["z"])
        return float(frechet_distance(pca_features(means, train, 16), pca_features(test, train, 16)))

    untrained = distance()
    learner.fit(train, batch_size=100, epochs=10, verbose=0)
    trained = distance()
    # Fréchet distance of 1000 mean images to the 500 test digits in the 16 leading principal components of
    # the training digits. Measured: 4.8 untrained, 0.75 after 10 epochs (130 steps), 0.21 after 30; the
    # training digits themselves are at 0.11 (the floor: sampling error of 500 test digits).
    assert untrained > 4.
    assert trained < 1.2
