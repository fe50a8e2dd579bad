// The correspondence page: two images, click a point on the left, see its match and heatmap on
// the right. Talks only to its own server: /models, /readyz, /images, /similarity, /matches.
// Coordinates are original image pixels with pixel centres at integers (as the toolkit's).
"use strict";

const HEAT_MAX_SIDE = 512;
const SIDES = ["source", "target"];
const $ = (selector, root = document) => root.querySelector(selector);
const SVG = "http://www.w3.org/2000/svg";

const state = {
  models: [],
  model: null,
  tap: null,
  sides: { source: null, target: null },
  loads: { source: 0, target: 0 },
  point: null,
  truth: null, // homography (target = H @ source) of an example with known truth
  busy: false,
  again: false,
  matches: null,
  matchesSeq: 0,
};

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(text, kind) {
  const pill = $("#status");
  pill.textContent = text;
  pill.className = `status ${kind || ""}`;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const error = new Error((body && body.error) || `${path}: HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function postJson(path, value) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(value),
  });
}

// Make sure the server holds this side's image: uploaded once, again only if it was evicted
// (the server names it by its content hash, so an upload of a known image stores nothing new).
async function ensureUploaded(side) {
  const image = state.sides[side];
  const info = await api("/images", {
    method: "POST",
    headers: { "Content-Type": image.type || "application/octet-stream" },
    body: image.bytes,
  });
  Object.assign(image, { id: info.id, width: info.width, height: info.height });
}

async function setImage(side, blob, name) {
  const load = ++state.loads[side];
  const bytes = await blob.arrayBuffer();
  const image = { bytes, type: blob.type, name, id: null };
  if (load !== state.loads[side]) return false;
  state.sides[side] = image;
  await ensureUploaded(side);
  const view = $(`#${side} .view`);
  const photo = $(".photo", view);
  const url = URL.createObjectURL(blob);
  await new Promise((resolve, reject) => {
    photo.onload = resolve;
    photo.onerror = () => reject(new Error(`${name}: the browser cannot show this image`));
    photo.src = url;
  });
  if (load !== state.loads[side]) return false;
  view.classList.add("has-image");
  $(".marks", view).setAttribute("viewBox", `0 0 ${image.width} ${image.height}`);
  $(".marks", view).setAttribute("preserveAspectRatio", "none");
  if (side === "target") $(".heat", view).removeAttribute("src");
  if (side === "source" && state.point) {
    state.point = [
      Math.min(state.point[0], image.width - 1),
      Math.min(state.point[1], image.height - 1),
    ];
  }
  clearMatch();
  return true;
}

const bothLoaded = () => SIDES.every((s) => state.sides[s] && state.sides[s].id);

function clearMatch() {
  const match = $("#match");
  for (const key of ["x", "y", "score"]) delete match.dataset[key];
  match.textContent = "–";
  $("#score").textContent = "–";
  $("#truth").textContent = "–";
  state.matches = null;
  drawMarks(null);
  drawLines();
}

function heatSize() {
  const { width, height } = state.sides.target;
  const scale = Math.min(1, HEAT_MAX_SIDE / Math.max(width, height));
  return [Math.max(1, Math.round(height * scale)), Math.max(1, Math.round(width * scale))];
}

const fmt = (v, digits = 1) => Number(v).toFixed(digits);

function setQuery(point) {
  state.point = point;
  const query = $("#query");
  query.dataset.x = String(point[0]);
  query.dataset.y = String(point[1]);
  query.textContent = `${point[0]}, ${point[1]}`;
  clearMatchValues();
  drawMarks(null);
  requestSimilarity();
}

function clearMatchValues() {
  const match = $("#match");
  for (const key of ["x", "y", "score"]) delete match.dataset[key];
}

function truthOf(point) {
  if (!state.truth) return null;
  const [x, y] = point;
  const h = state.truth;
  const w = h[2][0] * x + h[2][1] * y + h[2][2];
  return [(h[0][0] * x + h[0][1] * y + h[0][2]) / w, (h[1][0] * x + h[1][1] * y + h[1][2]) / w];
}

async function similarity() {
  const body = {
    source: state.sides.source.id,
    target: state.sides.target.id,
    point: state.point,
    model: state.model,
    tap: state.tap,
    size: heatSize(),
  };
  try {
    return await postJson("/similarity", body);
  } catch (error) {
    if (error.status !== 404) throw error;
    await Promise.all(SIDES.map(ensureUploaded)); // evicted: upload again
    return postJson("/similarity", { ...body, source: state.sides.source.id, target: state.sides.target.id });
  }
}

// One request in flight; a point chosen meanwhile is asked for as soon as it returns.
async function requestSimilarity() {
  if (!state.point || !bothLoaded()) return;
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  const point = state.point.slice();
  const started = performance.now();
  try {
    const reply = await similarity();
    if (point[0] === state.point[0] && point[1] === state.point[1]) {
      showResult(reply, performance.now() - started);
    }
    showError("");
  } catch (error) {
    showError(error.message);
  } finally {
    state.busy = false;
    if (state.again) {
      state.again = false;
      requestSimilarity();
    }
  }
}

function showResult(reply, roundTrip) {
  const [x, y] = reply.match;
  const heat = $("#target .heat");
  heat.src = `data:image/png;base64,${reply.heatmap.data}`;
  const match = $("#match");
  match.dataset.x = String(x);
  match.dataset.y = String(y);
  match.dataset.score = String(reply.score);
  match.textContent = `${fmt(x)}, ${fmt(y)}`;
  $("#score").textContent = fmt(reply.score, 3);
  const truth = truthOf(state.point);
  $("#truth").textContent = truth ? `${fmt(Math.hypot(truth[0] - x, truth[1] - y))} px` : "–";
  const t = reply.timing_ms;
  $("#latency").textContent = `${fmt(t.total)} ms (match ${fmt(t.matching)})`;
  $("#roundtrip").textContent = `${fmt(roundTrip)} ms`;
  $("#heat-min").textContent = fmt(reply.heatmap.min, 2);
  $("#heat-max").textContent = fmt(reply.heatmap.max, 2);
  drawMarks([x, y], truth);
}

function svgNode(name, attributes) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

// Marker radius in image pixels for `css` screen pixels on this side.
function radius(side, css) {
  const photo = $(`#${side} .photo`);
  return (css * state.sides[side].width) / Math.max(1, photo.getBoundingClientRect().width);
}

function ring(side, point, colour, css) {
  const [cx, cy] = [point[0] + 0.5, point[1] + 0.5];
  const r = radius(side, css);
  const group = svgNode("g", {});
  const stroke = { fill: "none", "vector-effect": "non-scaling-stroke" };
  group.append(
    svgNode("circle", { cx, cy, r: r * 1.15, stroke: "rgba(0,0,0,.6)", "stroke-width": 4, ...stroke }),
    svgNode("circle", { cx, cy, r, stroke: colour, "stroke-width": 2.5, ...stroke }),
    svgNode("circle", { cx, cy, r: r * 0.22, fill: colour }),
  );
  return group;
}

function drawMarks(match, truth) {
  for (const side of SIDES) {
    const marks = $(`#${side} .marks`);
    marks.replaceChildren();
    if (!state.sides[side] || !state.sides[side].id) continue;
    if (side === "source" && state.point) marks.append(ring("source", state.point, "#ff3d71", 9));
    if (side === "target" && truth) {
      const r = radius("target", 7);
      marks.append(svgNode("rect", {
        x: truth[0] + 0.5 - r, y: truth[1] + 0.5 - r, width: 2 * r, height: 2 * r,
        fill: "none", stroke: "#22c55e", "stroke-width": 2.5, "vector-effect": "non-scaling-stroke",
      }));
    }
    if (side === "target" && match) marks.append(ring("target", match, "#ffd43b", 9));
  }
}

// Image pixels -> CSS pixels inside the pair container (the lines' SVG spans it).
function onPair(side, point) {
  const box = $(`#${side} .photo`).getBoundingClientRect();
  const pair = $("#pair").getBoundingClientRect();
  const { width, height } = state.sides[side];
  return [
    box.left - pair.left + ((point[0] + 0.5) * box.width) / width,
    box.top - pair.top + ((point[1] + 0.5) * box.height) / height,
  ];
}

function drawLines() {
  const lines = $("#lines");
  lines.replaceChildren();
  const found = state.matches;
  if (!found || !$("#show-matches").checked || !bothLoaded()) {
    $("#matches-info").textContent = "";
    return;
  }
  const low = Math.min(...found.scores, 1);
  const high = Math.max(...found.scores, low + 1e-6);
  found.source.forEach((point, i) => {
    const [x1, y1] = onPair("source", point);
    const [x2, y2] = onPair("target", found.target[i]);
    const hue = 200 - 160 * ((found.scores[i] - low) / (high - low));
    const colour = `hsl(${hue} 95% 55%)`;
    lines.append(
      svgNode("line", { x1, y1, x2, y2, stroke: colour, "stroke-width": 1.6, "stroke-opacity": 0.85 }),
      svgNode("circle", { cx: x1, cy: y1, r: 3, fill: colour }),
      svgNode("circle", { cx: x2, cy: y2, r: 3, fill: colour }),
    );
  });
  const kind = found.mutual ? "mutual nearest neighbours" : "nearest neighbours";
  $("#matches-info").textContent = `· ${found.scores.length} ${kind} (${found.tap}), ` +
    `${fmt(found.timing_ms.total)} ms`;
}

async function requestMatches() {
  const seq = ++state.matchesSeq;
  if (!$("#show-matches").checked || !bothLoaded()) {
    state.matches = null;
    drawLines();
    return;
  }
  try {
    const reply = await postJson("/matches", {
      source: state.sides.source.id,
      target: state.sides.target.id,
      n: Math.max(1, Math.min(500, Number($("#top-n").value) || 25)),
      mutual: $("#mutual").checked,
      min_score: Number($("#min-score").value) / 100,
      model: state.model,
      tap: state.tap,
    });
    if (seq !== state.matchesSeq) return;
    state.matches = reply;
    drawLines();
  } catch (error) {
    showError(error.message);
  }
}

function refresh() {
  requestSimilarity();
  requestMatches();
}

function imagePoint(event) {
  const box = $("#source .photo").getBoundingClientRect();
  const { width, height } = state.sides.source;
  const x = Math.round(((event.clientX - box.left) / box.width) * width - 0.5);
  const y = Math.round(((event.clientY - box.top) / box.height) * height - 0.5);
  return [Math.min(Math.max(x, 0), width - 1), Math.min(Math.max(y, 0), height - 1)];
}

function moveWithKeys(event) {
  const steps = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
  const step = steps[event.key];
  const image = state.sides.source;
  if (!step || !image || !image.id) return;
  event.preventDefault();
  const size = event.shiftKey ? 10 : 1;
  const [x, y] = state.point || [Math.floor(image.width / 2), Math.floor(image.height / 2)];
  setQuery([
    Math.min(Math.max(x + step[0] * size, 0), image.width - 1),
    Math.min(Math.max(y + step[1] * size, 0), image.height - 1),
  ]);
}

async function useFile(side, file) {
  if (!file) return;
  state.truth = null;
  $("#examples").value = "";
  try {
    if (await setImage(side, file, file.name)) refresh();
  } catch (error) {
    showError(error.message);
  }
}

async function loadExample(pair) {
  state.truth = pair.homography || null;
  for (const input of document.querySelectorAll("input[type=file]")) input.value = "";
  try {
    const blobs = await Promise.all(
      [pair.source, pair.target].map(async (path) => {
        const response = await fetch(`/page/${path}`);
        if (!response.ok) throw new Error(`example ${path}: HTTP ${response.status}`);
        return response.blob();
      }),
    );
    const done = await Promise.all(SIDES.map((side, i) => setImage(side, blobs[i], pair.name)));
    if (!done.every(Boolean)) return;
    if (pair.point) setQuery(pair.point.slice());
    requestMatches();
  } catch (error) {
    showError(error.message);
  }
}

function fillTaps() {
  const model = state.models.find((m) => m.name === state.model);
  const select = $("#tap");
  select.replaceChildren(...model.taps.map((tap) => new Option(tap, tap)));
  state.tap = model.default_tap;
  select.value = state.tap;
}

async function waitReady() {
  for (;;) {
    try {
      const ready = await api("/readyz");
      if (ready.ready) break;
    } catch (error) {
      if (error.status !== 503) throw error;
      if (/failed/.test(error.message)) throw error;
    }
    setStatus("loading the model…", "busy");
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  const model = state.models.find((m) => m.name === state.model);
  setStatus(`ready · ${model.name} · ${model.image_size.join("×")}`, "ready");
}

function wire() {
  for (const side of SIDES) {
    const panel = $(`#${side}`);
    const input = $("input[type=file]", panel);
    input.addEventListener("change", () => useFile(side, input.files[0]));
    for (const target of [$(".view", panel), $(".file", panel)]) {
      target.addEventListener("dragover", (event) => {
        event.preventDefault();
        $(".view", panel).classList.add("drop");
      });
      target.addEventListener("dragleave", () => $(".view", panel).classList.remove("drop"));
      target.addEventListener("drop", (event) => {
        event.preventDefault();
        $(".view", panel).classList.remove("drop");
        useFile(side, event.dataTransfer.files[0]);
      });
    }
  }
  const source = $("#source .view");
  source.addEventListener("click", (event) => {
    if (!state.sides.source || !state.sides.source.id) return;
    source.focus({ preventScroll: true });
    setQuery(imagePoint(event));
  });
  source.addEventListener("keydown", moveWithKeys);
  document.addEventListener("keydown", (event) => {
    if (event.key === "m" && !/INPUT|SELECT/.test(document.activeElement.tagName)) {
      $("#show-matches").checked = !$("#show-matches").checked;
      requestMatches();
    }
  });
  const opacity = $("#opacity");
  const applyOpacity = () => {
    $("#target .heat").style.opacity = String(opacity.value / 100);
    $("#opacity-value").textContent = `${opacity.value}%`;
  };
  opacity.addEventListener("input", applyOpacity);
  applyOpacity();
  const minScore = $("#min-score");
  minScore.addEventListener("input", () => {
    $("#min-score-value").textContent = fmt(minScore.value / 100, 2);
  });
  for (const id of ["#show-matches", "#top-n", "#min-score", "#mutual"]) {
    $(id).addEventListener("change", requestMatches);
  }
  $("#model").addEventListener("change", () => {
    state.model = $("#model").value;
    fillTaps();
    waitReady().then(refresh, (error) => showError(error.message));
  });
  $("#tap").addEventListener("change", () => {
    state.tap = $("#tap").value;
    refresh();
  });
  new ResizeObserver(() => {
    drawLines();
    const match = $("#match").dataset;
    if (match.x !== undefined) drawMarks([Number(match.x), Number(match.y)], state.point && truthOf(state.point));
    else drawMarks(null);
  }).observe($("#pair"));
}

async function main() {
  wire();
  try {
    state.models = await api("/models");
    $("#model").replaceChildren(
      ...state.models.map((m) => new Option(`${m.name} — ${m.method}`, m.name)),
    );
    state.model = state.models[0].name;
    fillTaps();
    const examples = await api("/page/examples.json");
    const select = $("#examples");
    select.replaceChildren(
      new Option("choose an example pair…", ""),
      ...examples.pairs.map((pair, i) => new Option(pair.name, String(i))),
    );
    select.addEventListener("change", () => {
      if (select.value !== "") loadExample(examples.pairs[Number(select.value)]);
    });
    await waitReady();
    select.value = "0";
    await loadExample(examples.pairs[0]);
  } catch (error) {
    setStatus("not connected", "");
    showError(error.message);
  }
}

main();
