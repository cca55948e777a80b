// nonstop dashboard: one fetch of /api/v1/cluster, re-fetched within ~150 ms of any store change
// announced on the SSE stream (/api/v1/events/stream). No framework, no build step.
"use strict";

const API = "/api/v1";
let token = null;
let role = "viewer";
let model = null;          // the last /cluster document
let lastHosts = {};        // guest -> host, to highlight guests that just moved
let refetchTimer = null;
let source = null;
let openDetail = null;     // {kind, name} of the open drawer

// ------------------------------------------------------------------ helpers
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const GiB = 1024 ** 3, MiB = 1024 ** 2;
function size(b) { if (b == null) return "–"; return b >= GiB ? (b / GiB).toFixed(b % GiB ? 1 : 0) + "G" : Math.round(b / MiB) + "M"; }
function num(x, d = 1) { return x == null ? "–" : (+x).toFixed(d).replace(/\.0+$/, ""); }
function clock(at) { const d = new Date(at * 1000); return d.toTimeString().slice(0, 8); }

async function api(path, opts = {}) {
  const headers = { Authorization: "Bearer " + token, ...(opts.body ? { "Content-Type": "application/json" } : {}) };
  const r = await fetch(API + path, { ...opts, headers });
  if (r.status === 401) { showLogin("That token was not accepted."); throw new Error("401"); }
  const text = await r.text();
  let body = text; try { body = JSON.parse(text); } catch (_) { /* plain text */ }
  if (!r.ok) {
    const d = body && body.detail;
    throw new Error(typeof d === "string" ? d : JSON.stringify(d || body));
  }
  return body;
}

function toast(msg, bad = false) {
  const t = $("toast"); t.textContent = msg; t.className = "toast" + (bad ? " bad" : "");
  clearTimeout(toast.timer); toast.timer = setTimeout(() => t.classList.add("hidden"), 4000);
}

// ------------------------------------------------------------------ auth
function showLogin(err) {
  $("login").classList.remove("hidden"); $("login-error").textContent = err || "";
  if (source) { source.close(); source = null; }
}
$("login-form").addEventListener("submit", (e) => {
  e.preventDefault(); token = $("login-token").value.trim(); localStorage.setItem("nonstop-token", token);
  $("login").classList.add("hidden"); start();
});
$("logout").addEventListener("click", () => { localStorage.removeItem("nonstop-token"); token = null; showLogin(""); });

// ------------------------------------------------------------------ live updates
function scheduleRefetch(delay = 120) {
  if (refetchTimer) return;
  refetchTimer = setTimeout(async () => { refetchTimer = null; await refresh(); }, delay);
}
function connect() {
  if (source) source.close();
  source = new EventSource(`${API}/events/stream?token=${encodeURIComponent(token)}`);
  source.onopen = () => { $("live").className = "live on"; $("live-text").textContent = "live"; };
  source.onerror = () => { $("live").className = "live off"; $("live-text").textContent = "reconnecting"; };
  for (const type of ["change", "event", "resync", "stats"]) source.addEventListener(type, () => scheduleRefetch());
}
setInterval(() => { if (token && (!source || source.readyState !== 1)) scheduleRefetch(0); }, 5000);

async function refresh() {
  try { model = await api("/cluster"); } catch (e) { if (e.message !== "401") toast("refresh failed: " + e.message, true); return; }
  render();
}

async function start() {
  try {
    const me = await api("/whoami"); role = me.role;
    document.body.classList.toggle("viewer", role !== "admin");
    $("role").textContent = role; $("cluster-name").textContent = me.cluster;
  } catch (e) { return; }
  await refresh(); connect();
}

