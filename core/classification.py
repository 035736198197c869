"""What every classification task shares (sentiment, images, speakers): class names, label ids, the metrics and
distillation from saved runs. The model side is the shared head `core.heads.SuiteForSequenceClassification`."""

from __future__ import annotations

import re

import torch
from datasets import ClassLabel
from sklearn.metrics import f1_score
from torch import nn

from core.task import UserError


def class_names(values: list, feature=None, names: list[str] | None = None) -> list[str]:
    """The classes of a training split's labels: the data's ClassLabel names, else `names` (a config's
    label_names) for integer ids 0..n-1, else the sorted distinct values."""
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    distinct = sorted(set(values))
    if len(distinct) < 2:
        found = f"one class only ({distinct[0]!r})" if distinct else "no labels"
        raise UserError(f"the training split has {found}: a classifier needs examples of at least two classes")
    if all(isinstance(v, int) for v in distinct):
        names = list(names or [str(i) for i in range(max(distinct) + 1)])
        if max(distinct) >= len(names) or min(distinct) < 0:
            raise UserError(f"labels {distinct} do not fit task.label_names={names}")
        return names
    return [str(v) for v in distinct]


def label_ids(values: list, classes: list[str]) -> list[int]:
    """Each label as its class index: integer ids as they are, names looked up; an unknown label is one error."""
    index = {name: i for i, name in enumerate(classes)}
    out = []
    for y in values:
        key = classes[y] if isinstance(y, int) and 0 <= y < len(classes) else str(y)
        if key not in index:
            raise UserError(f"label {y!r} is not one of the training labels {classes}")
        out.append(index[key])
    return out


def slug(name: str) -> str:
    """A class name as a metric key: `T-shirt/top` -> `t_shirt_top`."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_") or "class"


def predictions(model, batch: dict) -> list[tuple[int, int]]:
    """(predicted class, true class) per example of a batch, for `classification_metrics`."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs)["logits"]
    return list(zip(logits.argmax(-1).tolist(), batch["labels"].tolist()))


def classification_metrics(records: list[tuple[int, int]], classes: list[str]) -> dict[str, float]:
    """`accuracy`, `macro_f1` and each class's accuracy (its recall, `acc_<class>`; a class absent from the split is
    left out), all fractions."""
    preds, gold = (torch.tensor(c) for c in zip(*records))
    metrics = {"accuracy": (preds == gold).float().mean().item(),
               "macro_f1": float(f1_score(gold, preds, average="macro", labels=list(range(len(classes))),
                                          zero_division=0))}
    for i, name in enumerate(classes):
        if (gold == i).any():
            metrics[f"acc_{slug(name)}"] = (preds[gold == i] == i).float().mean().item()
    return metrics


class TeacherTargets:
    """Collate, then add the teachers' mean class probabilities at temperature T on the very batch the student
    sees (augmentation included): distillation targets consistent with the student's input, a new view each epoch
    ("a good teacher is patient and consistent", Beyer et al. 2022). The teachers are frozen saved runs; the head's
    loss mixes them with the labels (`core.heads.classification_loss`)."""

    def __init__(self, collate, teachers: list[nn.Module], temperature: float, device: torch.device,
                 dtype: torch.dtype | None):
        self.collate, self.t, self.device, self.dtype = collate, temperature, device, dtype
        self.teachers = [m.to(device).eval().requires_grad_(False) for m in teachers]

    @torch.no_grad()
    def __call__(self, rows: list[dict]) -> dict:
        batch = self.collate(rows)
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            probs = [m(**inputs)["logits"].float().div(self.t).softmax(-1) for m in self.teachers]
        batch["teacher_probs"] = torch.stack(probs).mean(0)  # (B, num_labels)
        return batch
