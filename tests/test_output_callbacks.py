
"""ConfusionMatrixCallback and ProbabilityMapCallback: event files read back from disk."""

import glob
import logging
import os

import keras
import matplotlib
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

import tfcam
from tfcam.callbacks import ConfusionMatrixCallback, ProbabilityMapCallback

matplotlib.use("Agg")


def read_images(directory):
    """{tag: {step: uint8 (N, H, W, C)}} from every event file in ``directory``."""
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "images":
                    continue
                strings = tf.make_ndarray(value.tensor)  # [width, height, png, png, ...]
                imgs = np.stack([tf.io.decode_png(s).numpy() for s in strings[2:]])
                found.setdefault(value.tag, {})[event.step] = imgs
    return found


def trained_classifier(seed=0):
    model = small_cnn(seed=seed)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(24, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=24)
    return model, x, y


def test_confusion_matrix_equals_tf_confusion_matrix(tmp_path):
    model, x, y = trained_classifier()
    xv = np.random.default_rng(1).uniform(size=(20, 16, 16, 3)).astype(np.float32)
    yv = np.random.default_rng(2).integers(0, 4, size=20)
    names = ["circle", "square", "triangle", "cross"]
    cb = ConfusionMatrixCallback((xv, yv), names, log_dir=str(tmp_path), batch_size=8)
    assert not os.path.exists(cb.summary_dir)  # the writer is lazy
    model.fit(x, y, epochs=2, batch_size=12, verbose=0, callbacks=[cb])
    expected = tf.math.confusion_matrix(yv, np.argmax(model.predict(xv, verbose=0), axis=-1), num_classes=4).numpy()
    np.testing.assert_array_equal(cb.matrices[1], expected)
    assert sorted(cb.matrices) == [0, 1] and cb.failures == []
    assert cb.summary_dir == os.path.join(str(tmp_path), "tfcam_confusion_matrix") and cb._writer is None
    logged = read_images(cb.summary_dir)
    assert set(logged) == {"confusion_matrix"} and sorted(logged["confusion_matrix"]) == [0, 1]
    drawn = logged["confusion_matrix"][1][0]
    # the picture on disk is exactly the matrix_image of tf.math.confusion_matrix
    want = tfcam.matrix_image(expected, labels=names, xlabel="predicted", ylabel="true", title="epoch 2")
    np.testing.assert_array_equal(drawn[..., :3], want)


def test_confusion_matrix_dataset_one_hot_every_n_and_normalized(tmp_path):
    model, x, y = trained_classifier(seed=3)
    yv = np.random.default_rng(4).integers(0, 4, size=18)
    xv = np.random.default_rng(5).uniform(size=(18, 16, 16, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices((xv, np.eye(4, dtype=np.float32)[yv])).batch(5)
    cb = ConfusionMatrixCallback(ds, log_dir=tmp_path, every_n_epochs=2, normalize="row", name="cm")
    model.fit(x, y, epochs=3, batch_size=12, verbose=0, callbacks=[cb])
    assert sorted(cb.matrices) == [1]  # epochs counted from 0: only the 2nd epoch is logged
    logged = read_images(os.path.join(tmp_path, "cm"))
    assert sorted(logged["confusion_matrix"]) == [1]
    # the last epoch's weights are the model's now: recompute and compare
    expected = tf.math.confusion_matrix(yv, np.argmax(model.predict(xv, verbose=0), -1), num_classes=4).numpy()
    np.testing.assert_array_equal(cb.compute_matrix(), expected)
    assert cb.class_names == ["0", "1", "2", "3"]


def test_confusion_matrix_binary_sigmoid(tmp_path):
    model = small_cnn(classes=1, activation="sigmoid")
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=(16, 1)).astype(np.float32)
    cb = ConfusionMatrixCallback((x, y), ["no", "yes"], log_dir=tmp_path)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
    pred = (model.predict(x, verbose=0)[:, 0] > 0.5).astype(int)
    np.testing.assert_array_equal(cb.matrices[0], tf.math.confusion_matrix(y[:, 0].astype(int), pred, 2).numpy())


def test_confusion_matrix_validation_errors(tmp_path):
    model, x, y = trained_classifier()
    with pytest.raises(tfcam.InputError, match="Expected 4 class names.*Received: 3 class_names"):
        model.fit(x, y, epochs=1, verbose=0,
                  callbacks=[ConfusionMatrixCallback((x, y), ["a", "b", "c"], log_dir=tmp_path)])
    with pytest.raises(tfcam.TargetError, match=r"labels in \[0, 4\). Received: labels in \[4, 7\]"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[ConfusionMatrixCallback((x, y + 4), log_dir=tmp_path)])
    seg = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 1, activation="softmax")])
    seg.compile(loss="sparse_categorical_crossentropy")
    xs = np.zeros((4, 8, 8, 3), np.float32)
    with pytest.raises(tfcam.TargetError, match=r"classifier output.*Received: output shape=\(None, 8, 8, 2\)"):
        seg.fit(xs, np.zeros((4, 8, 8)), epochs=1, verbose=0,
                callbacks=[ConfusionMatrixCallback((xs, np.zeros(4)), log_dir=tmp_path)])
    with pytest.raises(tfcam.InputTypeError, match="Received: validation_data of type ndarray"):
        ConfusionMatrixCallback(x, log_dir=tmp_path)
    with pytest.raises(tfcam.InputError, match=r"Received: x.shape=\(24, 16, 16, 3\), y.shape=\(3,\)"):
        ConfusionMatrixCallback((x, y[:3]), log_dir=tmp_path)
    with pytest.raises(tfcam.InputError, match="Received: every_n_epochs=0"):
        ConfusionMatrixCallback((x, y), log_dir=tmp_path, every_n_epochs=0)
    with pytest.raises(tfcam.InputError, match="Received: normalize='rows'"):
        ConfusionMatrixCallback((x, y), log_dir=tmp_path, normalize="rows")
    assert not os.listdir(tmp_path)  # nothing was written


