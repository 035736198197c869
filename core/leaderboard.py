"""The results store: one SQLite row per finished run, the cross-task view, and its renderers (table, Markdown, JSON).

SQLite is embedded (nothing to start) and serialises concurrent writers itself, so runs finishing at the same
moment (a sweep on several machines sharing a disk, or parallel jobs) each land exactly once. The HTML page is
written by `core.leaderboard_page`.
"""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The row a script reads (`leaderboard.view=runs leaderboard.format=json`); these names are a stable interface.
FIELDS = ["run_id", "task", "dataset", "model", "metrics", "params", "train_seconds", "samples_per_second",
          "device", "seed", "headline", "created", "run_dir", "commit", "config", "steps", "best_step"]
JSON_FIELDS = {"metrics", "config"}
COLUMN = {"commit": "commit_id"}  # field -> SQLite column where the name differs

# MIGRATIONS[i] brings a store from schema version i to i + 1 (`PRAGMA user_version`). Version 0 is both a new file
# and one written before versioning, which already holds the version-1 table: CREATE ... IF NOT EXISTS keeps it.
# Add a column by appending a list here; rows are read by column name, so old rows simply lack the new field.
MIGRATIONS = [
    ["""CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY, task TEXT NOT NULL, dataset TEXT, model TEXT, metrics TEXT NOT NULL,
        params INTEGER, train_seconds REAL, samples_per_second REAL, device TEXT, seed INTEGER,
        headline TEXT, created TEXT, run_dir TEXT, commit_id TEXT, config TEXT)"""],
    ["ALTER TABLE runs ADD COLUMN steps INTEGER", "ALTER TABLE runs ADD COLUMN best_step INTEGER"],
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The leaderboard file cannot be opened, read or written (not SQLite, a read-only folder, a path under a file)."""


@contextmanager
def store(path: Path) -> Iterator[sqlite3.Connection]:
    """The store, open (created if missing, its schema brought up to SCHEMA_VERSION); any failure is a StoreError
    that names the file."""
    db = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=60, isolation_level=None)  # wait for another writer rather than fail
        if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            migrate(db)
        yield db
    except (sqlite3.Error, OSError) as e:
        raise StoreError(f"cannot use the leaderboard {path} ({type(e).__name__}: {e})") from None
    finally:
        if db is not None:
            db.close()


def migrate(db: sqlite3.Connection) -> None:
    """Apply the missing migrations in one write transaction, so two processes opening at once migrate once."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]  # re-read: another process may have migrated
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {max(version, SCHEMA_VERSION)}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def record(path: Path, row: dict, references: dict | None = None) -> None:
    """Insert one run, or replace the row of the same run_id (a finished run trained further), in a single statement
    (so atomic); then refresh the Markdown copy beside the database."""
    fields = [k for k in FIELDS if k in row]
    values = [json.dumps(row[k]) if k in JSON_FIELDS else row[k] for k in fields]
    with store(path) as db:
        db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMN.get(k, k) for k in fields)}) "
                   f"VALUES ({', '.join('?' * len(fields))})", values)
    runs = rows(path)
    try:
        path.with_suffix(".md").write_text(render(runs, "markdown", "suite", references) + "\n\n"
                                           + render(runs, "markdown", "runs", references) + "\n")
    except OSError as e:  # the row is in; only the copy failed
        raise StoreError(f"the run is recorded, but its Markdown copy {path.with_suffix('.md')} could not be "
                         f"written ({e})") from None


def rows(path: Path) -> list[dict]:
    """Every recorded run, oldest first, with every FIELDS key (None where an older schema lacked the column)."""
    if not path.exists():
        return []
    with store(path) as db:
        cursor = db.execute("SELECT * FROM runs ORDER BY created, run_id")
        names = [{v: k for k, v in COLUMN.items()}.get(d[0], d[0]) for d in cursor.description]
        found = cursor.fetchall()
    out = []
    for values in found:
        row = dict.fromkeys(FIELDS) | dict(zip(names, values))
        for k in JSON_FIELDS:
            row[k] = json.loads(row[k]) if row[k] else None
        out.append(row)
    return out


# -- normalised scores --------------------------------------------------------------------------------------------


def reference_key(row: dict) -> str:
    """The run's data.dir (a task may record a longer dataset name, e.g. `etth1 H96 L336 patch`)."""
    data = (row.get("config") or {}).get("data") or {}
    return str(data.get("dir") or row.get("dataset") or "")


