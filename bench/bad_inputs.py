"""Bad inputs through the real command line: every one must be refused in one clear line, nothing saved may change,
and no half-written run folder may stay behind.

    python bench/bad_inputs.py [--workers 2] [--only SUBSTRING] [-v]

It builds tiny data of the real schemas (tests/conftest.py's writers, no ../shared needed) in a temporary folder,
trains one small sentiment run and one forecasting run to aim at, then runs each case as `python run.py ...` there.
A case is judged by what a user would see and keep:
- traceback: a Python traceback on the terminal;
- silent: exit code 0 (the bad input was accepted);
- lost: a file of a finished run (the targets, or the leaderboard) changed;
- half-written: a run folder appeared that holds neither a model nor a FAILED note;
- clean: none of these, and the last line on stderr says what is wrong.
It prints one line per case and then `N tried, N clean, 0 tracebacks, 0 silent, 0 lost, 0 half-written`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import write_sst2  # noqa: E402
from tests.test_forecasting import write_ett  # noqa: E402

BASE = ["task=sentiment", "model=tiny", "trainer.max_steps=10", "trainer.eval_every=5", "trainer.log_with=[]"]
FINISHED, FORECASTED = "targets/sentiment", "targets/forecasting"  # the finished runs, in each case's own folder
FORECAST = ["task=forecasting", "model.d_model=32", "model.d_ff=64", "trainer.max_steps=6", "trainer.eval_every=3",
            "trainer.log_with=[]", "data.dir=ett", "task.lookback=48", "task.horizon=24", "data.borders=null"]


@dataclass
class Case:
    name: str
    args: list[str]
    setup: str | None = None  # a function below that prepares the case's files in its folder


def cases(finished: str, forecast: str) -> list[Case]:
    def t(name: str, *args: str) -> Case:  # a sentiment training run with one bad setting
        given = {a.split("=")[0] for a in args}
        return Case(name, [*(b for b in BASE if b.split("=")[0] not in given), *args])

    c = [t(f"trainer.{k}={v}", *f"trainer.{k}={v}".split()) for k, v in [
        ("batch_size", 0), ("batch_size", -3), ("batch_size", "abc"), ("eval_batch_size", 0), ("grad_accum", 0),
        ("lr", -1), ("lr", "nan"), ("lr", "inf"), ("lr", 0), ("betas", "[2,0.9]"), ("betas", "[0.9]"),
        ("weight_decay", -1), ("max_minutes", -1), ("max_minutes", "nan"), ("max_steps", -1),
        ("epochs", "0 trainer.max_steps=0"),
        ("warmup_steps", -5), ("clip_grad", -1), ("clip_grad", "nan"), ("ema_decay", 1.5), ("sam_rho", -1),
        ("patience", -1), ("eval_every", -1), ("log_every", 0), ("seed", "abc"), ("save_every", -1),
        ("save_every_minutes", -1), ("schedule", "bogus"), ("mixed_precision", "fp7"), ("log_with", "[nosuch]"),
        ("num_workers", -1), ("clock", "bogus"), ("nosuch", 1)]]
    c += [t(f"model.{k}={v}", *f"model.{k}={v}".split()) for k, v in [
        ("n_heads", 0), ("d_model", 0), ("d_model", "30 model.n_heads=4"), ("dropout", 1.5), ("dropout", "nan"),
        ("n_layers", 0),
        ("d_ff", 0), ("norm", "bogus"), ("positions", "bogus"), ("activation", "bogus"), ("max_len", 0)]]
    c += [t("model=nosuch", "model=nosuch"), t("task=nosuch", "task=nosuch"),
          t("model.pretrained=<missing folder>", "model.pretrained=/nonexistent/checkpoint"),
          Case("model.pretrained=<folder without a checkpoint>", [*BASE, "model.pretrained=."], "empty_folder"),
          Case("model.pretrained on a task that cannot take it", [*FORECAST, f"model.pretrained={FINISHED}"]),
          t("task.vocab_size=0", "task.vocab_size=0"), t("task.pooling=max", "task.pooling=max"),
          t("task.tokenizer=sentencepiece", "task.tokenizer=sentencepiece"), t("task.label_smoothing=2",
                                                                             "task.label_smoothing=2"),
          t("task.max_len=0", "task.max_len=0"), t("data.root=<missing>", "data.root=/nonexistent"),
          t("data.dir=<missing>", "data.dir=nosuch")]
    c += [Case(name, [*BASE, "data.root=bad"], name) for name in
          ("blank_texts", "malformed_json_line", "empty_train_file", "missing_label_column", "non_utf8_data",
           "single_class")]
    c += [Case("forecasting CSV with inf", [*FORECAST, "data.root=bad"], "forecast_inf"),
          Case("forecasting data.targets=<a column the CSV lacks>", [*FORECAST, "data.targets=[nosuch]"]),
          Case("forecasting CSV too short", [*FORECAST, "data.root=bad"], "forecast_short")]
    c += [t("leaderboard not an SQLite file", "leaderboard.path=not_sqlite.db"),
          t("leaderboard under a regular file", "leaderboard.path=a_file/lb.db"),
          Case("mode=leaderboard on a non-SQLite file", ["mode=leaderboard", "leaderboard.path=not_sqlite.db"]),
          Case("leaderboard.format=bogus", ["mode=leaderboard", "leaderboard.format=bogus"]),
          Case("leaderboard.view=bogus", ["mode=leaderboard", "leaderboard.view=bogus"]),
          Case("mode=bogus", ["mode=bogus"])]
    p = lambda name, *args: Case(name, ["mode=predict", *args])  # noqa: E731
    c += [p("predict without run_dir", "text=good"), p("predict run_dir=<missing>", "run_dir=/nonexistent", "text=a"),
          p("predict on a folder with no model", "run_dir=bad", "text=good"),
          p("predict with an empty text", f"run_dir={finished}", "text="),
          p("predict input=<missing file>", f"run_dir={finished}", "input=nosuch.txt"),
          p("predict input=<not UTF-8>", f"run_dir={finished}", "input=latin1.txt"),
          p("predict input=<empty file>", f"run_dir={finished}", "input=empty.txt"),
          p("predict task=<another task>", f"run_dir={finished}", "task=forecasting", "csv=x.csv"),
          p("predict forecasting csv=<missing>", f"run_dir={forecast}", "csv=nosuch.csv"),
          p("predict forecasting csv=<other columns>", f"run_dir={forecast}", "csv=other_columns.csv"),
          p("predict on a corrupt model.safetensors", "run_dir=corrupt", "text=good"),
          p("predict on a corrupt config.json", "run_dir=bad_config", "text=good"),
          p("predict on a FAILED run", "run_dir=failed", "text=good"),
          Case("attention on a folder with no model", ["mode=attention", "run_dir=bad"]),
          Case("record without run_dir", ["mode=record"]),
          Case("record an unfinished folder", ["mode=record", "run_dir=bad"])]
    c += [Case("train into a finished run without resume", [*BASE, f"run_dir={finished}"]),
          Case("resume a finished run as another task", [*FORECAST, f"run_dir={finished}", "trainer.resume=true"]),
          Case("resume with another model shape", [*BASE, f"run_dir={finished}", "trainer.resume=true",
                                                   "model.d_model=64"]),
          Case("resume a finished run with no steps left", [*BASE, f"run_dir={finished}", "trainer.resume=true"]),
          Case("resume a folder that does not exist", [*BASE, "run_dir=outputs/runs/new", "trainer.resume=true"])]
    return c


# ---- the files some cases need, written into the case's own folder --------------------------------------------


def write_bad_data(name: str, folder: Path) -> None:
    root = write_sst2(folder / "bad", sizes=(40, 10, 10))
    train = root / "train.jsonl"
    lines = train.read_text().splitlines()
    if name == "blank_texts":
        train.write_text("".join(json.dumps({"id": i, "text": "   ", "label": i % 2}) + "\n" for i in range(40)))
    elif name == "malformed_json_line":
        train.write_text("\n".join(lines[:7] + ['{"id": 7, "text": "oops", "label": '] + lines[8:]) + "\n")
    elif name == "empty_train_file":
        train.write_text("")
    elif name == "missing_label_column":
        train.write_text("".join(json.dumps({"id": i, "text": "a film"}) + "\n" for i in range(40)))
    elif name == "non_utf8_data":
        train.write_bytes("\n".join(lines).encode() + b'\n{"id": 99, "text": "caf\xe9", "label": 1}\n')
    elif name == "single_class":
        train.write_text("".join(json.dumps({"id": i, "text": "a good film", "label": 1}) + "\n" for i in range(40)))


def write_forecast(name: str, folder: Path) -> None:
    path = folder / "bad" / "ett" / "ETTh1.csv"
    frame = write_ett(path, 24 * 30 * 2 if name != "forecast_short" else 50)
    if name == "forecast_inf":
        frame.loc[100, "OT"] = float("inf")
    frame.to_csv(path, index=False)


def prepare(case: Case, folder: Path, work: Path) -> None:
    shutil.copytree(work / "targets", folder / "targets", symlinks=True)
    finished = folder / FINISHED
    (folder / "a_file").write_text("not a folder\n")
    (folder / "not_sqlite.db").write_text("this is not a database\n")
    (folder / "latin1.txt").write_bytes("un film très touchant\n".encode("latin-1"))
    (folder / "empty.txt").write_text("")
    (folder / "other_columns.csv").write_text("date,a,b\n2020-01-01 00:00:00,1,2\n")
    (folder / "bad").mkdir(exist_ok=True)
    (folder / "bad" / "config.yaml").write_text("task: {name: sentiment}\n")
    shutil.copytree(finished, folder / "corrupt")
    (folder / "corrupt" / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    shutil.copytree(finished, folder / "bad_config")
    (folder / "bad_config" / "config.json").write_text("{ not json")
    shutil.copytree(finished, folder / "failed")
    (folder / "failed" / "FAILED").write_text("RuntimeError: killed\n")
    if case.setup and case.setup.startswith("forecast_"):
        write_forecast(case.setup, folder)
    elif case.setup == "empty_folder":
        pass
    elif case.setup:
        write_bad_data(case.setup, folder)


# ---- running and judging ----------------------------------------------------------------------------------------


def digest(path: Path) -> dict[str, str]:
    """Every file under `path` (or the file itself) -> its SHA-256: what must not change."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.name != "events")
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if "logs" not in p.parts}