// ------------------------------------------------------------------ rendering
function render() {
  const c = model;
  const downHosts = c.hosts.filter((h) => !["up", "maintenance", "link-degraded"].includes(h.state));
  const running = c.guests.filter((g) => g.state === "running").length;
  const health = $("health");
  if (!c.has_spec) { health.textContent = "no spec"; health.className = "pill warn"; }
  else if (downHosts.length) { health.textContent = `${downHosts.length} host${downHosts.length > 1 ? "s" : ""} down`; health.className = "pill bad"; }
  else if (running < c.guests.length) { health.textContent = `${c.guests.length - running} guest(s) not running`; health.className = "pill warn"; }
  else { health.textContent = "healthy"; health.className = "pill ok"; }
  const active = c.ops.filter((o) => !o.final);
  $("ops").innerHTML = active.map((o) => `<span class="pill warn" title="${esc(o.id)}">${esc(o.kind || "op")} ${esc(o.host || o.guest || "")}: ${esc(o.step || "")}</span>`).join(" ");
  $("summary").textContent = `${c.hosts.length} hosts · ${running}/${c.guests.length} guests running · ${c.services.length} services · rev ${c.revision}`;
  renderFabric(c); renderHosts(c); renderServices(c); renderNetworks(c); renderEvents(c);
  lastHosts = Object.fromEntries(c.guests.map((g) => [g.name, g.host]));
  if (openDetail) showDetail(openDetail.kind, openDetail.name, true);
}

function renderFabric(c) {
  const svg = $("fabric"); const W = svg.clientWidth || 900, H = 170;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const sw = c.switches, hosts = c.hosts;
  const swX = (i) => (W / (sw.length + 1)) * (i + 1), hostX = (i) => (W / (hosts.length + 1)) * (i + 1);
  let out = "";
  const swIndex = Object.fromEntries(sw.map((s, i) => [s.name, i]));
  const boxW = Math.min(170, W / (hosts.length + 1) - 14);
  hosts.forEach((h, i) => {
    const x = hostX(i), team = h.teams[0];
    h.nics.forEach((n, j) => {
      const px = x - boxW / 2 + ((j + 1) * boxW) / (h.nics.length + 1), py = 118;
      const si = swIndex[n.switch]; if (si == null) return;
      const failedSw = sw[si].state === "failed";
      const st = h.state === "failed" || h.state === "down" || failedSw ? "down" : (n.state || "unknown");
      const active = team && team.active === n.name ? " active" : "";
      out += `<path class="cable ${esc(st)}${active}" d="M${swX(si)},44 C${swX(si)},80 ${px},80 ${px},${py}"><title>${esc(h.name)}/${esc(n.name)} ↔ ${esc(n.switch)}: ${esc(st)}</title></path>`;
      out += `<circle class="port" cx="${px}" cy="${py}" r="5" fill="${st === "up" ? "#3fb950" : st === "down" ? "#f85149" : "#6e7681"}"/>`;
      out += `<text x="${px}" y="${py - 9}" text-anchor="middle" class="teamlabel">${esc(n.name)}</text>`;
    });
    out += `<g class="hostbox ${esc(h.state)}" data-fabric-host="${esc(h.name)}"><rect x="${x - boxW / 2}" y="123" width="${boxW}" height="38" rx="6"/>`;
    out += `<text x="${x}" y="140" text-anchor="middle" font-weight="700">${esc(h.name)}</text>`;
    out += `<text x="${x}" y="154" text-anchor="middle" class="teamlabel">${h.state !== "up" ? esc(h.state.toUpperCase()) : team ? esc(team.name + " · active " + (team.active || "–")) : "up"}</text></g>`;
  });
  sw.forEach((s, i) => {
    out += `<g class="sw ${esc(s.state)}" data-action="fail-switch" data-switch="${esc(s.name)}"><title>${esc(s.name)}: ${esc(s.state)}${role === "admin" ? " (click to fail this switch)" : ""}</title><rect x="${swX(i) - 55}" y="14" width="110" height="30" rx="5"/>`;
    out += `<text x="${swX(i)}" y="34" text-anchor="middle" font-weight="600">⇄ ${esc(s.name)}${s.state === "failed" ? " ✕" : ""}</text></g>`;
  });
  svg.innerHTML = out;
}

