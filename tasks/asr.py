"""Speech recognition with CTC (Graves et al., 2006): log-mel frames -> conv stem (4x) -> shared encoder -> characters.

Default data: the Free Spoken Digit Dataset, an audiofolder (metadata.csv: file_name, text, split, speaker) of 8 kHz
single spoken digits. Besides single words, the task joins 2-7 recordings of one speaker with short pauses into
connected digit strings (as TIDIGITS): fresh ones every epoch for training, a fixed seeded set for validation and
test. Any audiofolder or Hub dataset with audio and transcript columns works by config.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core import task as base
from core.attention import attention_strip, last_layer, panels_with_strip, save
from core.data import local_folder
from core.transformer import Encoder, TransformerConfig, init_weights, record_attention

log = logging.getLogger(__name__)
BLANK, UNK = "<blank>", "⁇"  # CTC blank (index 0) and the symbol of characters outside the vocabulary (index 1)

# -- features ------------------------------------------------------------------------------------------------------


def read_audio(source: str | bytes, rate: int) -> torch.Tensor:
    """A file path or encoded bytes -> mono float waveform (N,) resampled to `rate` with torchaudio.

    Raises RuntimeError/ValueError (torchcodec's) for a missing, corrupt or empty file."""
    from torchcodec.decoders import AudioDecoder

    samples = AudioDecoder(source).get_all_samples()
    if samples.data.numel() == 0:
        raise ValueError("no audio samples")
    wave = samples.data.mean(0)  # (N,) channels averaged
    return torchaudio.functional.resample(wave, samples.sample_rate, rate) if samples.sample_rate != rate else wave


def reason(e: Exception) -> str:
    """The first line of a decoding error without torchcodec's `Function, /source.cpp:N, ` prefix."""
    return re.sub(r"^.*?\.cpp:\d+, ", "", str(e).splitlines()[0] if str(e) else type(e).__name__)


class Features:
    """Waveform at the model's rate -> log-mel frames (T, n_mels), normalised with the training set's statistics."""

    def __init__(self, fc, mean: list[float] | None = None, std: list[float] | None = None):
        self.rate = int(fc.sample_rate)
        win, self.hop = round(fc.win_ms * self.rate / 1000), round(fc.hop_ms * self.rate / 1000)
        n_fft = 1 << (win - 1).bit_length()  # the next power of two holding the window
        self.mel = torchaudio.transforms.MelSpectrogram(self.rate, n_fft=n_fft, win_length=win, hop_length=self.hop,
                                                        n_mels=fc.n_mels)
        self.min_len = (ConvSubsampling.receptive_field - 1) * self.hop  # samples giving one output frame
        self.mean = torch.tensor(mean) if mean else torch.zeros(fc.n_mels)
        self.std = torch.tensor(std) if std else torch.ones(fc.n_mels)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        if len(wave) < self.min_len:  # shorter than the stem sees: pad with silence instead of dropping it
            wave = F.pad(wave, (0, self.min_len - len(wave)))
        return torch.log(self.mel(wave) + 1e-6).T  # (T, n_mels); the floor keeps digital silence finite

    def fit(self, waves: list[torch.Tensor]) -> None:
        """Global mean and standard deviation per mel bin (global CMVN) over `waves`."""
        frames = torch.cat([self.log_mel(w) for w in waves])
        self.mean, self.std = frames.mean(0), frames.std(0).clamp_min(1e-3)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        return (self.log_mel(wave) - self.mean) / self.std  # (T, n_mels)

    def state(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


class SpecAugment:
    """SpecAugment (Park et al., 2019) with torchaudio's masks; masked cells become 0, the normalised mean."""

    def __init__(self, aug):
        self.freq = [torchaudio.transforms.FrequencyMasking(aug.freq_mask) for _ in range(aug.n_freq_masks)]
        self.time = [torchaudio.transforms.TimeMasking(aug.time_mask, p=aug.time_mask_ratio)
                     for _ in range(aug.n_time_masks)]

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.T  # (n_mels, T): torchaudio masks want (..., freq, time)
        for mask in self.freq + self.time:
            x = mask(x)
        return x.T


def join(waves: list[torch.Tensor], pauses: list[float], edge: float, rate: int) -> torch.Tensor:
    """Recordings with `pauses` (seconds) of silence between them and `edge` seconds before and after."""
    parts = [torch.zeros(round(edge * rate))]
    for i, w in enumerate(waves):
        parts += [w, torch.zeros(round((pauses[i] if i < len(pauses) else edge) * rate))]
    return torch.cat(parts)


# -- model ---------------------------------------------------------------------------------------------------------


class ConvSubsampling(nn.Module):
    """Two 3x3 stride-2 convolutions over (time, mel) then a linear map to D: 4x fewer frames (Conformer's stem)."""

    receptive_field = 7  # input frames behind one output frame

    def __init__(self, n_mels: int, channels: int, d_model: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2),
                                  nn.ReLU())
        self.out = nn.Linear(channels * ((n_mels - 1) // 2 - 1) // 2, d_model)

    @staticmethod
    def lengths(frames: torch.Tensor) -> torch.Tensor:
        return ((frames - 1) // 2 - 1) // 2  # each unpadded 3-wide stride-2 conv: L -> (L - 1) // 2

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.conv(feats[:, None])  # (B, C, T/4, F/4)
        return self.out(x.transpose(1, 2).flatten(2))  # (B, T/4, D)


class CTCRecognizer(nn.Module):
    """Conv stem -> the shared encoder -> linear CTC head over the characters, the unknown symbol and blank."""

    def __init__(self, cfg: TransformerConfig, n_mels: int, stem_channels: int, vocab_size: int):
        super().__init__()
        self.stem = ConvSubsampling(n_mels, stem_channels, cfg.d_model)
        self.encoder = Encoder(cfg)
        self.head = nn.Linear(cfg.d_model, vocab_size)
        init_weights(self.encoder)

    def forward(self, features, feature_lengths, targets=None, target_lengths=None) -> dict:
        lengths = ConvSubsampling.lengths(feature_lengths)
        x = self.stem(features)  # (B, S, D)
        mask = torch.arange(x.size(1), device=x.device)[None] < lengths[:, None]  # (B, S) True at real frames
        log_probs = self.head(self.encoder(x, mask)).float().log_softmax(-1)  # (B, S, V), CTC in float32
        out = {"log_probs": log_probs, "lengths": lengths}
        if targets is not None:  # summed over each utterance, averaged over the batch (as ESPnet); an impossible
            # alignment (more labels than frames) contributes 0 instead of inf
            out["loss"] = F.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths, blank=0,
                                     reduction="sum", zero_infinity=True) / len(features)
        return out


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path per utterance: argmax per frame, collapse repeats, drop blanks. log_probs (B, S, V)."""
    out = []
    for best, n in zip(log_probs.argmax(-1).tolist(), lengths.tolist()):
        path = best[:n]
        out.append([c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1])])
    return out


# -- data ----------------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """One decoded recording at the model's rate."""

    wave: torch.Tensor
    text: str
    speaker: str


def connected_plan(clips: list[Clip], n: int, words: tuple[int, int], pause: tuple[float, float],
                   rng: random.Random) -> list[tuple[list[int], list[float]]]:
    """`n` strings of words[0]..words[1] recordings of one speaker (clip indices) and the pauses between them."""
    by_speaker: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        by_speaker.setdefault(c.speaker, []).append(i)
    plan = []
    for _ in range(n):
        pool = by_speaker[clips[rng.randrange(len(clips))].speaker]  # speakers as often as their recordings
        k = min(rng.randint(*words), len(pool))
        plan.append((rng.sample(pool, k), [rng.uniform(*pause) for _ in range(k - 1)]))
    return plan


class Utterances(Dataset):
    """Features and character ids of single recordings and connected strings (kind 0 = word, 1 = connected)."""

    def __init__(self, task: Task, clips: list[Clip], plan: list, train: bool):
        self.task, self.clips, self.plan = task, clips, plan
        self.augment = SpecAugment(task.cfg.task.augment) if train else None
        self.cache = None if train else [self.make(i) for i in range(len(plan))]  # fixed sets: featurised once

    def __len__(self) -> int:
        return len(self.plan)

    def make(self, i: int) -> dict:
        ids, pauses = self.plan[i]
        wave = join([self.clips[j].wave for j in ids], pauses, self.task.cfg.task.edge_pause, self.task.feats.rate)
        text = " ".join(self.clips[j].text for j in ids)
        return {"features": self.task.feats(wave), "targets": torch.tensor(self.task.encode(text)),
                "kind": int(len(ids) > 1)}

    def __getitem__(self, i: int) -> dict:
        if self.cache is not None:
            return self.cache[i]
        row = self.make(i)
        return {**row, "features": self.augment(row["features"])}


class TrainUtterances(Utterances):
    """Every training word alone plus fresh connected strings each epoch, batched by similar length."""

    def __init__(self, task: Task, clips: list[Clip], seed: int):
        self.seed = seed
        super().__init__(task, clips, [], train=True)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """A new epoch's plan: shuffled, sorted by length within pools of 50 batches, batches shuffled."""
        c, rng = self.task.cfg.task.connected, random.Random(self.seed * 100_003 + epoch)
        plan = [([i], []) for i in range(len(self.clips))]
        plan += connected_plan(self.clips, c.train, (c.min_words, c.max_words), (c.min_pause, c.max_pause), rng)
        rng.shuffle(plan)
        size = int(self.task.cfg.trainer.batch_size)
        pool = 50 * size
        batches = []
        for start in range(0, len(plan), pool):
            chunk = sorted(plan[start : start + pool], key=lambda p: sum(len(self.clips[i].wave) for i in p[0])
                           + sum(p[1]) * self.task.feats.rate)
            batches += [chunk[j : j + size] for j in range(0, len(chunk), size)]
        rng.shuffle(batches)
        self.plan = [p for b in batches for p in b]


def collate(rows: list[dict]) -> dict:
    """Zero-pad features (B, T, n_mels) and targets (B, L), with their true lengths."""
    feats = [r["features"] for r in rows]
    targets = [r["targets"] for r in rows]
    return {"features": nn.utils.rnn.pad_sequence(feats, batch_first=True),
            "feature_lengths": torch.tensor([len(f) for f in feats]),
            "targets": nn.utils.rnn.pad_sequence(targets, batch_first=True),
            "target_lengths": torch.tensor([len(t) for t in targets]),
            "kinds": torch.tensor([r["kind"] for r in rows])}


def train_collate(rows: list[dict]) -> dict:
    batch = collate(rows)
    del batch["kinds"]  # the model's forward(**batch) takes only what it needs
    return batch


# -- the task ------------------------------------------------------------------------------------------------------


class Task(base.Task):
    """Speech recognition; metrics `wer`, `cer` (connected strings) and `word_wer`, `word_cer` (single words)."""

    metric = "wer"
    greater_is_better = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.vocab: list[str] = []
        self.index: dict[str, int] = {}
        self.feats = Features(cfg.task.features)
        self.clips: dict[str, list[Clip]] = {}
        self.sets: dict[str, Utterances] = {}

    # -- data ----------------------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path, is_main: bool) -> None:
        tc, c = self.cfg.task, self.cfg.task.connected
        clips = self._read_splits()
        if "validation" not in clips:  # hold out a seeded random part of the training recordings
            train = clips["train"]
            if not 0 < tc.val_size < len(train):
                raise base.UserError(f"task.val_size={tc.val_size} must be between 1 and the {len(train)} training "
                                     f"recordings")
            random.Random(0).shuffle(train)  # FSDD's rows are sorted by digit and speaker
            clips["validation"], clips["train"] = train[: tc.val_size], train[tc.val_size :]
        self.clips = clips
        # the space separates the words of connected strings even when no training transcript has one
        self.set_vocab([BLANK, UNK, *sorted({" "} | {ch for clip in clips["train"] for ch in clip.text})])
        edge, rate = tc.edge_pause, self.feats.rate
        self.feats.fit([join([clip.wave], [], edge, rate) for clip in clips["train"]])
        counts = {"validation": c.validation, "test": c.test}
        for i, (split, n) in enumerate(counts.items()):
            if split not in clips:
                continue
            self._report_unknown(split, clips[split])
            plan = [([j], []) for j in range(len(clips[split]))]  # every single word, then the connected strings
            plan += connected_plan(clips[split], n, (c.min_words, c.max_words), (c.min_pause, c.max_pause),
                                   random.Random(c.seed + i))  # fixed seed: every run scores the same strings
            self.sets[split] = Utterances(self, clips[split], plan, train=False)
        self.sets["train"] = TrainUtterances(self, clips["train"], int(self.cfg.trainer.seed))
        log.info("%d characters %s; %s", len(self.vocab) - 2, "".join(self.vocab[2:]),
                 ", ".join(f"{s} {len(clips[s]):,} recordings / {len(u):,} utterances" for s, u in self.sets.items()))
        if is_main:
            (run_dir / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False))
            (run_dir / "features.json").write_text(json.dumps(self.feats.state()))

    def _read_splits(self) -> dict[str, list[Clip]]:
        """Decode every recording once (skipping unreadable ones) into waveforms at the model's rate."""
        from datasets import Audio, load_dataset

        data = self.cfg.data
        folder = local_folder(data)
        try:
            if folder is not None:
                ds = dict(load_dataset("audiofolder", data_dir=str(folder)))
            else:
                hub = load_dataset(str(data.hub_id), data.get("hub_config"))
                ds = {split: hub[name] for split, name in data.hub_splits.items()}
        except Exception as e:  # datasets raises many types for a missing or unreadable dataset
            where = folder if folder is not None else f"the Hub dataset {data.hub_id}"
            raise base.UserError(f"could not load audio from {where} ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
        cols, by = dict(data.columns), data.get("split_column")
        if by and len(ds) == 1 and by in next(iter(ds.values())).column_names:  # one table, split named per row
            part = next(iter(ds.values()))
            values = part[by]
            ds = {s: part.select([i for i, v in enumerate(values) if v == s]) for s in sorted(set(values))}
        if "train" not in ds:
            raise base.UserError(f"no train split in {folder or data.hub_id} (splits: {sorted(ds)})")
        out = {}
        for split in ("train", "validation", "test"):
            if split not in ds:
                continue
            part = ds[split]
            if cols["audio"] not in part.column_names or cols["text"] not in part.column_names:
                raise base.UserError(f"columns {cols['audio']!r}/{cols['text']!r} not both in the {split} split "
                                     f"({part.column_names}); name them with data.columns.audio/text=<column>")
            speaker = cols.get("speaker")
            speakers = part[speaker] if speaker in part.column_names else [""] * len(part)
            files = part.cast_column(cols["audio"], Audio(decode=False))[cols["audio"]]  # undecoded: we skip bad ones
            out[split] = self._decode(split, files, part[cols["text"]], speakers)
        return out

    def _decode(self, split: str, files: list[dict], texts: list, speakers: list) -> list[Clip]:
        clips = []
        for i, (f, text, speaker) in enumerate(zip(files, texts, speakers)):
            name = f.get("path") or f"{split}[{i}]"
            text = self.normalise(text)
            if not text:
                log.warning("skipped %s: empty transcript", name)
                continue
            try:
                clips.append(Clip(read_audio(f.get("bytes") or f["path"], self.feats.rate), text, str(speaker)))
                if len(clips[-1].wave) < self.feats.min_len and not self.cfg.task.edge_pause:
                    log.warning("%s is shorter than the stem's receptive field: padded with silence", name)
            except (RuntimeError, ValueError, OSError) as e:  # torchcodec's errors for corrupt or empty files
                log.warning("skipped unreadable audio %s (%s)", name, reason(e))
        if not clips:
            raise base.UserError(f"no readable recordings with transcripts in the {split} split")
        return clips

    def normalise(self, text) -> str:
        text = " ".join(str(text or "").split())  # one space between words
        return text.lower() if self.cfg.task.lowercase else text

    def set_vocab(self, vocab: list[str]) -> None:
        self.vocab, self.index = vocab, {ch: i for i, ch in enumerate(vocab)}

    def encode(self, text: str) -> list[int]:
        return [self.index.get(ch, 1) for ch in text]  # 1 = UNK

    def decode_ids(self, ids: list[int]) -> str:
        return " ".join("".join(self.vocab[i] for i in ids).split())

    def _report_unknown(self, split: str, clips: list[Clip]) -> None:
        unknown = sorted({ch for clip in clips for ch in clip.text} - set(self.vocab))
        if unknown:
            log.warning("%s transcripts hold characters outside the training vocabulary (%s): scored as %s", split,
                        "".join(unknown), UNK)

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.sets:
            return None
        t = self.cfg.trainer
        if train:  # the dataset orders its batches itself (by length): no shuffling here
            return DataLoader(self.sets[split], batch_size=t.batch_size, shuffle=False, collate_fn=train_collate,
                              num_workers=t.num_workers, drop_last=True)
        return DataLoader(self.sets[split], batch_size=t.eval_batch_size, collate_fn=collate,
                          num_workers=t.num_workers)

    # -- model and metrics ---------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        tc = self.cfg.task
        return CTCRecognizer(self.model_cfg, tc.features.n_mels, tc.stem_channels, len(self.vocab))

    def model_extras(self) -> dict:
        tc = self.cfg.task
        return {"vocab": self.vocab, "features": dict(tc.features), "stem_channels": tc.stem_channels}

    def eval_step(self, model, batch) -> list:
        out = model(features=batch["features"], feature_lengths=batch["feature_lengths"])
        hyps = greedy_decode(out["log_probs"], out["lengths"])
        refs = [t[:n] for t, n in zip(batch["targets"].tolist(), batch["target_lengths"].tolist())]
        return [(k, self.decode_ids(r), self.decode_ids(h)) for k, r, h in zip(batch["kinds"].tolist(), refs, hyps)]

    def compute_metrics(self, records: list) -> dict[str, float]:
        metrics = {}
        for kind, prefix in ((1, ""), (0, "word_")):
            refs, hyps = [r for k, r, _ in records if k == kind], [h for k, _, h in records if k == kind]
            if refs:
                metrics[f"{prefix}wer"], metrics[f"{prefix}cer"] = jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)
        if "wer" not in metrics:  # no connected strings (task.connected.* = 0): the headline is the single words'
            metrics["wer"], metrics["cer"] = metrics["word_wer"], metrics["word_cer"]
        return metrics

    # -- prediction ----------------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        try:
            self.set_vocab(json.loads((run_dir / "vocab.json").read_text()))
            stats = json.loads((run_dir / "features.json").read_text())
        except (OSError, ValueError) as e:
            raise base.UserError(f"{run_dir} lacks a readable vocab.json or features.json ({e})") from None
        self.feats = Features(self.cfg.task.features, stats["mean"], stats["std"])

    def read_inputs(self) -> list[tuple[str, str | None]]:
        """`audio=<file>`, or `input=<file>` with one audio path per line, optionally `<TAB>reference transcript`."""
        if self.cfg.get("input"):
            path = Path(str(self.cfg.input))
            if not path.is_file():
                raise base.UserError(f"input file {path} not found")
            rows = [line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            return [(r[0].strip(), self.normalise(r[1]) if len(r) > 1 else None) for r in rows]
        if self.cfg.get("audio"):
            return [(str(self.cfg.audio), None)]
        raise base.UserError("mode=predict needs audio=<a sound file> or input=<file listing one sound file per line>")

    @torch.no_grad()
    def predict(self, model, inputs: list[tuple[str, str | None]]) -> list[str]:
        """The transcript (audio=), or `path<TAB>transcript` per file (input=) and WER/CER when references are given."""
        rows = []
        for path, ref in inputs:
            try:
                wave = read_audio(path, self.feats.rate)
            except (RuntimeError, ValueError, OSError) as e:
                log.warning("skipped unreadable audio %s (%s)", path, reason(e))
                continue
            unknown = sorted(set(ref or "") - set(self.vocab))
            if unknown:
                log.warning("reference of %s holds characters outside the model's vocabulary (%s): they count as "
                            "errors", path, "".join(unknown))
            rows.append((path, ref, self.feats(join([wave], [], self.cfg.task.edge_pause, self.feats.rate))))
        if not rows:
            raise base.UserError("none of the audio files could be read; give WAV/FLAC/MP3 files")
        hyps = []
        for start in range(0, len(rows), 16):
            chunk = [r[2] for r in rows[start : start + 16]]
            out = model(features=nn.utils.rnn.pad_sequence(chunk, batch_first=True),
                        feature_lengths=torch.tensor([len(f) for f in chunk]))
            hyps += [self.decode_ids(h) for h in greedy_decode(out["log_probs"], out["lengths"])]
        if not self.cfg.get("input"):
            return hyps
        lines = [f"{path}\t{hyp}" for (path, _, _), hyp in zip(rows, hyps)]
        scored = [(ref, hyp) for (_, ref, _), hyp in zip(rows, hyps) if ref]
        if scored:
            refs, hs = zip(*scored)
            lines.append(f"WER {jiwer.wer(list(refs), list(hs)):.4f}  CER {jiwer.cer(list(refs), list(hs)):.4f} over "
                         f"{len(scored)} file(s) with a reference")
        return lines

    @torch.no_grad()
    def attention(self, model, inputs: list[tuple[str, str | None]] | None, path: Path) -> Path:
        """The log-mel spectrogram and, under it on the same time axis, the attention each encoder frame receives
        (last layer, mean over queries and heads), titled with the transcript."""
        if inputs is None:
            clip = self._read_splits()["test"][0]
            wave, name = clip.wave, f"test recording 0, reference {clip.text!r}"
        else:
            try:
                wave, name = read_audio(inputs[0][0], self.feats.rate), Path(inputs[0][0]).name
            except (RuntimeError, ValueError, OSError) as e:
                raise base.UserError(f"cannot read audio {inputs[0][0]} ({reason(e)}); give a WAV/FLAC/MP3 "
                                     f"file") from None
        feats = self.feats(join([wave], [], self.cfg.task.edge_pause, self.feats.rate))  # (T, n_mels)
        with record_attention() as records:
            out = model(features=feats[None], feature_lengths=torch.tensor([len(feats)]))
        hyp = self.decode_ids(greedy_decode(out["log_probs"], out["lengths"])[0])
        received = last_layer(records).mean(0).numpy()  # (S,): mean over the queries of the heads' mean
        hop = self.feats.hop / self.feats.rate  # seconds between input frames; an encoder frame is 4 of them
        fig, top, strip = panels_with_strip(f"transcript {hyp!r} ({name}): log-mel spectrogram, and the attention "
                                            f"each encoder frame receives (last layer, mean over queries and heads)")
        top.imshow(feats.T.numpy(), origin="lower", aspect="auto", cmap="magma", extent=(0, len(feats) * hop, 0,
                                                                                         feats.size(1)))
        top.set_ylabel("mel bin")
        frames = np.arange(len(received))
        attention_strip(strip, (4 * frames + 1) * hop, np.full(len(frames), 4 * hop), received, "attention\nreceived")
        strip.set_xlabel("time (s); each bar is one encoder frame over the input frames at its centre")
        return save(fig, path)
