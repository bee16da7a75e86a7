// tabby ui: the topology, the reachability matrix and the flow stream, from /api/*.
// Plain DOM, no framework, no build step. Text from the server only ever goes into
// textContent and attributes, never parsed as HTML.
"use strict";

const FLOWS_EVERY = 1000, MATRIX_EVERY = 3000, TOPOLOGY_EVERY = 5000;
const state = { families: [], portChosen: false, seen: new Set(), firstFlows: true };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v; else node.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function getJSON(path) {
  const resp = await fetch(path, { cache: "no-store" });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = { error: `HTTP ${resp.status}` }; }
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}

function clock(t) { return new Date(t * 1000).toLocaleTimeString([], { hour12: false }); }
function setText(id, text) { document.getElementById(id).textContent = text; }
function status(text, bad) {
  const s = document.getElementById("status");
  s.textContent = text; s.classList.toggle("bad", !!bad);
}

// -- topology ---------------------------------------------------------------------

function renderTopology(t) {
  setText("lab-name", t.lab ? `lab ${t.lab}` : "(no lab: this machine's datastore)");
  const box = document.getElementById("topology");
  const parts = [];
  if (t.router) {
    const fabric = (t.racks || []).map(r => r.gateways.join(", ")).join("; ");
    parts.push(el("div", { class: "router", "data-router": t.router },
      el("b", {}, "top-of-rack router "), t.router, el("div", { class: "addr" }, fabric)));
    parts.push(el("div", { class: "links" }, ...t.nodes.map(() => el("span"))));
  }
  const nodes = el("div", { class: "nodes" });
  for (const n of t.nodes) {
    const card = el("div", { class: "node", "data-node": n.name },
      el("h3", {}, n.name, n.rack ? el("span", { class: "note" }, ` rack ${n.rack}`) : null),
      el("div", { class: "addr" }, (n.fabric || n.addresses).join("  ")));
    for (const p of n.pods) {
      const ports = p.ports.map(x => `${x.port}/${x.protocol}`).join(" ");
      card.append(el("div", { class: "pod", "data-pod": p.ref },
        el("b", {}, p.ref), el("div", { class: "addr" }, p.ips.join("  ")),
        ports ? el("div", { class: "note" }, `ports ${ports}`) : null));
    }
    if (!n.pods.length) card.append(el("p", { class: "note" }, "no pods"));
    nodes.append(card);
  }
  parts.push(nodes);
  const facts = [t.stack, t.encap && `encap ${t.encap}`, t.bgp && `bgp ${t.bgp}`,
                 t.pools && `pools ${t.pools.join(", ")}`].filter(Boolean);
  if (facts.length) parts.push(el("p", { class: "note" }, facts.join(" · ")));
  box.replaceChildren(...parts);

  const families = t.families && t.families.length ? t.families : ["ipv4"];
  if (families.join() !== state.families.join()) {
    state.families = families;
    document.getElementById("matrix-family").replaceChildren(
      ...families.map(f => el("option", {}, f)));
  }
  if (!state.portChosen) {
    const declared = t.nodes.flatMap(n => n.pods.flatMap(p => p.ports.map(x => x.port)));
    if (declared.length) document.getElementById("matrix-port").value = Math.min(...declared);
  }
}

async function refreshTopology() {
  try { renderTopology(await getJSON("/api/topology")); }
  catch (e) { status(`topology: ${e.message}`, true); }
}

// -- reachability matrix -------------------------------------------------------------

function matrixMode() { return document.querySelector("input[name=mode]:checked").value; }

function decidedBy(c) {
  if (c.policy) return `${policyName(c.policy)} ${c.direction} rule ${c.rule}`;
  if (c.reason === "default-deny" && c.tier) return `end of tier ${c.tier}`;
  return c.verdict === "deny" ? c.summary : "";
}

function label(mode, verdict) {
  if (mode === "probe") return verdict === "allow" ? "✓ connected" : "✗ failed";
  return verdict === "allow" ? "✓ allow" : "✗ deny";
}

function renderMatrix(m) {
  const caption = m.mode === "policy"
    ? `What policy would decide for a new ${m.protocol} connection to port ${m.port} over ` +
      `${m.family}: tabby policy explain's engine, the same rules the agents program ` +
      `(re-evaluated every ${MATRIX_EVERY / 1000} s). Hover a cell for the reason.`
    : `Live probes: real ${m.protocol} connections to port ${m.port} over ${m.family} from ` +
      `each pod, at ${clock(m.taken)} (tabby lab probe).`;
  setText("matrix-source", caption);
  const byPair = new Map(m.cells.map(c => [`${c.from} ${c.to}`, c]));
  const head = el("tr", {}, el("th", {}, "from \\ to"),
    ...m.pods.map(p => el("th", { class: "to" }, p)));
  const rows = m.pods.map(src => el("tr", {}, el("th", {}, src), ...m.pods.map(dst => {
    const c = byPair.get(`${src} ${dst}`);
    if (!c) return el("td", { class: "cell self" }, "·");
    const why = m.mode === "policy" ? decidedBy(c) : "";
    return el("td", {
      class: `cell ${c.verdict}`, title: c.summary, "data-from": src, "data-to": dst,
      "data-verdict": c.verdict, "data-mode": m.mode,
      "data-policy": c.policy ? policyName(c.policy) : null, "data-rule": c.rule,
    }, label(m.mode, c.verdict), why ? el("small", {}, why) : null);
  })));
  const table = el("table", { "data-mode": m.mode, "data-port": m.port,
                              "data-protocol": m.protocol, "data-family": m.family },
    el("thead", {}, head), el("tbody", {}, ...rows));
  document.getElementById("matrix").replaceChildren(
    m.pods.length ? table : el("p", { class: "note" }, "no pods"));
}

