"""The leaderboard and the suite runner: normalised scores, the cross-task view, schema migration, the HTML page in
a real headless browser, and a sweep over tasks in which one job fails."""

import json
import re
import shutil
import sqlite3
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from core import leaderboard
from core.task import available_tasks
from tests.conftest import ROOT, run_suite

TINY = ["model=tiny", "trainer.batch_size=16", "trainer.lr=1e-3", "trainer.warmup_steps=2", "trainer.max_minutes=0",
        "trainer.max_steps=4", "trainer.eval_every=2"]


@pytest.fixture(scope="module")
def references() -> dict:
    """The references exactly as `python run.py` composes them."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config")
    return OmegaConf.to_container(cfg.leaderboard.references, resolve=True)


def run(task: str, dataset: str, metrics: dict, model: str = "small", seed: int = 0, created: str = "2026-01-01",
        headline: str | None = None, config: dict | None = None, **extra) -> dict:
    """A leaderboard row as run.py records it."""
    return {"run_id": f"{created}-{task}-{model}-{seed}-{dataset}", "task": task, "dataset": dataset, "model": model,
            "metrics": metrics, "params": 1_000_000, "train_seconds": 60.0, "samples_per_second": 100.0,
            "device": "cpu", "seed": seed, "headline": headline or next(iter(metrics)), "created": created,
            "run_dir": None, "commit": "abc123", "config": config or {"task": {"name": task}}, **extra}


HORIZON_96 = {"task": {"name": "forecasting", "horizon": 96}, "data": {"dir": "etth1", "file": "ETTh1.csv"}}


@pytest.mark.parametrize("task, dataset, metric, config", [("sentiment", "sst2", "accuracy", None),
                                                           ("forecasting", "etth1", "mse", HORIZON_96)])
def test_normalised_score_is_0_at_the_baseline_and_100_at_the_reference(references, task, dataset, metric, config):
    ref = references[task][dataset]

    def score(value: float) -> float:
        return leaderboard.normalised(run(task, dataset, {metric: value}, config=config), references)

    assert score(ref["baseline"]) == pytest.approx(0) and score(ref["reference"]) == pytest.approx(100)
    assert score((ref["baseline"] + ref["reference"]) / 2) == pytest.approx(50)
    better = ref["reference"] + 0.1 * (ref["reference"] - ref["baseline"])  # beyond the reference, either direction
    assert score(better) == pytest.approx(110)
    assert leaderboard.lower_is_better(ref) == (metric == "mse")


def test_runs_without_a_comparable_reference_have_no_score(references):
    assert leaderboard.normalised(run("sentiment", "my_reviews", {"accuracy": 0.9}), references) is None
    other_horizon = {**HORIZON_96, "task": {"name": "forecasting", "horizon": 192}}
    assert leaderboard.normalised(run("forecasting", "etth1", {"mse": 0.4}, config=other_horizon), references) is None
    own_csv = {**HORIZON_96, "data": {"dir": "etth1", "file": "/home/me/load.csv"}}
    assert leaderboard.normalised(run("forecasting", "etth1", {"mse": 0.4}, config=own_csv), references) is None
    assert leaderboard.normalised(run("sentiment", "sst2", {"macro_f1": 0.9}), references) is None
    # references are keyed by task and dataset: another task on fsdd does not inherit speech recognition's
    assert leaderboard.normalised(run("asr", "fsdd", {"word_wer": 0.1}), references) is not None
    assert leaderboard.normalised(run("my_fsdd_task", "fsdd", {"word_wer": 0.1}), references) is None


ETTH1 = "etth1 H96 L336 patch"  # the forecasting task names its setting with the dataset; data.dir keys the reference


def suite_runs() -> list[dict]:
    """Two variants; `small` has two seeds of two tasks and one rerun; `small_rope` one seed and a user's dataset."""
    return [run("sentiment", "sst2", {"accuracy": 0.50}, seed=0, created="2026-01-01"),  # replaced by the rerun
            run("sentiment", "sst2", {"accuracy": 0.80}, seed=0, created="2026-01-02"),
            run("sentiment", "sst2", {"accuracy": 0.78}, seed=1, created="2026-01-02"),
            run("forecasting", ETTH1, {"mse": 0.40}, seed=0, created="2026-01-02", config=HORIZON_96),
            run("forecasting", ETTH1, {"mse": 0.42}, seed=1, created="2026-01-02", config=HORIZON_96),
            run("sentiment", "sst2", {"accuracy": 0.75}, model="small_rope", created="2026-01-03"),
            run("vit", "my_photos", {"accuracy": 0.95}, model="small_rope", created="2026-01-03")]


