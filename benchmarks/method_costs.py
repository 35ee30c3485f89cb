"""Cost of every method in ``tfcam.METHODS``, as a multiple of one plain forward pass.

Measured side by side in one run on the demo CNN (``tfcam.demo.build_demo_model``, 64x64 inputs,
64 channels at ``last_conv``), a batch of 16 images, CPU. Prints a markdown table
(the README's "cost" column comes from it).

Usage: ``python benchmarks/method_costs.py [--batch 16] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from common import best_time  # noqa: E402

# options that keep each method's default work but make it comparable across methods
OPTIONS = {"rise": {"n_masks": 500}}


def main() -> None:

    import tfcam
    from tfcam.demo import build_demo_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = build_demo_model(64, 4)
    x, _, _ = tfcam.datasets.shapes(args.batch, 64, seed=0)
    t_fwd = best_time(lambda: model.predict_on_batch(x), args.repeats)
    print(f"forward pass: {1000 * t_fwd / args.batch:.2f} ms per image (batch {args.batch}, 64x64, CPU)\n")
    print("| method | time / forward pass | ms per image |")
    print("|---|---|---|")
    for name in tfcam.METHODS:
        ex = tfcam.Explainer(model, "last_conv", method=name, batch_size=args.batch, **OPTIONS.get(name, {}))
        try:
            t = best_time(lambda ex=ex: ex.explain(x, verbose=0), args.repeats)
        except tfcam.errors.MethodError:  # e.g. the attention methods: the demo CNN has no attention
            print(f"| `{name}` | refused on this CNN | - |", flush=True)
            continue
        print(f"| `{name}` | {t / t_fwd:.1f} | {1000 * t / args.batch:.1f} |", flush=True)


if __name__ == "__main__":
    main()
