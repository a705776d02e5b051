// fascicle viewer: Leaflet over the server's Deep Zoom tiles (CRS.Simple, level-0 pixels at
// the deepest zoom), the model's overlays as tile layers, and the slide's result in the panel.
// All text from results is set with textContent, never parsed as HTML.
"use strict";

const state = { map: null, info: null, slide: null, overlay: null, grid: null, outline: null };
window.fascicle = state;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function pretty(name) { return name.replace(/_/g, " "); }

function row(cells, numeric) {
  const tr = el("tr");
  cells.forEach((c, i) => tr.appendChild(el("td", c, numeric && numeric[i] ? "num" : "")));
  return tr;
}

async function loadSlides() {
  const slides = await getJSON("/api/slides");
  const list = document.getElementById("slide-list");
  list.replaceChildren();
  for (const s of slides) {
    let text = s.id;
    if (s.status === "ok") text += ` — ${s.indeterminate ? "indeterminate" : pretty(s.call)} ${s.probability.toFixed(2)}`;
    if (s.status === "error") text += " — error";
    const li = el("li", text, s.viewable ? "" : "unviewable");
    li.dataset.slide = s.id;
    if (s.problem) li.title = s.problem;
    if (s.viewable) li.addEventListener("click", () => { location.hash = encodeURIComponent(s.id); });
    list.appendChild(li);
  }
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = slides.find((s) => s.id === wanted && s.viewable) || slides.find((s) => s.viewable);
  if (first) await showSlide(first.id);
}

function toLatLng(x, y) { return state.map.unproject([x, y], state.info.max_level); }

async function showSlide(id) {
  const info = await getJSON(`/api/slides/${encodeURIComponent(id)}`);
  state.info = info;
  state.slide = id;
  for (const li of document.querySelectorAll("#slide-list li")) {
    li.classList.toggle("current", li.dataset.slide === id);
  }
  if (state.map) state.map.remove();
  const maxZ = info.max_level;
  const map = L.map("map", { crs: L.CRS.Simple, minZoom: 0, maxZoom: maxZ + 2, attributionControl: false });
  state.map = map;
  const bounds = L.latLngBounds(toLatLng(0, info.height), toLatLng(info.width, 0));
  const common = { tileSize: info.tile_size, maxNativeZoom: maxZ, maxZoom: maxZ + 2, bounds, noWrap: true };
  L.tileLayer(`/tiles/${encodeURIComponent(id)}/{z}/{x}_{y}.jpeg`, common).addTo(map);
  map.fitBounds(bounds);
  state.common = common;
  state.overlay = null;
  state.grid = null;
  state.outline = null;
  buildLayerChoice(info);
  showResult(info);
  document.getElementById("tile-info").replaceChildren(el("h2", "Tile"), el("p", "Click the slide to read a tile's probabilities.", "hint"));
  map.on("click", (e) => readTile(e.latlng));
}

function overlayLayer(name) {
  const opacity = document.getElementById("opacity").value / 100;
  return L.tileLayer(`/overlay/${encodeURIComponent(state.slide)}/${encodeURIComponent(name)}/{z}/{x}_{y}.png`,
    { ...state.common, opacity });
}

function buildLayerChoice(info) {
  const box = document.getElementById("layer-choice");
  box.replaceChildren();
  const heat = info.layers.filter((l) => l !== "grid");
  for (const name of ["none", ...heat]) {
    const label = el("label");
    const input = el("input");
    input.type = "radio";
    input.name = "overlay";
    input.value = name;
    input.checked = name === (heat.includes("class") ? "class" : "none");
    input.addEventListener("change", () => setOverlay(name));
    label.append(input, ` ${name === "none" ? "slide only" : name.startsWith("prob:") ? "P(" + pretty(name.slice(5)) + ")" : name === "class" ? "most likely class" : name}`);
    box.appendChild(label);
  }
  for (const [name, text, handler] of [["grid", "tile grid", toggleGrid], ["outline", "tissue outline", toggleOutline]]) {
    if (name === "grid" && !info.layers.includes("grid")) continue;
    const label = el("label");
    const input = el("input");
    input.type = "checkbox";
    input.id = `toggle-${name}`;
    input.addEventListener("change", () => handler(input.checked));
    label.append(input, ` ${text}`);
    box.appendChild(label);
  }
  setOverlay(heat.includes("class") ? "class" : "none");
}

