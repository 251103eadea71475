// The Nubo dashboard: a static page that reads the admin API with the admin token, like the
// CLI. No framework and no build step; every text goes into the DOM as text, never as HTML.
"use strict";

const API = "/_nubo/api/v1";
const TOKEN_KEY = "nubo-token";
const $ = (id) => document.getElementById(id);

// The link `nubo up` prints carries the token: keep it, then take it out of the address bar
// (and so out of history and bookmarks).
(function takeTokenFromLink() {
  const url = new URL(location.href);
  const t = url.searchParams.get("token");
  if (t !== null) {
    localStorage.setItem(TOKEN_KEY, t);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
})();

class ApiError extends Error {
  constructor(status, code, message, hint) {
    super(message);
    this.status = status;
    this.code = code;
    this.hint = hint || "";
  }
}

async function api(path) {
  let resp;
  try {
    resp = await fetch(API + path, {
      headers: { Authorization: "Bearer " + (localStorage.getItem(TOKEN_KEY) || "") },
      cache: "no-store",
    });
  } catch (e) {
    pulse(false);
    throw new ApiError(0, "unreachable", "the Nubo server cannot be reached", "is `nubo up` still running?");
  }
  pulse(true);
  const body = await resp.json().catch(() => null);
  if (!resp.ok) {
    const e = (body && body.error) || {};
    throw new ApiError(resp.status, e.code || "http_" + resp.status, e.message || resp.statusText, e.hint);
  }
  return body;
}

// --- small DOM helpers ---------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function pulse(ok) {
  const p = $("pulse");
  p.className = "pulse " + (ok ? "live" : "down");
  p.title = (ok ? "refreshed " : "unreachable at ") + new Date().toLocaleTimeString();
}

function showError(err) {
  if (err.status === 401) return showLogin("the server refused this token");
  $("banner-message").textContent = err.message;
  $("banner-hint").textContent = err.hint || "";
  $("banner").hidden = false;
}

const fmt = {
  num(n, digits = 0) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString(undefined, {
      minimumFractionDigits: digits, maximumFractionDigits: digits });
  },
  bytes(b) {
    if (b === null || b === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return b.toFixed(i === 0 ? 0 : 1) + " " + units[i];
  },
  age(secs) {
    if (secs === null || secs === undefined) return "–";
    if (secs < 60) return Math.floor(secs) + "s";
    if (secs < 3600) return Math.floor(secs / 60) + "m " + Math.floor(secs % 60) + "s";
    if (secs < 86400) return Math.floor(secs / 3600) + "h " + Math.floor((secs % 3600) / 60) + "m";
    return Math.floor(secs / 86400) + "d";
  },
  time(ms) {
    return new Date(ms).toLocaleTimeString(undefined, { hour12: false });
  },
  ms(x) {
    return x === null || x === undefined ? "–" : x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : x.toFixed(0);
  },
};

function statusClass(status) {
  return status >= 500 ? "st-bad" : status >= 400 ? "st-warn" : "st-ok";
}

function countsView(c) {
  if (!c) return "–";
  const parts = [];
  for (const k of ["busy", "idle", "starting", "frozen", "waiting"]) {
    if (c[k]) parts.push(el("span", {}, el("b", { text: c[k] }), " " + k));
  }
  return el("span", { class: "counts" }, parts.length ? parts : el("span", { class: "dim", text: "none" }));
}

// --- refresh loops that stop when the page changes -----------------------------------------

let generation = 0;

// Runs `fn` now and every `ms` after it finishes (never two at once), while the page lasts.
function every(ms, fn) {
  const gen = generation;
  const tick = async () => {
    if (gen !== generation) return;
    try {
      await fn();
    } catch (e) {
      if (gen === generation) showError(e);
      if (e.status === 401) return;
    }
    if (gen === generation) setTimeout(tick, ms);
  };
  tick();
}

// --- pages ---------------------------------------------------------------------------------

function route() {
  generation++;
  const main = $("main");
  main.replaceChildren();
  $("banner").hidden = true;
  if (!localStorage.getItem(TOKEN_KEY)) return showLogin();
  $("logout").hidden = false;
  const hash = location.hash || "#/";
  const fn = hash.match(/^#\/f\/(.+)$/);
  for (const a of document.querySelectorAll("[data-nav]")) {
    const on = a.dataset.nav === (hash.startsWith("#/usage") ? "usage" : "functions");
    a.classList.toggle("active", on);
  }
  if (fn) return functionPage(main, decodeURIComponent(fn[1]));
  if (hash.startsWith("#/usage")) return usagePage(main);
  return functionsPage(main);
}

function showLogin(why) {
  generation++;
  $("logout").hidden = true;
  const form = $("login-template").content.firstElementChild.cloneNode(true);
  $("main").replaceChildren(form);
  if (why) {
    form.querySelector("#login-error").textContent = why;
    form.querySelector("#login-error").hidden = false;
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    localStorage.setItem(TOKEN_KEY, form.querySelector("#token").value.trim());
    try {
      await api("/functions");
      route();
    } catch (e) {
      const msg = form.querySelector("#login-error");
      msg.textContent = e.status === 401 ? "the server refused this token" : e.message;
      msg.hidden = false;
    }
  });
}

