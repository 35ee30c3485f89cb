"""HeatmapCallback / FeatureMapCallback: fit tiny models, then read the event files back from disk."""

import glob
import json
import logging
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn
from tensorflow.core.framework import summary_pb2

import tfcam
from tfcam.callbacks import FeatureMapCallback, HeatmapCallback, SummaryCallback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------- helpers
def read_events(folder):
    """{tag: [(step, value)]}: images as a list of decoded uint8 arrays, scalars as floats."""
    out = {}
    files = sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                plugin = v.metadata.plugin_data.plugin_name
                if plugin == "images":
                    assert v.metadata.data_class == summary_pb2.DATA_CLASS_BLOB_SEQUENCE
                    raw = tf.make_ndarray(v.tensor)
                    width, height = int(raw[0]), int(raw[1])
                    imgs = []
                    for png in raw[2:]:
                        assert png[:8] == b"\x89PNG\r\n\x1a\n"
                        img = tf.io.decode_png(png, channels=3).numpy()
                        assert img.shape == (height, width, 3)
                        imgs.append(img)
                    out.setdefault(v.tag, []).append((event.step, imgs))
                elif plugin == "scalars":
                    assert v.metadata.data_class == summary_pb2.DATA_CLASS_SCALAR
                    out.setdefault(v.tag, []).append((event.step, float(tf.make_ndarray(v.tensor))))
    return out


def _data(n=48, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, size, size, 3)).astype(np.float32)
    y = (np.arange(n) % 4).astype(np.int32)
    # a learnable signal: class k brightens channel k % 3 in one quadrant
    for k in range(4):
        sl = (y == k)
        r, c = divmod(k, 2)
        x[sl, r * size // 2:(r + 1) * size // 2, c * size // 2:(c + 1) * size // 2, k % 3] += 1.0
    return x, y


def _model(seed=0, **kw):
    m = small_cnn(seed=seed, **kw)
    m.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    return m


class WeightRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])


# ---------------------------------------------------------------------------- the main run
@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("main")
    x, y = _data()
    model = _model()
    samples = x[:3]
    masks = np.zeros((3, 16, 16), bool)
    masks[:, :8, :8] = True
    cb = HeatmapCallback(samples, methods=("gradcam", "layercam"), layer="c2", log_dir=str(tmp / "logs"),
                         image_dir=str(tmp / "png"), masks=masks)
    rec = WeightRecorder()
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb, rec])
    return dict(tmp=tmp, model=model, cb=cb, rec=rec, x=samples, masks=masks,
                events=read_events(str(tmp / "logs" / "heatmaps")))


def _maps_at(model, weights, x, methods=("gradcam", "layercam")):
    current = model.get_weights()
    model.set_weights(weights)
    try:
        return tfcam.Explainer(model, "c2").explain(x, None, list(methods), verbose=0)
    finally:
        model.set_weights(current)


def test_tags_steps_and_sizes(main_run):
    ev = main_run["events"]
    expected = {f"{m}/c2{suffix}" for m in ("gradcam", "layercam")
                for suffix in ("", "/grid", "/change", "/energy_in_mask")}
    assert set(ev) == expected
    for m in ("gradcam", "layercam"):
        overlays = ev[f"{m}/c2"]
        assert [s for s, _ in overlays] == [0, 1, 2]  # one entry per logged epoch, 0-based steps
        for _, imgs in overlays:
            assert len(imgs) == 3 and all(i.shape == (16, 16, 3) for i in imgs)
        grids = ev[f"{m}/c2/grid"]
        assert [s for s, _ in grids] == [0, 1, 2]
        for _, imgs in grids:  # one picture: 3 rows x (image | heatmap | overlay), 2-px separators
            assert len(imgs) == 1 and imgs[0].shape == (3 * 18 + 2, 3 * 18 + 2, 3)
    # our own sub-directory, created lazily; nothing written next to Keras's train/validation
    assert os.listdir(main_run["tmp"] / "logs") == ["heatmaps"]
    assert main_run["cb"].logged_epochs == [0, 1, 2] and main_run["cb"].failures == []
    assert main_run["cb"]._writer is None  # closed at the end of training


