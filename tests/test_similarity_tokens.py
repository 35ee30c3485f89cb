"""SimilarityTarget on token outputs (class token, mean pooling, a given token) and on image-text encoders.

Scores are checked against a NumPy transcription of the cosine similarity; the KerasHub encoders
(CLIP, SigLIP, DINOv2, tiny random-weight configs) give finite, non-constant maps.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcam
from tfcam.errors import TargetError
from tfcam.targets import SimilarityTarget


def np_cos(e, r):
    return float(e @ r / (np.linalg.norm(e) * np.linalg.norm(r)))


def token_model(t=17, d=8, seed=0):
    """A tiny ViT-like model: 4x4 patch 'conv' embedding + a class token, then a Dense per token."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3))
    p = keras.layers.Conv2D(d, 4, strides=4, name="patches")(inp)  # (4, 4, d)
    tok = keras.layers.Reshape((16, d), name="tokens")(p)
    cls = keras.layers.Lambda(lambda z: tf.reduce_mean(z, axis=1, keepdims=True) * 0.5, name="cls")(tok)
    seq = keras.layers.Concatenate(axis=1, name="seq")([cls, tok])
    out = keras.layers.Dense(d, activation="tanh", name="mix")(seq)
    return keras.Model(inp, out)


@pytest.mark.parametrize("token", ["cls", "mean", 3, -1])
def test_token_modes_match_numpy(token):
    model = token_model()
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    ref = np.random.default_rng(1).normal(size=8).astype(np.float32)
    out = model(x).numpy().astype(np.float64)
    emb = {"cls": out[:, 0], "mean": out.mean(1)}.get(token) if isinstance(token, str) else out[:, token]
    want = [np_cos(emb[i], ref) for i in range(2)]
    t = SimilarityTarget(ref, token=token)
    np.testing.assert_allclose(t(tf.constant(out, tf.float32)).numpy(), want, rtol=1e-5)
    ex = tfcam.Explainer(model, layer="patches", method="gradcam")
    e = ex.explain(x, t)
    np.testing.assert_allclose(e.scores, want, rtol=1e-5)
    assert np.isfinite(e["gradcam"]).all() and all(np.ptp(m) > 0 for m in e["gradcam"])


def test_token_errors():
    model = token_model()
    x = np.zeros((1, 16, 16, 3), np.float32)
    ex = tfcam.Explainer(model, layer="patches")
    with pytest.raises(TargetError, match=r"token='cls'.*Received: token=None"):
        ex(x, SimilarityTarget(np.ones(8)))
    with pytest.raises(TargetError, match=r"width 8.*Received: reference with shape \(5,\)"):
        ex(x, SimilarityTarget(np.ones(5), token="cls"))
    with pytest.raises(TargetError, match=r"\[-17, 17\).*Received: token=17"):
        ex(x, SimilarityTarget(np.ones(8), token=17))
    with pytest.raises(TargetError, match="Received: token='max'"):
        SimilarityTarget(np.ones(8), token="max")
    emb = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3, name="c"),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    with pytest.raises(TargetError, match=r"token output.*Received: output shape \(None, 3\)"):
        tfcam.Explainer(emb, layer="c")(np.zeros((1, 4, 4, 1), np.float32), SimilarityTarget(np.ones(3), token="cls"))
    with pytest.raises(TargetError, match=r"width 3.*Received: reference with shape \(4,\)"):
        tfcam.Explainer(emb, layer="c")(np.zeros((1, 4, 4, 1), np.float32), SimilarityTarget(np.ones(4)))


# ---------------------------------------------------------------- KerasHub encoders

IMG = 32


def _images(n=2):
    return np.random.default_rng(0).random((n, IMG, IMG, 3)).astype(np.float32)


def _finite_nonconstant(maps):
    assert np.isfinite(maps).all()
    assert all(np.ptp(m) > 0 for m in maps)


