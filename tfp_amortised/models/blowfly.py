"""Nicholson's blowflies: a population model with a discrete random delay, and the data it was built for."""

import importlib.resources

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_amortised.generative import GenerativeModel

tfd = tfp.distributions
Root = tfd.JointDistributionCoroutine.Root

MAX_DELAY = 20
COUNT_UNIT = 100.  # N0 = COUNT_UNIT * softplus(raw): every raw weight then moves on a scale of order one


def load_blowfly():
    """Nicholson's sheep-blowfly (Lucilia cuprina) series: 180 consecutive counts of the adult population.

    The laboratory series of Nicholson (1954) that Wood (2010) fitted with the delayed-feedback model of
    `BlowflyModel`, and the data of the dynamical-model experiment of Wenliang et al. (2020).

    Returns:
      `np.ndarray[180]` of float64 counts (from 60 to 8921 flies).

    #### References

    [1] A. J. Nicholson. An outline of the dynamics of animal populations. Australian Journal of Zoology,
        2(1):9-65, 1954.
    [2] Simon N. Wood. Statistical inference for noisy nonlinear ecological dynamic systems. Nature,
        466:1102-1104, 2010.
    """
    with importlib.resources.files("tfp_amortised").joinpath("data/blowfly.csv").open("r", encoding="utf-8") as f:
        return np.loadtxt(f, skiprows=1, dtype=np.float64)


def _time_first(x):
    """Moves the last (time) axis of `x` to the front, for `tf.scan`."""
    rank = x.shape.rank
    return tf.transpose(x, [rank - 1] + list(range(rank - 1)))


def _time_last(x):
    """Inverse of `_time_first`."""
    rank = x.shape.rank
    return tf.transpose(x, list(range(1, rank)) + [0])


class _DelayedLogCounts(tfd.Distribution):
    """`p(y | tau, e, eps)` of `BlowflyModel`: log counts driven by their own past (see the model's docstring).

    The log-density needs no recursion: the mean of `y_t` depends on observed past values only, so it is
    evaluated for all `t` at once (and broadcasts latents `[1, N, ...]` against values `[M, 1, T]`).
    Sampling runs the recursion with `tf.scan` over time, vectorised over sample and batch dimensions.
    """

    def __init__(self, delay, reproduction_noise, survival_noise, growth, threshold, death, observation_scale,
                 log_initial, name=None):
        parameters = dict(locals())
        name = name or "delayed_log_counts"
        with tf.name_scope(name):
            self._delay = tf.convert_to_tensor(delay)  # [B...], index k means tau = k + 1
            self._reproduction_noise = tf.convert_to_tensor(reproduction_noise)  # [B..., T]
            self._survival_noise = tf.convert_to_tensor(survival_noise, self._reproduction_noise.dtype)
            dtype = self._reproduction_noise.dtype
            self._growth, self._threshold, self._death, self._observation_scale, self._log_initial = (
                tf.convert_to_tensor(value, dtype)
                for value in (growth, threshold, death, observation_scale, log_initial))
            super().__init__(dtype=dtype, reparameterization_type=tfd.NOT_REPARAMETERIZED, validate_args=False,
                             allow_nan_stats=True, parameters=parameters, name=name)

    def _batch_shape(self):
        return tf.broadcast_static_shape(tf.broadcast_static_shape(
            self._delay.shape, self._reproduction_noise.shape[:-1]), self._survival_noise.shape[:-1])

    def _batch_shape_tensor(self):
        return tf.broadcast_dynamic_shape(tf.broadcast_dynamic_shape(
            tf.shape(self._delay), tf.shape(self._reproduction_noise)[:-1]), tf.shape(self._survival_noise)[:-1])

    def _event_shape(self):
        return self._reproduction_noise.shape[-1:]

    def _event_shape_tensor(self):
        return tf.shape(self._reproduction_noise)[-1:]

    def _log_mean(self, delayed, previous, reproduction_noise, survival_noise):
        """`log z_t` from `y_{t-tau}`, `y_{t-1}`, `e_t`, `eps_t` (broadcasting)."""
        log_reproduction = (tf.math.log(self._growth) + delayed - tf.exp(delayed) / self._threshold
                            + tf.math.log(reproduction_noise))
        return tfp.math.log_add_exp(log_reproduction, previous - self._death * survival_noise)

    def _delay_one_hot(self):
        return tf.one_hot(self._delay, MAX_DELAY, dtype=self.dtype)  # [B..., L]

    def _log_prob(self, value):
        value = tf.convert_to_tensor(value, self.dtype)  # [S..., B..., T]
        num_steps = value.shape[-1]
        history = tf.broadcast_to(self._log_initial, tf.concat([tf.shape(value)[:-1], [MAX_DELAY]], 0))
        padded = tf.concat([history, value], -1)  # [S..., B..., L + T]: y_{1-L}, ..., y_T
        lagged = tf.stack([padded[..., MAX_DELAY - 1 - k: MAX_DELAY - 1 - k + num_steps]
                           for k in range(MAX_DELAY)], -2)  # [S..., B..., L, T]: row k holds y_{t-k-1}
        delayed = tf.reduce_sum(lagged * self._delay_one_hot()[..., tf.newaxis], -2)
        loc = self._log_mean(delayed, lagged[..., 0, :], self._reproduction_noise, self._survival_noise)
        return tf.reduce_sum(tfd.Normal(loc, self._observation_scale).log_prob(value), -1)

    def _sample_n(self, n, seed=None):
        shape = tf.concat([[n], self.batch_shape_tensor(), self.event_shape_tensor()], 0)
        standard_noise = tf.random.stateless_normal(shape, tfp.random.sanitize_seed(seed), dtype=self.dtype)
        delay_one_hot = tf.broadcast_to(self._delay_one_hot(), tf.concat([shape[:-1], [MAX_DELAY]], 0))
        history = tf.broadcast_to(self._log_initial, tf.shape(delay_one_hot))  # [n, B..., L]: y_{t-1}, ...

        def step(history, inputs):
            reproduction_noise, survival_noise, noise = inputs
            delayed = tf.reduce_sum(history * delay_one_hot, -1)
            log_count = (self._log_mean(delayed, history[..., 0], reproduction_noise, survival_noise)
                         + self._observation_scale * noise)
            return tf.concat([log_count[..., tf.newaxis], history[..., :-1]], -1)

        inputs = tuple(_time_first(tf.broadcast_to(x, shape))
                       for x in (self._reproduction_noise, self._survival_noise, standard_noise))
        return _time_last(tf.scan(step, inputs, initializer=history)[..., 0])