def test_images_show_the_overlay_of_the_current_weights(main_run):
    ev, x, model, rec = main_run["events"], main_run["x"], main_run["model"], main_run["rec"]
    img_u8 = tfcam.viz.to_uint8_images(x)
    for epoch, weights in enumerate(rec.weights):
        maps = _maps_at(model, weights, x)
        for m in ("gradcam", "layercam"):
            want = tfcam.overlay(x, maps[m], colormap="jet", alpha=0.4)
            got = np.stack(ev[f"{m}/c2"][epoch][1])
            np.testing.assert_allclose(got.astype(int), want.astype(int), atol=1)
            grid = ev[f"{m}/c2/grid"][epoch][1][0]
            for i in range(3):  # row i: image | heatmap | overlay, each 16 px after a 2-px gap
                r = 2 + 18 * i
                np.testing.assert_array_equal(grid[r:r + 16, 2:18], img_u8[i])
                heat = tfcam.colorize(maps[m][i:i + 1])[0]
                np.testing.assert_allclose(grid[r:r + 16, 20:36].astype(int), heat.astype(int), atol=1)
                np.testing.assert_allclose(grid[r:r + 16, 38:54].astype(int), want[i].astype(int), atol=1)
            assert np.all(grid[:2] == 255) and np.all(grid[:, 18:20] == 255)
    # the weights changed, and so did the pictures: epoch 0 and epoch 2 differ
    a = np.stack(ev["gradcam/c2"][0][1]).astype(int)
    b = np.stack(ev["gradcam/c2"][2][1]).astype(int)
    assert np.abs(a - b).max() > 10


def test_scalars_match_numpy(main_run):
    ev, x, model, rec, masks = (main_run[k] for k in ("events", "x", "model", "rec", "masks"))
    maps = [_maps_at(model, w, x) for w in rec.weights]
    for m in ("gradcam", "layercam"):
        change = dict(ev[f"{m}/c2/change"])
        energy = dict(ev[f"{m}/c2/energy_in_mask"])
        assert sorted(change) == [0, 1, 2] and sorted(energy) == [0, 1, 2]
        for e in (1, 2):
            want = np.mean(np.abs(maps[e][m] - maps[e - 1][m]))
            assert change[e] == pytest.approx(want, abs=1e-5)
        for e in range(3):
            mm = maps[e][m]
            frac = [mm[i][masks[i]].sum() / mm[i].sum() for i in range(3)]
            assert energy[e] == pytest.approx(float(np.mean(frac)), abs=1e-5)


def test_png_files(main_run):
    png = main_run["tmp"] / "png"
    assert sorted(os.listdir(png)) == ["gradcam_c2", "layercam_c2"]
    for m in ("gradcam", "layercam"):
        files = sorted(os.listdir(png / f"{m}_c2"))
        assert files == ["epoch_0000.png", "epoch_0001.png", "epoch_0002.png"]
        data = (png / f"{m}_c2" / "epoch_0002.png").read_bytes()
        img = tf.io.decode_png(data, channels=3).numpy()
        np.testing.assert_array_equal(img, main_run["events"][f"{m}/c2/grid"][2][1][0])


# ---------------------------------------------------------------------------- behaviour
def test_every_n_epochs_and_png_only(tmp_path):
    x, y = _data(32)
    cb = HeatmapCallback(x[:2], layer="c2", log_dir=str(tmp_path / "logs"), every_n_epochs=2, log_change=False)
    only_png = HeatmapCallback(x[:2], layer="c2", image_dir=str(tmp_path / "png"), every_n_epochs=2)
    _model().fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb, only_png])
    ev = read_events(str(tmp_path / "logs" / "heatmaps"))
    assert set(ev) == {"gradcam/c2", "gradcam/c2/grid"}
    assert [s for s, _ in ev["gradcam/c2"]] == [1]
    assert os.listdir(tmp_path / "png" / "gradcam_c2") == ["epoch_0001.png"]
    assert not (tmp_path / "png" / "logs").exists() and only_png.summary_dir is None


