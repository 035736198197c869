"""Sentence classification (SST-2 by default): its data, its metric and its predictions.

The model is the shared sequence-classification head on the text stem (`core.heads`): subword tokens -> the shared
encoder -> mean (or [CLS]) pooling -> dropout -> linear.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

from core import task as base
from core.attention_plots import last_layer, token_heatmap
from core.classification import TeacherTargets, class_names, classification_metrics, label_ids, predictions
from core.data import drop_empty, load_splits
from core.heads import SuiteForSequenceClassification
from core.text import TokenDropout, checkpoint_tokenizer, train_tokenizer
from core.train import resolve_precision
from core.transformer import record_attention

log = logging.getLogger(__name__)


@dataclass
class Config:
    """The `task` group of conf/task/sentiment.yaml."""

    name: str = "sentiment"
    vocab_size: int = 8000  # WordPiece vocabulary fitted on the training split
    tokenizer: str = "wordpiece"  # wordpiece | bpe
    lowercase: bool = True
    max_len: int = 128  # longer inputs are truncated
    pooling: str = "mean"  # mean | cls
    label_smoothing: float = 0.0
    token_dropout: float = 0.1  # training only: each token replaced by [UNK] with this probability
    teachers: Any = field(default_factory=list)  # saved runs to distil (one folder, or a list of them)
    distill_alpha: float = 0.5  # weight of the teachers' soft targets in the loss (the labels get 1 - alpha)
    distill_temperature: float = 2.0  # softens teacher and student probabilities alike (Hinton et al. 2015)
    label_names: list[str] | None = None  # names of integer labels 0..n-1 (ClassLabel data brings its own)

    def __post_init__(self) -> None:
        if isinstance(self.teachers, str):  # task.teachers=<run> without brackets: one teacher
            self.teachers = [self.teachers]
        self.teachers = [str(t) for t in self.teachers or []]
        checks = {"tokenizer": ("wordpiece", "bpe"), "pooling": ("mean", "cls")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"task.{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        if self.vocab_size < 16 or self.max_len < 3:
            raise ValueError(f"task.vocab_size={self.vocab_size} and task.max_len={self.max_len}: give at least 16 "
                             f"tokens and 3 positions")
        for name in ("label_smoothing", "token_dropout", "distill_alpha"):
            if not 0 <= getattr(self, name) < 1 + (name == "distill_alpha"):
                raise ValueError(f"task.{name}={getattr(self, name)}: give a fraction in [0, 1]")
        if not self.distill_temperature > 0:
            raise ValueError(f"task.distill_temperature={self.distill_temperature}: give a temperature > 0")


class Task(base.Task):
    """Text classification; metrics `accuracy`, `macro_f1` and per-class accuracy (fractions)."""

    metric = "accuracy"
    head = SuiteForSequenceClassification
    Config = Config

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.labels: list[str] = []
        self.data: DatasetDict | None = None
        self.teachers: list = []  # saved runs to distil from (task.teachers)

    fine_tunes = True  # prepare() takes the checkpoint's tokenizer under model.pretrained

    # -- data --------------------------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path, is_main: bool) -> None:
        ds = drop_empty(load_splits(self.cfg.data), "text")
        tc = self.config
        self.labels = class_names(ds["train"]["label"], ds["train"].features["label"], tc.label_names)
        if is_main and self.checkpoint is not None:  # model.pretrained: its own vocabulary
            max_len = min(tc.max_len, self.checkpoint.fields["max_len"])
            self.tokenizer = checkpoint_tokenizer(self.checkpoint.folder, max_len)
            self.tokenizer.save_pretrained(run_dir)
        elif is_main:
            self.tokenizer = train_tokenizer(ds["train"]["text"], tc.vocab_size, tc.tokenizer, tc.lowercase)
            self.tokenizer.model_max_length = tc.max_len
            self.tokenizer.save_pretrained(run_dir)
        else:  # the main process has fitted and saved it
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(run_dir)

        def encode(batch):
            return {**self.tokenizer(batch["text"], truncation=True), "label": label_ids(batch["label"], self.labels)}

        cols = ds["train"].column_names
        self.data = DatasetDict({s: part.map(encode, batched=True, remove_columns=cols) for s, part in ds.items()})
        self.teachers = [self._load_teacher(Path(run)) for run in tc.teachers]
        if self.teachers:
            log.info("distilling from %d teacher(s): %s", len(self.teachers), ", ".join(tc.teachers))

    def _load_teacher(self, run_dir: Path):
        """A saved run's model, checked to read the same tokens and predict the same labels as this task."""
        teacher, model = base.load_run(run_dir)
        if teacher.cfg.task.name != self.cfg.task.name or teacher.labels != self.labels:
            raise base.UserError(f"teacher {run_dir} is not a {self.cfg.task.name} model with the labels {self.labels}")
        if teacher.tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise base.UserError(f"teacher {run_dir} has another vocabulary: distil from runs trained on the same "
                                 "data with the same task.vocab_size, task.tokenizer and task.lowercase")
        return model

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.data:
            return None
        t = self.cfg.trainer
        collate = DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=8)
        if train and self.config.token_dropout > 0:
            collate = TokenDropout(collate, self.config.token_dropout, self.tokenizer)
        if train and self.teachers:  # the teachers run beside the student (on the CPU in DataLoader workers)
            device = PartialState().device if t.num_workers == 0 else torch.device("cpu")
            precision = resolve_precision(t.mixed_precision, use_cpu=device.type == "cpu")
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
            collate = TeacherTargets(collate, self.teachers, self.config.distill_temperature, device, dtype)
        return DataLoader(self.data[split].with_format("torch"), batch_size=t.batch_size if train else
                          t.eval_batch_size, shuffle=train, collate_fn=collate, num_workers=t.num_workers,
                          drop_last=train)

    def variant_tags(self) -> list[str]:
        return super().variant_tags() + ([f"teachers={len(self.config.teachers)}"] if self.config.teachers else [])

    # -- model and metrics -------------------------------------------------------------------------------------------
    def model_fields(self) -> dict:
        tc, tok = self.config, self.tokenizer
        return {"stem": "text", "vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "pooling": tc.pooling,
                "label_smoothing": tc.label_smoothing, "distill_alpha": tc.distill_alpha,
                "distill_temperature": tc.distill_temperature, "id2label": dict(enumerate(self.labels))}

    def eval_step(self, model, batch) -> list:
        return predictions(model, batch)

    def compute_metrics(self, records: list) -> dict[str, float]:
        return classification_metrics(records, self.labels)

    # -- prediction --------------------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        try:
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(run_dir)
            config = json.loads((run_dir / "config.json").read_text())
            self.labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        except (OSError, ValueError, KeyError) as e:
            raise base.UserError(f"{run_dir} lacks a readable tokenizer or config.json with id2label ({e})") from None

    def probabilities(self, model, texts: list[str]) -> torch.Tensor:
        """Class probabilities (N, classes) of texts, 64 at a time: what mode=predict and the pipeline report."""
        out = []
        for start in range(0, len(texts), 64):
            enc = self.tokenizer(texts[start : start + 64], truncation=True, padding=True, return_tensors="pt")
            out.append(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])["logits"].softmax(-1))
        return torch.cat(out) if out else torch.empty(0, len(self.labels))

    @torch.no_grad()
    def predict(self, model, inputs: list[str]) -> list[str]:
        """`label<TAB>probability<TAB>text` per input; an empty input gets an empty label."""
        probs = self.probabilities(model, inputs)
        lines = []
        for text, p in zip(inputs, probs):
            conf, i = p.max(-1)
            lines.append(f"{self.labels[i]}\t{conf:.3f}\t{text}" if text.strip() else "\t\t(empty input)")
        return lines

    @torch.no_grad()
    def attention(self, model, inputs: list[str] | None, path: Path) -> Path:
        """Token x token self-attention of the last encoder layer (mean over heads), titled with the prediction."""
        if inputs is None:  # the first non-empty test sentence
            inputs = drop_empty(load_splits(self.cfg.data), "text")["test"][:1]["text"]
        if not inputs or not inputs[0].strip():
            raise base.UserError("the text to draw attention for is empty; give text=\"...\"")
        enc = self.tokenizer(inputs[:1], truncation=True, return_tensors="pt")
        with record_attention() as records:
            probs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])["logits"].softmax(-1)[0]
        tokens = self.tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
        conf, i = probs.max(-1)
        title = f"{self.labels[i]} ({conf:.2f}): last encoder layer's self-attention, mean over heads"
        return token_heatmap(last_layer(records), tokens, tokens, title, path)
