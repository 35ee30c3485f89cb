"""Issue 17, "reach any layer": layers inside custom composite layers and subclassed models,
one call of a layer called several times (or every call, summed), one element of a tuple/dict
output, ``Explainer.from_parts``, the token grid with any number of prefix tokens, and the
errors of bad paths. Every map is checked against an independent reference (Grad-CAM by hand
with ``tf.nn`` ops on the layers' weights, or a Functional twin exposing the same tensor), and
nothing of the user's model changes (weights, config, node counts at every depth, ``model(x)``
during and after, from another thread)."""

import threading

import numpy as np
import pytest
import tensorflow as tf
from conftest import keras

import tfcam
from tfcam.layers import token_grid, tokens_to_grid

L = keras.layers


class ConvBlock(L.Layer):
    """A composite layer without a graph: relu(inner(x)) -> outer, plus a residual."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.inner = L.Conv2D(filters, 3, padding="same", name="inner")
        self.outer = L.Conv2D(filters, 3, padding="same", name="outer")

    def call(self, x):
        h = keras.ops.relu(self.inner(x))
        return self.outer(h) + h


class Pair(L.Layer):
    """Returns a tuple (a, b) or a dict {"a": a, "b": b} of two convolutions."""

    def __init__(self, as_dict=False, **kwargs):
        super().__init__(**kwargs)
        self.as_dict = as_dict
        self.ca = L.Conv2D(4, 3, padding="same", name="ca")
        self.cb = L.Conv2D(4, 3, padding="same", name="cb")

    def call(self, x):
        a, b = keras.ops.relu(self.ca(x)), keras.ops.relu(self.cb(x))
        return {"a": a, "b": b} if self.as_dict else (a, b)


def _functional(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3), name="image")
    h = L.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inp)
    h = ConvBlock(6, name="block")(h)
    out = L.Dense(4, name="head")(L.GlobalAveragePooling2D(name="gap")(h))
    return keras.Model(inp, out, name="with_block")


class Net(keras.Model):
    """The same network, subclassed."""

    def __init__(self):
        super().__init__(name="net")
        self.c1 = L.Conv2D(6, 3, padding="same", activation="relu", name="c1")
        self.block = ConvBlock(6, name="block")
        self.gap = L.GlobalAveragePooling2D(name="gap")
        self.head = L.Dense(4, name="head")

    def call(self, x):
        return self.head(self.gap(self.block(self.c1(x))))


def _conv(x, layer):
    return tf.nn.conv2d(x, layer.kernel, 1, "SAME") + layer.bias


def _gradcam_by_hand(model_layers, x, targets, where, scale=1.0):
    """Grad-CAM (unnormalized, at the layer's resolution) of the c1 -> block -> gap -> head net,
    computed with tf.nn ops on the layers' weights; ``where``: "inner" (pre-relu) or "block"."""
    c1, block, head = model_layers
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        a = tf.nn.relu(_conv(x, c1))
        inner = _conv(a * scale, block.inner)
        tape.watch(inner)
        h = tf.nn.relu(inner)
        out_block = _conv(h, block.outer) + h
        if where == "block":
            tape.watch(out_block)
        logits = tf.reduce_mean(out_block, axis=(1, 2)) @ head.kernel + head.bias
        score = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
    acts = inner if where == "inner" else out_block
    g = tape.gradient(score, acts)
    w = tf.reduce_mean(g, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(w * acts, axis=-1)).numpy()


def _nodes(model):
    return {id(layer): len(layer._inbound_nodes) for layer in model._flatten_layers()}


def _state(model):
    return ([w.numpy().copy() for w in model.weights], _nodes(model),
            {id(layer): layer.get_config() for layer in model._flatten_layers()})


def _same_state(model, state):
    weights, nodes, configs = state
    for w, before in zip(model.weights, weights):
        np.testing.assert_array_equal(w.numpy(), before)
    assert _nodes(model) == nodes
    assert {id(layer): layer.get_config() for layer in model._flatten_layers()} == configs


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).uniform(size=(3, 12, 12, 3)).astype(np.float32)


