"""`python run.py ...` end to end on a tiny SST-2-shaped dataset, as a user would run it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, killed_and_resumed, run_suite, text_logits_without_suite, write_sst2

TINY = ["task=sentiment", "model=tiny", "task.vocab_size=200", "trainer.batch_size=16", "trainer.lr=1e-3",
        "trainer.warmup_steps=10", "trainer.max_minutes=0", "trainer.log_every=5"]


def runs_in(workdir: Path) -> list[Path]:
    return sorted((workdir / "outputs" / "runs").glob("*")) if (workdir / "outputs" / "runs").exists() else []


def leaderboard_json(workdir: Path) -> list[dict]:
    out = run_suite("mode=leaderboard", "leaderboard.format=json", cwd=workdir)  # per-run rows by default
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """One tiny training run shared by the tests that read its results."""
    workdir = tmp_path_factory.mktemp("work")
    out = run_suite(*TINY, "trainer.max_steps=60", "trainer.eval_every=20", f"data.root={data_root}", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = runs_in(workdir)
    return workdir, run_dir, out


def test_training_saves_a_complete_run(trained):
    _, run_dir, out = trained
    for name in ("config.yaml", "config.json", "model.safetensors", "tokenizer.json", "metrics.json",
                 "history.jsonl", "train.log"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "last").is_dir()
    assert list((run_dir / "logs").rglob("events.out.tfevents.*"))
    assert "accuracy" in (run_dir / "README.md").read_text()  # the model card
    assert "test accuracy" in out.stdout and str(run_dir) in out.stdout
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [20, 40, 60]


def test_tiny_model_learns_the_task(trained):
    _, run_dir, _ = trained
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] >= 0.9, metrics  # the synthetic sentences carry two sentiment words each


def test_leaderboard_json_has_the_stable_keys(trained):
    workdir, run_dir, _ = trained
    (row,) = leaderboard_json(workdir)
    for key in ("run_id", "task", "dataset", "model", "metrics", "params", "train_seconds", "samples_per_second",
                "device", "seed"):
        assert key in row, key
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert row["task"] == "sentiment" and row["model"] == "tiny" and row["dataset"] == "sst2"
    assert row["metrics"] == saved["metrics"]
    assert set(row["metrics"]) == {"accuracy", "macro_f1", "acc_negative", "acc_positive"}
    assert row["params"] > 0 and row["samples_per_second"] > 0 and row["seed"] == 0
    assert row["steps"] == saved["steps"] == 60 and row["best_step"] == saved["best_step"]
    table = run_suite("mode=leaderboard", "leaderboard.view=runs", cwd=workdir)
    assert row["run_id"] in table.stdout and "accuracy=" in table.stdout
    assert row["run_id"] in (workdir / "outputs" / "leaderboard.md").read_text()
    suite = run_suite("mode=leaderboard", cwd=workdir)  # the default view: one row per model variant
    assert suite.stdout.startswith("model") and "tiny" in suite.stdout and "accuracy" in suite.stdout


def test_predict_text_and_file(trained, tmp_path):
    workdir, run_dir, _ = trained
    out = run_suite("mode=predict", f"run_dir={run_dir}", "text=a great and charming film", cwd=workdir)
    assert out.returncode == 0, out.stderr
    label, prob, text = out.stdout.strip().split("\t")
    assert label == "positive" and 0.5 <= float(prob) <= 1.0 and text == "a great and charming film"
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("a dull and boring story\n\nthe movie was lovely\n")
    out = run_suite("mode=predict", f"run_dir={run_dir}", f"input={inputs}", cwd=workdir)
    lines = out.stdout.rstrip("\n").split("\n")
    assert len(lines) == 3 and lines[0].startswith("negative") and "(empty input)" in lines[1]
    assert lines[2].startswith("positive")


TEXTS = ["a great and charming film", "a dull and boring story", "the plot was quite moving and superb"]


def test_a_run_folder_is_a_transformers_model(trained, tmp_path):
    """Auto classes, save_pretrained and the text-classification pipeline open a run folder once `core` is imported,
    and agree with mode=predict."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    import core  # noqa: F401  (registers the suite's classes with transformers)

    workdir, run_dir, _ = trained
    model = AutoModelForSequenceClassification.from_pretrained(run_dir).eval()
    enc = AutoTokenizer.from_pretrained(run_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    model.save_pretrained(tmp_path / "copy")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "copy").eval()
    with torch.no_grad():
        assert torch.equal(again(**enc).logits, logits)

    results = pipeline("text-classification", model=str(run_dir))(TEXTS)
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("\n".join(TEXTS) + "\n")
    out = run_suite("mode=predict", f"run_dir={run_dir}", f"input={inputs}", cwd=workdir)
    assert out.returncode == 0, out.stderr
    probs = logits.softmax(-1)
    for line, result, p in zip(out.stdout.splitlines(), results, probs):
        label, prob, _ = line.split("\t")
        assert result["label"] == label == model.config.id2label[int(p.argmax())]
        assert abs(result["score"] - p.max().item()) < 1e-6 and abs(float(prob) - result["score"]) <= 5e-4


