// tirl view: overview charts, trajectory browser, side-by-side views. Plain JS, no libraries.
"use strict";

const $app = document.getElementById("app");
const $tip = document.getElementById("tooltip");
let ROOTS = null;

// ---------- helpers ----------
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}
const svgEl = (tag, attrs) => {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
};
async function api(path, params) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined && v !== "") qs.set(k, v);
  const r = await fetch(path + (qs.toString() ? "?" + qs : ""));
  const body = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(digits).replace(/\.?0+$/, "");
  return String(v);
}
function badge(text, cls) { return el("span", {class: "badge " + (cls || "")}, text); }
function correctBadge(c) { return c === null || c === undefined ? badge("ungraded") : c ? badge("correct", "correct") : badge("incorrect", "incorrect"); }
function keptBadge(k) { return k === null || k === undefined ? null : k ? badge("kept by RoC", "kept") : badge("dropped by RoC", "dropped"); }
function route() {
  const h = location.hash.replace(/^#\/?/, "");
  const [view, q] = h.split("?");
  return {view: view || "overview", params: Object.fromEntries(new URLSearchParams(q || ""))};
}
function go(view, params) { location.hash = "#/" + view + "?" + new URLSearchParams(params); }
function allSources() {
  const out = [];
  for (const [rid, r] of Object.entries(ROOTS)) for (const s of r.sources) out.push({id: rid + ":" + s.path, label: (Object.keys(ROOTS).length > 1 ? rid + " · " : "") + s.path, bytes: s.bytes});
  return out;
}
function sourceSelect(name, value, onchange) {
  const s = el("select", {name, onchange});
  for (const src of allSources()) s.append(el("option", {value: src.id, selected: src.id === value}, src.label));
  return s;
}

// ---------- charts ----------
const COLORS = ["#2457c5", "#e4572e", "#17a398", "#f3a712", "#8e44ad", "#5d6d7e", "#c2185b"];
const CHARTS = [
  {title: "Reward", keys: ["reward", "pass_rate"]},
  {title: "Held-out accuracy", keys: ["held_out_acc"]},
  {title: "Tool-error ratio in positive traces", keys: ["tool_error_ratio_pos", "tool_error_ratio_pos_sampled", "tool_error_ratio"]},
  {title: "Response length (tokens)", keys: ["response_len_mean", "response_len_pos", "response_len_max"]},
  {title: "Time split per step (s)", keys: ["time_generation", "time_tools", "time_grading", "time_update"], stacked: true},
];

function chart(records, spec) {
  const keys = spec.keys.filter(k => records.some(r => typeof r[k] === "number"));
  if (!keys.length) return null;
  const W = 440, H = 220, L = 48, R = 10, T = 10, B = 26;
  const series = keys.map(k => records.filter(r => typeof r[k] === "number" && typeof r.step === "number").map(r => [r.step, r[k]]));
  let stackedTop = null;
  if (spec.stacked) {  // cumulative sums per step
    const steps = [...new Set(series.flat().map(p => p[0]))].sort((a, b) => a - b);
    const base = new Map(steps.map(s => [s, 0]));
    stackedTop = series.map(pts => {
      const m = new Map(pts);
      return steps.map(s => { const v = base.get(s) + (m.get(s) || 0); base.set(s, v); return [s, v]; });
    });
  }
  const drawn = stackedTop || series;
  const xs = drawn.flat().map(p => p[0]), ys = drawn.flat().map(p => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(0, ...ys), y1 = Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) y1 = y0 + 1;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", "data-keys": keys.join(",")});
  for (let t = 0; t <= 4; t++) {
    const y = y0 + (y1 - y0) * t / 4;
    svg.append(svgEl("line", {x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "#eceff3"}));
    const lab = svgEl("text", {x: L - 4, y: sy(y) + 3, "text-anchor": "end"}); lab.textContent = fmt(y, 3); svg.append(lab);
  }
  for (const x of [x0, (x0 + x1) / 2, x1]) {
    const lab = svgEl("text", {x: sx(x), y: H - 8, "text-anchor": "middle"}); lab.textContent = fmt(Math.round(x * 10) / 10, 4); svg.append(lab);
  }
  drawn.forEach((pts, j) => {
    const d = pts.map((p, i) => (i ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join(" ");
    if (spec.stacked) {
      const below = j ? drawn[j - 1] : pts.map(p => [p[0], 0]);
      const back = below.slice().reverse().map(p => "L" + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join(" ");
      svg.append(svgEl("path", {d: d + " " + back + " Z", fill: COLORS[j % COLORS.length], "fill-opacity": 0.35, stroke: "none"}));
    }
    svg.append(svgEl("path", {d, fill: "none", stroke: COLORS[j % COLORS.length], "stroke-width": 1.6, class: "series", "data-key": keys[j]}));
    if (pts.length < 40) for (const p of pts) svg.append(svgEl("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.2, fill: COLORS[j % COLORS.length]}));
  });
  const cursor = svgEl("line", {y1: T, y2: H - B, stroke: "#999", "stroke-dasharray": "3 3", visibility: "hidden"});
  svg.append(cursor);
  svg.addEventListener("mousemove", ev => {
    const box = svg.getBoundingClientRect();
    const x = x0 + ((ev.clientX - box.left) / box.width * W - L) / (W - L - R) * (x1 - x0);
    const allX = [...new Set(series.flat().map(p => p[0]))];
    if (!allX.length) return;
    const near = allX.reduce((a, b) => Math.abs(b - x) < Math.abs(a - x) ? b : a);
    cursor.setAttribute("x1", sx(near)); cursor.setAttribute("x2", sx(near)); cursor.setAttribute("visibility", "visible");
    const lines = [`step ${near}`];
    series.forEach((pts, j) => { const p = pts.find(q => q[0] === near); if (p) lines.push(`${keys[j]}: ${fmt(p[1])}`); });
    $tip.textContent = lines.join("\n"); $tip.hidden = false;
    $tip.style.left = ev.clientX + 14 + "px"; $tip.style.top = ev.clientY + 10 + "px";
  });
  svg.addEventListener("mouseleave", () => { $tip.hidden = true; cursor.setAttribute("visibility", "hidden"); });
  return el("div", {class: "card chart", "data-title": spec.title},
    el("h3", {}, spec.title),
    el("div", {class: "legend"}, keys.map((k, j) => el("span", {}, el("i", {style: `background:${COLORS[j % COLORS.length]}`}), k))),
    svg);
}

async function overview(params) {
  const rid = params.root || "a";
  const root = ROOTS[rid];
  const out = [el("h2", {}, `${root.kind === "train" ? "Training run" : "Evaluation"}: ${root.name}`),
    el("p", {class: "muted"}, root.path)];
  if (Object.keys(ROOTS).length > 1)
    out.push(el("p", {}, "Directories: ", Object.keys(ROOTS).map(r => el("a", {href: `#/overview?root=${r}`, style: "margin-right:10px"}, `${r}: ${ROOTS[r].name}`))));
  if (root.has_metrics) {
    const {records} = await api("/api/metrics", {root: rid});
    const charts = el("div", {class: "charts", id: "charts"});
    for (const spec of CHARTS) { const c = chart(records, spec); if (c) charts.append(c); }
    const numeric = [...new Set(records.flatMap(r => Object.keys(r).filter(k => typeof r[k] === "number" && k !== "step" && k !== "time")))].sort();
    const pick = el("select", {id: "metric-pick", onchange: ev => {
      if (!ev.target.value) return;
      const c = chart(records, {title: ev.target.value, keys: [ev.target.value]}); if (c) charts.append(c);
    }}, el("option", {value: ""}, "add a chart…"), numeric.map(k => el("option", {value: k}, k)));
    out.push(el("h2", {}, `Metrics (${records.length} records) `, pick), charts);
  }
  if (root.report) out.push(el("h2", {}, "Report"), el("div", {class: "card"}, el("pre", {id: "report"}, root.report.text), root.report.truncated ? el("p", {class: "muted"}, "(cut at 2 MiB)") : null));
  if (root.plots.length) out.push(el("h2", {}, "Plots"), el("div", {class: "grid"}, root.plots.map(p => el("div", {class: "card"}, el("div", {class: "muted"}, p), el("img", {src: `/files/${rid}/${p}`, style: "max-width:100%"})))));
  if (root.eval_settings) out.push(el("h2", {}, "Eval settings"), el("pre", {class: "box"}, JSON.stringify(root.eval_settings, null, 2)));
  if (root.config) out.push(el("h2", {}, "Resolved config"), el("pre", {class: "box", id: "config"}, root.config.text));
  out.push(el("h2", {}, "Record files"));
  if (!root.sources.length) out.push(el("p", {class: "muted"}, "No trajectories/*.jsonl or samples/*.jsonl here."));
  else out.push(el("table", {}, el("tr", {}, el("th", {}, "file"), el("th", {}, "size")),
    root.sources.map(s => el("tr", {class: "row", onclick: () => go("browse", {src: rid + ":" + s.path})}, el("td", {}, s.path), el("td", {}, (s.bytes / 1e6).toFixed(2) + " MB")))));
  $app.replaceChildren(...out);
}

// ---------- browser ----------
const FILTERS = ["step", "problem", "correct", "finish", "error", "kept", "stage", "q"];

async function browse(params) {
  const srcs = allSources();
  if (!srcs.length) { $app.replaceChildren(el("p", {class: "muted"}, "No record files to browse.")); return; }
  const src = params.src || srcs[0].id;
  const offset = parseInt(params.offset || "0", 10), limit = 50;
  const q = {src, offset, limit, after: params.after};
  for (const f of FILTERS) q[f] = params[f];
  const data = await api("/api/list", q);
  const fc = data.facets;
  const opt = (vals, cur, any = "any") => [el("option", {value: ""}, any), ...vals.map(v => el("option", {value: v, selected: String(v) === cur}, v))];
  const form = el("form", {class: "filters", id: "filters", onsubmit: ev => {
    ev.preventDefault();
    const p = {src: form.elements.src.value};
    for (const f of FILTERS) if (form.elements[f] && form.elements[f].value) p[f] = form.elements[f].value;
    go("browse", p);
  }},
    el("label", {}, "file", sourceSelect("src", src, () => go("browse", {src: form.elements.src.value}))),
    el("label", {}, "step", el("select", {name: "step"}, opt(fc.steps, params.step))),
    fc.stages.length ? el("label", {}, "stage", el("select", {name: "stage"}, opt(fc.stages, params.stage))) : null,
    el("label", {}, "problem", el("input", {name: "problem", value: params.problem || "", size: 14, placeholder: "problem id"})),
    el("label", {}, "result", el("select", {name: "correct"}, el("option", {value: ""}, "any"),
      el("option", {value: "true", selected: params.correct === "true"}, "correct"), el("option", {value: "false", selected: params.correct === "false"}, "incorrect"))),
    el("label", {}, "finish", el("select", {name: "finish"}, opt(fc.finish, params.finish))),
    el("label", {}, "tool errors", el("select", {name: "error"}, el("option", {value: ""}, "any"),
      el("option", {value: "any", selected: params.error === "any"}, "at least one"), el("option", {value: "none", selected: params.error === "none"}, "none"),
      fc.errors.map(v => el("option", {value: v, selected: v === params.error}, v)))),
    fc.has_kept ? el("label", {}, "RoC", el("select", {name: "kept"}, el("option", {value: ""}, "any"),
      el("option", {value: "true", selected: params.kept === "true"}, "kept"), el("option", {value: "false", selected: params.kept === "false"}, "dropped"))) : null,
    el("label", {}, "text", el("input", {name: "q", value: params.q || "", size: 18, placeholder: "search text"})),
    el("button", {type: "submit", id: "apply"}, "Apply"),
    el("button", {type: "button", class: "plain", onclick: () => go("browse", {src})}, "Clear"));
  const status = el("p", {class: "muted", id: "status"},
    data.total !== null ? `${data.total} matching` : `${data.rows.length} text matches`,
    ` · ${data.summarized} of ${data.records}${data.counting ? "+" : ""} records indexed`,
    data.counting ? ` (counting: ${(100 * data.indexed_bytes / Math.max(1, data.bytes)).toFixed(0)}% of the file read)` : "",
    data.summarized < data.records || data.counting ? " — indexing continues; Apply again for the rest" : "");
  const table = el("table", {id: "rows"}, el("tr", {}, ["#", "step", "problem", "sample", "result", "reward", "finish", "tool errors", "RoC", "turns", "tokens", ""].map(h => el("th", {}, h))),
    data.rows.map(r => el("tr", {class: "row", "data-i": r.i, onclick: () => go("traj", {src, i: r.i})},
      el("td", {}, r.i), el("td", {}, fmt(r.step)), el("td", {}, r.problem_id || "–"), el("td", {}, fmt(r.sample)),
      el("td", {}, correctBadge(r.correct)), el("td", {}, fmt(r.reward)), el("td", {}, r.finish || "–"),
      el("td", {}, r.errors.length ? r.errors.map(e => badge(e, "bad")) : r.n_errors ? badge(r.n_errors, "bad") : "0"),
      el("td", {}, keptBadge(r.kept) || "–"), el("td", {}, r.turns), el("td", {}, r.tokens),
      el("td", {}, r.problem_id ? el("a", {href: "#/group?" + new URLSearchParams({src, problem: r.problem_id, ...(r.step !== null ? {step: r.step} : {})}), onclick: ev => ev.stopPropagation()}, "group") : ""))));
  const pager = el("div", {class: "pager"});
  const base = {...params, src};
  if (data.total !== null) {
    if (offset > 0) pager.append(el("button", {class: "plain", onclick: () => go("browse", {...base, offset: Math.max(0, offset - limit)})}, "← previous"));
    pager.append(el("span", {class: "muted"}, `${data.total ? offset + 1 : 0}–${Math.min(offset + limit, data.total)} of ${data.total}`));
    if (offset + limit < data.total) pager.append(el("button", {class: "plain", id: "next", onclick: () => go("browse", {...base, offset: offset + limit})}, "next →"));
  } else if (data.next_after !== null) {
    pager.append(el("button", {class: "plain", onclick: () => go("browse", {...base, after: data.next_after})}, "more matches →"));
  }
  $app.replaceChildren(el("h2", {}, "Trajectories"), form, status, data.error ? el("p", {class: "err"}, data.error) : null, table, pager);
}

// ---------- one trajectory ----------
const PY_RE = /(#[^\n]*)|("""[\s\S]*?"""|'''[\s\S]*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')|\b(\d+(?:\.\d+)?(?:e[+-]?\d+)?)\b|\b(and|as|assert|break|class|continue|def|del|elif|else|except|False|finally|for|from|global|if|import|in|is|lambda|None|nonlocal|not|or|pass|print|raise|return|True|try|while|with|yield)\b/g;
function highlightPython(code) {
  const pre = el("pre", {class: "code"});
  let last = 0;
  for (const m of code.matchAll(PY_RE)) {
    if (m.index > last) pre.append(code.slice(last, m.index));
    const cls = m[1] ? "com" : m[2] ? "str" : m[3] ? "num" : "kw";
    pre.append(el("span", {class: cls}, m[0]));
    last = m.index + m[0].length;
  }
  pre.append(code.slice(last));
  return pre;
}
function stripCalls(text) { return text.replace(/<tool_call>[\s\S]*?(<\/tool_call>|$)/g, "").trim(); }

function renderCall(call, n) {
  const args = call.arguments || {};
  const code = typeof args.code === "string" ? args.code : null;
  const res = call.result;
  const status = call.parse_error ? "parse_error" : res ? res.status : (call.error_kind || "not_executed");
  const fail = status !== "ok";
  const parts = [el("div", {}, el("b", {}, `tool call ${n}`), " ", badge(status, fail ? (status === "timeout" ? "timeout" : status === "infra_error" ? "infra_error" : "bad") : "ok"),
    call.name ? badge(call.name) : null, call.tool_ms ? el("span", {class: "muted"}, ` ${fmt(call.tool_ms, 3)} ms`) : null)];
  if (code !== null) {
    parts.push(highlightPython(code));
    if (args.input) parts.push(el("div", {class: "muted"}, "stdin:"), el("pre", {class: "box"}, args.input));
  } else parts.push(el("pre", {class: "box"}, call.raw || JSON.stringify(args)));
  if (call.parse_error) parts.push(el("div", {class: "err"}, call.parse_error));
  if (res) {
    parts.push(el("div", {class: "tool-out" + (fail ? " fail" : "")},
      el("div", {class: "muted"}, `exit ${fmt(res.exit_code)} · exec ${fmt(res.exec_ms, 3)} ms` + (res.truncated ? " · output truncated" : "") + (res.reason ? ` · ${res.reason}` : "")),
      res.stdout ? el("pre", {class: "stdout"}, res.stdout) : null,
      res.stderr ? el("pre", {class: "stderr err"}, res.stderr) : null,
      !res.stdout && !res.stderr ? el("span", {class: "muted"}, "(no output)") : null));
  }
  return el("div", {class: "call"}, parts);
}

function tokenView(rec, tokens, mode) {
  const ids = rec.response_ids || [], mask = rec.response_mask || [], lps = rec.logprobs || [], ent = rec.entropy || [];
  const wrap = el("div", {class: "tokens", id: "tokens"});
  const n = Math.min(ids.length, 20000);
  for (let i = 0; i < n; i++) {
    const text = tokens ? tokens[i] : `[${ids[i]}]`;
    const s = el("span", {}, text);
    if (mask[i] === 0) { s.className = "tool"; s.title = "inserted by the loop (not sampled)"; }
    else if (mode === "entropy" && typeof ent[i] === "number") {
      const a = Math.min(1, ent[i] / 3);
      s.style.background = `rgba(142,68,173,${(a * 0.75).toFixed(3)})`; s.title = `entropy ${fmt(ent[i])}`;
    } else if (typeof lps[i] === "number") {
      const p = Math.exp(lps[i]);  // probability 1 -> no colour, 0 -> strong red
      s.style.background = `rgba(228,87,46,${((1 - p) * 0.85).toFixed(3)})`; s.title = `logprob ${fmt(lps[i])} (p=${fmt(p, 3)})`;
    }
    wrap.append(s);
  }
  if (ids.length > n) wrap.append(el("div", {class: "muted"}, `… ${ids.length - n} more tokens`));
  return wrap;
}

async function trajectory(params) {
  const data = await api("/api/record", {src: params.src, i: params.i});
  const rec = data.record, meta = rec.meta || {};
  const out = [el("p", {}, el("a", {href: "#/browse?" + new URLSearchParams({src: params.src})}, "← trajectories"), " · ",
    rec.problem_id ? el("a", {href: "#/group?" + new URLSearchParams({src: params.src, problem: rec.problem_id, ...(rec.step !== undefined ? {step: rec.step} : {})})}, "this problem's group") : null)];
  const correct = typeof rec.correct === "boolean" ? rec.correct : rec.grade_status ? rec.grade_status === "correct" : typeof rec.reward === "number" ? rec.reward > 0 : null;
  const sample = rec.sample !== undefined ? rec.sample : meta.sample !== undefined ? meta.sample : meta.sample_index;
  out.push(el("h2", {}, `Record ${data.i} · problem ${rec.problem_id || "?"}`, sample !== undefined ? ` · sample ${sample}` : ""));
  const kv = [["step", rec.step], ["stage", rec.stage], ["weights version", rec.policy_version], ["reward", rec.reward],
    ["grade", rec.grade_status || rec.status], ["advantage", rec.advantage], ["RoC penalty", rec.roc_penalty],
    ["finish", rec.finish_reason], ["response tokens", (rec.response_ids || []).length || rec.response_tokens],
    ["tool calls", typeof rec.tool_calls === "number" ? rec.tool_calls : null], ["tool errors", typeof rec.tool_errors === "number" ? rec.tool_errors : null], ["turns", typeof rec.turns === "number" ? rec.turns : null], ["wall", meta.wall_ms ? fmt(meta.wall_ms / 1000, 3) + " s" : rec.wall_s ? rec.wall_s + " s" : null]];
  out.push(el("div", {class: "card"},
    el("div", {class: "answer", id: "answer"}, correctBadge(correct), keptBadge(rec.kept),
      el("span", {}, el("b", {}, "final answer: "), el("code", {class: "final"}, data.final_answer === null ? "(none)" : data.final_answer)),
      el("span", {}, el("b", {}, "gold: "), el("code", {class: "gold"}, rec.gold === undefined || rec.gold === null ? "–" : rec.gold))),
    el("div", {class: "kv"}, kv.filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => el("div", {}, el("b", {}, k), " ", fmt(v))))));
  if (rec.error || meta.error) out.push(el("p", {class: "err"}, rec.error || meta.error));
  if (meta.problem) out.push(el("h3", {}, "Problem"), el("pre", {class: "box"}, meta.problem));
  const turns = Array.isArray(rec.turns) ? rec.turns : [];
  if (turns.length) {
    const tw = el("div", {id: "turns"});
    turns.forEach((t, k) => {
      const calls = t.tool_calls || [];
      tw.append(el("div", {class: "turn"},
        el("h3", {}, `Turn ${k + 1}`, el("span", {class: "muted"}, ` · ${t.n_generated || 0} tokens generated · ${fmt((t.gen_ms || 0) / 1000, 3)} s` + (t.finish ? ` · ${t.finish}` : ""))),
        stripCalls(t.text || "") ? el("pre", {class: "reasoning"}, stripCalls(t.text || "")) : null,
        calls.map((c, j) => renderCall(c, j + 1))));
    });
    out.push(el("h3", {}, "Turns"), tw);
  } else if (rec.text) out.push(el("h3", {}, "Response"), el("pre", {class: "box reasoning"}, rec.text));
  if ((rec.response_ids || []).length) {
    const hasEnt = Array.isArray(rec.entropy) && rec.entropy.length > 0;
    const holder = el("div", {});
    const draw = mode => holder.replaceChildren(tokenView(rec, data.tokens, mode));
    const sel = el("select", {id: "token-mode", onchange: ev => draw(ev.target.value)}, el("option", {value: "logprob"}, "colour by log-prob"), hasEnt ? el("option", {value: "entropy"}, "colour by entropy") : null);
    out.push(el("h3", {}, "Tokens ", sel, data.tokens ? "" : el("span", {class: "muted"}, " (no tokenizer.json found: showing token ids)")), el("div", {class: "card"}, holder));
    draw("logprob");
  }
  out.push(el("details", {}, el("summary", {}, "raw record"), el("pre", {class: "box"}, JSON.stringify({...rec, prompt_ids: undefined, response_ids: undefined, response_mask: undefined, logprobs: undefined, entropy: undefined}, null, 1))));
  $app.replaceChildren(...out);
}

// ---------- side by side ----------
function groupCard(src, it) {
  const r = it.record, s = it.summary;
  const text = r.text || (Array.isArray(r.turns) ? r.turns.map(t => t.text).join("\n") : "");
  return el("div", {class: "gcard " + (s.correct === true ? "is-correct" : s.correct === false ? "is-incorrect" : "")},
    el("div", {}, el("a", {href: "#/traj?" + new URLSearchParams({src, i: it.i})}, `#${it.i}`), " ", s.sample !== null ? `sample ${s.sample} ` : "",
      correctBadge(s.correct), keptBadge(s.kept), s.n_errors ? badge(`${s.n_errors} tool errors`, "bad") : null),
    el("div", {class: "kv"}, [["reward", s.reward], ["advantage", r.advantage], ["RoC penalty", r.roc_penalty], ["finish", s.finish], ["tokens", s.tokens], ["answer", it.final_answer]]
      .filter(([, v]) => v !== undefined && v !== null).map(([k, v]) => el("div", {}, el("b", {}, k), " ", fmt(v)))),
    el("pre", {}, text.slice(0, 4000)));
}

async function group(params) {
  const data = await api("/api/group", {src: params.src, problem: params.problem, step: params.step});
  const kept = data.items.filter(x => x.summary.kept === true).length, nk = data.items.filter(x => x.summary.kept !== null).length;
  $app.replaceChildren(
    el("p", {}, el("a", {href: "#/browse?" + new URLSearchParams({src: params.src})}, "← trajectories")),
    el("h2", {}, `Problem ${params.problem}` + (params.step ? ` · step ${params.step}` : "") + ` · ${data.items.length} samples`),
    el("p", {class: "muted"}, `${data.items.filter(x => x.summary.correct).length} correct` + (nk ? ` · ${kept} of ${nk} kept by RoC` : "") + (data.truncated ? " · first 256 shown" : "")),
    el("div", {class: "grid", id: "group"}, data.items.map(it => groupCard(params.src, it))));
}

async function compare(params) {
  const srcs = allSources();
  const a = params.a || (srcs[0] && srcs[0].id), b = params.b || (srcs[1] ? srcs[1].id : a);
  const form = el("form", {class: "filters", onsubmit: ev => {
    ev.preventDefault();
    go("compare", {a: form.elements.a.value, b: form.elements.b.value, problem: form.elements.problem.value});
  }}, el("label", {}, "left", sourceSelect("a", a)), el("label", {}, "right", sourceSelect("b", b)),
    el("label", {}, "problem", el("input", {name: "problem", value: params.problem || "", placeholder: "problem id"})),
    el("button", {type: "submit"}, "Compare"));
  const out = [el("h2", {}, "Side by side: one problem in two runs or eval outputs"), form];
  if (params.problem && a && b) {
    const [da, db] = await Promise.all([api("/api/group", {src: a, problem: params.problem}), api("/api/group", {src: b, problem: params.problem})]);
    const col = (src, d) => el("div", {}, el("h3", {}, src, el("span", {class: "muted"}, ` · ${d.items.filter(x => x.summary.correct).length}/${d.items.length} correct`)),
      d.items.length ? d.items.map(it => groupCard(src, it)) : el("p", {class: "muted"}, "no records of this problem"));
    out.push(el("div", {class: "cols", id: "compare"}, col(a, da), col(b, db)));
  }
  $app.replaceChildren(...out);
}

// ---------- router ----------
const VIEWS = {overview, browse, traj: trajectory, group, compare};
async function render() {
  const {view, params} = route();
  for (const n of ["overview", "browse", "compare"]) document.getElementById("nav-" + n).classList.toggle("active", view === n);
  try {
    if (!ROOTS) {
      ROOTS = await api("/api/roots");
      document.getElementById("run-name").textContent = Object.values(ROOTS).map(r => r.path).join("  vs  ");
    }
    await (VIEWS[view] || overview)(params);
  } catch (err) {
    $app.replaceChildren(el("p", {class: "err", id: "error"}, String(err.message || err)));
  }
  document.body.dataset.ready = view;  // tests wait on this
}
window.addEventListener("hashchange", () => { document.body.dataset.ready = ""; render(); });
render();