def test_suite_view_groups_seeds_and_averages_tasks(tmp_path, references):
    db = tmp_path / "leaderboard.db"
    for r in suite_runs():
        leaderboard.record(db, r, references)
    columns, variants = leaderboard.suite(leaderboard.rows(db), references)
    assert columns == ["forecasting", "sentiment", "vit"]
    small, rope = variants  # best mean score first
    assert small["model"] == "small" and small["seeds"] == [0, 1] and rope["seeds"] == [0]
    sentiment = small["tasks"]["sentiment"]
    assert sentiment["seeds"] == 2 and sentiment["value"] == pytest.approx(0.79)  # the rerun replaced 0.50
    assert sentiment["spread"] == pytest.approx(statistics.stdev([0.80, 0.78]))
    score = {seed: {t: leaderboard.normalised(r, references) for r in suite_runs()[1:5] if r["seed"] == seed
                    for t in [r["task"]]} for seed in (0, 1)}
    assert sentiment["score"] == pytest.approx((score[0]["sentiment"] + score[1]["sentiment"]) / 2)
    seed_means = [statistics.fmean(score[s].values()) for s in (0, 1)]
    assert small["mean_score"] == pytest.approx(statistics.fmean(seed_means))
    assert small["mean_score_spread"] == pytest.approx(statistics.stdev(seed_means))
    assert small["tasks"]["forecasting"]["lower_is_better"] and small["train_minutes"] == pytest.approx(2.0)
    vit = rope["tasks"]["vit"]
    assert vit["score"] is None and "my_photos" in vit["no_reference_why"] and rope["scored_tasks"] == 1
    markdown = leaderboard.render(leaderboard.rows(db), "markdown", "suite", references)
    assert "| small | 0,1 |" in markdown
    assert "vit: no normalised score (no reference for vit on dataset 'my_photos')" in markdown
    assert "small_rope" in (tmp_path / "leaderboard.md").read_text()  # the copy beside the database is refreshed
    as_json = json.loads(leaderboard.render(leaderboard.rows(db), "json", "suite", references))
    assert [v["model"] for v in as_json] == ["small", "small_rope"] and as_json[0]["tasks"]["sentiment"]["seeds"] == 2