function functionsPage(main) {
  const body = el("tbody");
  main.append(
    el("h1", { text: "Functions" }),
    el("div", { class: "sub", text: "Deployed functions, their instances and the last minute of traffic" }),
    el("div", { class: "card" }, el("table", {},
      el("thead", {}, el("tr", {},
        ["Function", "Project", "Kind", "Revision", "URL", "Instances"].map((h) => el("th", { text: h })),
        el("th", { class: "num", text: "Requests/s" }), el("th", { class: "num", text: "Errors (1 min)" }))),
      body)),
  );
  every(2000, async () => {
    const { functions } = await api("/functions");
    if (!functions.length) {
      body.replaceChildren(el("tr", {}, el("td", { class: "empty", colspan: 8 },
        "No functions yet: run ", el("code", { text: "nubo deploy" }), " in a project with a nubo.yaml.")));
      return;
    }
    body.replaceChildren(...functions.map((f) => {
      const r = f.recent || {};
      return el("tr", { dataset: { function: f.name } },
        el("td", {}, el("a", { href: "#/f/" + encodeURIComponent(f.name), text: f.name })),
        el("td", { class: "dim", text: f.project }),
        el("td", {}, el("span", { class: "pill kind", text: f.kind })),
        el("td", { text: f.revision }),
        el("td", {}, el("a", { href: f.url, class: "mono", text: f.url })),
        el("td", {}, countsView(f.instances)),
        el("td", { class: "num", text: fmt.num(r.per_second, 2) }),
        el("td", { class: "num " + (r.errors ? "st-bad" : "dim"), text: fmt.num(r.errors) }));
    }));
  });
}

