"""The command line, run as a user would: ``python -m tfcam.cli ...`` in a subprocess.

A few in-process calls of ``tfcam.cli.main`` cover the remaining error messages cheaply.
"""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import small_cnn

cv2 = pytest.importorskip("cv2")

import tfcam  # noqa: E402
from tfcam.cli import main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def run_cli(*args, cwd=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, "-m", "tfcam.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def error_lines(stderr):
    """stderr lines that are ours (TensorFlow may log its own start-up lines)."""
    return [ln for ln in stderr.splitlines() if ln.startswith("tfcam") or "Traceback" in ln]


def write_rgb(path, rgb):
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return str(path)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A 16x16 CNN saved as .h5 and .keras, and a few image files of other sizes."""
    d = tmp_path_factory.mktemp("cli")
    model = small_cnn()
    model.save(d / "m.keras")
    model.save(d / "m.h5")
    rng = np.random.default_rng(0)
    imgs = d / "imgs"
    imgs.mkdir()
    files = [write_rgb(imgs / "a.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)),
             write_rgb(imgs / "b.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)),
             write_rgb(imgs / "c.bmp", rng.integers(0, 256, (9, 40, 3), dtype=np.uint8))]
    return d, model, files


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = run_cli("demo", "--out", out, "--epochs", 1, "--n-train", 160, "--n-test", 12, "--methods", "gradcam",
                   "eigencam", "--quiet")
    return out, proc


# ------------------------------------------------------------------------------ basics
def test_version_and_help(capsys):
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"tfcam {tfcam.__version__}"
    for argv, needle in ((["--help"], "explain"), (["demo", "--help"], "--epochs"),
                         (["explain", "--help"], "--preprocess"), (["layers", "--help"], "MODEL")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert needle in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["explain"])  # missing arguments: argparse usage error
    assert exc.value.code == 2


# ------------------------------------------------------------------------------ demo
@pytest.mark.slow
def test_demo_writes_grids_report_model_and_logs(demo_run):
    out, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["test_accuracy"] <= 1.0 and report["epochs"] == 1 and report["n_test"] == 12
    assert set(report["methods"]) == {"gradcam", "eigencam"}
    for scores in report["methods"].values():
        for key in ("pointing_game", "energy_in_mask"):
            assert 0.0 <= scores[key] <= 1.0
        assert scores["time_per_image_ms"] > 0
    md = (out / "report.md").read_text()
    assert f"{report['test_accuracy']:.3f}" in md and f"{report['methods']['gradcam']['pointing_game']:.3f}" in md
    for name, fname in (("gradcam", "gradcam_grid.png"), ("eigencam", "eigencam_grid.png")):
        grid = cv2.imread(str(out / fname))
        assert grid is not None and grid.shape == (18 + 8 * 128, 4 * 128, 3)  # header + 8 rows, 4 tiles at 2x
        assert report["paths"]["grids"][name] == str(out / fname)
    assert len(glob.glob(str(out / "samples" / "*.png"))) == 8
    assert f"report:      {out / 'report.md'}" in proc.stdout
    # the report's numbers are those of the saved model, recomputed here independently
    model = keras.models.load_model(out / "model.keras")
    x, y, masks = tfcam.datasets.shapes(12, 64, seed=1)
    probs = model.predict(x, verbose=0)
    assert report["test_accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == y)), abs=1e-6)
    maps = tfcam.Explainer(model, layer="last_conv")(x, targets=y)
    flat = maps.reshape(12, -1)
    hits = masks.reshape(12, -1)[np.arange(12), flat.argmax(1)]
    energy = (flat * masks.reshape(12, -1)).sum(1) / flat.sum(1)
    assert report["methods"]["gradcam"]["pointing_game"] == pytest.approx(hits.mean(), abs=1e-6)
    assert report["methods"]["gradcam"]["energy_in_mask"] == pytest.approx(energy.mean(), abs=1e-4)
    if HAVE_TENSORBOARD:
        assert glob.glob(str(out / "logs" / "**" / "events.out.tfevents.*"), recursive=True)
        assert f"tensorboard --logdir {out / 'logs'}" in proc.stdout
    else:
        assert "pip install tensorboard" in proc.stdout and not report["tensorboard_logs"]


@pytest.mark.slow
def test_demo_event_files_hold_heatmaps(demo_run):
    pytest.importorskip("tensorboard")
    callbacks = pytest.importorskip("tfcam.callbacks")
    if not hasattr(callbacks, "HeatmapCallback"):
        pytest.skip("tfcam.callbacks has no HeatmapCallback")
    import tensorflow as tf

    out, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    tags = set()
    for f in glob.glob(str(out / "logs" / "**" / "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(f):
            tags.update(v.tag for v in event.summary.value)
    assert any("gradcam" in t for t in tags), sorted(tags)
    assert any("eigencam" in t for t in tags), sorted(tags)


@pytest.mark.parametrize("argv, needle", [(["--epochs", "0"], "epochs"), (["--methods", "nope"], "Unknown method")])
def test_demo_bad_arguments(tmp_path, capsys, argv, needle):
    assert main(["demo", "--out", str(tmp_path / "d"), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tfcam: error: ") and needle in err[0]


# ------------------------------------------------------------------------------ explain
def test_explain_writes_overlays_at_image_size(saved):
    d, model, files = saved
    out = d / "out"
    proc = run_cli("explain", d / "m.h5", files[0], d / "imgs" / "*.jpg", d / "imgs" / "c.bmp",
                   "--method", "gradcam", "--method", "layercam", "--save-raw", "--alpha", 0.5, "-o", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if " -> " in ln]
    assert len(lines) == 3
    explainer = tfcam.Explainer(model)
    for path, line in zip(files, lines):
        stem = os.path.splitext(os.path.basename(path))[0]
        original = cv2.imread(path)[..., ::-1]
        h, w = original.shape[:2]
        x = cv2.resize(original, (16, 16), interpolation=cv2.INTER_AREA if h * w > 256 else cv2.INTER_LINEAR)
        x = x[None].astype(np.float32) / 255.0  # default preprocessing of a saved model: unit
        probs = model.predict(x, verbose=0)[0]
        assert line.startswith(f"{path}: class {probs.argmax()} score {probs.max():.3f}")
        for method in ("gradcam", "layercam"):
            png = out / f"{stem}_{method}.png"
            assert str(png) in line
            view = cv2.imread(str(png))
            assert view is not None and view.shape == (h, w, 3)
            raw = np.load(out / f"{stem}_{method}.npy")
            want = cv2.resize(explainer.explain(x, methods=[method])[method][0], (w, h),
                              interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(raw, np.clip(want, 0, 1), atol=1e-4)
            np.testing.assert_allclose(view[..., ::-1], tfcam.overlay(original[None], raw[None], alpha=0.5)[0],
                                       atol=1)


def test_explain_keeps_going_when_one_image_fails(saved, tmp_path):
    d, _, files = saved
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    proc = run_cli("explain", d / "m.keras", bad, files[1], "-o", tmp_path / "out")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errs = error_lines(proc.stderr)
    assert errs[0].startswith(f"tfcam: error: {bad}: Could not decode")
    assert "1 of 2 image(s) could not be read; wrote 1" in errs[-1]
    assert cv2.imread(str(tmp_path / "out" / "b_gradcam.png")).shape == (16, 16, 3)


def test_explain_unknown_model_and_layer_one_line_unless_debug(saved, tmp_path):
    d, _, files = saved
    proc = run_cli("explain", "resnet5O", files[0], "-o", tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errs = error_lines(proc.stderr)
    assert len(errs) == 1 and errs[0].startswith(
        "tfcam: error: unknown model 'resnet5O': not a file and not a keras.applications name (did you mean resnet50")
    proc = run_cli("explain", d / "m.keras", files[0], "--layer", "nope", "--debug", "-o", tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "LayerError" in proc.stderr


@pytest.mark.parametrize("extra, needle", [
    (["--method", "nope"], "Unknown method 'nope'"),
    (["--target", "7"], "--target 7 is not a class index of the model's 4 outputs"),
    (["--size", "32"], "the model's input size is 16x16"),
    (["--alpha", "2"], "--alpha must be in [0, 1]"),
    (["--colormap", "nope"], "Unknown colormap 'nope'"),
    (["--preprocess", "nope"], "Expected preprocessing"),
])
def test_explain_bad_options(saved, tmp_path, capsys, extra, needle):
    d, _, files = saved
    assert main(["explain", str(d / "m.keras"), files[0], "-o", str(tmp_path), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not glob.glob(str(tmp_path / "*.png"))


def test_explain_missing_files(saved, tmp_path, capsys):
    d, _, files = saved
    assert main(["explain", str(tmp_path / "none.keras"), files[0]]) == 1
    assert capsys.readouterr().err.strip() == f"tfcam: error: model file not found: '{tmp_path / 'none.keras'}'"
    assert main(["explain", str(d / "m.keras"), str(tmp_path / "none.png")]) == 1
    assert "Expected an existing image file" in capsys.readouterr().err


def test_explain_imagenet_download_failure_is_one_line(saved, tmp_path, capsys, monkeypatch):
    _, _, files = saved

    def offline(**kwargs):
        print("Downloading data from https://example.invalid/weights.h5")
        raise Exception("URL fetch failure on https://example.invalid/weights.h5: None -- [Errno -2] Name unknown")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    assert main(["explain", "mobilenet_v2", files[0], "--weights", "imagenet", "-o", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "could not get the ImageNet weights of 'mobilenet_v2'" in err[0]
    assert "use --weights none" in err[0]


def test_explain_keras_application_with_random_weights(saved, tmp_path, capsys):
    _, _, files = saved
    assert main(["explain", "mobilenet_v2", files[0], "--size", "32", "-m", "gradcam++", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # at 32x32 MobileNetV2's last blocks are 1x1 (constant maps): the default is the last 2x2 layer
    assert "layer block_13_expand_relu" in out and "top-5" not in out
    assert cv2.imread(str(tmp_path / "a_gradcampp.png")).shape == (20, 30, 3)


# ------------------------------------------------------------------------------ layers
def test_layers_lists_nested_paths_last_first(tmp_path):
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(4, 3, name="conv_a")(inner_in)
    h = keras.layers.Conv2D(5, 3, name="conv_b")(h)
    backbone = keras.Model(inner_in, h, name="backbone")
    inp = keras.Input((12, 12, 3))
    g = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head")(g))
    model.save(tmp_path / "nested.keras")
    proc = run_cli("layers", tmp_path / "nested.keras")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["name", "output", "shape", "calls", "path"]
    table = [(ln[0], *re.split(r"\s{2,}", ln[3:].strip())) for ln in lines[1:4]]
    assert table == [("*", "conv_b", "(None, 8, 8, 5)", "1", "backbone/conv_b"),
                     (" ", "conv_a", "(None, 10, 10, 4)", "1", "backbone/conv_a"),
                     (" ", "backbone", "(None, 8, 8, 5)", "1", "backbone")]
    assert "* = the layer layer=None picks (backbone/conv_b)" in proc.stdout
    proc = run_cli("layers", tmp_path / "missing.keras")
    assert proc.returncode == 1 and error_lines(proc.stderr) == [
        f"tfcam: error: model file not found: '{tmp_path / 'missing.keras'}'"]


def test_layers_shows_the_calls_of_a_shared_layer(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    shared = keras.layers.Conv2D(3, 3, padding="same", name="shared")
    h = shared(shared(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))
    model.save(tmp_path / "shared.keras")
    proc = run_cli("layers", tmp_path / "shared.keras")
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = re.split(r"\s{2,}", proc.stdout.splitlines()[1][3:].strip())
    assert row == ["shared", "(None, 12, 12, 3)", "2 (@0..@1)", "shared"]
    assert "'layer@k' for call k" in proc.stdout


# ------------------------------------------------------------------------------ demo scoring helpers
def test_demo_scores_hand_computed_and_metrics_module_fallback(caplog):
    from tfcam import demo

    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2, :2] = True
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 0, 1], maps[0, 3, 3] = 1.0, 0.5  # peak inside: hit; energy 1 / 1.5
    maps[1, 3, 0], maps[1, 1, 1] = 1.0, 1.0 / 3  # peak outside: miss; energy (1/3) / (4/3)
    np.testing.assert_array_equal(demo._inline_pointing(maps, masks), [1.0, 0.0])
    np.testing.assert_allclose(demo._inline_energy(maps, masks), [2 / 3, 1 / 4], rtol=1e-6)
    assert demo._mean_score(None, demo._inline_energy, maps, masks) == pytest.approx((2 / 3 + 1 / 4) / 2)
    # a metrics module returning per-example values or a scalar is used as is
    assert demo._mean_score(lambda m, k: np.array([0.25, 0.75]), demo._inline_pointing, maps, masks) == 0.5
    assert demo._mean_score(lambda m, k: 0.3, demo._inline_pointing, maps, masks) == pytest.approx(0.3)

    def broken(m, k):
        raise TypeError("other signature")

    with caplog.at_level("WARNING", logger="tfcam"):
        assert demo._mean_score(broken, demo._inline_pointing, maps, masks) == 0.5
    assert "using the inline computation" in caplog.text
