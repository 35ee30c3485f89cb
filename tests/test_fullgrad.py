"""FullGrad (Srinivas & Fleuret 2019) against an independent Keras-sub-model + NumPy
computation, on nets with conv, depthwise-conv and batch-norm biases, with and without
activations fused into the conv layers, nested models, and the completeness property."""

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcam
from tfcam.methods.fullgrad import bias_layers, full_gradients
from tfcam.targets import as_target

H = 12


def _net(fused: bool, head_act="softmax", bn=True, name="net"):
    """c1 -> bn1 -> dw -> c2 -> bn2 -> GAP -> head, ReLUs fused or as separate layers."""
    act = "relu" if fused else None
    inp = keras.Input((H, H, 3))
    h = keras.layers.Conv2D(4, 3, activation=act, name="c1")(inp)
    if not fused:
        h = keras.layers.Activation("relu", name="r1")(h)
    if bn:
        h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", activation=act, name="dw")(h)
    if not fused:
        h = keras.layers.Activation("relu", name="r2")(h)
    h = keras.layers.Conv2D(5, 3, strides=2, activation=act, name="c2")(h)
    if not fused:
        h = keras.layers.Activation("relu", name="r3")(h)
    if bn:
        h = keras.layers.BatchNormalization(name="bn2")(h)
    g = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    if fused:
        out = keras.layers.Dense(3, activation=head_act, name="head")(g)
    else:
        z = keras.layers.Dense(3, name="head")(g)
        out = keras.layers.Activation(head_act, name="head_act")(z)
    return keras.Model(inp, out, name=name)


def _set_weights(model, seed=0):
    """Hand-set, non-trivial weights: every bias and batch-norm statistic non-zero."""
    rng = np.random.default_rng(seed)
    for layer in sorted(model.layers, key=lambda layer: layer.name):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.5, c), rng.normal(0, 0.5, c),
                               rng.uniform(0.5, 2.0, c)])
        elif layer.weights:
            layer.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in layer.weights])
    return model


def _pair(bn=True):
    fused = _set_weights(_net(True, bn=bn, name="fused"))
    separate = _net(False, bn=bn, name="separate")
    for layer in separate.layers:
        if layer.weights:
            layer.set_weights(fused.get_layer(layer.name).get_weights())
    return fused, separate


def _minmax(m):
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _reference(separate, x, classes, bn=True):
    """Per-layer gradients from a plain Keras sub-model of the separate-activation net, then
    the FullGrad equation in NumPy (cv2 bilinear resize)."""
    names = ["c1", "bn1", "dw", "c2", "bn2"] if bn else ["c1", "dw", "c2"]
    sub = keras.Model(separate.inputs, [separate.get_layer(n).output for n in names]
                      + [separate.get_layer("head").output])
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        outs = sub(xt, training=False)
        logits = outs[-1]
        score = tf.reduce_sum(tf.gather(logits, classes, axis=1, batch_dims=1))
    grads = tape.gradient(score, [xt] + list(outs[:-1]))
    dx, gs = grads[0].numpy(), [g.numpy() for g in grads[1:]]
    biases = []
    for n in names:
        layer = separate.get_layer(n)
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mu, var = layer.get_weights()
            biases.append(beta - mu * gamma / np.sqrt(var + layer.epsilon))
        else:
            biases.append(layer.get_weights()[-1])
    def psi_sum(term):
        """eq. 5's sum over channels of psi(channel), as pytorch-grad-cam's scale_cam_image: each
        channel of (h, w, C) min-max scaled on its own, resized to the input (cv2 bilinear), summed."""
        return sum(cv2.resize(_minmax(term[..., c]).astype(np.float32), (H, H), interpolation=cv2.INTER_LINEAR)
                   for c in range(term.shape[-1]))

    maps = []
    for i in range(len(x)):
        total = psi_sum(np.abs(x[i] * dx[i]))  # input channels too
        for b, g in zip(biases, gs):
            total = total + psi_sum(np.abs(b * g[i]))
        maps.append(_minmax(total))
    return np.stack(maps), logits.numpy()


@pytest.fixture(scope="module")
def nets():
    return _pair()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).normal(size=(3, H, H, 3)).astype(np.float32)


def test_matches_reference_fused_and_separate(nets, images):
    fused, separate = nets
    classes = np.array([0, 2, 1])
    ref, logits = _reference(separate, images, classes)
    assert np.allclose(fused.predict(images, verbose=0), separate.predict(images, verbose=0), atol=1e-5)
    for model in (fused, separate):
        got = tfcam.Explainer(model, method="fullgrad").explain(images, classes)
        np.testing.assert_allclose(got["fullgrad"], ref, atol=2e-4)
        np.testing.assert_allclose(got.scores, logits[np.arange(3), classes], atol=1e-4)
    # the bias terms matter: the input-gradient term alone is a different map
    xt = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        s = tf.reduce_sum(tf.gather(separate(xt), classes, axis=1, batch_dims=1))
    only_input = np.stack([_minmax(m) for m in np.abs(images * tape.gradient(s, xt).numpy()).sum(-1)])
    assert np.abs(only_input - ref).max() > 0.1


