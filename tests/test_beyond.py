"""Beyond image classifiers: each model family against an independent NumPy computation.

For every family a tiny model is built here; the target layer's activations ``A`` and the
gradients ``G = dy/dA`` are obtained independently (a plain Keras sub-model of the user's
model and a ``tf.GradientTape`` on a score written out in this file), and the NumPy
transcriptions of ``tests/reference.py`` are applied to them. tfcam's maps must match.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as L
from keras import ops
from reference import REFERENCES, normalize

import tfcam
from tfcam.targets import (
    BoxTarget,
    MultiLabelTarget,
    ReconstructionTarget,
    RegressionTarget,
    SegmentationTarget,
    SimilarityTarget,
)

GRAD_METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]
ALL_METHODS = sorted(REFERENCES)


# --------------------------------------------------------------------------- helpers


def independent_a_g(model, layer_name, tensor, score_of, x):
    """A and dy/dA with a plain Keras sub-model (inputs -> [layer output, tensor]) + tape.

    ``tensor`` is a symbolic tensor of ``model`` (e.g. the input of the softmax layer);
    ``score_of`` maps its value to (N,) scores.
    """
    ins = model.inputs if len(model.inputs) > 1 else model.inputs[0]
    sub = keras.Model(ins, [model.get_layer(layer_name).output, tensor])
    with tf.GradientTape() as tape:
        a, t = sub(x)
        y = score_of(tf.cast(t, tf.float32))
    g = tape.gradient(y, a)
    return a.numpy().astype(np.float64), g.numpy().astype(np.float64), y.numpy()


def numpy_maps(method, A, G):
    """The NumPy transcription applied per example; A, G: (N, *S, C)."""
    n, spatial, c = A.shape[0], A.shape[1:-1], A.shape[-1]
    return np.stack([REFERENCES[method](A[i].reshape(-1, c), G[i].reshape(-1, c)).reshape(spatial)
                     for i in range(n)])


def assert_maps_close(got, want, rtol=1e-3):
    assert np.abs(want).max() > 0, "degenerate test: the reference map is all zeros"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def np_linear_resize(m, size):
    """Separable linear resize with half-pixel centres (as tf.image.resize, bilinear)."""
    out = np.asarray(m, np.float64)
    for axis, n_out in enumerate(size, start=1):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        shape = [1] * out.ndim
        shape[axis] = n_out
        f = (src - lo).reshape(shape)
        out = np.take(out, lo, axis) * (1 - f) + np.take(out, hi, axis) * f
    return out


def check_family(ex, x, target, A, G, methods=ALL_METHODS, final_size=None, rtol=1e-3):
    """Raw maps equal the NumPy references; final maps equal ReLU -> resize -> normalize."""
    raw = ex.explain(x, target, methods, resize=False, normalize=False)
    final = ex.explain(x, target, methods) if final_size is not None else None
    for m in methods:
        want = numpy_maps(m, A, G)
        assert_maps_close(raw[m], want, rtol)
        if final_size is not None:
            assert final[m].shape == (len(A),) + tuple(final_size)
            up = np_linear_resize(want, final_size)
            exp = np.stack([normalize(u) for u in up])
            np.testing.assert_allclose(final[m], exp, atol=5e-3)
            assert final[m].dtype == np.float32
    return raw, final


# --------------------------------------------------------------------------- segmentation


def unet(seed=1):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    e = L.Conv2D(6, 3, padding="same", activation="relu", name="enc")(inp)
    p = L.MaxPooling2D(name="pool")(e)
    b = L.Conv2D(8, 3, padding="same", activation="relu", name="bott")(p)
    u = L.UpSampling2D(name="up")(b)
    c = L.Concatenate(name="skip")([u, e])
    d = L.Conv2D(6, 3, padding="same", activation="relu", name="dec")(c)
    out = L.Conv2D(3, 1, activation="softmax", name="seg")(d)
    return keras.Model(inp, out, name="unet")


def _seg_logits(model):
    head = model.get_layer("seg")

    def logits(d):
        return tf.einsum("nhwc,ck->nhwk", d, head.kernel[0, 0]) + head.bias
    return logits


@pytest.mark.parametrize("layer", ["dec", "bott"])
def test_segmentation_predicted_region(layer, rng):
    model = unet()
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    logits = _seg_logits(model)
    pred = model.predict(x, verbose=0).argmax(-1)
    cls = int(np.bincount(pred.ravel(), minlength=3)[1:].argmax()) + 1  # a class (not 0) that is predicted
    assert (pred == cls).any()

    def score(d):
        z = logits(d)
        region = tf.cast(tf.argmax(z, -1) == cls, tf.float32)
        return tf.reduce_sum(z[..., cls] * region, axis=[1, 2])

    A, G, y = independent_a_g(model, layer, model.get_layer("dec").output, score, x)
    ex = tfcam.Explainer(model, layer)
    raw, _ = check_family(ex, x, SegmentationTarget(cls), A, G, GRAD_METHODS, final_size=(16, 16))
    np.testing.assert_allclose(raw.scores, y, rtol=1e-4)
    assert raw.predictions.shape == (3, 16, 16, 3)


def test_segmentation_default_layer_and_mask(rng):
    model = unet()
    ex = tfcam.Explainer(model)
    assert ex.layer_names == ["dec"]  # the last spatial layer before the output head
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    mask = np.zeros((16, 16), np.float32)
    mask[2:9, 4:12] = 1.0
    logits = _seg_logits(model)
    A, G, y = independent_a_g(model, "dec", model.get_layer("dec").output,
                              lambda d: tf.reduce_sum(logits(d)[..., 2] * mask, axis=[1, 2]), x)
    raw, _ = check_family(ex, x, SegmentationTarget(2, mask=mask), A, G, GRAD_METHODS, final_size=(16, 16))
    np.testing.assert_allclose(raw.scores, y, rtol=1e-4)


def test_box_target_on_dense_head(rng):
    model = unet()
    x = rng.uniform(size=(2, 16, 16, 3)).astype(np.float32)
    boxes = np.array([[1, 2, 6, 9], [8, 8, 16, 12]])  # (y0, x0, y1, x1) per example
    logits = _seg_logits(model)

    def score(d):
        z = logits(d)[..., 0].numpy()
        return tf.constant([z[0, 1:6, 2:9].sum(), z[1, 8:16, 8:12].sum()])

    # the box sum written with a mask so that the tape sees it
    masks = np.zeros((2, 16, 16), np.float32)
    masks[0, 1:6, 2:9] = 1
    masks[1, 8:16, 8:12] = 1
    A, G, y = independent_a_g(model, "bott", model.get_layer("dec").output,
                              lambda d: tf.reduce_sum(logits(d)[..., 0] * masks, axis=[1, 2]), x)
    sub = keras.Model(model.inputs[0], model.get_layer("dec").output)
    np.testing.assert_allclose(score(sub(x)).numpy(), y, rtol=1e-5)  # the mask is the box
    ex = tfcam.Explainer(model, "bott")
    raw, _ = check_family(ex, x, BoxTarget(0, boxes), A, G, GRAD_METHODS, final_size=(16, 16))
    np.testing.assert_allclose(raw.scores, y, rtol=1e-4)


# --------------------------------------------------------------------------- heads


def cnn(head_units, head_activation=None, seed=0, shape=(12, 12, 3)):
    keras.utils.set_random_seed(seed)
    inp = keras.Input(shape)
    h = L.Conv2D(6, 3, activation="relu", name="c1")(inp)
    h = L.Conv2D(5, 3, activation="relu", name="c2")(h)
    g = L.GlobalAveragePooling2D(name="gap")(h)
    out = L.Dense(head_units, activation=head_activation, name="head")(g)
    return keras.Model(inp, out)


def _dense_logits(model, name="head"):
    head = model.get_layer(name)
    return lambda h: tf.matmul(h, head.kernel) + head.bias


def test_multilabel_sigmoid_head(rng):
    model = cnn(5, "sigmoid")
    x = rng.uniform(size=(3, 12, 12, 3)).astype(np.float32)
    z = _dense_logits(model)
    A, G, y = independent_a_g(model, "c2", model.get_layer("gap").output,
                              lambda h: z(h)[:, 1] + z(h)[:, 3], x)
    ex = tfcam.Explainer(model)
    assert ex.uses_logits
    raw, _ = check_family(ex, x, MultiLabelTarget([1, 3]), A, G, final_size=(12, 12))
    np.testing.assert_allclose(raw.scores, y, rtol=1e-4)
    # probability scores: the sum of sigmoids, not of logits
    prob = tfcam.Explainer(model, score="probability").explain(x, MultiLabelTarget([[0], [2, 4], [1]]))
    p = model.predict(x, verbose=0)
    np.testing.assert_allclose(prob.scores, [p[0, 0], p[1, 2] + p[1, 4], p[2, 1]], rtol=1e-5)


@pytest.mark.parametrize("sign", [1, -1])
def test_regression_head(sign, rng):
    model = cnn(2)  # linear output: two regressed values
    x = rng.uniform(size=(3, 12, 12, 3)).astype(np.float32)
    A, G, y = independent_a_g(model, "c2", model.outputs[0], lambda o: sign * o[:, 1], x)
    ex = tfcam.Explainer(model)
    raw, _ = check_family(ex, x, RegressionTarget(1, sign=sign), A, G, GRAD_METHODS, final_size=(12, 12))
    np.testing.assert_allclose(raw.scores, y, rtol=1e-5)


def test_regression_scalar_output(rng):
    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 3))
    h = L.Conv2D(4, 3, activation="relu", name="c1")(inp)
    g = L.GlobalAveragePooling2D()(h)
    out = L.Reshape((), name="value")(L.Dense(1, name="unit")(g))  # (N,) output
    model = keras.Model(inp, out)
    x = rng.uniform(size=(2, 12, 12, 3)).astype(np.float32)
    A, G, y = independent_a_g(model, "c1", model.outputs[0], lambda o: o, x)
    check_family(tfcam.Explainer(model), x, RegressionTarget(), A, G, ["gradcam", "hirescam"], final_size=(12, 12))


def test_similarity_target_embedding_model(rng):
    model = cnn(6)  # a 6-d embedding
    x = rng.uniform(size=(3, 12, 12, 3)).astype(np.float32)
    ref = rng.normal(size=6).astype(np.float32)

    def cosine(e):
        return tf.reduce_sum(e * ref, -1) / (tf.norm(e, axis=-1) * np.linalg.norm(ref))

    A, G, y = independent_a_g(model, "c2", model.outputs[0], cosine, x)
    raw, _ = check_family(tfcam.Explainer(model), x, SimilarityTarget(ref), A, G, GRAD_METHODS, (12, 12))
    np.testing.assert_allclose(raw.scores, y, rtol=1e-5)


def test_reconstruction_target_autoencoder(rng):
    keras.utils.set_random_seed(4)
    inp = keras.Input((16, 16, 1))
    e = L.Conv2D(4, 3, padding="same", activation="relu", name="enc")(inp)
    p = L.MaxPooling2D()(e)
    m = L.Conv2D(4, 3, padding="same", activation="relu", name="mid")(p)
    u = L.UpSampling2D(name="up")(m)
    out = L.Conv2D(1, 3, padding="same", name="dec")(u)
    model = keras.Model(inp, out)
    x = rng.uniform(size=(2, 16, 16, 1)).astype(np.float32)
    x[0, 4:8, 4:8] = 5.0  # an "anomaly"
    A, G, y = independent_a_g(model, "mid", model.outputs[0],
                              lambda o: tf.reduce_mean(tf.square(o - x), axis=[1, 2, 3]), x)
    assert tfcam.Explainer(model).layer_names == ["up"]  # the last spatial layer before the output
    ex = tfcam.Explainer(model, "mid")
    raw, _ = check_family(ex, x, ReconstructionTarget(x), A, G, GRAD_METHODS, final_size=(16, 16))
    np.testing.assert_allclose(raw.scores, y, rtol=1e-5)


# --------------------------------------------------------------------------- multi-output / input


def two_output_model(seed=5):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3))
    h = L.Conv2D(6, 3, activation="relu", name="c1")(inp)
    h = L.Conv2D(5, 3, activation="relu", name="c2")(h)
    g = L.GlobalAveragePooling2D(name="gap")(h)
    cls = L.Dense(3, activation="softmax", name="cls")(g)
    reg = L.Dense(4, name="box")(g)
    return keras.Model(inp, [cls, reg])


def test_two_output_model(rng):
    model = two_output_model()
    x = rng.uniform(size=(3, 12, 12, 3)).astype(np.float32)
    z = _dense_logits(model, "cls")
    A, G, y = independent_a_g(model, "c2", model.get_layer("gap").output, lambda h: z(h)[:, 2], x)
    ex_cls = tfcam.Explainer(model, output="cls")
    check_family(ex_cls, x, 2, A, G, final_size=(12, 12))
    A, G, y = independent_a_g(model, "c2", model.outputs[1], lambda o: o[:, 3], x)
    for which in ("box", 1):
        ex = tfcam.Explainer(model, output=which)
        raw, _ = check_family(ex, x, RegressionTarget(3), A, G, GRAD_METHODS, final_size=(12, 12))
        assert raw.predictions.shape == (3, 4)
    with pytest.raises(tfcam.TargetError, match=r"output names \['cls', 'box'\].*Received: output='boxes'"):
        tfcam.Explainer(model, output="boxes")


def two_input_model(seed=6):
    keras.utils.set_random_seed(seed)
    img = keras.Input((12, 12, 3), name="img")
    sig = keras.Input((20, 2), name="sig")
    a = L.Conv2D(6, 3, activation="relu", name="img_conv")(img)
    b = L.Conv1D(5, 3, activation="relu", name="sig_conv")(sig)
    b = L.Conv1D(4, 3, activation="relu", name="sig_conv2")(b)
    c = L.Concatenate(name="fuse")([L.GlobalAveragePooling2D()(a), L.GlobalAveragePooling1D()(b)])
    z = L.Dense(3, name="logits")(c)
    prob = L.Activation("softmax", name="prob")(z)
    return keras.Model([img, sig], prob)


def test_two_input_model(rng):
    model = two_input_model()
    xi = rng.uniform(size=(3, 12, 12, 3)).astype(np.float32)
    xs = rng.normal(size=(3, 20, 2)).astype(np.float32)
    classes = np.array([0, 2, 1])
    pick = lambda z: tf.gather(z, classes, axis=1, batch_dims=1)  # noqa: E731
    logits = model.get_layer("prob").input

    ex_img = tfcam.Explainer(model, input="img")
    assert ex_img.layer_names == ["img_conv"] and ex_img.input_spatial_shape == (12, 12)
    assert "input='img'" in repr(ex_img)
    A, G, y = independent_a_g(model, "img_conv", logits, pick, [xi, xs])
    raw, _ = check_family(ex_img, [xi, xs], classes, A, G, final_size=(12, 12))
    np.testing.assert_allclose(raw.scores, y, rtol=1e-5)

    ex_sig = tfcam.Explainer(model, input=1, batch_size=2)  # by index; two batches
    assert ex_sig.layer_names == ["sig_conv2"]  # default: the last layer of that input's branch
    A, G, _ = independent_a_g(model, "sig_conv2", logits, pick, [xi, xs])
    check_family(ex_sig, {"sig": xs, "img": xi}, classes, A, G, final_size=(20,))
    # a layer of the signal branch explicitly, maps at the signal's length
    ex1 = tfcam.Explainer(model, "sig_conv", input="sig")
    A, G, _ = independent_a_g(model, "sig_conv", logits, pick, [xi, xs])
    check_family(ex1, [xi, xs], classes, A, G, GRAD_METHODS)


def test_two_input_errors(rng):
    model = two_input_model()
    xi = rng.uniform(size=(2, 12, 12, 3)).astype(np.float32)
    xs = rng.normal(size=(2, 20, 2)).astype(np.float32)
    with pytest.raises(tfcam.InputError, match=r"input names \['img', 'sig'\].*Received: input='signal'"):
        tfcam.Explainer(model, input="signal")
    with pytest.raises(tfcam.InputError, match="Received: input=2"):
        tfcam.Explainer(model, input=2)
    with pytest.raises(tfcam.LayerError, match=r"computed from input\(s\) \['img'\].*Received: layer='img_conv'"):
        tfcam.Explainer(model, "img_conv", input="sig")
    ex = tfcam.Explainer(model, input="img")
    with pytest.raises(tfcam.InputError, match="2 inputs.*Received: images of type ndarray"):
        ex(xi)
    with pytest.raises(tfcam.InputError, match="Received: images with keys"):
        ex({"img": xi, "signal": xs})
    with pytest.raises(tfcam.InputError, match="same number of examples"):
        ex([xi, xs[:1]])
    with pytest.raises(tfcam.InputError, match=r"Received: images\['sig'\]\.shape=\(2, 21, 2\)"):
        ex([xi, np.zeros((2, 21, 2), np.float32)])


# --------------------------------------------------------------------------- 1-D and 3-D


def conv_net(rank, seed=7):
    keras.utils.set_random_seed(seed)
    conv = {1: L.Conv1D, 3: L.Conv3D}[rank]
    gap = {1: L.GlobalAveragePooling1D, 3: L.GlobalAveragePooling3D}[rank]
    shape = {1: (32, 3), 3: (8, 10, 6, 1)}[rank]
    inp = keras.Input(shape)
    h = conv(6, 3, activation="relu", name="c1")(inp)
    h = conv(5, 3, activation="relu", name="c2")(h)
    out = L.Dense(4, activation="softmax", name="head")(gap(name="gap")(h))
    return keras.Model(inp, out), shape


@pytest.mark.parametrize("rank", [1, 3])
def test_conv1d_conv3d(rank, rng):
    model, shape = conv_net(rank)
    x = rng.uniform(size=(3,) + shape).astype(np.float32)
    classes = np.array([3, 0, 1])
    z = _dense_logits(model)
    A, G, y = independent_a_g(model, "c2", model.get_layer("gap").output,
                              lambda h: tf.gather(z(h), classes, axis=1, batch_dims=1), x)
    ex = tfcam.Explainer(model)  # default layer selection at rank 1 / 3
    assert ex.layer_names == ["c2"]
    raw, final = check_family(ex, x, classes, A, G, final_size=shape[:-1])
    np.testing.assert_allclose(raw.scores, y, rtol=1e-5)
    # CAM (Zhou et al.): sum_k W[k, c] A_k, with the head kernel
    cam = tfcam.Explainer(model, method="cam")(x, classes, resize=False, normalize=False)
    kernel = model.get_layer("head").kernel.numpy().astype(np.float64)
    want = np.maximum(np.einsum("n...k,kn->n...", A, kernel[:, classes]), 0)
    assert_maps_close(cam, want)


def test_conv1d_variable_length(rng):
    """Input((None, C)): one compiled step serves every length; maps at each length."""
    keras.utils.set_random_seed(13)
    inp = keras.Input((None, 3))
    h = L.Conv1D(6, 3, padding="same", activation="relu", name="c1")(inp)
    h = L.MaxPooling1D(name="pool")(h)
    h = L.Conv1D(5, 3, padding="same", activation="relu", name="c2")(h)
    model = keras.Model(inp, L.Dense(3, name="head")(L.GlobalAveragePooling1D(name="gap")(h)))
    ex = tfcam.Explainer(model)
    assert ex.layer_names == ["c2"]
    for t in (16, 30):
        x = rng.uniform(size=(2, t, 3)).astype(np.float32)
        A, G, _ = independent_a_g(model, "c2", model.outputs[0], lambda o: o[:, 2], x)
        check_family(ex, x, RegressionTarget(2), A, G, GRAD_METHODS, final_size=(t,))
    assert ex.trace_count == 2  # raw + final steps, each traced once for both lengths


@pytest.fixture
def two_d_only_method():
    from tfcam.methods import REGISTRY, Method, register
    from tfcam.methods.gradient import gradcam_weights

    m = register(Method("test-2d-only", gradcam_weights, spatial_ranks=(2,)))
    try:
        yield m.name
    finally:
        REGISTRY.pop(m.name, None)
        from tfcam.methods import registry
        registry._ALIASES.pop(registry._key(m.name), None)


@pytest.mark.parametrize("rank", [1, 3])
def test_method_rank_check(rank, two_d_only_method, rng):
    model, shape = conv_net(rank)
    ex = tfcam.Explainer(model, method=two_d_only_method)
    with pytest.raises(tfcam.MethodError, match=rf"\[2\] spatial axes, not {rank}.*Received: method='test-2d-only'"):
        ex(rng.uniform(size=(1,) + shape).astype(np.float32))
    # the same method on a 2-D model works
    cnn2 = cnn(3)
    out = tfcam.Explainer(cnn2, method=two_d_only_method)(rng.uniform(size=(1, 12, 12, 3)).astype(np.float32))
    assert out.shape == (1, 12, 12)
    from tfcam.methods import Method, register
    with pytest.raises(tfcam.MethodError, match="spatial_ranks"):
        register(Method("bad-ranks", lambda a, g, y: a, spatial_ranks=(4,)))


# --------------------------------------------------------------------------- channels_first


def test_channels_first_layers_and_input(rng):
    keras.utils.set_random_seed(8)
    inp = keras.Input((3, 14, 12))
    h = L.Conv2D(6, 3, activation="relu", data_format="channels_first", name="c1")(inp)
    h = L.Conv2D(5, 3, activation="relu", data_format="channels_first", name="c2")(h)
    g = L.GlobalAveragePooling2D(data_format="channels_first", name="gap")(h)
    out = L.Dense(3, activation="softmax", name="head")(g)
    model = keras.Model(inp, out)
    x = rng.uniform(size=(2, 3, 14, 12)).astype(np.float32)
    z = _dense_logits(model)
    A, G, y = independent_a_g(model, "c2", model.get_layer("gap").output, lambda h: z(h)[:, 2], x)
    A, G = A.transpose(0, 2, 3, 1), G.transpose(0, 2, 3, 1)  # (N, C, H, W) -> channels last
    ex = tfcam.Explainer(model)
    assert ex.data_format == "channels_first" and ex.input_spatial_shape == (14, 12)
    check_family(ex, x, 2, A, G, final_size=(14, 12))
    cam = tfcam.Explainer(model, method="cam")(x, 2, resize=False, normalize=False)
    want = np.maximum(A @ model.get_layer("head").kernel.numpy()[:, 2], 0)
    assert_maps_close(cam, want)
    with pytest.raises(tfcam.InputError, match="Received: data_format='NCHW'"):
        tfcam.Explainer(model, data_format="NCHW")


# --------------------------------------------------------------------------- ViT


class ClassToken(L.Layer):
    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="random_normal", name="token")

    def call(self, x):
        t = ops.broadcast_to(ops.cast(self.token, x.dtype), (ops.shape(x)[0], 1, x.shape[-1]))
        return ops.concatenate([t, x], axis=1)


class TakeToken(L.Layer):
    def call(self, x):
        return x[:, 0]


def tiny_vit(class_token=True, seed=9):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    p = L.Conv2D(8, 4, strides=4, name="patch")(inp)  # 4 x 4 patches
    t = L.Reshape((16, 8), name="tokens")(p)
    if class_token:
        t = ClassToken(name="cls")(t)
    n1 = L.LayerNormalization(name="norm1")(t)
    att = L.MultiHeadAttention(2, 4, name="attn")(n1, n1)
    r1 = L.Add(name="res1")([t, att])
    n2 = L.LayerNormalization(name="norm2")(r1)
    r2 = L.Add(name="res2")([r1, L.Dense(8, activation="gelu", name="mlp")(n2)])
    pooled = TakeToken(name="take")(r2) if class_token else L.GlobalAveragePooling1D(name="pool")(r2)
    z = L.Dense(3, name="logits")(pooled)
    return keras.Model(inp, L.Activation("softmax", name="prob")(z))


@pytest.mark.parametrize("class_token", [True, False])
def test_vit_reshape_hook(class_token, rng):
    model = tiny_vit(class_token)
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    classes = np.array([1, 0, 2])
    A, G, y = independent_a_g(model, "norm1", model.get_layer("prob").input,
                              lambda z: tf.gather(z, classes, axis=1, batch_dims=1), x)
    skip = 1 if class_token else 0
    A = A[:, skip:].reshape(3, 4, 4, 8)  # tokens -> grid, in NumPy
    G = G[:, skip:].reshape(3, 4, 4, 8)
    for reshape, size in (("vit", (16, 16)), ((4, 4), None), (lambda t: tf.reshape(t[:, skip:], (-1, 4, 4, 8)), None)):
        ex = tfcam.Explainer(model, reshape=reshape)
        assert ex.layer_names == ["norm1"]  # default: the input of the last attention layer
        raw, _ = check_family(ex, x, classes, A, G, GRAD_METHODS, final_size=size)
        np.testing.assert_allclose(raw.scores, y, rtol=1e-4)
    acts, _, _ = tfcam.Explainer(model, reshape="vit").forward(tf.constant(x))
    np.testing.assert_allclose(acts[0].numpy(), A, rtol=1e-4, atol=1e-5)


def test_vit_errors():
    model = tiny_vit(True)
    with pytest.raises(tfcam.LayerError, match=r"reshape='vit'.*Received: layer='norm1'"):
        tfcam.Explainer(model, "norm1")
    with pytest.raises(tfcam.InputError, match=r"Cannot arrange 17 tokens as a 3x3 grid"):
        tfcam.Explainer(model, "norm1", reshape=(3, 3))
    with pytest.raises(tfcam.InputError, match="Received: reshape='grid'"):
        tfcam.Explainer(model, "norm1", reshape="grid")
    # issue 17: reshape="vit" passes layers that already are grids (Swin / MiT 4-D stages) unchanged
    # (it was an error); a layer list can then mix token and grid layers
    x = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(tfcam.Explainer(model, "patch", reshape="vit")(x, [0, 1]),
                               tfcam.Explainer(model, "patch")(x, [0, 1]), atol=1e-6)


# --------------------------------------------------------------------------- mixed precision


@pytest.fixture
def mixed_policy():
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def _mp_model():
    inp = keras.Input((16, 16, 3))
    h = L.Conv2D(8, 3, activation="relu", name="c1")(inp)
    h = L.Conv2D(6, 3, activation="relu", name="c2")(h)
    g = L.GlobalAveragePooling2D(name="gap")(h)
    z = L.Dense(4, name="logits")(g)
    return keras.Model(inp, L.Activation("softmax", dtype="float32", name="prob")(z))


MIXED_TOLERANCE = 1e-2  # max abs difference of normalized [0, 1] maps, float16 vs float32 model


def test_mixed_float16_model(mixed_policy, rng):
    keras.utils.set_random_seed(10)
    m16 = _mp_model()
    assert m16.get_layer("c2").compute_dtype == "float16"
    keras.config.set_dtype_policy("float32")
    m32 = _mp_model()
    m32.set_weights(m16.get_weights())
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    classes = np.array([0, 3, 2])
    pick = lambda z: tf.gather(z, classes, axis=1, batch_dims=1)  # noqa: E731
    ex16 = tfcam.Explainer(m16)
    ex32 = tfcam.Explainer(m32)
    out16 = ex16.explain(x, classes, GRAD_METHODS + ["eigencam"])
    out32 = ex32.explain(x, classes, GRAD_METHODS + ["eigencam"])
    for m in GRAD_METHODS + ["eigencam"]:
        assert out16[m].dtype == np.float32 and np.isfinite(out16[m]).all()
        assert np.abs(out16[m] - out32[m]).max() < MIXED_TOLERANCE, m  # measured: 1.0e-3 to 1.7e-3
    # and the float16 model's own maps against NumPy on its own A and G
    A, G, y = independent_a_g(m16, "c2", m16.get_layer("prob").input, pick, x)
    check_family(ex16, x, classes, A, G, GRAD_METHODS, final_size=(16, 16), rtol=2e-3)
