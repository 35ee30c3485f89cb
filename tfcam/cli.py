"""Command line: ``tfcam demo``, ``tfcam layers``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from tfcam.demo import run_demo

    report = run_demo(args.out, epochs=args.epochs, methods=args.methods, n_train=args.n_train,
                      verbose=0 if args.quiet else 1)
    print(f"test accuracy {report['test_accuracy']:.3f}")
    for name, scores in report["methods"].items():
        print(f"{name:>14}: pointing game {scores['pointing_game']:.3f}, energy in mask {scores['energy_in_mask']:.3f}")
    print(f"wrote heatmap grids and report.md / report.json to {os.path.abspath(args.out)}")
    return 0


def _load_model(spec: str):
    import keras

    if os.path.exists(spec):
        return keras.models.load_model(spec, compile=False)
    raise SystemExit(f"tfcam: error: model file not found: {spec}")


def _cmd_layers(args: argparse.Namespace) -> int:
    import tfcam
    from tfcam.layers import default_layer

    model = _load_model(args.model)
    pick = default_layer(model).path
    for ref in tfcam.spatial_layers(model):
        mark = "  <- layer=None" if ref.path == pick else ""
        print(f"{ref.path:40s} {tuple(ref.layer.output.shape)}{mark}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tfcam import __version__
    from tfcam.methods import method_names

    parser = argparse.ArgumentParser(prog="tfcam", description="Class activation maps for Keras models.")
    parser.add_argument("--version", action="version", version=f"tfcam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small CNN on built-in shapes data and explain it")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--epochs", type=int, default=6)
    demo.add_argument("--n-train", type=int, default=3000, help="training images (default 3000)")
    demo.add_argument("--methods", nargs="+", default=["gradcam", "gradcam++", "layercam", "eigencam"],
                      choices=list(method_names()), metavar="METHOD")
    demo.add_argument("--quiet", action="store_true", help="no Keras progress bar")
    demo.set_defaults(func=_cmd_demo)
    layers = sub.add_parser("layers", help="list the layers of a saved model that can be explained")
    layers.add_argument("model", help="path of a saved Keras model (.keras or .h5)")
    layers.set_defaults(func=_cmd_layers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