def test_failure_at_epoch_end_warns_and_training_goes_on(tmp_path, caplog):
    model, x, y = trained_classifier()
    # labels out of range inside a dataset cannot be checked before training starts
    ds = tf.data.Dataset.from_tensor_slices((x, y + 10)).batch(8)
    cb = ConfusionMatrixCallback(ds, log_dir=tmp_path, class_names=list("abcd"))
    with caplog.at_level(logging.WARNING, logger="tfcam"):
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=[cb])
    assert "ConfusionMatrixCallback could not log epoch 0; training continues" in caplog.text
    assert len(history.history["loss"]) == 2 and [e for e, _ in cb.failures] == [0, 1] and cb.matrices == {}


# ----------------------------------------------------------------------------- probability maps


def seg_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    out = keras.layers.Conv2D(3, 1, activation="softmax", name="mask")(h)
    model = keras.Model(inp, out)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    return model, rng.uniform(size=(8, 8, 8, 3)).astype(np.float32), rng.integers(0, 3, size=(8, 4, 4))


def test_probability_map_callback_logs_overlays(tmp_path):
    model, x, masks = seg_model()
    cb = ProbabilityMapCallback(x[:3], class_index=[1, 2], log_dir=tmp_path, class_names=["bg", "cat", "dog"],
                                colormap="viridis", alpha=0.5)
    model.fit(x, masks, epochs=2, batch_size=4, verbose=0, callbacks=[cb])
    logged = read_images(os.path.join(tmp_path, "tfcam_probability_map"))
    assert set(logged) == {"probability_map/cat", "probability_map/dog"}
    assert sorted(logged["probability_map/cat"]) == [0, 1]
    for c, tag in ((1, "probability_map/cat"), (2, "probability_map/dog")):
        got = logged[tag][1][..., :3]
        probs = model.predict(x[:3], verbose=0)[..., c]
        maps = tf.image.resize(probs[..., None], (8, 8), method="bilinear")[..., 0].numpy()
        want = np.concatenate([tfcam.overlay(x[:3], maps, colormap="viridis", alpha=0.5),
                               tfcam.colorize(maps, "viridis")], axis=2)
        assert got.shape == (3, 8, 16, 3)
        np.testing.assert_array_equal(got, want)
    assert cb.failures == []


def test_probability_map_callback_validation(tmp_path, cnn):
    model, x, masks = seg_model()
    with pytest.raises(tfcam.TargetError, match="Received: class_index=3"):
        model.fit(x, masks, epochs=1, verbose=0,
                  callbacks=[ProbabilityMapCallback(x[:2], 3, log_dir=tmp_path)])
    cnn.compile(loss="sparse_categorical_crossentropy")
    xc = np.zeros((2, 16, 16, 3), np.float32)
    with pytest.raises(tfcam.TargetError, match="not spatial"):
        cnn.fit(xc, np.zeros(2), epochs=1, verbose=0, callbacks=[ProbabilityMapCallback(xc, 0, log_dir=tmp_path)])
    with pytest.raises(tfcam.InputError, match=r"Received: images.shape=\(8, 8, 3\)"):
        ProbabilityMapCallback(x[0], 0, log_dir=tmp_path)
    with pytest.raises(tfcam.InputTypeError, match="Received: class_index='cat'"):
        ProbabilityMapCallback(x, "cat", log_dir=tmp_path)
    with pytest.raises(tfcam.InputError, match="Received: alpha=2"):
        ProbabilityMapCallback(x, 0, log_dir=tmp_path, alpha=2)
    assert not os.listdir(tmp_path)