def test_failing_explainer_mid_training_does_not_stop_fit(tmp_path, caplog):
    x, y = _data(32)
    cb = HeatmapCallback(x[:2], layer="c2", log_dir=str(tmp_path))

    class Saboteur(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                original = cb.explainer.explain

                def boom(*args, **kwargs):
                    cb.explainer.explain = original  # fails once
                    raise RuntimeError("explainer exploded")

                cb.explainer.explain = boom

    with caplog.at_level(logging.WARNING, logger="tfcam"):
        history = _model().fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[Saboteur(), cb])
    assert len(history.history["loss"]) == 3
    assert cb.failures == [(1, "RuntimeError: explainer exploded")]
    assert cb.logged_epochs == [0, 2]
    assert any("epoch 1" in r.getMessage() and "explainer exploded" in r.getMessage() for r in caplog.records)
    ev = read_events(str(tmp_path / "heatmaps"))
    assert [s for s, _ in ev["gradcam/c2"]] == [0, 2]


def test_interrupted_training_keeps_flushed_events_and_next_fit_reopens(tmp_path):
    x, y = _data(32)
    cb = HeatmapCallback(x[:2], layer="c2", log_dir=str(tmp_path))

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    model = _model()
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(x, y, epochs=5, batch_size=16, verbose=0, callbacks=[cb, Stop()])
    # on_train_end never ran, but every logged epoch is already on disk
    assert [s for s, _ in read_events(str(tmp_path / "heatmaps"))["gradcam/c2"]] == [0, 1]
    old = cb._writer
    model.fit(x, y, epochs=3, initial_epoch=2, batch_size=16, verbose=0, callbacks=[cb])
    assert cb._writer is None and old is not None  # the old writer was closed, the new one too
    steps = [s for s, _ in read_events(str(tmp_path / "heatmaps"))["gradcam/c2"]]
    assert steps == [0, 1, 2]


def test_only_epoch_level_hooks_keep_async_dispatch(tmp_path):
    x, _ = _data(4)
    model = _model()
    for cb in (HeatmapCallback(x[:2], log_dir=str(tmp_path)), FeatureMapCallback(x[:2], log_dir=str(tmp_path))):
        for hook in ("on_batch_end", "on_train_batch_end", "on_train_batch_begin", "on_test_batch_end",
                     "on_predict_batch_end", "on_epoch_begin"):
            assert getattr(type(cb), hook) is getattr(keras.callbacks.Callback, hook)
        lst = keras.callbacks.CallbackList([cb], model=model)
        if keras.src.backend.IS_THREAD_SAFE:
            assert lst._async_train


def test_explainer_built_once_per_run(tmp_path, monkeypatch):
    x, y = _data(32)
    built = []
    real = tfcam.callbacks.heatmap.Explainer

    def counting(*a, **k):
        built.append(1)
        return real(*a, **k)

    monkeypatch.setattr(tfcam.callbacks.heatmap, "Explainer", counting)
    cb = HeatmapCallback(x[:2], layer="c2", methods=["gradcam", "gradcam++"], log_dir=str(tmp_path))
    _model().fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[cb])
    assert len(built) == 1
    assert cb.explainer is None  # released at the end of the run
    # ... and its step was traced once for the whole run (dry run + 3 epochs)
    exp = real(_model(), "c2")
    cb2 = HeatmapCallback(x[:2], layer="c2", log_dir=str(tmp_path / "b"))
    cb2.set_model(exp.model)
    cb2.on_train_begin()
    for e in range(3):
        cb2.on_epoch_end(e)
    assert cb2.explainer.trace_count == 1
    cb2.on_train_end()


