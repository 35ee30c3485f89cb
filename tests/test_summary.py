"""tfcam.summary (the viewer's format) and tfcam.tensorboard's loader and report, read back from disk."""

import glob
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

import tfcam
from tfcam.callbacks import HeatmapCallback
from tfcam.summary import FORMAT_VERSION, PLUGIN_NAME, dequantize, explanation, quantize
from tfcam.tensorboard import ExplanationStore, RequestError, write_report
from tfcam.tensorboard.loader import encode_png


def _events(folder):
    """{tag: [(step, plugin content, array)]} of the tfcam summaries in a folder."""
    out = {}
    tags = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == PLUGIN_NAME:
                    tags[v.tag] = json.loads(v.metadata.plugin_data.content)
                if v.tag in tags:
                    out.setdefault(v.tag, []).append((event.step, tags[v.tag], tf.make_ndarray(v.tensor)))
    return out


def _data(n=32, size=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, size, size, 3)).astype(np.float32)
    y = (np.arange(n) % 4).astype(np.int32)
    return x, y


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    x, y = _data()
    model = small_cnn()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    masks = np.zeros((6, 16, 16), np.float32)
    masks[:, 4:12, 4:12] = 1
    cb = HeatmapCallback((x[:6], y[:6]), methods=("gradcam", "layercam"), log_dir=str(tmp / "run1"),
                         class_names=["a", "b", "c", "d"], masks=masks)
    recorder = []

    class Maps(keras.callbacks.Callback):  # the maps the callback logged, recomputed for comparison
        def on_epoch_end(self, epoch, logs=None):
            recorder.append(cb.explainer.explain(x[:6], None, ("gradcam", "layercam"), verbose=0))

    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[cb, Maps()])
    assert cb.failures == []
    return tmp, cb, recorder, x[:6], y[:6], masks


def test_quantize_round_trip():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(5, 7, 9)).astype(np.float32) * np.arange(1, 6)[:, None, None]
    maps[2] = 3.0  # a constant map
    q, lo, hi = quantize(maps)
    assert q.dtype == np.uint8 and q.shape == maps.shape
    back = dequantize(q, lo, hi)
    span = (hi - lo)[:, None, None]
    assert np.all(np.abs(back - maps) <= span / 510 + 1e-6)
    assert np.all(back[2] == 3.0)


