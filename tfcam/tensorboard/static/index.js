// tfcam explanation viewer: a plain ES module (no build step).
// In TensorBoard, the plugin entry page imports it and calls render(); `tfcam report`
// inlines the same code and calls mount(root, staticSource(bundle)).

const CSS = `
.tfcam{font:13px/1.4 Roboto,Arial,sans-serif;color:#212121;padding:8px 12px;box-sizing:border-box}
.tfcam *{box-sizing:border-box}
.tfcam [hidden]{display:none !important}
.tfcam-bar{display:flex;flex-wrap:wrap;gap:10px 16px;align-items:center;margin-bottom:8px}
.tfcam-bar label{display:flex;gap:6px;align-items:center}
.tfcam-warn{background:#fff3e0;border-left:4px solid #ef6c00;padding:6px 10px;margin:6px 0;white-space:pre-wrap}
.tfcam-error{background:#ffebee;border-left:4px solid #c62828;padding:6px 10px;margin:6px 0}
.tfcam-empty{padding:24px;max-width:760px}
.tfcam-empty code,.tfcam-empty pre{background:#f5f5f5;padding:2px 4px}
.tfcam-main{display:flex;gap:16px;align-items:flex-start}
.tfcam-list{width:300px;flex:none}
.tfcam-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(64px,1fr));gap:4px}
.tfcam-card{border:2px solid #e0e0e0;border-radius:3px;padding:2px;cursor:pointer;font-size:11px;text-align:center;background:#fff}
.tfcam-card img{width:100%;image-rendering:auto;display:block}
.tfcam-card.sel{border-color:#ef6c00}
.tfcam-card.wrong{background:#ffebee}
.tfcam-pager{display:flex;gap:6px;align-items:center;margin:6px 0}
.tfcam-detail{flex:1;min-width:0}
.tfcam-view{display:flex;gap:16px;flex-wrap:wrap}
.tfcam-canvas{width:320px;height:auto;border:1px solid #ddd;image-rendering:auto;background:#000}
.tfcam-info td{padding:1px 8px 1px 0}
.tfcam-methods,.tfcam-strip{display:flex;gap:8px;flex-wrap:wrap;margin-top:8px}
.tfcam-tile{text-align:center;font-size:11px;cursor:pointer}
.tfcam-tile canvas{width:120px;border:2px solid transparent;background:#000}
.tfcam-tile.sel canvas{border-color:#ef6c00}
.tfcam-strip .tfcam-tile canvas{width:72px}
.tfcam h4{margin:10px 0 4px}
`;

const EMPTY_HELP = `
<h3>No tfcam explanations here yet</h3>
<p>Log some during training with the callback:</p>
<pre>cb = tfcam.callbacks.HeatmapCallback(x_val[:16], methods=("gradcam", "layercam"),
                                     log_dir="logs/run1", class_names=names)
model.fit(x, y, epochs=10, callbacks=[cb])</pre>
<p>or in a custom loop with <code>tfcam.summary.explanation(name, images, maps, step=...)</code>,
or point TensorBoard at an <code>explain_dataset(..., output=...)</code> directory:
<code>tfcam view runs/val_cams</code>.</p>`;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

// ------------------------------------------------------------------ data sources
export function serverSource(base = "") {
  const get = async (route, params = {}) => {
    const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null && v !== "")).toString();
    const r = await fetch(`${base}${route}${qs ? "?" + qs : ""}`);
    let body;
    try { body = await r.json(); } catch (e) { throw new Error(`${route}: HTTP ${r.status}`); }
    if (!r.ok) throw new Error(body && body.error ? body.error : `${route}: HTTP ${r.status}`);
    return body;
  };
  return {
    kind: "server",
    get,
    thumb: (run, set, step, index) =>
      `${base}image?` + new URLSearchParams({ run, set, step, index, thumb: "1" }).toString(),
  };
}

function sortRows(rows, q) {
  let out = rows.slice();
  const truth = (r) => (r.label != null ? r.label : r.target);
  if (q.filter === "misclassified") out = out.filter((r) => r.correct === false);
  else if (q.filter === "correct") out = out.filter((r) => r.correct === true);
  if (q.cls != null && q.cls !== "" && q.cls !== "all") out = out.filter((r) => truth(r) === Number(q.cls));
  const by = (f) => out.sort((a, b) => f(a) - f(b) || a.index - b.index);
  if (q.sort === "score") by((r) => (r.score == null ? Infinity : r.score));
  else if (q.sort === "energy_outside") by((r) => (r.energy == null ? Infinity : r.energy));
  else if (q.sort === "misclassified") by((r) => (r.correct === false ? 0 : 1));
  return out;
}

