"""`leaderboard.format=html`: one self-contained page (inline CSS, JS and SVG; nothing fetched from a network).

Python embeds the data as JSON; the page's script draws the sortable tables, the chart of normalised scores per
task per variant, and per-run details with the learning curves read from each run folder's `history.jsonl`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from core.leaderboard import FIELDS, normalised, suite


def history(run_dir: str | None) -> list[dict] | None:
    """The run's validation records, if its folder still exists."""
    path = Path(run_dir) / "history.jsonl" if run_dir else None
    if path is None or not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def page_data(runs: list[dict], references: dict) -> dict:
    columns, variants = suite(runs, references)
    details = [{**{k: r[k] for k in FIELDS}, "score": normalised(r, references), "history": history(r["run_dir"])}
               for r in reversed(runs)]  # newest first
    return {"columns": columns, "variants": variants, "runs": details, "references": references}


def write(path: Path, runs: list[dict], references: dict) -> Path:
    """Write the page to `path` and return it."""
    payload = json.dumps(page_data(runs, references), default=str).replace("</", "<\\/")  # no early </script>
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PAGE.replace("{{TITLE}}", html.escape(f"Leaderboard: {len(runs)} runs"))
                    .replace("{{DATA}}", payload), encoding="utf-8")
    return path


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; max-width: 40em; }
td.num { text-align: right; white-space: nowrap; }
th { background: #f2f2f2; cursor: pointer; user-select: none; white-space: nowrap; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
.muted { color: #888; } .bad { color: #b00; }
pre { background: #f7f7f7; padding: .5em; max-height: 20em; overflow: auto; font-size: 12px; }
details { margin: .3em 0; } summary { cursor: pointer; }
svg text { font: 11px sans-serif; }
</style></head><body>
<h1>Leaderboard</h1>
<noscript>This page draws its tables with JavaScript: open it in a browser with scripts enabled.</noscript>
<h2>Cross-task view</h2>
<p class="muted">One row per model variant; each cell: headline metric (normalised score: 0 = trivial baseline,
100 = published reference; &plusmn; = spread over seeds). Click a header to sort.</p>
<table id="suite"></table><ul id="notes"></ul>
<h2>Normalised score per task</h2><div id="chart"></div>
<h2>References</h2><table id="refs"></table>
<h2>Runs</h2><table id="runs"></table>
<h2>Run details</h2><div id="details"></div>
<script type="application/json" id="data">{{DATA}}</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"];

function el(tag, attrs, ...kids) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const kid of kids) node.append(kid);
  return node;
}
function num(v, s) {  // a metric: 4 significant digits below 10, one decimal above
  if (v === null || v === undefined) return "n/a";
  const text = Math.abs(v) < 10 ? String(Number(v.toPrecision(4))) : v.toFixed(1);
  return s === null || s === undefined ? text : text + " \\u00b1 " + s.toPrecision(2);
}
function score(v, s) {  // a normalised score: one decimal
  if (v === null || v === undefined) return "n/a";
  return s === null || s === undefined ? v.toFixed(1) : v.toFixed(1) + " \\u00b1 " + s.toFixed(1);
}
// A table whose rows are [[text, sortKey], ...]; clicking a header sorts by that column, again to reverse.
function fill(table, header, rows) {
  const head = el("tr");
  header.forEach((h, i) => {
    const th = el("th", {}, h);
    th.onclick = () => sortBy(table, i, th);
    head.append(th);
  });
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr");
    for (const [text, key] of row) {
      tr.append(el("td", {"data-key": key ?? "", class: typeof key === "number" ? "num" : "text"}, text));
    }
    body.append(tr);
  }
  table.replaceChildren(el("thead", {}, head), body);
}
function sortBy(table, col, th) {
  const desc = th.classList.contains("asc");
  table.querySelectorAll("th").forEach(h => h.classList.remove("asc", "desc"));
  th.classList.add(desc ? "desc" : "asc");
  const body = table.tBodies[0];
  const key = tr => tr.cells[col].dataset.key;
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
    const c = (x === "") - (y === "") || (!isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y));
    return desc ? -c : c;
  });
  body.append(...rows);
}

function suiteTable() {
  const header = ["model", "seeds", ...data.columns, "mean score", "params/task", "train min", "samples/s"];
  const notes = document.getElementById("notes");
  const rows = data.variants.map(v => [
    [v.model, v.model], [v.seeds.join(","), v.seeds.length],
    ...data.columns.map(c => {
      const t = v.tasks[c];
      if (!t) return ["", null];
      if (t.no_reference_why) notes.append(el("li", {}, c + ": no normalised score (" + t.no_reference_why + ")"));
      const scored = t.score === null ? " (no score)" : " (" + score(t.score, t.score_spread) + ")";
      return [t.metric + (t.lower_is_better ? "\\u2193 " : " ") + num(t.value, t.spread) + scored,
              t.score === null ? t.value : t.score];
    }),
    [score(v.mean_score, v.mean_score_spread) + " over " + v.scored_tasks, v.mean_score],
    [v.params ? (v.params / 1e6).toFixed(2) + "M" : "", v.params], [v.train_minutes.toFixed(1), v.train_minutes],
    [num(v.samples_per_second), v.samples_per_second]]);
  fill(document.getElementById("suite"), header, rows);
}