@pytest.mark.slow
def test_clip_image_embedding_matches_a_text_embedding():
    keras_hub = pytest.importorskip("keras_hub")
    from keras_hub.src.models.clip.clip_text_encoder import CLIPTextEncoder
    from keras_hub.src.models.clip.clip_vision_encoder import CLIPVisionEncoder

    keras.utils.set_random_seed(0)
    vision = CLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
                               image_shape=(IMG, IMG, 3))
    text = CLIPTextEncoder(vocabulary_size=50, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
                           intermediate_dim=32, max_sequence_length=8)
    clip = keras_hub.models.CLIPBackbone(vision_encoder=vision, text_encoder=text, projection_dim=12)
    x = _images()
    # the recipe: the image-embedding tower, explained against a text embedding the user brings
    image_embedder = keras.Model(clip.input["images"], clip.get_layer("vision_projection").output)
    text_embedding = np.random.default_rng(2).normal(size=12).astype(np.float32)
    e = tfcam.Explainer(image_embedder, method="saliency", layer="pre_layer_norm",
                        reshape="vit").explain(x, SimilarityTarget(text_embedding), ["saliency", "gradcam"])
    want = [np_cos(v, text_embedding) for v in image_embedder(x).numpy().astype(np.float64)]
    np.testing.assert_allclose(e.scores, want, rtol=1e-4)
    _finite_nonconstant(e["saliency"])
    _finite_nonconstant(e["gradcam"])
    # the backbone's dict output chosen by key: vision_logits (images x texts), a class target per text
    tokens = np.random.default_rng(3).integers(1, 50, (3, 8)).astype(np.int32)
    ex = tfcam.Explainer(clip, input="images", output="vision_logits", layer="pre_layer_norm", reshape="vit")
    got = ex.explain({"images": x, "token_ids": np.repeat(tokens[:1], 2, 0)}, 0, ["saliency"])
    _finite_nonconstant(got["saliency"])
    # the vision tower's tokens: class token and mean pooling
    ex = tfcam.Explainer(vision, layer="pre_layer_norm", reshape="vit", method="saliency")
    ref = np.random.default_rng(4).normal(size=16).astype(np.float32)
    for token in ("cls", "mean"):
        got = ex.explain(x, SimilarityTarget(ref, token=token), ["saliency", "gradcam"])
        _finite_nonconstant(got["saliency"])
        assert np.isfinite(got["gradcam"]).all() and np.ptp(got["gradcam"]) > 0


@pytest.mark.slow
def test_siglip_pooled_image_embedding():
    keras_hub = pytest.importorskip("keras_hub")
    from keras_hub.src.models.siglip.siglip_text_encoder import SigLIPTextEncoder
    from keras_hub.src.models.siglip.siglip_vision_encoder import SigLIPVisionEncoder

    keras.utils.set_random_seed(0)
    vision = SigLIPVisionEncoder(patch_size=8, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32,
                                 image_shape=(IMG, IMG, 3))
    text = SigLIPTextEncoder(vocabulary_size=50, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
                             intermediate_dim=32, max_sequence_length=8)
    siglip = keras_hub.models.SigLIPBackbone(vision_encoder=vision, text_encoder=text)
    x = _images()
    text_embedding = np.random.default_rng(2).normal(size=16).astype(np.float32)
    # SigLIP's image embedding is its vision encoder's (pooled) output
    ex = tfcam.Explainer(siglip.vision_encoder, layer="encoder_block_0", reshape="vit", method="gradcam")
    e = ex.explain(x, SimilarityTarget(text_embedding), ["gradcam", "integrated_gradients"])
    want = [np_cos(v, text_embedding) for v in siglip.vision_encoder({"images": x}).numpy().astype(np.float64)]
    np.testing.assert_allclose(e.scores, want, rtol=1e-4)
    _finite_nonconstant(e["gradcam"])
    _finite_nonconstant(e["integrated_gradients"])
    with pytest.raises(TargetError, match=r"width 16.*Received: reference with shape \(12,\)"):
        ex(x, SimilarityTarget(np.ones(12)))


@pytest.mark.slow
def test_dinov2_tokens():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    dino = keras_hub.models.DINOV2Backbone(patch_size=8, num_layers=1, hidden_dim=16, num_heads=2,
                                           intermediate_dim=32, image_shape=(IMG, IMG, 3),
                                           position_embedding_shape=(IMG, IMG, 3))
    x = _images()
    ref = np.random.default_rng(2).normal(size=16).astype(np.float32)
    ex = tfcam.Explainer(dino, layer="embeddings", reshape="vit", method="gradcam")
    for token in ("cls", "mean", 5):
        e = ex.explain(x, SimilarityTarget(ref, token=token), ["gradcam", "saliency"])
        _finite_nonconstant(e["gradcam"])
        _finite_nonconstant(e["saliency"])