def test_a_run_folder_loads_where_the_suite_is_not_installed(trained, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import core  # noqa: F401

    _, run_dir, _ = trained
    folder = tmp_path / "shared_model"
    shutil.copytree(run_dir, folder, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    enc = AutoTokenizer.from_pretrained(run_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = AutoModelForSequenceClassification.from_pretrained(run_dir).eval()(**enc).logits
    lines = text_logits_without_suite(folder, "AutoModelForSequenceClassification", TEXTS, tmp_path)
    module, logits = lines[0].split(" ", 1)
    assert module.startswith("transformers_modules.")  # the folder's own copy of the modeling code
    torch.testing.assert_close(torch.tensor(json.loads(logits)), expected, atol=1e-5, rtol=1e-5)


def test_a_broken_config_json_is_one_line(trained, tmp_path):
    workdir, run_dir, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    (broken / "config.json").write_text("{not json")
    out = run_suite("mode=predict", f"run_dir={broken}", "text=fine", cwd=workdir)
    assert out.returncode == 2 and "config.json" in out.stderr and "Traceback" not in out.stderr
    (broken / "config.json").unlink()
    out = run_suite("mode=predict", f"run_dir={broken}", "text=fine", cwd=workdir)
    assert out.returncode == 2 and "config.json" in out.stderr and "Traceback" not in out.stderr


def test_a_distilled_run_names_its_teachers_and_predicts(trained, data_root, tmp_path):
    _, teacher, _ = trained
    out = run_suite(*TINY, "trainer.max_steps=20", f"data.root={data_root}", f"task.teachers=[{teacher}]",
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "distilling from 1 teacher(s)" in out.stdout + out.stderr
    (row,) = leaderboard_json(tmp_path)
    assert row["model"] == "tiny+teachers=1"  # not merged with the plain runs of the same model
    out = run_suite("mode=predict", f"run_dir={row['run_dir']}", "text=a lovely film", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.count("\t") == 2, out.stderr


def test_predict_refuses_corrupt_or_foreign_runs(trained, tmp_path):
    workdir, run_dir, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes()[:1000])
    out = run_suite("mode=predict", f"run_dir={broken}", "text=fine", cwd=workdir)
    assert out.returncode == 2 and "corrupt" in out.stderr
    assert (run_dir / "model.safetensors").stat().st_size > 1000  # the original is untouched
    out = run_suite("mode=predict", f"run_dir={tmp_path / 'no_run'}", "text=fine", cwd=workdir)
    assert out.returncode == 2 and "not a saved run" in out.stderr and not (tmp_path / "no_run").exists()


def test_resume_continues_from_the_last_checkpoint(data_root, tmp_path):
    first = run_suite(*TINY, "trainer.max_steps=20", "trainer.eval_every=10", f"data.root={data_root}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir,) = runs_in(tmp_path)
    second = run_suite(*TINY, "trainer.max_steps=30", "trainer.eval_every=10", "trainer.resume=true",
                       f"run_dir={run_dir}", f"data.root={data_root}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from" in second.stdout + second.stderr and "at step 20" in second.stdout + second.stderr
    steps = [json.loads(line)["step"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]
    assert len(runs_in(tmp_path)) == 1
    (row,) = leaderboard_json(tmp_path)  # trained further, the run replaces its row rather than adding a second one
    assert row["steps"] == 30


def test_time_budget_stops_training_and_still_records(data_root, tmp_path):
    out = run_suite(*TINY, "trainer.max_steps=100000", "trainer.max_minutes=0.003", f"data.root={data_root}",
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = leaderboard_json(tmp_path)
    assert row["train_seconds"] < 30 and "accuracy" in row["metrics"]


@pytest.mark.parametrize("override, expected", [
    ("trainer.lr=fast", "trainer.lr"),
    ("model.n_heads=3", "divisible"),
    ("trainer.mixed_precision=fp8", "mixed_precision"),
    ("data.root=/nowhere", "/nowhere/sst2 not found"),
])
def test_bad_input_is_one_clear_line_and_leaves_nothing(data_root, tmp_path, override, expected):
    args = [a for a in TINY if not a.startswith(override.split("=")[0] + "=")]
    out = run_suite(*args, f"data.root={data_root}", override, cwd=tmp_path)
    assert out.returncode == 2
    assert expected in out.stderr and "Traceback" not in out.stderr
    assert runs_in(tmp_path) == [] and not (tmp_path / "outputs" / "leaderboard.db").exists()


def test_unknown_task_lists_the_tasks(tmp_path):
    out = run_suite("task=sentimnt", cwd=tmp_path)
    assert out.returncode != 0 and "sentiment" in out.stderr and "sentimnt" in out.stderr


def test_empty_rows_are_skipped_and_counted(tmp_path):
    folder = write_sst2(tmp_path / "data")
    with open(folder / "train.jsonl", "a") as f:
        f.write(json.dumps({"id": 998, "text": "", "label": 0}) + "\n")
        f.write(json.dumps({"id": 999, "text": "   ", "label": 1}) + "\n")
    out = run_suite(*TINY, "trainer.max_steps=2", f"data.root={tmp_path / 'data'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skipped 2 train rows with empty text" in out.stdout + out.stderr


def test_print_config_and_multirun(data_root, tmp_path):
    out = run_suite("task=sentiment", "model=tiny", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0 and "d_model: 128" in out.stdout and "max_minutes: 15" in out.stdout
    out = run_suite("-m", *TINY, "trainer.max_steps=2", "model.dropout=0.1,0", f"data.root={data_root}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    # a swept model field names its variants apart, so the leaderboard compares rather than merges them
    assert sorted(r["model"] for r in leaderboard_json(tmp_path)) == ["tiny+dropout=0", "tiny+dropout=0.1"]


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, data_root):
    """Seeds launched side by side by a script: each run must keep its own folder, weights and metrics."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SUITE_DATA": "", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(ROOT / "run.py"), *TINY, "trainer.max_steps=4", f"data.root={data_root}"]
    jobs = [subprocess.Popen([*args, f"trainer.seed={seed}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.stderr.read()[-3000:]
    folders = runs_in(tmp_path)
    assert len(folders) == 2
    assert sorted(json.loads((f / "metrics.json").read_text())["seed"] for f in folders) == [1, 2]


def test_a_run_killed_at_any_moment_resumes_to_the_same_weights(data_root, tmp_path):
    """kill -9 in the middle of training (after a periodic checkpoint, between validations), then
    trainer.resume=true: the same final weights (parameter checksum) and test metrics as the uninterrupted run."""
    whole, again = killed_and_resumed([*TINY, "trainer.max_steps=48", "trainer.eval_every=16", "trainer.save_every=6",
                                       "trainer.log_every=1", "model.dropout=0.1", "task.token_dropout=0.2",
                                       f"data.root={data_root}"], tmp_path, kill_after_step=24)
    assert again["param_checksums"] == whole["param_checksums"] and again["metrics"] == whole["metrics"]
    assert again["best_step"] == whole["best_step"] and again["steps"] == whole["steps"] == 48


def test_a_run_folder_is_never_overwritten(trained, data_root, tmp_path):
    workdir, run_dir, _ = trained
    before = (run_dir / "model.safetensors").read_bytes()
    out = run_suite(*TINY, "trainer.max_steps=2", f"data.root={data_root}", f"run_dir={run_dir}", cwd=workdir)
    assert out.returncode == 2 and "already holds a finished run" in out.stderr and "Traceback" not in out.stderr
    out = run_suite(*TINY, "trainer.max_steps=60", f"data.root={data_root}", f"run_dir={run_dir}",
                    "trainer.resume=true", cwd=workdir)
    assert out.returncode == 2 and "is finished with these settings" in out.stderr
    out = run_suite("task=forecasting", f"run_dir={run_dir}", "trainer.resume=true", cwd=workdir)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert (run_dir / "model.safetensors").read_bytes() == before and (run_dir / "config.yaml").is_file()
    assert "sentiment" in (run_dir / "config.yaml").read_text()
    new = tmp_path / "never_started"
    out = run_suite(*TINY, f"data.root={data_root}", f"run_dir={new}", "trainer.resume=true", cwd=workdir)
    assert out.returncode == 2 and "holds no checkpoint" in out.stderr and not new.exists()