def test_non_chief_writes_nothing(tmp_path, monkeypatch):
    x, y = _data(32)
    monkeypatch.setattr(tfcam.callbacks.base, "is_chief", lambda strategy=None: False)
    cb = HeatmapCallback(x[:2], layer="c2", log_dir=str(tmp_path / "logs"), image_dir=str(tmp_path / "png"))
    _model().fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    assert not (tmp_path / "logs").exists() and not (tmp_path / "png").exists()
    assert cb.logged_epochs == [] and cb.explainer is None


class _Resolver:
    def __init__(self, task_type, task_id, cluster):
        self.task_type, self.task_id, self._cluster = task_type, task_id, cluster

    def cluster_spec(self):
        return tf.train.ClusterSpec(self._cluster)


class _Strategy:
    def __init__(self, multi, resolver=None):
        self.extended = type("E", (), {"_in_multi_worker_mode": lambda s: multi})()
        self.cluster_resolver = resolver


def test_is_chief_rules():
    workers = {"worker": ["a:1", "b:1"]}
    with_chief = {"chief": ["c:1"], "worker": ["a:1"]}
    assert tfcam.callbacks.is_chief(tf.distribute.get_strategy())
    assert tfcam.callbacks.is_chief(_Strategy(False))
    assert tfcam.callbacks.is_chief(_Strategy(True, _Resolver("worker", 0, workers)))
    assert not tfcam.callbacks.is_chief(_Strategy(True, _Resolver("worker", 1, workers)))
    assert not tfcam.callbacks.is_chief(_Strategy(True, _Resolver("worker", 0, with_chief)))
    assert tfcam.callbacks.is_chief(_Strategy(True, _Resolver("chief", 0, with_chief)))
    assert not tfcam.callbacks.is_chief(_Strategy(True, _Resolver("evaluator", 0, with_chief)))


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(layer="nope"), tfcam.LayerError, "nope"),
    (dict(targets=[9, 9]), tfcam.TargetError, "Class indices"),
    (dict(targets="labels"), tfcam.TargetError, "labels"),
    (dict(images=np.zeros((2, 8, 8, 3), np.float32)), tfcam.InputError, "images.shape"),
    (dict(masks=np.zeros((2, 8, 8), bool)), tfcam.InputError, "masks.shape"),
    (dict(layer="gap"), tfcam.LayerError, "gap"),
])
def test_bad_arguments_raise_before_the_first_epoch(tmp_path, kwargs, error, match):
    x, y = _data(32)
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    args = dict(images=x[:2], log_dir=str(tmp_path))
    args.update(kwargs)
    cb = HeatmapCallback(**args)
    with pytest.raises(error, match=match) as info:
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    assert "Received:" in str(info.value)
    for a, b in zip(before, model.get_weights()):  # no training step ran
        np.testing.assert_array_equal(a, b)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("kwargs,error", [
    (dict(every_n_epochs=0), tfcam.InputError),
    (dict(every_n_epochs=1.5), tfcam.InputError),
    (dict(methods=("gradcam", "nope")), tfcam.MethodError),
    (dict(methods=()), tfcam.MethodError),
    (dict(log_dir=None), tfcam.InputError),
    (dict(alpha=2.0), tfcam.InputError),
    (dict(targets="top"), tfcam.TargetError),
    (dict(colormap="no-such-map"), tfcam.InputError),
    (dict(max_images=0), tfcam.InputError),
    (dict(layer=3), tfcam.InputTypeError),
    (dict(log_dir=5), tfcam.InputTypeError),
])
def test_bad_constructor_arguments(kwargs, error):
    args = dict(images=np.zeros((2, 16, 16, 3), np.float32), log_dir="unused")
    args.update(kwargs)
    with pytest.raises(error, match="Received:"):
        HeatmapCallback(**args)


