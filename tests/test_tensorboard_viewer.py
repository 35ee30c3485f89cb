"""The tfcam TensorBoard plugin against a real TensorBoard server on loopback, and the viewer in headless Chromium.

The log directory holds a short ``fit()`` with ``HeatmapCallback``, custom-loop runs with
1-D and 3-D maps (``tfcam.summary.explanation``), ``explain_dataset`` shards, and a broken
shard directory. TensorBoard is started as ``tensorboard --logdir`` when tfcam's
``tensorboard_plugins`` entry point is installed (``pip install -e .``), else as
``python -m tfcam.tensorboard.serve`` (the same server with the plugin added explicitly).

The browser tests need Debian's ``chromium`` (``make browser`` installs it; ``.ci/run``
calls it); without it they are skipped with that reason.
"""

import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf
from browser import Chromium, chromium_path, tensorboard_server
from conftest import small_cnn

import tfcam
from tfcam.callbacks import HeatmapCallback
from tfcam.tensorboard import write_report

pytestmark = pytest.mark.slow
RUN = "run1/heatmaps"


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logs")
    rng = np.random.default_rng(0)
    x, y, masks = tfcam.datasets.shapes(96, image_size=48, seed=0)
    model = small_cnn(input_shape=(48, 48, 3))
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy")
    cb = HeatmapCallback((x[:8], y[:8]), methods=("gradcam", "gradcam++", "layercam"), log_dir=str(tmp / "run1"),
                         class_names=list(tfcam.datasets.SHAPE_NAMES), masks=masks[:8])
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[cb])
    assert cb.failures == []
    # custom loops: 1-D signals and 3-D volumes
    w = tf.summary.create_file_writer(str(tmp / "signals"))
    with w.as_default():
        for step in range(2):
            sig = np.sin(np.linspace(0, 6, 40))[None, :, None].repeat(3, 0) * (step + 1)
            tfcam.summary.explanation("sig", sig.astype(np.float32), {"gradcam": rng.uniform(size=(3, 40))},
                                      step=step, targets=[0, 1, 0])
        tfcam.summary.explanation("vol", rng.uniform(size=(2, 4, 8, 8, 1)), {"gradcam": rng.uniform(size=(2, 4, 8, 8))},
                                  step=0)
    w.close()
    # a whole dataset, in shards (40 examples, 16 per shard)
    ds = tf.data.Dataset.from_tensor_slices((x[:20].repeat(2, 0), y[:20].repeat(2, 0))).batch(8)
    explainer = tfcam.Explainer(model)
    explainer.explain_dataset(ds, methods=("gradcam", "layercam"), output=str(tmp / "val_cams"), shard_size=16,
                              verbose=0)
    # a shards directory with a broken shard
    shutil.copytree(tmp / "val_cams", tmp / "broken_cams")
    with open(tmp / "broken_cams" / "shard-00001.npz", "r+b") as f:
        f.truncate(100)
    return tmp


@pytest.fixture(scope="module")
def server(logdir):
    with tensorboard_server(str(logdir), str(logdir / "tensorboard.log")) as url:
        yield url


def get(url, route, **params):
    """(status, parsed JSON or bytes, content type) of a plugin route."""
    full = f"{url}/data/plugin/tfcam/{route}" + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(full, timeout=30) as r:
            body, status, ctype = r.read(), r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        body, status, ctype = err.read(), err.code, err.headers.get("Content-Type", "")
    return status, (json.loads(body) if "json" in ctype else body), ctype


# ---------------------------------------------------------------------------- HTTP routes
def test_tab_is_listed_as_a_dynamic_plugin(server):
    with urllib.request.urlopen(server + "/data/plugins_listing") as r:
        listing = json.loads(r.read())
    assert listing["tfcam"]["enabled"] is True
    assert listing["tfcam"]["loading_mechanism"] == {"type": "IFRAME", "module_path": "/data/plugin/tfcam/index.js"}
    status, js, ctype = get(server, "index.js")
    assert status == 200 and "javascript" in ctype and b"export async function render" in js


