"""The thread-local layer hook: rules reach sublayers of custom layers and subclassed models,
and nothing else (the model, other threads, calls after the run) sees anything."""

import threading

import keras
import numpy as np
import tensorflow as tf

from tfcam import _hooks
from tfcam.graph import Rewrite, needs_inputs, run_graph


class Block(keras.layers.Layer):
    """A composite layer without a graph: Dense -> relu -> Dense, plus a residual."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(units, name="inner")
        self.outer = keras.layers.Dense(units, name="outer")

    def call(self, x):
        return x + self.outer(keras.ops.relu(self.inner(x)))


class Sub(keras.Model):
    def __init__(self):
        super().__init__()
        self.block = Block(4, name="block")
        self.head = keras.layers.Dense(2, name="head")

    def call(self, x):
        return self.head(keras.ops.mean(self.block(x), axis=1))


def _functional():
    keras.utils.set_random_seed(1)
    x = keras.Input((3, 4))
    y = Block(4, name="block")(x)
    return keras.Model(x, keras.layers.Dense(2, name="head")(keras.ops.mean(y, axis=1)))


def _nodes(model):
    return [len(layer._inbound_nodes) for layer in model._flatten_layers()]


def _by_hand(block, x):
    h = np.maximum(x @ block.inner.kernel.numpy() + block.inner.bias.numpy(), 0)
    return h, x + h @ block.outer.kernel.numpy() + block.outer.bias.numpy()


def test_capture_inside_a_custom_layer_and_gradient():
    model = _functional()
    block = model.get_layer("block")
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    nodes = _nodes(model)
    with tf.GradientTape() as tape:
        r = run_graph(model, [tf.constant(x)], Rewrite(capture=(block.inner,)))
        score = tf.reduce_sum(r.outputs[0][:, 0])
    inner = r.captured[id(block.inner)][0]
    pre = x @ block.inner.kernel.numpy() + block.inner.bias.numpy()
    np.testing.assert_allclose(inner.numpy(), pre, rtol=1e-5, atol=1e-6)
    # d score / d inner = relu'(pre) * (outer kernel row sums . head) / 3: by hand
    w_head = model.get_layer("head").kernel.numpy()[:, 0]
    expected = (pre > 0) * (block.outer.kernel.numpy() @ w_head)[None, None, :] / 3.0
    np.testing.assert_allclose(tape.gradient(score, inner).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert _nodes(model) == nodes


def test_replace_inside_a_custom_layer():
    model = _functional()
    block = model.get_layer("block")
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype("float32")
    r = run_graph(model, [tf.constant(x)], Rewrite(replace={block.inner: lambda t: t * 0.0}))
    # inner zeroed -> relu(0) = 0 -> the block adds the outer bias only
    y = x + block.outer.bias.numpy()
    head = model.get_layer("head")
    expected = y.mean(axis=1) @ head.kernel.numpy() + head.bias.numpy()
    np.testing.assert_allclose(r.outputs[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(x).numpy(), model.predict(x, verbose=0), rtol=1e-5)  # untouched after


def test_wrap_and_every_call_of_a_shared_sublayer():
    keras.utils.set_random_seed(2)
    shared = keras.layers.Dense(4, name="shared")

    class Twice(keras.layers.Layer):
        def call(self, x):
            return shared(shared(x))

    x_in = keras.Input((4,))
    model = keras.Model(x_in, Twice(name="twice")(x_in))
    x = np.ones((1, 4), "float32")
    calls = []

    def wrap(call, args, kwargs):
        calls.append(args[0])
        return call(*args, **kwargs) * 2.0

    r = run_graph(model, [tf.constant(x)], Rewrite(capture=(shared,), wrap={shared: wrap}))
    w, b = shared.kernel.numpy(), shared.bias.numpy()
    first = 2 * (x @ w + b)
    np.testing.assert_allclose(r.outputs[0].numpy(), 2 * (first @ w + b), rtol=1e-5)
    assert len(calls) == 2 and len(r.captured[id(shared)]) == 2
    np.testing.assert_allclose(r.captured[id(shared)][0].numpy(), first, rtol=1e-5)


def test_subclassed_model_is_called_whole_and_reached_inside():
    model = Sub()
    x = np.random.default_rng(3).normal(size=(2, 3, 4)).astype("float32")
    ref = model(x).numpy()
    nodes = _nodes(model)
    r = run_graph(model, [tf.constant(x)], Rewrite(capture=(model.block.inner,)))
    np.testing.assert_allclose(r.outputs[0].numpy(), ref, rtol=1e-5)
    h, _ = _by_hand(model.block, x)
    np.testing.assert_allclose(np.maximum(r.captured[id(model.block.inner)][0].numpy(), 0), h, rtol=1e-5, atol=1e-6)
    assert _nodes(model) == nodes
    assert needs_inputs(model, model.block)  # a graph-less model cannot be cut


def test_other_threads_and_later_calls_are_not_seen():
    model = _functional()
    block = model.get_layer("block")
    x = np.random.default_rng(4).normal(size=(2, 3, 4)).astype("float32")
    ref = model(x).numpy()
    seen_elsewhere = {}

    def other():
        seen_elsewhere["active"] = _hooks.active()
        seen_elsewhere["out"] = model(x).numpy()

    def wrap(call, args, kwargs):
        t = threading.Thread(target=other)
        t.start()
        t.join()  # the other thread runs the model while this run's hook is set
        return call(*args, **kwargs) * 0.0

    r = run_graph(model, [tf.constant(x)], Rewrite(capture=(block.inner,), wrap={block.inner: wrap}))
    assert len(r.captured[id(block.inner)]) == 1
    assert seen_elsewhere["active"] is False
    np.testing.assert_allclose(seen_elsewhere["out"], ref, rtol=1e-6)
    assert not _hooks.active()
    np.testing.assert_allclose(model(x).numpy(), ref, rtol=1e-6)


def test_hook_inside_tf_function_traces_once_per_signature():
    model = _functional()
    block = model.get_layer("block")

    @tf.function
    def step(x):
        r = run_graph(model, [x], Rewrite(capture=(block.inner,)))
        return r.outputs[0], r.captured[id(block.inner)][0]

    x = tf.random.normal((2, 3, 4))
    out, inner = step(x)
    np.testing.assert_allclose(out.numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert inner.shape == (2, 3, 4)
    assert not _hooks.active()