function setOverlay(name) {
  if (state.overlay) state.map.removeLayer(state.overlay);
  state.overlay = name === "none" ? null : overlayLayer(name).addTo(state.map);
  state.overlayName = name;
  drawLegend(name);
}

function toggleGrid(on) {
  if (state.grid) state.map.removeLayer(state.grid);
  state.grid = on ? overlayLayer("grid").setOpacity(1).addTo(state.map) : null;
}

async function toggleOutline(on) {
  if (state.outline) state.map.removeLayer(state.outline);
  state.outline = null;
  if (!on) return;
  const lines = await getJSON(`/api/slides/${encodeURIComponent(state.slide)}/outline`);
  const latlngs = lines.map((line) => line.map(([x, y]) => toLatLng(x, y)));
  state.outline = L.polyline(latlngs, { color: "#000000", weight: 2, interactive: false }).addTo(state.map);
}

document.getElementById("opacity").addEventListener("input", (e) => {
  if (state.overlay) state.overlay.setOpacity(e.target.value / 100);
});

function drawLegend(name) {
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  const info = state.info;
  if (name === "class") {
    for (const c of info.classes) {
      const line = el("div");
      const swatch = el("span", null, "swatch");
      swatch.style.background = info.colours[c];
      line.append(swatch, pretty(c));
      legend.appendChild(line);
    }
    const line = el("div");
    const swatch = el("span", null, "swatch");
    swatch.style.background = info.ood_colour;
    line.append(swatch, "unlike the training data");
    legend.appendChild(line);
    legend.appendChild(el("div", "opacity: confidence of the tile's call", "hint"));
  } else if (name !== "none") {
    const ramp = el("div", null, "ramp");
    ramp.style.background = `linear-gradient(to right, ${info.ramp.join(", ")})`;
    const labels = el("div", null, "ramp-labels");
    const [lo, hi] = name === "attention" ? ["low", "high"] : ["0", "1"];
    labels.append(el("span", lo), el("span", name === "attention" ? "attention (viridis)" : "probability (viridis)"), el("span", hi));
    legend.append(ramp, labels);
  }
}

async function readTile(latlng) {
  const p = state.map.project(latlng, state.info.max_level);
  const box = document.getElementById("tile-info");
  box.replaceChildren(el("h2", "Tile"));
  if (p.x < 0 || p.y < 0 || p.x >= state.info.width || p.y >= state.info.height) {
    box.appendChild(el("p", "outside the slide", "hint"));
    return;
  }
  const tile = await getJSON(`/api/slides/${encodeURIComponent(state.slide)}/at?x=${p.x.toFixed(1)}&y=${p.y.toFixed(1)}`);
  if (!tile) {
    box.appendChild(el("p", `no tile at x ${Math.round(p.x)}, y ${Math.round(p.y)} (not tissue, or not tiled)`, "hint"));
    return;
  }
  box.appendChild(el("p", `tile ${tile.index} at x ${tile.x}, y ${tile.y} (level 0), ${tile.size} px`));
  const table = el("table");
  table.id = "tile-probabilities";
  for (const [c, v] of Object.entries(tile.probabilities)) table.appendChild(row([pretty(c), v.toFixed(3)], [false, true]));
  if (tile.attention !== undefined) table.appendChild(row(["attention", tile.attention.toExponential(2)], [false, true]));
  box.appendChild(table);
  if (tile.unlike_training_data) box.appendChild(el("p", "unlike the training data (out of distribution)", "indeterminate"));
  const popup = el("div");
  for (const [c, v] of Object.entries(tile.probabilities)) popup.appendChild(el("div", `${pretty(c)} ${v.toFixed(2)}`));
  L.popup().setLatLng(latlng).setContent(popup).openOn(state.map);
}