OLD_SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, task TEXT NOT NULL, dataset TEXT, model TEXT, metrics TEXT NOT NULL,
    params INTEGER, train_seconds REAL, samples_per_second REAL, device TEXT, seed INTEGER,
    headline TEXT, created TEXT, run_dir TEXT, commit_id TEXT, config TEXT)"""  # the store before versioning


def test_a_store_written_before_versioning_is_migrated_and_stays_readable(tmp_path, references):
    db_path = tmp_path / "leaderboard.db"
    old = run("sentiment", "sst2", {"accuracy": 0.8}, created="2025-12-31")
    db = sqlite3.connect(db_path)
    db.execute(OLD_SCHEMA)
    db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               [json.dumps(old[k]) if k in ("metrics", "config") else old[k] for k in leaderboard.FIELDS[:15]])
    db.commit()
    db.close()
    (row,) = leaderboard.rows(db_path)
    assert row["metrics"] == {"accuracy": 0.8} and row["commit"] == "abc123" and row["steps"] is None
    leaderboard.record(db_path, run("sentiment", "sst2", {"accuracy": 0.7}, seed=1, steps=40, best_step=20),
                       references)
    old_row, new_row = leaderboard.rows(db_path)
    assert old_row["run_id"] == old["run_id"] and new_row["steps"] == 40 and new_row["best_step"] == 20
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == leaderboard.SCHEMA_VERSION
    assert {c[1] for c in db.execute("PRAGMA table_info(runs)")} >= {"steps", "best_step", "commit_id"}
    db.close()
    with leaderboard.store(db_path):  # opening an up-to-date store again changes nothing
        pass
    assert len(leaderboard.rows(db_path)) == 2


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Headless Chromium with its own profile (parallel test runs must not share one)."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_html_page_renders_table_chart_and_curves_in_a_browser(tmp_path):
    db = tmp_path / "outputs" / "leaderboard.db"
    runs = suite_runs()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "history.jsonl").write_text("".join(json.dumps({"step": s, "val/accuracy": a}) + "\n"
                                                   for s, a in ((10, 0.6), (20, 0.7), (30, 0.8))))
    runs[1]["run_dir"] = str(run_dir)
    runs[0]["run_dir"] = str(tmp_path / "deleted_run")
    for r in runs:
        leaderboard.record(db, r)
    out = run_suite("mode=leaderboard", "leaderboard.format=html", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    page = Path(re.search(r"leaderboard page written to (\S+)", out.stdout).group(1))
    assert page == (tmp_path / "outputs" / "leaderboard.html").resolve()
    assert not re.search(r"""(src|href)=["']?https?:""", page.read_text())  # self-contained

    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout  # the DOM after the script ran
    suite_rows = re.search(r'<table id="suite">.*?<tbody>(.*?)</tbody>', dom, re.S).group(1)
    assert suite_rows.count("<tr>") == 2 and "small_rope" in suite_rows and "no score" in suite_rows
    assert len(re.findall(r'<rect class="bar"', dom)) == 3  # small: sentiment, forecasting; small_rope: sentiment
    runs_rows = re.search(r'<table id="runs">.*?<tbody>(.*?)</tbody>', dom, re.S).group(1)
    assert runs_rows.count("<tr>") == len(runs)
    assert dom.count('<details class="run">') == len(runs) and dom.count("<polyline") == 1
    assert "the run folder is gone" in dom

    shot = tmp_path / "leaderboard.png"
    chromium("--window-size=1200,1400", f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "profile")
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert (pixels == (0x4E, 0x79, 0xA7)).all(-1).sum() > 500  # the first variant's bars are drawn


def test_a_failing_job_does_not_stop_the_suite_nor_lose_rows(data_root, tmp_path):
    """`task=glob(...)` over the task group; forecasting finds no data (only SST-2 is there) and fails first."""
    out = run_suite("-m", "task=glob([sent*,fore*])", *TINY, f"data.root={data_root}", cwd=tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]
    summary = out.stdout[out.stdout.index("suite: "):]
    assert summary.startswith("suite: 1 of 2 job(s) succeeded")
    failed = summary[summary.index("failed:"):]
    assert "task=forecasting" in failed and "ETTh1.csv not found" in failed and "sentiment" not in failed
    rows = json.loads(run_suite("mode=leaderboard", "leaderboard.view=runs", "leaderboard.format=json",
                                cwd=tmp_path).stdout)
    assert [(r["task"], r["model"]) for r in rows] == [("sentiment", "tiny")]
    (jobs,) = (tmp_path / "outputs" / "multirun").glob("*/jobs.jsonl")
    assert [json.loads(line)["status"] for line in jobs.read_text().splitlines()] == ["failed", "ok"]


def test_glob_over_the_task_group_finds_every_task(tmp_path):
    out = run_suite("-m", "task=glob(*)", "mode=leaderboard", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (jobs,) = (tmp_path / "outputs" / "multirun").glob("*/jobs.jsonl")
    swept = [o for line in jobs.read_text().splitlines() for o in json.loads(line)["overrides"] if "task=" in o]
    assert swept == [f"task={name}" for name in available_tasks()]