TARGETS = [0, 1, 2]


# ----------------------------------------------------------------------------- inside custom layers


@pytest.mark.parametrize("spec", ["block/inner", "inner"])
def test_gradcam_inside_a_custom_layer_matches_by_hand(x, spec):
    model = _functional()
    state = _state(model)
    ex = tfcam.Explainer(model, spec)
    assert ex.layer_names == ["block/inner"]
    got = ex(x, TARGETS, resize=False, normalize=False)
    want = _gradcam_by_hand((model.get_layer("c1"), model.get_layer("block"), model.get_layer("head")), x,
                            TARGETS, "inner")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    _same_state(model, state)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "layercam", "hirescam", "scorecam", "ablationcam"])
def test_methods_inside_a_custom_layer_match_a_functional_twin(x, method):
    """A Functional twin (the block's sublayers as graph layers, same weights) exposes the tensor."""
    model = _functional()
    block = model.get_layer("block")
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    c1 = L.Conv2D(6, 3, padding="same", activation="relu", name="c1")
    inner = L.Conv2D(6, 3, padding="same", name="inner")
    outer = L.Conv2D(6, 3, padding="same", name="outer")
    h = L.ReLU(name="relu")(inner(c1(inp)))
    y = L.Add(name="add")([outer(h), h])
    twin = keras.Model(inp, L.Dense(4, name="head")(L.GlobalAveragePooling2D()(y)))
    c1.set_weights(model.get_layer("c1").get_weights())
    inner.set_weights(block.inner.get_weights())
    outer.set_weights(block.outer.get_weights())
    twin.get_layer("head").set_weights(model.get_layer("head").get_weights())
    opts = {"top_k": 4} if method == "scorecam" else {}
    got = tfcam.Explainer(model, "block/inner", method=method, **opts)(x, TARGETS)
    want = tfcam.Explainer(twin, "inner", method=method, **opts)(x, TARGETS)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_no_trace_during_and_after_from_another_thread(x):
    model = _functional()
    ref = model(x).numpy()
    state = _state(model)
    stop = threading.Event()
    seen = []

    def other():
        while not stop.is_set():
            seen.append(np.abs(model(x).numpy() - ref).max())

    t = threading.Thread(target=other)
    t.start()
    try:
        for spec in ("block/inner", "block/outer", "block"):
            tfcam.Explainer(model, spec).explain(x, TARGETS, methods=["gradcam", "ablationcam"], verbose=0)
    finally:
        stop.set()
        t.join()
    assert seen and max(seen) < 1e-5
    np.testing.assert_allclose(model(x).numpy(), ref, rtol=1e-6)
    _same_state(model, state)


def test_spatial_layers_lists_full_paths_inside_custom_layers():
    model = _functional()
    paths = [r.path for r in tfcam.spatial_layers(model)]
    assert paths == ["block", "block/outer", "block/inner", "c1"]
    shapes = {r.path: r.shape for r in tfcam.spatial_layers(model)}
    assert shapes["block/inner"] == (None, 12, 12, 6)


