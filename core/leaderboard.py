"""The results store: one SQLite row per finished run, and its renderers (terminal table, JSON, Markdown).

SQLite is embedded (nothing to start) and serialises concurrent writers itself, so runs finishing at the same
moment (a sweep on several machines sharing a disk, or parallel jobs) each land exactly once.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

# The row a script reads (`leaderboard.format=json`); these names are a stable interface.
FIELDS = ["run_id", "task", "dataset", "model", "metrics", "params", "train_seconds", "samples_per_second",
          "device", "seed", "headline", "created", "run_dir", "commit", "config"]
JSON_FIELDS = {"metrics", "config"}

SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, task TEXT NOT NULL, dataset TEXT, model TEXT, metrics TEXT NOT NULL,
    params INTEGER, train_seconds REAL, samples_per_second REAL, device TEXT, seed INTEGER,
    headline TEXT, created TEXT, run_dir TEXT, commit_id TEXT, config TEXT)"""


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60)  # wait for another writer rather than fail
    db.execute(SCHEMA)
    return db


def record(path: Path, row: dict) -> None:
    """Insert one run atomically (a single transaction), then refresh the Markdown copy beside the database."""
    values = [json.dumps(row[k]) if k in JSON_FIELDS else row.get(k) for k in FIELDS]
    with connect(path) as db:
        db.execute(f"INSERT INTO runs VALUES ({', '.join('?' * len(FIELDS))})", values)
    db.close()
    path.with_suffix(".md").write_text(render(rows(path), "markdown") + "\n")


def rows(path: Path) -> list[dict]:
    """Every recorded run, oldest first."""
    if not path.is_file():
        return []
    db = connect(path)
    try:
        found = db.execute("SELECT * FROM runs ORDER BY created, run_id").fetchall()
    finally:
        db.close()
    out = []
    for values in found:
        row = dict(zip(FIELDS, values))
        for k in JSON_FIELDS:
            row[k] = json.loads(row[k]) if row[k] else None
        out.append(row)
    return out


def _fmt_metrics(metrics: dict, headline: str | None) -> str:
    keys = sorted(metrics, key=lambda k: (k != headline, k))
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics[k], (int, float)))


def table(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["run_id", "task", "model", "dataset", "metrics (test)", "params", "train min", "samples/s", "device",
              "seed"]
    body = [[r["run_id"], r["task"], r["model"] or "", r["dataset"] or "", _fmt_metrics(r["metrics"], r["headline"]),
             f"{r['params'] / 1e6:.2f}M" if r["params"] else "", f"{(r['train_seconds'] or 0) / 60:.1f}",
             f"{r['samples_per_second'] or 0:.1f}", r["device"] or "", str(r["seed"])] for r in runs]
    return header, body


def render(runs: list[dict], fmt: str = "table") -> str:
    """The runs as an aligned terminal table, Markdown, or JSON (the stable FIELDS, `config` left out)."""
    if fmt == "json":
        return json.dumps([{k: r[k] for k in FIELDS if k != "config"} for r in runs], indent=2)
    if not runs:
        return "no runs recorded yet: train one with `python run.py task=<task>`"
    header, body = table(runs)
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    if fmt != "table":
        raise ValueError(f"leaderboard.format={fmt!r}: choose table, markdown or json")
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = "  ".join
    return "\n".join([line(h.ljust(w) for h, w in zip(header, widths)), line("-" * w for w in widths)]
                     + [line(x.ljust(w) for x, w in zip(row, widths)) for row in body])