function bar(label, alloc, phys, eff, used, fmt) {
  const scale = Math.max(eff || 0, alloc || 0, phys || 0) || 1;
  const pct = (v) => Math.max(0, Math.min(100, (100 * v) / scale));
  const base = Math.min(alloc, phys);
  const over = alloc > phys ? alloc - phys : 0;
  const ratio = phys ? alloc / phys : 0;
  let inner = `<div class="fill" style="width:${pct(base)}%"></div>`;
  if (over) inner += `<div class="over" style="left:${pct(phys)}%;width:${pct(over)}%"></div>`;
  if (used != null) inner += `<div class="used" style="width:${pct(used)}%"></div>`;
  inner += `<div class="phys" style="left:calc(${pct(phys)}% - 1px)" title="physical ${fmt(phys)}"></div>`;
  const title = `${label}: allocated ${fmt(alloc)} of physical ${fmt(phys)} (${ratio.toFixed(2)}×); effective maximum ${fmt(eff)} = physical × ratio − reserved${used != null ? `; in use ${fmt(used)}` : ""}`;
  return `<div class="bar-row" title="${esc(title)}"><span class="muted">${label}</span><div class="bar">${inner}</div>` +
    `<span class="bar-label${ratio > 1 ? " over" : ""}">${fmt(alloc)}/${fmt(phys)} ${ratio.toFixed(2)}× <span class="muted">≤${fmt(eff)}</span></span></div>`;
}

