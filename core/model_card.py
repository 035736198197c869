"""A run folder's model card (README.md, huggingface_hub's `ModelCard`): what the model is, its test results (also
as the Hub's `model-index`), how to load it and the command that trained it."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from core.transformer import TransformerConfig

TEMPLATE = """---
{card_data}
---

# {title}

The Transformer of "Attention Is All You Need" as written in the transformer suite (`core/transformer.py`), with the
suite's {head} head, {origin} for **{task}** on **{dataset}**: {params:,} parameters, trained for {minutes:.1f} minutes
({steps:,} steps, best checkpoint at step {best_step:,}) on {device}, seed {seed}.

## Results on the test split

| metric | value |
| --- | --- |
{metric_rows}

## How to load it

```python
import core  # the suite's package registers its classes; without it: from_pretrained(..., trust_remote_code=True)
from transformers import {auto_class}

model = {auto_class}.from_pretrained("{run_dir}")
```
{pipeline_use}
This folder carries its modeling files (`modeling.py`, `transformer.py`, ...), so `trust_remote_code=True` loads it
on a machine without the suite, as custom models on the Hub do. `model.push_to_hub("<user>/<name>")` (and the
tokenizer's or processor's `push_to_hub`) shares it.

## How it was trained

```bash
python run.py {overrides}
```

Code version {commit}. The resolved configuration is `config.yaml`; the validation curve `history.jsonl`.

## The core

| field | value |
| --- | --- |
{core_rows}
"""


def write_model_card(run_dir: Path, row: dict, core: TransformerConfig, overrides: list[str], head: str,
                     auto_class: str, pipeline_tag: str | None, hub_dataset: str | None,
                     base_model: str | None = None) -> Path:
    """Write `run_dir/README.md` for a finished run (`row`: the leaderboard row) and return its path."""
    metrics = row["metrics"]
    results = [EvalResult(task_type=pipeline_tag or row["task"], dataset_type=hub_dataset or row["dataset"],
                          dataset_name=row["dataset"], dataset_split="test", metric_type=name,
                          metric_value=round(float(value), 6)) for name, value in metrics.items()]
    card_data = ModelCardData(library_name="transformers", pipeline_tag=pipeline_tag, model_name=row["run_id"],
                              tags=["transformer-suite", row["task"], "custom_code"], eval_results=results,
                              datasets=[hub_dataset] if hub_dataset else None, metrics=sorted(metrics),
                              base_model=base_model)
    pipeline_use = (f'\nor as a pipeline: `pipeline("{pipeline_tag}", model="{run_dir}")` (after `import core`).\n'
                    if pipeline_tag in PIPELINES else "")
    card = ModelCard(TEMPLATE.format(
        card_data=card_data.to_yaml(), title=f"{row['task']} on {row['dataset']}: {row['model']}", head=head,
        origin=f"fine-tuned from {base_model}" if base_model else "trained from scratch", task=row["task"],
        dataset=row["dataset"], params=row["params"], minutes=row["train_seconds"] / 60, steps=row["steps"],
        best_step=row["best_step"], device=row["device"], seed=row["seed"],
        metric_rows="\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items()), auto_class=auto_class,
        run_dir=run_dir, pipeline_use=pipeline_use, overrides=" ".join(overrides) or "(the defaults)",
        commit=row.get("commit") or "unknown",
        core_rows="\n".join(f"| {k} | {v} |" for k, v in vars(core).items())))
    path = run_dir / "README.md"
    card.save(path)
    return path


PIPELINES = {"text-classification", "token-classification", "image-classification", "automatic-speech-recognition",
             "audio-classification"}
