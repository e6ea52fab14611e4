// certctl's dashboard: fetches the JSON API of the admin address every few seconds and
// fills the tables in. Plain DOM, no build step; text goes in as text, never as HTML.
"use strict";

// Each refresh lists Certificates, Orders and Challenges (API requests in a cluster):
// every few seconds, and not while the tab is hidden.
const REFRESH_MS = 3000;

function cell(row, text, className) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text); else td.textContent = text ?? "";
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function element(tag, text, className) {
  const found = document.createElement(tag);
  if (text !== undefined) found.textContent = text;
  if (className) found.className = className;
  return found;
}

function objectName(namespace, name) {
  return namespace ? `${namespace}/${name}` : name;
}

function duration(ms) {
  const abs = Math.abs(ms);
  const days = abs / 86400000;
  if (days >= 2) return `${Math.round(days)}d`;
  const hours = abs / 3600000;
  if (hours >= 2) return `${Math.round(hours)}h`;
  return `${Math.max(1, Math.round(abs / 60000))}m`;
}

function fill(section, rows, emptyText) {
  const body = section.querySelector("tbody");
  body.replaceChildren(...rows);
  section.querySelector(".empty").textContent = rows.length ? "" : emptyText;
}

// The validity bar: how much of the lifetime has passed, and where renewal falls.
function timeBar(certificate, now) {
  const box = element("div");
  if (!certificate.notBefore || !certificate.notAfter) {
    box.appendChild(element("span", "not issued yet", "small"));
    return box;
  }
  const start = Date.parse(certificate.notBefore);
  const end = Date.parse(certificate.notAfter);
  const lifetime = Math.max(1, end - start);
  const bar = element("div", undefined, "bar");
  const used = element("div", undefined, "used");
  const fraction = Math.min(1, Math.max(0, (now - start) / lifetime));
  used.style.width = `${(fraction * 100).toFixed(1)}%`;
  if (now >= end) used.classList.add("expired");
  else if (certificate.renewalTime && now >= Date.parse(certificate.renewalTime)) {
    used.classList.add("late");
  }
  bar.appendChild(used);
  if (certificate.renewalTime) {
    const renew = element("div", undefined, "renew");
    const at = (Date.parse(certificate.renewalTime) - start) / lifetime;
    renew.style.left = `${(Math.min(1, Math.max(0, at)) * 100).toFixed(1)}%`;
    renew.title = `renewal ${certificate.renewalTime}`;
    bar.appendChild(renew);
  }
  box.appendChild(bar);
  const left = end - now;
  box.appendChild(element("span", left > 0 ? `expires in ${duration(left)} (${certificate.notAfter})`
    : `expired ${duration(left)} ago (${certificate.notAfter})`, "small"));
  return box;
}

function certificateRows(data) {
  const now = Date.parse(data.now);
  return data.certificates.map((c) => {
    const row = element("tr");
    row.dataset.name = objectName(c.namespace, c.name);
    row.dataset.ready = c.ready;
    cell(row, objectName(c.namespace, c.name));
    cell(row, [...c.dnsNames, ...c.ipAddresses].join(", "), "names");
    cell(row, `${c.issuer.kind} ${c.issuer.name ?? ""}`);
    cell(row, c.secretName);
    cell(row, timeBar(c, now));
    const renewal = element("div");
    if (c.renewalTime) {
      renewal.appendChild(element("div", c.renewalTime));
      renewal.appendChild(element("div", `from ${c.renewalTimeSource ?? "?"}`, "small"));
    }
    cell(row, renewal);
    const ready = element("div");
    ready.appendChild(element("span", c.ready, `pill ${c.ready}`));
    if (c.ready !== "True" && c.reason) ready.appendChild(element("div", c.reason));
    if (c.ready !== "True" && c.message) ready.appendChild(element("div", c.message, "small"));
    if (c.issuing) ready.appendChild(element("div", "issuing", "small"));
    cell(row, ready, "message");
    return row;
  });
}

