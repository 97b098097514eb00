// The review page: reads and changes clusters through the operator API (src/api/mod.rs) with
// the token the user gives once (kept in this tab's sessionStorage). No framework, no build.
"use strict";

const PAGE = 20; // clusters per page: nothing loads every cluster at once
const STRIP = 8; // faces shown per cluster in the list
const FACES = 60; // faces per page of an opened cluster
const PLACEHOLDER =
  "data:image/svg+xml," +
  encodeURIComponent(
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect width="64" height="64" fill="#e4e4df"/>' +
      '<circle cx="32" cy="25" r="12" fill="#c2c2bb"/><path d="M12 60c2-14 12-20 20-20s18 6 20 20z" fill="#c2c2bb"/></svg>'
  );

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem("clip-cluster-token") || "",
  domain: sessionStorage.getItem("clip-cluster-domain") || "",
  order: sessionStorage.getItem("clip-cluster-order") || "size",
  unnamed: sessionStorage.getItem("clip-cluster-unnamed") === "1",
  cursors: [], // cursors of the pages before the current one
  cursor: null, // cursor of the current page (null: the first)
  picks: new Set(), // cluster ids picked in the list
  facePicks: new Set(), // face ids picked in an opened cluster
  cluster: null, // the opened cluster's id
  faceCursor: null,
  urls: [], // object URLs of the pictures shown, revoked when the view changes
};

class Refused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function say(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "";
  m.hidden = false;
}

function quiet() {
  $("message").hidden = true;
}

