"""explain_dataset: streaming equals arrays, labels as targets, shards, resumption, corruption."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

import tfcam
from tfcam.dataset import ExplanationShards, ShardWriter, Writer

N = 11
METHODS = ["gradcam", "layercam", "eigencam"]


@pytest.fixture(scope="module")
def setup():
    model = small_cnn()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 4, N).astype("int64")
    ex = tfcam.Explainer(model, layer="c2", batch_size=4)
    return model, ex, x, y


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)


def same_as(result, ref, methods=METHODS):
    for m in methods:
        close(result[m], ref[m])
    close(result.predictions, ref.predictions)
    close(result.scores, ref.scores)
    np.testing.assert_array_equal(result.indices, np.arange(len(ref.scores)))


def logits(model, x):
    """Independent pre-softmax scores: GAP features times the head's kernel, plus bias."""
    feats = keras.Model(model.inputs, model.get_layer("gap").output)(x).numpy()
    w, b = (v.numpy() for v in model.get_layer("head").weights)
    return feats @ w + b


# ----------------------------------------------------------------------------- memory
@pytest.mark.parametrize("form", ["batched", "unbatched", "pairs", "dict", "generator", "array", "list"])
@pytest.mark.parametrize("batch", [1, 3, N])
def test_dataset_results_equal_array_results(setup, form, batch):
    _, ex, x, y = setup
    ref = ex.explain(x, None, METHODS, verbose=0)
    if form == "batched":
        ds = tf.data.Dataset.from_tensor_slices(x).batch(batch)
    elif form == "unbatched":
        ds = tf.data.Dataset.from_tensor_slices(x)
    elif form == "pairs":
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    elif form == "dict":
        ds = tf.data.Dataset.from_tensor_slices({"image": x, "label": y}).batch(batch)
    elif form == "generator":
        ds = ((x[i:i + batch], y[i:i + batch]) for i in range(0, N, batch))
    elif form == "list":
        ds = [x[i:i + batch] for i in range(0, N, batch)]
    else:
        ds = x
    res = ex.explain_dataset(ds, methods=METHODS, batch_size=batch, verbose=0)
    same_as(res, ref)
    if form in ("pairs", "dict", "generator"):
        np.testing.assert_array_equal(res.labels, y)
    else:
        assert res.labels is None


@pytest.mark.parametrize("onehot", [False, True])
def test_labels_as_targets(setup, onehot):
    model, ex, x, y = setup
    labels = np.eye(4, dtype="float32")[y] if onehot else y
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(4)
    res = ex.explain_dataset(ds, targets="labels", methods=METHODS, verbose=0)
    # the explained score of example i is the logit of its label, computed independently
    close(res.scores, logits(model, x)[np.arange(N), y])
    same_as(res, ex.explain(x, y, METHODS, verbose=0))
    # the labels really are used: another class gives other maps for some examples
    other = ex.explain(x, (y + 1) % 4, ["gradcam"], verbose=0)
    assert not np.allclose(res["gradcam"], other["gradcam"], atol=1e-3)


def test_per_example_targets_follow_the_dataset_order(setup):
    _, ex, x, y = setup
    ds = tf.data.Dataset.from_tensor_slices(x).batch(3)
    res = ex.explain_dataset(ds, targets=list(y), methods=["gradcam"], verbose=0)
    same_as(res, ex.explain(x, y, ["gradcam"], verbose=0), ["gradcam"])


def test_fixed_target_and_progress_bar(setup, capsys):
    model, ex, x, _ = setup
    ds = tf.data.Dataset.from_tensor_slices(x).batch(5)
    res = ex.explain_dataset(ds, targets=2, methods="gradcam", verbose=1)
    close(res.scores, logits(model, x)[:, 2])
    assert "3/3" in capsys.readouterr().out  # keras.utils.Progbar, 3 batches


# ----------------------------------------------------------------------------- disk
def run_disk(ex, ds, path, **kw):
    kw.setdefault("methods", METHODS)
    kw.setdefault("shard_size", 4)
    return ex.explain_dataset(ds, output=str(path), verbose=0, **kw)


def test_shards_on_disk_equal_memory_results(setup, tmp_path):
    _, ex, x, y = setup
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(3)
    out = run_disk(ex, ds, tmp_path / "out", targets="labels", overlays=["gradcam"])
    ref = ex.explain(x, y, METHODS, verbose=0)
    assert isinstance(out, ExplanationShards) and out.complete and len(out) == N
    assert out.computed_examples == N and out.skipped_examples == 0
    assert sorted(f for f in os.listdir(tmp_path / "out") if f.endswith(".npz")) == [
        "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    assert [e["count"] for e in out.shards] == [4, 4, 3]
    same_as(out.load(), ref)
    for k, part in enumerate(out):  # one plain .npz per shard, readable without tfcam
        with np.load(tmp_path / "out" / f"shard-{k:05d}.npz") as raw:
            np.testing.assert_array_equal(raw["indices"], np.arange(4 * k, min(4 * k + 4, N)))
            np.testing.assert_array_equal(raw["gradcam"], part["gradcam"])
            np.testing.assert_array_equal(raw["labels"], y[4 * k:4 * k + 4])
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["num_examples"] == N and index["fingerprint"]["methods"] == METHODS
    assert out.verify() == []
    # overlays: one PNG per example, the same pixels as tfcam.overlay
    pngs = sorted(os.listdir(tmp_path / "out" / "overlays" / "gradcam"))
    assert pngs == [f"{i:08d}.png" for i in range(N)]
    img = tf.io.decode_png((tmp_path / "out" / "overlays" / "gradcam" / "00000006.png").read_bytes()).numpy()
    want = tfcam.overlay(x[6:7], ref["gradcam"][6:7])[0]
    np.testing.assert_array_equal(img, want)
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".")]  # no temp leftovers