function renderHosts(c) {
  const byName = Object.fromEntries(c.guests.map((g) => [g.name, g]));
  const html = c.hosts.map((h) => {
    const cap = h.capacity || {};
    const team = h.teams[0];
    const nics = `<span class="muted rowlabel">net</span>` + h.nics.map((n) => `<span class="nic ${esc(n.state)}${team && team.active === n.name ? " active" : ""}" data-nic="${esc(n.name)}" data-state="${esc(n.state)}" data-action="cut-link" data-link="${esc(h.name)}/${esc(n.name)}" title="${esc(n.name)} → ${esc(n.switch)}: ${esc(n.state)} (from ${esc(n.source || "?")})${team && team.active === n.name ? " · the team's active member" : ""}${role === "admin" ? " (click to cut this cable)" : ""}">${esc(n.name)}→${esc(n.switch)}</span>`).join("") +
      h.teams.map((t) => `<span class="team ${esc(t.state)}" data-team="${esc(t.name)}" data-state="${esc(t.state)}" data-active="${esc(t.active || "")}" title="${esc(t.name)} (${esc(t.mode)}): ${esc(t.members.map((m) => m.name + " " + m.state).join(", "))}${t.failovers != null ? " · " + t.failovers + " failover(s)" : ""}${t.last_failover_at ? " · last " + clock(t.last_failover_at) : ""} · from ${esc(t.source || "?")}">` +
        `${esc(t.name)} <span class="muted">${esc(t.mode)}</span> active <b>${esc(t.active || "none")}</b> <span class="chip ${esc(t.state)}">${esc(t.state)}</span>${t.failovers ? ` <span class="muted">${t.failovers}× failover</span>` : ""}</span>`).join("");
    const guests = h.guests.map((name) => {
      const g = byName[name] || {}; const moved = lastHosts[name] && lastHosts[name] !== h.name;
      const memPct = cap.memory ? Math.min(100, (100 * (g.memory || 0)) / cap.memory) : 0;
      return `<div class="guest ${esc(g.kind)}${moved ? " arrived" : ""}" data-guest="${esc(name)}" data-state="${esc(g.state)}" title="${esc(name)}: ${esc(g.state)} · ${esc(g.kind)} · ${esc(g.address || "no address")}${g.migrate_to ? " · migrating to " + esc(g.migrate_to) : ""}">` +
        `<div class="gname"><span>${esc(name)}</span><span class="gdot"></span></div>` +
        `<div class="gmeta">${esc(g.kind === "vm" ? "VM" : "proc")} ${g.vcpus ?? "?"}vCPU ${size(g.memory)}</div>` +
        `<div class="mini"><div style="width:${memPct}%"></div></div></div>`;
    }).join("") || `<div class="empty">${h.state === "failed" ? "no guests — failed over" : "no guests"}</div>`;
    const comp = (c.components || []).find((x) => x.host === h.name) || { health: "unknown", groups: [], watched: false };
    const hw = `<div class="nics hw" data-health="${esc(comp.health)}" title="${esc(comp.reason || (comp.watched ? "" : "no hardware reading yet"))}"><span class="muted rowlabel">hw</span>` +
      `<span class="chip ${esc(comp.health)}" data-role="health">${esc(comp.health)}</span>` +
      comp.groups.map((g) => `<span class="chip ${esc(g.state)}" data-group="${esc(g.group)}" data-state="${esc(g.state)}" title="${esc(g.group)}: ${esc(g.state)}, ${g.working}/${g.total} working${g.failed.length ? " — failed: " + esc(g.failed.join(", ")) : ""}">${esc(g.group)} ${esc(g.state)} ${g.working}/${g.total}</span>`).join("") +
      (comp.placement && comp.placement !== "normal" ? `<span class="chip degraded">${esc(comp.placement)}</span>` : "") + `</div>`;
    const usedMem = h.usage && (h.usage.memory_used ?? h.usage.memory_usage);
    const usedCpu = h.usage && (h.usage.cpu_usage ?? h.usage.cpu_used);
    const maint = h.state === "maintenance";
    return `<div class="host" data-host="${esc(h.name)}" data-state="${esc(h.state)}">
      <div class="host-head"><span class="host-name">${esc(h.name)}</span><span class="state ${esc(h.state)}" data-role="host-state" title="${esc(h.state_reason)}">${esc(h.state)}</span>
        <span class="host-actions admin-only">
          <button class="btn" data-action="${maint ? "exit-maintenance" : "enter-maintenance"}" data-host="${esc(h.name)}">${maint ? "Exit maint." : "Maint."}</button>
          <button class="btn danger" data-action="partition" data-host="${esc(h.name)}" title="cut this host off from the others">Partition</button>
          <button class="btn danger" data-action="fail-host" data-host="${esc(h.name)}" title="power the host off (lab chaos)">Fail host</button>
        </span></div>
      <div class="host-body">
        <div class="host-meta">${cap.cpus ?? "?"} CPUs · ${size(cap.memory)} RAM · ratios cpu ${num(cap.ratios && cap.ratios.cpu)}× mem ${num(cap.ratios && cap.ratios.memory)}× · ${h.guests.length} guests · ${esc(h.state_reason)}</div>
        <div class="nics">${nics}</div>${hw}
        ${bar("vCPU", h.allocated.vcpus, cap.cpus || 0, cap.effective_cpus || 0, usedCpu, (v) => num(v))}
        ${bar("memory", h.allocated.memory, cap.memory || 0, cap.effective_memory || 0, usedMem, size)}
        <div class="guests">${guests}</div>
      </div></div>`;
  }).join("");
  $("hosts").innerHTML = html;
}

function renderServices(c) {
  $("services").innerHTML = c.services.map((s) => {
    const max = Math.max(1, ...s.backends.map((b) => b.rate || 0));
    const rows = s.backends.map((b) => `<tr><td class="h"><span class="hdot ${esc(b.health)}" title="${esc(b.health)}"></span></td><td>${esc(b.name)}</td><td class="muted">${esc(b.address)}</td>` +
      `<td style="width:70px"><div class="ratebar" style="width:${(100 * (b.rate || 0)) / max}%"></div></td><td style="text-align:right">${num(b.rate || 0)}/s</td></tr>`).join("");
    return `<div class="svc" data-service="${esc(s.name)}"><div class="svc-head"><span class="svc-name">${esc(s.name)}</span><span class="muted mono">${esc(s.listen || "")}</span>` +
      `<span class="muted small">${esc(s.mode || "")} · ${esc(s.algorithm || "")}</span><span class="svc-rate">${num(s.rate || 0)} req/s</span></div>` +
      (s.balancer_error ? `<div class="error small">balancer: ${esc(s.balancer_error)}</div>` : "") +
      `<table class="backends">${rows || `<tr><td class="empty">no backends</td></tr>`}</table></div>`;
  }).join("") || `<div class="empty">no services</div>`;
}