def test_fused_activation_is_not_the_post_activation_gradient(nets, images):
    """With a fused ReLU, using d y / d(activated output) would give a different map."""
    fused, separate = nets
    classes = np.array([0, 2, 1])
    names = ["c1", "dw", "c2"]
    # gradients w.r.t. the *post*-ReLU outputs (what a naive capture of the layer output gives)
    sub = keras.Model(separate.inputs, [separate.get_layer(n).output for n in ("r1", "r2", "r3")]
                      + [separate.get_layer("head").output])
    xt = tf.constant(images)
    with tf.GradientTape() as tape:
        outs = sub(xt, training=False)
        score = tf.reduce_sum(tf.gather(outs[-1], classes, axis=1, batch_dims=1))
    post = tape.gradient(score, list(outs[:-1]))
    sub_pre = keras.Model(separate.inputs, [separate.get_layer(n).output for n in names]
                          + [separate.get_layer("head").output])
    with tf.GradientTape() as tape:
        outs = sub_pre(xt, training=False)
        score = tf.reduce_sum(tf.gather(outs[-1], classes, axis=1, batch_dims=1))
    pre = tape.gradient(score, list(outs[:-1]))
    # the naive gradient differs from the pre-activation one wherever ReLU is inactive
    assert any(np.abs(a.numpy() - b.numpy()).max() > 1e-3 for a, b in zip(post, pre))
    # and tfcam uses the pre-activation one: the fused and separate nets give the same maps
    a = tfcam.Explainer(fused, method="fullgrad")(images, classes)
    b = tfcam.Explainer(separate, method="fullgrad")(images, classes)
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_nested_model_and_layer_argument_ignored(nets, images):
    fused, _ = nets
    inner_in = keras.Input((H, H, 3))
    t = fused.get_layer("c1")(inner_in)
    t = fused.get_layer("bn1")(t)
    t = fused.get_layer("dw")(t)
    inner = keras.Model(inner_in, t, name="backbone")
    outer_in = keras.Input((H, H, 3))
    h = inner(outer_in)
    for n in ("c2", "bn2", "gap", "head"):
        h = fused.get_layer(n)(h)
    outer = keras.Model(outer_in, h, name="outer")
    assert bias_layers(outer) == ["backbone/c1", "backbone/bn1", "backbone/dw", "c2", "bn2"]
    flat = tfcam.Explainer(fused, "c2", method="fullgrad")(images, [0, 1, 2])
    nested = tfcam.Explainer(outer, "c2", method="fullgrad")(images, [0, 1, 2])
    np.testing.assert_allclose(nested, flat, atol=2e-5)
    other_layer = tfcam.Explainer(fused, "c1", method="fullgrad")(images, [0, 1, 2])
    np.testing.assert_allclose(other_layer, flat, atol=1e-6)


def _completeness(model, images, classes):
    ex = tfcam.Explainer(model, method="fullgrad")
    target = as_target(list(classes))
    arrays = tuple(tf.constant(a) for a in target.arrays(len(images)))
    _, scores, input_sum, bias_sum = full_gradients(ex, tf.constant(images), target, arrays)
    return scores.numpy(), input_sum.numpy(), bias_sum.numpy()


@pytest.mark.parametrize("bn", [False, True])
def test_completeness(images, bn):
    """Srinivas & Fleuret 2019, eq. 2: for a ReLU net, y = <x, dy/dx> + sum_l <b_l, dy/dz_l>
    (signed terms, every bias including the Dense head's). Batch norm in inference mode is
    affine, so it holds with BN too."""
    fused, separate = _pair(bn=bn)
    classes = np.array([1, 0, 2])
    scores, input_sum, bias_sum = _completeness(fused, images, classes)
    logits = keras.Model(separate.inputs, separate.get_layer("head").output)(images).numpy()  # pre-softmax
    np.testing.assert_allclose(scores, logits[np.arange(3), classes], atol=1e-5)
    np.testing.assert_allclose(input_sum + bias_sum, scores, rtol=1e-4, atol=1e-4)
    assert np.abs(bias_sum).min() > 1e-3  # the bias terms are not trivially zero here

def _fullgrad_fns(ex):
    return [key for key in ex.view._cache if key[0] == "fullgrad"]


def _node_counts(models):
    from tfcam.layers import iter_layers

    counts = {id(m): len(m._inbound_nodes) for m in models}
    for m in models:
        counts.update({id(r.layer): len(r.layer._inbound_nodes) for r in iter_layers(m)})
    return counts


