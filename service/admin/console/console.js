// spendgate console: reads /ui/api/* (same origin) and draws tables and SVG charts.
// No library, no build step. Every value a caller chose (project, user, model) is set
// as text, never as HTML.
"use strict";

const KEY_STORE = "spendgate-admin-key";
const REFRESH_MS = 2000;
const COLOURS = ["#2f6fd6", "#e07b39", "#3aa57a", "#c44e9b", "#8a6dd8", "#c9a227",
                 "#4bb3c8", "#d0494e", "#6f8a3c", "#8c8c8c"];
const $ = (id) => document.getElementById(id);

function usd(value) {
  // Enough digits to be right for small sums: never "$0.00" for a non-zero amount.
  if (value === null || value === undefined) return "-";
  if (value === 0) return "$0.00";
  if (Math.abs(value) >= 1) {
    return "$" + value.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2});
  }
  let text = value.toFixed(9).replace(/0+$/, "");
  const [whole, frac = ""] = text.split(".");
  if (/^0*$/.test(frac)) return "<$0.000000001";
  return "$" + whole + "." + frac.padEnd(2, "0");
}

function percent(ratio) {
  if (ratio === null || ratio === undefined) return "-";
  if (ratio > 0 && ratio < 0.001) return "<0.1%";
  return (ratio * 100).toFixed(1) + "%";
}

function seconds(value) {
  return value === null || value === undefined ? "-" : value.toFixed(3) + " s";
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function num(text, attrs) {
  const td = el("td", text, "num");
  for (const [k, v] of Object.entries(attrs || {})) td.dataset[k] = v;
  return td;
}

class Unauthorized extends Error {}

async function api(path) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers["authorization"] = "Bearer " + key;
  const response = await fetch(path, {headers, cache: "no-store", credentials: "omit"});
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response;
}

async function getJSON(path) { return (await api(path)).json(); }

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// ---- spend ---------------------------------------------------------------------------
async function loadSpend() {
  const by = $("spend-by").value, win = $("spend-window").value;
  const query = `group_by=${encodeURIComponent(by)}&window=${encodeURIComponent(win)}`;
  $("spend-group-head").textContent = by;
  try {
    const view = await getJSON(`/ui/api/spend?${query}`);
    fill($("spend-table").tBodies[0], view.rows.map((r) => {
      const tr = row([el("td", r[by] === "" ? "(none)" : r[by]),
                      num(usd(r.spend_usd), {usd: r.spend_usd})]);
      tr.dataset.group = r[by];
      return tr;
    }));
    $("spend-total").textContent = usd(view.total_usd);
    $("spend-total").dataset.usd = view.total_usd;
    addTagOptions(view.tag_keys || []);
    $("spend-note").textContent = view.start ? `${view.start} to ${view.end}` : "since the ledger began";
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    fill($("spend-table").tBodies[0], []);
    $("spend-note").textContent = "spend unavailable: " + error.message;
  }
}

// Tag keys the ledger accounts (attribution.tag_keys) become "tag:KEY" choices of "by".
function addTagOptions(keys) {
  const select = $("spend-by");
  const have = new Set(Array.from(select.options, (o) => o.value));
  for (const key of keys) {
    if (!have.has(`tag:${key}`)) select.append(el("option", `tag:${key}`));
  }
}

async function downloadCsv(event) {
  event.preventDefault();
  const by = $("spend-by").value, win = $("spend-window").value;
  const query = `group_by=${encodeURIComponent(by)}&window=${encodeURIComponent(win)}`;
  const response = await api(`/ui/api/spend?${query}&format=csv`);
  const url = URL.createObjectURL(await response.blob());
  const link = el("a");
  link.href = url;
  link.download = `spend-${by.replace(":", "-")}-${win}.csv`;
  link.click();
  URL.revokeObjectURL(url);
}

// ---- chart ---------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceCeiling(value) {
  // The axis top: 1, 2, 2.5 or 5 times a power of ten, at or above the largest bar.
  if (value <= 0) return 0;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

