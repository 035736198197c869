"""Speech recognition: the feature pipeline, CTC decoding and learning, bad audio, and run.py end to end on an
audiofolder of synthesised "speech" (each letter a tone of its own pitch) written here."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.io import wavfile

from core.transformer import TransformerConfig
from tasks.asr import ConvSubsampling, CTCRecognizer, Features, Task, greedy_decode, join
from tests.conftest import ROOT, run_suite

WORDS = ["one", "two", "six", "ten", "nine"]
LETTERS = "einostwx"
FEATURES = {"sample_rate": 8000, "n_mels": 40, "win_ms": 25, "hop_ms": 10}


def tone_word(word: str, rate: int, speaker: int = 0, seed: int = 0) -> np.ndarray:
    """A word as one 80 ms tone per letter (pitch from the letter, shifted a little per speaker) with 20 ms gaps."""
    word = word.lower()
    rng = np.random.default_rng(seed)
    parts = []
    for ch in word:
        t = np.arange(int(0.08 * rate)) / rate
        freq = 300 + 400 * LETTERS.index(ch) + 15 * speaker  # 400 Hz apart: a few mel bins between letters
        parts += [0.3 * np.sin(2 * np.pi * freq * t) * np.hanning(len(t)), np.zeros(int(0.02 * rate))]
    wave = np.concatenate(parts)
    return (wave + 0.003 * rng.normal(size=len(wave))).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    wavfile.write(path, rate, (wave * 32767).astype(np.int16))
    return path


def write_audiofolder(root: Path, per_word: int = 8) -> Path:
    """<root>/digits/: recordings/*.wav and metadata.csv with FSDD's columns; one corrupt and one empty file."""
    folder = root / "digits"
    rows = ["file_name,text,split,speaker"]
    for w, word in enumerate(WORDS):
        for i in range(per_word):
            speaker = i % 2
            name = f"recordings/{word}_{speaker}_{i}.wav"
            write_wav(folder / name, tone_word(word, 8000, speaker, seed=100 * w + i), 8000)
            text = word.upper() if (word, i) == ("six", 0) else word  # capitals: letters outside the vocabulary
            rows.append(f"{name},{text},{'test' if i < 2 else 'train'},s{speaker}")
    (folder / "recordings/corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    write_wav(folder / "recordings/empty.wav", np.zeros(0, np.float32), 8000)
    rows += ["recordings/corrupt.wav,one,train,s0", "recordings/empty.wav,two,train,s1"]
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory) -> Path:
    return write_audiofolder(tmp_path_factory.mktemp("audio"))


def asr_task(*overrides: str) -> Task:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return Task(compose("config", overrides=["task=asr", "model=tiny", *overrides]))


def test_features_are_deterministic_without_augmentation(audio_root, tmp_path):
    overrides = [f"data.root={audio_root}", "data.dir=digits", "task.val_size=6", "task.connected.train=4",
                 "task.connected.validation=3", "task.connected.test=3"]
    first, second = asr_task(*overrides), asr_task(*overrides, "trainer.seed=7")
    first.prepare(tmp_path, is_main=True)
    second.prepare(tmp_path, is_main=True)
    for split in ("validation", "test"):  # fixed sets: the same features and transcripts in every run
        a, b = first.sets[split], second.sets[split]
        assert len(a) == len(b) > 0
        for i in range(len(a)):
            assert torch.equal(a[i]["features"], b[i]["features"]) and torch.equal(a[i]["targets"], b[i]["targets"])
    wave = torch.from_numpy(tone_word("six", 8000))
    assert torch.equal(first.feats(wave), first.feats(wave))
    train = first.sets["train"]  # SpecAugment masks training features only
    row = train[0]
    clip = first.clips["train"][train.plan[0][0][0]]
    plain = first.feats(join([clip.wave], [], 0.1, 8000))
    assert row["features"].shape == plain.shape and not torch.equal(row["features"], plain)
    assert (row["features"] == 0).sum() > (plain == 0).sum()  # masked cells are set to the (normalised) mean
    texts = [first.decode_ids(first.sets["test"][i]["targets"].tolist()) for i in range(len(first.sets["test"]))]
    assert sum(" " in t for t in texts) == 3 and all(t.replace(" ", "") for t in texts)  # 3 connected strings


def test_greedy_ctc_decoding_on_hand_made_logits():
    # frames: blank a a blank a b b blank | c (a padded frame beyond the length must be ignored)
    path = [0, 1, 1, 0, 1, 2, 2, 0, 3]
    logits = torch.full((1, len(path), 4), -5.0)
    logits[0, torch.arange(len(path)), torch.tensor(path)] = 5.0
    assert greedy_decode(logits.log_softmax(-1), torch.tensor([8])) == [[1, 1, 2]]
    assert greedy_decode(logits.log_softmax(-1), torch.tensor([9])) == [[1, 1, 2, 3]]
    assert greedy_decode(torch.zeros(2, 3, 4).log_softmax(-1), torch.tensor([3, 0])) == [[], []]  # ties: blank


def test_16_and_8_khz_files_give_the_same_frame_rate(tmp_path):
    from tasks.asr import read_audio

    feats = Features(yaml_node(FEATURES))
    wide = read_audio(str(write_wav(tmp_path / "16k.wav", tone_word("nine", 16000), 16000)), 8000)
    narrow = read_audio(str(write_wav(tmp_path / "8k.wav", tone_word("nine", 8000), 8000)), 8000)
    assert abs(len(wide) - len(narrow)) <= 1
    a, b = feats(wide), feats(narrow)
    assert a.shape == b.shape and a.shape[1] == 40
    assert a.shape[0] == pytest.approx(len(narrow) / 80, abs=1.5)  # 100 frames a second at any input rate
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.85  # and the same content


def test_short_clips_are_padded_to_the_stem_receptive_field():
    feats = Features(yaml_node(FEATURES))
    frames = feats(torch.rand(20) - 0.5)  # 2.5 ms of audio
    assert len(frames) >= ConvSubsampling.receptive_field
    assert ConvSubsampling.lengths(torch.tensor(len(frames))) >= 1


def test_tiny_model_overfits_three_utterances(one_thread):
    torch.manual_seed(0)
    feats = Features(yaml_node(FEATURES))
    vocab = ["<blank>", "?", " ", *sorted(set("onetwosixnine"))]
    texts = ["one two", "six", "nine one"]
    waves = [join([torch.from_numpy(tone_word(w, 8000, seed=i)) for w in t.split()], [0.1], 0.1, 8000)
             for i, t in enumerate(texts)]
    feats.fit(waves)
    x = [feats(w) for w in waves]
    batch = {"features": torch.nn.utils.rnn.pad_sequence(x, batch_first=True),
             "feature_lengths": torch.tensor([len(f) for f in x]),
             "targets": torch.nn.utils.rnn.pad_sequence([torch.tensor([vocab.index(c) for c in t]) for t in texts],
                                                        batch_first=True),
             "target_lengths": torch.tensor([len(t) for t in texts])}
    cfg = TransformerConfig(d_model=64, n_heads=2, d_ff=128, n_layers=2, dropout=0.0)
    model = CTCRecognizer(cfg, 40, 8, len(vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(**batch)["loss"].item()
    for _ in range(150):
        loss = model(**batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out = model(features=batch["features"], feature_lengths=batch["feature_lengths"])
    hyps = ["".join(vocab[i] for i in ids) for ids in greedy_decode(out["log_probs"], out["lengths"])]
    assert hyps == texts, (hyps, first, loss.item())  # CER 0



def yaml_node(d: dict):
    from omegaconf import OmegaConf

    return OmegaConf.create(d)


def test_bad_audio_is_skipped_and_unknown_characters_reported(audio_root, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    task = asr_task(f"data.root={audio_root}", "data.dir=digits", "task.val_size=6", "task.lowercase=false")
    task.prepare(tmp_path, is_main=True)
    assert "corrupt.wav" in caplog.text and "empty.wav" in caplog.text and "skipped" in caplog.text
    assert sum(len(c) for c in task.clips.values()) == len(WORDS) * 8  # every good file kept, the bad two skipped
    # the test transcript "SIX" (kept in capitals here) has letters no training transcript has: scored as unknown
    assert "test transcripts hold characters outside the training vocabulary (ISX)" in caplog.text
    assert task.encode("oNe") == [task.vocab.index("o"), 1, task.vocab.index("e")]
    assert task.sets["test"][[c.text for c in task.clips["test"]].index("SIX")]["targets"].tolist() == [1, 1, 1]


def test_train_and_predict_through_run_py(audio_root, tmp_path):
    args = ["task=asr", "model=tiny", "model.d_model=64", "model.d_ff=128", "model.dropout=0", "task.stem_channels=8",
            f"data.root={audio_root}", "data.dir=digits", "task.val_size=6", "task.connected.train=32",
            "task.connected.validation=4", "task.connected.test=6", "trainer.batch_size=8", "trainer.lr=3e-3",
            "trainer.warmup_steps=20", "trainer.max_minutes=0", "trainer.max_steps=150", "trainer.eval_every=150",
            "trainer.log_every=20", "task.augment.n_freq_masks=0", "task.augment.n_time_masks=0"]  # masks erase tones
    out = run_suite(*args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped unreadable audio" in out.stdout + out.stderr and "corrupt.wav" in out.stdout + out.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").glob("*")
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"wer", "cer", "word_wer", "word_cer"}
    assert metrics["word_wer"] <= 0.2 and metrics["cer"] <= 0.3, metrics  # letters are distinct tones: quickly learnt

    clip = write_wav(tmp_path / "six16k.wav", tone_word("six", 16000, seed=5), 16000)  # another rate than training
    out = run_suite("task=asr", "mode=predict", f"run_dir={run_dir}", f"audio={clip}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines() == ["six"]  # resampled from 16 kHz, it reads as the 8 kHz training did

    listing = tmp_path / "clips.txt"
    listing.write_text(f"{clip}\tsix\n{tmp_path / 'missing.wav'}\n{clip}\tsïx\n")
    out = run_suite("task=asr", "mode=predict", f"run_dir={run_dir}", f"input={listing}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "missing.wav" in text and "outside the model's vocabulary (ï)" in text
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(str(clip)) or ln.startswith("WER")]
    assert len(lines) == 3 and lines[2].startswith("WER") and "over 2 file(s)" in lines[2]

    out = run_suite("task=asr", "mode=predict", f"run_dir={run_dir}", f"audio={audio_root}/digits/recordings/"
                    "corrupt.wav", cwd=tmp_path)
    assert out.returncode == 2 and "none of the audio files could be read" in out.stderr
    assert "Traceback" not in out.stderr
