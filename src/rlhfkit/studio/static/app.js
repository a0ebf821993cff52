// rlhfkit studio pages. No build step. All model/data text is set with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

async function api(method, path, body) {
  const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401 && document.body.dataset.page !== "login") {
    window.location.href = "/";
    throw new Error("signed out");
  }
  const data = r.status === 204 ? {} : await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.detail ? String(data.detail) : `HTTP ${r.status}`);
  return data;
}

function showError(e) { $("error").textContent = e ? (e.message || String(e)) : ""; }

// A prompt or response: a string, or a list of {role, content} messages.
function renderText(container, x) {
  container.replaceChildren();
  if (Array.isArray(x)) {
    for (const m of x) {
      const p = el("div", null, "message");
      p.append(el("strong", (m && m.role ? m.role : "?") + ": "));
      p.append(document.createTextNode(m && m.content !== undefined ? String(m.content) : ""));
      container.append(p);
    }
  } else {
    container.textContent = String(x);
  }
}

// ------------------------------------------------------------------ login page
async function loginPage() {
  async function showProjects(me) {
    $("who").textContent = me.name;
    $("login-form").hidden = true;
    $("projects-section").hidden = false;
    const ul = $("projects");
    ul.replaceChildren();
    for (const p of me.projects) {
      const li = el("li");
      const a = el("a", p.name);
      a.href = "/label?project=" + encodeURIComponent(p.name);
      li.append(a, document.createTextNode(` (${p.kind}, ${p.items} items)`));
      ul.append(li);
    }
    if (!me.projects.length) ul.append(el("li", "No projects assigned yet."));
    $("admin-link").hidden = !me.is_admin;
  }
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      showError(null);
      await showProjects(await api("POST", "/api/login", { token: $("token").value.trim() }));
    } catch (e) { showError(e); }
  });
  $("logout").addEventListener("click", async () => {
    await api("POST", "/api/logout");
    window.location.reload();
  });
  try { await showProjects(await api("GET", "/api/me")); } catch (e) { /* not signed in */ }
}

// ------------------------------------------------------------------ label page
const KEYS = {
  pairwise: [["1", "A is better"], ["2", "B is better"], ["t", "tie"], ["b", "both bad"],
             ["Shift+1..3", "strength (optional)"], ["s", "skip"], ["u", "undo"]],
  ranking: [["j / k", "select response"], ["1..9", "rank of the selected response (ties allowed)"],
            ["drag", "reorder (top = best)"], ["Enter", "submit"], ["s", "skip"], ["u", "undo"]],
  thumbs: [["j / k", "select response"], ["ArrowUp / +", "thumbs up"], ["ArrowDown / -", "thumbs down"],
           ["Enter", "submit"], ["s", "skip"], ["u", "undo"]],
  rating: [["j / k", "select response"], ["1..7", "rating of the selected response"], ["Enter", "submit"],
           ["s", "skip"], ["u", "undo"]],
};

