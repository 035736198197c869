"""Speaker identification: who of the training speakers says a recording (FSDD by default: 6 speakers; FSDD's
official split, recordings 0-4 of every digit and speaker for test). Shared parts only: the audio data and features
(`core.audio`), the classification metrics (`core.classification`) and the audio classification head (`core.heads`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from core import audio
from core import task as base
from core.audio import AugmentConfig, FeatureConfig
from core.classification import class_names, classification_metrics, label_ids, predictions
from core.heads import SuiteForAudioClassification

log = logging.getLogger(__name__)


@dataclass
class Config:
    """The `task` group of conf/task/speaker_id.yaml."""

    name: str = "speaker_id"
    val_size: int = 300  # training recordings held out for validation when the data has no validation split ...
    val_max_fraction: float = 0.2  # ... at most this fraction of them
    label_smoothing: float = 0.1
    stem_channels: int = 32  # channels of the audio stem's two stride-2 convolutions
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        audio.check_hold_out(self.val_size, self.val_max_fraction)
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"task.label_smoothing={self.label_smoothing}: give a fraction in [0, 1)")


class Task(base.Task):
    """Audio classification; metrics `accuracy`, `macro_f1` and each speaker's accuracy (fractions)."""

    metric = "accuracy"
    head = SuiteForAudioClassification
    Config = Config
    input_keys = ("audio", "input")

    def prepare(self, run_dir: Path, is_main: bool) -> None:
        tc = self.config
        clips = audio.read_clips(self.cfg.data, tc.features.sample_rate, ("label",))
        clips = audio.hold_out(clips, tc.val_size, tc.val_max_fraction)
        self.labels = class_names([c.fields["label"] for c in clips["train"]])
        if is_main:
            self.extractor = audio.feature_extractor(tc.features)
            self.extractor.fit([c.wave for c in clips["train"]])  # global CMVN on the training recordings
            self.extractor.save_pretrained(run_dir)
        else:  # the main process has fitted and saved it
            self.extractor = audio.load_feature_extractor(run_dir)
        self.sets = {split: audio.LabelledFeatures([self.extractor.features(c.wave) for c in part],
                                                   label_ids([c.fields["label"] for c in part], self.labels),
                                                   audio.SpecAugment(tc.augment) if split == "train" else None)
                     for split, part in clips.items()}
        log.info("%d speakers; %s", len(self.labels), ", ".join(f"{s} {len(d):,}" for s, d in self.sets.items()))

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.sets:
            return None
        t = self.cfg.trainer
        return self.sets[split].loader(t.batch_size if train else t.eval_batch_size, train, t.num_workers)

    def model_fields(self) -> dict:
        tc = self.config
        return {"stem": "audio", "n_mels": tc.features.n_mels, "stem_channels": tc.stem_channels, "pooling": "mean",
                "label_smoothing": tc.label_smoothing, "id2label": dict(enumerate(self.labels))}

    def eval_step(self, model, batch) -> list:
        return predictions(model, batch)

    def compute_metrics(self, records: list) -> dict[str, float]:
        return classification_metrics(records, self.labels)

    # -- prediction: the labels are the model's (config.json id2label), as the audio-classification pipeline reads them
    def load_assets(self, run_dir: Path) -> None:
        self.extractor = audio.load_feature_extractor(run_dir)

    def read_inputs(self) -> list[tuple[str, str | None]]:
        """`audio=<file>`, or `input=<file>` with one audio path per line, optionally `<TAB>speaker`."""
        return audio.read_inputs(self.cfg)

    @torch.no_grad()
    def predict(self, model, inputs: list[tuple[str, str | None]]) -> list[str]:
        """`speaker<TAB>probability<TAB>path` per readable file, and the accuracy over the files given a speaker."""
        rows = audio.read_files(inputs, self.extractor.sampling_rate)
        if not rows:
            raise base.UserError("none of the audio files could be read; give WAV/FLAC/MP3 files")
        probs = torch.cat([logits.softmax(-1) for logits, _ in
                           audio.batched_logits(model, self.extractor, [w for _, _, w in rows], 64)])
        conf, best = probs.max(-1)
        names = [model.config.id2label[int(i)] for i in best]
        lines = [f"{name}\t{c:.3f}\t{path}" for name, c, (path, _, _) in zip(names, conf, rows)]
        right = [name == ref for name, (_, ref, _) in zip(names, rows) if ref is not None]
        if right:
            lines.append(f"accuracy {sum(right) / len(right):.4f} over {len(right)} file(s) with a speaker")
        return lines

    def attention(self, model, inputs: list[tuple[str, str | None]] | None, path: Path) -> Path:
        """The log-mel spectrogram and the attention each encoder frame receives, titled with the speaker."""
        wave, name = audio.example(self.cfg.data, inputs, self.extractor.sampling_rate, "label")

        def describe(logits):
            conf, i = logits[0].softmax(-1).max(-1)
            return f"speaker {model.config.id2label[int(i)]} ({conf:.2f}; {name})"

        return audio.attention_picture(model, self.extractor, wave, describe, path)
