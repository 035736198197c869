"""Speech recognition with CTC (Graves et al., 2006): log-mel frames -> audio stem -> shared encoder -> characters.

Default data: the Free Spoken Digit Dataset, an audiofolder (metadata.csv: file_name, text, split, speaker) of 8 kHz
single spoken digits. Besides single words, the task joins 2-7 recordings of one speaker with short pauses into
connected digit strings (as TIDIGITS): fresh ones every epoch for training, a fixed seeded set for validation and
test. Any audiofolder or Hub dataset with audio and transcript columns works by config. The model is the shared CTC
head (`core.heads.SuiteForCTC`); the run folder holds its feature extractor and CTC tokenizer (`core.audio`).

`model.pretrained=<Whisper checkpoint>` fine-tunes Whisper's encoder under the CTC head: its conv1d stem, and its
log-mel front-end with the settings of its preprocessor_config.json (transformers' WhisperFeatureExtractor) instead
of `task.features`. Inputs are padded to the longest of a batch, not to Whisper's 30 s (`core.audio_features`).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jiwer
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core import audio
from core import task as base
from core.audio import AugmentConfig, FeatureConfig
from core.heads import SuiteForCTC

log = logging.getLogger(__name__)


@dataclass
class Connected:
    """Connected strings (`task.connected`): recordings of one speaker joined with random pauses."""

    min_words: int = 2
    max_words: int = 7
    min_pause: float = 0.05  # seconds
    max_pause: float = 0.3
    train: int = 2400  # fresh strings per training epoch (beside every training recording alone)
    validation: int = 200  # fixed strings scored on validation ...
    test: int = 300  # ... and on test
    seed: int = 1234  # the fixed strings' seed: every run scores the same sets


@dataclass
class Config:
    """The `task` group of conf/task/asr.yaml."""

    name: str = "asr"
    lowercase: bool = True
    val_size: int = 300  # training recordings held out for validation when the data has no validation split ...
    val_max_fraction: float = 0.2  # ... at most this fraction of them
    edge_pause: float = 0.1  # seconds of silence before and after every utterance (FSDD is trimmed to the speech)
    audio_stem: str | None = None  # conv2d (4x fewer frames) | conv1d (Whisper's, 2x); None: conv2d, or Whisper's
    #                                 conv1d under model.pretrained (where conv2d is refused)
    stem_channels: int = 32  # channels of the conv2d stem's two stride-2 convolutions
    features: FeatureConfig = field(default_factory=FeatureConfig)  # unused under model.pretrained: the checkpoint's
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    connected: Connected = field(default_factory=Connected)

    def __post_init__(self) -> None:
        audio.check_hold_out(self.val_size, self.val_max_fraction)
        if self.audio_stem not in (None, "conv2d", "conv1d"):
            raise ValueError(f"task.audio_stem={self.audio_stem!r}: choose conv2d or conv1d")
        c = self.connected
        if not 1 <= c.min_words <= c.max_words or not 0 <= c.min_pause <= c.max_pause or self.edge_pause < 0:
            raise ValueError("task.connected: give 1 <= min_words <= max_words and 0 <= min_pause <= max_pause; "
                             "task.edge_pause >= 0")


def join(waves: list[torch.Tensor], pauses: list[float], rate: int) -> torch.Tensor:
    """Recordings with `pauses` (seconds) of silence between them."""
    parts = [waves[0]]
    for pause, w in zip(pauses, waves[1:]):
        parts += [torch.zeros(round(pause * rate)), w]
    return torch.cat(parts)


def connected_plan(clips: list, n: int, c: Connected, rng: random.Random) -> list[tuple[list[int], list]]:
    """`n` strings of c.min_words..c.max_words recordings of one speaker (clip indices) and the pauses between them."""
    speakers = [str(clip.fields.get("speaker", "")) for clip in clips]  # no speaker column: one speaker
    by_speaker: dict[str, list[int]] = {}
    for i, s in enumerate(speakers):
        by_speaker.setdefault(s, []).append(i)
    plan = []
    for _ in range(n):
        pool = by_speaker[speakers[rng.randrange(len(speakers))]]  # speakers as often as their recordings
        k = min(rng.randint(c.min_words, c.max_words), len(pool))
        plan.append((rng.sample(pool, k), [rng.uniform(c.min_pause, c.max_pause) for _ in range(k - 1)]))
    return plan


class Utterances(Dataset):
    """Features and character ids of single recordings and connected strings (kind 0 = word, 1 = connected); the
    fixed sets are featurised once, the training set afresh (SpecAugment) with new strings each epoch."""

    def __init__(self, task: Task, clips: list, plan: list, train: bool, seed: int = 0):
        self.task, self.clips, self.plan, self.seed = task, clips, plan, seed
        self.augment = audio.SpecAugment(task.config.augment) if train else None
        if train:
            self.set_epoch(0)
        self.cache = None if train else [self.make(i) for i in range(len(plan))]

    def __len__(self) -> int:
        return len(self.plan)

    def make(self, i: int) -> dict:
        ids, pauses = self.plan[i]
        wave = join([self.clips[j].wave for j in ids], pauses, self.task.extractor.sampling_rate)
        text = " ".join(self.clips[j].fields["text"] for j in ids)
        return {"input_features": self.task.extractor.features(wave),
                "labels": torch.tensor(self.task.tokenizer(text).input_ids), "kind": int(len(ids) > 1)}

    def __getitem__(self, i: int) -> dict:
        if self.cache is not None:
            return self.cache[i]
        row = self.make(i)
        return {**row, "input_features": self.augment(row["input_features"])}

    def set_epoch(self, epoch: int) -> None:
        """A training epoch's plan: every recording alone and fresh strings, shuffled, sorted by length within pools
        of 50 batches (little padding), the batches shuffled. The fixed sets keep theirs (Accelerate calls this on
        every loader it iterates)."""
        if self.augment is None:
            return
        c, rng = self.task.config.connected, random.Random(self.seed * 100_003 + epoch)
        plan = [([i], []) for i in range(len(self.clips))] + connected_plan(self.clips, c.train, c, rng)
        rng.shuffle(plan)
        size, rate = int(self.task.cfg.trainer.batch_size), self.task.extractor.sampling_rate
        batches = []
        for start in range(0, len(plan), 50 * size):
            chunk = sorted(plan[start : start + 50 * size],
                           key=lambda p: sum(len(self.clips[i].wave) for i in p[0]) + sum(p[1]) * rate)
            batches += [chunk[j : j + size] for j in range(0, len(chunk), size)]
        rng.shuffle(batches)
        self.plan = [p for b in batches for p in b]


def collate(rows: list[dict], kinds: bool = True) -> dict:
    """Features with their attention mask, labels padded with -100 and (for scoring, not for training) each
    utterance's kind."""
    batch = audio.pad_features([r["input_features"] for r in rows])
    batch["labels"] = nn.utils.rnn.pad_sequence([r["labels"] for r in rows], batch_first=True, padding_value=-100)
    return {**batch, "kinds": torch.tensor([r["kind"] for r in rows])} if kinds else batch


