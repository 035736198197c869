"""Speaker identification, the eighth task made of shared parts: run.py end to end on a tiny dataset of FSDD's shape
(recordings/{digit}_{speaker}_{index}.wav, metadata.csv with FSDD's columns, recordings 0-4 for test) written here,
predict, the attention picture, and the run folder through transformers' Auto classes and audio pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.io import wavfile

from core.task import available_tasks, load_run
from tests.conftest import ROOT, run_suite

SPEAKERS = {"ann": 180.0, "bob": 420.0, "cyd": 950.0}  # each voice its own pitch
RATE = 8000


def voice(speaker: str, digit: int, index: int) -> np.ndarray:
    """A "digit" as a voiced sound at the speaker's pitch (three harmonics), its length and envelope from the digit."""
    rng = np.random.default_rng(1000 * digit + index + 7 * len(speaker) + int(SPEAKERS[speaker]))
    t = np.arange(int((0.25 + 0.08 * digit + 0.02 * rng.random()) * RATE)) / RATE
    f0 = SPEAKERS[speaker] * (1 + 0.02 * rng.normal())
    wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3)) * np.hanning(len(t)) ** (1 + digit)
    return (0.25 * wave + 0.005 * rng.normal(size=len(t))).astype(np.float32)


def write_fsdd_like(root: Path, digits=(0, 1), indices=range(10)) -> Path:
    """<root>/fsdd/: 3 speakers x 2 digits x 10 recordings (60 clips; 0-4 of each are the test split)."""
    folder = root / "fsdd"
    (folder / "recordings").mkdir(parents=True)
    rows = ["file_name,text,split,label,speaker,index,num_samples,sample_rate"]
    for speaker in SPEAKERS:
        for d in digits:
            for i in indices:
                wave = voice(speaker, d, i)
                name = f"recordings/{d}_{speaker}_{i}.wav"
                wavfile.write(folder / name, RATE, (wave * 32767).astype(np.int16))
                rows.append(f"{name},{['zero', 'one'][d]},{'test' if i < 5 else 'train'},{d},{speaker},{i},"
                            f"{len(wave)},{RATE}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny speaker_id model trained through run.py with the task's default hold-out: (run folder, work folder)."""
    cwd = tmp_path_factory.mktemp("speaker_id")
    write_fsdd_like(cwd / "data")
    args = ["task=speaker_id", "model=tiny", "model.d_model=64", "model.d_ff=128", f"data.root={cwd / 'data'}",
            "task.stem_channels=8", "trainer.batch_size=8", "trainer.lr=3e-3", "trainer.warmup_steps=10",
            "trainer.max_minutes=0", "trainer.max_steps=60", "trainer.eval_every=30", "trainer.log_every=10"]
    out = run_suite(*args, cwd=cwd, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3 speakers; train 24, validation 6, test 30" in out.stdout + out.stderr  # a fifth of 30 held out
    (run_dir,) = (cwd / "outputs" / "runs").glob("*")
    return run_dir, cwd


def test_the_task_is_one_small_file_in_the_sweep():
    assert "speaker_id" in available_tasks()  # what `run.py -m 'task=glob(*)'` runs
    assert len((ROOT / "tasks" / "speaker_id.py").read_text().splitlines()) <= 120
    refs = OmegaConf.load(ROOT / "conf" / "leaderboard" / "default.yaml").references
    assert refs.speaker_id.fsdd.metric == "accuracy" and refs.asr.fsdd.metric == "word_wer"  # one dataset, two tasks


def test_train_predict_and_draw_through_run_py(trained_run):
    run_dir, cwd = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert {"accuracy", "macro_f1", "acc_ann", "acc_bob", "acc_cyd"} <= set(metrics)
    assert metrics["accuracy"] >= 0.9, metrics  # three pitches: quickly told apart
    config = json.loads((run_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "ann", "1": "bob", "2": "cyd"}
    assert (run_dir / "preprocessor_config.json").is_file() and not (run_dir / "labels.json").exists()

    clip = cwd / "bob16k.wav"  # another rate than training
    t = np.arange(int(0.4 * 16000)) / 16000
    wave = sum(np.sin(2 * np.pi * k * 420 * t) / k for k in (1, 2, 3)) * np.hanning(len(t))
    wavfile.write(clip, 16000, (0.25 * wave * 32767).astype(np.int16))
    out = run_suite("task=speaker_id", "mode=predict", f"run_dir={run_dir}", f"audio={clip}", cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    label, prob, path = out.stdout.strip().split("\t")
    assert label == "bob" and 0 < float(prob) <= 1 and path == str(clip)

    listing = cwd / "clips.txt"
    test_file = cwd / "data" / "fsdd" / "recordings" / "1_cyd_0.wav"
    listing.write_text(f"{clip}\tbob\n{cwd / 'missing.wav'}\tann\n{test_file}\tcyd\n")
    out = run_suite("task=speaker_id", "mode=predict", f"run_dir={run_dir}", f"input={listing}", cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert "missing.wav" in out.stderr and len(lines) == 3
    assert lines[1].startswith("cyd\t") and lines[2] == "accuracy 1.0000 over 2 file(s) with a speaker"

    out = run_suite("mode=attention", f"run_dir={run_dir}", f"out={cwd / 'speaker.png'}", cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (cwd / "speaker.png").stat().st_size > 10_000


def test_run_folder_is_a_transformers_audio_classifier(trained_run):
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline

    from core.heads import SuiteForAudioClassification

    run_dir, cwd = trained_run
    task, model = load_run(run_dir)
    waves = [voice("ann", 1, 3), voice("cyd", 0, 2)]
    auto = AutoModelForAudioClassification.from_pretrained(run_dir).eval()
    extractor = AutoFeatureExtractor.from_pretrained(run_dir, trust_remote_code=True)
    assert isinstance(auto, SuiteForAudioClassification)
    enc = extractor(waves, sampling_rate=RATE, return_tensors="pt")
    with torch.no_grad():
        expected = model(**task.extractor(waves, return_tensors="pt")).logits
        assert torch.equal(auto(**enc).logits, expected)  # the training statistics travelled with the model
    classify = pipeline("audio-classification", model=str(run_dir), trust_remote_code=True)
    for wave, logits in zip(waves, expected):
        best = classify({"raw": wave, "sampling_rate": RATE}, top_k=1)[0]
        conf, i = logits.softmax(-1).max(-1)
        assert best["label"] == auto.config.id2label[int(i)] and best["score"] == pytest.approx(float(conf), abs=1e-6)
