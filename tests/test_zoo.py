"""The CAM zoo (issue 13) against NumPy transcriptions and hand derivations."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import gradcampp, normalize, relu

import tfcam


def _softplus_head_model(seed=0, channels=3):
    """x -> conv 'c' (linear) -> softplus -> GAP -> Dense(3, softmax). Smooth after the layer."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(channels, 3, name="c")(inp)
    h = keras.layers.Activation("softplus")(a)
    out = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inp, out)


def _acts(model, x, name):
    return keras.Model(model.inputs, model.get_layer(name).output)(x).numpy().astype(np.float64)


def test_shapleycam_matches_finite_difference_hvp(rng):
    model = _softplus_head_model()
    x = rng.normal(size=(2, 6, 6, 2)).astype(np.float32)
    classes = np.array([0, 2])
    W, b = [w.astype(np.float64) for w in model.get_layer("head").get_weights()]
    raw = tfcam.Explainer(model, "c", method="shapleycam")(x, classes, resize=False, normalize=False)
    A_all = _acts(model, x, "c")
    for i, c in enumerate(classes):
        A = A_all[i].reshape(-1, 3)  # (|S|, C)
        S = A.shape[0]

        def grad(A, c=c, S=S):
            z = np.log1p(np.exp(A)).mean(axis=0) @ W + b
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            dy_dz = 2 * np.eye(3)[c] - p  # ReST = 2 y_c - logsumexp(z)
            return (1 / (1 + np.exp(-A))) / S * (W @ dy_dz)[None, :]

        eps = 1e-4
        hvp = (grad(A + eps * A) - grad(A - eps * A)) / (2 * eps)
        w = (grad(A) - 0.5 * hvp).mean(axis=0)
        np.testing.assert_allclose(raw[i].ravel(), relu(A @ w), rtol=2e-3, atol=1e-6)


def test_shapleycam_plain_target_score_option(rng):
    model = _softplus_head_model()
    x = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
    rest = tfcam.Explainer(model, "c", method="shapleycam")(x, 1, resize=False, normalize=False)
    plain = tfcam.Explainer(model, "c", method="shapleycam", shapley_score="target")(x, 1, resize=False,
                                                                                      normalize=False)
    assert not np.allclose(rest, plain)


def _finer_dscore_dz(z, c, others, alpha):
    """d/dz of f = sum_j p_j (z_c - alpha z_j) / sum_j p_j, p = softmax(z), by the quotient
    rule with dp_j/dz_m = p_j (delta_jm - p_m): the weights are differentiated too."""
    k = len(z)
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    eye = np.eye(k)
    d = np.array([z[c] - alpha * z[j] for j in others])
    dp = np.stack([p[j] * (eye[j] - p) for j in others])  # (J, K): dp_j/dz
    dd = np.stack([eye[c] - alpha * eye[j] for j in others])  # (J, K): dd_j/dz
    num, den = sum(p[j] * d[i] for i, j in enumerate(others)), sum(p[j] for j in others)
    dnum = (dp * d[:, None]).sum(axis=0) + sum(p[j] * dd[i] for i, j in enumerate(others))
    dden = dp.sum(axis=0)
    return (dnum * den - num * dden) / den**2