function headers(json) {
  const h = {};
  if (state.token) h.Authorization = "Bearer " + state.token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

// One API call: the JSON answer, or a Refused with the API's message (401 asks for the token).
async function api(method, path, body) {
  let r;
  try {
    r = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new Refused(0, "the daemon does not answer: " + e.message);
  }
  const j = await r.json().catch(() => ({}));
  if (!r.ok) {
    const msg = j.error || r.statusText;
    if (r.status === 401) askToken("The API refused the request: " + msg);
    throw new Refused(r.status, msg);
  }
  return j;
}

function withDomain(params) {
  if (state.domain) params.set("domain", state.domain);
  return params;
}

function bodyWithDomain(body) {
  if (state.domain) body.domain = state.domain;
  return body;
}

function commandId() {
  if (crypto.randomUUID) return "ui-" + crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return "ui-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

async function feedback(op, fields) {
  return api("POST", "/v1/feedback", bodyWithDomain({ command_id: commandId(), op, ...fields }));
}

function fail(e) {
  say(e instanceof Refused ? `refused (${e.status}): ${e.message}` : String(e));
}

function askToken(why) {
  $("token-why").textContent = why || "The API needs its token (api.token). It is kept for this tab only.";
  $("token").value = "";
  const d = $("token-dialog");
  if (!d.open) d.showModal();
}

// A picture: the API's thumbnail fetched with the token, a producer's URL as it is, or the
// placeholder.
function picture(img, ref) {
  img.src = PLACEHOLDER;
  if (!ref) return;
  if (!ref.startsWith("/v1/")) {
    img.src = ref;
    img.onerror = () => {
      img.onerror = null;
      img.src = PLACEHOLDER;
    };
    return;
  }
  fetch(ref, { headers: headers(false) })
    .then((r) => (r.ok ? r.blob() : null))
    .then((b) => {
      if (!b) return;
      const u = URL.createObjectURL(b);
      state.urls.push(u);
      img.src = u;
    })
    .catch(() => {});
}

function forgetPictures() {
  for (const u of state.urls) URL.revokeObjectURL(u);
  state.urls = [];
}

function faceImage(f, size) {
  const img = document.createElement("img");
  img.alt = f.face_id;
  img.title = f.face_id;
  img.dataset.face = f.face_id;
  img.width = size;
  img.height = size;
  picture(img, f.thumbnail);
  return img;
}

function clusterTitle(c) {
  return c.name ? c.name : "unnamed #" + c.cluster_id;
}

function show(view) {
  for (const v of ["list-view", "detail-view", "search-view"]) $(v).hidden = v !== view;
}

// ---- the list of clusters

function clusterCard(c, extra) {
  const li = document.createElement("li");
  li.className = "cluster" + (state.picks.has(c.cluster_id) ? " picked" : "");
  li.dataset.id = c.cluster_id;
  const pick = document.createElement("input");
  pick.type = "checkbox";
  pick.className = "pick";
  pick.checked = state.picks.has(c.cluster_id);
  pick.title = "select for a merge";
  pick.addEventListener("change", () => {
    if (pick.checked) state.picks.add(c.cluster_id);
    else state.picks.delete(c.cluster_id);
    li.classList.toggle("picked", pick.checked);
    updatePicks();
  });
  const label = document.createElement("div");
  label.className = "label";
  const a = document.createElement("a");
  a.href = "#/cluster/" + c.cluster_id;
  a.className = "open";
  a.textContent = clusterTitle(c);
  const size = document.createElement("div");
  size.className = "size";
  size.textContent = `${c.size} face${c.size === 1 ? "" : "s"} · #${c.cluster_id}` + (extra || "");
  label.append(a, size);
  const strip = document.createElement("ul");
  strip.className = "strip";
  for (const f of c.faces || []) {
    const s = document.createElement("li");
    s.append(faceImage(f, 64));
    strip.append(s);
  }
  li.append(pick, label, strip);
  return li;
}

function updatePicks() {
  const n = state.picks.size;
  $("merge").disabled = n < 2;
  $("merge").textContent = n < 2 ? "merge selected clusters" : `merge ${n} selected clusters`;
  $("clear-picks").disabled = n === 0;
}

async function showList() {
  show("list-view");
  forgetPictures();
  const q = withDomain(new URLSearchParams({ order: state.order, limit: PAGE, faces: STRIP }));
  if (state.unnamed) q.set("unnamed", "true");
  if (state.cursor !== null) q.set("cursor", state.cursor);
  let r;
  try {
    r = await api("GET", "/v1/clusters?" + q);
  } catch (e) {
    if (e.status === 400 && state.cursor !== null && e.message.includes("cursor")) {
      // The page's first cluster merged away meanwhile: start again from the top.
      state.cursors = [];
      state.cursor = null;
      return showList();
    }
    throw e;
  }
  $("total").textContent = `${r.total} cluster${r.total === 1 ? "" : "s"}`;
  $("clusters").replaceChildren(...r.clusters.map((c) => clusterCard(c)));
  $("page").textContent = "page " + (state.cursors.length + 1);
  $("prev").disabled = state.cursors.length === 0;
  $("next").disabled = r.next === null || r.next === undefined;
  $("next").dataset.cursor = r.next ?? "";
  updatePicks();
  document.body.dataset.ready = "list";
}

async function merge() {
  const ids = [...state.picks];
  const r = await feedback("merge", { cluster_ids: ids });
  state.picks.clear();
  say(`merged ${ids.length} clusters into #${r.clusters.join(", #")}`, true);
  await showList();
}

// ---- one cluster

function faceTile(f) {
  const li = document.createElement("li");
  li.className = "face" + (state.facePicks.has(f.face_id) ? " picked" : "");
  li.dataset.face = f.face_id;
  const img = faceImage(f, 96);
  img.addEventListener("click", () => {
    if (state.facePicks.has(f.face_id)) state.facePicks.delete(f.face_id);
    else state.facePicks.add(f.face_id);
    for (const t of document.querySelectorAll(".face")) {
      t.classList.toggle("picked", state.facePicks.has(t.dataset.face));
    }
    updateFacePicks();
  });
  const id = document.createElement("div");
  id.className = "id";
  id.textContent = f.face_id;
  li.append(img, id);
  return li;
}

function updateFacePicks() {
  const n = state.facePicks.size;
  for (const b of ["split", "not-this", "erase-faces"]) $(b).disabled = n === 0;
  $("face-picks").textContent = n === 0 ? "select faces to act on them" : `${n} face${n === 1 ? "" : "s"} selected`;
}

async function showCluster(id, more) {
  show("detail-view");
  if (!more) {
    forgetPictures();
    state.cluster = id;
    state.faceCursor = null;
    state.facePicks.clear();
    $("faces").replaceChildren();
  }
  const q = withDomain(new URLSearchParams({ limit: FACES }));
  if (state.faceCursor !== null) q.set("cursor", state.faceCursor);
  let c;
  try {
    c = await api("GET", `/v1/clusters/${id}?` + q);
  } catch (e) {
    if (e.status === 404) {
      $("detail-title").textContent = `cluster #${id} is gone (merged into another, or erased)`;
      $("representatives").replaceChildren();
      $("faces").replaceChildren();
      $("more-faces").hidden = true;
      document.body.dataset.ready = "gone";
      return;
    }
    throw e;
  }
  $("detail-title").textContent = `${clusterTitle(c)} · ${c.size} face${c.size === 1 ? "" : "s"}`;
  if (!more) {
    $("name-input").value = c.name || "";
    $("representatives").replaceChildren(...c.representatives.map(faceTile));
  }
  $("faces").append(...c.faces.map(faceTile));
  state.faceCursor = c.next ?? null;
  $("more-faces").hidden = state.faceCursor === null;
  updateFacePicks();
  document.body.dataset.ready = "cluster";
}

async function name(e) {
  e.preventDefault();
  const n = $("name-input").value.trim();
  if (!n) return say("type a name first");
  await feedback("name", { cluster_id: state.cluster, name: n });
  say(`named #${state.cluster} "${n}"`, true);
  await showCluster(state.cluster);
}

async function split() {
  const faces = [...state.facePicks];
  const r = await feedback("split", { face_ids: faces });
  say(`split ${faces.length} face${faces.length === 1 ? "" : "s"} off: now in #${r.clusters.join(", #")}`, true);
  await showCluster(state.cluster);
}

async function notThis() {
  const faces = [...state.facePicks];
  for (const f of faces) await feedback("not_in_cluster", { face_id: f, cluster_id: state.cluster });
  say(`${faces.length} face${faces.length === 1 ? "" : "s"} marked not this person; they will not come back`, true);
  await showCluster(state.cluster);
}

// A destructive button asks for a second click within 4 s instead of a modal dialog.
function armed(button, what) {
  if (button.dataset.armed === "1") {
    button.dataset.armed = "";
    button.textContent = button.dataset.label;
    return true;
  }
  button.dataset.label = button.textContent;
  button.dataset.armed = "1";
  button.textContent = "click again to " + what;
  setTimeout(() => {
    if (button.dataset.armed === "1") {
      button.dataset.armed = "";
      button.textContent = button.dataset.label;
    }
  }, 4000);
  return false;
}

async function eraseFaces() {
  if (!armed($("erase-faces"), "erase them for good")) return;
  const faces = [...state.facePicks];
  for (const f of faces) {
    await api("DELETE", `/v1/faces/${encodeURIComponent(f)}?` + withDomain(new URLSearchParams()));
  }
  say(`erased ${faces.length} face${faces.length === 1 ? "" : "s"}`, true);
  await showCluster(state.cluster);
}

async function eraseCluster() {
  if (!armed($("erase-cluster"), "erase every face of this person")) return;
  const r = await api("DELETE", `/v1/clusters/${state.cluster}?` + withDomain(new URLSearchParams()));
  say(`erased #${state.cluster}: ${r.erased.length} faces`, true);
  location.hash = "#/";
}

// ---- search by a face

async function search() {
  const file = $("search-file").files[0];
  if (!file) return;
  const b64 = await new Promise((ok, no) => {
    const r = new FileReader();
    r.onload = () => ok(String(r.result).replace(/^data:[^,]*,/, ""));
    r.onerror = () => no(r.error);
    r.readAsDataURL(file);
  });
  $("search-file").value = "";
  const r = await api("POST", "/v1/search", bodyWithDomain({ image_b64: b64, k: 50 }));
  show("search-view");
  forgetPictures();
  const q = r.query;
  $("search-query").textContent = q
    ? `face ${q.located} at [${q.face_box.join(", ")}] in ${file.name}`
    : `searched with ${file.name}`;
  const cards = [];
  for (const hit of r.clusters.slice(0, 10)) {
    const c = await api("GET", `/v1/clusters/${hit.cluster_id}?` + withDomain(new URLSearchParams({ limit: 1 })));
    cards.push(
      clusterCard(
        { ...c, faces: c.representatives },
        ` · similarity ${hit.best_score.toFixed(3)} · ${hit.hits} of the ${r.faces.length} nearest faces`
      )
    );
  }
  $("search-results").replaceChildren(...cards);
  if (cards.length === 0) say("no faces are indexed yet");
  document.body.dataset.ready = "search";
}

// ---- wiring

async function route() {
  quiet();
  document.body.dataset.ready = "";
  const m = location.hash.match(/^#\/cluster\/(\d+)/);
  try {
    if (m) await showCluster(Number(m[1]));
    else await showList();
  } catch (e) {
    fail(e);
    document.body.dataset.ready = "error";
  }
}

function act(f) {
  return async (e) => {
    try {
      await f(e);
    } catch (err) {
      fail(err);
    }
  };
}

async function domains() {
  try {
    const r = await api("GET", "/v1/domains");
    const sel = $("domain");
    sel.replaceChildren(
      ...r.domains.map((d) => {
        const o = document.createElement("option");
        o.value = o.textContent = d;
        return o;
      })
    );
    if (!r.domains.includes(state.domain)) state.domain = r.domains[0] || "";
    sel.value = state.domain;
    $("domain-box").hidden = r.domains.length < 2;
  } catch (e) {
    // Shown by the view's own call.
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("order").value = state.order;
  $("unnamed").checked = state.unnamed;
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("clip-cluster-token", state.token);
    $("token-dialog").close();
    domains().then(route);
  });
  $("token-change").addEventListener("click", () => askToken());
  $("order").addEventListener("change", () => {
    state.order = $("order").value;
    sessionStorage.setItem("clip-cluster-order", state.order);
    state.cursors = [];
    state.cursor = null;
    act(showList)();
  });
  $("unnamed").addEventListener("change", () => {
    state.unnamed = $("unnamed").checked;
    sessionStorage.setItem("clip-cluster-unnamed", state.unnamed ? "1" : "");
    state.cursors = [];
    state.cursor = null;
    act(showList)();
  });
  $("domain").addEventListener("change", () => {
    state.domain = $("domain").value;
    sessionStorage.setItem("clip-cluster-domain", state.domain);
    state.cursors = [];
    state.cursor = null;
    state.picks.clear();
    location.hash = "#/";
    route();
  });
  $("next").addEventListener("click", act(() => {
    state.cursors.push(state.cursor);
    state.cursor = $("next").dataset.cursor;
    return showList();
  }));
  $("prev").addEventListener("click", act(() => {
    state.cursor = state.cursors.pop() ?? null;
    return showList();
  }));
  $("merge").addEventListener("click", act(merge));
  $("clear-picks").addEventListener("click", () => {
    state.picks.clear();
    for (const c of document.querySelectorAll(".cluster")) {
      c.classList.remove("picked");
      c.querySelector(".pick").checked = false;
    }
    updatePicks();
  });
  $("name-form").addEventListener("submit", act(name));
  $("split").addEventListener("click", act(split));
  $("not-this").addEventListener("click", act(notThis));
  $("erase-faces").addEventListener("click", act(eraseFaces));
  $("erase-cluster").addEventListener("click", act(eraseCluster));
  $("more-faces").addEventListener("click", act(() => showCluster(state.cluster, true)));
  $("search-file").addEventListener("change", act(search));
  window.addEventListener("hashchange", route);
  await domains();
  await route();
});
