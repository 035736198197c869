"""Sentence classification (SST-2 by default): subword tokens -> shared encoder -> pooling -> linear head."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
from datasets import ClassLabel, DatasetDict
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

from core import task as base
from core.attention import last_layer, token_heatmap
from core.data import drop_empty, load_splits
from core.tokenizer import train_tokenizer
from core.train import resolve_precision
from core.transformer import Encoder, TokenEmbedding, TransformerConfig, init_weights, record_attention

log = logging.getLogger(__name__)


class SequenceClassifier(nn.Module):
    """Token embedding -> the shared encoder -> mean (or [CLS]) pooling -> dropout -> linear classifier."""

    def __init__(self, cfg: TransformerConfig, vocab_size: int, num_labels: int, pad_id: int, pooling: str = "mean",
                 label_smoothing: float = 0.0, distill_alpha: float = 0.0, distill_temperature: float = 1.0):
        super().__init__()
        self.embed = TokenEmbedding(vocab_size, cfg.d_model, padding_idx=pad_id)
        self.encoder = Encoder(cfg)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.d_model, num_labels))
        self.pooling, self.label_smoothing = pooling, label_smoothing
        self.distill_alpha, self.distill_temperature = distill_alpha, distill_temperature
        init_weights(self.encoder)

    def forward(self, input_ids, attention_mask, labels=None, teacher_probs=None) -> dict:
        mask = attention_mask.bool()  # (B, S) True at real tokens
        h = self.encoder(self.embed(input_ids), mask)  # (B, S, D)
        if self.pooling == "cls":
            pooled = h[:, 0]
        else:  # mean over real tokens only
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, D)
        logits = self.head(pooled).float()  # (B, num_labels)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        if labels is not None and teacher_probs is not None:  # knowledge distillation (Hinton et al. 2015): also
            # match the teachers' class probabilities at temperature T; T^2 keeps the soft gradients' scale
            t, a = self.distill_temperature, self.distill_alpha
            soft = F.kl_div(F.log_softmax(logits / t, -1), teacher_probs, reduction="batchmean") * t * t
            out["loss"] = (1 - a) * out["loss"] + a * soft
        return out


class TokenDropout:
    """Collate, then replace each real token by [UNK] with probability p: word dropout, a regulariser for small
    text sets trained from scratch (the model cannot lean on any single word)."""

    def __init__(self, collate, p: float, tokenizer: PreTrainedTokenizerFast):
        self.collate, self.p = collate, p
        self.unk, self.specials = tokenizer.unk_token_id, torch.tensor(tokenizer.all_special_ids)

    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collate(rows)
        ids = batch["input_ids"]
        drop = (torch.rand(ids.shape) < self.p) & ~torch.isin(ids, self.specials)
        batch["input_ids"] = ids.masked_fill(drop, self.unk)
        return batch


class TeacherTargets:
    """Collate (word dropout included), then add the teachers' mean class probabilities at temperature T on the very
    batch the student sees: distillation targets consistent with the student's input, a new view each epoch
    ("a good teacher is patient and consistent", Beyer et al. 2022). The teachers are frozen saved runs."""

    def __init__(self, collate, teachers: list[nn.Module], temperature: float, device: torch.device,
                 dtype: torch.dtype | None):
        self.collate, self.t, self.device, self.dtype = collate, temperature, device, dtype
        self.teachers = [m.to(device).eval().requires_grad_(False) for m in teachers]

    @torch.no_grad()
    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collate(rows)
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            probs = [m(input_ids=ids, attention_mask=mask)["logits"].float().div(self.t).softmax(-1)
                     for m in self.teachers]
        batch["teacher_probs"] = torch.stack(probs).mean(0)  # (B, num_labels)
        return batch


class Task(base.Task):
    """Text classification; metrics `accuracy` and `macro_f1` (fractions)."""

    metric = "accuracy"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.labels: list[str] = []
        self.data: DatasetDict | None = None
        self.teachers: list[nn.Module] = []  # saved runs to distil from (task.teachers)

    # -- data --------------------------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path, is_main: bool) -> None:
        ds = drop_empty(load_splits(self.cfg.data), "text")
        if is_main:
            self.labels = self._label_names(ds)
            tc = self.cfg.task
            self.tokenizer = train_tokenizer(ds["train"]["text"], tc.vocab_size, tc.tokenizer, tc.lowercase)
            self.tokenizer.model_max_length = tc.max_len
            self.tokenizer.save_pretrained(run_dir)
            (run_dir / "labels.json").write_text(json.dumps(self.labels))
        else:
            self.load_assets(run_dir)
        self.data = self._encode(ds)
        teachers = self.cfg.task.get("teachers") or []
        teachers = [teachers] if isinstance(teachers, str) else list(teachers)  # task.teachers=<run> without [...]
        self.teachers = [self._load_teacher(Path(run_dir)) for run_dir in teachers]
        if self.teachers:
            log.info("distilling from %d teacher(s): %s", len(self.teachers), ", ".join(teachers))

    def _load_teacher(self, run_dir: Path) -> nn.Module:
        """A saved run's model, checked to read the same tokens and predict the same labels as this task."""
        teacher, model = base.load_run(run_dir)
        if teacher.cfg.task.name != self.cfg.task.name or teacher.labels != self.labels:
            raise base.UserError(f"teacher {run_dir} is not a {self.cfg.task.name} model with the labels {self.labels}")
        if teacher.tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise base.UserError(f"teacher {run_dir} has another vocabulary: distil from runs trained on the same "
                                 "data with the same task.vocab_size, task.tokenizer and task.lowercase")
        return model

    def _label_names(self, ds: DatasetDict) -> list[str]:
        """Class names: the data's ClassLabel names, else `task.label_names` for 0..n-1 ids, else sorted values."""
        feature = ds["train"].features["label"]
        if isinstance(feature, ClassLabel):
            return list(feature.names)
        values = sorted(set(ds["train"]["label"]))
        if all(isinstance(v, int) for v in values):
            names = list(self.cfg.task.get("label_names") or [str(i) for i in range(max(values) + 1)])
            if max(values) >= len(names) or min(values) < 0:
                raise base.UserError(f"labels {values} do not fit task.label_names={names}")
            return names
        return [str(v) for v in values]

    def _encode(self, ds: DatasetDict) -> DatasetDict:
        index = {name: i for i, name in enumerate(self.labels)}

        def encode(batch):
            out = self.tokenizer(batch["text"], truncation=True, max_length=self.cfg.task.max_len)
            out["label"] = []
            for y in batch["label"]:
                key = self.labels[y] if isinstance(y, int) and 0 <= y < len(self.labels) else str(y)
                if key not in index:
                    raise base.UserError(f"label {y!r} is not one of the training labels {self.labels}")
                out["label"].append(index[key])
            return out

        cols = ds["train"].column_names
        return DatasetDict({s: part.map(encode, batched=True, remove_columns=cols) for s, part in ds.items()})

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.data:
            return None
        t = self.cfg.trainer
        batch_size = t.batch_size if train else t.eval_batch_size
        collate = DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=8)
        if train and self.cfg.task.token_dropout > 0:
            collate = TokenDropout(collate, self.cfg.task.token_dropout, self.tokenizer)
        if train and self.teachers:
            device = self._teacher_device()
            collate = TeacherTargets(collate, self.teachers, self.cfg.task.distill_temperature, device,
                                     self._teacher_dtype(device))
        return DataLoader(self.data[split].with_format("torch"), batch_size=batch_size, shuffle=train,
                          collate_fn=collate, num_workers=t.num_workers, drop_last=train)

    def _teacher_device(self) -> torch.device:
        """The training device, where the teachers run beside the student; the CPU in DataLoader workers."""
        return PartialState().device if self.cfg.trainer.num_workers == 0 else torch.device("cpu")

    def _teacher_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype of the trainer's precision, so that the teachers cost what a forward pass costs."""
        precision = resolve_precision(self.cfg.trainer.mixed_precision, use_cpu=device.type == "cpu")
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    # -- model and metrics -------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        tc = self.cfg.task
        return SequenceClassifier(self.model_cfg, len(self.tokenizer), len(self.labels), self.tokenizer.pad_token_id,
                                  tc.pooling, tc.label_smoothing, tc.get("distill_alpha", 0.0),
                                  tc.get("distill_temperature", 1.0))

    def model_extras(self) -> dict:
        return {"vocab_size": len(self.tokenizer), "labels": self.labels, "pooling": self.cfg.task.pooling}

    def eval_step(self, model, batch) -> list:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
        return list(zip(logits.argmax(-1).tolist(), batch["labels"].tolist()))

    def compute_metrics(self, records: list) -> dict[str, float]:
        preds, gold = zip(*records)
        return {"accuracy": sum(p == g for p, g in records) / len(records),
                "macro_f1": float(f1_score(gold, preds, average="macro", labels=list(range(len(self.labels)))))}

    # -- prediction --------------------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        try:
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(run_dir)
            self.labels = json.loads((run_dir / "labels.json").read_text())
        except (OSError, ValueError) as e:
            raise base.UserError(f"{run_dir} lacks a readable tokenizer or labels.json ({e})") from None

    @torch.no_grad()
    def predict(self, model, inputs: list[str]) -> list[str]:
        """`label<TAB>probability<TAB>text` per input; an empty input gets an empty label."""
        lines = []
        for start in range(0, len(inputs), 64):
            chunk = inputs[start : start + 64]
            enc = self.tokenizer(chunk, truncation=True, max_length=self.cfg.task.max_len, padding=True,
                                 return_tensors="pt")
            probs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])["logits"].softmax(-1)
            for text, p in zip(chunk, probs):
                if not text.strip():
                    lines.append("\t\t(empty input)")
                    continue
                conf, i = p.max(-1)
                lines.append(f"{self.labels[i]}\t{conf:.3f}\t{text}")
        return lines

    @torch.no_grad()
    def attention(self, model, inputs: list[str] | None, path: Path) -> Path:
        """Token x token self-attention of the last encoder layer (mean over heads), titled with the prediction."""
        if inputs is None:  # the first non-empty test sentence
            inputs = drop_empty(load_splits(self.cfg.data), "text")["test"][:1]["text"]
        if not inputs or not inputs[0].strip():
            raise base.UserError("the text to draw attention for is empty; give text=\"...\"")
        enc = self.tokenizer(inputs[:1], truncation=True, max_length=self.cfg.task.max_len, return_tensors="pt")
        with record_attention() as records:
            probs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])["logits"].softmax(-1)[0]
        tokens = self.tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
        conf, i = probs.max(-1)
        title = f"{self.labels[i]} ({conf:.2f}): last encoder layer's self-attention, mean over heads"
        return token_heatmap(last_layer(records), tokens, tokens, title, path)