def test_runs_route_lists_events_and_shards_with_warnings(server):
    status, runs, _ = get(server, "runs")
    assert status == 200
    by_run = {r["run"]: r for r in runs["runs"]}
    assert set(by_run) == {RUN, "signals", "val_cams", "broken_cams"}
    s = by_run[RUN]["sets"][0]
    assert s["steps"] == [0, 1, 2] and s["n"] == 8 and s["class_names"] == list(tfcam.datasets.SHAPE_NAMES)
    assert {x["set"]: x["map_shape"] for x in by_run["signals"]["sets"]} == {"sig": [40], "vol": [4, 8, 8]}
    assert by_run["val_cams"]["kind"] == "shards" and by_run["val_cams"]["sets"][0]["n"] == 40
    assert by_run["broken_cams"]["sets"][0]["n"] == 24  # shard 1 (16 examples) skipped
    assert any("shard-00001.npz" in w and "broken_cams" in w for w in runs["warnings"])


def test_samples_sample_history_and_image_routes(server):
    status, page, _ = get(server, "samples", run="val_cams", set="dataset", step=0, sort="score", offset=10, limit=12)
    assert status == 200 and page["total"] == 40 and len(page["rows"]) == 12
    shards = tfcam.ExplanationShards(os.path.join(page_root(server), "val_cams")).load()
    order = np.argsort(shards.scores, kind="stable")
    assert [r["index"] for r in page["rows"]] == order[10:22].tolist()
    status, smp, _ = get(server, "sample", run="val_cams", set="dataset", step=0, index=37)
    assert status == 200 and smp["image"] is None and [m["key"] for m in smp["maps"]] == ["gradcam", "layercam"]
    png = __import__("base64").b64decode(smp["maps"][0]["png"].split(",", 1)[1])
    q = tf.io.decode_png(png).numpy()[..., 0]
    raw = shards["gradcam"][37]
    back = smp["maps"][0]["min"] + q / 255 * (smp["maps"][0]["max"] - smp["maps"][0]["min"])
    assert np.max(np.abs(back - raw)) <= (raw.max() - raw.min()) / 255 + 1e-6
    status, hist, _ = get(server, "history", run=RUN, set="samples", index=2, key="gradcam/c2")
    assert status == 200 and [h["step"] for h in hist["steps"]] == [0, 1, 2]
    status, png, ctype = get(server, "image", run=RUN, set="samples", step=1, index=2)
    assert status == 200 and ctype == "image/png" and tf.io.decode_png(png).shape == (48, 48, 3)


def page_root(server):
    _, runs, _ = get(server, "runs")
    return runs["path"]


@pytest.mark.parametrize("route,params,match", [
    ("sample", {"run": "nope", "set": "samples", "step": 0, "index": 0}, "known run"),
    ("sample", {"run": RUN, "set": "samples", "step": 99, "index": 0}, "logged step"),
    ("sample", {"run": RUN, "set": "samples", "step": 0, "index": 8}, "index in [0, 8)"),
    ("sample", {"run": RUN, "set": "samples", "step": "x", "index": 0}, "integer step"),
    ("sample", {"run": "val_cams", "set": "dataset", "step": 0, "index": 40}, "sample index"),
    ("samples", {"run": RUN, "set": "samples", "step": 0, "sort": "best"}, "sort in"),
    ("samples", {"run": RUN}, "missing"),
    ("history", {"run": RUN, "set": "samples", "index": 0, "key": "nope"}, "map key"),
    ("image", {"run": RUN, "set": "samples", "step": 0, "index": -1}, "index in"),
])
def test_bad_requests_get_400_with_a_message(server, route, params, match):
    status, body, ctype = get(server, route, **params)
    assert status == 400 and "json" in ctype
    assert match in body["error"] and "Traceback" not in body["error"]