def test_inside_a_custom_layer_of_a_nested_model_with_dict_inputs_on_intermediate_tensors(x):
    keras.utils.set_random_seed(8)
    a_in, b_in = keras.Input((12, 12, 6), name="a"), keras.Input((12, 12, 6), name="b")
    block = ConvBlock(6, name="block")
    inner_model = keras.Model({"a": a_in, "b": b_in}, block(L.Add()([a_in, b_in])), name="inner_model")
    inp = keras.Input((12, 12, 3))
    h = L.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inp)
    y = inner_model({"a": h, "b": h})
    model = keras.Model(inp, L.Dense(4, name="head")(L.GlobalAveragePooling2D()(y)))
    state = _state(model)
    ex = tfcam.Explainer(model, "inner_model/block/inner")
    got = ex(x, TARGETS, resize=False, normalize=False)
    want = _gradcam_by_hand((model.get_layer("c1"), block, model.get_layer("head")), x, TARGETS, "inner", scale=2.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert tfcam.Explainer(model).layer_names == ["inner_model/block"]
    _same_state(model, state)


# ----------------------------------------------------------------------------- subclassed models


def test_subclassed_model_default_and_inner_layer(x):
    net = Net()
    net(x[:1])
    state = _state(net)
    ref = net(x).numpy()
    ex = tfcam.Explainer(net, "block/inner")
    got = ex(x, TARGETS, resize=False, normalize=False)
    want = _gradcam_by_hand((net.c1, net.block, net.head), x, TARGETS, "inner")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    default = tfcam.Explainer(net)
    assert default.layer_names == ["block"]
    np.testing.assert_allclose(default(x, TARGETS, resize=False, normalize=False),
                               _gradcam_by_hand((net.c1, net.block, net.head), x, TARGETS, "block"),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ex.explain(x, TARGETS).predictions, ref, rtol=1e-5)
    _same_state(net, state)
    np.testing.assert_allclose(net(x).numpy(), ref, rtol=1e-6)


def test_unbuilt_subclassed_model_needs_an_input_shape(x):
    with pytest.raises(tfcam.ModelError, match="input_shape=.*Received: model='net'"):
        tfcam.Explainer(Net())
    net = Net()
    ex = tfcam.Explainer(net, "block/inner", input_shape=(12, 12, 3))
    assert ex(x, TARGETS).shape == (3, 12, 12)
    assert ex.get_config()["input_shape"] == (12, 12, 3)


# ----------------------------------------------------------------------------- from_parts


def test_from_parts_matches_by_hand_and_leaves_no_trace(x):
    model = _functional()
    c1, block, head = model.get_layer("c1"), model.get_layer("block"), model.get_layer("head")
    keras.utils.set_random_seed(3)
    features = keras.Sequential([keras.Input((12, 12, 3)), c1, block], name="features_model")
    gap = L.GlobalAveragePooling2D()
    state = _state(model)
    fstate = _state(features)
    ex = tfcam.Explainer.from_parts(features, lambda f: head(gap(f)))
    assert ex.layer_names == ["features"]
    got = ex(x, TARGETS, resize=False, normalize=False)
    np.testing.assert_allclose(got, _gradcam_by_hand((c1, block, head), x, TARGETS, "block"), rtol=1e-4, atol=1e-5)
    inner = tfcam.Explainer.from_parts(features, lambda f: head(gap(f)), layer="features/block/inner")
    np.testing.assert_allclose(inner(x, TARGETS, resize=False, normalize=False),
                               _gradcam_by_hand((c1, block, head), x, TARGETS, "inner"), rtol=1e-4, atol=1e-5)
    _same_state(model, state)
    _same_state(features, fstate)


def test_from_parts_needs_an_input_shape():
    with pytest.raises(tfcam.ModelError, match="input_shape"):
        tfcam.Explainer.from_parts(lambda t: t, lambda t: t)


# ----------------------------------------------------------------------------- tuple / dict outputs


def _pair_model(as_dict):
    keras.utils.set_random_seed(4)
    inp = keras.Input((12, 12, 3))
    out = Pair(as_dict, name="pair")(inp)
    a, b = (out["a"], out["b"]) if as_dict else out
    y = L.Concatenate(name="cat")([a, b * 2.0])
    return keras.Model(inp, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(y)))


def _pair_by_hand(model, x, which):
    pair, head = model.get_layer("pair"), model.get_layer("head")
    with tf.GradientTape() as tape:
        a = tf.nn.relu(_conv(tf.constant(x), pair.ca))
        b = tf.nn.relu(_conv(tf.constant(x), pair.cb))
        tape.watch([a, b])
        logits = tf.reduce_mean(tf.concat([a, b * 2.0], -1), axis=(1, 2)) @ head.kernel + head.bias
        score = tf.reduce_sum(tf.gather(logits, TARGETS, axis=1, batch_dims=1))
    acts = a if which == 0 else b
    g = tape.gradient(score, acts)
    return tf.nn.relu(tf.reduce_sum(tf.reduce_mean(g, (1, 2), keepdims=True) * acts, -1)).numpy()