function functionPage(main, name) {
  const head = el("div", { class: "sub" });
  const instances = el("div");
  const charts = {
    rate: el("div", { class: "chart" }),
    latency: el("div", { class: "chart" }),
    cold: el("div", { class: "chart" }),
  };
  const records = el("tbody");
  const logs = el("div", { class: "logs" });
  const legend = (...items) => el("span", { class: "legend" }, items.map(([c, t]) => [el("i", { class: c }), t]));
  main.append(
    el("h1", { text: name }),
    head,
    el("div", { class: "card" }, el("h2", { text: "Instances" }), instances),
    el("div", { class: "grid3" },
      el("div", { class: "card" }, el("h2", {}, "Requests / s", legend(["c1", "all"], ["c3", "errors"])), charts.rate),
      el("div", { class: "card" }, el("h2", {}, "Latency (ms)", legend(["c1", "p50"], ["c2", "p99"])), charts.latency),
      el("div", { class: "card" }, el("h2", {}, "Cold starts", legend(["c4", "per 10 s"])), charts.cold)),
    el("div", { class: "row2" },
      el("div", { class: "card records" }, el("h2", { text: "Recent invocations" }), el("table", {},
        el("thead", {}, el("tr", {}, ["Time", "Invocation", "Status", "ms", "Start", "Trigger", "Instance"]
          .map((h) => el("th", { text: h })))), records)),
      el("div", { class: "card" }, el("h2", { text: "Logs" }), logs)),
  );

  every(5000, async () => {
    const f = await api("/functions/" + encodeURIComponent(name));
    head.replaceChildren(
      el("span", {}, el("span", { class: "pill kind", text: f.kind })),
      el("span", { text: "revision " + f.revision }),
      el("span", { text: "project " + f.project }),
      el("span", {}, el("a", { href: f.url, class: "mono", text: f.url })));
  });

  const lastCpu = new Map();
  every(2000, async () => {
    const v = await api("/functions/" + encodeURIComponent(name) + "/instances");
    if (v.kind === "wasm") {
      instances.replaceChildren(el("div", { class: "counts" },
        countsView(v.counts),
        el("span", { class: "dim", text: `· reuse ${v.reuse} · linear memory held ${fmt.bytes(v.memory_bytes)} · up to ${v.max} at once` })));
      return;
    }
    const now = performance.now();
    const rows = v.instances.map((i) => {
      const before = lastCpu.get(i.id);
      lastCpu.set(i.id, { cpu: i.cpu_seconds, t: now });
      const pct = before && now > before.t ? ((i.cpu_seconds - before.cpu) / ((now - before.t) / 1000)) * 100 : null;
      return el("tr", { dataset: { instance: i.id } },
        el("td", { class: "mono", text: i.id }),
        el("td", { text: i.revision }),
        el("td", {}, el("span", { class: "pill " + i.state, text: i.state })),
        el("td", { text: i.mode }),
        el("td", { class: "num", text: i.inflight }),
        el("td", { class: "num", text: fmt.num(i.served) }),
        el("td", { class: "num", text: pct === null ? "–" : Math.max(0, pct).toFixed(1) + "%" }),
        el("td", { class: "num", text: fmt.num(i.cpu_seconds, 2) + " s" }),
        el("td", { class: "num", text: fmt.bytes(i.memory_bytes) }),
        el("td", { class: "num", text: fmt.age(i.age_seconds) }));
    });
    instances.replaceChildren(rows.length
      ? el("table", {},
        el("thead", {}, el("tr", {}, ["Instance", "Rev", "State", "Start", "In-flight", "Served", "CPU", "CPU time", "Memory", "Age"]
          .map((h, k) => el("th", { class: k >= 4 ? "num" : "", text: h })))),
        el("tbody", {}, rows))
      : el("div", { class: "empty", text: `No instances: the function is scaled to zero (up to ${v.max} start on demand).` }));
  });

  every(5000, async () => {
    let series;
    try {
      series = await api("/functions/" + encodeURIComponent(name) + "/series?minutes=15");
    } catch (e) {
      if (e.status !== 404) throw e;
      for (const c of Object.values(charts)) c.replaceChildren(el("div", { class: "empty", text: "no data yet" }));
      return;
    }
    const step = series.step_seconds;
    const p = series.points;
    drawChart(charts.rate, p, [
      { cls: "l1", area: true, value: (x) => x.invocations / step, label: "req/s" },
      { cls: "err", value: (x) => x.errors / step, label: "errors/s" }]);
    drawChart(charts.latency, p, [
      { cls: "l1", value: (x) => x.p50_ms, label: "p50 ms" },
      { cls: "l2", value: (x) => x.p99_ms, label: "p99 ms" }]);
    drawChart(charts.cold, p, [{ cls: "bar", bars: true, value: (x) => x.cold_starts, label: "cold starts" }]);
  });

  every(5000, async () => {
    const v = await api("/functions/" + encodeURIComponent(name) + "/records?limit=50");
    records.replaceChildren(...(v.records.length ? v.records.map((r) => el("tr", {},
      el("td", { class: "dim", text: fmt.time(r.start_ms) }),
      el("td", { class: "mono", text: r.id }),
      el("td", { class: statusClass(r.status), text: r.status }),
      el("td", { class: "num", text: fmt.ms(r.duration_us / 1000) }),
      el("td", { text: r.mode || "–" }),
      el("td", { text: r.trigger }),
      el("td", { class: "mono dim", text: r.instance || "–" })))
      : [el("tr", {}, el("td", { class: "empty", colspan: 7, text: "No invocations yet." }))]));
  });

  let after = 0;
  every(3000, async () => {
    const q = after ? `after=${after}&limit=500` : "limit=200";
    const v = await api("/functions/" + encodeURIComponent(name) + "/logs?" + q);
    if (!v.lines.length) {
      if (!after && !logs.childElementCount) logs.append(el("div", { class: "dim", text: "No log lines yet." }));
      return;
    }
    const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    if (!after) logs.replaceChildren();
    for (const l of v.lines) {
      after = Math.max(after, l.id);
      logs.append(el("div", {},
        el("span", { class: "ts", text: fmt.time(l.ts) }),
        el("span", { class: "stream " + l.stream, text: l.stream }),
        l.line,
        l.instance ? el("span", { class: "dim", text: "  " + l.instance }) : null,
        l.invocation ? el("span", { class: "dim", text: " " + l.invocation }) : null));
    }
    while (logs.childElementCount > 1000) logs.firstElementChild.remove();
    if (atBottom) logs.scrollTop = logs.scrollHeight;
  });
}