async function loadSeries() {
  const range = $("series-range").value, by = $("series-by").value;
  const measure = $("series-measure").value;
  let view;
  try {
    view = await getJSON(`/ui/api/series?range=${range}&by=${by}`);
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    $("chart").replaceChildren(el("p", "chart unavailable: " + error.message, "muted"));
    $("legend").replaceChildren();
    return;
  }
  const totals = new Map();
  for (const b of view.buckets) {
    for (const [name, v] of Object.entries(b.groups)) totals.set(name, (totals.get(name) || 0) + v[measure]);
  }
  // The 9 biggest groups by name, the rest as "others".
  const names = [...totals.entries()].sort((a, b) => b[1] - a[1]).map((e) => e[0]);
  const shown = names.slice(0, 9);
  const colour = (name) => shown.includes(name) ? COLOURS[shown.indexOf(name)] : COLOURS[9];
  const width = $("chart").clientWidth || 1000, height = 220, left = 72, bottom = 20, top = 8;
  const max = niceCeiling(Math.max(...view.buckets.map((b) => b[measure]), 0));
  const chart = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-label": `${measure} per ${view.resolution}`});
  const plotH = height - bottom - top, step = (width - left) / view.buckets.length;
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4, value = (max * i) / 4;
    chart.appendChild(svg("line", {x1: left, x2: width, y1: y, y2: y, class: "grid"}));
    chart.appendChild(svg("text", {x: left - 4, y: y + 3, "text-anchor": "end", class: "axis"},
      measure === "calls" ? String(+value.toPrecision(3)) : usd(+value.toPrecision(3))));
  }
  view.buckets.forEach((b, i) => {
    let y = top + plotH;
    const parts = Object.entries(b.groups).sort((p, q) => names.indexOf(p[0]) - names.indexOf(q[0]));
    for (const [name, v] of parts) {
      const h = max > 0 ? (v[measure] / max) * plotH : 0;
      if (h <= 0) continue;
      y -= h;
      const rect = svg("rect", {x: left + i * step + 1, y, width: Math.max(step - 2, 1), height: h,
                                fill: colour(name)});
      rect.appendChild(svg("title", {}, `${b.label} ${name || "(none)"}: ` +
        (measure === "calls" ? v.calls + " calls" : usd(v.spend_usd))));
      chart.appendChild(rect);
    }
    const every = Math.ceil(view.buckets.length / 8);
    if (i % every === 0) {
      const label = view.resolution === "day" ? b.label.slice(5) : b.label.slice(11);
      chart.appendChild(svg("text", {x: left + i * step + step / 2, y: height - 6,
                                     "text-anchor": "middle", class: "axis"}, label));
    }
  });
  $("chart").replaceChildren(chart);
  $("legend").replaceChildren(...names.slice(0, 10).map((name, i) => {
    const item = el("li", `${i < 9 ? (name || "(none)") : "others"} ` +
      (measure === "calls" ? `${totals.get(name)} calls` : usd(totals.get(name))));
    item.style.setProperty("--swatch", colour(name));
    return item;
  }));
}

// ---- budgets, errors, calls ----------------------------------------------------------
async function loadBudgets() {
  const view = await getJSON("/ui/api/budgets");
  fill($("budgets-table").tBodies[0], view.budgets.map((b) => {
    const bar = el("div", null, "bar" + ((b.ratio || 0) >= 1 ? " over" : ""));
    const fillBar = el("span");
    fillBar.style.setProperty("width", Math.min((b.ratio || 0) * 100, 100) + "%");
    bar.appendChild(fillBar);
    const used = el("td", null, "num");
    used.append(percent(b.ratio), " ", bar);
    const tr = row([el("td", b.name), el("td", b.action), el("td", b.window),
                    num(usd(b.spend_usd), {usd: b.spend_usd}), num(usd(b.reserved_usd)),
                    num(usd(b.limit_usd), {usd: b.limit_usd}), used,
                    num(usd(b.forecast_usd), {usd: b.forecast_usd === null ? "" : b.forecast_usd}),
                    el("td", b.resets_at || "never")]);
    tr.dataset.budget = b.name;
    if (b.forecast_usd !== null && b.forecast_usd > b.limit_usd) tr.cells[7].classList.add("bad");
    return tr;
  }));
  const store = view.store || {};
  $("budgets-note").textContent = !view.budgets.length ? "no budgets configured"
    : store.ok === false ? "store unavailable, last known values: " + store.error : "";
}

