"""Training throughput of the suite's sentiment model against transformers' BertForSequenceClassification.

Both at d_model 256, 4 layers, 4 heads, FFN 1024, vocabulary 8000, sequence length 128, batch 32, each with its
library's default settings (the suite: conf/model/small.yaml + conf/task/sentiment.yaml; BERT: BertConfig's
defaults), timed side by side in one process: forward + backward + fused AdamW step, the two models interleaved
round by round so that machine noise hits both alike. Prints samples/s, the ratio, and model-FLOPs utilisation
against the matmul peak measured in the same run.

    python bench/sentiment_speed.py [--steps 12] [--threads 2]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from speedtest import compare, speed_args  # noqa: E402

from core.heads import SuiteForSequenceClassification  # noqa: E402
from core.modeling import SuiteConfig  # noqa: E402
from core.task import model_config  # noqa: E402
from core.transformer import TransformerConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
B, T, V = 32, 128, 8000


def suite_config() -> tuple[TransformerConfig, DictConfig]:
    """What `python run.py task=sentiment` builds: its default variant (conf/model/small.yaml) and task settings."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["task=sentiment"])
    return model_config(cfg), cfg.task


def suite_model() -> torch.nn.Module:
    """The sentiment task's model (its stem, the shared core, the classification head) for V tokens and 2 classes."""
    model_cfg, task_cfg = suite_config()
    return SuiteForSequenceClassification(SuiteConfig(
        **model_cfg.core(), stem="text", vocab_size=V, pad_token_id=0, pooling=task_cfg.pooling,
        label_smoothing=task_cfg.label_smoothing, id2label={0: "negative", 1: "positive"}))


def bert_model() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=V, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                     max_position_embeddings=T, num_labels=2)
    return BertForSequenceClassification(cfg)




def make_step(model, kind: str, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(5, V, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    labels = torch.randint(0, 2, (B,))
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
        loss = out["loss"] if kind == "suite" else out.loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def train_flops(model_cfg: TransformerConfig) -> float:
    """Matmul FLOPs of one training step: 6 * weights * tokens + attention's 12 * layers * T * D per token."""
    D, L = model_cfg.d_model, model_cfg.n_layers
    weights = L * (4 * D * D + 2 * D * model_cfg.d_ff)
    return B * T * (6 * weights + 12 * L * T * D)


def main() -> None:
    args = speed_args(__doc__.split("\n")[0], steps=12)
    models = {"suite": suite_model(), "bert": bert_model()}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    print(f"torch {torch.__version__}, {args.threads} threads; batch {B} x seq {T}")
    print(f"parameters: suite {params['suite']:,}  bert {params['bert']:,}  "
          f"(difference {abs(params['suite'] / params['bert'] - 1):.1%})")
    flops = train_flops(suite_config()[0])
    rates = compare(models, make_step, flops, args.steps, B, "samples")
    for precision, rate in rates.items():
        print(f"{precision}: speed-up suite / bert {rate['suite'] / rate['bert']:.2f}x")


if __name__ == "__main__":
    main()
