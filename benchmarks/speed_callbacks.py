"""Training-time overhead of HeatmapCallback: fit() with the callback / fit() without.

A representative small CNN (tfcam.demo's: 4 conv layers, GAP, softmax head) trained on
``tfcam.datasets.shapes`` (64x64 RGB) for a few epochs; the callback logs Grad-CAM overlays
and the grid of 8 sample images to TensorBoard every epoch. Both variants are measured in
the same run, each from a fresh model (so both pay their own tracing), alternating which
goes first; the ratio reported is the median of the per-pair ratios. Target: <= 1.05.
Three variants: no callback, the callback with the TensorBoard viewer's records (``viewer=True``,
the default: images, uint8 maps, predictions for the "tfcam" tab) and the callback with the
Images-tab overlays only (``viewer=False``), so the viewer's own cost is shown too.
On a shared machine the pair ratios swing by more than the callback costs, so the time
spent inside the callback's hooks is measured too (1 + hook time / fit time).

Run: ``PYTHONPATH=. python benchmarks/speed_callbacks.py [--quick]``
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import print_rows, row  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "tensorflow")


class _Timer:
    """Wall time spent inside a callback's hooks (setup + every epoch end)."""

    def __init__(self, cb):
        self.cb, self.seconds = cb, 0.0
        for hook in ("on_train_begin", "on_epoch_end", "on_train_end"):
            setattr(self, hook, self._wrap(getattr(cb, hook)))

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
        return timed


def rows(quick: bool = False) -> list[dict]:
    import keras

    import tfcam
    from tfcam.demo import build_demo_model

    n, epochs, pairs = (800, 2, 1) if quick else (4000, 3, 3)
    x, y, _ = tfcam.datasets.shapes(n, 64, seed=0)
    xs, _, ms = tfcam.datasets.shapes(8, 64, seed=1)

    def fit(mode: str, log_dir: str) -> tuple[float, float, float]:
        model = build_demo_model(64, 4, seed=0)
        callbacks, timer = [], None
        if mode != "none":
            cb = tfcam.callbacks.HeatmapCallback(xs, methods=("gradcam",), layer="last_conv", log_dir=log_dir,
                                                 masks=ms, viewer=mode == "viewer",
                                                 class_names=tfcam.datasets.SHAPE_NAMES)
            timer = _Timer(cb)
            cb.on_train_begin, cb.on_epoch_end, cb.on_train_end = (timer.on_train_begin, timer.on_epoch_end,
                                                                   timer.on_train_end)
            callbacks.append(cb)
        t0, c0 = time.perf_counter(), time.process_time()
        model.fit(x, y, epochs=epochs, batch_size=64, verbose=0, callbacks=callbacks)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        if timer is not None and timer.cb.failures:
            raise RuntimeError(f"callback failed: {timer.cb.failures}")
        return total, (timer.seconds if timer else 0.0), cpu

    with tempfile.TemporaryDirectory() as tmp:
        fit("none", tmp)  # warm-up: TF/Keras start-up costs out of the comparison
        without, with_, ratios, hook, cpu_ratios = [], [], [], [], []
        plain, plain_hook = [], []
        modes = ["none", "viewer", "overlays"]
        for i in range(pairs):
            order = modes[i % 3:] + modes[:i % 3]
            got = {}
            for mode in order:
                got[mode] = fit(mode, os.path.join(tmp, f"run{i}-{mode}"))
            without.append(got["none"][0])
            with_.append(got["viewer"][0])
            hook.append(got["viewer"][1])
            plain.append(got["overlays"][0])
            plain_hook.append(got["overlays"][1])
            ratios.append(got["viewer"][0] / got["none"][0])
            cpu_ratios.append(got["viewer"][2] / got["none"][2])
        keras.backend.clear_session()
    detail = f"{n} images 64x64, {epochs} epochs, batch 64, {pairs} alternating pair(s)"
    return [
        row("fit without callback (s)", statistics.median(without), "", detail),
        row("fit with HeatmapCallback, 8 images/epoch, viewer records (s)", statistics.median(with_), "",
            "gradcam + grid + change + energy_in_mask scalars + the tfcam tab's records"),
        row("fit with HeatmapCallback(viewer=False) (s)", statistics.median(plain), "", "Images-tab overlays only"),
        row("hook time: viewer=True - viewer=False (s)", statistics.median(hook) - statistics.median(plain_hook), "",
            f"the viewer's records over {epochs} epochs"),
        row("time in the callback's hooks (s)", statistics.median(hook), "",
            "explainer build + dry run + every epoch's maps, PNGs and writes"),
        row("with / without (median of pairs)", statistics.median(ratios), "<= 1.05",
            "pairs: " + ", ".join(f"{r:.3f}" for r in ratios)),
        row("with / without, process CPU time (median of pairs)", statistics.median(cpu_ratios), "<= 1.05",
            "pairs: " + ", ".join(f"{r:.3f}" for r in cpu_ratios) + " (less sensitive to other processes)"),
        row("1 + hook time / fit without (noise-robust estimate)",
            1.0 + statistics.median(hook) / statistics.median(without), "<= 1.05",
            "the callback's own wall time, measured inside fit()"),
    ]


if __name__ == "__main__":
    print_rows("HeatmapCallback overhead during fit()", rows(quick="--quick" in sys.argv))