export function staticSource(bundle) {
  const K = (...a) => a.join("\u0001");
  const deref = (v) => (typeof v === "string" && v[0] === "@" ? (bundle.images || {})[v.slice(1)] : v);
  const get = async (route, p = {}) => {
    if (route === "runs") return bundle.runs;
    if (route === "colormaps") return bundle.colormaps;
    if (route === "samples") {
      const rows = bundle.tables[K(p.run, p.set, p.step)];
      if (!rows) throw new Error(`step ${p.step} of ${p.run}/${p.set} is not in this report`);
      const all = sortRows(rows, p);
      const off = Number(p.offset || 0), lim = Number(p.limit || 48);
      return { total: all.length, total_all: rows.length, offset: off, rows: all.slice(off, off + lim) };
    }
    if (route === "sample") {
      const s = bundle.samples[K(p.run, p.set, p.step, p.index)];
      if (!s) throw new Error(`sample ${p.index} at step ${p.step} is not in this report`);
      return { ...s, image: deref(s.image), mask: deref(s.mask) };
    }
    if (route === "history") {
      const run = bundle.runs.runs.find((r) => r.run === p.run);
      const set = run && run.sets.find((s) => s.set === p.set);
      const steps = [];
      for (const step of (set ? set.steps : [])) {
        const s = bundle.samples[K(p.run, p.set, step, p.index)];
        const m = s && s.maps.find((m) => m.key === p.key);
        if (m) steps.push({ step, png: m.png, min: m.min, max: m.max });
      }
      return { key: p.key, steps };
    }
    throw new Error(`unknown route ${route}`);
  };
  return {
    kind: "static",
    get,
    thumb: (run, set, step, index) => {
      const s = bundle.samples[K(run, set, step, index)];
      return s ? deref(s.image) : null;
    },
  };
}

// ------------------------------------------------------------------ pixels
const decoded = new Map();
function decode(url) {
  if (decoded.has(url)) return decoded.get(url);
  const p = new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      resolve(ctx.getImageData(0, 0, c.width, c.height));
    };
    img.onerror = () => reject(new Error("could not decode an image"));
    img.src = url;
  });
  decoded.set(url, p);
  if (decoded.size > 600) decoded.delete(decoded.keys().next().value);
  return p;
}

// rows [r0, r1) of an ImageData, as a new ImageData (a slice of a stacked volume)
function rows(data, r0, r1) {
  const w = data.width, out = new ImageData(w, r1 - r0);
  out.data.set(data.data.subarray(r0 * w * 4, r1 * w * 4));
  return out;
}

function colorizeMap(mapData, lut) {
  const out = new ImageData(mapData.width, mapData.height);
  const s = mapData.data, d = out.data;
  for (let i = 0; i < s.length; i += 4) {
    const v = s[i] * 3;
    d[i] = lut[v]; d[i + 1] = lut[v + 1]; d[i + 2] = lut[v + 2]; d[i + 3] = 255;
  }
  return out;
}

function toCanvas(data) {
  const c = document.createElement("canvas");
  c.width = data.width; c.height = data.height;
  c.getContext("2d").putImageData(data, 0, 0);
  return c;
}

function checksum(canvas) {
  const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let s = 0;
  for (let i = 0; i < d.length; i += 4) s += d[i] + 2 * d[i + 1] + 3 * d[i + 2];
  return s;
}