async function refreshMatrix(mode) {
  const q = new URLSearchParams({
    mode, protocol: document.getElementById("matrix-protocol").value,
    port: document.getElementById("matrix-port").value || "80",
    family: document.getElementById("matrix-family").value || state.families[0] || "ipv4",
  });
  if (mode === "probe") setText("matrix-source", "probing…");
  try {
    const m = await getJSON(`/api/matrix?${q}`);
    if (mode === matrixMode()) renderMatrix(m);
    setText("matrix-error", "");
  } catch (e) { setText("matrix-error", e.message); }
}

// -- flows ------------------------------------------------------------------------

function policyName(p) { return p.namespace ? `${p.namespace}/${p.name}` : p.name; }

function flowPolicy(f) {
  if (f.policy) return policyName(f.policy);
  if (f.reason === "tier-deny") return `end of tier ${f.tier}`;
  if (f.reason === "no-policy") return "(no policy)";
  return "-";
}

function flowKey(f) {
  return [f.node, f.flowId, f.sourceAddress, f.sourcePort, f.destinationAddress, f.port,
          f.protocol, f.start].join(" ");
}

function renderFlows(answer) {
  const rows = answer.items.map(f => {
    const key = flowKey(f);
    const fresh = !state.firstFlows && !state.seen.has(key);
    state.seen.add(key);
    const dash = v => (v === null || v === undefined ? "-" : v);
    return el("tr", {
      class: `flow ${f.verdict}${fresh ? " new" : ""}`, "data-key": key,
      "data-verdict": f.verdict, "data-node": f.node, "data-source": f.source,
      "data-destination": f.destination, "data-port": f.port, "data-protocol": f.protocol,
      "data-policy": f.policy ? policyName(f.policy) : null, "data-rule": f.rule,
      "data-reason": f.reason, title: `${f.reason}; flow id ${f.flowId}; ${f.state}`,
    }, el("td", {}, clock(Date.parse(f.end) / 1000)), el("td", {}, f.node),
      el("td", {}, f.direction), el("td", { class: "verdict" }, f.verdict),
      el("td", {}, f.source), el("td", {}, f.destination), el("td", {}, f.protocol),
      el("td", {}, dash(f.port)), el("td", { class: "policy" }, flowPolicy(f)),
      el("td", {}, f.tier || "-"), el("td", { class: "rule" }, dash(f.rule)),
      el("td", {}, f.packets), el("td", {}, f.bytes));
  });
  state.firstFlows = false;
  document.getElementById("flows-body").replaceChildren(...(rows.length ? rows :
    [el("tr", {}, el("td", { colspan: 13, class: "note" }, "no flows in the last 15 minutes"))]));
  setText("flows-error", answer.errors.length ? `not answering: ${answer.errors.join("; ")}` : "");
}

async function refreshFlows() {
  const q = new URLSearchParams();
  for (const key of ["verdict", "namespace", "pod", "port"]) {
    const v = document.getElementById(`flows-${key}`).value.trim();
    if (v) q.set(key, v);
  }
  try {
    renderFlows(await getJSON(`/api/flows?${q}`));
    status(`updated ${clock(Date.now() / 1000)}`, false);
  } catch (e) {
    setText("flows-error", e.message);
    status("flows: not updating", true);
  }
}

// -- wiring -----------------------------------------------------------------------

function every(ms, fn) {
  let busy = false;  // never stack requests behind a slow answer
  const tick = async () => { if (!busy) { busy = true; try { await fn(); } finally { busy = false; } } };
  tick();
  return setInterval(tick, ms);
}

document.getElementById("matrix-port").addEventListener("input", () => { state.portChosen = true; });
document.getElementById("matrix-form").addEventListener("change", () => refreshMatrix(matrixMode()));
document.getElementById("matrix-form").addEventListener("submit", e => e.preventDefault());
document.getElementById("flows-form").addEventListener("submit", e => e.preventDefault());
document.getElementById("flows-form").addEventListener("change", () => { state.firstFlows = true; refreshFlows(); });
document.getElementById("matrix-probe").addEventListener("click", () => {
  document.querySelector("input[name=mode][value=probe]").checked = true;
  refreshMatrix("probe");
});

(async () => {
  await refreshTopology();
  every(TOPOLOGY_EVERY, refreshTopology);
  every(MATRIX_EVERY, () => (matrixMode() === "policy" ? refreshMatrix("policy") : null));
  every(FLOWS_EVERY, refreshFlows);
})();