@pytest.mark.parametrize("spec, which", [("pair[0]", 0), (("pair", 1), 1), ("pair[1]", 1)])
def test_element_of_a_tuple_output(x, spec, which):
    model = _pair_model(False)
    nodes = _nodes(model)
    ex = tfcam.Explainer(model, spec)
    got = ex(x, TARGETS, resize=False, normalize=False)
    np.testing.assert_allclose(got, _pair_by_hand(model, x, which), rtol=1e-4, atol=1e-5)
    assert ex.layer_names == [f"pair[{which}]"]
    assert _nodes(model) == nodes
    paths = [r.path for r in tfcam.spatial_layers(model)]
    assert "pair[1]" in paths and "pair[0]" in paths and "pair" not in paths


def test_element_of_a_dict_output_and_ablation(x):
    model = _pair_model(True)
    got = tfcam.Explainer(model, "pair[b]")(x, TARGETS, resize=False, normalize=False)
    np.testing.assert_allclose(got, _pair_by_hand(model, x, 1), rtol=1e-4, atol=1e-5)
    # Ablation-CAM zeroes channels of the chosen element only: compare with the tuple twin
    tuple_model = _pair_model(False)
    a = tfcam.Explainer(model, "pair[b]", method="ablationcam")(x, TARGETS)
    b = tfcam.Explainer(tuple_model, "pair[1]", method="ablationcam")(x, TARGETS)
    np.testing.assert_allclose(a, b, atol=1e-4)


# ----------------------------------------------------------------------------- several calls