# ---------------------------------------------------------------------------- sample sources
@pytest.mark.parametrize("kind", ["tuple", "dataset", "unbatched"])
def test_samples_as_tuple_or_dataset_with_label_targets(tmp_path, kind):
    x, y = _data(32)
    onehot = np.eye(4, dtype=np.float32)[y]
    if kind == "tuple":
        samples = (x[5:12], onehot[5:12])
    elif kind == "dataset":
        samples = tf.data.Dataset.from_tensor_slices((x[5:], y[5:])).batch(7)
    else:
        samples = tf.data.Dataset.from_tensor_slices((x[5:], y[5:]))
    cb = HeatmapCallback(samples, targets="labels", layer="c2", log_dir=str(tmp_path), max_images=4)
    model = _model()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb])
    imgs = np.stack(read_events(str(tmp_path / "heatmaps"))["gradcam/c2"][0][1])
    maps = tfcam.Explainer(model, "c2")(x[5:9], targets=y[5:9])  # the labels, not the top class
    np.testing.assert_allclose(imgs.astype(int), tfcam.overlay(x[5:9], maps).astype(int), atol=1)


def test_first_batch_errors():
    with pytest.raises(tfcam.InputError, match="empty"):
        tfcam.callbacks.first_batch(tf.data.Dataset.from_tensor_slices(np.zeros((0, 4, 4, 3))), 8, 4)
    with pytest.raises(tfcam.InputTypeError, match="element_spec"):
        tfcam.callbacks.first_batch(tf.data.Dataset.from_tensor_slices({"a": np.zeros((2, 4, 4, 3))}), 8, 4)


def test_nested_model(tmp_path):
    keras.utils.set_random_seed(1)
    base = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="b1"),
                             keras.layers.Conv2D(5, 3, activation="relu", name="b2")], name="base.v1")
    inp = keras.Input((16, 16, 3))
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(base(inp)))
    model = keras.Model(inp, out)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = _data(32)
    cb = HeatmapCallback(x[:2], layer="base.v1/b2", log_dir=str(tmp_path), methods=("gradcam", "eigencam"))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
    ev = read_events(str(tmp_path / "heatmaps"))
    assert [s for s, _ in ev["gradcam/base.v1/b2"]] == [0, 1]
    maps = tfcam.Explainer(model, "base.v1/b2")(x[:2])
    got = np.stack(ev["gradcam/base.v1/b2"][1][1]).astype(int)
    np.testing.assert_allclose(got, tfcam.overlay(x[:2], maps).astype(int), atol=1)


def test_mixed_float16(tmp_path):
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        inp = keras.Input((16, 16, 3))
        h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inp)
        h = keras.layers.Conv2D(6, 3, activation="relu", name="c2")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        out = keras.layers.Dense(4, activation="softmax", dtype="float32", name="head")(h)
        model = keras.Model(inp, out)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        assert model.get_layer("c2").compute_dtype == "float16"
        x, y = _data(32)
        cb = HeatmapCallback(x[:2], layer="c2", log_dir=str(tmp_path), methods=("gradcam", "layercam"))
        fm = FeatureMapCallback(x[:2], layer="c1", log_dir=str(tmp_path))
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb, fm])
    finally:
        keras.mixed_precision.set_global_policy(old)
    assert cb.failures == [] and fm.failures == []
    ev = read_events(str(tmp_path / "heatmaps"))
    assert [s for s, _ in ev["layercam/c2"]] == [0, 1]
    grid = ev["gradcam/c2/grid"][1][1][0]
    assert grid[2:18, 20:36].std() > 0  # a real heatmap, not a blank
    assert [s for s, _ in read_events(str(tmp_path / "feature_maps"))["feature_maps/c1"]] == [0, 1]