def suite(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SUITE_DATA": str(cwd / "data"), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def recorded(db: Path) -> dict:
    """The leaderboard's rows by run id: none of those there before a case may change or go."""
    with sqlite3.connect(db) as con:
        return {row[0]: row for row in con.execute("SELECT * FROM runs")}


def judge(case: Case, work: Path) -> tuple[str, str]:
    folder = work / "cases" / "".join(ch if ch.isalnum() else "_" for ch in case.name)
    folder.mkdir(parents=True)
    shutil.copytree(work / "data", folder / "data")
    prepare(case, folder, work)
    shutil.copy(work / "lb.db", folder / "lb.db")
    kept, rows = digest(folder / "targets"), recorded(folder / "lb.db")
    before = set((folder / "outputs" / "runs").glob("*")) if (folder / "outputs" / "runs").is_dir() else set()
    args = [a if a.startswith("leaderboard.path=") else a for a in case.args]
    if not any(a.startswith("leaderboard.path=") for a in args):
        args.append("leaderboard.path=lb.db")
    result = suite(args, folder)
    text = result.stdout + result.stderr
    last = next((line for line in reversed(result.stderr.splitlines())
                 if line.strip() and "HYDRA_FULL_ERROR" not in line), "")
    created = set((folder / "outputs" / "runs").glob("*")) - before if (folder / "outputs" / "runs").is_dir() else set()
    half = [d for d in created if not (d / "model.safetensors").is_file() and not (d / "FAILED").is_file()]
    now = recorded(folder / "lb.db") if (folder / "lb.db").is_file() else {}
    if "Traceback" in text:
        verdict = "traceback"
    elif digest(folder / "targets") != kept or any(now.get(k) != v for k, v in rows.items()):
        verdict = "lost"
    elif result.returncode == 0:
        verdict = "silent"
    elif half:
        verdict = "half-written"
    else:
        verdict = "clean"
    return verdict, last.strip()[:220] if verdict == "clean" else (text.strip()[-1500:] or "(no output)")


def train_targets(work: Path) -> None:
    """One finished sentiment run and one finished forecasting run (FINISHED, FORECAST), recorded in work/lb.db."""
    write_sst2(work / "data")
    write_ett(work / "data" / "ett" / "ETTh1.csv", 24 * 30 * 2)
    for path, args in ((FINISHED, BASE), (FORECASTED, FORECAST)):
        result = suite([*args, f"run_dir={path}", "leaderboard.path=lb.db"], work)
        if result.returncode != 0:
            sys.exit(f"the run {path} the cases aim at failed:\n{result.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="")
    parser.add_argument("-v", action="store_true", help="print the last stderr line of every clean case too")
    opts = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bad_inputs_") as tmp:
        work = Path(tmp)
        train_targets(work)
        rows = len(recorded(work / "lb.db"))
        todo = [c for c in cases(FINISHED, FORECASTED) if opts.only in c.name]
        with ThreadPoolExecutor(opts.workers) as pool:
            verdicts = list(pool.map(lambda c: judge(c, work), todo))
        counts = {v: 0 for v in ("clean", "traceback", "silent", "lost", "half-written")}
        for case, (verdict, detail) in zip(todo, verdicts):
            counts[verdict] += 1
            print(f"{verdict:12s} {case.name}" + (f"\n    {detail}" if opts.v or verdict != "clean" else ""))
        print(f"\ntargets: a sentiment and a forecasting run ({rows} leaderboard rows); "
              f"{(time.perf_counter() - started) / 60:.1f} min")
        print(f"{len(todo)} tried, {counts['clean']} clean, {counts['traceback']} tracebacks, "
              f"{counts['silent']} silent, {counts['lost']} lost, {counts['half-written']} half-written")


if __name__ == "__main__":
    main()
