"""Beyond one process and one terminal: accelerate launch (several processes, FSDP, its --mixed_precision), experiment
trackers, the value a sweeper optimises, the Python API and `--help`."""

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from core.task import UserError
from core.train import resolve_precision
from tests.conftest import ROOT, run_suite, write_sst2

TINY = ["task=sentiment", "model=tiny", "task.vocab_size=200", "trainer.batch_size=16", "trainer.lr=1e-3",
        "trainer.warmup_steps=2", "trainer.max_minutes=0", "trainer.log_every=2", "trainer.max_steps=6",
        "trainer.eval_every=3"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def runs_in(workdir: Path) -> list[Path]:
    return sorted((workdir / "outputs" / "runs").iterdir())


@pytest.mark.parametrize("launch", [["--multi_gpu", "--num_processes", "2"],
                                    ["--config_file", str(ROOT / "conf" / "accelerate" / "fsdp.yaml")]],
                         ids=["ddp", "fsdp"])
def test_accelerate_launch_with_two_processes_makes_one_run(launch, data_root, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (DDP over gloo on this CPU) and the FSDP2 config file: one
    run folder, one leaderboard row, every rank holding the same weights, only rank 0 printing; the saved model is
    whole (every rank took part in gathering it) and reloads as a transformers model."""
    out = run_suite(*TINY, "trainer.save_every=2", f"data.root={data_root}", cwd=tmp_path, env=ONE_THREAD,
                    launcher=[*ACCELERATE, *launch], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = runs_in(tmp_path)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert len(saved["param_checksums"]) == 2 and len(set(saved["param_checksums"])) == 1
    assert "x2" in saved["device"]
    db = sqlite3.connect(tmp_path / "outputs" / "leaderboard.db")
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    printed = out.stdout + out.stderr
    assert printed.count("run folder ") == 1 and printed.count("step 3: val accuracy") == 1
    from transformers import AutoModelForSequenceClassification

    import core  # noqa: F401  (registers the suite's models with the Auto classes)

    model = AutoModelForSequenceClassification.from_pretrained(run_dir)
    assert sum(p.numel() for p in model.parameters()) == saved["params"]


def test_the_launchers_precision_is_followed_and_a_conflict_refused(data_root, tmp_path):
    assert resolve_precision("auto", use_cpu=True, launcher="bf16") == "bf16"
    assert resolve_precision("auto", use_cpu=True, launcher=None) in ("bf16", "no")
    assert resolve_precision("no", use_cpu=True, launcher="no") == "no"
    with pytest.raises(UserError, match="contradicts accelerate launch --mixed_precision bf16"):
        resolve_precision("no", use_cpu=True, launcher="bf16")
    # accelerate launch --mixed_precision X reaches the run as ACCELERATE_MIXED_PRECISION
    out = run_suite(*TINY, f"data.root={data_root}", "trainer.mixed_precision=no", cwd=tmp_path,
                    env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert out.returncode == 2 and "contradicts accelerate launch --mixed_precision bf16" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "outputs" / "runs").exists()
    out = run_suite(*TINY, f"data.root={data_root}", cwd=tmp_path, env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(precision bf16," in out.stdout + out.stderr


def test_trackers_get_the_hyperparameters_and_the_curves(data_root, tmp_path):
    """tensorboard (the default) and trackio (offline, a local SQLite store): the resolved config goes in as
    hyperparameters, the training loss and the validation metrics as curves."""
    pytest.importorskip("trackio", reason="trackio is in the dev extra: pip install -e '.[dev]'")
    out = run_suite(*TINY, f"data.root={data_root}", "trainer.log_with=[tensorboard,trackio]", cwd=tmp_path,
                    env={"TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = runs_in(tmp_path)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run_dir / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"train/loss", "val/accuracy"} <= set(events.Tags()["scalars"])
    hparams = list((run_dir / "logs").rglob("events.out.tfevents.*"))
    assert any(b"trainer.lr" in p.read_bytes() for p in hparams)  # the hyperparameters, flattened
    stores = list((tmp_path / "trackio").rglob("*.db"))
    assert stores, "trackio wrote nothing"
    rows = [r for db in stores for r in sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE type='table'")]
    assert rows


def test_main_returns_the_best_validation_value_for_a_sweeper(data_root, tmp_path):
    """What Hydra's optimising sweepers (Optuna, Nevergrad, Ax) read: main()'s return value, the best validation
    value of the headline metric, which is also in metrics.json."""
    out = run_suite(*TINY, f"data.root={data_root}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = runs_in(tmp_path)
    best = json.loads((run_dir / "metrics.json").read_text())["best_validation"]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert best == max(h["val/accuracy"] for h in history)
    assert f"objective: best validation accuracy = {best} (higher is better)" in out.stdout + out.stderr


def test_the_python_api_trains_loads_predicts_and_reads_the_leaderboard(tmp_path, monkeypatch):
    write_sst2(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    from core import api

    result = api.train("sentiment", *TINY[1:], f"data.root={tmp_path / 'data'}", "trainer.log_with=[]")
    run_dir = Path(result["run_dir"])
    assert (run_dir / "model.safetensors").is_file() and result["steps"] == 6
    lines = api.predict(run_dir, ["a good fun film", "a dull bland film"])
    assert len(lines) == 2 and all(line.split("\t")[0] in ("negative", "positive") for line in lines)
    task, model = api.load(run_dir)
    assert task.config.name == "sentiment" and type(model).__name__ == "SuiteForSequenceClassification"
    frame = api.leaderboard()
    assert list(frame["run_id"]) == [result["run_id"]] and frame.loc[0, "accuracy"] == result["metrics"]["accuracy"]


def test_help_lists_the_modes_tasks_and_variants(tmp_path):
    out = run_suite("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    for word in ("train", "predict", "attention", "leaderboard", "record", "accelerate launch"):
        assert word in out.stdout, word
    tasks = {p.stem for p in (ROOT / "conf" / "task").glob("*.yaml")}
    variants = {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")}
    listed = out.stdout[out.stdout.index("task:"):]
    assert all(t in listed for t in tasks) and all(v in out.stdout for v in variants)