def reference_for(row: dict, references: dict) -> dict | None:
    """The task's reference entry for the run's dataset, if the run is comparable with it (same metric present,
    `when` satisfied). References are keyed by task, then dataset: two tasks on one dataset have their own."""
    ref = (references.get(row.get("task")) or {}).get(reference_key(row))
    if not ref or ref["metric"] not in (row.get("metrics") or {}):
        return None
    for key, expected in (ref.get("when") or {}).items():
        node = row.get("config") or {}
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != expected:
            return None
    return ref


def normalised(row: dict, references: dict) -> float | None:
    """100 * (m - baseline) / (reference - baseline): 0 at the baseline, 100 at the reference, whichever way is up."""
    ref = reference_for(row, references)
    if ref is None:
        return None
    return 100 * (row["metrics"][ref["metric"]] - ref["baseline"]) / (ref["reference"] - ref["baseline"])


def lower_is_better(ref: dict) -> bool:
    return ref["reference"] < ref["baseline"]


# -- the cross-task view ------------------------------------------------------------------------------------------


def _mean_spread(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for a single value) of the non-missing values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def column_name(task: str, dataset: str | None, datasets_of_task: set) -> str:
    """A task's column; a task run on several datasets gets one column per dataset."""
    return task if len(datasets_of_task) == 1 else f"{task}/{dataset}"


def suite(runs: list[dict], references: dict) -> tuple[list[str], list[dict]]:
    """Columns (one per task) and one entry per model variant, seeds averaged (mean and spread), best mean first."""
    latest = {(r["model"], r["task"], r["dataset"], r["seed"]): r for r in runs}  # a rerun replaces the older run
    datasets: dict[str, set] = {}
    for _, task, dataset, _ in latest:
        datasets.setdefault(task, set()).add(dataset)
    cells: dict[str, dict[str, list[dict]]] = {}
    for (model, task, dataset, _), r in latest.items():
        cells.setdefault(model or "custom", {}).setdefault(column_name(task, dataset, datasets[task]), []).append(r)
    columns = sorted({col for by_column in cells.values() for col in by_column})
    variants = [variant(model, by_column, references) for model, by_column in cells.items()]
    variants.sort(key=lambda v: (v["mean_score"] is None, -(v["mean_score"] or 0), v["model"]))
    return columns, variants


def variant(model: str, by_column: dict[str, list[dict]], references: dict) -> dict:
    """One model variant's row: per task the metric and score over seeds, their mean, and efficiency figures."""
    tasks, per_seed = {}, {}
    for col, group in sorted(by_column.items()):
        first = group[0]
        ref = reference_for(first, references)
        metric = ref["metric"] if ref else first["headline"]
        value, spread = _mean_spread([(r["metrics"] or {}).get(metric) for r in group])
        scores = [normalised(r, references) for r in group]
        score, score_spread = _mean_spread(scores)
        for r, s in zip(group, scores):
            if s is not None:
                per_seed.setdefault(r["seed"], {})[col] = s
        tasks[col] = {"task": first["task"], "dataset": first["dataset"], "metric": metric, "value": value,
                      "spread": spread, "score": score, "score_spread": score_spread, "seeds": len(group),
                      "lower_is_better": bool(ref and lower_is_better(ref)), "no_reference_why": None if ref else (
                          f"no reference for {first['task']} on dataset {reference_key(first)!r}"
                          if reference_key(first) not in (references.get(first["task"]) or {})
                          else "run settings differ from the reference's")}
    scored = [t["score"] for t in tasks.values() if t["score"] is not None]
    mean = statistics.fmean(scored) if scored else None
    seed_means = [statistics.fmean(s.values()) for s in per_seed.values()]
    same_tasks = len({frozenset(s) for s in per_seed.values()}) == 1
    mean_spread = statistics.stdev(seed_means) if same_tasks and len(seed_means) > 1 else None
    groups = by_column.values()
    params = [_mean_spread([r["params"] for r in g])[0] for g in groups]
    minutes = [_mean_spread([r["train_seconds"] for r in g])[0] for g in groups]
    speeds = [_mean_spread([r["samples_per_second"] for r in g])[0] for g in groups]
    speeds = [s for s in speeds if s]
    return {"model": model, "seeds": sorted({r["seed"] for g in groups for r in g}, key=str), "tasks": tasks,
            "mean_score": mean, "mean_score_spread": mean_spread, "scored_tasks": len(scored),
            "params": _mean_spread(params)[0],  # per task model: heads and embeddings differ between tasks
            "train_minutes": sum(m for m in minutes if m) / 60,  # the whole suite, one seed
            # throughput in samples of different kinds: the geometric mean compares variants fairly across tasks
            "samples_per_second": math.exp(statistics.fmean(math.log(s) for s in speeds)) if speeds else None}