// draws image + map (2-D, a slice of 3-D, or a 1-D line plot) into `canvas`
async function paint(canvas, { image, map, shape, lut, opacity, slice = 0, size = 320 }) {
  const ctx = canvas.getContext("2d");
  const m = await decode(map);
  const img = image ? await decode(image) : null;
  if (shape.length === 1) {
    const W = Math.max(size, 2), H = Math.round(size * 0.45);
    canvas.width = W; canvas.height = H;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    const L = m.width, x = (i) => (i / Math.max(L - 1, 1)) * (W - 1);
    ctx.globalAlpha = opacity;
    for (let i = 0; i < L; i++) { // the map as a coloured band under the signal
      const v = m.data[i * 4] * 3;
      ctx.fillStyle = `rgb(${lut[v]},${lut[v + 1]},${lut[v + 2]})`;
      ctx.fillRect(x(i) - W / L / 2, 0, W / L + 1, H);
    }
    ctx.globalAlpha = 1;
    if (img) {
      ctx.strokeStyle = "#000"; ctx.lineWidth = 1.5; ctx.beginPath();
      for (let i = 0; i < img.width; i++) {
        const y = H - 4 - (img.data[i * 4] / 255) * (H - 8);
        i ? ctx.lineTo(x(i), y) : ctx.moveTo(x(i), y);
      }
      ctx.stroke();
    }
    ctx.strokeStyle = "#1565c0"; ctx.lineWidth = 1; ctx.beginPath();
    for (let i = 0; i < L; i++) {
      const y = H - 4 - (m.data[i * 4] / 255) * (H - 8);
      i ? ctx.lineTo(x(i), y) : ctx.moveTo(x(i), y);
    }
    ctx.stroke();
    return;
  }
  let mapData = m, imgData = img;
  if (shape.length === 3) {
    const [D, Hm] = shape, s = Math.min(Math.max(slice, 0), D - 1);
    mapData = rows(m, s * Hm, (s + 1) * Hm);
    if (img) { const Hi = img.height / D; imgData = rows(img, s * Hi, (s + 1) * Hi); }
  }
  const W = imgData ? imgData.width : mapData.width, H = imgData ? imgData.height : mapData.height;
  canvas.width = W; canvas.height = H;
  ctx.imageSmoothingEnabled = true;
  if (imgData) ctx.drawImage(toCanvas(imgData), 0, 0, W, H);
  ctx.globalAlpha = imgData ? opacity : 1;
  ctx.drawImage(toCanvas(colorizeMap(mapData, lut)), 0, 0, W, H);
  ctx.globalAlpha = 1;
}