class Task(base.Task):
    """Speech recognition; metrics `wer`, `cer` (connected strings) and `word_wer`, `word_cer` (single words)."""

    metric = "wer"
    greater_is_better = False
    head = SuiteForCTC
    Config = Config
    input_keys = ("audio", "input")
    fine_tunes = True  # prepare() takes a Whisper checkpoint's log-mel front-end under model.pretrained

    @property
    def audio_stem(self) -> str:
        """task.audio_stem, or what it means unset: conv2d from scratch, Whisper's conv1d under model.pretrained."""
        return self.config.audio_stem or ("conv1d" if self.model_cfg.pretrained else "conv2d")

    def checkpoint_extractor(self) -> audio.SuiteWhisperFeatureExtractor:
        """The checkpoint's log-mel front-end (model.pretrained), checked before any data is read: a checkpoint of
        another family, or a stem its encoder does not read through, is refused in one line."""
        ckpt = self.checkpoint
        ckpt.fit(self.head, {"stem": "audio"})  # a text or image checkpoint is refused here
        if self.audio_stem != "conv1d":
            raise ckpt.refuse(f"task.audio_stem={self.audio_stem}: its encoder reads through Whisper's conv1d stem; "
                              f"leave task.audio_stem unset (null)")
        extractor = audio.checkpoint_feature_extractor(ckpt, self.config.edge_pause)
        log.info("model.pretrained: %d log-mel bins at %d Hz (n_fft %d, hop %d, Whisper's scaling, at most %d s) as "
                 "its feature extractor computes them; task.features is not used", extractor.feature_size,
                 extractor.sampling_rate, extractor.n_fft, extractor.hop_length, extractor.chunk_length)
        return extractor

    def prepare(self, run_dir: Path, is_main: bool) -> None:
        tc, c = self.config, self.config.connected
        pretrained = self.checkpoint_extractor() if self.checkpoint is not None else None
        rate = pretrained.sampling_rate if pretrained is not None else tc.features.sample_rate
        self.clips = audio.read_clips(self.cfg.data, rate, ("text",), ("speaker",))
        for clip in (clip for split in self.clips.values() for clip in split):
            clip.fields["text"] = self.normalise(clip.fields["text"])
        self.clips = audio.hold_out(self.clips, tc.val_size, tc.val_max_fraction)
        train = self.clips["train"]
        if is_main:
            self.tokenizer = audio.ctc_tokenizer([clip.fields["text"] for clip in train], run_dir)
            if pretrained is not None:  # Whisper's log-mel scaling, fitted on its own training data
                self.extractor = pretrained
            else:
                self.extractor = audio.feature_extractor(tc.features, self.audio_stem, tc.edge_pause)
                self.extractor.fit([clip.wave for clip in train])  # global CMVN on the training recordings
            self.tokenizer.save_pretrained(run_dir)
            self.extractor.save_pretrained(run_dir)
        else:  # the main process has fitted and saved them
            self.load_assets(run_dir)
        self.sets = {"train": Utterances(self, train, [], train=True, seed=int(self.cfg.trainer.seed))}
        for i, split in enumerate(("validation", "test")):
            if split in self.clips:
                unknown = self.unknown(clip.fields["text"] for clip in self.clips[split])
                if unknown:
                    log.warning("%s transcripts hold characters outside the training vocabulary (%s): scored as %s",
                                split, unknown, audio.CTC_UNK)
                plan = [([j], []) for j in range(len(self.clips[split]))]  # every single word, then the strings
                plan += connected_plan(self.clips[split], getattr(c, split), c,
                                       random.Random(c.seed + i))  # fixed seed: every run scores the same strings
                self.sets[split] = Utterances(self, self.clips[split], plan, train=False)
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(3, len(self.tokenizer))))
        log.info("%d characters %s; %s", len(vocab), "".join(vocab), ", ".join(
            f"{s} {len(self.clips[s]):,} recordings / {len(u):,} utterances" for s, u in self.sets.items()))

    def normalise(self, text) -> str:
        text = " ".join(str(text or "").split())  # one space between words
        return text.lower() if self.config.lowercase else text

    def unknown(self, texts) -> str:
        """The characters of `texts` outside the vocabulary."""
        return "".join(sorted({ch for text in texts for ch in text} - set(self.tokenizer.get_vocab()) - {" "}))

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.sets:
            return None
        t = self.cfg.trainer  # training: the dataset orders its batches itself (by length), no shuffling here
        return DataLoader(self.sets[split], batch_size=t.batch_size if train else t.eval_batch_size, shuffle=False,
                          collate_fn=partial(collate, kinds=not train), num_workers=t.num_workers, drop_last=train)

    def model_fields(self) -> dict:
        return {"stem": "audio", "audio_stem": self.audio_stem, "n_mels": self.extractor.feature_size,
                "stem_channels": self.config.stem_channels, "vocab_size": len(self.tokenizer),
                "pad_token_id": self.tokenizer.pad_token_id}

    def transcripts(self, logits: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """Greedy CTC decoding of logits (B, S, V) over each utterance's `lengths` frames: the best path, collapsed
        by the tokenizer (repeats merged, blanks dropped), one space between words."""
        best = logits.argmax(-1).tolist()
        return [" ".join(self.tokenizer.decode(b[:n]).split()) for b, n in zip(best, lengths.tolist())]

    def eval_step(self, model, batch) -> list:
        logits = model(input_features=batch["input_features"], attention_mask=batch["attention_mask"]).logits
        hyps = self.transcripts(logits, getattr(model, "module", model).output_lengths(batch["attention_mask"]))
        refs = [self.tokenizer.decode(y[y >= 0].tolist(), group_tokens=False) for y in batch["labels"]]
        return list(zip(batch["kinds"].tolist(), refs, hyps))

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
        self.extractor, self.tokenizer = audio.load_feature_extractor(run_dir), audio.load_ctc_tokenizer(run_dir)

    def read_inputs(self) -> list[tuple[str, str | None]]:
        """`audio=<file>`, or `input=<file>` with one audio path per line, optionally `<TAB>reference transcript`."""
        return [(path, None if ref is None else self.normalise(ref)) for path, ref in audio.read_inputs(self.cfg)]

    @torch.no_grad()
    def predict(self, model, inputs: list[tuple[str, str | None]]) -> list[str]:
        """The transcript (audio=), or `path<TAB>transcript` per file (input=) and WER/CER when references are given."""
        rows = audio.read_files(inputs, self.extractor.sampling_rate)
        if not rows:
            raise base.UserError("none of the audio files could be read; give WAV/FLAC/MP3 files")
        for path, ref, _ in rows:
            if self.unknown([ref or ""]):
                log.warning("reference of %s holds characters outside the model's vocabulary (%s): they count as "
                            "errors", path, self.unknown([ref]))
        hyps = [h for logits, mask in audio.batched_logits(model, self.extractor, [w for _, _, w in rows])
                for h in self.transcripts(logits, model.output_lengths(mask))]
        if not self.cfg.get("input"):
            return hyps
        lines = [f"{path}\t{hyp}" for (path, _, _), hyp in zip(rows, hyps)]
        scored = [(ref, hyp) for (_, ref, _), hyp in zip(rows, hyps) if ref]
        if scored:
            refs, hs = (list(x) for x in zip(*scored))
            lines.append(f"WER {jiwer.wer(refs, hs):.4f}  CER {jiwer.cer(refs, hs):.4f} over {len(scored)} file(s) "
                         f"with a reference")
        return lines

    def attention(self, model, inputs: list[tuple[str, str | None]] | None, path: Path) -> Path:
        """The log-mel spectrogram and the attention each encoder frame receives, titled with the transcript."""
        wave, name = audio.example(self.cfg.data, inputs, self.extractor.sampling_rate, "text")

        def describe(logits):
            return f"transcript {self.transcripts(logits, torch.tensor([logits.size(1)]))[0]!r} ({name})"

        return audio.attention_picture(model, self.extractor, wave, describe, path)
