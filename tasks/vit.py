"""Image classification with a Vision Transformer (Dosovitskiy et al., 2021): patches -> shared encoder -> head.

Default data: Fashion-MNIST as an .npz of uint8 arrays. Any image-classification dataset works by config: an
`imagefolder` on disk (<dir>/<split>/<class>/<image>) or a Hub id with image and label columns, greyscale or RGB,
any size (resized to `task.image_size`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from timm.data import Mixup
from timm.layers import PatchEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2

from core import task as base
from core.data import local_folder
from core.transformer import Encoder, TransformerConfig, init_weights

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


# -- model ---------------------------------------------------------------------------------------------------------


class PatchStem(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> patch vectors with positions, class token first if any: (B, [1 +] N, D)."""

    def __init__(self, image_size: tuple[int, int], patch_size: int, channels: int, d_model: int, cls_token: bool,
                 position: str, kind: str = "patch"):
        super().__init__()
        if kind == "conv":
            self.patch = ConvStem(image_size, patch_size, channels, d_model)
        else:
            self.patch = PatchEmbed(image_size, patch_size, channels, d_model)  # conv k=P stride=P, then flatten
        self.grid = tuple(self.patch.grid_size)  # (H / P, W / P)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model)) if cls_token else None
        if position == "learned":
            self.pos = nn.Parameter(torch.randn(1, self.grid[0] * self.grid[1], d_model) * 0.02)
        else:  # fixed 2-D sine-cosine: a quarter of D each for sin/cos of the row and the column
            self.register_buffer("pos", build_sincos2d_pos_embed(list(self.grid), d_model)[None], persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images * 2 - 1)  # (B, N, D), N = H/P * W/P in row-major order; pixels scaled to [-1, 1]
        x = x + self.pos.to(x.dtype)
        if self.cls is not None:  # the class token carries no position: it is one learned vector
            x = torch.cat([self.cls.expand(len(x), -1, -1).to(x.dtype), x], dim=1)  # (B, 1 + N, D)
        return x


