// The face search page: everything it shows comes from the JSON API, and every string from the
// server is set with textContent (never innerHTML), so a name like "<img onerror=...>" stays text.
"use strict";

const $ = (id) => document.getElementById(id);
let lastSearch = null; // the latest API answer, re-labelled when the threshold moves

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function score(value) {
  return (value >= 0 ? "+" : "") + value.toFixed(3);
}

function threshold() {
  return Number($("threshold").value);
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(body.detail)
      ? body.detail.map((d) => `${d.loc.slice(1).join(".")}: ${d.msg}`).join("; ")
      : body.detail || response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function showMessage(text) {
  $("message").textContent = text;
}

async function refreshStatus() {
  const health = await api("/api/health");
  $("status").textContent =
    `${health.index_size} faces of ${health.identities} people · model ${health.model} ` +
    `(${health.embedding_dim}-D, ${health.image_size} px) · ${health.index_kind} index`;
  $("token-field").hidden = !health.enrol_requires_token;
  $("k").max = health.max_k;
  return health;
}

async function refreshIdentities() {
  const people = await api("/api/identities");
  const list = $("identities");
  list.replaceChildren(
    ...people.map((p) => element("li", "", `${p.name} · ${p.images} photo${p.images === 1 ? "" : "s"}`))
  );
}

function renderResults() {
  if (!lastSearch) return;
  const cut = threshold();
  const matches = lastSearch.matches;
  const top = matches[0];
  const known = top && top.score > cut;
  const verdict = $("verdict");
  verdict.className = known ? "known" : "unknown";
  verdict.textContent = known
    ? `${top.identity} (score ${score(top.score)} > ${score(cut)})`
    : `unknown${top ? ` (best: ${top.identity}, ${score(top.score)} ≤ ${score(cut)})` : ""}`;
  $("matches").replaceChildren(
    ...matches.map((m) => {
      const item = element("li", m.score > cut ? "match same" : "match");
      const thumb = element("img", "thumb");
      thumb.alt = `gallery photo of ${m.identity}`;
      if (m.thumbnail) thumb.src = `/api/thumbnail/${Number(m.record)}`;
      item.append(
        thumb,
        element("span", "name", m.identity),
        element("span", "score", score(m.score)),
        element("span", "badge", m.score > cut ? "same person" : "different")
      );
      return item;
    })
  );
  $("results").hidden = false;
}

async function search(file) {
  showMessage("");
  const form = new FormData();
  form.append("image", file);
  form.append("k", $("k").value);
  try {
    lastSearch = await api("/api/search", { method: "POST", body: form });
  } catch (err) {
    showMessage(`search of ${file.name} refused: ${err.message}`);
    return;
  }
  const preview = $("query-image");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  renderResults();
}

async function enrol(event) {
  event.preventDefault();
  showMessage("");
  const form = new FormData();
  form.append("name", $("enrol-name").value);
  for (const file of $("enrol-files").files) form.append("images", file);
  const headers = {};
  const token = $("enrol-token").value;
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const done = await api("/api/enrol", { method: "POST", body: form, headers });
    $("enrol-result").textContent =
      `enrolled ${done.identity}: ${done.added} photo${done.added === 1 ? "" : "s"} ` +
      `(the index now holds ${done.index_size} faces)`;
    $("enrol-form").reset();
    await Promise.all([refreshStatus(), refreshIdentities()]);
  } catch (err) {
    $("enrol-result").textContent = "";
    showMessage(`enrolment refused: ${err.message}`);
  }
}

function setUpDropZone() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) search(file);
  });
  $("query-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) search(file);
    event.target.value = "";
  });
}

async function start() {
  setUpDropZone();
  $("enrol-form").addEventListener("submit", enrol);
  $("threshold").addEventListener("input", () => {
    $("threshold-value").textContent = score(threshold());
    renderResults();
  });
  try {
    const health = await refreshStatus();
    $("threshold").value = health.threshold;
    $("threshold-value").textContent = score(health.threshold);
    $("threshold-source").textContent = health.threshold_calibrated
      ? `default from ${health.threshold_source}`
      : "uncalibrated default: start the server with --threshold or --metrics";
    await refreshIdentities();
    document.body.dataset.ready = "true";
  } catch (err) {
    showMessage(`cannot reach the server: ${err.message}`);
  }
}

start();