# ---------------------------------------------------------------------------- feature maps
def test_feature_map_grid_matches_the_layer_activations(tmp_path):
    x, y = _data(32)
    model = _model()
    cb = FeatureMapCallback(x[:2], layer="c1", log_dir=str(tmp_path), image_dir=str(tmp_path / "png"))
    picked = FeatureMapCallback(x[:1], layer="c2", log_dir=str(tmp_path / "b"), channels=[5, 2], cell_size=12,
                                colormap="gray")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb, picked])
    ev = read_events(str(tmp_path / "feature_maps"))
    assert list(ev) == ["feature_maps/c1"] and [s for s, _ in ev["feature_maps/c1"]] == [0, 1]
    imgs = ev["feature_maps/c1"][1][1]
    # c1: 8 channels of 14x14; cells scaled x3 (>= 32 px) -> 42 px; 3x3 grid with 1-px gaps
    assert len(imgs) == 2 and imgs[0].shape == (3 * 43 + 1, 3 * 43 + 1, 3)
    acts = keras.Model(model.inputs, model.get_layer("c1").output)(x[:2]).numpy()
    for i in range(2):
        for k in range(8):
            a = acts[i, ..., k]
            norm = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else np.zeros_like(a)
            cell = tfcam.colorize(norm[None], "viridis")[0].repeat(3, 0).repeat(3, 1)
            r, c = divmod(k, 3)
            got = imgs[i][1 + 43 * r:43 * (r + 1), 1 + 43 * c:43 * (c + 1)]
            np.testing.assert_allclose(got.astype(int), cell.astype(int), atol=1)
        assert np.all(imgs[i][1 + 43 * 2:, 1 + 43 * 2:] == 255)  # the 9th cell is empty
    assert sorted(os.listdir(tmp_path / "png")) == ["feature_maps_c1_sample0", "feature_maps_c1_sample1"]
    # chosen channels, in the given order, with a smaller cell size (12x12 -> x1)
    g = read_events(str(tmp_path / "b" / "feature_maps"))["feature_maps/c2"][1][1][0]
    assert g.shape == (1 + 13, 2 * 13 + 1, 3)
    a2 = keras.Model(model.inputs, model.get_layer("c2").output)(x[:1]).numpy()[0]
    for j, k in enumerate([5, 2]):
        a = a2[..., k]
        norm = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else np.zeros_like(a)
        np.testing.assert_allclose(g[1:13, 1 + 13 * j:13 * (j + 1), 0].astype(int), np.round(norm * 255), atol=1)


def test_feature_map_bad_arguments(tmp_path):
    x, y = _data(32)
    with pytest.raises(tfcam.InputError, match="Received:"):
        FeatureMapCallback(x[:1], log_dir="l", channels=0)
    with pytest.raises(tfcam.InputError, match="Received:"):
        FeatureMapCallback(x[:1], log_dir="l", cell_size=0)
    for layer, err in (("c1", tfcam.InputError), ("gap", tfcam.LayerError)):
        cb = FeatureMapCallback(x[:1], layer=layer, log_dir=str(tmp_path), channels=[0, 99])
        with pytest.raises(err, match="Received:"):
            _model().fit(x, y, epochs=1, verbose=0, callbacks=[cb])


# ---------------------------------------------------------------------------- base + viz helpers
def test_base_is_reusable(tmp_path):
    class Counter(SummaryCallback):
        default_subdir = "counter"

        def setup(self):
            self.ran = 0

        def log_epoch(self, epoch, logs):
            self.ran += 1
            self.write_scalar("loss_copy", logs["loss"], epoch)
            self.write_image("solid", np.full((1, 4, 5, 3), epoch * 50, np.uint8), epoch)

    x, y = _data(32)
    cb = Counter(str(tmp_path), every_n_epochs=2)
    hist = _model().fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[cb])
    ev = read_events(str(tmp_path / "counter"))
    assert cb.ran == 2
    assert [s for s, _ in ev["loss_copy"]] == [1, 3]
    assert ev["loss_copy"][1][1] == pytest.approx(hist.history["loss"][3], rel=1e-6)
    assert ev["solid"][1][1][0].shape == (4, 5, 3) and np.all(ev["solid"][1][1][0] == 150)
    assert tfcam.callbacks.sanitize_tag("a b+c/d.e:f") == "a_b+c/d.e_f"