# -- renderers ----------------------------------------------------------------------------------------------------


def _num(value: float | None, spread: float | None = None) -> str:
    """A metric: 4 significant digits below 10 (fractions, MSE), one decimal above (percentages, BLEU)."""
    if value is None:
        return "n/a"
    text = f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"
    return text if spread is None else f"{text} ± {spread:.2g}"


def _score(value: float | None, spread: float | None = None) -> str:
    """A normalised score: one decimal, on a 0-100 scale."""
    if value is None:
        return "n/a"
    return f"{value:.1f}" if spread is None else f"{value:.1f} ± {spread:.1f}"


def suite_table(runs: list[dict], references: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, body and footnotes of the cross-task view."""
    columns, variants = suite(runs, references)
    header = ["model", "seeds", *columns, "mean score", "params/task", "train min", "samples/s"]
    body, notes = [], {}
    for v in variants:
        cells = []
        for col in columns:
            t = v["tasks"].get(col)
            if t is None:
                cells.append("")
                continue
            arrow = "↓" if t["lower_is_better"] else ""
            score = f" ({_score(t['score'], t['score_spread'])})" if t["score"] is not None else " (no score)"
            cells.append(f"{t['metric']}{arrow} {_num(t['value'], t['spread'])}{score}")
            if t["no_reference_why"]:
                notes[col] = f"{col}: no normalised score ({t['no_reference_why']}); see conf/leaderboard/default.yaml"
        mean = _score(v["mean_score"], v["mean_score_spread"])
        body.append([v["model"], ",".join(map(str, v["seeds"])), *cells,
                     f"{mean} over {v['scored_tasks']} task(s)" if v["mean_score"] is not None else "n/a",
                     f"{v['params'] / 1e6:.2f}M" if v["params"] else "", f"{v['train_minutes']:.1f}",
                     _num(v["samples_per_second"])])
    legend = ["cells: metric (normalised score: 0 = baseline, 100 = reference); ± is the spread over seeds; "
              "samples/s is the geometric mean over tasks"]
    return header, body, legend + list(notes.values())


def runs_table(runs: list[dict], references: dict) -> tuple[list[str], list[list[str]]]:
    """Header and body of the per-run view."""
    header = ["run_id", "task", "model", "dataset", "metrics (test)", "score", "params", "train min", "samples/s",
              "device", "seed"]
    body = [[r["run_id"], r["task"], r["model"] or "", r["dataset"] or "", _fmt_metrics(r["metrics"], r["headline"]),
             _score(normalised(r, references)), f"{r['params'] / 1e6:.2f}M" if r["params"] else "",
             f"{(r['train_seconds'] or 0) / 60:.1f}", f"{r['samples_per_second'] or 0:.1f}", r["device"] or "",
             str(r["seed"])] for r in runs]
    return header, body


def _fmt_metrics(metrics: dict, headline: str | None) -> str:
    keys = sorted(metrics, key=lambda k: (k != headline, k))
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics[k], (int, float)))


def suite_json(runs: list[dict], references: dict) -> list[dict]:
    return suite(runs, references)[1]


def render(runs: list[dict], fmt: str = "table", view: str = "suite", references: dict | None = None) -> str:
    """The runs as an aligned terminal table, Markdown, or JSON, in the cross-task (`suite`) or per-run view."""
    references = references or {}
    if fmt == "json":
        if view == "suite":
            return json.dumps(suite_json(runs, references), indent=2)
        return json.dumps([{**{k: r[k] for k in FIELDS if k != "config"}, "normalised": normalised(r, references)}
                           for r in runs], indent=2)
    if not runs:
        return "no runs recorded yet: train one with `python run.py task=<task>`"
    header, body, notes = suite_table(runs, references) if view == "suite" else (*runs_table(runs, references), [])
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body] + ([""] if notes else [])
                         + [f"- {n}" for n in notes])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = "  ".join
    return "\n".join([line(h.ljust(w) for h, w in zip(header, widths)), line("-" * w for w in widths)]
                     + [line(x.ljust(w) for x, w in zip(row, widths)) for row in body] + notes)