function renderNetworks(c) {
  $("networks").innerHTML = c.networks.map((n) => `<div class="net"><b>${esc(n.name)}</b><span class="muted">${esc(n.mode)}</span><span class="mono">${esc(n.subnet)}${n.uplink ? " via " + esc(n.uplink) : ""}</span><span class="mono" title="addresses allocated / usable">${n.addresses_used}/${n.addresses_total}</span></div>`).join("") || `<div class="empty">no networks</div>`;
}

const KIND_CLASS = [[/done$|moved|placed|serving|failback|heal|applied|repaired/, "good"],
  [/dead|fail|fence|unplaceable|chaos|lost|crash/, "bad"], [/suspect|degraded|partition|maintenance|migrat/, "warn"],
  [/op|backends/, "op"]];
function kindClass(kind) { for (const [re, cls] of KIND_CLASS) if (re.test(kind)) return cls; return "info"; }
let seenSeq = 0;
function renderEvents(c) {
  const evs = c.events.slice(-120).reverse();
  const top = evs.length ? +evs[0].seq : 0;
  $("events").innerHTML = evs.map((e) => `<li class="${+e.seq > seenSeq && seenSeq ? "new" : ""}" data-kind="${esc(e.kind)}"><span class="t">${clock(e.at)}</span><span class="k ${kindClass(e.kind)}"></span>` +
    `<span class="what"><b>${esc(e.kind)}</b> ${esc(e.subject)} <span class="muted">${esc(e.reason)}</span>${e.by ? ` <span class="by">by ${esc(e.by)}</span>` : ""}</span></li>`).join("") || `<li class="empty">no events yet</li>`;
  seenSeq = Math.max(seenSeq, top);
}

// ------------------------------------------------------------------ details (describe)
async function showDetail(kind, name, quiet) {
  openDetail = { kind, name };
  let d; try { d = await api(`/describe/${kind}/${encodeURIComponent(name)}`); } catch (e) { if (!quiet) toast(e.message, true); return; }
  $("detail-title").textContent = `${kind} ${name}`;
  const r = d.record; let html = `<div class="kv">`;
  for (const k of ["state", "host", "observed_host", "kind", "group", "vcpus", "memory", "address", "epoch", "migrate_to", "note"]) {
    if (r[k] != null && r[k] !== "") html += `<span class="muted">${k}</span><span class="v">${esc(k === "memory" ? size(r[k]) : r[k])}</span>`;
  }
  html += `</div>`;
  const p = d.placement;
  if (p && p.available && p.explanation) {
    const x = p.explanation;
    html += `<h4>Placement: would place on <b>${esc(p.would_place_on || "nowhere")}</b>${p.current_host ? ` (runs on ${esc(p.current_host)})` : ""}</h4>`;
    html += `<table class="expl"><tr><th>filter</th><th>removed</th><th>remaining</th></tr>` + x.filters.map((f) =>
      `<tr><td>${esc(f.filter)}</td><td class="num" title="${esc(f.removed_hosts.join(", "))}">${f.removed}${f.removed_hosts.length ? " (" + esc(f.removed_hosts.join(", ")) + ")" : ""}</td><td class="num">${f.remaining}</td></tr>`).join("") + `</table>`;
    const hosts = [x.chosen, ...x.runners_up].filter(Boolean);
    if (hosts.length) {
      const ws = hosts[0].scores.map((s) => s.weigher);
      html += `<table class="expl"><tr><th>host</th>${ws.map((w) => `<th title="${esc(w)}">${esc(w.replace("Weigher", ""))}</th>`).join("")}<th>total</th></tr>` +
        hosts.map((hs, i) => `<tr><td>${i === 0 ? "<b>" + esc(hs.host) + "</b>" : esc(hs.host)}</td>${hs.scores.map((s) => `<td class="num" title="weight ${s.weight}, raw ${num(s.raw, 3)}">${num(s.normalized * s.weight, 2)}</td>`).join("")}<td class="num">${num(hs.total, 2)}</td></tr>`).join("") + `</table>`;
    }
    html += `<div class="muted small">${esc(x.reason)}</div>`;
  } else if (p && p.unplaced_reason) html += `<p class="error">${esc(p.unplaced_reason)}</p>`;
  if (kind === "guest" && role === "admin") {
    const targets = model.hosts.filter((h) => h.name !== r.host && h.state === "up").map((h) => `<option>${esc(h.name)}</option>`).join("");
    html += `<p><select id="migrate-to">${targets}</select> <button class="btn" data-action="migrate" data-guest="${esc(name)}">Migrate</button> ` +
      `<button class="btn danger" data-action="fail-guest" data-guest="${esc(name)}">Fail guest</button></p>`;
  }
  if (d.events && d.events.length) html += `<h4>Recent events</h4><ol class="timeline">` + d.events.slice().reverse().map((e) => `<li><span class="t">${clock(e.at)}</span><span class="k ${kindClass(e.kind)}"></span><span class="what"><b>${esc(e.kind)}</b> <span class="muted">${esc(e.reason)}</span></span></li>`).join("") + `</ol>`;
  $("detail-body").innerHTML = html; $("detail").classList.remove("hidden");
}
$("detail-close").addEventListener("click", () => { openDetail = null; $("detail").classList.add("hidden"); });