def test_tile_and_comparison_grid():
    imgs = np.arange(5 * 2 * 3 * 3, dtype=np.uint8).reshape(5, 2, 3, 3)
    g = tfcam.viz.tile(imgs, cols=3, pad=1, pad_value=7)
    assert g.shape == (2 * 3 + 1, 3 * 4 + 1, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(g[1 + 3 * r:3 * (r + 1), 1 + 4 * c:4 * (c + 1)], imgs[i])
    assert np.all(g[4:6, 9:12] == 7)  # the empty 6th cell
    batch = tfcam.viz.tile(np.stack([imgs, imgs[::-1]]), cols=3, pad=1, pad_value=7)
    np.testing.assert_array_equal(batch[1], tfcam.viz.tile(imgs[::-1], cols=3, pad=1, pad_value=7))
    assert tfcam.viz.tile(imgs).shape == (2 * 4 + 2, 3 * 5 + 2, 3)  # cols = ceil(sqrt(5)) = 3
    x = np.random.default_rng(0).uniform(size=(2, 4, 4, 3)).astype(np.float32)
    maps = np.random.default_rng(1).uniform(size=(2, 4, 4)).astype(np.float32)
    grid = tfcam.viz.comparison_grid(x, maps, pad=0)
    assert grid.shape == (8, 12, 3)
    np.testing.assert_array_equal(grid[4:, :4], tfcam.viz.to_uint8_images(x)[1])
    np.testing.assert_array_equal(grid[4:, 4:8], tfcam.colorize(maps[1:])[0])
    np.testing.assert_array_equal(grid[4:, 8:], tfcam.overlay(x[1:], maps[1:])[0])


# ---------------------------------------------------------------------------- tf.distribute
_MIRRORED = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np, tfcam
    sys.path.insert(0, os.path.join(os.environ["PYTHONPATH"], "tests"))
    from conftest import small_cnn
    log_dir = sys.argv[1]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = small_cnn()
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 16, 16, 3)).astype("float32"); y = np.arange(32) % 4
    cb = tfcam.callbacks.HeatmapCallback(x[:3], layer="c2", log_dir=log_dir, methods=("gradcam", "gradcam++"))
    fm = tfcam.callbacks.FeatureMapCallback(x[:2], layer="c1", log_dir=log_dir)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb, fm])
    maps = tfcam.Explainer(model, "c2")(x[:3])
    np.save(os.path.join(log_dir, "maps.npy"), maps)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "failures": cb.failures + fm.failures,
                      "logged": cb.logged_epochs}))
