"""The new targets on hand-made outputs (hand computations), and their bad inputs."""

import numpy as np
import pytest
import tensorflow as tf

import tfcam
from tfcam.layers import tokens_to_grid
from tfcam.targets import BoxTarget, ReconstructionTarget, RegressionTarget, SimilarityTarget


def test_regression_target_values():
    out = tf.constant([[0.5, 2.0], [1.0, -3.0]])
    assert RegressionTarget(1)(out).numpy().tolist() == [2.0, -3.0]
    assert RegressionTarget(0, sign=-1)(out).numpy().tolist() == [-0.5, -1.0]
    assert RegressionTarget()(tf.constant([4.0, 5.0])).numpy().tolist() == [4.0, 5.0]
    RegressionTarget(1).validate((None, 2), 2)
    with pytest.raises(tfcam.TargetError, match=r"in \[0, 2\)\. Received: index=2"):
        RegressionTarget(2).validate((None, 2), 2)
    with pytest.raises(tfcam.TargetError, match="Received: output shape"):
        RegressionTarget().validate((None, 4, 4, 2), 2)
    with pytest.raises(tfcam.TargetError, match="Received: sign=0"):
        RegressionTarget(0, sign=0)
    with pytest.raises(tfcam.TargetError, match="Received: index=-1"):
        RegressionTarget(-1)


def test_box_target_values():
    out = np.arange(2 * 4 * 5 * 2, dtype=np.float32).reshape(2, 4, 5, 2)
    t = BoxTarget(1, (1, 2, 3, 5))
    want = out[:, 1:3, 2:5, 1].sum(axis=(1, 2))
    np.testing.assert_allclose(t(tf.constant(out)).numpy(), want)
    per_example = BoxTarget([0, 1], [[0, 0, 1, 1], [2, 1, 4, 2]])
    np.testing.assert_allclose(per_example(tf.constant(out)).numpy(), [out[0, 0, 0, 0], out[1, 2:4, 1, 1].sum()])
    # 1-D dense head: (start, stop)
    out1 = np.arange(12, dtype=np.float32).reshape(1, 6, 2)
    np.testing.assert_allclose(BoxTarget(0, (2, 5))(tf.constant(out1)).numpy(), [out1[0, 2:5, 0].sum()])
    with pytest.raises(tfcam.TargetError, match=r"0 <= start < stop <= size.*Received: box=\[1, 2, 5, 5\]"):
        BoxTarget(0, (1, 2, 5, 5)).validate((None, 4, 5, 2), 2)
    with pytest.raises(tfcam.TargetError, match=r"Expected a box as 4 integers.*Received: box with shape \(3,\)"):
        BoxTarget(0, (1, 2, 3)).validate((None, 4, 5, 2), 2)
    with pytest.raises(tfcam.TargetError, match="dense output"):
        BoxTarget(0, (0, 1)).validate((None, 3), 2)


def test_similarity_target_values():
    out = tf.constant([[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(SimilarityTarget([1.0, 0.0])(out).numpy(), [1.0, 0.0, 0.0])
    per = SimilarityTarget([[1.0, 1.0], [0.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(per(out).numpy(), [1 / np.sqrt(2), -1.0, 0.0], rtol=1e-6)
    with pytest.raises(tfcam.TargetError, match=r"\(3,\) or \(2, 3\).*Received: reference with shape \(2,\)"):
        SimilarityTarget([1.0, 0.0]).validate((None, 3), 2)
    with pytest.raises(tfcam.TargetError, match="Received: output shape"):
        SimilarityTarget([1.0]).validate((None, 4, 4, 1), 2)
    with pytest.raises(tfcam.TargetError, match="Received: reference with shape"):
        SimilarityTarget([np.nan, 1.0])


def test_reconstruction_target_values():
    out = np.array([[[1.0], [3.0]], [[0.0], [2.0]]], np.float32)
    ref = np.array([[[0.0], [0.0]], [[1.0], [1.0]]], np.float32)
    np.testing.assert_allclose(ReconstructionTarget(ref)(tf.constant(out)).numpy(), [5.0, 1.0])
    masked = ReconstructionTarget(ref, mask=np.array([0.0, 1.0]))
    masked.validate((None, 2, 1), 2)
    np.testing.assert_allclose(masked(tf.constant(out)).numpy(), [9.0, 1.0])
    with pytest.raises(tfcam.TargetError, match=r"shaped like the output.*Received: reference with shape \(2, 2, 1\)"):
        ReconstructionTarget(ref).validate((None, 3, 1), 2)
    with pytest.raises(tfcam.TargetError, match="Received: mask shape"):
        ReconstructionTarget(ref, mask=np.ones(3)).validate((None, 2, 1), 2)


def test_tokens_to_grid():
    tokens = tf.reshape(tf.range(2 * 17 * 3, dtype=tf.float32), (2, 17, 3))
    grid = tokens_to_grid(tokens)
    np.testing.assert_array_equal(grid.numpy(), tokens.numpy()[:, 1:].reshape(2, 4, 4, 3))
    no_cls = tokens_to_grid(tokens[:, 1:])
    np.testing.assert_array_equal(no_cls.numpy(), grid.numpy())
    rect = tokens_to_grid(tf.zeros((1, 13, 2)), (3, 4))
    assert rect.shape == (1, 3, 4, 2)
    with pytest.raises(tfcam.InputError, match="Cannot arrange 15 tokens"):
        tokens_to_grid(tf.zeros((1, 15, 2)))
    with pytest.raises(tfcam.InputError, match="Received: activations shape"):
        tokens_to_grid(tf.zeros((1, 4, 4, 2)))