// ------------------------------------------------------------------ actions
async function act(label, path, body) {
  try { await api(path, { method: "POST", body: body ? JSON.stringify(body) : undefined }); toast(label + ": requested"); scheduleRefetch(0); }
  catch (e) { toast(label + ": " + e.message, true); }
}
document.addEventListener("click", (e) => {
  const b = e.target.closest("[data-action]");
  if (b) {
    const host = b.dataset.host, guest = b.dataset.guest;
    if (role !== "admin" && ["cut-link", "fail-switch"].includes(b.dataset.action)) return;
    switch (b.dataset.action) {
      case "cut-link": if (confirm(`Cut the cable ${b.dataset.link}?`)) act(`cut ${b.dataset.link}`, "/chaos/fail", { target: "link", name: b.dataset.link }); break;
      case "fail-switch": if (confirm(`Fail switch ${b.dataset.switch} (every cable to it goes dark)?`)) act(`fail ${b.dataset.switch}`, "/chaos/fail", { target: "switch", name: b.dataset.switch }); break;
      case "fail-host": if (confirm(`Power off ${host}? Its guests will fail over.`)) act(`fail ${host}`, "/chaos/fail", { target: "host", name: host }); break;
      case "partition": if (confirm(`Partition ${host} from the other hosts?`)) act(`partition ${host}`, "/chaos/partition", { host }); break;
      case "enter-maintenance": act(`maintenance ${host}`, `/hosts/${host}/maintenance`, { action: "enter" }); break;
      case "exit-maintenance": act(`maintenance exit ${host}`, `/hosts/${host}/maintenance`, { action: "exit" }); break;
      case "heal": act("heal", "/chaos/heal"); break;
      case "migrate": act(`migrate ${guest}`, `/guests/${guest}/migrate`, { to: $("migrate-to").value }); break;
      case "fail-guest": act(`fail ${guest}`, "/chaos/fail", { target: "guest", name: guest }); break;
    }
    return;
  }
  const g = e.target.closest("[data-guest]");
  if (g) { showDetail("guest", g.dataset.guest); return; }
  const h = e.target.closest(".host-name");
  if (h) showDetail("host", h.textContent);
});
window.addEventListener("resize", () => model && renderFabric(model));

// ------------------------------------------------------------------ boot
(function boot() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { localStorage.setItem("nonstop-token", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
  token = localStorage.getItem("nonstop-token");
  if (!token) showLogin(""); else start();
})();
