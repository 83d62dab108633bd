"""Why a learning regression trains the 8 x 8 digit model worse: the held-out error of the gradient regression.

The image decoder of `benchmarks/image_generation.py` is trained with the fixed regression (`KernelRidge()`,
conditional form, N = 1000, Adam 3e-3, minibatches of 100). At epochs 0, 10 and 50 the step on one minibatch is
evaluated, over 3 sleep seeds, with three regressions: the median heuristic with lambda = 1e-3 (the one training),
and the bandwidth and lambda a learning regression reached on the same model after 10 and 50 epochs (seed 0 of
`image_generation`). Columns: the held-out R^2 of the projected gradient (`ridge_r2`, what a learning regression
maximises up to its variance weight), the learning objective (`regression_loss`, in units of the targets'
variance: 1 is the error of predicting zero) and the norm of the estimated mean gradient.

    python -m benchmarks.image_regression

`--part variance`: on the model trained 20 epochs, the held-out error of the median bandwidth (3.4) at four ridges
split into the predictions' variance over sleep sets (measured over 8 sleep sets of the same held-out samples, and
as the learning objective estimates it from one, `estimator.split_half_variance`) and the rest (noise + bias^2).

`--part training`: the Fréchet distance of the mean images (PCA features) every 10 epochs, and the training and
test digits' importance-sampled log-likelihood at the end, while training from each seed's initial model with
variants of the learning regression: which hyperparameters learn (the others keep their initial values, the
median heuristic's bandwidth and lambda = 1e-3) and the variance weight. Variant `oracle` is the reference: the
same optimiser on the importance-sampled log-likelihood itself (`oracle_trainer`). Variants `ridge-*`
(`SPLIT_VARIANTS`) train with the fixed regression and a small lambda, and ask what about it degrades the model:
the mean over four sleep sets a step (a quarter of the variance, the same bias), or the noise scale's gradient
taken at another lambda than the decoder weights'.

`--part bias`: on the model trained 20 epochs, the bias and variance at the data of the amortised gradient (one
minibatch, fixed regressions at two bandwidths and three lambdas) against the importance-sampled gradient, in the
parameters' own metric and in the Fisher metric, and the noise scale's share.

    python -m benchmarks.image_regression --part training --variants fixed,learned,oracle --seeds 0

A learning regression's bandwidth is floored at the sleep set's nearest-neighbour distance
(`tfp_amortised.ridge.nearest_neighbour_distance`; before, it fell to half of it here). `--part nearest` prints
that floor, and the median distance from the wake and held-out points to their nearest sleep observation, beside
the median heuristic while the fixed regression trains.
"""

import itertools
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks._report import benchmark_parser, machine_header, markdown_table
from benchmarks.image_generation import NUM_COMPONENTS, NUM_TRAIN, make_learner, scores, test_log_likelihood
from tfp_amortised import KernelRidge, amortised_step, estimator, median_bandwidth
from tfp_amortised.ridge import _square_distances, nearest_neighbour_distance
from tfp_amortised.models.image_decoder import load_digits, pca_features

REGRESSIONS = {"median heuristic, lambda 1e-3": {},
               "learned after 10 epochs: bandwidth 1.32, lambda 1e-5": {"bandwidth": 1.32, "ridge": 1e-5},
               "learned after 50 epochs: bandwidth 0.66, lambda 5e-7": {"bandwidth": 0.66, "ridge": 5e-7}}


def evaluate(model, x, settings, num_seeds=3):
    """Mean over sleep seeds of `(ridge_r2, regression_loss, gradient norm)` of the step with `KernelRidge(
    **settings)` on the wake batch `x: [M, 8, 8]`."""
    rows = []
    for seed in range(num_seeds):
        with tf.GradientTape() as tape:
            step = amortised_step(model.joint_distribution, x, num_sleep=1000, seed=[seed, 7],
                                  regression=KernelRidge(**settings), form="conditional", num_holdout=64,
                                  variables=model.trainable_variables, held_out_error=True)
        gradient = tape.gradient(step.loss, model.trainable_variables)
        rows.append([float(step.diagnostics["ridge_r2"]), float(step.regression_loss),
                     float(tf.linalg.global_norm(gradient))])
    return np.mean(rows, axis=0)