class Interrupted(RuntimeError):
    pass


def interrupted_batches(x, y, batch, stop_after):
    """Yields batches, then raises once ``stop_after`` examples were handed out."""
    given = 0
    for i in range(0, len(x), batch):
        if given >= stop_after:
            raise Interrupted(f"killed after {given} examples")
        yield x[i:i + batch], y[i:i + batch]
        given += len(x[i:i + batch])


@pytest.mark.parametrize("strict_order_batch", [(3, 5), (2, 2)])
def test_interrupted_run_resumes_without_duplicates_or_gaps(setup, tmp_path, strict_order_batch):
    _, ex, x, y = setup
    first_batch, second_batch = strict_order_batch
    full = run_disk(ex, ((x[i:i + 3], y[i:i + 3]) for i in range(0, N, 3)), tmp_path / "full").load()
    path = tmp_path / "resumed"
    # interrupted after 2 shards (8 examples) plus part of the third shard
    with pytest.raises(Interrupted):
        run_disk(ex, interrupted_batches(x, y, first_batch, stop_after=9), path)
    index = json.loads((path / "index.json").read_text())
    assert sorted(int(k) for k in index["shards"]) == [0, 1] and not index["complete"]
    assert not [f for f in os.listdir(path) if f.startswith(".")]  # partial shard buffers removed
    resumed = run_disk(ex, ((x[i:i + second_batch], y[i:i + second_batch]) for i in range(0, N, second_batch)),
                       path)
    assert resumed.skipped_examples == 8 and resumed.computed_examples == N - 8
    got = resumed.load()
    np.testing.assert_array_equal(got.indices, np.arange(N))  # each example exactly once, in order
    for m in METHODS:
        close(got[m], full[m])
    close(got.scores, full.scores)
    # a third run over a complete output computes nothing
    again = run_disk(ex, tf.data.Dataset.from_tensor_slices(x).batch(4), path)
    assert again.computed_examples == 0 and again.skipped_examples == N


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "unindexed"])
def test_corrupted_or_partial_shard_is_detected_and_recomputed(setup, tmp_path, damage):
    _, ex, x, _ = setup
    ds = tf.data.Dataset.from_tensor_slices(x).batch(3)
    path = tmp_path / "out"
    clean = run_disk(ex, ds, path).load()
    shard = path / "shard-00001.npz"
    data = bytearray(shard.read_bytes())
    if damage == "flip":  # same size, one byte of map data changed: only the checksum sees it
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "delete":
        shard.unlink()
    else:  # written, but the run died before the index listed it
        index = json.loads((path / "index.json").read_text())
        del index["shards"]["1"]
        (path / "index.json").write_text(json.dumps(index))
        (path / ".shard-00002.npz.tmp-deadbeef").write_bytes(b"partial")
    if damage != "unindexed":
        assert ExplanationShards(path).verify() == [1]
    with pytest.warns(UserWarning, match="recomputed") if damage != "unindexed" else _nothing():
        fixed = run_disk(ex, ds, path)
    assert fixed.computed_examples == 4 and fixed.skipped_examples == N - 4
    assert fixed.verify() == []
    got = fixed.load()
    np.testing.assert_array_equal(got.indices, np.arange(N))
    for m in METHODS:
        np.testing.assert_array_equal(got[m], clean[m])
    assert not [f for f in os.listdir(path) if f.startswith(".")]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_other_settings_are_refused_unless_overwrite(setup, tmp_path):
    _, ex, x, _ = setup
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4)
    run_disk(ex, ds, tmp_path / "o")
    with pytest.raises(tfcam.InputError, match="methods") as err:
        run_disk(ex, ds, tmp_path / "o", methods=["gradcam"])
    assert "Received:" in str(err.value)
    with pytest.raises(tfcam.InputError, match="shard_size"):
        run_disk(ex, ds, tmp_path / "o", shard_size=5)
    with pytest.raises(tfcam.InputError, match="targets"):
        run_disk(ex, ds, tmp_path / "o", targets=1)
    out = run_disk(ex, ds, tmp_path / "o", methods=["gradcam"], overwrite=True)
    assert out.methods == ["gradcam"] and out.computed_examples == N