async function labelPage() {
  const project = new URLSearchParams(window.location.search).get("project");
  if (!project) { showError("no project given (open a project from the start page)"); return; }
  const base = "/api/projects/" + encodeURIComponent(project);
  let info, me, item = null, answer = null, visual = [], selected = 0, strength = null, idem = null, busy = false;
  try {
    me = await api("GET", "/api/me");
    info = await api("GET", base);
  } catch (e) { showError(e); return; }
  $("who").textContent = me.name;
  $("project-name").textContent = `${info.name} (${info.kind})`;
  $("guidelines").textContent = info.guidelines || "(none)";
  const keys = $("keys");
  for (const [k, what] of KEYS[info.kind]) {
    const d = el("div");
    d.append(el("kbd", k), document.createTextNode(" " + what));
    keys.append(d);
  }

  function freshAnswer(n) {
    if (info.kind === "ranking") return Array.from({ length: n }, (_, i) => i + 1);
    if (info.kind === "thumbs") return Array(n).fill(null);
    if (info.kind === "rating") return Array(n).fill(null);
    return null;
  }

  async function load() {
    showError(null);
    const r = await api("GET", base + "/next");
    $("progress").textContent = `${r.done} of ${r.total} labelled by you`;
    item = r.item;
    $("item").hidden = !item;
    $("finished").hidden = !!item;
    if (!item) return;
    answer = freshAnswer(item.responses.length);
    visual = item.responses.map((_, i) => i);  // the order the cards are shown in (ranking: after drags)
    selected = 0; strength = null;
    idem = `${item.id}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    $("rationale").value = "";
    $("status").textContent = "";
    renderText($("prompt"), item.prompt);
    render();
  }

  function letter(i) { return String.fromCharCode(65 + i); }

  function render() {
    const box = $("responses");
    box.replaceChildren();
    box.className = info.kind === "ranking" ? "column" : "";
    for (const i of visual) {
      const card = el("div", null, "response" + (i === selected && info.kind !== "pairwise" ? " selected" : ""));
      card.dataset.index = i;
      card.append(el("h3", `Response ${letter(i)}`));
      const t = el("div", null, "response-text");
      renderText(t, item.responses[i]);
      card.append(t);
      card.addEventListener("click", () => { selected = i; render(); });
      const row = el("div", null, "row");
      if (info.kind === "ranking") {
        row.append(el("span", `rank ${answer[i]}`));
        card.draggable = true;
        card.addEventListener("dragstart", (ev) => { ev.dataTransfer.setData("text/plain", String(i)); card.classList.add("dragging"); });
        card.addEventListener("dragend", () => card.classList.remove("dragging"));
        card.addEventListener("dragover", (ev) => ev.preventDefault());
        card.addEventListener("drop", (ev) => { ev.preventDefault(); dropOn(Number(ev.dataTransfer.getData("text/plain")), i); });
      } else if (info.kind === "thumbs") {
        const up = el("button", "▲ up", answer[i] === true ? "on" : "");
        const down = el("button", "▼ down", answer[i] === false ? "on" : "");
        up.type = down.type = "button";
        up.addEventListener("click", (ev) => { ev.stopPropagation(); setThumb(i, true); });
        down.addEventListener("click", (ev) => { ev.stopPropagation(); setThumb(i, false); });
        row.append(up, down);
      } else if (info.kind === "rating") {
        for (let v = 1; v <= 7; v++) {
          const b = el("button", String(v), answer[i] === v ? "on" : "");
          b.type = "button";
          b.addEventListener("click", (ev) => { ev.stopPropagation(); answer[i] = v; selected = i; render(); });
          row.append(b);
        }
      }
      card.append(row);
      box.append(card);
    }
    const c = $("controls");
    c.replaceChildren();
    const row = el("div", null, "row");
    if (info.kind === "pairwise") {
      for (const [label, choice] of [["A is better (1)", "A"], ["B is better (2)", "B"], ["Tie (t)", "tie"], ["Both bad (b)", "both_bad"]]) {
        const b = el("button", label);
        b.type = "button";
        b.addEventListener("click", () => submit({ choice }));
        row.append(b);
      }
      row.append(el("span", "strength:"));
      for (const s of [1, 2, 3]) {
        const b = el("button", String(s), strength === s ? "on" : "");
        b.type = "button";
        b.addEventListener("click", () => { strength = strength === s ? null : s; render(); });
        row.append(b);
      }
    } else {
      const b = el("button", "Submit (Enter)");
      b.type = "button";
      b.id = "submit";
      b.addEventListener("click", submitCurrent);
      row.append(b);
    }
    c.append(row);
  }

  // dragging a card onto another puts it in that place; ranks become the card positions
  function dropOn(from, to) {
    if (from === to) return;
    const at = visual.indexOf(to);
    visual = visual.filter((i) => i !== from);
    visual.splice(at, 0, from);
    visual.forEach((i, pos) => { answer[i] = pos + 1; });
    selected = from;
    render();
  }

  function step(delta) {
    const at = visual.indexOf(selected) + delta;
    selected = visual[Math.max(0, Math.min(visual.length - 1, at))];
  }

  function setThumb(i, v) {
    answer[i] = v;
    selected = i;
    step(1);
    render();
  }

  function submitCurrent() {
    if (info.kind === "ranking") return submit({ ranks: answer.slice() });
    if (answer.some((v) => v === null)) { showError("give every response a value first"); return; }
    if (info.kind === "thumbs") return submit({ thumbs: answer.slice() });
    return submit({ ratings: answer.slice() });
  }

  async function post(path, body) {
    if (busy) return;
    busy = true;
    try {
      showError(null);
      await api("POST", path, body);
      await load();
    } catch (e) { showError(e); } finally { busy = false; }
  }

  function submit(value) {
    const body = Object.assign({}, value, { rationale: $("rationale").value, idempotency_key: idem });
    if (info.kind === "pairwise") body.strength = strength;
    return post(`${base}/items/${item.id}/label`, body);
  }

  const skip = () => item && post(`${base}/items/${item.id}/skip`, { idempotency_key: idem });
  const undo = () => post(base + "/undo");
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("undo-finished").addEventListener("click", undo);

  document.addEventListener("keydown", (ev) => {
    const tag = ev.target && ev.target.tagName;
    if (tag === "TEXTAREA" || tag === "INPUT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key;
    if (k === "u") { ev.preventDefault(); undo(); return; }
    if (!item) return;
    if (k === "s") { ev.preventDefault(); skip(); return; }
    const n = item.responses.length;
    const digit = /^Digit([0-9])$/.exec(ev.code || "");
    if (info.kind === "pairwise") {
      if (ev.shiftKey && digit && Number(digit[1]) >= 1 && Number(digit[1]) <= 3) {
        strength = Number(digit[1]); render(); ev.preventDefault(); return;
      }
      const choice = { "1": "A", "2": "B", "t": "tie", "b": "both_bad" }[k];
      if (choice) { ev.preventDefault(); submit({ choice }); }
      return;
    }
    if (k === "j" || k === "ArrowRight") { step(1); render(); ev.preventDefault(); return; }
    if (k === "k" || k === "ArrowLeft") { step(-1); render(); ev.preventDefault(); return; }
    if (k === "Enter") { ev.preventDefault(); submitCurrent(); return; }
    if (info.kind === "thumbs") {
      if (k === "ArrowUp" || k === "+") { ev.preventDefault(); setThumb(selected, true); }
      if (k === "ArrowDown" || k === "-") { ev.preventDefault(); setThumb(selected, false); }
      return;
    }
    const v = Number(k);
    if (/^[1-9]$/.test(k) && ((info.kind === "ranking" && v <= n) || (info.kind === "rating" && v <= 7))) {
      ev.preventDefault();
      answer[selected] = v;
      step(1);
      render();
    }
  });

  try { await load(); } catch (e) { showError(e); }
}

// ------------------------------------------------------------------ admin page
async function adminPage() {
  let me;
  try { me = await api("GET", "/api/me"); } catch (e) { showError(e); return; }
  $("who").textContent = me.name;
  if (!me.is_admin) { showError("this page needs an admin account"); return; }
  const sel = $("project-select");
  for (const p of me.projects) {
    const o = el("option", `${p.name} (${p.kind})`);
    o.value = p.name;
    sel.append(o);
  }
  const fmt = (v) => (v === null || v === undefined ? "n/a" : (typeof v === "number" ? v.toFixed(3) : (typeof v === "object" ? JSON.stringify(v) : String(v))));

  async function refresh() {
    if (!sel.value) return;
    try {
      const r = await api("GET", `/api/admin/projects/${encodeURIComponent(sel.value)}/progress`);
      showError(null);
      $("summary").textContent = `${r.items_done} of ${r.items} items done (overlap ${r.overlap}); ` +
        `${r.items_started} started; ${r.labels} labels`;
      const tb = $("annotators").tBodies[0];
      tb.replaceChildren();
      for (const [name, a] of Object.entries(r.annotators)) {
        const tr = el("tr");
        for (const v of [name, a.labels, a.skips, a.median_seconds === null ? "n/a" : a.median_seconds.toFixed(1)]) tr.append(el("td", v));
        tb.append(tr);
      }
      const ag = $("agreement").tBodies[0];
      ag.replaceChildren();
      const add = (k, v) => { const tr = el("tr"); tr.append(el("th", k), el("td", v)); ag.append(tr); };
      const a = r.agreement;
      if (!a.available) add("agreement", "unavailable: " + a.reason);
      else {
        for (const k of ["cohen_kappa", "fleiss_kappa", "krippendorff_alpha"]) {
          if (k in a) add(k.replace("_", " "), fmt(a[k]));
        }
        const pb = a.position_bias;
        if (pb) {
          add("position bias (share of wins for the response shown first)", pb.first_rate === null ? "n/a" :
            `${fmt(pb.first_rate)} (95% CI ${fmt(pb.ci95[0])}-${fmt(pb.ci95[1])}, ${pb.decided} decided, p ${fmt(pb.p_value)})`);
        }
        if (a.per_annotator) {
          for (const [name, s] of Object.entries(a.per_annotator)) {
            add(`${name}: agreement with the others' majority`, `${fmt(s.majority_agreement)} on ${s.majority_items} items` +
              (s.gold_items ? `; with gold ${fmt(s.gold_agreement)} on ${s.gold_items}` : ""));
          }
        }
        if (a.flagged) add(`flagged (below ${a.threshold})`, a.flagged.length ? a.flagged.join(", ") : "none");
        if (a.note) add("note", a.note);
      }
    } catch (e) { showError(e); }
  }
  sel.addEventListener("change", refresh);
  await refresh();
  setInterval(refresh, 5000);

  // rows of an uploaded .jsonl / .json file; a line that is not JSON is named
  function parseRows(name, text) {
    if (/\.jsonl$/i.test(name)) {
      const rows = [];
      text.split(/\r?\n/).forEach((line, i) => {
        if (!line.trim()) return;
        try { rows.push(JSON.parse(line)); } catch (e) { throw new Error(`${name}: bad JSON on line ${i + 1}`); }
      });
      return rows;
    }
    let obj;
    try { obj = JSON.parse(text); } catch (e) { throw new Error(`${name}: bad JSON (${e.message})`); }
    if (!Array.isArray(obj) && obj && typeof obj === "object") {
      const lists = Object.values(obj).filter(Array.isArray);
      if (lists.length === 1) obj = lists[0];
    }
    if (!Array.isArray(obj)) throw new Error(`${name}: a .json file must hold a list of rows`);
    return obj;
  }

  $("new-project").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const status = $("np-status");
    try {
      showError(null);
      const file = $("np-file").files[0];
      const rows = parseRows(file.name, await file.text());
      status.textContent = `uploading ${rows.length} rows...`;
      const r = await api("POST", "/api/admin/projects", {
        name: $("np-name").value.trim(), kind: $("np-kind").value, rows, filename: file.name,
        guidelines: $("np-guidelines").value, overlap: Number($("np-overlap").value),
        assign: $("np-assign").value });
      status.textContent = `project ${r.name} created with ${r.items} items`;
      const o = el("option", `${r.name} (${$("np-kind").value})`);
      o.value = r.name;
      sel.append(o);
    } catch (e) { status.textContent = ""; showError(e); }
  });

  $("new-user").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      showError(null);
      const r = await api("POST", "/api/admin/users", { name: $("nu-name").value.trim(), admin: $("nu-admin").checked });
      $("nu-token").textContent = r.token;
    } catch (e) { showError(e); }
  });
}

const PAGES = { login: loginPage, label: labelPage, admin: adminPage };
document.addEventListener("DOMContentLoaded", () => PAGES[document.body.dataset.page]());
