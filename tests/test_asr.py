"""Speech recognition: the feature pipeline, CTC decoding and learning, bad audio, the relative hold-out, run.py end to
end on an audiofolder of synthesised "speech" (each letter a tone of its own pitch) written here, and the run folder
as a transformers model (Auto classes, the suite-less load, the ASR pipeline)."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.io import wavfile
from transformers import ViTConfig, ViTModel, WhisperConfig, WhisperFeatureExtractor, WhisperModel

import core  # noqa: F401  (registers the suite's models with the Auto classes)
from core.audio import FeatureConfig, feature_extractor, hold_out, read_audio
from core.audio_features import SuiteWhisperFeatureExtractor
from core.checkpoints import CheckpointError
from core.heads import SuiteForCTC
from core.modeling import SuiteConfig
from core.stems import AudioStem
from core.task import UserError, load_run
from tasks.asr import Task, join
from tests.conftest import ROOT, run_suite, run_without_suite
from tests.test_checkpoints import jitter

WORDS = ["one", "two", "six", "ten", "nine"]
LETTERS = "einostwx"
FEATURES = FeatureConfig(sample_rate=8000, n_mels=40, win_ms=25, hop_ms=10)


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
            assert torch.equal(a[i]["input_features"], b[i]["input_features"])
            assert torch.equal(a[i]["labels"], b[i]["labels"])
    wave = torch.from_numpy(tone_word("six", 8000))
    assert torch.equal(first.extractor.features(wave), first.extractor.features(wave))
    train = first.sets["train"]  # SpecAugment masks training features only
    row = train[0]
    clip = first.clips["train"][train.plan[0][0][0]]
    plain = first.extractor.features(join([clip.wave], [], 8000))
    assert row["input_features"].shape == plain.shape and not torch.equal(row["input_features"], plain)
    assert (row["input_features"] == 0).sum() > (plain == 0).sum()  # masked cells are set to the (normalised) mean
    texts = [first.tokenizer.decode(first.sets["test"][i]["labels"].tolist(), group_tokens=False)
             for i in range(len(first.sets["test"]))]
    assert sum(" " in t for t in texts) == 3 and all(t.replace(" ", "") for t in texts)  # 3 connected strings


def test_greedy_ctc_decoding_on_hand_made_logits(audio_root, tmp_path):
    task = asr_task(f"data.root={audio_root}", "data.dir=digits", "task.val_size=6")
    task.prepare(tmp_path, is_main=True)
    blank, a, b, c = (task.tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "o", "n", "e"))
    assert blank == task.tokenizer.pad_token_id == 0
    # frames: blank a a blank a b b blank | c (a padded frame beyond the length must be ignored)
    path = [blank, a, a, blank, a, b, b, blank, c]
    logits = torch.full((1, len(path), len(task.tokenizer)), -5.0)
    logits[0, torch.arange(len(path)), torch.tensor(path)] = 5.0
    assert task.transcripts(logits, torch.tensor([8])) == ["oon"]
    assert task.transcripts(logits, torch.tensor([9])) == ["oone"]
    assert task.transcripts(torch.zeros(2, 3, len(task.tokenizer)), torch.tensor([3, 0])) == ["", ""]  # ties: blank


def test_16_and_8_khz_files_give_the_same_frame_rate(tmp_path):
    feats = feature_extractor(FEATURES)
    wide = read_audio(str(write_wav(tmp_path / "16k.wav", tone_word("nine", 16000), 16000)), 8000)
    narrow = read_audio(str(write_wav(tmp_path / "8k.wav", tone_word("nine", 8000), 8000)), 8000)
    assert abs(len(wide) - len(narrow)) <= 1
    a, b = feats.features(wide), feats.features(narrow)
    assert a.shape == b.shape and a.shape[1] == 40
    assert a.shape[0] == pytest.approx(len(narrow) / 80, abs=1.5)  # 100 frames a second at any input rate
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.85  # and the same content
    # the extractor's own resampling (the pipelines' input) gives the same frames as the suite's file reading
    both = feats([tone_word("nine", 16000), tone_word("six", 8000)[::2]], sampling_rate=16000, return_tensors="pt")
    assert both["input_features"].shape[:2] == both["attention_mask"].shape and both["attention_mask"][0].all()
    assert both["attention_mask"][1].sum() < both["attention_mask"][0].sum()  # the shorter one is padded


def test_short_clips_are_padded_to_the_stem_receptive_field():
    feats = feature_extractor(FEATURES)
    frames = feats.features(torch.rand(20) - 0.5)  # 2.5 ms of audio
    assert len(frames) >= AudioStem.receptive_field
    stem = AudioStem(SuiteConfig(stem="audio", d_model=16, n_mels=40, stem_channels=4))
    assert stem.lengths(torch.tensor(len(frames))) >= 1


def test_tiny_model_overfits_three_utterances(one_thread, audio_root, tmp_path):
    torch.manual_seed(0)
    task = asr_task(f"data.root={audio_root}", "data.dir=digits", "task.val_size=6")
    task.prepare(tmp_path, is_main=True)
    texts = ["one two", "six", "nine one"]
    waves = [join([torch.from_numpy(tone_word(w, 8000, seed=i)) for w in t.split()], [0.1], 8000)
             for i, t in enumerate(texts)]
    batch = task.extractor(waves, return_tensors="pt")
    labels = [torch.tensor(task.tokenizer(t).input_ids) for t in texts]
    batch["labels"] = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
    model = SuiteForCTC(SuiteConfig(d_model=64, n_heads=2, d_ff=128, n_layers=2, dropout=0.0, stem="audio",
                                    n_mels=40, stem_channels=8, vocab_size=len(task.tokenizer), pad_token_id=0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(**batch).loss.item()
    for _ in range(150):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    hyps = task.transcripts(model(**batch).logits, model.output_lengths(batch["attention_mask"]))
    assert hyps == texts, (hyps, first, loss.item())  # CER 0


def test_bad_audio_is_skipped_and_unknown_characters_reported(audio_root, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    task = asr_task(f"data.root={audio_root}", "data.dir=digits", "task.val_size=6", "task.lowercase=false")
    task.prepare(tmp_path, is_main=True)
    assert "corrupt.wav" in caplog.text and "empty.wav" in caplog.text and "skipped" in caplog.text
    assert sum(len(c) for c in task.clips.values()) == len(WORDS) * 8  # every good file kept, the bad two skipped
    # the test transcript "SIX" (kept in capitals here) has letters no training transcript has: scored as unknown
    assert "test transcripts hold characters outside the training vocabulary (ISX)" in caplog.text
    vocab = task.tokenizer.get_vocab()
    assert task.tokenizer("oNe").input_ids == [vocab["o"], 1, vocab["e"]] and task.tokenizer.unk_token_id == 1
    texts = [c.fields["text"] for c in task.clips["test"]]
    assert task.sets["test"][texts.index("SIX")]["labels"].tolist() == [1, 1, 1]


def test_the_validation_hold_out_is_relative_to_the_data(tmp_path):
    write_audiofolder(tmp_path, per_word=12)  # 60 recordings, 50 for training: 300 of them cannot be held out,
    task = asr_task(f"data.root={tmp_path}", "data.dir=digits")  # a fifth of them can (the defaults)
    task.prepare(tmp_path, is_main=True)
    assert len(task.clips["validation"]) == 10 and len(task.clips["train"]) == 40
    assert len(task.sets["validation"]) == 10 + 200  # every held-out word, and the connected strings made of them
    clips = {"train": list(range(4))}  # 4 training recordings: a fifth of them is none
    with pytest.raises(UserError, match="too few to hold out"):
        hold_out(clips, 300, 0.2)
    clips = {"train": list(range(100)), "validation": [0]}  # a validation split of its own is kept as it is
    assert hold_out(clips, 300, 0.2) == clips
    split = hold_out({"train": list(range(100)), "test": [0]}, 300, 0.2)  # a count capped by a fraction
    assert list(split) == ["train", "validation", "test"] and len(split["validation"]) == 20
    assert sorted(split["train"] + split["validation"]) == list(range(100))
    with pytest.raises(UserError, match="task.val_max_fraction=1.5"):
        asr_task("task.val_max_fraction=1.5")


@pytest.fixture(scope="module")
def trained_run(audio_root, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny ASR model trained through run.py on the tone words: (its run folder, the working folder)."""
    cwd = tmp_path_factory.mktemp("asr_run")
    args = ["task=asr", "model=tiny", "model.d_model=64", "model.d_ff=128", "model.dropout=0", "task.stem_channels=8",
            f"data.root={audio_root}", "data.dir=digits", "task.val_size=6", "task.connected.train=32",
            "task.connected.validation=4", "task.connected.test=6", "trainer.batch_size=8", "trainer.lr=3e-3",
            "trainer.warmup_steps=20", "trainer.max_minutes=0", "trainer.max_steps=200", "trainer.eval_every=200",
            "trainer.log_every=20", "task.augment.n_freq_masks=0", "task.augment.n_time_masks=0"]  # masks erase tones
    out = run_suite(*args, cwd=cwd, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipped unreadable audio" in out.stdout + out.stderr and "corrupt.wav" in out.stdout + out.stderr
    (run_dir,) = (cwd / "outputs" / "runs").glob("*")
    return run_dir, cwd


def test_train_and_predict_through_run_py(trained_run, audio_root):
    run_dir, tmp_path = trained_run
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


def test_run_folder_is_a_transformers_ctc_model(trained_run):
    from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer, Wav2Vec2CTCTokenizer

    run_dir, tmp_path = trained_run
    task, model = load_run(run_dir)
    wave = tone_word("six", 8000, seed=5)
    enc = task.extractor([wave, tone_word("one", 8000)], return_tensors="pt")
    auto = AutoModelForCTC.from_pretrained(run_dir).eval()
    extractor = AutoFeatureExtractor.from_pretrained(run_dir, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    assert isinstance(auto, SuiteForCTC) and isinstance(tokenizer, Wav2Vec2CTCTokenizer)
    enc_auto = extractor([wave, tone_word("one", 8000)], sampling_rate=8000, return_tensors="pt")
    assert torch.equal(enc["input_features"], enc_auto["input_features"])  # the training statistics travelled
    with torch.no_grad():
        a, b = model(**enc).logits, auto(**enc_auto).logits
    assert torch.equal(a, b)
    lengths = auto.output_lengths(enc_auto["attention_mask"])
    ids = b.argmax(-1)
    assert [tokenizer.decode(i[:n]) for i, n in zip(ids.tolist(), lengths.tolist())] == task.transcripts(a, lengths)


def test_run_folder_loads_without_the_suite_and_feeds_the_asr_pipeline(trained_run):
    run_dir, tmp_path = trained_run
    copy = tmp_path / "copied_run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    task, model = load_run(run_dir)
    wave = tone_word("six", 16000, seed=5)
    np.save(tmp_path / "wave.npy", wave)
    with torch.no_grad():
        enc = task.extractor(wave, sampling_rate=16000, return_tensors="pt")
        np.save(tmp_path / "logits.npy", model(**enc).logits.numpy())
    code = f"""
import json, numpy as np, torch
from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer, pipeline
wave, expected = np.load("wave.npy"), np.load("logits.npy")
model = AutoModelForCTC.from_pretrained({str(copy)!r}, trust_remote_code=True).eval()
extractor = AutoFeatureExtractor.from_pretrained({str(copy)!r}, trust_remote_code=True)
enc = extractor(wave, sampling_rate=16000, return_tensors="pt")
with torch.no_grad():
    logits = model(**enc).logits.numpy()
assert np.allclose(logits, expected, atol=1e-5), np.abs(logits - expected).max()
text = AutoTokenizer.from_pretrained({str(copy)!r}, trust_remote_code=True).decode(logits[0].argmax(-1))
asr = pipeline("automatic-speech-recognition", model={str(copy)!r}, trust_remote_code=True)
print(json.dumps({{"tokenizer": text, "pipeline": asr({{"raw": wave, "sampling_rate": 16000}})["text"]}}))
"""
    out = run_without_suite(code, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    assert printed == {"tokenizer": "six", "pipeline": "six"}, out.stdout  # what mode=predict prints for this clip


# -- model.pretrained: Whisper's encoder under the CTC head, with Whisper's own log-mel front-end ---------------------


def tiny_whisper_checkpoint(folder: Path, positions: int = 200, processor: bool = True, **extractor) -> Path:
    """A jittered random Whisper (16 mel bins, 32 wide, `positions` encoder positions) saved as a Hub checkpoint,
    with its feature extractor unless `processor` is False: a 4-s window (400 frames, twice the positions, as
    Whisper's 30 s are 2 x 1500) unless `extractor` says otherwise."""
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=50, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16,
                           max_source_positions=positions, max_target_positions=10, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, decoder_start_token_id=0)
    jitter(WhisperModel(config)).save_pretrained(folder)
    if processor:
        WhisperFeatureExtractor(**{"feature_size": 16, "chunk_length": 4, **extractor}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def whisper_checkpoint(tmp_path_factory) -> Path:
    return tiny_whisper_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny_whisper")


PRETRAINED = ["data.dir=digits", "task.val_size=6", "task.connected.max_words=3", "task.connected.train=8",
              "task.connected.validation=2", "task.connected.test=2"]  # strings of <= 3 words: within the 4-s window


def test_a_whisper_checkpoint_brings_its_front_end_and_matches_transformers(audio_root, whisper_checkpoint, tmp_path):
    """Through the task (prepare, build_model): the recordings are read at the checkpoint's 16 kHz, and each
    utterance's features are exactly the frames Whisper's own WhisperFeatureExtractor computes for it in its padded
    window (the utterance with the task's 0.1 s of silence each side), cut to the utterance's frames. The encoder is
    compared where transformers' WhisperEncoder is defined: on that full window (2 x max_source_positions frames,
    unmasked). On an utterance's own frames, what the task trains on, the suite's encoder reads the first T rows of
    the same position table with the batch padding masked; WhisperEncoder refuses such input, so that is not
    compared."""
    task = asr_task(f"data.root={audio_root}", *PRETRAINED, f"model.pretrained={whisper_checkpoint}")
    task.prepare(tmp_path, is_main=True)
    model = task.build_model().eval()
    c = model.config
    assert (c.audio_stem, c.n_mels, c.max_len, c.vocab_size) == ("conv1d", 16, 200, len(task.tokenizer))
    assert isinstance(task.extractor, SuiteWhisperFeatureExtractor) and task.extractor.sampling_rate == 16000
    processor = WhisperFeatureExtractor.from_pretrained(whisper_checkpoint)
    for i in (0, 1):  # single recordings come first in the fixed sets
        wave = torch.nn.functional.pad(task.clips["test"][i].wave, (1600, 1600))  # task.edge_pause=0.1 at 16 kHz
        window = processor(wave.numpy(), sampling_rate=16000, return_tensors="pt")["input_features"]  # (1, 16, 400)
        ours = task.sets["test"][i]["input_features"]  # (T, 16)
        assert len(ours) == -(-len(wave) // 160) and window.shape == (1, 16, 400)
        assert (ours - window[0, :, : len(ours)].T).abs().max().item() <= 1e-6
    noise = torch.randn(12345) * 0.1  # no whole number of hops, and loud to its last sample (no edge pause)
    alone = SuiteWhisperFeatureExtractor.from_pretrained(whisper_checkpoint).features(noise)
    whole = processor(noise.numpy(), sampling_rate=16000, return_tensors="pt")["input_features"][0]
    assert len(alone) == 78 and (alone - whole[:, :78].T).abs().max().item() <= 1e-6
    theirs = WhisperModel.from_pretrained(whisper_checkpoint).encoder.eval()
    with torch.no_grad():
        d = (model.model(input_features=window.transpose(1, 2)).last_hidden_state -
             theirs(window).last_hidden_state).abs().max().item()
    print(f"asr task encoder vs WhisperEncoder on the 4-s window: max |diff| = {d:.2e}")
    assert d <= 1e-5


def test_a_checkpoint_without_a_feature_extractor_takes_whispers_defaults(tmp_path, caplog):
    folder = tiny_whisper_checkpoint(tmp_path / "bare", positions=1500, processor=False)
    extractor = asr_task(f"model.pretrained={folder}").checkpoint_extractor()
    assert "no preprocessor_config.json" in caplog.text
    assert (extractor.feature_size, extractor.sampling_rate, extractor.hop_length, extractor.n_fft,
            extractor.chunk_length) == (16, 16000, 160, 400, 30)


@pytest.mark.parametrize("case, says", [
    ("vit", "this task's model reads audio; give Whisper"),
    ("conv2d", "task.audio_stem=conv2d: its encoder reads through Whisper's conv1d stem"),
    ("mel_bins", "computes feature_size=20 mel bins, its encoder reads num_mel_bins=16"),
    ("window", "reads up to 30 s (3000 frames), more than twice its encoder's max_source_positions=200"),
])
def test_what_a_whisper_checkpoint_cannot_take_is_refused_before_the_data_is_read(tmp_path, case, says):
    folder, overrides = tmp_path / "checkpoint", []
    if case == "vit":
        ViTModel(ViTConfig(image_size=8, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64)).save_pretrained(folder)
    else:
        extractor = {"mel_bins": {"feature_size": 20}, "window": {"chunk_length": 30}}.get(case, {})
        tiny_whisper_checkpoint(folder, **extractor)
        overrides = ["task.audio_stem=conv2d"] if case == "conv2d" else []
    task = asr_task(f"data.root={tmp_path / 'no_data_here'}", f"model.pretrained={folder}", *overrides)
    with pytest.raises(CheckpointError) as e:
        task.prepare(tmp_path, is_main=True)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.fixture(scope="module")
def whisper_run(audio_root, whisper_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """`python run.py task=asr model.pretrained=<the tiny Whisper>` for a few steps: (its run folder, the working
    folder)."""
    cwd = tmp_path_factory.mktemp("asr_pretrained_run")
    args = ["task=asr", f"model.pretrained={whisper_checkpoint}", f"data.root={audio_root}", *PRETRAINED,
            "trainer.batch_size=8", "trainer.max_minutes=0", "trainer.max_steps=4", "trainer.warmup_steps=1"]
    out = run_suite(*args, cwd=cwd, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (cwd / "outputs" / "runs").glob("*")
    return run_dir, cwd


def test_a_fine_tuned_whisper_encoder_is_a_transformers_ctc_model(whisper_run, audio_root, whisper_checkpoint):
    """The run folder: the leaderboard names the checkpoint, AutoModelForCTC loads it, and the ASR pipeline computes
    the features training computed (the saved Whisper front-end) and transcribes as mode=predict does."""
    from transformers import AutoModelForCTC, pipeline

    run_dir, cwd = whisper_run
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["model"] == "tiny-whisper+pretrained" and saved["steps"] == 4, saved
    auto = AutoModelForCTC.from_pretrained(run_dir).eval()
    assert isinstance(auto, SuiteForCTC) and auto.config.audio_stem == "conv1d" and auto.config.n_mels == 16
    start = WhisperModel.from_pretrained(whisper_checkpoint).encoder.conv1.weight
    assert not torch.equal(auto.model.stem.conv1.weight, start)  # fine-tuned, not merely copied
    task, model = load_run(run_dir)
    assert isinstance(task.extractor, SuiteWhisperFeatureExtractor)
    clip = write_wav(cwd / "six.wav", tone_word("six", 8000, seed=5), 8000)  # the data's rate, not the model's
    wave = read_audio(str(clip), 16000)
    trained = asr_task(f"data.root={audio_root}", *PRETRAINED, f"model.pretrained={whisper_checkpoint}")
    asr = pipeline("automatic-speech-recognition", model=str(run_dir), trust_remote_code=True)
    enc = asr.feature_extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt", return_attention_mask=True)
    assert torch.equal(enc["input_features"][0], trained.checkpoint_extractor().features(wave))  # training's
    with torch.no_grad():
        logits = auto(**enc).logits
        assert torch.equal(logits, model(**enc).logits)
    hyp = task.transcripts(logits, auto.output_lengths(enc["attention_mask"]))[0]
    # 4 steps from a random Whisper do not say "six" but some string of characters: the same one everywhere
    assert hyp and task.predict(model, [(str(clip), None)]) == [hyp] and asr(str(clip))["text"] == hyp