@keras.saving.register_keras_serializable(package="tfp_amortised")
class BlowflySummaries(keras.layers.Layer):
    """Summary statistics of log-count series, the regression input of `KernelRidge(features=...)` for blowflies.

    For a series `y_1..y_T` (log counts), with `ybar` its mean, `s^2 = mean_t (y_t - ybar)^2` and first
    differences `d_t = y_{t+1} - y_t`, the features are, in this order (`7 + max_lag` of them, 29 by default):

        mean            ybar                                              level
        sd              s                                                 spread
        acf_k           sum_{t > k} (y_t - ybar)(y_{t-k} - ybar) / ((T - k) s^2),   k = 1..max_lag
                                                                          the cycle: its length and regularity
        mean |d|        mean_t |d_t|                                      roughness
        sd of d         sd_t d_t                                          step size
        q10, q50, q90   the 10%, 50% and 90% order statistics y_(floor(q (T - 1)) + 1)
                                                                          shape of the marginal distribution

    The default `max_lag = 22` spans the largest delay of `BlowflyModel` (20) and the ~19-step cycle of
    Nicholson's series. A constant series has autocorrelations 0 (not NaN). The statistics differ in scale by
    orders of magnitude: use them with `standardise_features=True`.

    They are in the spirit of the summary statistics of Wood's (2010) synthetic likelihood for this model, not
    his exact set. Using them as the regression input is our choice: we could not read the paper's setting, and
    the authors' public code (as read in benchmarks/RESULTS.md) puts its kernel on the raw normalised series.
    benchmarks/RESULTS.md compares the two inputs (`python -m benchmarks.blowfly` with and without `--features`).

    Input shape:
      `[..., T]` log-count series (any leading dimensions; `T > max_lag`, known statically).

    Output shape:
      `[..., 7 + max_lag]`.

    Args:
      max_lag: the largest autocorrelation lag, an integer in `1..T - 1`.

    #### Examples

    ```python
    regression = KernelRidge(features=BlowflySummaries(), standardise_features=True)
    learner = AmortisedLearner(BlowflyModel(), num_sleep=1000, regression=regression)
    ```

    #### References

    [1] Simon N. Wood. Statistical inference for noisy nonlinear ecological dynamic systems. Nature,
        466:1102-1104, 2010.
    [2] Li K. Wenliang, Theodore Moskovitz, Heishiro Kanagawa, Maneesh Sahani. Amortised Learning by
        Wake-Sleep. ICML 2020.
    """

    QUANTILES = (0.1, 0.5, 0.9)

    def __init__(self, max_lag=MAX_DELAY + 2, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(max_lag, int) and max_lag >= 1):
            raise ValueError(f"max_lag must be a positive integer. Received: max_lag={max_lag!r}")
        self.max_lag = max_lag
        self.built = True

    def call(self, log_counts):
        num_steps = log_counts.shape[-1]
        if num_steps is None or num_steps <= self.max_lag:
            raise ValueError(f"BlowflySummaries(max_lag={self.max_lag}) needs series of a static length T > "
                             f"max_lag. Received: log_counts.shape={log_counts.shape}")
        mean = tf.reduce_mean(log_counts, -1)
        centred = log_counts - mean[..., tf.newaxis]
        variance = tf.reduce_mean(centred**2, -1)
        autocorrelations = tf.stack(
            [tf.math.divide_no_nan(tf.reduce_mean(centred[..., k:] * centred[..., :num_steps - k], -1), variance)
             for k in range(1, self.max_lag + 1)], -1)
        differences = log_counts[..., 1:] - log_counts[..., :-1]
        ordered = tf.sort(log_counts, -1)
        quantiles = [ordered[..., int(q * (num_steps - 1))] for q in self.QUANTILES]
        return tf.concat([tf.stack([mean, tf.sqrt(variance)], -1), autocorrelations, tf.stack(
            [tf.reduce_mean(tf.abs(differences), -1), tf.math.reduce_std(differences, -1)] + quantiles, -1)], -1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2 + self.max_lag + 2 + len(self.QUANTILES))

    def get_config(self):
        return {**super().get_config(), "max_lag": self.max_lag}


