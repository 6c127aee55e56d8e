/**
 * The admin status page, as strings the admin server serves (no build step; they are part of the
 * program, so `deno compile` carries them): `/` is the HTML, `/admin.js` its script. The page asks
 * for the token once (kept in sessionStorage, so it goes with the tab), then shows listeners,
 * users with their traffic and limits, connections over the last hour, and a user's links with
 * QR codes. Every value is put in with textContent; QR codes go in as data: images.
 *
 * @module
 */

/** The page at `/`. */
export const ADMIN_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>mtproxy</title>
<style>
  :root { color-scheme: light dark; --line: #8884; --muted: #888; --accent: #2a7ae2; }
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 16px; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 16px; margin: 24px 0 8px; }
  table { border-collapse: collapse; width: 100%; }
  th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; white-space: nowrap; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  .muted { color: var(--muted); }
  .off { color: #c33; }
  .error { color: #c33; margin: 8px 0; }
  button { cursor: pointer; }
  #login { max-width: 420px; margin: 80px auto; }
  #login input { width: 100%; box-sizing: border-box; padding: 6px; margin: 8px 0; font: inherit; }
  #chart { width: 100%; height: 120px; border: 1px solid var(--line); }
  #chart polyline { fill: none; stroke: var(--accent); stroke-width: 2; }
  #chart text { fill: var(--muted); font-size: 11px; }
  .link { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
  .codes { display: flex; flex-wrap: wrap; gap: 16px; }
  .code { border: 1px solid var(--line); padding: 8px; max-width: 320px; }
  .code img { width: 200px; height: 200px; background: #fff; display: block; }
  [hidden] { display: none !important; }
</style>
</head>
<body>
<form id="login" hidden>
  <h1>mtproxy</h1>
  <p>The admin token (admin.token in the configuration, or admin_token in the state file):</p>
  <input id="token" type="password" autocomplete="current-password" required autofocus>
  <button type="submit">Open</button>
  <p id="login-error" class="error" hidden></p>
</form>
<main id="main" hidden>
  <h1>mtproxy <span id="version" class="muted"></span></h1>
  <div id="summary" class="muted"></div>
  <p id="error" class="error" hidden></p>
  <h2>Connections, last hour</h2>
  <svg id="chart" viewBox="0 0 600 120" preserveAspectRatio="none" role="img" aria-label="Connections over the last hour"></svg>
  <h2>Listeners</h2>
  <table id="listeners">
    <thead><tr><th>Name</th><th>Address</th><th>Protocols</th><th>TLS domain</th><th class="num">Connections</th></tr></thead>
    <tbody></tbody>
  </table>
  <h2>Users</h2>
  <table id="users">
    <thead><tr><th>Name</th><th>Status</th><th class="num">Connections</th><th class="num">Unique IPs</th><th class="num">Traffic</th><th class="num">Quota left</th><th class="num">Rate limit</th><th>Expires</th><th>From</th><th></th></tr></thead>
    <tbody></tbody>
  </table>
  <p id="no-users" class="muted" hidden>No users yet: add one with POST /api/users.</p>
  <section id="links" hidden>
    <h2>Links of <span id="links-name"></span> <button id="links-close" type="button">Close</button></h2>
    <p class="muted">These links hold the user's secret: share them with that user only.</p>
    <div id="links-warnings" class="muted"></div>
    <div id="links-codes" class="codes"></div>
  </section>
  <p class="muted"><button id="logout" type="button">Forget the token</button> Refreshes every 10 seconds.</p>
</main>
<script src="/admin.js"></script>
</body>
</html>
`;

/** The page's script at `/admin.js`. */
export const ADMIN_PAGE_JS = `"use strict";
(() => {
  const KEY = "mtproxy-admin-token";
  const $ = (id) => document.getElementById(id);
  let timer = null;

  function token() { return sessionStorage.getItem(KEY); }

  async function api(path) {
    const res = await fetch(path, { headers: { authorization: "Bearer " + token() } });
    if (res.status === 401 || res.status === 429) {
      const body = await res.json().catch(() => ({}));
      const err = new Error(body.error || res.statusText);
      err.auth = true;
      throw err;
    }
    if (!res.ok) throw new Error((await res.json().catch(() => ({}))).error || res.statusText);
    return res.json();
  }

  function showLogin(message) {
    if (timer !== null) clearInterval(timer);
    timer = null;
    $("main").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = !message;
    $("login-error").textContent = message || "";
    $("token").focus();
  }

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "-" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function bytes(n) {
    if (n === null || n === undefined) return null;
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
  }

  function limit(value, max) {
    if (value === null) return max ? "- / " + max : "-";
    return max ? value + " / " + max : String(value);
  }

  function renderListeners(list) {
    const body = $("listeners").tBodies[0];
    body.replaceChildren();
    for (const l of list) {
      const row = body.insertRow();
      row.dataset.listener = l.name;
      cell(row, l.name);
      cell(row, l.address);
      cell(row, l.protocols.join(", "));
      cell(row, l.tls_domains[0] || "-");
      cell(row, l.connections, "num");
    }
  }

  function renderUsers(list) {
    const body = $("users").tBodies[0];
    body.replaceChildren();
    $("no-users").hidden = list.length > 0;
    for (const u of list) {
      const row = body.insertRow();
      row.dataset.user = u.name;
      cell(row, u.name);
      const status = cell(row, !u.enabled ? "disabled" : u.expired ? "expired" : "active");
      if (!u.enabled || u.expired) status.className = "off";
      cell(row, limit(u.connections, u.max_connections), "num");
      cell(row, limit(u.unique_ips, u.max_unique_ips), "num");
      cell(row, bytes(u.bytes_used), "num");
      cell(row, u.data_quota === null ? "no quota" : (bytes(u.quota_left) ?? "-") + " of " + bytes(u.data_quota), "num");
      cell(row, u.rate_limit === null ? "-" : bytes(u.rate_limit) + "/s", "num");
      cell(row, u.expires ? u.expires.slice(0, 10) : "never");
      cell(row, u.source === "users_file" ? "users file" : "config");
      const td = cell(row, "");
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Links";
      b.addEventListener("click", () => showLinks(u.name));
      td.appendChild(b);
    }
  }

  function renderChart(samples) {
    const svg = $("chart");
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const W = 600, H = 120, top = 12, bottom = 16;
    const max = Math.max(1, ...samples.map((s) => s.connections));
    const t1 = samples.length ? Date.parse(samples[samples.length - 1].time) : Date.now();
    const t0 = t1 - 3600 * 1000;
    const x = (t) => Math.max(0, (Date.parse(t) - t0) / (t1 - t0) * W);
    const y = (n) => top + (1 - n / max) * (H - top - bottom);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", samples.map((s) => x(s.time).toFixed(1) + "," + y(s.connections).toFixed(1)).join(" "));
    svg.appendChild(line);
    const label = (text, lx, ly, anchor) => {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", lx); t.setAttribute("y", ly);
      t.setAttribute("text-anchor", anchor);
      t.textContent = text;
      svg.appendChild(t);
    };
    label("max " + max, 4, 11, "start");
    label("60 min ago", 4, H - 3, "start");
    label("now: " + (samples.length ? samples[samples.length - 1].connections : 0), W - 4, H - 3, "end");
  }

  async function showLinks(name) {
    try {
      const data = await api("/api/users/" + encodeURIComponent(name) + "/links");
      $("links-name").textContent = data.name;
      $("links-warnings").textContent = data.warnings.join(" ");
      const codes = $("links-codes");
      codes.replaceChildren();
      for (const l of data.links) {
        const box = document.createElement("div");
        box.className = "code";
        box.dataset.protocol = l.protocol;
        const title = document.createElement("strong");
        title.textContent = l.listener + " · " + l.protocol + (l.protocol === "tls" ? " (" + l.encoding + ")" : "");
        box.appendChild(title);
        if (l.qr_svg) {
          const img = document.createElement("img");
          img.alt = "QR code of the " + l.protocol + " link";
          img.src = "data:image/svg+xml;base64," + btoa(l.qr_svg);
          box.appendChild(img);
        }
        for (const href of [l.tg, l.https]) {
          const p = document.createElement("div");
          p.className = "link";
          p.textContent = href;
          box.appendChild(p);
        }
        codes.appendChild(box);
      }
      $("links").hidden = false;
    } catch (e) {
      if (e.auth) showLogin(e.message); else showError(e);
    }
  }

  function showError(e) {
    $("error").hidden = false;
    $("error").textContent = String(e.message || e);
  }

  async function refresh() {
    try {
      // One request first: a wrong token costs one failed attempt, not four.
      const health = await api("/api/health");
      const [listeners, users, history] = await Promise.all([
        api("/api/listeners"), api("/api/users"), api("/api/history"),
      ]);
      $("error").hidden = !health.config_error;
      $("error").textContent = health.config_error ? "The configuration files do not validate now: " + health.config_error : "";
      $("version").textContent = health.version + " · " + health.role;
      $("summary").textContent = health.connections + " connections now · " + health.users + (health.users === 1 ? " user" : " users") + " · up " + Math.round(health.uptime_seconds / 60) + " min";
      renderListeners(listeners.listeners);
      renderUsers(users.users);
      renderChart(history.samples);
      document.body.dataset.loaded = String(Date.now());
    } catch (e) {
      if (e.auth) { sessionStorage.removeItem(KEY); showLogin(e.message); } else showError(e);
    }
  }

  function start() {
    $("login").hidden = true;
    $("main").hidden = false;
    refresh();
    if (timer === null) timer = setInterval(refresh, 10000);
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    start();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(""); });
  $("links-close").addEventListener("click", () => { $("links").hidden = true; });
  if (token()) start(); else showLogin("");
})();
`;