def test_finercam_matches_numpy_transcription(cnn, rng):
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    classes = np.array([0, 1, 3])
    head = cnn.get_layer("head")
    W, b = [w.astype(np.float64) for w in head.get_weights()]
    A_all = _acts(cnn, x, "c2")
    logits = A_all.mean(axis=(1, 2)) @ W + b
    raw = tfcam.Explainer(cnn, "c2", method="finercam", finer_k=2, finer_alpha=0.7)(x, classes, resize=False,
                                                                                     normalize=False)
    for i, c in enumerate(classes):
        z = logits[i]
        others = [j for j in np.argsort(np.abs(z - z[c])) if j != c][:2]  # nearest logits, target excluded
        A = A_all[i].reshape(-1, 6)
        # logits = GAP(A) @ W + b: dy/dA_k(s) = (W @ df/dz)_k / |S|; Grad-CAM weights = that mean
        want = relu(A @ (W @ _finer_dscore_dz(z, c, others, 0.7)) / A.shape[0])
        np.testing.assert_allclose(raw[i].ravel(), want, rtol=1e-4, atol=1e-7)
    # the finite-difference derivative of the transcription agrees with its closed form
    z, c, others = logits[0], classes[0], [j for j in np.argsort(np.abs(logits[0] - logits[0][0])) if j != 0][:2]

    def f(z):
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        return sum(p[j] * (z[c] - 0.7 * z[j]) for j in others) / sum(p[j] for j in others)

    fd = np.array([(f(z + 1e-6 * e) - f(z - 1e-6 * e)) / 2e-6 for e in np.eye(4)])
    np.testing.assert_allclose(_finer_dscore_dz(z, c, others, 0.7), fd, rtol=1e-5, atol=1e-8)


def test_smoothgradcampp_without_noise_is_gradcampp(cnn, rng):
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    a = tfcam.Explainer(cnn, "c2", method="smoothgradcam++", noise_level=0.0, smooth_samples=3)(x, [1, 2])
    b = tfcam.Explainer(cnn, "c2", method="gradcam++")(x, [1, 2])
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_smoothgradcampp_averages_gradient_powers(rng):
    """On a smooth head the noisy average differs from Grad-CAM++; same seed, same map."""
    model = _softplus_head_model(channels=8)
    x = rng.normal(size=(2, 6, 6, 2)).astype(np.float32)
    s1 = tfcam.Explainer(model, "c", method="smoothgradcam++", noise_level=0.5, smooth_samples=4)(x, [0, 1])
    s2 = tfcam.Explainer(model, "c", method="smoothgradcam++", noise_level=0.5, smooth_samples=4)(x, [0, 1])
    plain = tfcam.Explainer(model, "c", method="gradcam++")(x, [0, 1])
    np.testing.assert_array_equal(s1, s2)
    assert np.abs(s1 - plain).max() > 1e-3


def test_refinecam_is_the_product_of_per_layer_maps(cnn, rng):
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    classes = np.array([2, 0])
    got = tfcam.Explainer(cnn, ["c1", "c2"], method="refinecam")(x, classes)
    raw = {name: tfcam.Explainer(cnn, name, method="gradcam++")(x, classes, resize=False, normalize=False)
           for name in ("c1", "c2")}
    for i in range(2):
        prod = np.ones((16, 16))
        for name in ("c1", "c2"):
            m = tf.image.resize(raw[name][i][None, ..., None], (16, 16)).numpy()[0, ..., 0]
            m = np.maximum(m, 0)
            prod *= m / m.max() if m.max() > 0 else m
        np.testing.assert_allclose(got[i], normalize(prod), atol=1e-5)
    # with one layer it is the base method
    one = tfcam.Explainer(cnn, "c2", method="refinecam")(x, classes)
    np.testing.assert_allclose(one, tfcam.Explainer(cnn, "c2", method="gradcam++")(x, classes), atol=1e-5)
    # and that base map is Grad-CAM++ (eq. 19) of c2, from an independent tape on the logits
    W, b = cnn.get_layer("head").get_weights()
    with tf.GradientTape() as tape:
        a = keras.Model(cnn.inputs[0], cnn.get_layer("c2").output)(x)
        tape.watch(a)
        y = tf.gather(tf.reduce_mean(a, axis=(1, 2)) @ W + b, classes, axis=1, batch_dims=1)
    A, G = a.numpy().astype(np.float64), tape.gradient(y, a).numpy().astype(np.float64)
    want = np.stack([gradcampp(A[i].reshape(-1, 6), G[i].reshape(-1, 6)).reshape(12, 12) for i in range(2)])
    assert want.max() > 0
    np.testing.assert_allclose(raw["c2"], want, rtol=1e-4, atol=1e-6 * want.max())