class ConvStem(nn.Module):
    """The convolutional stem of Xiao et al. (2021, "Early convolutions help transformers see better"), the paper's
    hybrid input: log2(P) 3x3 stride-2 convolutions (BatchNorm, ReLU), widening to D, then a 1x1 convolution to D.
    The same (H/P, W/P) grid of D-vectors as a patch embedding, from overlapping windows: it trains faster."""

    def __init__(self, image_size: tuple[int, int], patch_size: int, channels: int, d_model: int):
        super().__init__()
        n = int(math.log2(patch_size))
        if 2 ** n != patch_size:
            raise ValueError(f"a convolutional stem halves the image per layer: patch size {patch_size} must be a "
                             f"power of 2")
        widths = [channels] + [d_model // 2 ** (n - 1 - i) for i in range(n)]  # P=4, D=128: C -> 64 -> 128
        layers = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.Conv2d(widths[-1], d_model, 1))
        self.grid_size = (image_size[0] // patch_size, image_size[1] // patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.convs(images).flatten(2).transpose(1, 2)  # (B, D, H/P, W/P) -> (B, N, D)


class VisionTransformer(nn.Module):
    """Patch stem -> the shared encoder (its own positions off) -> class token or mean pooling -> linear head."""

    def __init__(self, cfg: TransformerConfig, image_size: tuple[int, int], patch_size: int, channels: int,
                 num_labels: int, pooling: str = "mean", position: str = "sincos2d", label_smoothing: float = 0.0,
                 stem: str = "patch"):
        super().__init__()
        self.stem = PatchStem(image_size, patch_size, channels, cfg.d_model, pooling == "cls", position, stem)
        self.encoder = Encoder(replace(cfg, position="none"))  # positions are the stem's (2-D)
        self.head = nn.Linear(cfg.d_model, num_labels)
        self.pooling, self.label_smoothing = pooling, label_smoothing
        init_weights(self.encoder)
        nn.init.zeros_(self.head.weight)  # timm/big_vision: a zero head starts every class at equal odds
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        h = self.encoder(self.stem(images))  # (B, [1 +] N, D)
        pooled = h[:, 0] if self.pooling == "cls" else h.mean(1)  # (B, D)
        logits = self.head(pooled).float()  # (B, num_labels)
        out = {"logits": logits}
        if labels is not None and labels.dim() == 2:  # soft targets from Mixup / CutMix (smoothing already in them)
            out["loss"] = torch.sum(-labels * logits.log_softmax(-1), dim=-1).mean()
        elif labels is not None:
            out["loss"] = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return out


# -- images --------------------------------------------------------------------------------------------------------


def open_image(source, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """A file path or bytes -> uint8 (C, H, W), converted L <-> RGB and resized as the model expects.

    Raises OSError/ValueError/SyntaxError (what PIL raises) when the file is missing, corrupt or truncated."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        pixels = np.asarray(img, dtype=np.uint8).reshape(size[0], size[1], channels)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # (C, H, W)


def from_arrays(x: np.ndarray, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> (N, channels, H', W'), converting L <-> RGB and resizing when needed."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t[:, None] if t.dim() == 3 else t.permute(0, 3, 1, 2)  # (N, C, H, W)
    if t.size(1) == 1 and channels == 3:
        t = t.expand(-1, 3, -1, -1)
    elif t.size(1) != 1 and channels == 1:
        t = v2.functional.rgb_to_grayscale(t[:, :3])
    if tuple(t.shape[-2:]) != tuple(size):
        t = v2.functional.resize(t, list(size), antialias=True)
    return t.contiguous()


class ImageDataset(Dataset):
    """uint8 images held in memory; `transform` (per image, uint8 in and out) runs when one is read."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        x = self.images[i]
        return {"images": self.transform(x) if self.transform else x, "labels": self.labels[i]}


def random_crop_flip(images: torch.Tensor, padding: int, hflip: float) -> torch.Tensor:
    """(B, C, H, W): each image zero-padded by `padding` a side, cropped back to H x W at its own random offset, and
    mirrored with probability `hflip`: torchvision's RandomCrop(padding=...) + RandomHorizontalFlip image by image,
    done for the whole batch in one gather (per-image transforms cost ~190 us an image here, a sixth of a training
    step of the benchmark model)."""
    B, C, H, W = images.shape
    if padding:
        padded = F.pad(images, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
        dy, dx = torch.randint(0, 2 * padding + 1, (2, B, 1, 1))
        rows = dy + torch.arange(H)[None, :, None]  # (B, H, 1)
        cols = dx + torch.arange(W)[None, None, :]  # (B, 1, W)
        images = padded[torch.arange(B)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
    if hflip:
        flip = torch.rand(B) < hflip
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


class Collate:
    """uint8 rows -> a float batch in [0, 1]. Training adds, in order: random crop and flip (batched), random
    erasing (per image, torchvision), Mixup/CutMix (timm) with their soft labels."""

    def __init__(self, aug=None, mix: Mixup | None = None):
        self.aug, self.mix = aug, mix
        self.erase = v2.RandomErasing(aug.erasing) if aug is not None and aug.erasing else None

    def __call__(self, rows: list[dict]) -> dict:
        batch = default_collate(rows)
        images = batch["images"]
        if self.aug is not None:
            images = random_crop_flip(images, self.aug.crop_padding, self.aug.hflip)
        images = images.float() / 255
        if self.erase is not None:
            images = torch.stack([self.erase(x) for x in images])
        if self.mix is not None:
            images, batch["labels"] = self.mix(images, batch["labels"])
        batch["images"] = images
        return batch


# -- the task ------------------------------------------------------------------------------------------------------


class Task(base.Task):
    """Image classification; metrics `accuracy` and `acc_<class>` per class (fractions)."""

    metric = "accuracy"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.model_cfg = replace(self.model_cfg, position="none")  # config.json should say where positions are
        tc = cfg.task
        if tc.pooling not in ("cls", "mean") or tc.position not in ("learned", "sincos2d"):
            raise base.UserError(f"task.pooling={tc.pooling!r} / task.position={tc.position!r}: choose pooling cls "
                                 f"or mean, position learned or sincos2d")
        if tc.stem not in ("patch", "conv") or (tc.stem == "conv" and tc.patch_size & (tc.patch_size - 1)):
            raise base.UserError(f"task.stem={tc.stem!r} with task.patch_size={tc.patch_size}: choose stem patch, "
                                 f"or conv with a patch size that is a power of 2")
        self.stem = tc.stem
        self.labels: list[str] = []
        self.size: tuple[int, int] | None = None
        self.channels: int | None = None
        self.data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- data ----------------------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path, is_main: bool) -> None:
        splits = self._read_splits()
        if "validation" not in splits:  # hold out a seeded random part of train (the data may be sorted by class)
            x, y = splits["train"]
            n_val = int(self.cfg.task.val_size)
            if not 0 < n_val < len(y):
                raise base.UserError(f"task.val_size={n_val} must be between 1 and the {len(y)} training images")
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
            splits["validation"] = (x[order[:n_val]], y[order[:n_val]])
            splits["train"] = (x[order[n_val:]], y[order[n_val:]])
        self.data = splits
        log.info("images %s x %d channel(s), %d classes; %s", "x".join(map(str, self.size)), self.channels,
                 len(self.labels), ", ".join(f"{s} {len(y):,}" for s, (_, y) in splits.items()))
        if is_main:
            (run_dir / "labels.json").write_text(json.dumps(self.labels))
            (run_dir / "image.json").write_text(json.dumps({"size": list(self.size), "channels": self.channels}))

    def _geometry(self, size, channels) -> None:
        """Image size and channels: the config's when set, else the data's (the first training image)."""
        tc = self.cfg.task
        want = tc.image_size if tc.image_size is not None else size
        self.size = (int(want), int(want)) if isinstance(want, (int, float)) else tuple(int(s) for s in want)
        self.channels = int(tc.channels or channels)
        if self.channels not in (1, 3) or any(s % tc.patch_size for s in self.size):
            raise base.UserError(f"images {self.size} with {self.channels} channel(s) and task.patch_size="
                                 f"{tc.patch_size}: the size must divide by the patch size and channels be 1 or 3")

    def _read_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        data = self.cfg.data
        folder = local_folder(data)
        if folder is not None and data.format == "npz":
            return self._read_npz(folder)
        from datasets import Image as ImageFeature
        from datasets import load_dataset

        try:
            if folder is not None:
                ds = load_dataset("imagefolder", data_dir=str(folder))
            else:
                ds = load_dataset(str(data.hub_id), data.get("hub_config"))
                ds = {split: ds[name] for split, name in data.hub_splits.items()}
        except Exception as e:  # datasets raises many types for a missing or unreadable dataset
            where = folder if folder is not None else f"the Hub dataset {data.hub_id}"
            raise base.UserError(f"could not load images from {where} ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
        cols = dict(data.columns)
        if "train" not in ds:
            raise base.UserError(f"no train split in {folder or data.hub_id} (splits: {list(ds)})")
        for split, part in ds.items():
            if cols["image"] not in part.column_names or cols["label"] not in part.column_names:
                raise base.UserError(f"columns {list(cols.values())} not all in the {split} split "
                                     f"({part.column_names}); name them with data.columns.image/label=<column>")
        feature = ds["train"].features[cols["label"]]
        names = getattr(feature, "names", None)
        self.labels = list(names) if names else self._label_names(max(ds["train"][cols["label"]]) + 1)
        out = {}
        for split in sorted(ds, key=lambda s: s != "train"):  # train first: it fixes the image size and channels
            part = ds[split].cast_column(cols["image"], ImageFeature(decode=False))  # undecoded: we skip bad files
            out[split] = self._decode(split, part[cols["image"]], part[cols["label"]])
        return out

    def _decode(self, split: str, files: list[dict], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, kept = [], []
        for i, (f, y) in enumerate(zip(files, labels)):
            name = f.get("path") or f"{split}[{i}]"
            try:
                if self.size is None:  # geometry from the first readable training image
                    with Image.open(io.BytesIO(f["bytes"]) if f.get("bytes") else f["path"]) as img:
                        self._geometry((img.height, img.width), 1 if img.mode in ("L", "1", "I;16", "I") else 3)
                images.append(open_image(f.get("bytes") or f["path"], self.channels, self.size))
                kept.append(y)
            except (OSError, ValueError, SyntaxError) as e:  # what PIL raises for corrupt or truncated files
                log.warning("skipped unreadable image %s (%s)", name, e)
        if not images:
            raise base.UserError(f"no readable images in the {split} split")
        return torch.stack(images), torch.tensor(kept, dtype=torch.long)

    def _read_npz(self, folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out, arrays = {}, {}
        for split, name in self.cfg.data.files.items():
            path = folder / name
            try:
                arrays.setdefault(path, np.load(path))
                x, y = (arrays[path][key] for key in self.cfg.data.npz_keys[split])
            except (OSError, ValueError, KeyError) as e:
                raise base.UserError(f"could not read {split} arrays {list(self.cfg.data.npz_keys[split])} from "
                                     f"{path} ({type(e).__name__}: {e})") from None
            if self.size is None:
                self._geometry(x.shape[1:3], 1 if x.ndim == 3 else x.shape[3])
            out[split] = (from_arrays(x, self.channels, self.size), torch.from_numpy(y.astype(np.int64)))
        self.labels = self._label_names(int(out["train"][1].max()) + 1)
        return out

    def _label_names(self, n: int) -> list[str]:
        names = list(self.cfg.task.get("label_names") or [str(i) for i in range(n)])
        if n > len(names):
            raise base.UserError(f"labels go up to {n - 1} but task.label_names names only {len(names)} classes")
        return names

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.data:
            return None
        t, aug = self.cfg.trainer, self.cfg.task.augment
        x, y = self.data[split]
        randaugment = v2.RandAugment(aug.randaugment, aug.randaugment_magnitude) if train and aug.randaugment else None
        mix = None
        if train and (aug.mixup or aug.cutmix):
            if t.batch_size % 2:
                raise base.UserError(f"Mixup/CutMix need an even trainer.batch_size (got {t.batch_size})")
            mix = Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, label_smoothing=self.cfg.task.label_smoothing,
                        num_classes=len(self.labels))
        return DataLoader(ImageDataset(x, y, randaugment), batch_size=t.batch_size if train else t.eval_batch_size,
                          shuffle=train, collate_fn=Collate(aug if train else None, mix), num_workers=t.num_workers,
                          drop_last=train)

    # -- model and metrics ---------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        tc = self.cfg.task
        return VisionTransformer(self.model_cfg, self.size, tc.patch_size, self.channels, len(self.labels),
                                 tc.pooling, tc.position, tc.label_smoothing, self.stem)

    def model_extras(self) -> dict:
        tc = self.cfg.task
        return {"labels": self.labels, "image_size": list(self.size), "channels": self.channels,
                "patch_size": tc.patch_size, "pooling": tc.pooling, "patch_position": tc.position,
                "stem": self.stem}

    def eval_step(self, model, batch) -> list:
        logits = model(images=batch["images"])["logits"]
        return list(zip(logits.argmax(-1).tolist(), batch["labels"].tolist()))

    def compute_metrics(self, records: list) -> dict[str, float]:
        preds, gold = (torch.tensor(c) for c in zip(*records))
        metrics = {"accuracy": (preds == gold).float().mean().item()}
        for i, name in enumerate(self.labels):  # recall of each class; a class absent from the split is left out
            if (gold == i).any():
                metrics[f"acc_{slug(name)}"] = (preds[gold == i] == i).float().mean().item()
        return metrics

    # -- prediction ----------------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        try:
            self.labels = json.loads((run_dir / "labels.json").read_text())
            geometry = json.loads((run_dir / "image.json").read_text())
            saved = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise base.UserError(f"{run_dir} lacks a readable labels.json, image.json or config.json ({e})") from None
        self.size, self.channels = tuple(geometry["size"]), geometry["channels"]
        self.stem = saved.get("stem", "patch")  # runs saved before task.stem existed have the patch embedding

    def read_inputs(self) -> list[Path]:
        """`image=<file>` or `image=<folder>` (its image files, sorted by name)."""
        if not self.cfg.get("image"):
            raise base.UserError("mode=predict needs image=<an image file or a folder of images>")
        path = Path(str(self.cfg.image))
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise base.UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
            return files
        if not path.is_file():
            raise base.UserError(f"image {path} not found")
        return [path]

    def load_image(self, path: Path) -> torch.Tensor:
        """One image file as the model's input (C, H, W) in [0, 1]; an unreadable file is a UserError."""
        try:
            return open_image(path, self.channels, self.size).float() / 255
        except (OSError, ValueError, SyntaxError) as e:
            raise base.UserError(f"cannot open image {path} ({e}); give a PNG/JPEG file or a folder of them") from None

    @torch.no_grad()
    def predict(self, model, inputs: list[Path]) -> list[str]:
        """`path<TAB>class probability<TAB>...` with the top 5 classes per image; optionally the attention PNG."""
        images = torch.stack([self.load_image(p) for p in inputs])
        probs = torch.cat([model(images=chunk)["logits"].softmax(-1) for chunk in images.split(64)])
        top = probs.topk(min(5, probs.size(1)), dim=-1)
        lines = [f"{path}\t" + "\t".join(f"{self.labels[i]} {p:.3f}" for p, i in zip(ps.tolist(), ix.tolist()))
                 for path, ps, ix in zip(inputs, top.values, top.indices)]
        if self.cfg.get("attention_png"):
            out = Path(str(self.cfg.attention_png))
            n = min(len(images), 32)
            maps = attention_maps(model, images[:n])
            captions = [f"{p.name[:14]}: {self.labels[i]}" for p, i in zip(inputs, top.indices[:, 0].tolist())]
            save_attention_png(images[:n], maps, captions, out)
            lines.append(f"attention maps of {n} image(s) written to {out}")
        return lines

    @torch.no_grad()
    def attention(self, model, inputs: list[Path] | None, path: Path) -> Path:
        """Attention rollout over the patches of one image (`image=` or the first test image), beside the image."""
        if inputs is None:
            images, _ = self._read_splits()["test"]
            image, name = images[:1].float() / 255, "test image 0"
        else:
            image, name = self.load_image(inputs[0])[None], inputs[0].name
        label = self.labels[model(images=image)["logits"].argmax(-1).item()]
        save_attention_png(image, attention_maps(model, image), [f"{name[:14]}: {label}"], path, scale=10)
        return path


def slug(name: str) -> str:
    """A class name as a metric key: `T-shirt/top` -> `t_shirt_top`."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "class"


# -- attention maps ------------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_maps(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) from the class token to every patch: (B, H/P, W/P), each sums to 1.

    Each layer's probabilities softmax(QK^T / sqrt(Dh)) are recomputed from its fused QKV projection (captured by a
    forward hook, so the shared core needs no extra output), averaged over heads, mixed with the residual path
    (0.5 A + 0.5 I) and multiplied through the layers. Under mean pooling the rows of all patches are averaged."""
    captured = []
    hooks = [layer.attn.qkv.register_forward_hook(lambda mod, args, out: captured.append(out.float()))
             for layer in model.encoder.layers]
    try:
        model(images=images)
    finally:
        for hook in hooks:
            hook.remove()
    B, H = len(images), model.encoder.layers[0].attn.n_heads
    rollout = None
    for qkv in captured:
        T = qkv.size(1)
        q, k, _ = qkv.view(B, T, 3, H, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
        probs = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).softmax(-1).mean(1)  # (B, T, T)
        a = 0.5 * probs + 0.5 * torch.eye(T)
        rollout = a if rollout is None else a @ rollout
    weights = rollout[:, 0, 1:] if model.pooling == "cls" else rollout.mean(1)  # (B, N)
    weights = weights / weights.sum(-1, keepdim=True)
    return weights.view(B, *model.stem.grid)


def save_attention_png(images: torch.Tensor, maps: torch.Tensor, captions: list[str], path: Path,
                       scale: int = 4) -> None:
    """A grid of (image | attention as a red-yellow heat map over it) pairs, each captioned underneath."""
    B, _, H, W = images.shape
    rgb = F.interpolate(images.expand(-1, 3, -1, -1), scale_factor=scale, mode="nearest")  # (B, 3, sH, sW)
    heat = F.interpolate(maps[:, None], size=rgb.shape[-2:], mode="bilinear")[:, 0]  # (B, sH, sW)
    low, high = heat.amin((1, 2), keepdim=True), heat.amax((1, 2), keepdim=True)
    heat = (heat - low) / (high - low).clamp_min(1e-8)
    hot = torch.stack([(2 * heat).clamp(0, 1), (2 * heat - 1).clamp(0, 1), torch.zeros_like(heat)], dim=1)
    pairs = torch.cat([rgb, 0.45 * rgb + 0.55 * hot], dim=3)  # (B, 3, sH, 2 sW)
    cols, (tile_h, tile_w) = min(4, B), (scale * H + 16, 2 * scale * W + 8)
    canvas = Image.new("RGB", (cols * tile_w, math.ceil(B / cols) * tile_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(B):
        x0, y0 = (i % cols) * tile_w, (i // cols) * tile_h
        canvas.paste(Image.fromarray((pairs[i].permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()), (x0, y0))
        draw.text((x0 + 2, y0 + scale * H + 2), captions[i], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