@keras.saving.register_keras_serializable(package="tfp_amortised")
class BlowflyModel(GenerativeModel):
    """Blowfly population dynamics with a random discrete delay (Wood, 2010; Wenliang et al., 2020).

    Generative process for one series of `T` counts `x_t`, observed as log counts `y_t = log x_t`:

        tau ~ Categorical(softmax(m)) on {1, ..., 20}          (node `delay` holds tau - 1)
        e_t ~ Gamma(shape 1 / sigma_p^2, scale sigma_p^2)        (node `reproduction_noise`, [T], mean 1)
        eps_t ~ Gamma(shape 1 / sigma_d^2, scale sigma_d^2)      (node `survival_noise`, [T], mean 1)
        z_t = P x_{t-tau} exp(-x_{t-tau} / N0) e_t + x_{t-1} exp(-delta eps_t)
        y_t | z_t, y_{<t} ~ N(log z_t, sigma_n^2)                (node `log_counts`, [T]; x_t ~ LogNormal)

    for `t = 1..T`, with the history `x_t = initial_count` for `t <= 0`. The model is the same as observing
    `x_t ~ LogNormal(log z_t, sigma_n^2)` up to the Jacobian `-sum_t y_t`, which does not depend on the
    parameters; the log scale is observed because counts span two orders of magnitude and the kernel ridge
    regression of the estimator compares whole series (or their `BlowflySummaries`) with a Gaussian kernel.
    `log p(y | tau, e, eps)` has no recursion (the mean of `y_t` uses observed past values), so the conditional
    form of the estimator broadcasts latents `[1, N, ...]` against series `[M, 1, T]`; sampling runs the
    recursion with `tf.scan`.
    Both estimator forms are supported; the conditional one costs `M N` series log-densities (with a
    `[M, N, 20, T]` intermediate) against `N` for the joint one, which is what `benchmarks/blowfly.py` uses.

    Parameters (Keras weights): `P = softplus(raw_growth)`, `N0 = 100 softplus(raw_threshold)` (a unit of
    100 flies keeps every raw weight of order one for the optimiser), `delta`, `sigma_p`, `sigma_d` and the
    observation scale `sigma_n` are softplus of raw weights, `m = delay_logits: [20]`. `sigma_n` is fixed
    unless `learn_observation_scale=True`.

    Departures from the paper that we know of: Wood (2010) observes the counts without noise and fixes the
    delay (tau = 14 for this series); Wenliang et al. (2020) make tau categorical with learned probabilities
    and add observation noise so that `x` has a density. We do not have their exact observation model, the
    initial history, or whether they learned `sigma_n` at hand: the log-normal noise, the constant history and
    the fixed `sigma_n` here are our choices.

    Args:
      num_steps: `T`, the length of a series (180 for `load_blowfly()`).
      growth: initial `P > 0`.
      threshold: initial `N0 > 0`, in flies.
      death: initial `delta > 0`.
      reproduction_scale: initial `sigma_p > 0`.
      survival_scale: initial `sigma_d > 0`.
      delay_logits: initial `m`, 20 floats (default uniform).
      observation_scale: `sigma_n > 0`.
      learn_observation_scale: whether `sigma_n` is trained.
      initial_count: the constant history `x_t, t <= 0`, in flies.

    #### Examples

    ```python
    model = BlowflyModel()
    learner = AmortisedLearner(model, num_sleep=1000, form="conditional")
    learner.compile(optimizer=keras.optimizers.Adam(1e-2))
    learner.fit(np.log(load_blowfly())[None], batch_size=1, epochs=200)
    ```

    #### References

    [1] Li K. Wenliang, Theodore Moskovitz, Heishiro Kanagawa, Maneesh Sahani. Amortised Learning by
        Wake-Sleep. ICML 2020 (the dynamical model with a discrete delay).
    [2] Simon N. Wood. Statistical inference for noisy nonlinear ecological dynamic systems. Nature,
        466:1102-1104, 2010.
    [3] A. J. Nicholson. An outline of the dynamics of animal populations. Australian Journal of Zoology,
        2(1):9-65, 1954.
    """

    observed = "log_counts"

    def __init__(self, num_steps=180, growth=10., threshold=500., death=0.3, reproduction_scale=0.5,
                 survival_scale=0.5, delay_logits=None, observation_scale=0.1, learn_observation_scale=False,
                 initial_count=1000., **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps must be a positive integer. Received: num_steps={num_steps!r}")
        positive = {"growth": growth, "threshold": threshold, "death": death,
                    "reproduction_scale": reproduction_scale, "survival_scale": survival_scale,
                    "observation_scale": observation_scale, "initial_count": initial_count}
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive finite number. Received: {name}={value!r}")
        delay_logits = [0.] * MAX_DELAY if delay_logits is None else [float(v) for v in delay_logits]
        if len(delay_logits) != MAX_DELAY:
            raise ValueError(f"delay_logits must hold {MAX_DELAY} floats. Received: {len(delay_logits)} values")
        self.num_steps, self.learn_observation_scale = num_steps, learn_observation_scale
        self.initial_values = {name: float(value) for name, value in positive.items()}
        self.initial_delay_logits = delay_logits
        self.raw_growth = self.add_positive_weight("raw_growth", growth)
        self.raw_threshold = self.add_positive_weight("raw_threshold", threshold / COUNT_UNIT)
        self.raw_death = self.add_positive_weight("raw_death", death)
        self.raw_reproduction_scale = self.add_positive_weight("raw_reproduction_scale", reproduction_scale)
        self.raw_survival_scale = self.add_positive_weight("raw_survival_scale", survival_scale)
        self.raw_observation_scale = self.add_positive_weight(
            "raw_observation_scale", observation_scale, trainable=learn_observation_scale)
        self.delay_logits = self.add_weight(
            shape=(MAX_DELAY,), initializer=keras.initializers.Constant(delay_logits), name="delay_logits")

    def parameters(self):
        """The current parameters: dict of scalar Tensors `growth`, `threshold`, `death`, `reproduction_scale`,
        `survival_scale`, `observation_scale`, and `delay_probs: [20]` (`delay_probs[k] = p(tau = k + 1)`)."""
        return {
            "growth": tf.nn.softplus(self.raw_growth.value),
            "threshold": COUNT_UNIT * tf.nn.softplus(self.raw_threshold.value),
            "death": tf.nn.softplus(self.raw_death.value),
            "reproduction_scale": tf.nn.softplus(self.raw_reproduction_scale.value),
            "survival_scale": tf.nn.softplus(self.raw_survival_scale.value),
            "observation_scale": tf.nn.softplus(self.raw_observation_scale.value),
            "delay_probs": tf.nn.softmax(self.delay_logits.value),
        }

    def joint_distribution(self):
        p = self.parameters()
        delay_logits = self.delay_logits.value
        reproduction_rate, survival_rate = p["reproduction_scale"]**-2, p["survival_scale"]**-2
        log_initial = tf.math.log(tf.constant(self.initial_values["initial_count"], self.compute_dtype))

        def model():
            delay = yield Root(tfd.Categorical(logits=delay_logits, name="delay"))
            reproduction_noise = yield Root(tfd.Sample(
                tfd.Gamma(reproduction_rate, reproduction_rate), self.num_steps, name="reproduction_noise"))
            survival_noise = yield Root(tfd.Sample(
                tfd.Gamma(survival_rate, survival_rate), self.num_steps, name="survival_noise"))
            yield _DelayedLogCounts(delay, reproduction_noise, survival_noise, p["growth"], p["threshold"],
                                    p["death"], p["observation_scale"], log_initial, name="log_counts")

        return tfd.JointDistributionCoroutine(model)

    def get_config(self):
        return {**super().get_config(), "num_steps": self.num_steps, **self.initial_values,
                "delay_logits": self.initial_delay_logits,
                "learn_observation_scale": self.learn_observation_scale}
