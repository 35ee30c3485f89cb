"""Command line: ``tfcam demo``, ``tfcam explain``, ``tfcam layers``, ``tfcam view``, ``tfcam report``.

Errors print one line (``tfcam: error: ...``) to stderr and exit with status 1 (2 for
command-line usage errors, as argparse does); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_parser"]

_EXIT_ERROR = 1


class CliError(Exception):
    """An error the command line reports as one line."""


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _warn(msg: str) -> None:
    print(f"tfcam: error: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- models
def _parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected SIZE as N or HxW (e.g. 224 or 224x160), got {text!r}")
    return parts[0], parts[1]


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or os.path.splitext(spec)[1].lower() in (".keras", ".h5", ".hdf5", ".pb")


def _load_model(spec: str, weights: str = "none", size: tuple[int, int] | None = None):
    """(model, preprocess-mode-for-auto, is_imagenet) for a saved model file or an applications name."""
    import keras

    if os.path.exists(spec):
        try:
            model = keras.models.load_model(spec, compile=False)
        except Exception as err:  # noqa: BLE001 - Keras raises many types; report one line
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            hint = (" (a TensorFlow SavedModel directory cannot be explained layer by layer in Keras 3; "
                    "save the model as .keras)") if os.path.isdir(spec) else ""
            raise CliError(f"could not load the model {spec!r}{hint}: {reason}") from err
        return model, "unit", False
    if _looks_like_path(spec):
        raise CliError(f"model file not found: {spec!r}")
    import difflib

    from tfcam.errors import InputError
    from tfcam.io import application_names, keras_application

    try:
        build, _ = keras_application(spec)
    except InputError as err:
        close = difflib.get_close_matches(spec.lower().replace("_", "").replace("-", ""), application_names(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "e.g. resnet50, mobilenet_v2, efficientnet_b0"
        raise CliError(f"unknown model {spec!r}: not a file and not a keras.applications name ({hint})") from err
    kwargs: dict[str, Any] = {"weights": "imagenet" if weights == "imagenet" else None}
    if size is not None:
        kwargs["input_shape"] = (size[0], size[1], 3)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):  # Keras prints "Downloading data from ..." before failing
            model = build(**kwargs)
    except Exception as err:  # noqa: BLE001 - download / shape errors from keras.applications
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if weights == "imagenet":
            raise CliError(f"could not get the ImageNet weights of {spec!r} (no network connection, or the download "
                           f"failed: {first}); use --weights none, or a saved model file") from err
        raise CliError(f"could not build {spec!r}: {first}") from err
    sys.stdout.write(buffer.getvalue())
    return model, spec, weights == "imagenet"


def _input_size(model, size: tuple[int, int] | None) -> tuple[tuple[int, int], int]:
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise CliError(f"the model's input is shaped {shape}; tfcam explain reads 2-D images (N, H, W, C)")
    h, w, c = shape[1:]
    if c not in (1, 3):
        raise CliError(f"the model expects {c} channels; image files give 1 (grayscale) or 3 (RGB)")
    if h is None or w is None:
        if size is None:
            raise CliError("the model has no fixed input size; pass --size (e.g. --size 224)")
        return size, c
    if size is not None and tuple(size) != (h, w):
        raise CliError(f"the model's input size is {h}x{w}; --size {size[0]}x{size[1]} does not match (omit it)")
    return (h, w), c


# ---------------------------------------------------------------------------- commands
def _cmd_view(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.path):
        raise CliError(f"not a directory: {args.path!r} (give a TensorBoard log directory or an explain_dataset output)")
    from tfcam.tensorboard.serve import run_tensorboard

    _say(f"tfcam viewer: open http://{args.host}:{args.port}/#tfcam (Ctrl+C to stop)")
    run_tensorboard(args.path, host=args.host, port=args.port)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from tfcam.tensorboard.report import write_report

    info = write_report(args.path, args.output, max_samples=args.max_samples, max_steps=args.max_steps)
    for w in info["warnings"]:
        _say(f"skipped: {w}")
    if info["note"]:
        _say(info["note"])
    if not info["samples"]:
        _say(f"no tfcam explanations under {args.path!r}: the report shows how to log some")
    _say(f"wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB, {info['samples']} sample views)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tfcam.demo import run_demo

    report = run_demo(args.out, epochs=args.epochs, methods=args.methods, n_train=args.n_train,
                      n_test=args.n_test, seed=args.seed, verbose=0 if args.quiet else "auto")
    paths = report["paths"]
    _say(f"\ntest accuracy {report['test_accuracy']:.3f} ({report['epochs']} epochs, "
         f"{report['train_seconds']:.0f} s of training)")
    for name, s in report["methods"].items():
        _say(f"{name:>12}: pointing game {s['pointing_game']:.3f} (correctly classified: "
             f"{s['pointing_game_correct']:.3f}), energy in mask {s['energy_in_mask']:.3f}, "
             f"{s['time_per_image_ms']:.2f} ms/image")
    _say(f"\nreport:      {paths['report_md']}  (and report.json)")
    _say(f"grids:       {', '.join(os.path.basename(p) for p in paths['grids'].values())} in {paths['out']}")
    _say(f"model:       {paths['model']}  (try: tfcam explain {paths['model']} {paths['samples']})")
    if paths["logs"]:
        _say(f"TensorBoard: tensorboard --logdir {paths['logs']}")
    else:
        _say("TensorBoard: no logs written; pip install tensorboard to get them")
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    from tfcam.layers import default_layer, spatial_layers

    model, _, _ = _load_model(args.model, args.weights, args.size)
    refs = spatial_layers(model)
    tokens = not refs
    if tokens:  # a vision transformer: its token layers (N, T, D), explained with reshape="vit"
        refs = spatial_layers(model, rank=3)
    if not refs:
        raise CliError(f"model {model.name!r} has no layer with a spatial output to explain")
    try:
        pick = default_layer(model).path
    except Exception:  # noqa: BLE001 - listing still helps
        pick = None

    def fmt(shape):
        return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")" if shape else "?"

    rows = [("", "name", "output shape", "calls", "path")]
    for ref in refs:
        shapes = list(dict.fromkeys(fmt(s) for s in ref.shapes)) or [fmt(ref.shape)]
        calls = "1" if ref.calls == 1 else f"{ref.calls} (@0..@{ref.calls - 1})"
        rows.append(("*" if ref.path == pick or pick and pick.startswith(ref.path + "@") else "",
                     ref.name, " | ".join(shapes), calls, ref.path))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        _say("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    if pick is not None:
        _say(f"\n* = the layer layer=None picks ({pick}); {len(refs)} explainable layers, last first")
    _say("path syntax: 'outer/inner/layer', 'layer@k' for call k of a layer called several times "
         "(without @k every call, maps summed), 'layer[i]' / 'layer[key]' for an element of a tuple/dict output"
         + ("; token layers: explained with reshape='vit'" if tokens else ""))
    return 0


def _unique_stem(path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    cand, k = stem, 2
    while cand in used:
        cand, k = f"{stem}_{k}", k + 1
    used.add(cand)
    return cand


def _class_names(preds, imagenet: bool, top: int = 5) -> list[list[tuple[int, str, float]]] | None:
    """Top-k ``(index, name, score)`` per row with ImageNet names, or None when names are unavailable."""
    if not imagenet or preds.ndim != 2 or preds.shape[1] != 1000:
        return None
    import numpy as np

    try:
        from keras.applications.imagenet_utils import decode_predictions

        decoded = decode_predictions(np.asarray(preds), top=top)
    except Exception:  # noqa: BLE001 - the class index is a download; fall back to numbers
        return None
    order = np.argsort(-preds, axis=1)[:, :top]
    return [[(int(i), d[1], float(d[2])) for i, d in zip(o, row)] for o, row in zip(order, decoded)]


def _cmd_explain(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    import tfcam
    from tfcam.io import expand_paths, iter_batches, preprocess_function, write_image
    from tfcam.methods import get_method

    methods = [get_method(m).name for m in (args.method or ["gradcam"])]
    methods = list(dict.fromkeys(methods))
    tfcam.viz.colormap_lut(args.colormap)  # fail early on a bad colormap
    if not 0.0 <= args.alpha <= 1.0:
        raise CliError(f"--alpha must be in [0, 1], got {args.alpha}")
    paths = expand_paths(args.images, recursive=args.recursive)
    model, auto_prep, imagenet = _load_model(args.model, args.weights, args.size)
    size, channels = _input_size(model, args.size)
    prep = preprocess_function(auto_prep if args.preprocess == "auto" else args.preprocess)
    explainer = tfcam.Explainer(model, layer=args.layer, method=methods[0], batch_size=args.batch_size)
    n_out = model.outputs[0].shape[-1]
    if args.target is not None and n_out is not None and not 0 <= args.target < n_out:
        raise CliError(f"--target {args.target} is not a class index of the model's {n_out} outputs")
    os.makedirs(args.out, exist_ok=True)
    used: set[str] = set()
    failed = written = 0
    _say(f"model {model.name!r}, layer {', '.join(explainer.layer_names)}, methods {', '.join(methods)}, "
         f"{len(paths)} image(s) at {size[0]}x{size[1]}")
    for batch in iter_batches(paths, size, batch_size=args.batch_size):
        for p, msg in batch.errors:
            failed += 1
            _warn(f"{p}: {msg.split(' Received:')[0]}")
        if not batch.paths:
            continue
        images = batch.images
        if channels == 1:
            images = np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in images])[..., None]
        x = prep(images)
        targets = None if args.target is None else np.full(len(x), args.target, np.int32)
        exp = explainer.explain(x, targets=targets, methods=methods, verbose=0)
        preds = np.asarray(exp.predictions, np.float64).reshape(len(x), -1)
        top = _class_names(preds, imagenet)
        for i, p in enumerate(batch.paths):
            stem = _unique_stem(p, used)
            original = batch.originals[i]
            h0, w0 = original.shape[:2]
            outs = []
            for name in methods:
                m = exp[name][i]
                if m.shape != (h0, w0):
                    m = cv2.resize(m, (w0, h0), interpolation=cv2.INTER_LINEAR)
                m = np.clip(m, 0.0, 1.0).astype(np.float32)
                base = os.path.join(args.out, f"{stem}_{name.replace('+', 'p')}")
                view = tfcam.overlay(original[None], m[None], colormap=args.colormap, alpha=args.alpha)[0]
                outs.append(write_image(base + ".png", view))
                if args.save_raw:
                    np.save(base + ".npy", m)
                    outs.append(base + ".npy")
            cls = int(preds[i].argmax()) if args.target is None else int(args.target)
            label = f"class {cls}"
            if top is not None:
                names = dict((j, n) for j, n, _ in top[i])
                label = f"{names[cls]} ({cls})" if cls in names else label
            score = float(preds[i, cls]) if cls < preds.shape[1] else float("nan")
            _say(f"{p}: {label} score {score:.3f} -> {', '.join(outs)}")
            if top is not None:
                _say("    top-5: " + ", ".join(f"{n} ({j}) {s:.3f}" for j, n, s in top[i]))
            elif imagenet:
                best = np.argsort(-preds[i])[:5]
                _say("    top-5: " + ", ".join(f"{int(j)} {preds[i, j]:.3f}" for j in best))
            written += 1
    if failed:
        _warn(f"{failed} of {len(paths)} image(s) could not be read; wrote {written}")
        return _EXIT_ERROR
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``tfcam`` argument parser (sub-commands ``demo``, ``explain``, ``layers``)."""
    from tfcam import __version__
    from tfcam.demo import DEMO_METHODS

    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback on errors")
    parser = argparse.ArgumentParser(
        prog="tfcam", description="Class activation maps for Keras models: train and explain a demo model, "
        "explain saved models on image files, list explainable layers.",
        epilog="Run 'tfcam COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"tfcam {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", parents=[debug], help="train a small CNN on built-in shapes data and explain it",
                          description="Trains a small CNN on the built-in shapes data (about a minute on two CPU "
                          "cores), then writes TensorBoard logs, a PNG grid per method (image | mask | heatmap | "
                          "overlay) and report.md / report.json with accuracy and localization scores.")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    demo.add_argument("--n-train", type=int, default=3000, help="training images (default: 3000)")
    demo.add_argument("--n-test", type=int, default=200, help="held-out images explained and scored (default: 200)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and weights (default: 0)")
    demo.add_argument("--methods", nargs="+", default=list(DEMO_METHODS), metavar="METHOD",
                      help=f"methods to explain with (default: {' '.join(DEMO_METHODS)})")
    demo.add_argument("--quiet", action="store_true", help="no Keras progress bar")
    demo.set_defaults(func=_cmd_demo)

    model_help = ("a saved Keras model (.keras, .h5) or a keras.applications name (resnet50, mobilenet_v2, "
                  "efficientnet_b0, ...)")
    explain = sub.add_parser("explain", parents=[debug], help="write heatmap overlays for image files",
                             description="Explains a model's predictions on image files (PNG, JPEG, BMP, TIFF; "
                             "files, directories and globs) and writes one overlay PNG per image and method.")
    explain.add_argument("model", metavar="MODEL", help=model_help)
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files, directories or glob patterns")
    explain.add_argument("--method", "-m", action="extend", nargs="+", metavar="M",
                         help="method(s), repeatable (default: gradcam); see tfcam.METHODS")
    explain.add_argument("--layer", "-l", default=None, help="target layer name or nested path (default: as "
                         "'tfcam layers' marks)")
    explain.add_argument("--target", "-t", type=int, default=None,
                         help="class index to explain for every image (default: each image's top class)")
    explain.add_argument("--out", "-o", default="runs/explain", help="output directory (default: runs/explain)")
    explain.add_argument("--weights", choices=["imagenet", "none"], default="none",
                         help="weights of a keras.applications model (default: none; imagenet needs a download)")
    explain.add_argument("--size", type=_parse_size, default=None, metavar="N|HxW",
                         help="input size when the model has none (and for keras.applications names)")
    explain.add_argument("--preprocess", default="auto", metavar="MODE",
                         help="none (0-255), unit (0-1) or a keras.applications name (e.g. resnet50); default "
                         "auto: the model's own for keras.applications names, unit for saved models")
    explain.add_argument("--colormap", default="jet", help="colormap of the overlay (default: jet)")
    explain.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity in [0, 1] (default: 0.4)")
    explain.add_argument("--save-raw", action="store_true", help="also save each map as .npy (float32, image size)")
    explain.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    explain.add_argument("--recursive", "-r", action="store_true", help="descend into sub-directories")
    explain.set_defaults(func=_cmd_explain)

    layers = sub.add_parser("layers", parents=[debug], help="list the layers of a model that can be explained",
                            description="Lists the layers with a spatial output (name, output shape, number of calls, nested "
                            "path), last first; '*' marks the one layer=None picks.")
    layers.add_argument("model", metavar="MODEL", help=model_help)
    layers.add_argument("--weights", choices=["imagenet", "none"], default="none",
                        help="weights of a keras.applications model (default: none)")
    layers.add_argument("--size", type=_parse_size, default=None, metavar="N|HxW",
                        help="input size for keras.applications names")
    layers.set_defaults(func=_cmd_layers)

    view = sub.add_parser("view", parents=[debug], help="open the tfcam viewer in TensorBoard on a logdir or shards",
                          description="Starts TensorBoard (with the tfcam tab) on a log directory or an "
                          "explain_dataset output directory, on 127.0.0.1.")
    view.add_argument("path", metavar="PATH", help="log directory or explain_dataset output")
    view.add_argument("--port", type=int, default=6006, help="port (default: 6006)")
    view.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    view.set_defaults(func=_cmd_view)

    report = sub.add_parser("report", parents=[debug], help="write the viewer as one self-contained HTML file",
                            description="Writes one HTML file (images embedded, no network needed) with the "
                            "tfcam viewer over a log directory or an explain_dataset output directory.")
    report.add_argument("path", metavar="PATH", help="log directory or explain_dataset output")
    report.add_argument("--output", "-o", default="report.html", help="HTML file (default: report.html)")
    report.add_argument("--max-samples", type=int, default=500,
                        help="samples per sample set at most; the page says 'showing N of M' (default: 500)")
    report.add_argument("--max-steps", type=int, default=20,
                        help="logged steps per sample set at most, evenly spaced (default: 20)")
    report.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``tfcam`` command line; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    if args.debug:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        return int(args.func(args) or 0)
    from tfcam.errors import TfcamError

    try:
        return int(args.func(args) or 0)
    except CliError as err:
        _warn(str(err))
    except TfcamError as err:
        _warn(str(err))
    except KeyboardInterrupt:
        _warn("interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 - one line, not a traceback; --debug shows it
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        _warn(f"{type(err).__name__}: {msg} (run with --debug for the traceback)")
    return _EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
