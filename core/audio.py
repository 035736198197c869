"""What the audio tasks share: decoding files, the feature extractor, SpecAugment, reading an audiofolder or a Hub
dataset, the validation hold-out, batches with attention masks, the files of mode=predict and the attention picture.

The model side is `core.stems.AudioStem` under the shared heads (`SuiteForCTC`, `SuiteForAudioClassification`); the
features are `core.audio_features.SuiteFeatureExtractor` (or, under `model.pretrained=<Whisper>`, Whisper's own log-mel
front-end, `SuiteWhisperFeatureExtractor`), saved in every run folder so that predict, the Auto classes and the
pipelines feed the model exactly what training did.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import Wav2Vec2CTCTokenizer
from transformers.trainer_pt_utils import LengthGroupedSampler

from core.attention_plots import attention_strip, last_layer, panels_with_strip, save
from core.audio_features import Frames, SuiteFeatureExtractor, SuiteWhisperFeatureExtractor
from core.data import load_folder_or_hub, local_folder
from core.stems import AudioStem
from core.task import UserError, load_saved, read_lines
from core.transformer import record_attention

log = logging.getLogger(__name__)
AUDIO_ERRORS = (RuntimeError, ValueError, OSError)  # what torchcodec raises for a missing, corrupt or empty file
CTC_BLANK, CTC_UNK = "<pad>", "⁇"  # the CTC blank and the symbol of characters outside the vocabulary


@dataclass
class FeatureConfig:
    """Log-mel features (`task.features`)."""

    sample_rate: int = 8000  # the model's rate: every file is resampled to it (FSDD is 8 kHz)
    n_mels: int = 40  # mel bins per frame
    win_ms: float = 25.0  # analysis window
    hop_ms: float = 10.0  # between frames: 100 frames a second

    def __post_init__(self) -> None:
        if self.sample_rate < 1000 or self.n_mels < 8 or not 0 < self.hop_ms <= self.win_ms:
            raise ValueError(f"task.features: sample_rate={self.sample_rate}, n_mels={self.n_mels}, hop_ms="
                             f"{self.hop_ms}, win_ms={self.win_ms}: give a rate >= 1000 Hz, >= 8 mel bins and "
                             "0 < hop_ms <= win_ms")


@dataclass
class AugmentConfig:
    """SpecAugment (Park et al., 2019) on training features (`task.augment`); 0 masks turn it off."""

    n_freq_masks: int = 2
    freq_mask: int = 8  # mel bins per frequency mask, at most
    n_time_masks: int = 2
    time_mask: int = 10  # frames per time mask, at most ...
    time_mask_ratio: float = 0.1  # ... and at most this fraction of the utterance


# -- audio files ---------------------------------------------------------------------------------------------------


def read_audio(source: str | bytes, rate: int) -> torch.Tensor:
    """A file path or encoded bytes -> mono float waveform (N,) resampled to `rate`. Raises one of AUDIO_ERRORS."""
    from torchcodec.decoders import AudioDecoder

    samples = AudioDecoder(source).get_all_samples()
    if samples.data.numel() == 0:
        raise ValueError("no audio samples")
    wave = samples.data.mean(0)  # (N,) channels averaged
    return torchaudio.functional.resample(wave, samples.sample_rate, rate) if samples.sample_rate != rate else wave


def reason(e: Exception) -> str:
    """The first line of a decoding error without torchcodec's `Function, /source.cpp:N, ` prefix."""
    return re.sub(r"^.*?\.cpp:\d+, ", "", str(e).splitlines()[0] if str(e) else type(e).__name__)


def read_files(inputs: list[tuple[str, str | None]], rate: int) -> list[tuple[str, str | None, torch.Tensor]]:
    """(path, reference, waveform) for each readable (path, reference) of `read_inputs`; the others are named in a
    warning and skipped."""
    out = []
    for path, ref in inputs:
        try:
            out.append((path, ref, read_audio(path, rate)))
        except AUDIO_ERRORS as e:
            log.warning("skipped unreadable audio %s (%s)", path, reason(e))
    return out


def read_inputs(cfg: DictConfig) -> list[tuple[str, str | None]]:
    """mode=predict's files: `audio=<file>`, or `input=<file>` with one audio path per line, optionally followed by
    `<TAB>reference` (a transcript, a label)."""
    if cfg.get("input"):
        rows = [line.split("\t", 1) for line in read_lines(Path(str(cfg.input))) if line.strip()]
        return [(r[0].strip(), (r[1].strip() or None) if len(r) > 1 else None) for r in rows]
    if cfg.get("audio"):
        return [(str(cfg.audio), None)]
    raise UserError("mode=predict needs audio=<a sound file> or input=<file listing one sound file per line>")