// ------------------------------------------------------------------ the viewer
export function mount(root, source, options = {}) {
  root.innerHTML = "";
  root.append(el("style", { text: CSS }));
  const app = el("div", { class: "tfcam", id: "tfcam" });
  root.append(app);
  const st = {
    runs: [], warnings: [], sel: null, stepIdx: 0, sort: "index", filter: "all", cls: "all",
    offset: 0, limit: 48, page: null, index: null, key: null, opacity: 0.5, cmap: "jet", slice: 0,
    sample: null, luts: {}, seq: 0,
  };
  const ui = {};

  const setStatus = () => {
    const set = st.sel && st.sel.set;
    ui.status.textContent = set
      ? `run ${st.sel.run} · set ${set.set} · step ${set.steps[st.stepIdx]} · sample ${st.index} · ` +
        `map ${st.key} · opacity ${st.opacity.toFixed(2)} · ${st.cmap}`
      : "";
  };
  const showError = (err) => {
    ui.error.hidden = !err;
    ui.error.textContent = err ? String(err.message || err) : "";
  };
  const className = (c) => {
    if (c == null) return "–";
    const names = st.sel && st.sel.set.class_names;
    return names && names[c] != null ? `${names[c]} (${c})` : String(c);
  };
  const fmt = (v) => (v == null ? "–" : Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(3));
  const step = () => st.sel.set.steps[st.stepIdx];

  function buildShell() {
    ui.runSel = el("select", { id: "tfcam-run", onchange: () => selectSet(Number(ui.runSel.value)) });
    ui.step = el("input", { id: "tfcam-step", type: "range", min: "0", max: "0", value: "0",
      oninput: () => { st.stepIdx = Number(ui.step.value); loadPage(false); } });
    ui.stepLabel = el("span", { id: "tfcam-step-label" });
    ui.sort = el("select", { id: "tfcam-sort", onchange: () => { st.sort = ui.sort.value; st.offset = 0; loadPage(true); } });
    ui.filter = el("select", { id: "tfcam-filter", onchange: () => { st.filter = ui.filter.value; st.offset = 0; loadPage(true); } });
    for (const f of ["all", "misclassified", "correct"]) ui.filter.append(el("option", { value: f, text: f }));
    ui.cls = el("select", { id: "tfcam-class", onchange: () => { st.cls = ui.cls.value; st.offset = 0; loadPage(true); } });
    ui.cmap = el("select", { id: "tfcam-colormap", onchange: () => { st.cmap = ui.cmap.value; redraw(); } });
    ui.opacity = el("input", { id: "tfcam-opacity", type: "range", min: "0", max: "1", step: "0.05",
      value: String(st.opacity), oninput: () => { st.opacity = Number(ui.opacity.value); redraw(); } });
    ui.slice = el("input", { id: "tfcam-slice", type: "range", min: "0", max: "0", value: "0",
      oninput: () => { st.slice = Number(ui.slice.value); redraw(); } });
    ui.sliceLabel = el("label", {}, "slice", ui.slice);
    ui.sliceLabel.hidden = true;
    ui.bar = el("div", { class: "tfcam-bar" },
      el("label", {}, "run", ui.runSel), el("label", {}, "epoch", ui.step, ui.stepLabel),
      el("label", {}, "sort", ui.sort), el("label", {}, "filter", ui.filter), el("label", {}, "class", ui.cls),
      el("label", {}, "colormap", ui.cmap), el("label", {}, "opacity", ui.opacity), ui.sliceLabel);
    ui.warn = el("div", { class: "tfcam-warn", id: "tfcam-warnings" }); ui.warn.hidden = true;
    ui.error = el("div", { class: "tfcam-error", id: "tfcam-error" }); ui.error.hidden = true;
    ui.note = el("div", { id: "tfcam-note" });
    ui.grid = el("div", { class: "tfcam-grid", id: "tfcam-samples" });
    ui.pageLabel = el("span", { id: "tfcam-page" });
    ui.prev = el("button", { text: "‹ prev", onclick: () => { st.offset = Math.max(0, st.offset - st.limit); loadPage(true); } });
    ui.next = el("button", { text: "next ›", onclick: () => { st.offset += st.limit; loadPage(true); } });
    ui.main = el("canvas", { class: "tfcam-canvas", id: "tfcam-main" });
    ui.info = el("table", { class: "tfcam-info", id: "tfcam-info" });
    ui.methods = el("div", { class: "tfcam-methods", id: "tfcam-methods" });
    ui.strip = el("div", { class: "tfcam-strip", id: "tfcam-strip" });
    ui.status = el("div", { id: "tfcam-status", style: "color:#757575;margin-top:6px" });
    ui.body = el("div", { class: "tfcam-main" },
      el("div", { class: "tfcam-list" }, el("div", { class: "tfcam-pager" }, ui.prev, ui.pageLabel, ui.next), ui.grid),
      el("div", { class: "tfcam-detail" },
        el("div", { class: "tfcam-view" }, ui.main, ui.info),
        el("h4", { text: "All maps of this sample" }), ui.methods,
        el("h4", { text: "This map across epochs" }), ui.strip, ui.status));
    ui.empty = el("div", { class: "tfcam-empty", id: "tfcam-empty" }); ui.empty.hidden = true;
    app.append(ui.bar, ui.warn, ui.error, ui.note, ui.empty, ui.body);
    document.addEventListener("keydown", onKey);
  }

  function onKey(e) {
    const tag = (e.target && e.target.tagName) || "";
    if (!st.page || tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
    const rowsNow = st.page.rows, pos = rowsNow.findIndex((r) => r.index === st.index);
    if (e.key === "ArrowRight" || e.key === "j") {
      if (pos + 1 < rowsNow.length) selectSample(rowsNow[pos + 1].index);
      else if (st.offset + st.limit < st.page.total) { st.offset += st.limit; loadPage(true); }
    } else if (e.key === "ArrowLeft" || e.key === "k") {
      if (pos > 0) selectSample(rowsNow[pos - 1].index);
    } else if (e.key === "ArrowUp" || e.key === "ArrowDown") {
      const d = e.key === "ArrowUp" ? 1 : -1, n = st.sel.set.steps.length;
      st.stepIdx = Math.min(n - 1, Math.max(0, st.stepIdx + d));
      ui.step.value = String(st.stepIdx); loadPage(false);
    } else if (e.key === "m") {
      const keys = st.sel.set.keys, i = keys.indexOf(st.key);
      st.key = keys[(i + 1) % keys.length]; redraw(); loadStrip();
    } else return;
    e.preventDefault();
  }

  async function start() {
    buildShell();
    try {
      const [runs, cmaps] = await Promise.all([source.get("runs"), source.get("colormaps")]);
      st.luts = cmaps;
      for (const name of Object.keys(cmaps)) ui.cmap.append(el("option", { value: name, text: name }));
      ui.cmap.value = st.cmap;
      st.warnings = runs.warnings || [];
      ui.warn.hidden = !st.warnings.length;
      ui.warn.textContent = st.warnings.length ? "Skipped:\n" + st.warnings.join("\n") : "";
      if (options.note) ui.note.textContent = options.note;
      st.sets = [];
      for (const r of runs.runs) for (const s of r.sets) st.sets.push({ run: r.run, kind: r.kind, set: s });
      if (!st.sets.length) {
        ui.empty.hidden = false; ui.body.hidden = true; ui.bar.hidden = true;
        ui.empty.innerHTML = EMPTY_HELP + `<p style="color:#757575">Looked in: ${runs.path || "(unknown)"}</p>`;
        root.dataset.ready = "1";
        return;
      }
      st.sets.forEach((s, i) => ui.runSel.append(el("option", { value: String(i), text: `${s.run} · ${s.set.set}` })));
      await selectSet(0);
    } catch (err) {
      showError(err);
    }
    root.dataset.ready = "1";
  }

  async function selectSet(i) {
    st.sel = st.sets[i];
    const set = st.sel.set;
    st.stepIdx = set.steps.length - 1; st.offset = 0; st.index = null; st.key = set.keys[0];
    ui.step.max = String(set.steps.length - 1); ui.step.value = String(st.stepIdx);
    ui.sort.innerHTML = "";
    const label = { index: "sample order", score: "lowest score", energy_outside: "most energy outside the mask",
      misclassified: "misclassified first" };
    for (const s of set.sorts) ui.sort.append(el("option", { value: s, text: label[s] || s }));
    st.sort = set.sorts.includes(st.sort) ? st.sort : "index"; ui.sort.value = st.sort;
    ui.filter.disabled = !set.sorts.includes("misclassified");
    if (ui.filter.disabled) { st.filter = "all"; ui.filter.value = "all"; }
    ui.cls.innerHTML = ""; ui.cls.append(el("option", { value: "all", text: "all" }));
    for (const c of set.classes || []) ui.cls.append(el("option", { value: String(c), text: className(c) }));
    st.cls = "all";
    const is3d = set.map_shape.length === 3;
    ui.sliceLabel.hidden = !is3d;
    if (is3d) { ui.slice.max = String(set.map_shape[0] - 1); st.slice = Math.floor(set.map_shape[0] / 2); ui.slice.value = String(st.slice); }
    await loadPage(true);
  }

  async function loadPage(resetSelection) {
    const set = st.sel.set, seq = ++st.seq;
    ui.stepLabel.textContent = `${step()} (${st.stepIdx + 1}/${set.steps.length})`;
    try {
      const page = await source.get("samples", { run: st.sel.run, set: set.set, step: step(), sort: st.sort,
        filter: st.filter, cls: st.cls, offset: st.offset, limit: st.limit });
      if (seq !== st.seq) return;
      showError(null);
      st.page = page;
      const end = Math.min(page.offset + page.rows.length, page.total);
      ui.pageLabel.textContent = `${page.total ? page.offset + 1 : 0}–${end} of ${page.total}` +
        (page.total !== page.total_all ? ` (filtered from ${page.total_all})` : "");
      ui.prev.disabled = page.offset === 0; ui.next.disabled = end >= page.total;
      ui.grid.innerHTML = "";
      for (const r of page.rows) {
        const wrong = r.correct === false;
        const thumb = set.has_image && set.map_shape.length === 2 ? source.thumb(st.sel.run, set.set, step(), r.index) : null;
        const card = el("div", { class: "tfcam-card" + (wrong ? " wrong" : ""), "data-index": String(r.index),
          title: `target ${className(r.target)} · predicted ${className(r.prediction)}`,
          onclick: () => selectSample(r.index) },
          thumb ? el("img", { src: thumb, loading: "lazy", alt: "" }) : null,
          el("div", { text: `#${r.index}` }),
          el("div", { text: r.prediction != null ? className(r.prediction).split(" (")[0] : fmt(r.score) }));
        ui.grid.append(card);
      }
      if (!page.rows.length) { ui.grid.append(el("div", { text: "no samples match", id: "tfcam-nomatch" })); return; }
      const keep = !resetSelection && page.rows.some((r) => r.index === st.index);
      await selectSample(keep ? st.index : page.rows[0].index, !resetSelection);
    } catch (err) { showError(err); }
  }

  async function selectSample(index, keepStrip = false) {
    st.index = index;
    for (const c of ui.grid.children) c.classList && c.classList.toggle("sel", c.dataset.index === String(index));
    const set = st.sel.set, seq = ++st.seq;
    try {
      const s = await source.get("sample", { run: st.sel.run, set: set.set, step: step(), index });
      if (seq !== st.seq) return;
      showError(null);
      st.sample = s;
      if (!s.maps.some((m) => m.key === st.key)) st.key = s.maps.length ? s.maps[0].key : null;
      renderInfo();
      await redraw();
      if (!keepStrip || !ui.strip.children.length) await loadStrip(); else markStrip();
    } catch (err) { showError(err); }
  }

  function renderInfo() {
    const s = st.sample, rowsI = [["sample", `#${s.index}`], ["step", String(s.step)]];
    if (s.label != null) rowsI.push(["label", className(s.label)]);
    if (s.target != null) rowsI.push(["target", className(s.target)]);
    if (s.prediction != null) rowsI.push(["prediction", className(s.prediction) + (s.pred_score != null ? ` · ${fmt(s.pred_score)}` : "")]);
    if (s.score != null) rowsI.push(["explained score", fmt(s.score)]);
    if (s.energy) for (const [k, v] of Object.entries(s.energy)) rowsI.push([`energy in mask (${k})`, (100 * v).toFixed(1) + " %"]);
    if (!s.image) rowsI.push(["image", "not logged (map only)"]);
    ui.info.innerHTML = "";
    for (const [k, v] of rowsI) ui.info.append(el("tr", {}, el("td", { text: k }), el("td", { text: v, "data-field": k })));
  }

  async function redraw() {
    const s = st.sample;
    if (!s) return;
    const lut = st.luts[st.cmap];
    const main = s.maps.find((m) => m.key === st.key) || s.maps[0];
    if (!main) return;
    await paint(ui.main, { image: s.image, map: main.png, shape: main.shape, lut, opacity: st.opacity, slice: st.slice });
    ui.main.dataset.checksum = String(checksum(ui.main));
    ui.main.dataset.step = String(s.step); ui.main.dataset.index = String(s.index);
    ui.main.dataset.opacity = String(st.opacity); ui.main.dataset.key = main.key;
    if (!window.tfcamFirstPaint) window.tfcamFirstPaint = performance.now();
    ui.methods.innerHTML = "";
    for (const m of s.maps) {
      const c = el("canvas");
      const tile = el("div", { class: "tfcam-tile" + (m.key === main.key ? " sel" : ""), "data-key": m.key,
        onclick: () => { st.key = m.key; redraw(); loadStrip(); } }, c, el("div", { text: m.key }));
      ui.methods.append(tile);
      await paint(c, { image: s.image, map: m.png, shape: m.shape, lut, opacity: st.opacity, slice: st.slice, size: 120 });
    }
    await drawStrip();
    setStatus();
  }

  async function loadStrip() {
    const set = st.sel.set;
    if (set.steps.length < 2 || !st.key) { ui.strip.innerHTML = ""; st.history = null; return; }
    try {
      st.history = await source.get("history", { run: st.sel.run, set: set.set, index: st.index, key: st.key });
      await drawStrip();
    } catch (err) { showError(err); }
  }

  async function drawStrip() {
    if (!st.history || !st.sample) return;
    const lut = st.luts[st.cmap], shape = (st.sample.maps.find((m) => m.key === st.key) || {}).shape;
    if (!shape) return;
    ui.strip.innerHTML = "";
    for (const h of st.history.steps) {
      const c = el("canvas");
      const tile = el("div", { class: "tfcam-tile", "data-step": String(h.step), onclick: () => {
        st.stepIdx = st.sel.set.steps.indexOf(h.step); ui.step.value = String(st.stepIdx); loadPage(false);
      } }, c, el("div", { text: `epoch ${h.step}` }));
      ui.strip.append(tile);
      await paint(c, { image: st.sample.image, map: h.png, shape, lut, opacity: st.opacity, slice: st.slice, size: 72 });
    }
    markStrip();
  }

  function markStrip() {
    for (const t of ui.strip.children) t.classList.toggle("sel", Number(t.dataset.step) === st.sample.step);
  }

  start();
  return st;
}

export async function render() {
  mount(document.body, serverSource(""));
}