""")


@pytest.mark.slow
def test_mirrored_strategy_two_logical_cpus(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, str(script), str(logs)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"replicas": 2, "failures": [], "logged": [0, 1]}
    # one writer: a single event file in our directory, one entry per epoch
    assert len(glob.glob(str(logs / "heatmaps" / "events.out.tfevents.*"))) == 1
    ev = read_events(str(logs / "heatmaps"))
    assert set(ev) >= {"gradcam/c2", "gradcam++/c2", "gradcam/c2/grid", "gradcam++/c2/grid"}
    assert [s for s, _ in ev["gradcam/c2"]] == [0, 1]
    x = np.random.default_rng(0).uniform(size=(32, 16, 16, 3)).astype("float32")[:3]
    want = tfcam.overlay(x, np.load(logs / "maps.npy"))
    np.testing.assert_allclose(np.stack(ev["gradcam/c2"][1][1]).astype(int), want.astype(int), atol=1)
    assert [s for s, _ in read_events(str(logs / "feature_maps"))["feature_maps/c1"]] == [0, 1]


def test_callbacks_exported():
    assert "callbacks" in tfcam.__all__
    for name in tfcam.callbacks.__all__:
        obj = getattr(tfcam.callbacks, name)
        assert obj.__name__ == name and obj.__module__.startswith("tfcam.callbacks."), (name, obj)
    for name in ("HeatmapCallback", "FeatureMapCallback", "ConfusionMatrixCallback", "ProbabilityMapCallback"):
        assert issubclass(getattr(tfcam.callbacks, name), SummaryCallback)
    assert issubclass(SummaryCallback, keras.callbacks.Callback)


def test_an_explainer_kept_while_training_reads_the_current_head_weights():
    # regression: the logit of a softmax head was recomputed from a frozen copy of its kernel
    model = small_cnn()
    x = np.random.default_rng(0).uniform(size=(3, 16, 16, 3)).astype(np.float32)
    kept = tfcam.Explainer(model, "c2")
    kept.explain(x, [0, 1, 2], "gradcam", verbose=0)
    head = model.get_layer("head")
    head.kernel.assign(0.1 - 3.0 * head.kernel.numpy())
    head.bias.assign(np.arange(4, dtype=np.float32))
    old = kept.explain(x, [0, 1, 2], ["gradcam", "gradcam++"], verbose=0)
    fresh = tfcam.Explainer(model, "c2").explain(x, [0, 1, 2], ["gradcam", "gradcam++"], verbose=0)
    feats = keras.Model(model.inputs, model.get_layer("gap").output)(x).numpy()
    logits = feats @ head.kernel.numpy() + head.bias.numpy()
    np.testing.assert_allclose(old.scores, logits[np.arange(3), [0, 1, 2]], rtol=1e-5, atol=1e-6)
    for m in ("gradcam", "gradcam++"):
        np.testing.assert_allclose(old[m], fresh[m], atol=1e-6)


def test_max_images_cuts_images_targets_and_masks_alike(tmp_path):
    x, y = _data(32)
    masks = np.zeros((6, 16, 16), bool)
    masks[:, 4:12, 4:12] = True
    cb = HeatmapCallback(list(x[:6]), targets=[1, 2, 3, 0, 1, 2], layer="c2", log_dir=str(tmp_path),
                         max_images=3, masks=masks, colormap="viridis", alpha=0.7)
    model = _model()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[cb])
    ev = read_events(str(tmp_path / "heatmaps"))
    maps = tfcam.Explainer(model, "c2")(x[:3], targets=[1, 2, 3])
    want = tfcam.overlay(x[:3], maps, colormap="viridis", alpha=0.7)
    np.testing.assert_allclose(np.stack(ev["gradcam/c2"][0][1]).astype(int), want.astype(int), atol=1)
    frac = [maps[i][masks[i]].sum() / maps[i].sum() for i in range(3)]
    assert ev["gradcam/c2/energy_in_mask"][0][1] == pytest.approx(float(np.mean(frac)), abs=1e-5)


def test_a_writer_that_fails_to_close_is_logged(tmp_path, caplog):
    class Broken:
        closed = False

        def flush(self):
            raise OSError("disk full")

        def close(self):
            self.closed = True

    class Noop(SummaryCallback):
        default_subdir = "noop"

        def log_epoch(self, epoch, logs):
            pass

    cb = Noop(str(tmp_path))
    cb._writer = Broken()
    with caplog.at_level(logging.WARNING, logger="tfcam"):
        cb.close()  # does not raise
    assert cb._writer is None
    msgs = [r.getMessage() for r in caplog.records if r.name == "tfcam" and r.levelno == logging.WARNING]
    assert msgs == ["tfcam could not close a summary writer; summaries not yet flushed may be lost. "
                    "Reason: OSError: disk full"]