# -- features ------------------------------------------------------------------------------------------------------


def feature_extractor(fc: FeatureConfig, audio_stem: str = "conv2d", edge_pause: float = 0.0) -> SuiteFeatureExtractor:
    """An unfitted extractor for `fc`; inputs are padded to the receptive field of the conv2d stem."""
    return SuiteFeatureExtractor(feature_size=fc.n_mels, sampling_rate=fc.sample_rate, win_ms=fc.win_ms,
                                 hop_ms=fc.hop_ms, edge_pause=edge_pause,
                                 min_frames=AudioStem.receptive_field if audio_stem == "conv2d" else 1)


WHISPER_SETTINGS = ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft", "dither")  # of its JSON


def checkpoint_feature_extractor(ckpt, edge_pause: float = 0.0) -> SuiteWhisperFeatureExtractor:
    """The log-mel front-end of a Whisper checkpoint (a core.checkpoints.Checkpoint): transformers' Whisper feature
    extractor with the settings of its preprocessor_config.json, or Whisper's defaults for its mel bins (with a
    warning) when it has none. Mel bins other than its encoder's, or a window (chunk_length) longer than its position
    table covers, are refused in one line."""
    settings = {k: ckpt.preprocessor[k] for k in WHISPER_SETTINGS if k in ckpt.preprocessor}
    n_mels = ckpt.fields["n_mels"]
    if not ckpt.preprocessor:
        log.warning("%s has no preprocessor_config.json: Whisper's default log-mel settings (16 kHz, n_fft 400, hop "
                    "160) with its %d mel bins are used", ckpt.folder, n_mels)
    if settings.setdefault("feature_size", n_mels) != n_mels:
        raise ckpt.refuse(f"its preprocessor_config.json computes feature_size={settings['feature_size']} mel bins, "
                          f"its encoder reads num_mel_bins={n_mels}")
    extractor = SuiteWhisperFeatureExtractor(**settings, edge_pause=edge_pause)
    if (extractor.nb_max_frames + 1) // 2 > ckpt.fields["max_len"]:  # the conv1d stem halves the frames
        raise ckpt.refuse(f"its feature extractor reads up to {extractor.chunk_length} s ({extractor.nb_max_frames} "
                          f"frames), more than twice its encoder's max_source_positions={ckpt.fields['max_len']}; "
                          f"set a shorter chunk_length in its preprocessor_config.json")
    return extractor


EXTRACTORS = {cls.__name__: cls for cls in (SuiteFeatureExtractor, SuiteWhisperFeatureExtractor)}


def load_feature_extractor(run_dir: Path) -> Frames:
    """The feature extractor a run folder carries: the suite's own, or Whisper's for a run from a checkpoint."""
    try:
        kind = json.loads((run_dir / "preprocessor_config.json").read_text()).get("feature_extractor_type")
    except (OSError, ValueError, AttributeError):
        kind = None  # load_saved names what is missing or unreadable
    return load_saved(EXTRACTORS.get(kind, SuiteFeatureExtractor), run_dir,
                      "feature extractor (preprocessor_config.json)")


def ctc_tokenizer(texts: list[str], folder: Path) -> Wav2Vec2CTCTokenizer:
    """A character vocabulary for CTC as transformers' `Wav2Vec2CTCTokenizer` (vocab.json in `folder`): the blank is
    its pad token (id 0), then the unknown character (1) and the word delimiter "|" (2, for the space, which is in
    the vocabulary even when no text has one), then the characters of `texts`. Its `decode` collapses a best path
    (repeats merged, blanks dropped), as the ASR pipeline decodes."""
    chars = sorted({ch for text in texts for ch in text} - {" "})
    vocab = {t: i for i, t in enumerate([CTC_BLANK, CTC_UNK, "|", *chars])}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    return Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token=CTC_UNK, pad_token=CTC_BLANK, bos_token=None,
                                eos_token=None, word_delimiter_token="|")


def load_ctc_tokenizer(run_dir: Path) -> Wav2Vec2CTCTokenizer:
    return load_saved(Wav2Vec2CTCTokenizer, run_dir, "CTC tokenizer (vocab.json)")


