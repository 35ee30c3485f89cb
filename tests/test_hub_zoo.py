"""The tiny KerasHub zoo (tests/hub_zoo.py): every builder builds, runs and matches its documented structure."""

import numpy as np
import pytest

pytest.importorskip("keras_hub")

import hub_zoo  # noqa: E402

KINDS = {"classifier", "segmenter", "detector", "encoder"}


def _check(out, expected):
    if isinstance(expected, dict):
        assert isinstance(out, dict), type(out)
        assert set(out) == set(expected)
        for key, shape in expected.items():
            _check(out[key], shape)
        return
    arr = np.asarray(out)
    assert arr.shape == tuple(expected)
    assert np.isfinite(arr).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(hub_zoo.BUILDERS))
def test_builder_runs_with_documented_outputs(name):
    model, info = hub_zoo.build(name)
    assert hub_zoo.build(name)[0] is model  # cached: other test files share the instance
    assert info["family"] == name
    assert info["kind"] in KINDS
    assert len(info["image_shape"]) == 3

    x = info["inputs"](2)
    images = x["images"] if isinstance(x, dict) else x
    assert images.shape == (2, *info["image_shape"]) and images.dtype == np.float32
    out = model(x)
    _check(out, info["output_shapes"](2))
    if info["output"] is not None:
        assert info["output"] in out

    if info["kind"] in ("classifier", "segmenter", "detector"):
        assert info["num_classes"] == hub_zoo.NUM_CLASSES

    for path in [info["feature_layer"], *info.get("blocks", ())]:
        assert hub_zoo.get_layer_path(model, path) is not None, path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(hub_zoo.DETECTORS))
def test_detector_predict_decodes(name):
    model, info = hub_zoo.build(name)
    pred = model.predict(info["inputs"](2), verbose=0)
    assert {"boxes", "confidence", "labels", "num_detections"} <= set(pred)
    assert pred["boxes"].shape[0] == 2 and pred["boxes"].shape[-1] == 4
    assert pred["num_detections"].shape == (2,)


@pytest.mark.slow
def test_text_inputs_are_valid_token_ids():
    for name in ("clip", "siglip"):
        _, info = hub_zoo.build(name)
        ids = info["inputs"](3, seed=1)["token_ids"]
        assert ids.shape == (3, info["sequence_length"]) and ids.dtype == np.int32
        assert ids.min() >= 0 and ids.max() == info["vocabulary_size"] - 1
