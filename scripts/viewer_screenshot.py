"""Regenerates the README's screenshot of the TensorBoard "tfcam" tab, docs/img/viewer.png (CPU, 2-3 minutes).

    PYTHONPATH=. python scripts/viewer_screenshot.py [--out docs/img/viewer.png] [--epochs 6]

Trains ``tfcam.demo.build_demo_model`` on ``tfcam.datasets.shapes`` with the recipe of
``tfcam.demo.run_demo`` (3000 images, 10% for validation, batch 64, cosine decay over the
run) and ``HeatmapCallback`` (gradcam, gradcam++, layercam, with masks and class names) on
16 held-out images every epoch. Then starts TensorBoard with the tfcam plugin on that
log directory (as tests/test_tensorboard_viewer.py does), opens the tab in headless
Chromium (tests/browser.py; Debian's ``chromium``, ``make browser``), keeps the last
epoch, selects the correctly classified sample whose maps put the most energy inside
its mask, and saves a 1400x1000 PNG (quantized to 256 colours when over 400 KB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import numpy as np  # noqa: E402

N_TRAIN, N_TEST, N_SAMPLES, SIZE, BATCH = 3000, 200, 16, 64, 64
METHODS = ("gradcam", "gradcam++", "layercam")
WIDTH, HEIGHT, MAX_BYTES = 1400, 1000, 400_000
FRAME = """(() => { const find = (r) => { for (const e of r.querySelectorAll('*')) {
  if (e.tagName === 'IFRAME' && e.src.includes('plugin_entry')) return e;
  if (e.shadowRoot) { const f = find(e.shadowRoot); if (f) return f; } } return null; };
  const f = find(document); return f && f.contentDocument; })()"""


def train(log_dir: str, epochs: int, seed: int = 0) -> tuple[float, np.ndarray]:
    """Trains the demo CNN with HeatmapCallback logging to ``log_dir``; returns the held-out accuracy and sample masks."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from tfcam.callbacks import HeatmapCallback
    from tfcam.datasets import SHAPE_NAMES, shapes
    from tfcam.demo import build_demo_model

    x, y, _ = shapes(N_TRAIN, SIZE, seed=seed)
    xt, yt, mt = shapes(N_TEST, SIZE, seed=seed + 1)
    steps = int(np.ceil(int(0.9 * N_TRAIN) / BATCH)) * epochs
    model = build_demo_model(SIZE, len(SHAPE_NAMES), seed=seed, decay_steps=steps)
    # an (images, labels) tuple, so that the viewer shows the labels too
    cb = HeatmapCallback((xt[:N_SAMPLES], yt[:N_SAMPLES]), targets=yt[:N_SAMPLES], methods=METHODS, layer="last_conv",
                         log_dir=log_dir, every_n_epochs=1, max_images=N_SAMPLES, masks=mt[:N_SAMPLES],
                         class_names=list(SHAPE_NAMES), viewer=True)
    model.fit(x, y, epochs=epochs, batch_size=BATCH, validation_split=0.1, verbose=2, callbacks=[cb])
    if cb.failures:
        raise RuntimeError(f"HeatmapCallback failed: {cb.failures}")
    _, acc = model.evaluate(xt, yt, verbose=0, batch_size=128)
    return float(acc), mt[:N_SAMPLES]


def get(url: str, route: str, **params) -> dict:
    full = f"{url}/data/plugin/tfcam/{route}?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(full, timeout=30) as r:
        return json.loads(r.read())


def pick_sample(url: str, masks: np.ndarray) -> tuple[str, str, int, int, int]:
    """(run, set, last step, number of steps, index): the correct sample with the most map energy in its mask.

    Samples whose object touches the image border are passed over when others are left.
    """
    runs = get(url, "runs")
    if runs.get("warnings"):
        raise RuntimeError(f"the log directory has warnings: {runs['warnings']}")
    run = runs["runs"][0]
    s = run["sets"][0]
    last = s["steps"][-1]
    page = get(url, "samples", run=run["run"], set=s["set"], step=last, filter="correct", limit=N_SAMPLES)
    if not page["rows"]:
        raise RuntimeError("no correctly classified sample at the last epoch")
    inside = [r for r in page["rows"] if not (masks[r["index"]][[0, -1]].any() or masks[r["index"]][:, [0, -1]].any())]
    best = max(inside or page["rows"], key=lambda r: r["energy"] if r["energy"] is not None else -1.0)
    print(f"sample #{best['index']}: label {best['label']}, prediction {best['prediction']} "
          f"({best['pred_score']:.3f}), mean energy in mask {best['energy']:.3f}; "
          f"{page['total']}/{page['total_all']} correct at epoch {last}")
    return run["run"], s["set"], last, len(s["steps"]), best["index"]


def screenshot(url: str, index: int, n_steps: int, out: str) -> None:
    from browser import Chromium

    d = FRAME
    with Chromium(width=WIDTH, height=HEIGHT) as b:
        b.goto(url + "/#tfcam")
        b.wait_for(f"{d} && {d}.body.dataset.ready === '1' && {d}.querySelector('#tfcam-main').dataset.checksum",
                   timeout=90)
        if not b.eval(f"{d}.querySelector('#tfcam-warnings').hidden"):
            raise RuntimeError("the tab shows a warning: " + b.eval(f"{d}.querySelector('#tfcam-warnings').textContent"))
        if b.eval(f"{d}.querySelector('#tfcam-step').value") != str(n_steps - 1):
            raise RuntimeError("the tab did not open at the last epoch")
        card = f"{d}.querySelector('#tfcam-samples .tfcam-card[data-index=\"{index}\"]')"
        b.eval(f"{card}.click()")
        b.wait_for(f"{d}.querySelector('#tfcam-main').dataset.index === '{index}' && "
                   f"{d}.querySelectorAll('#tfcam-strip .tfcam-tile').length === {n_steps} && "
                   f"{d}.querySelectorAll('#tfcam-methods .tfcam-tile').length === {len(METHODS)} && "
                   f"{d}.querySelector('#tfcam-info').innerText.includes('energy in mask')", timeout=60)
        # every thumbnail loaded (lazy images inside the iframe)
        b.wait_for(f"[...{d}.querySelectorAll('#tfcam-samples img')].every(i => i.complete && i.naturalWidth > 0)",
                   timeout=60)
        time.sleep(0.5)
        print(b.eval(f"{d}.querySelector('#tfcam-info').innerText"))
        b.screenshot(out)


def shrink(path: str) -> None:
    """Quantizes the PNG to 256 colours when it is over MAX_BYTES."""
    if os.path.getsize(path) <= MAX_BYTES:
        return
    from PIL import Image

    with Image.open(path) as im:
        q = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    q.save(path, optimize=True)


def main() -> None:
    from browser import tensorboard_server

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "img", "viewer.png"))
    p.add_argument("--epochs", type=int, default=6)
    args = p.parse_args()
    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="tfcam-viewer-")
    try:
        logs = os.path.join(tmp, "logs")
        acc, masks = train(os.path.join(logs, "run1"), args.epochs)
        print(f"held-out accuracy {acc:.3f} after {args.epochs} epochs ({time.perf_counter() - t0:.0f} s)")
        with tensorboard_server(logs, os.path.join(tmp, "tensorboard.log")) as url:
            _, _, _, n_steps, index = pick_sample(url, masks)
            shot = os.path.join(tmp, "viewer.png")
            screenshot(url, index, n_steps, shot)
        shrink(shot)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        shutil.copy(shot, args.out)
        print(f"wrote {args.out} ({os.path.getsize(args.out) / 1000:.0f} KB) in {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