# ---------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def browser():
    if chromium_path() is None:
        pytest.skip("chromium is not installed and could not be installed: run `make browser` "
                    "(apt-get install -y chromium) to run the viewer's browser tests")
    with Chromium() as b:
        yield b


FRAME = """(() => { const find = (r) => { for (const e of r.querySelectorAll('*')) {
  if (e.tagName === 'IFRAME' && e.src.includes('plugin_entry')) return e;
  if (e.shadowRoot) { const f = find(e.shadowRoot); if (f) return f; } } return null; };
  const f = find(document); return f && f.contentDocument; })()"""


def _doc(inside_tb):
    return f"{FRAME}" if inside_tb else "document"


def exercise_viewer(b, doc, expected_cards, misclassified):
    """Counts samples, moves the opacity and epoch sliders and switches a filter; reads it all back."""
    q = lambda sel: f"{doc}.querySelector({sel!r})"  # noqa: E731
    b.wait_for(f"{doc} && {doc}.body.dataset.ready === '1' && {q('#tfcam-main')}.dataset.checksum", timeout=60)
    assert b.eval(f"{doc}.querySelectorAll('#tfcam-samples .tfcam-card').length") == expected_cards
    assert b.eval(f"{q('#tfcam-warnings')}.hidden") is False  # the broken shard is reported
    before = b.eval(f"{q('#tfcam-main')}.dataset.checksum")
    b.eval(f"(() => {{ const s = {q('#tfcam-opacity')}; s.value = '0.9'; s.dispatchEvent(new Event('input')); }})()")
    b.wait_for(f"{q('#tfcam-main')}.dataset.opacity === '0.9'")
    after = b.eval(f"{q('#tfcam-main')}.dataset.checksum")
    assert after != before
    assert "opacity 0.90" in b.wait_for(f"{q('#tfcam-status')}.textContent.includes('opacity 0.90') && "
                                        f"{q('#tfcam-status')}.textContent")
    assert b.eval(f"{q('#tfcam-main')}.dataset.step") == "2"
    b.eval(f"(() => {{ const s = {q('#tfcam-step')}; s.value = '0'; s.dispatchEvent(new Event('input')); }})()")
    b.wait_for(f"{q('#tfcam-main')}.dataset.step === '0'")
    assert b.eval(f"{q('#tfcam-step-label')}.textContent").startswith("0 (1/3)")
    assert b.eval(f"{doc}.querySelectorAll('#tfcam-strip .tfcam-tile').length") == 3
    assert b.eval(f"{doc}.querySelectorAll('#tfcam-methods .tfcam-tile').length") == 3
    b.eval(f"(() => {{ const s = {q('#tfcam-filter')}; s.value = 'misclassified'; "
           "s.dispatchEvent(new Event('change')); })()")
    b.wait_for(f"{doc}.querySelectorAll('#tfcam-samples .tfcam-card').length === {len(misclassified)} || "
               f"({len(misclassified)} === 0 && {q('#tfcam-nomatch')})")
    shown = b.eval(f"[...{doc}.querySelectorAll('#tfcam-samples .tfcam-card')].map(c => Number(c.dataset.index))")
    assert sorted(shown) == sorted(misclassified)
    b.eval(f"(() => {{ const s = {q('#tfcam-filter')}; s.value = 'all'; s.dispatchEvent(new Event('change')); }})()")
    b.wait_for(f"{doc}.querySelectorAll('#tfcam-samples .tfcam-card').length === {expected_cards}")
    # keyboard: the next sample
    first = b.eval(f"{q('#tfcam-main')}.dataset.index")
    b.eval(f"{doc}.dispatchEvent(new KeyboardEvent('keydown', {{key: 'ArrowRight', bubbles: true}}))")
    b.wait_for(f"{q('#tfcam-main')}.dataset.index !== {first!r}")