def test_changed_dataset_length_is_refused(setup, tmp_path):
    _, ex, x, _ = setup
    run_disk(ex, tf.data.Dataset.from_tensor_slices(x[:10]).batch(4), tmp_path / "o")
    with pytest.raises(tfcam.InputError, match="more examples"):
        run_disk(ex, tf.data.Dataset.from_tensor_slices(x).batch(4), tmp_path / "o")
    with pytest.raises(tfcam.InputError, match="fewer examples"):
        run_disk(ex, tf.data.Dataset.from_tensor_slices(x[:6]).batch(4), tmp_path / "o")


def test_custom_writer_gets_results_in_order(setup):
    _, ex, x, _ = setup

    class Collect(Writer):
        def open(self, fingerprint):
            self.seen = []

        def write(self, indices, results, images=None):
            self.seen.append((indices.copy(), results["gradcam"].shape))

        def close(self, num_examples):
            return self.seen, num_examples

    seen, n = ex.explain_dataset(tf.data.Dataset.from_tensor_slices(x).batch(5), methods="gradcam",
                                 output=Collect(), verbose=0)
    assert n == N
    np.testing.assert_array_equal(np.concatenate([s[0] for s in seen]), np.arange(N))
    assert [s[1] for s in seen] == [(5, 16, 16), (5, 16, 16), (1, 16, 16)]


def test_bad_arguments_raise_tfcam_errors(setup, tmp_path):
    _, ex, x, y = setup
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4)
    with pytest.raises(tfcam.TargetError, match="labels"):
        ex.explain_dataset(ds, targets="labels", verbose=0)
    multi = np.zeros((N, 4), "float32")
    multi[:, :2] = 1
    with pytest.raises(tfcam.TargetError, match="one-hot"):
        ex.explain_dataset(tf.data.Dataset.from_tensor_slices((x, multi)).batch(4), targets="labels", verbose=0)
    with pytest.raises(tfcam.InputError, match="finite"):
        ex.explain_dataset(ds.repeat(), verbose=0)
    with pytest.raises(tfcam.InputTypeError, match="output"):
        ex.explain_dataset(ds, output=3, verbose=0)
    with pytest.raises(tfcam.InputError, match="shard_size"):
        ex.explain_dataset(ds, output=str(tmp_path / "o"), shard_size=0, verbose=0)
    with pytest.raises(tfcam.InputError, match="output directory"):
        ex.explain_dataset(ds, shard_size=4, verbose=0)
    with pytest.raises(tfcam.InputTypeError, match="Strategy"):
        ex.explain_dataset(ds, strategy="mirrored", verbose=0)
    with pytest.raises(tfcam.InputError, match="rank"):
        ex.explain_dataset(tf.data.Dataset.from_tensor_slices(x[:, :, 0, 0]).batch(2), verbose=0)
    with pytest.raises(tfcam.InputTypeError, match="dataset"):
        ex.explain_dataset(42, verbose=0)
    with pytest.raises(tfcam.TargetError, match="one target per example"):
        ex.explain_dataset(ds, targets=list(y[:5]), verbose=0)
    with pytest.raises(tfcam.MethodError):
        ex.explain_dataset(ds, methods=["nope"], verbose=0)


def test_public_names():
    for name in ("explain_dataset", "ExplanationShards", "ShardWriter", "MemoryWriter", "Writer"):
        assert getattr(tfcam, name) is getattr(tfcam.dataset, name)
    assert isinstance(ShardWriter("x", 3), Writer)
    assert tfcam.explain_dataset.__doc__ and tfcam.Explainer.explain_dataset.__doc__


def test_shard_being_filled_is_buffered_on_disk_not_in_memory(tmp_path):
    w = ShardWriter(tmp_path / "o", shard_size=4)
    w.open({"methods": ["gradcam"]})
    maps = np.arange(3 * 2 * 2, dtype="float32").reshape(3, 2, 2)
    res = {"gradcam": maps, "predictions": np.ones((3, 4), "float32"), "scores": np.ones(3, "float32"),
           "indices": np.arange(3)}
    w.write(np.arange(3), res)
    parts = [p for p in os.listdir(tmp_path / "o") if p.startswith(".parts-")]
    assert len(parts) == 1 and not any(f.endswith(".npz") for f in os.listdir(tmp_path / "o"))
    sizes = sorted(os.path.getsize(tmp_path / "o" / parts[0] / f) for f in os.listdir(tmp_path / "o" / parts[0]))
    assert sizes == sorted([maps.nbytes, 3 * 4 * 4, 3 * 4, 3 * 8])  # the batch went to files
    w.write(np.arange(3, 5), {k: v[:2] for k, v in res.items()} | {"indices": np.arange(3, 5)})
    assert os.path.exists(tmp_path / "o" / "shard-00000.npz")  # committed as soon as full
    with np.load(tmp_path / "o" / "shard-00000.npz") as z:
        np.testing.assert_array_equal(z["gradcam"], np.concatenate([maps, maps[:1]]))
        np.testing.assert_array_equal(z["indices"], np.arange(4))
    w.abort()  # the open shard (example 4) is dropped, the committed one stays valid
    assert not [p for p in os.listdir(tmp_path / "o") if p.startswith(".")]
    assert ExplanationShards(tmp_path / "o").verify() == []