def test_randomcam_is_a_seeded_baseline(cnn, rng):
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    a = tfcam.Explainer(cnn, "c2", method="randomcam", seed=1)(x, 0, resize=False, normalize=False)
    b = tfcam.Explainer(cnn, "c2", method="randomcam", seed=1)(x, 0, resize=False, normalize=False)
    c = tfcam.Explainer(cnn, "c2", method="randomcam", seed=2)(x, 0, resize=False, normalize=False)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    A = _acts(cnn, x, "c2").reshape(3, -1, 6)
    w = np.random.default_rng(1).uniform(-1.0, 1.0, size=6)
    np.testing.assert_allclose(a.reshape(3, -1), relu(A @ w), rtol=1e-5, atol=1e-7)


def test_class_only_scores_reject_other_targets(cnn, rng):
    x = rng.uniform(size=(1, 16, 16, 3)).astype(np.float32)
    with pytest.raises(tfcam.MethodError, match="class targets"):
        tfcam.Explainer(cnn, "c2", method="finercam")(x, lambda out: tf.reduce_sum(out, -1))


def test_eigen_smooth_projects_the_weighted_activations(cnn, rng):
    from reference import eigen

    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    classes = np.array([1, 3])
    raw = tfcam.Explainer(cnn, "c2", eigen_smooth=True)(x, classes, resize=False, normalize=False)
    head = cnn.get_layer("head")
    W = head.get_weights()[0].astype(np.float64)
    A_all = _acts(cnn, x, "c2")
    for i, c in enumerate(classes):
        A = A_all[i].reshape(-1, 6)
        w = W[:, c] / A.shape[0]  # Grad-CAM weights of a GAP + Dense head
        np.testing.assert_allclose(raw[i].ravel(), eigen(A * w[None, :]), rtol=1e-3, atol=1e-6)
    hires = tfcam.Explainer(cnn, "c2", method="hirescam", eigen_smooth=True)(x, classes, resize=False,
                                                                            normalize=False)
    assert hires.shape == raw.shape and np.isfinite(hires).all()


def _symmetric_model():
    """Flip-equivariant and positively homogeneous: symmetric kernels, no biases, ReLU, GAP."""
    inp = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(2, 3, padding="same", use_bias=False, activation="relu", name="c")
    h = conv(inp)
    head = keras.layers.Dense(2, use_bias=False, name="head")
    out = head(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    k = np.array([[1.0, 2.0, 1.0], [0.5, -1.0, 0.5], [0.0, 1.0, 0.0]], np.float32)  # symmetric left-right
    conv.set_weights([np.stack([k, -k], axis=-1)[:, :, None, :]])
    head.set_weights([np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)])
    return model


def test_aug_smooth_is_invariant_where_the_flip_is_predictable(rng):
    model = _symmetric_model()
    x = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)  # the input itself is not symmetric
    plain = tfcam.Explainer(model, "c")(x, [0, 1, 0])
    smooth = tfcam.Explainer(model, "c", aug_smooth=True)(x, [0, 1, 0])
    np.testing.assert_allclose(smooth, plain, atol=1e-5)


def test_aug_smooth_averages_flipped_back_maps(cnn, rng):
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    ex = tfcam.Explainer(cnn, "c2")
    total = np.zeros((2, 16, 16))
    for flip in (False, True):
        for f in (0.9, 1.0, 1.1):
            xa = x[:, :, ::-1] * f if flip else x * f
            m = ex(xa, [0, 1])
            total += m[:, :, ::-1] if flip else m
    want = np.stack([normalize(t / 6) for t in total])
    got = tfcam.Explainer(cnn, "c2", aug_smooth=True).explain(x, [0, 1])
    np.testing.assert_allclose(got["gradcam"], want, atol=1e-5)
    np.testing.assert_allclose(got.predictions, cnn(x).numpy(), rtol=1e-5)