function usagePage(main) {
  const windows = [["1 h", 3600], ["24 h", 86400], ["7 d", 7 * 86400], ["30 d", 30 * 86400]];
  let chosen = 86400;
  const bar = el("div", { class: "toolbar" });
  const tables = el("div");
  const draw = () => bar.replaceChildren(...windows.map(([label, secs]) => {
    const b = el("button", { type: "button", class: secs === chosen ? "active" : "", text: label });
    b.addEventListener("click", () => { chosen = secs; draw(); load().catch(showError); });
    return b;
  }));
  const table = (title, rows) => el("div", { class: "card" }, el("h2", { text: title }), el("table", {},
    el("thead", {}, el("tr", {}, el("th", { text: "Name" }),
      ["Invocations", "GB-seconds", "CPU-seconds", "Errors"].map((h) => el("th", { class: "num", text: h })))),
    el("tbody", {}, rows.length ? rows.map((u) => el("tr", { dataset: { usage: u.name } },
      el("td", {}, title === "Functions" ? el("a", { href: "#/f/" + encodeURIComponent(u.name), text: u.name }) : u.name),
      el("td", { class: "num", text: fmt.num(u.invocations) }),
      el("td", { class: "num", text: fmt.num(u.gb_seconds, 4) }),
      el("td", { class: "num", text: fmt.num(u.cpu_seconds, 3) }),
      el("td", { class: "num " + (u.errors ? "st-bad" : ""), text: fmt.num(u.errors) })))
      : el("tr", {}, el("td", { class: "empty", colspan: 5, text: "No invocations in this window." })))));
  const load = async () => {
    const v = await api("/usage?since=" + (Date.now() - chosen * 1000));
    tables.replaceChildren(table("Functions", v.functions), table("Projects", v.projects));
  };
  main.append(el("h1", { text: "Usage" }),
    el("div", { class: "sub", text: "Summed from the invocation records: GB-seconds are memory limit × duration (1 ms steps)" }),
    bar, tables);
  draw();
  every(10000, load);
}

// --- charts: inline SVG, one line (or bars) per series -------------------------------------

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function drawChart(box, points, series) {
  const W = Math.max(box.clientWidth || 360, 200), H = 150;
  const L = 40, R = 6, T = 8, B = 18;
  const n = points.length;
  const xs = (i) => L + ((W - L - R) * (i + 0.5)) / n;
  const values = series.flatMap((s) => points.map(s.value)).filter((v) => v !== null && v !== undefined);
  const max = niceMax(Math.max(0, ...values));
  const ys = (v) => T + (H - T - B) * (1 - v / max);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  // Axes, the top value, and time ticks every five minutes.
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }),
    svg("line", { class: "axis", x1: L, x2: W - R, y1: T, y2: T }),
    Object.assign(svg("text", { x: L - 4, y: T + 8, "text-anchor": "end" }), { textContent: fmt.num(max, max < 10 ? 1 : 0) }),
    Object.assign(svg("text", { x: L - 4, y: H - B, "text-anchor": "end" }), { textContent: "0" }));
  for (let k = 0; k <= 3; k++) {
    const i = Math.min(n - 1, Math.round(((n - 1) * k) / 3));
    const label = k === 3 ? "now" : `-${15 - 5 * k}m`;
    root.append(Object.assign(svg("text", { x: xs(i), y: H - 4, "text-anchor": "middle" }), { textContent: label }));
  }
  for (const s of series) {
    if (s.bars) {
      const w = Math.max(1, (W - L - R) / n - 1);
      points.forEach((p, i) => {
        const v = s.value(p) || 0;
        if (v > 0) root.append(svg("rect", { class: "bar", x: xs(i) - w / 2, y: ys(v), width: w, height: H - B - ys(v) }));
      });
      continue;
    }
    // Gaps (no invocation in a step) break the line instead of drawing zero latency.
    let d = "", pen = false;
    points.forEach((p, i) => {
      const v = s.value(p);
      if (v === null || v === undefined) { pen = false; return; }
      d += (pen ? "L" : "M") + xs(i).toFixed(1) + " " + ys(v).toFixed(1);
      pen = true;
    });
    if (s.area && d) {
      const area = d + `L${xs(n - 1).toFixed(1)} ${H - B}L${xs(0).toFixed(1)} ${H - B}Z`;
      root.append(svg("path", { class: "area", d: area }));
    }
    if (d) root.append(svg("path", { class: s.cls, d }));
    // A step alone between gaps has no line: a dot shows it.
    points.forEach((p, i) => {
      const v = s.value(p);
      const near = (j) => j >= 0 && j < n && s.value(points[j]) !== null && s.value(points[j]) !== undefined;
      if (v !== null && v !== undefined && !near(i - 1) && !near(i + 1)) {
        root.append(svg("circle", { class: "dot " + s.cls, cx: xs(i), cy: ys(v), r: 2.5 }));
      }
    });
  }
  // A hover target per step with its figures.
  const w = (W - L - R) / n;
  points.forEach((p, i) => {
    const title = svg("title");
    title.textContent = fmt.time(p.t) + "  " + series.map((s) => {
      const v = s.value(p);
      return `${s.label} ${v === null || v === undefined ? "–" : fmt.num(v, v < 10 ? 2 : 0)}`;
    }).join(", ");
    root.append(svg("rect", { class: "hit", x: xs(i) - w / 2, y: T, width: w, height: H - T - B }, title));
  });
  box.replaceChildren(root);
}

// --- start -----------------------------------------------------------------------------------

$("banner-close").addEventListener("click", () => { $("banner").hidden = true; });
$("logout").addEventListener("click", (ev) => {
  ev.preventDefault();
  localStorage.removeItem(TOKEN_KEY);
  showLogin();
});
window.addEventListener("hashchange", route);
route();