def _misclassified(server):
    _, page, _ = get(server, "samples", run=RUN, set="samples", step=0, filter="misclassified")
    return [r["index"] for r in page["rows"]]


def test_tab_in_tensorboard(server, browser, tmp_path):
    b = browser
    b.goto(server + "/#tfcam")
    exercise_viewer(b, FRAME, 8, _misclassified(server))
    # restore the last epoch and opacity 0.5, and take the README's screenshot
    b.eval(f"(() => {{ const d = {FRAME}; const o = d.querySelector('#tfcam-opacity'); o.value = '0.5'; "
           "o.dispatchEvent(new Event('input')); const s = d.querySelector('#tfcam-step'); s.value = '2'; "
           "s.dispatchEvent(new Event('input')); })()")
    b.wait_for(f"{FRAME}.querySelector('#tfcam-main').dataset.step === '2'")
    time.sleep(0.3)
    shot = b.screenshot(str(tmp_path / "tab.png"))
    assert open(shot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("TFCAM_SCREENSHOT")
    if target:
        shutil.copy(shot, target)


def test_other_runs_in_the_tab_1d_3d_and_shards(server, browser):
    b = browser
    b.goto(server + "/data/plugin_entry.html?name=tfcam")
    b.wait_for("document.body.dataset.ready === '1' && document.querySelector('#tfcam-main').dataset.checksum")
    options = b.eval("[...document.querySelectorAll('#tfcam-run option')].map(o => o.textContent)")
    assert options == ["run1/heatmaps · samples", "signals · sig", "signals · vol", "broken_cams · dataset",
                       "val_cams · dataset"]

    def select(i):
        b.eval(f"(() => {{ const s = document.querySelector('#tfcam-run'); s.value = '{i}'; "
               "s.dispatchEvent(new Event('change')); })()")

    select(1)  # 1-D: a line plot over the signal
    b.wait_for("document.querySelector('#tfcam-main').dataset.key === 'gradcam'")
    assert b.eval("document.querySelector('#tfcam-main').height") < b.eval("document.querySelector('#tfcam-main').width")
    select(2)  # 3-D: a slice slider
    b.wait_for("!document.querySelector('#tfcam-slice').closest('label').hidden && "
               "document.querySelector('#tfcam-main').width === 8")
    before = b.eval("document.querySelector('#tfcam-main').dataset.checksum")
    b.eval("(() => { const s = document.querySelector('#tfcam-slice'); s.value = '0'; "
           "s.dispatchEvent(new Event('input')); })()")
    b.wait_for(f"document.querySelector('#tfcam-main').dataset.checksum !== '{before}'")
    select(4)  # 40 shard examples: a page of 48 holds them; sort by lowest score
    b.wait_for("document.querySelectorAll('#tfcam-samples .tfcam-card').length === 40")
    assert b.eval("document.querySelector('#tfcam-page').textContent") == "1–40 of 40"
    b.eval("(() => { const s = document.querySelector('#tfcam-sort'); s.value = 'score'; "
           "s.dispatchEvent(new Event('change')); })()")
    _, page, _ = get(server, "samples", run="val_cams", set="dataset", step=0, sort="score")
    first = page["rows"][0]["index"]
    b.wait_for(f"document.querySelector('#tfcam-samples .tfcam-card').dataset.index === '{first}'")


def test_report_from_disk(server, browser, logdir, tmp_path):
    assert write_report(logdir, tmp_path / "report.html")["samples"] > 0
    b = browser
    b.goto("file://" + str(tmp_path / "report.html"))
    exercise_viewer(b, "document", 8, _misclassified(server))


def test_empty_logdir_shows_how_to_log(browser, tmp_path):
    write_report(tmp_path, tmp_path / "empty.html")
    browser.goto("file://" + str(tmp_path / "empty.html"))
    text = browser.wait_for("document.body.dataset.ready === '1' && document.querySelector('#tfcam-empty').innerText")
    assert "No tfcam explanations here yet" in text and "HeatmapCallback" in text