def nearest_distance(sleep_x, query_x):
    """Median over the queries `[M, F]` of the distance to the nearest of the sleep observations `[N, F]`."""
    nearest = tf.sqrt(tf.maximum(tf.reduce_min(_square_distances(query_x, sleep_x), axis=1), 0.))
    return tf.sort(nearest)[tf.shape(nearest)[0] // 2]


# name: (KernelRidge arguments, the hyperparameters that learn); "-w1": variance weight 1 (the held-out mean squared
# error), the default since the ridge cap, so the plain names mean it too; tables made before the cap have plain
# names with the earlier default 0.1, which "learned-w0.1" keeps
VARIANTS = {"fixed": ({}, ()),
            "learned": ({"learn": True}, ("log_bandwidth", "log_ridge")),
            "learned-w1": ({"learn": True, "variance_weight": 1.}, ("log_bandwidth", "log_ridge")),
            "learned-w0.1": ({"learn": True, "variance_weight": 0.1}, ("log_bandwidth", "log_ridge")),
            "bandwidth": ({"learn": True}, ("log_bandwidth",)),
            "bandwidth-w1": ({"learn": True, "variance_weight": 1.}, ("log_bandwidth",)),
            "ridge": ({"learn": True}, ("log_ridge",)),
            "ridge-w1": ({"learn": True, "variance_weight": 1.}, ("log_ridge",)),
            "learned-intercept": ({"learn": True, "intercept": True}, ("log_bandwidth", "log_ridge"))}


def held_out_table(train):
    """Part `heldout`: rows `[epochs, regression, R^2, regression_loss, gradient norm]`."""
    learner, model = make_learner("amortised-fixed", seed=0, num_sleep=1000)  # as image_generation trains it
    x = tf.constant(train[:100])
    rows, trained = [], 0
    for epochs in (0, 10, 50):
        learner.fit(train, batch_size=100, epochs=epochs - trained, verbose=0)
        trained = epochs
        for name, settings in REGRESSIONS.items():
            rows.append([epochs, name, *evaluate(model, x, settings)])
        print(f"epoch {epochs} done", flush=True)
    return (["epochs trained", "regression", "held-out R^2", "regression_loss", "gradient norm"], rows,
            "Model trained with the fixed regression; each row: one minibatch of 100 digits, 3 sleep seeds (mean)")


def variance_table(train, num_sets=8, bandwidth=3.4):
    """Part `variance`: rows `[ridge, held-out error, variance over sleep sets, split-half estimate, rest]`, all in
    units of the targets' variance, mean over `num_sets` sleep sets of 1000 against one held-out set of 64."""
    learner, model = make_learner("amortised-fixed", seed=0, num_sleep=1000)
    learner.fit(train, batch_size=100, epochs=20, verbose=0)
    joint = model.joint_distribution
    held_out = estimator.sleep(joint(), 64, tf.constant([5, 5]))
    fits = [estimator.sleep(joint(), 1000, tf.constant([s, 11])) for s in range(num_sets)]
    values = [estimator.held_out_targets(joint, fit, held_out, ("x",), "conditional", model.trainable_variables,
                                         tf.constant([3, 3])) for fit in fits]  # same directions for every set
    scale = float(estimator._total_variance(values[0][1]))
    rows = []
    for ridge in (1e-3, 1e-5, 1e-7, 1e-9):
        regression = KernelRidge(bandwidth=bandwidth, ridge=ridge)
        predictions, errors, estimates = [], [], []
        for fit, (fitted, target) in zip(fits, values):
            weights = regression(fit["x"], held_out["x"])
            predictions.append(estimator._predict(weights, fitted).numpy())
            errors.append(float(estimator.regression_loss(fitted, target, weights)))
            estimates.append(float(estimator.split_half_variance(regression, fit["x"], held_out["x"], fitted,
                                                                 target, weights)))
        variance = float(np.var(predictions, axis=0, ddof=1).sum(-1).mean()) / scale
        rows.append([f"{ridge:.0e}", np.mean(errors), variance, np.mean(estimates), np.mean(errors) - variance])
    header = ["lambda", "held-out error", "variance over sleep sets", "split-half estimate", "noise + bias^2"]
    return header, rows, (f"Model trained 20 epochs with the fixed regression; bandwidth {bandwidth} (the median "
                          f"heuristic's); {num_sets} sleep sets of 1000, one held-out set of 64")


def nearest_table(train):
    """Part `nearest`: rows `[epochs, median heuristic, nearest distance of wake, of held-out sleep]` while the
    fixed regression trains (one minibatch of 100 digits, 1000 sleep samples, 100 held-out ones)."""
    learner, model = make_learner("amortised-fixed", seed=0, num_sleep=1000)
    rows, trained = [], 0
    for epochs in (0, 10, 20, 50):
        learner.fit(train, batch_size=100, epochs=epochs - trained, verbose=0)
        trained = epochs
        sample = tf.reshape(estimator.sleep(model.joint_distribution(), 1100, tf.constant([5, 6]))["x"], [1100, -1])
        sleep_x, held_out = sample[:1000], sample[1000:]
        rows.append([epochs, float(median_bandwidth(sleep_x - tf.reduce_mean(sleep_x, 0))),
                     float(nearest_distance(sleep_x, tf.reshape(tf.constant(train[:100]), [100, -1]))),
                     float(nearest_distance(sleep_x, held_out)), float(nearest_neighbour_distance(sleep_x))])
    return (["epochs trained", "median heuristic", "wake to nearest sleep (median)",
             "held-out sleep to nearest sleep (median)", "sleep nearest-neighbour distance (the floor)"], rows,
            "Model trained with the fixed regression; distances in pixel space")


BIAS_SETTINGS = ({}, {"ridge": 1e-5}, {"ridge": 1e-7}, {"bandwidth": 1.5}, {"bandwidth": 1.5, "ridge": 1e-5},
                 {"bandwidth": 1.5, "ridge": 1e-7})


def bias_table(train, num_sets=8, num_scores=400):
    """Part `bias`: the amortised gradient at the data against the importance-sampled one `g`, on the model
    trained 20 epochs with the fixed regression, at one minibatch of 100 digits. Rows `[regression, bias^2 and
    variance relative to g.g, the same in the Fisher metric (e.F.e relative to g.F.g), the noise scale's
    gradient: importance-sampled and amortised mean]`; bias and variance over `num_sets` sleep sets, `F = E[s
    s^T]` from the scores `s = grad log p(x, z)` of `num_scores` sleep samples."""
    learner, model = make_learner("amortised-fixed", seed=0, num_sleep=1000)
    learner.fit(train, batch_size=100, epochs=20, verbose=0)
    variables, x = model.trainable_variables, tf.constant(train[:100])
    scale_index = [index for index, variable in enumerate(variables) if variable is model.raw_scale][0]

    def flat_gradient(loss_fn):
        with tf.GradientTape() as tape:
            loss = loss_fn()
        gradients = tape.gradient(loss, variables)
        return np.concatenate([np.reshape(g, -1) for g in gradients]), float(gradients[scale_index])

    exact = [flat_gradient(lambda: -tf.reduce_mean(model.estimate_log_marginal(x, 2000, seed=(seed, 3))))
             for seed in range(2)]
    exact, exact_scale = np.mean([g for g, _ in exact], 0, dtype=np.float64), np.mean([v for _, v in exact])
    sample = estimator.sleep(model.joint_distribution(), num_scores, tf.constant([9, 9]))
    with tf.GradientTape() as tape:
        log_joint = model.joint_distribution().log_prob(sample["z"], sample["x"])
    scores = np.concatenate([np.reshape(j, [num_scores, -1]) for j in tape.jacobian(log_joint, variables)], 1)

    def fisher(vector):
        return float(np.mean((scores @ vector) ** 2))

    rows = []
    for settings in BIAS_SETTINGS:
        runs = [flat_gradient(lambda: amortised_step(
            model.joint_distribution, x, num_sleep=1000, seed=[seed, 7], regression=KernelRidge(**settings),
            form="conditional", held_out_error=False).loss) for seed in range(num_sets)]
        gradients = np.array([g for g, _ in runs])
        mean = gradients.mean(0)
        variance = float(np.sum(np.var(gradients, 0, ddof=1)))
        variance_fisher = np.mean([fisher(g - mean) for g in gradients]) * num_sets / (num_sets - 1)
        bias = (mean - exact).astype(np.float64)
        label = f"bandwidth {settings.get('bandwidth', 'median')}, lambda {settings.get('ridge', 1e-3):g}"
        rows.append([label, (bias @ bias - variance / num_sets) / (exact @ exact),
                     variance / (exact @ exact), (fisher(bias) - variance_fisher / num_sets) / fisher(exact),
                     variance_fisher / fisher(exact), exact_scale, np.mean([v for _, v in runs])])
        print(f"{label}: done", flush=True)
    header = ["regression", "bias^2 / g.g", "variance / g.g", "Fisher: bias^2 / g.F.g", "Fisher: variance / g.F.g",
              "noise scale: importance-sampled gradient", "amortised mean"]
    return header, rows, (f"Model trained 20 epochs with the fixed regression; 100 training digits; g: the gradient of "
                          f"-mean log p(x), importance-sampled (2 x 2000 samples per digit); {num_sets} sleep sets "
                          f"of 1000; Fisher metric from {num_scores} sleep samples' scores; bandwidth default: the "
                          f"median heuristic")


def minibatch_trainer(seed, train, gradients, batch_size=100):
    """Adam 3e-3 on shuffled minibatches of `batch_size` digits, as the learners train, from the learners' initial
    model, with `gradients(model, x, step_seed) -> gradients of model.trainable_variables`, compiled. Returns
    `(model, train_epochs)`."""
    _, model = make_learner("amortised-fixed", seed, 1000)  # the learners' initial model
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function(reduce_retracing=True, autograph=False)
    def step(x, step_seed):
        optimizer.apply_gradients(zip(gradients(model, x, step_seed), model.trainable_variables))

    rng, steps = np.random.default_rng(seed), itertools.count()

    def train_epochs(epochs):
        for _ in range(epochs):
            order = rng.permutation(len(train))
            for start in range(0, len(train), batch_size):
                step(tf.constant(train[order[start:start + batch_size]]), tf.constant([seed, next(steps)]))

    return model, train_epochs


def oracle_trainer(seed, train, num_samples=100):
    """The reference for the learners: `minibatch_trainer` ascending the importance-sampled `log p(x)`
    (`ImageDecoderModel.estimate_log_marginal`, `num_samples` fresh samples per digit and step). Its gradient is
    the self-normalised importance-sampling estimate of the exact one, with a bias of order `1 / num_samples`."""
    def gradients(model, x, step_seed):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(model.estimate_log_marginal(x, num_samples, seed=step_seed))
        return tape.gradient(loss, model.trainable_variables)

    return minibatch_trainer(seed, train, gradients)


# name: (lambda of the decoder's weights, lambda of the pixel noise scale's gradient, sleep sets averaged per step);
# fixed median-heuristic bandwidth, conditional form, N = 1000 per set
SPLIT_VARIANTS = {"ridge-1e-3": (1e-3, 1e-3, 1), "ridge-1e-5": (1e-5, 1e-5, 1), "ridge-1e-5-sets4": (1e-5, 1e-5, 4),
                  "ridge-1e-5-scale-1e-3": (1e-5, 1e-3, 1), "ridge-1e-3-scale-1e-5": (1e-3, 1e-5, 1)}


def split_trainer(name, seed, train):
    """`minibatch_trainer` on the amortised gradient of the fixed regression with the `SPLIT_VARIANTS` setting
    `name`: the mean over `sets` independent sleep sets (variance / sets, bias unchanged), the gradient of the
    noise scale `raw_scale` taken from a regression with its own lambda."""
    ridge, scale_ridge, sets = SPLIT_VARIANTS[name]
    regressions = {ridge: KernelRidge(ridge=ridge), scale_ridge: KernelRidge(ridge=scale_ridge)}

    def gradients(model, x, step_seed):
        with tf.GradientTape(persistent=True) as tape:
            losses = {value: tf.add_n([amortised_step(
                model.joint_distribution, x, num_sleep=1000, seed=tf.stack([step_seed[0], step_seed[1] * sets + k]),
                regression=regression, form="conditional", held_out_error=False).loss for k in range(sets)]) / sets
                for value, regression in regressions.items()}
        variables = model.trainable_variables
        result = [tape.gradient(losses[scale_ridge if variable is model.raw_scale else ridge], variable)
                  for variable in variables]
        del tape
        return result

    return minibatch_trainer(seed, train, gradients)


def learner_trainer(name, seed, train):
    """A learner with the variant `name`'s regression: `(model, train_epochs -> the last epoch's mean bandwidth)`
    and the regression."""
    arguments, learning = VARIANTS[name]
    regression = KernelRidge(**arguments)
    learner, model = make_learner("amortised", seed, 1000, regression)
    for variable in (regression.log_bandwidth, regression.log_ridge):
        variable.trainable = regression.learn and variable.name in learning

    def train_epochs(epochs):
        return float(np.mean(learner.fit(train, batch_size=100, epochs=epochs, verbose=0).history["bandwidth"][-1]))

    return model, train_epochs, regression


def training_table(train, test, variants, seeds, epochs=50, every=10):
    """Part `training`: rows `[variant, seed, FD at every `every` epochs..., final train and test log p(x), final
    bandwidth, final lambda, final sigma]`; variant `"oracle"` is `oracle_trainer`, the `SPLIT_VARIANTS` are
    `split_trainer`."""
    features = {"PCA": lambda images: pca_features(images, train, NUM_COMPONENTS)}
    rows = []
    for name in variants:
        for seed in seeds:
            if name == "oracle":
                (model, train_epochs), regression = oracle_trainer(seed, train), None
            elif name in SPLIT_VARIANTS:
                (model, train_epochs), regression = split_trainer(name, seed, train), None
            else:
                model, train_epochs, regression = learner_trainer(name, seed, train)
            distances = []
            for _ in range(0, epochs, every):
                bandwidth = train_epochs(every)
                distances.append(scores(model, test, features, 0)[0]["PCA, means"])
            log_likelihoods = [test_log_likelihood(model, digits) for digits in (train[:len(test)], test)]
            settings = ["-", "-"] if regression is None else [bandwidth, float(regression.ridge)]
            settings.append(float(model.scale))
            rows.append([name, seed, *distances, *log_likelihoods, *settings])
            print(name, seed, [round(d, 3) for d in distances], [round(v, 3) for v in log_likelihoods], flush=True)
    header = ["regression", "seed", *[f"FD, epoch {e}" for e in range(every, epochs + 1, every)],
              f"train log p(x), epoch {epochs}", f"test log p(x), epoch {epochs}", "bandwidth", "lambda", "sigma"]
    return header, rows, ("Fréchet distance of the mean images to the test digits in PCA features "
                          "(`image_generation`'s FD PCA, means); log p(x): mean over the first 500 training digits "
                          "and the 500 test digits, importance-sampled (`ImageDecoderModel.estimate_log_marginal`, "
                          "2000 samples); bandwidth: the last epoch's mean, lambda: the last")


NAMES = [*VARIANTS, "oracle", *SPLIT_VARIANTS]


def main():
    parser = benchmark_parser(__doc__, "no quick size")
    parser.add_argument("--part", choices=("heldout", "variance", "training", "nearest", "bias"), default="heldout")
    parser.add_argument("--variants", type=lambda text: text.split(","), default=list(VARIANTS),
                        help=f"--part training: comma-separated names from {NAMES}")
    parser.add_argument("--seeds", type=lambda text: [int(seed) for seed in text.split(",")], default=[0])
    args = parser.parse_args()
    unknown = [name for name in args.variants if name not in NAMES]
    if unknown:
        parser.error(f"--variants takes names from {NAMES}. Received: {unknown}")
    start = time.time()
    keras.utils.set_random_seed(0)
    images = load_digits()[0]
    train, test = images[:NUM_TRAIN], images[NUM_TRAIN:]
    if args.part == "heldout":
        header, rows, caption = held_out_table(train)
    elif args.part == "variance":
        header, rows, caption = variance_table(train)
    elif args.part == "nearest":
        header, rows, caption = nearest_table(train)
    elif args.part == "bias":
        header, rows, caption = bias_table(train)
    else:
        header, rows, caption = training_table(train, test, args.variants, args.seeds)
    print(machine_header())
    print(caption + "\n")
    print(markdown_table(header, rows, "{:.3g}"))
    print(f"\nwall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