class Pyramid(L.Layer):
    """One conv applied to the input and to its 2x-pooled copy (a shared head on two levels)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(5, 3, padding="same", activation="relu", name="shared")
        self.pool = L.AveragePooling2D(2, name="pool")

    def call(self, x):
        return self.conv(x), self.conv(self.pool(x))


def _pyramid_model():
    keras.utils.set_random_seed(6)
    inp = keras.Input((12, 12, 3))
    p3, p4 = Pyramid(name="pyramid")(inp)
    y = L.Concatenate()([L.GlobalAveragePooling2D()(p3), L.GlobalMaxPooling2D()(p4)])
    return keras.Model(inp, L.Dense(3, name="head")(y))


def _pyramid_by_hand(model, x):
    conv, head = model.get_layer("pyramid").conv, model.get_layer("head")
    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        p3 = tf.nn.relu(_conv(xt, conv))
        p4 = tf.nn.relu(_conv(tf.nn.avg_pool2d(xt, 2, 2, "VALID"), conv))
        tape.watch([p3, p4])
        y = tf.concat([tf.reduce_mean(p3, (1, 2)), tf.reduce_max(p4, (1, 2))], -1)
        score = tf.reduce_sum(tf.gather(y @ head.kernel + head.bias, TARGETS, axis=1, batch_dims=1))
    maps = []
    for acts, g in zip((p3, p4), tape.gradient(score, [p3, p4])):
        maps.append(tf.nn.relu(tf.reduce_sum(tf.reduce_mean(g, (1, 2), keepdims=True) * acts, -1)).numpy())
    return maps


def test_every_call_summed_at_the_input_resolution_and_one_call(x):
    model = _pyramid_model()
    nodes = _nodes(model)
    [ref] = [r for r in tfcam.spatial_layers(model) if r.base == "pyramid/shared"]
    assert ref.calls == 2 and ref.shapes == ((None, 12, 12, 5), (None, 6, 6, 5))
    m3, m4 = _pyramid_by_hand(model, x)
    one = tfcam.Explainer(model, "pyramid/shared@1")(x, TARGETS, resize=False, normalize=False)
    np.testing.assert_allclose(one, m4, rtol=1e-4, atol=1e-5)
    every = tfcam.Explainer(model, "pyramid/shared")(x, TARGETS, normalize=False)
    resized = tf.image.resize(m4[..., None], (12, 12), method="bilinear")[..., 0].numpy()
    np.testing.assert_allclose(every, m3 + resized, rtol=1e-4, atol=1e-5)
    with pytest.raises(tfcam.InputError, match="different resolutions"):
        tfcam.Explainer(model, "pyramid/shared")(x, TARGETS, resize=False)
    assert _nodes(model) == nodes


# ----------------------------------------------------------------------------- bad paths


def test_unknown_path_lists_the_layers_under_the_nearest_prefix():
    model = _functional()
    with pytest.raises(tfcam.LayerError) as err:
        tfcam.Explainer(model, "block/innr")
    msg = str(err.value)
    assert "Layers under 'block'" in msg and "'block/outer', 'block/inner'" in msg
    assert msg.endswith("Received: layer='block/innr'")


@pytest.mark.parametrize("spec, match", [
    ("block/inner@1", r"called 1 time\(s\).*out of range \[0, 1\)\. Received: layer='block/inner@1'"),
    ("pair[2]", r"no output element 2.*Received: layer='pair\[2\]'"),
    (("pair", 5), r"no output element 5.*Received: layer='pair\[5\]'"),
    ("pair", r"returns several tensors.*Received: layer='pair'"),
    ("block[0]", r"no output element 0: it returns a single tensor"),
])
def test_bad_call_or_element_index(spec, match):
    model = _pair_model(False) if "pair" in str(spec) else _functional()
    with pytest.raises(tfcam.LayerError, match=match):
        tfcam.Explainer(model, spec)


# ----------------------------------------------------------------------------- token grids


@pytest.mark.parametrize("t, image, prefix, grid", [
    (17, None, None, (4, 4, 1)),      # ViT: class token
    (18, None, None, (4, 4, 2)),      # DeiT: class + distillation
    (21, (32, 32), None, (4, 4, 5)),  # DINOv2: class + 4 registers
    (16, (32, 32), None, (4, 4, 0)),  # Swin / MiT stage: no prefix
    (33, (32, 64), None, (4, 8, 1)),  # a non-square input
    (20, (32, 32), 4, (4, 4, 4)),
])
def test_token_grid(t, image, prefix, grid):
    assert token_grid(t, image, prefix) == grid


def test_tokens_to_grid_drops_any_prefix_and_explainer_accepts_vit_n_prefix():
    tokens = tf.reshape(tf.range(2 * 19 * 3, dtype=tf.float32), (2, 19, 3))
    np.testing.assert_array_equal(tokens_to_grid(tokens, n_prefix=3).numpy(),
                                  tokens.numpy()[:, 3:].reshape(2, 4, 4, 3))
    keras.utils.set_random_seed(7)
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 2, strides=2, name="patches")(inp)
    t = L.Reshape((16, 4))(h)
    prefix = L.Dense(4, name="prefix")(L.GlobalAveragePooling1D()(t))
    tokens_in = L.Concatenate(axis=1, name="tokens")([L.Reshape((1, 4))(prefix), L.Reshape((1, 4))(prefix), t])
    mixed = L.Dense(4, name="mix")(tokens_in)
    model = keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling1D()(mixed)))
    images = np.random.default_rng(1).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    auto = tfcam.Explainer(model, "mix", reshape="vit")(images, [0, 1])
    given = tfcam.Explainer(model, "mix", reshape=("vit", 2))(images, [0, 1])
    np.testing.assert_allclose(auto, given, atol=1e-6)
    with pytest.raises(tfcam.InputError, match="Cannot arrange 18 tokens"):
        tfcam.Explainer(model, "mix", reshape=("vit", 3))(images, [0, 1])


@pytest.mark.parametrize("class_token", [True, False])
def test_vit_default_without_reshape_is_the_last_attention_input(class_token):
    from test_beyond import tiny_vit

    model = tiny_vit(class_token)
    images = np.random.default_rng(2).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    ex = tfcam.Explainer(model)
    assert ex.layer_names == ["norm1"] and ex.get_config()["reshape"] == "vit"
    np.testing.assert_allclose(ex(images, [0, 1]), tfcam.Explainer(model, "norm1", reshape="vit")(images, [0, 1]),
                               atol=1e-6)
    twin = tfcam.Explainer(model, **ex.get_config())
    assert twin.layer_names == ["norm1"]
