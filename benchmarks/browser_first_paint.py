"""First paint of the tfcam TensorBoard tab: 64 samples x 4 methods x 20 epochs, in headless Chromium.

Writes the records with ``tfcam.summary.explanation`` (64 images of 64x64, 4 uint8 maps per
sample, 20 steps), starts TensorBoard with the plugin on loopback, and measures in a fresh
headless Chromium the time from navigation to the first drawn main canvas (the viewer sets
``window.tfcamFirstPaint``), for the plugin page TensorBoard iframes
(``/data/plugin_entry.html?name=tfcam``) and for the whole TensorBoard app at ``/#tfcam``;
also the same for the HTML report opened from disk. Target: <= 2 s. Needs ``chromium``
(``make browser``).

Run: ``PYTHONPATH=. python benchmarks/browser_first_paint.py [--rounds 3]``
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from browser import Chromium, chromium_path, tensorboard_server  # noqa: E402
from common import print_rows, row  # noqa: E402

N, METHODS, STEPS, SIZE = 64, ("gradcam", "gradcam++", "layercam", "eigencam"), 20, 64

FRAME = """(() => { const find = (r) => { for (const e of r.querySelectorAll('*')) {
  if (e.tagName === 'IFRAME' && e.src.includes('plugin_entry')) return e;
  if (e.shadowRoot) { const f = find(e.shadowRoot); if (f) return f; } } return null; };
  const f = find(document); return f && f.contentWindow; })()"""


def write_logs(logdir: str) -> float:
    import numpy as np
    import tensorflow as tf

    import tfcam

    rng = np.random.default_rng(0)
    images, labels, _ = tfcam.datasets.shapes(N, SIZE, seed=0)
    writer = tf.summary.create_file_writer(os.path.join(logdir, "run1"))
    t0 = time.perf_counter()
    with writer.as_default():
        for step in range(STEPS):
            maps = {f"{m}/conv": rng.uniform(size=(N, SIZE, SIZE)).astype(np.float32) for m in METHODS}
            probs = rng.dirichlet(np.ones(4), size=N)
            tfcam.summary.explanation("val", images if step == 0 else None, maps, step=step, predictions=probs,
                                      scores=rng.normal(size=N), labels=labels,
                                      class_names=tfcam.datasets.SHAPE_NAMES)
    writer.close()
    return time.perf_counter() - t0


def measure(url: str, window: str, ready: str, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        with Chromium() as b:  # a fresh browser: nothing cached
            b.goto(url)
            b.wait_for(ready, timeout=60, interval=0.02)
            first = b.eval(f"{window}.tfcamFirstPaint")
            nav = b.eval(f"{window}.performance.timeOrigin - performance.timeOrigin")
            out.append((first + nav) / 1000.0)  # ms since the top page's navigation started
    return out


def rows(rounds: int = 3) -> list[dict]:
    if chromium_path() is None:
        print("chromium is not installed (make browser); nothing measured")
        return []
    from tfcam.tensorboard import write_report

    with tempfile.TemporaryDirectory() as tmp:
        logdir = os.path.join(tmp, "logs")
        log_s = write_logs(logdir)
        with tensorboard_server(logdir) as base:
            urllib.request.urlopen(base + "/data/plugin/tfcam/runs").read()  # the first scan (indexing) once
            entry = measure(base + "/data/plugin_entry.html?name=tfcam", "window", "window.tfcamFirstPaint", rounds)
            tab = measure(base + "/#tfcam", FRAME, f"{FRAME} && {FRAME}.tfcamFirstPaint", rounds)
        t0 = time.perf_counter()
        info = write_report(logdir, os.path.join(tmp, "report.html"))
        report_s = time.perf_counter() - t0
        rep = measure("file://" + info["path"], "window", "window.tfcamFirstPaint", rounds)
    detail = f"{N} samples x {len(METHODS)} methods x {STEPS} epochs, {SIZE}x{SIZE}; median of {rounds} fresh browsers"
    return [
        row("tfcam.summary.explanation, 20 steps (s)", log_s, "", "writing the records"),
        row("first paint, plugin page (s)", statistics.median(entry), "<= 2", detail),
        row("first paint, TensorBoard app at /#tfcam (s)", statistics.median(tab), "<= 2",
            "includes loading TensorBoard's own frontend"),
        row("write_report (s)", report_s, "", f"{info['bytes'] / 1e6:.1f} MB, {info['samples']} sample views"),
        row("first paint, report.html from disk (s)", statistics.median(rep), "<= 2", "the whole bundle parsed"),
    ]


if __name__ == "__main__":
    r = 3
    if "--rounds" in sys.argv:
        r = int(sys.argv[sys.argv.index("--rounds") + 1])
    print_rows("tfcam tab: time to first paint", rows(r))