async function loadCalls() {
  const view = await getJSON("/ui/api/calls");
  const errors = Object.entries(view.errors).sort((a, b) => b[1] - a[1]);
  fill($("errors-table").tBodies[0], errors.length
    ? errors.map(([kind, count]) => row([el("td", kind), num(count)]))
    : [row([el("td", "none", "muted"), num("")])]);
  $("calls-note").textContent = `(last ${view.calls.length} of ${view.seen} on this replica)`;
  fill($("calls-table").tBodies[0], view.calls.map((c) => {
    const tokens = (n, est) => n === null ? "-" : (est ? "~" : "") + n;
    const model = c.response_model && c.response_model !== c.model ? `${c.model} → ${c.response_model}` : c.model;
    const error = el("td", c.error || "", c.error ? "error" : "");
    if (c.cause) error.title = c.cause;
    const tr = row([el("td", c.time.slice(11, 23)), el("td", `${c.method} ${c.path}`),
                    el("td", c.status, c.status >= 400 ? "error" : ""), el("td", c.upstream),
                    el("td", model), el("td", c.project), el("td", c.user || ""),
                    num(`${tokens(c.tokens_in, c.tokens_in_estimated)}/${tokens(c.tokens_out, c.tokens_out_estimated)}`),
                    num(usd(Number(c.cost_usd))), num(seconds(c.duration_s)), num(seconds(c.ttft_s)),
                    el("td", c.budget || ""), error]);
    tr.dataset.requestId = c.request_id || "";
    return tr;
  }));
}

async function lookUpPrice(event) {
  event.preventDefault();
  const model = $("price-model").value.trim();
  if (!model) return;
  const upstream = $("price-upstream").value.trim();
  const query = `model=${encodeURIComponent(model)}` + (upstream ? `&upstream=${encodeURIComponent(upstream)}` : "");
  const view = await getJSON(`/ui/api/price?${query}`);
  $("price-out").textContent = view.text;
  $("price-out").classList.toggle("error", !view.known);
}

async function loadModels() {
  const view = await getJSON("/ui/api/models");
  $("models").replaceChildren(...view.models.map((m) => { const o = el("option"); o.value = m; return o; }));
}

// ---- refresh loop and the key --------------------------------------------------------
function askForKey(message) {
  $("main").hidden = true;
  $("key-form").hidden = false;
  $("key-error").textContent = message || "";
  $("status").textContent = "admin key needed";
  $("key-input").focus();
}

let timer = null;
async function refresh(everything) {
  try {
    const parts = [loadCalls(), loadBudgets()];
    if (everything) parts.push(loadSpend(), loadSeries());
    await Promise.all(parts);
    $("key-form").hidden = true;
    $("main").hidden = false;
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
    return true;
  } catch (error) {
    if (error instanceof Unauthorized) {
      askForKey(sessionStorage.getItem(KEY_STORE) ? "that key was refused" : "");
      sessionStorage.removeItem(KEY_STORE);
      return false;
    }
    $("status").textContent = "error: " + error.message;
    return false;
  }
}

let ticks = 0;
async function tick() {
  ticks += 1;
  await refresh(ticks % 5 === 0);  // recent calls every 2 s, spend and charts every 10 s
  timer = setTimeout(tick, REFRESH_MS);
}

async function start() {
  clearTimeout(timer);
  if (await refresh(true)) {
    loadModels().catch(() => {});
    timer = setTimeout(tick, REFRESH_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key-input").value);
    $("key-input").value = "";
    start();
  });
  for (const id of ["spend-window", "spend-by"]) $(id).addEventListener("change", () => loadSpend());
  for (const id of ["series-range", "series-by", "series-measure"]) $(id).addEventListener("change", () => loadSeries());
  $("spend-csv").addEventListener("click", downloadCsv);
  $("price-form").addEventListener("submit", lookUpPrice);
  start();
});