def test_callback_writes_the_viewer_format(fit_run):
    tmp, cb, recorder, x, y, masks = fit_run
    ev = _events(os.path.join(tmp, "run1", "heatmaps"))
    assert set(ev) == {"tfcam/samples/meta", "tfcam/samples/image", "tfcam/samples/mask",
                       "tfcam/samples/map/gradcam/c2", "tfcam/samples/map/layercam/c2"}
    assert [s for s, _, _ in ev["tfcam/samples/meta"]] == [0, 1, 2]
    assert len(ev["tfcam/samples/image"]) == 1  # images once per run
    step, content, img = ev["tfcam/samples/image"][0]
    assert content == {"version": FORMAT_VERSION, "kind": "image", "set": "samples"}
    np.testing.assert_array_equal(img, tfcam.viz.to_uint8_images(x))
    np.testing.assert_array_equal(ev["tfcam/samples/mask"][0][2], masks.astype(np.uint8))
    for epoch in range(3):
        meta = json.loads(ev["tfcam/samples/meta"][epoch][2].item())
        assert meta["n"] == 6 and meta["class_names"] == ["a", "b", "c", "d"] and meta["labels"] == y.tolist()
        expected = recorder[epoch]
        assert meta["predictions"] == expected.predictions.argmax(1).tolist()
        assert meta["targets"] == expected.predictions.argmax(1).tolist()
        np.testing.assert_allclose(meta["scores"], expected.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(meta["pred_scores"], expected.predictions.max(1), rtol=1e-5)
        for entry in meta["maps"]:
            tag_step, content, q = ev[entry["tag"]][epoch]
            assert tag_step == epoch and content["kind"] == "map" and q.dtype == np.uint8
            back = dequantize(q, entry["min"], entry["max"])
            raw = expected[entry["method"]]
            span = (np.asarray(entry["max"]) - np.asarray(entry["min"]))[:, None, None]
            assert np.all(np.abs(back - raw) <= span / 255 + 1e-6)
            m = np.maximum(raw - raw.reshape(6, -1).min(1)[:, None, None], 0)
            inside = (m * masks).reshape(6, -1).sum(1) / m.reshape(6, -1).sum(1)
            np.testing.assert_allclose(meta["energy_in_mask"][entry["key"]], inside, rtol=1e-4, atol=1e-6)


def test_viewer_false_writes_no_plugin_data(tmp_path):
    x, y = _data(16)
    model = small_cnn()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    cb = HeatmapCallback(x[:2], log_dir=str(tmp_path), viewer=False)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    assert _events(os.path.join(tmp_path, "heatmaps")) == {}


def test_explanation_float16_1d_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    sig = rng.uniform(size=(3, 50, 1)).astype(np.float32)
    maps = rng.uniform(size=(3, 50)).astype(np.float32)
    w = tf.summary.create_file_writer(str(tmp_path))
    with w.as_default():
        assert explanation("sig", sig, {"gradcam/conv": maps}, step=4, dtype="float16", predictions=[1, 0, 1])
    w.close()
    ev = _events(str(tmp_path))
    np.testing.assert_allclose(ev["tfcam/sig/map/gradcam/conv"][0][2], maps, atol=1e-3)
    assert ev["tfcam/sig/image"][0][2].shape == (3, 50, 1)
    with pytest.raises(tfcam.InputError, match="Received: maps"):
        explanation("s", None, {"a": maps, "b": maps[:, :10]}, step=0)
    with pytest.raises(tfcam.InputError, match="dtype"):
        explanation("s", None, {"a": maps}, step=0, dtype="int8")
    with pytest.raises(tfcam.InputTypeError, match="name"):
        explanation("a/b", None, {"a": maps}, step=0)
    with pytest.raises(tfcam.InputError, match="targets"):
        explanation("s", None, {"a": maps}, step=0, targets=[1, 2])
    assert explanation("s", None, {"a": maps}, step=0) is False  # no default writer: nothing written


def test_store_reads_steps_samples_and_history(fit_run):
    tmp, cb, recorder, x, y, masks = fit_run
    store = ExplanationStore(tmp)
    runs = store.runs()
    assert runs["warnings"] == []
    (run,) = runs["runs"]
    assert run["run"] == "run1/heatmaps" and run["kind"] == "events"
    s = run["sets"][0]
    assert s["steps"] == [0, 1, 2] and s["n"] == 6 and s["keys"] == ["gradcam/c2", "layercam/c2"]
    assert s["sorts"] == ["index", "score", "energy_outside", "misclassified"] and s["classes"] == [0, 1, 2, 3]
    page = store.samples("run1/heatmaps", "samples", 2, sort="score")
    scores = [r["score"] for r in page["rows"]]
    assert scores == sorted(scores) and page["total"] == 6
    np.testing.assert_allclose(sorted(scores), np.sort(recorder[2].scores), rtol=1e-5)
    wrong = store.samples("run1/heatmaps", "samples", 2, filter="misclassified")
    pred = recorder[2].predictions.argmax(1)
    assert sorted(r["index"] for r in wrong["rows"]) == np.flatnonzero(pred != y).tolist()
    assert store.samples("run1/heatmaps", "samples", 2, cls=1)["total"] == int((y == 1).sum())
    paged = store.samples("run1/heatmaps", "samples", 2, offset=4, limit=4)
    assert [r["index"] for r in paged["rows"]] == [4, 5]
    sample = store.sample("run1/heatmaps", "samples", 1, 3)
    assert sample["image"].startswith("data:image/png;base64,") and sample["image_shape"] == [16, 16, 3]
    assert [m["key"] for m in sample["maps"]] == ["gradcam/c2", "layercam/c2"]
    hist = store.history("run1/heatmaps", "samples", 3, "gradcam/c2")
    assert [h["step"] for h in hist["steps"]] == [0, 1, 2]
    png = store.image("run1/heatmaps", "samples", 0, 3)
    assert tf.io.decode_png(png).numpy().tolist() == tfcam.viz.to_uint8_images(x)[3].tolist()
    for bad, match in (({"step": 7}, "logged step"), ({"index": 6}, "index in"), ({"index": "x"}, "integer index")):
        args = {"step": 1, "index": 0, **bad}
        with pytest.raises(RequestError, match=match):
            store.sample("run1/heatmaps", "samples", args["step"], args["index"])
    with pytest.raises(RequestError, match="known run"):
        store.sample("nope", "samples", 0, 0)
    with pytest.raises(RequestError, match="sort"):
        store.samples("run1/heatmaps", "samples", 0, sort="best")


def test_truncated_and_corrupt_files_are_skipped_with_a_message(fit_run, tmp_path):
    tmp = fit_run[0]
    shutil.copytree(tmp / "run1", tmp_path / "good")
    (src,) = glob.glob(str(tmp / "run1" / "heatmaps" / "events.out.tfevents.*"))
    data = open(src, "rb").read()
    os.makedirs(tmp_path / "cut")
    with open(tmp_path / "cut" / os.path.basename(src), "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    os.utime(tmp_path / "cut" / os.path.basename(src), (1, 1))  # old: not a file being written
    os.makedirs(tmp_path / "garbage")
    with open(tmp_path / "garbage" / "events.out.tfevents.1.x", "wb") as f:
        f.write(b"\x07" * 500)
    store = ExplanationStore(tmp_path)
    runs = store.runs()
    assert {r["run"] for r in runs["runs"]} >= {"good/heatmaps"}
    text = "\n".join(runs["warnings"])
    assert "cut" in text and "truncated" in text and "garbage" in text and "corrupt" in text
    cut = [r for r in runs["runs"] if r["run"] == "cut"]
    if cut:  # the steps before the cut are still shown
        assert cut[0]["sets"][0]["steps"][0] == 0


def test_png_encoder_round_trips():
    rng = np.random.default_rng(0)
    for shape in ((5, 7), (5, 7, 3), (4, 6, 4)):
        a = rng.integers(0, 256, size=shape, dtype=np.uint8)
        back = tf.io.decode_png(encode_png(a), channels=0).numpy()
        np.testing.assert_array_equal(back.reshape(a.shape), a)


def test_report_is_self_contained_and_capped(fit_run, tmp_path):
    tmp = fit_run[0]
    info = write_report(tmp, tmp_path / "r.html", max_samples=4, max_steps=2)
    html = open(info["path"], encoding="utf-8").read()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    assert "showing 4 of 6 samples, 2 of 3 steps" in info["note"]
    data = json.loads(html.split('id="tfcam-data">', 1)[1].split("</script>", 1)[0])
    assert data["runs"]["runs"][0]["sets"][0]["steps"] == [0, 2]
    assert len(data["samples"]) == 4 * 2
    with pytest.raises(tfcam.InputError, match="max_samples"):
        write_report(tmp, tmp_path / "x.html", max_samples=0)