class SpecAugment:
    """SpecAugment with torchaudio's masks; masked cells become 0, the normalised mean."""

    def __init__(self, aug: AugmentConfig):
        self.masks = [torchaudio.transforms.FrequencyMasking(aug.freq_mask) for _ in range(aug.n_freq_masks)]
        self.masks += [torchaudio.transforms.TimeMasking(aug.time_mask, p=aug.time_mask_ratio)
                       for _ in range(aug.n_time_masks)]

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats.T  # (n_mels, T): torchaudio masks want (..., freq, time)
        for mask in self.masks:
            x = mask(x)
        return x.T


def pad_features(feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Frames (T_i, n_mels) -> `input_features` (B, T, n_mels) zero-padded and `attention_mask` (B, T)."""
    lengths = torch.tensor([len(f) for f in feats])
    return {"input_features": nn.utils.rnn.pad_sequence(feats, batch_first=True),
            "attention_mask": (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long()}


class LabelledFeatures(Dataset):
    """Featurised recordings with one class id each, SpecAugment-ed afresh on every read when `augment` is given."""

    def __init__(self, feats: list[torch.Tensor], labels: list[int], augment: SpecAugment | None = None):
        self.feats, self.labels, self.augment = feats, labels, augment

    def __len__(self) -> int:
        return len(self.feats)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.augment(self.feats[i]) if self.augment else self.feats[i], self.labels[i]

    @staticmethod
    def collate(rows: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
        """`input_features`, `attention_mask` and `labels` (B,) as the classification heads take them."""
        return {**pad_features([f for f, _ in rows]), "labels": torch.tensor([y for _, y in rows])}

    def loader(self, batch_size: int, train: bool, num_workers: int = 0) -> DataLoader:
        """Batches; for training, shuffled into batches of similar lengths (transformers' LengthGroupedSampler), so
        that little of a step's compute goes to padding (FSDD's clips run from 0.14 to 2.3 s)."""
        sampler = LengthGroupedSampler(batch_size, lengths=[len(f) for f in self.feats]) if train else None
        return DataLoader(self, batch_size=batch_size, sampler=sampler, collate_fn=self.collate,
                          num_workers=num_workers, drop_last=train)


# -- datasets ------------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """One decoded recording at the model's rate, with the task's columns (data.columns names)."""

    wave: torch.Tensor  # (N,)
    name: str  # its file, for messages
    fields: dict


def read_clips(data: DictConfig, rate: int, required: tuple[str, ...], optional: tuple[str, ...] = ()
               ) -> dict[str, list[Clip]]:
    """Decode every recording of the train/validation/test splits once (unreadable ones and rows with an empty
    required field are skipped with a warning), from an audiofolder under data.root or a Hub dataset. A single
    table with a column naming each row's split (`data.split_column`) is split by it. Other columns are ignored."""
    ds = load_folder_or_hub(data, "audiofolder", "audio")
    by = data.get("split_column")
    if by and len(ds) == 1 and by in next(iter(ds.values())).column_names:  # one table, split named per row
        part = next(iter(ds.values()))
        values = part[by]
        ds = {s: part.select([i for i, v in enumerate(values) if v == s]) for s in sorted(set(values))}
    if "train" not in ds:
        raise UserError(f"no train split in {local_folder(data) or data.hub_id} (splits: {sorted(ds)}); name each "
                        f"row's split in a column (data.split_column) or give train/ and test/ folders")
    cols = dict(data.columns)
    return {split: _decode(split, ds[split], cols, rate, required, optional)
            for split in ("train", "validation", "test") if split in ds}


def _decode(split: str, part, cols: dict, rate: int, required: tuple, optional: tuple) -> list[Clip]:
    from datasets import Audio, ClassLabel

    missing = [cols.get(f, f) for f in ("audio", *required) if cols.get(f, f) not in part.column_names]
    if missing:
        raise UserError(f"column(s) {missing} not in the {split} split (columns: {part.column_names}); name the "
                        f"right ones with data.columns.<field>=<column>")
    values = {}
    for f in (*required, *optional):
        col = cols.get(f, f)
        if col in part.column_names:
            feature = part.features[col]
            values[f] = [feature.int2str(v) if isinstance(feature, ClassLabel) else v for v in part[col]]
    files = part.cast_column(cols.get("audio", "audio"), Audio(decode=False))[cols.get("audio", "audio")]
    clips = []
    for i, f in enumerate(files):  # undecoded: a bad file is skipped, not fatal
        name = f.get("path") or f"{split}[{i}]"
        row = {k: v[i] for k, v in values.items()}
        empty = [k for k in required if row[k] is None or not str(row[k]).strip()]
        if empty:
            log.warning("skipped %s: empty %s", name, ", ".join(empty))
            continue
        try:
            clips.append(Clip(read_audio(f.get("bytes") or f["path"], rate), name, row))
        except AUDIO_ERRORS as e:
            log.warning("skipped unreadable audio %s (%s)", name, reason(e))
    if not clips:
        raise UserError(f"no readable recordings with {', '.join(required)} in the {split} split")
    return clips


def check_hold_out(size: int, max_fraction: float) -> None:
    """The task config's check of `task.val_size` and `task.val_max_fraction`."""
    if size < 1 or not 0 < max_fraction < 1:
        raise ValueError(f"task.val_size={size} and task.val_max_fraction={max_fraction}: give a count >= 1 and a "
                         f"fraction between 0 and 1")


def hold_out(clips: dict[str, list], size: int, max_fraction: float, seed: int = 0) -> dict[str, list]:
    """The splits with a validation split, if they have none, from a seeded random part of train: `size` recordings
    but at most `max_fraction` of them, so small data still trains (60 clips, 300 and 0.2: 12 held out, not a
    refusal)."""
    if "validation" in clips:
        return clips
    train = list(clips["train"])
    n = min(size, int(max_fraction * len(train)))
    if n < 1:
        raise UserError(f"{len(train)} training recordings are too few to hold out task.val_max_fraction="
                        f"{max_fraction} of them for validation; give a validation split or more data")
    random.Random(seed).shuffle(train)  # datasets are often sorted (FSDD by digit and speaker)
    return {"train": train[n:], "validation": train[:n], **{k: v for k, v in clips.items() if k != "train"}}


# -- predict and the attention picture -----------------------------------------------------------------------------


def batched_logits(model, extractor: Frames, waves: list[torch.Tensor], size: int = 16):
    """(logits, attention_mask) of `waves` fed through the feature extractor as transformers' pipelines feed them,
    `size` at a time."""
    for start in range(0, len(waves), size):
        enc = extractor(waves[start : start + size], return_tensors="pt")
        yield model(**enc).logits, enc["attention_mask"]


def example(data: DictConfig, inputs: list | None, rate: int, field: str) -> tuple[torch.Tensor, str]:
    """The recording mode=attention draws and its caption: the first of `inputs`, else the test split's first."""
    if inputs is None:
        clip = read_clips(data, rate, (field,))["test"][0]
        return clip.wave, f"test recording 0, {field} {clip.fields[field]!r}"
    rows = read_files(inputs[:1], rate)
    if not rows:
        raise UserError(f"cannot read audio {inputs[0][0]}; give a WAV/FLAC/MP3 file")
    return rows[0][2], Path(rows[0][0]).name


@torch.no_grad()
def attention_picture(model, extractor: Frames, wave: torch.Tensor, describe, path: Path) -> Path:
    """The log-mel spectrogram and, under it on the same time axis, the attention each encoder frame receives (last
    layer, mean over queries and heads), titled `describe(logits)` (the model's prediction)."""
    feats, hop_seconds = extractor.features(wave), extractor.hop_length / extractor.sampling_rate  # (T, n_mels)
    with record_attention() as records:
        logits = model(input_features=feats[None], attention_mask=torch.ones(1, len(feats), dtype=torch.long)).logits
    received = last_layer(records).mean(0).numpy()  # (S,): mean over the queries of the heads' mean
    # input frames per encoder frame, and where the frames at an encoder frame's centre start
    stride, offset = (4, 1) if model.config.audio_stem == "conv2d" else (2, -1)
    fig, top, strip = panels_with_strip(f"{describe(logits)}: log-mel spectrogram, and the attention each encoder "
                                        "frame receives (last layer, mean over queries and heads)")
    top.imshow(feats.T.numpy(), origin="lower", aspect="auto", cmap="magma",
               extent=(0, len(feats) * hop_seconds, 0, feats.size(1)))
    top.set_ylabel("mel bin")
    frames = np.arange(len(received))
    attention_strip(strip, (stride * frames + offset) * hop_seconds, np.full(len(frames), stride * hop_seconds),
                    received, "attention\nreceived")
    strip.set_xlabel("time (s); each bar is one encoder frame over the input frames at its centre")
    return save(fig, path)