function showResult(info) {
  const call = document.getElementById("call");
  const ihc = document.getElementById("ihc");
  call.replaceChildren(el("h2", "Call"));
  ihc.replaceChildren();
  const r = info.result;
  call.appendChild(el("p", `${info.width} × ${info.height} px at ${info.mpp.toPrecision(3)} µm/px`, "hint"));
  if (!r) { call.appendChild(el("p", "no prediction for this slide (slide only)", "hint")); return; }
  if (r.status !== "ok") { call.appendChild(el("p", r.error, "error")); return; }
  const c = r.call;
  const line = el("p", null, c.indeterminate ? "indeterminate" : "");
  line.id = "call-line";
  line.appendChild(el("b", c.indeterminate ? "indeterminate" : pretty(c.label)));
  line.append(` — leading ${pretty(c.leading)} ${c.probability.toFixed(2)}; entity ${c.entity_name || pretty(c.entity)}`);
  call.appendChild(line);
  if (c.entity_note) call.appendChild(el("p", c.entity_note, "indeterminate"));
  if (c.reasons.length) {
    const ul = el("ul");
    for (const reason of c.reasons) ul.appendChild(el("li", reason, "indeterminate"));
    call.appendChild(ul);
  }
  const probs = el("table");
  for (const [k, v] of Object.entries(r.image.probabilities)) probs.appendChild(row([`image: ${pretty(k)}`, v.toFixed(3)], [false, true]));
  call.appendChild(probs);
  const qc = r.qc;
  call.appendChild(el("p", `${qc.n_tiles} tiles, ${qc.tissue_mm2.toFixed(2)} mm² tissue${qc.flags.length ? "; " + qc.flags.join("; ") : ""}`, "hint"));
  const d = r.differential;
  if (!d) return;
  ihc.appendChild(el("h2", "IHC differential"));
  ihc.appendChild(el("p", `panel: ${r.ihc.panel} (${r.ihc.markers_used})`));
  const table = el("table");
  table.id = "differential";
  for (const e of d.differential.slice(0, 6)) {
    const name = e.name + (e.variant ? ` (${e.variant})` : "") + (e.outside_image_scope ? " (outside image scope)" : "");
    table.appendChild(row([name, e.probability.toFixed(3)], [false, true]));
  }
  ihc.appendChild(table);
  for (const e of d.differential.slice(0, 3)) {
    const items = (d.evidence[e.entity] || []).filter((i) => i.direction !== "neutral");
    if (!items.length) continue;
    ihc.appendChild(el("h3", `evidence for ${e.name}`));
    const ul = el("ul");
    for (const i of items) {
      const li = el("li", `${i.marker} ${i.result}: ${i.direction} (log LR ${i.log_lr >= 0 ? "+" : ""}${i.log_lr.toFixed(2)}) `);
      const source = i.source || "";
      const kind = i.kind && !source.startsWith(i.kind) ? `${i.kind}: ` : "";
      li.appendChild(el("span", kind + source, "source"));
      ul.appendChild(li);
    }
    ihc.appendChild(ul);
  }
  if (d.next_stains && d.next_stains.length) {
    ihc.appendChild(el("p", `suggested next stains: ${d.next_stains.map((s) => s.marker).join(", ")}`));
  }
  for (const w of r.ihc.warnings) ihc.appendChild(el("p", w, "note"));
}

window.addEventListener("hashchange", () => {
  const id = decodeURIComponent(location.hash.slice(1));
  if (id && id !== state.slide) showSlide(id).catch(showError);
});

function showError(err) {
  document.getElementById("call").replaceChildren(el("h2", "Call"), el("p", String(err.message || err), "error"));
}

loadSlides().catch(showError);