// Grouped bars: one group per task, one bar per variant; bars beyond the axis are clipped, their label is not.
function chart() {
  const scores = data.variants.flatMap(v => Object.values(v.tasks).map(t => t.score)).filter(s => s !== null);
  const lo = Math.max(-100, Math.min(0, ...scores)), hi = Math.min(200, Math.max(100, ...scores));
  const n = data.variants.length, barW = 22, gap = 24, left = 40, top = 10, h = 240;
  const groupW = Math.max(n * barW + gap, 90), width = Math.max(400, left + data.columns.length * groupW + 10);
  const y = s => top + h * (hi - Math.max(lo, Math.min(hi, s))) / (hi - lo);
  const svg = el("svg:svg", {width: width, height: top + h + 40 + 18 * n, id: "score-chart", role: "img"});
  for (const tick of [lo, 0, 50, 100, hi].filter((t, i, a) => a.indexOf(t) === i && t >= lo && t <= hi)) {
    svg.append(el("svg:line", {x1: left, x2: width, y1: y(tick), y2: y(tick), stroke: tick === 0 ? "#444" : "#ddd"}));
    svg.append(el("svg:text", {x: left - 4, y: y(tick) + 4, "text-anchor": "end"}, String(Math.round(tick))));
  }
  data.columns.forEach((c, g) => {
    const x0 = left + g * groupW + (groupW - n * barW) / 2;
    data.variants.forEach((v, i) => {
      const t = v.tasks[c];
      if (!t || t.score === null) return;
      const top_ = Math.min(y(t.score), y(0)), bar = el("svg:rect", {class: "bar", x: x0 + i * barW, y: top_,
        width: barW - 2, height: Math.max(1, Math.abs(y(t.score) - y(0))), fill: COLORS[i % COLORS.length]});
      bar.append(el("svg:title", {}, v.model + " on " + c + ": " + score(t.score, t.score_spread)));
      svg.append(bar);
      if (t.score < lo || t.score > hi) {  // clipped: say how far it goes
        svg.append(el("svg:text", {x: x0 + i * barW + barW / 2, y: t.score > hi ? top + 10 : top + h - 4,
          "text-anchor": "middle", fill: "#fff", "font-size": 9}, score(t.score).split(".")[0]));
      }
    });
    svg.append(el("svg:text", {x: x0 + n * barW / 2, y: top + h + 14, "text-anchor": "middle"}, c));
  });
  data.variants.forEach((v, i) => {
    const ly = top + h + 30 + 18 * i;
    svg.append(el("svg:rect", {x: left, y: ly, width: 12, height: 12, fill: COLORS[i % COLORS.length]}));
    svg.append(el("svg:text", {x: left + 18, y: ly + 10}, v.model + " (mean " + score(v.mean_score) + ")"));
  });
  document.getElementById("chart").append(svg);
}

function refsTable() {
  const rows = Object.entries(data.references).map(([ds, r]) => [[ds, ds], [r.metric, r.metric],
    [String(r.baseline), r.baseline], [r.baseline_source || "", null], [String(r.reference), r.reference],
    [r.reference_source || "", null], [r.when ? JSON.stringify(r.when) : "", null]]);
  fill(document.getElementById("refs"), ["dataset", "metric", "0 =", "source", "100 =", "source", "when"], rows);
}

// A learning curve: the validation headline metric against the optimizer step.
function curve(history, key) {
  const pts = history.filter(h => typeof h[key] === "number");
  if (pts.length === 0) return el("p", {class: "muted"}, "no " + key + " in history.jsonl");
  const w = 360, h = 140, p = 30, xs = pts.map(q => q.step), ys = pts.map(q => q[key]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = s => p + (w - 2 * p) * (x1 > x0 ? (s - x0) / (x1 - x0) : 0.5);
  const sy = v => h - p + (2 * p - h) * (y1 > y0 ? (v - y0) / (y1 - y0) : 0.5);
  const svg = el("svg:svg", {width: w, height: h, class: "curve"});
  svg.append(el("svg:polyline", {fill: "none", stroke: COLORS[0], "stroke-width": 2,
    points: pts.map(q => sx(q.step) + "," + sy(q[key])).join(" ")}));
  svg.append(el("svg:text", {x: p, y: 12}, key + ": " + num(ys[0]) + " \\u2192 " + num(ys[ys.length - 1])));
  svg.append(el("svg:text", {x: w - p, y: h - 8, "text-anchor": "end"}, "step " + x1));
  return svg;
}

function runs() {
  const rows = data.runs.map(r => [[r.run_id, r.run_id], [r.task, r.task], [r.model || "", r.model || ""],
    [r.dataset || "", r.dataset || ""], [r.headline + " " + num(r.metrics[r.headline]), r.metrics[r.headline]],
    [score(r.score), r.score], [r.params ? (r.params / 1e6).toFixed(2) + "M" : "", r.params],
    [((r.train_seconds || 0) / 60).toFixed(1), r.train_seconds], [num(r.samples_per_second), r.samples_per_second],
    [String(r.seed), r.seed], [r.created || "", r.created || ""]]);
  fill(document.getElementById("runs"), ["run_id", "task", "model", "dataset", "headline (test)", "score",
    "params", "train min", "samples/s", "seed", "created"], rows);
  const box = document.getElementById("details");
  for (const r of data.runs) {
    const d = el("details", {class: "run"}, el("summary", {}, r.run_id + " \\u2014 " + r.task + " / " + r.model));
    d.append(el("pre", {}, JSON.stringify({metrics: r.metrics, device: r.device, steps: r.steps,
      best_step: r.best_step, commit: r.commit, run_dir: r.run_dir}, null, 2)));
    d.append(r.history ? curve(r.history, "val/" + r.headline)
                       : el("p", {class: "muted"}, "no learning curve: the run folder is gone"));
    d.append(el("details", {}, el("summary", {}, "config"), el("pre", {}, JSON.stringify(r.config, null, 2))));
    box.append(d);
  }
}

suiteTable(); chart(); refsTable(); runs();
</script></body></html>
"""