def test_user_model_untouched_and_compiled_once(nets, images):
    fused, _ = nets
    before = {layer.name: (layer.activation if hasattr(layer, "activation") else None, dict(vars(layer)).keys())
              for layer in fused.layers}
    nodes = _node_counts([fused])
    ex = tfcam.Explainer(fused, method="fullgrad", batch_size=2)
    ex(images, [0, 1, 2])
    n_fns = len(_fullgrad_fns(ex))
    assert n_fns == 1
    ex(images[::-1], [1, 1, 1])
    assert len(_fullgrad_fns(ex)) == n_fns  # same target kind: nothing rebuilt
    for layer in fused.layers:
        act, keys = before[layer.name]
        assert (layer.activation if hasattr(layer, "activation") else None) is act
        assert dict(vars(layer)).keys() == keys
    assert _node_counts([fused]) == nodes  # no layer was called on symbolic tensors
    assert tfcam.Explainer(fused, method="full-grad").method == "fullgrad"


def test_two_inputs_list_and_dict_nested_and_no_node_added(nets, images):
    """A two-input model (list or dict inputs; the second input zero-weighted, around a
    nested backbone) gives the single-input maps, and no layer gains a node."""
    fused, _ = nets

    def two_inputs(as_dict):
        inner_in = keras.Input((H, H, 3))
        t = fused.get_layer("dw")(fused.get_layer("bn1")(fused.get_layer("c1")(inner_in)))
        inner = keras.Model(inner_in, t, name=f"backbone_{as_dict}")
        aux, img = keras.Input((5,), name="aux"), keras.Input((H, H, 3), name="img")
        h = inner(img)
        for n in ("c2", "bn2", "gap"):
            h = fused.get_layer(n)(h)
        head = keras.layers.Dense(3, name="head")
        side = keras.layers.Dense(3, use_bias=False, kernel_initializer="zeros", name="side")(aux)
        out = keras.layers.Activation("softmax")(keras.layers.Add()([head(h), side]))
        model = keras.Model({"aux": aux, "img": img} if as_dict else [aux, img], out)
        head.set_weights(fused.get_layer("head").get_weights())
        return model

    models = [two_inputs(False), two_inputs(True)]
    nodes = _node_counts([fused] + models)
    aux = np.random.default_rng(2).normal(size=(3, 5)).astype(np.float32)
    want = tfcam.Explainer(fused, method="fullgrad")(images, [0, 1, 2])
    got_list = tfcam.Explainer(models[0], method="fullgrad", input="img")([aux, images], [0, 1, 2])
    got_dict = tfcam.Explainer(models[1], method="fullgrad", input="img")({"img": images, "aux": aux}, [0, 1, 2])
    np.testing.assert_allclose(got_list, want, atol=2e-5)
    np.testing.assert_allclose(got_dict, want, atol=2e-5)
    assert _node_counts([fused] + models) == nodes


def _layer_pair(kind):
    """(fused, separate) single-input nets around one layer type, same weights."""
    def build(fused):
        act = "relu" if fused else None
        shape = (16, 3) if kind == "conv1d_causal" else ((3, H, H) if kind == "channels_first" else (H, H, 3))
        inp = keras.Input(shape)
        if kind == "separable":
            layer = keras.layers.SeparableConv2D(4, 3, activation=act, name="L")
        elif kind == "transpose":
            layer = keras.layers.Conv2DTranspose(4, 3, strides=2, activation=act, name="L")
        elif kind == "conv1d_causal":
            layer = keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2, activation=act, name="L")
        else:
            layer = keras.layers.Conv2D(4, 3, activation=act, data_format="channels_first", name="L")
        h = layer(inp)
        if not fused:
            h = keras.layers.Activation("relu")(h)
        if kind == "channels_first":
            h = keras.layers.BatchNormalization(axis=1, name="bn")(h)
            h = keras.layers.Conv2D(3, 3, data_format="channels_first", activation=act, name="L2")(h)
            if not fused:
                h = keras.layers.Activation("relu")(h)
            g = keras.layers.GlobalAveragePooling2D(data_format="channels_first")(h)
        else:
            g = keras.layers.Flatten()(h)
        out = keras.layers.Dense(3, name="head")(g)
        return keras.Model(inp, out, name=f"{kind}_{fused}")

    fused = _set_weights(build(True), seed=5)
    separate = build(False)
    for layer in separate.layers:
        if layer.weights:
            layer.set_weights(fused.get_layer(layer.name).get_weights())
    return fused, separate


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["separable", "transpose", "conv1d_causal", "channels_first"])
def test_other_conv_layers_fused_equals_separate(kind):
    fused, separate = _layer_pair(kind)
    x = np.random.default_rng(7).normal(size=(2,) + tuple(fused.inputs[0].shape[1:])).astype(np.float32)
    np.testing.assert_allclose(fused(x).numpy(), separate(x).numpy(), atol=1e-5)
    a = tfcam.Explainer(fused, method="fullgrad")(x, [0, 2])
    b = tfcam.Explainer(separate, method="fullgrad")(x, [0, 2])
    assert a.shape == (2,) + ((16,) if kind == "conv1d_causal" else (H, H))
    np.testing.assert_allclose(a, b, atol=2e-5)
    scores, input_sum, bias_sum = _completeness(fused, x, np.array([0, 2]))
    np.testing.assert_allclose(input_sum + bias_sum, scores, rtol=1e-4, atol=1e-4)
    assert np.abs(bias_sum).min() > 1e-3
