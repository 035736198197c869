"""Training throughput of the suite's ViT against timm's VisionTransformer of the same size.

All at embed 256, depth 4, 4 heads, MLP 1024, 32x32 RGB input, patch 4 (64 patches), 10 classes, batch 32,
label smoothing 0.1. `suite` is the ViT task's model (`SuiteForImageClassification`, built by tasks/vit.py) with its
default settings at that size (conf/task/vit.yaml: no dropout, mean pooling, 2-D sine-cosine positions) and the
linear patch stem; `suite-d0.1` the same with dropout 0.1; `timm` is VisionTransformer with its
defaults (class token, learned positions, no dropout). Timed side by side in one
process: forward + backward + fused AdamW step, the models interleaved round by round so that machine noise hits
them alike. Prints images/s, the ratios, and model-FLOPs utilisation against the matmul peak of the same run.

    python bench/vit_speed.py [--steps 20] [--threads 2]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from speedtest import compare, speed_args  # noqa: E402

from tasks.vit import Task  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
B, C, SIZE, PATCH, CLASSES = 32, 3, 32, 4, 10


def suite_model(**overrides) -> torch.nn.Module:
    """The ViT task's model (tasks/vit.py builds it from conf/task/vit.yaml) at conf/model/small.yaml's size (256
    wide, 4 layers, 4 heads, FFN 1024) with the patch stem, for 32x32 RGB images and 10 classes."""
    small = OmegaConf.load(ROOT / "conf/model/small.yaml")
    args = ["task=vit", "model=small", "task.stem=patch", *(f"model.{k}={small[k]}" for k in ("d_model", "n_heads",
            "d_ff", "n_layers")), *(f"model.{k}={v}" for k, v in overrides.items())]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        task = Task(compose("config", overrides=args))
    task.labels, task.size, task.channels = [str(i) for i in range(CLASSES)], (SIZE, SIZE), C
    return task.build_model()


def timm_model() -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return TimmViT(img_size=SIZE, patch_size=PATCH, in_chans=C, num_classes=CLASSES, embed_dim=256, depth=4,
                   num_heads=4, mlp_ratio=4.0)


def make_step(model, kind: str, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    images = torch.rand(B, C, SIZE, SIZE)
    labels = torch.randint(0, CLASSES, (B,))
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if kind.startswith("suite"):
                loss = model(pixel_values=images, labels=labels)["loss"]
            else:
                loss = F.cross_entropy(model(images).float(), labels, label_smoothing=0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def train_flops(D: int = 256, L: int = 4, d_ff: int = 1024) -> float:
    """Matmul FLOPs of one training step: 6 * weights * tokens + attention's 12 * layers * T * D per token."""
    T = (SIZE // PATCH) ** 2 + 1
    weights = L * (4 * D * D + 2 * D * d_ff) + C * PATCH * PATCH * D * (T - 1) / T
    return B * T * (6 * weights + 12 * L * T * D)


def main() -> None:
    args = speed_args(__doc__.split("\n")[0], steps=20)
    models = {"suite": suite_model(), "suite-d0.1": suite_model(dropout=0.1), "timm": timm_model()}
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    print(f"torch {torch.__version__}, {args.threads} threads; batch {B} x {C}x{SIZE}x{SIZE}, patch {PATCH}")
    print(f"parameters: suite {params['suite']:,}  timm {params['timm']:,}  "
          f"(difference {abs(params['suite'] / params['timm'] - 1):.1%}: timm's class token and its position)")
    flops = train_flops()
    rates = compare(models, make_step, flops, args.steps, B, "images")
    for precision, rate in rates.items():
        print(f"{precision}: speed-up suite / timm {rate['suite'] / rate['timm']:.2f}x (defaults, neither with "
              f"dropout); {rate['suite-d0.1'] / rate['timm']:.2f}x with dropout 0.1 in the suite's model")


if __name__ == "__main__":
    main()