function routeRows(data) {
  const rows = data.routes.map((r) => {
    const row = element("tr");
    row.dataset.host = r.host;
    cell(row, r.host);
    cell(row, r.conditions ? `${r.path} (${r.conditions})` : r.path);
    cell(row, r.match);
    cell(row, r.backend);
    cell(row, r.tlsSecret ?? "none (self-signed default)");
    cell(row, `${r.source.kind} ${objectName(r.source.namespace, r.source.name)}`);
    const notes = element("div");
    if (r.conflict) notes.appendChild(element("div", r.conflict, "conflict"));
    for (const p of r.problems) notes.appendChild(element("div", `${p.reason}: ${p.message}`));
    cell(row, notes, "message");
    return row;
  });
  for (const d of data.defaults) {
    const row = element("tr");
    cell(row, d.hosts.join(", "));
    cell(row, "(default backend)");
    cell(row, "");
    cell(row, d.backend);
    cell(row, "");
    cell(row, `${d.source.kind} ${objectName(d.source.namespace, d.source.name)}`);
    cell(row, "");
    rows.push(row);
  }
  for (const n of data.notServed) {
    const row = element("tr");
    cell(row, "(not served)");
    cell(row, "");
    cell(row, "");
    cell(row, "");
    cell(row, "");
    cell(row, `${n.source.kind} ${objectName(n.source.namespace, n.source.name)}`);
    cell(row, n.problems.map((p) => `${p.reason}: ${p.message}`).join("; "), "conflict");
    rows.push(row);
  }
  return rows;
}

function orderRows(data) {
  const orders = data.orders.map((o) => {
    const row = element("tr");
    cell(row, `Order ${objectName(o.namespace, o.name)}`);
    cell(row, `${o.certificate ? `Certificate ${o.certificate}: ` : ""}${o.dnsNames.join(", ")}`,
      "names");
    cell(row, o.state);
    cell(row, o.step);
    cell(row, o.reason ?? "", "message");
    return row;
  });
  const challenges = data.challenges.map((c) => {
    const row = element("tr");
    cell(row, `Challenge ${objectName(c.namespace, c.name)}`);
    cell(row, `${c.type ?? ""} ${c.dnsName ?? ""}`, "names");
    cell(row, c.state);
    cell(row, c.step);
    cell(row, c.reason ?? "", "message");
    return row;
  });
  return [...orders, ...challenges];
}

function eventRows(data) {
  return data.events.map((e) => {
    const row = element("tr");
    cell(row, e.time);
    cell(row, e.type, e.type);
    cell(row, e.reason);
    cell(row, `${e.object.kind} ${objectName(e.object.namespace, e.object.name)}`);
    cell(row, e.message, "message");
    return row;
  });
}

const VIEWS = {
  certificates: [certificateRows, "No Certificates."],
  routes: [routeRows, "No routes: no Ingress or HTTPRoute of this class is served."],
  orders: [orderRows, "Nothing in flight."],
  events: [eventRows, "No events since this process started."],
};

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ?? `${path}: ${response.status}`);
  return body;
}

async function refresh() {
  if (document.hidden) {
    setTimeout(refresh, REFRESH_MS);
    return;
  }
  const status = document.getElementById("updated");
  try {
    const summary = await getJson("api/v1/summary");
    document.getElementById("process").textContent = `(${summary.process})`;
    for (const [name, [rows, emptyText]] of Object.entries(VIEWS)) {
      const section = document.getElementById(name);
      if (!summary.sections.includes(name)) {
        section.hidden = true;
        continue;
      }
      section.hidden = false;
      fill(section, rows(await getJson(`api/v1/${name}`)), emptyText);
    }
    status.textContent = `updated ${summary.now}`;
    status.className = "status";
  } catch (err) {
    status.textContent = `cannot update: ${err.message}`;
    status.className = "status error";
  }
  setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", refresh);
