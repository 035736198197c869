"""Image classification with a Vision Transformer (Dosovitskiy et al., 2021): its data, its metric, its predictions.

The model is the shared classification head on the image stem (`core.stems.ImageStem`, `core.heads`): patches (a
linear patch embedding or a small convolutional stem) with 2-D positions -> the shared encoder -> mean (or class
token) pooling -> linear. Default data: Fashion-MNIST as an .npz of uint8 arrays. Any image-classification dataset
works by config: an `imagefolder` on disk (<dir>/<split>/<class>/<image>) or a Hub id with image and label columns,
greyscale or RGB, any size (resized to `task.image_size`).

`model.pretrained=<ViT checkpoint>` fine-tunes it with its own preprocessing: its channels (greyscale images become
RGB), patch size and image size (unless `task.image_size` is set: its positions are then resampled), its processor's
normalisation, its patch embedding and learned positions, and class-token pooling as ViTForImageClassification.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from core import image
from core import task as base
from core.classification import class_names, classification_metrics, label_ids, predictions
from core.heads import SuiteForImageClassification
from core.image import Augment
from core.modeling import SuiteConfig

log = logging.getLogger(__name__)


@dataclass
class Config:
    """The `task` group of conf/task/vit.yaml."""

    name: str = "vit"
    # None below: the default from scratch, or the checkpoint's under model.pretrained; there, a value that
    # contradicts the checkpoint (channels, patch_size, stem, position) is refused in one line
    image_size: Any = None  # [height, width] or one int; None: the first training image's size (others resized), or
    #                         the checkpoint's (another size resamples its position table)
    channels: int | None = None  # 1 (greyscale) or 3 (RGB); None: the data's, or the checkpoint's; images of the
    #                              other kind are converted
    patch_size: int | None = None  # pixels per patch side; image height and width must divide by it; None: 4
    stem: str | None = None  # conv (log2(patch_size) 3x3 stride-2 convolutions, Xiao et al. 2021) | patch (linear,
    #                          the checkpoints'); None: conv
    pooling: str | None = None  # mean (over every position) | cls (a class token before the patches); None: mean, or
    #                             cls under model.pretrained (ViTForImageClassification's; mean is allowed there)
    position: str | None = None  # sincos2d (fixed 2-D sine-cosine) | learned (the checkpoints'); None: sincos2d; the
    #                              stem adds them (model.position unused)
    label_smoothing: float = 0.1
    val_size: float = 1 / 12  # held out of train when the data has no validation split: a fraction, or a count >= 1
    label_names: list[str] | None = None  # names of integer labels 0..n-1 (ClassLabel data brings its own)
    augment: Augment = field(default_factory=Augment)  # training only

    def __post_init__(self) -> None:
        if isinstance(self.image_size, (int, float)):
            self.image_size = [int(self.image_size)] * 2
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"task.image_size={self.image_size}: give [height, width] or one number (or null)")
        checks = {"stem": ("conv", "patch"), "pooling": ("mean", "cls"), "position": ("sincos2d", "learned")}
        for name, allowed in checks.items():
            if getattr(self, name) not in (None, *allowed):
                raise ValueError(f"task.{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        if self.patch_size is not None and self.patch_size < 1:
            raise ValueError(f"task.patch_size={self.patch_size}: give a positive number of pixels")
        if self.stem == "conv" and self.patch_size and self.patch_size & (self.patch_size - 1):
            raise ValueError(f"task.stem=conv with task.patch_size={self.patch_size}: the conv stem halves the image "
                             f"per layer, so give a power of 2 (or task.stem=patch)")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"task.channels={self.channels}: choose 1 (greyscale), 3 (RGB) or null (the data's)")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"task.label_smoothing={self.label_smoothing}: give a fraction in [0, 1)")
        if not self.val_size > 0:
            raise ValueError(f"task.val_size={self.val_size}: give a fraction below 1 or a count >= 1")


SCRATCH = {"patch_size": 4, "stem": "conv", "position": "sincos2d", "pooling": "mean"}  # what None means from scratch


class Task(base.Task):
    """Image classification; metrics `accuracy`, `macro_f1` and per-class accuracy `acc_<class>` (fractions)."""

    metric = "accuracy"
    head = SuiteForImageClassification
    Config = Config
    input_keys = ("image",)
    fine_tunes = True  # prepare() takes a ViT checkpoint's geometry and normalisation under model.pretrained

    def __init__(self, cfg):
        super().__init__(cfg)
        self.labels: list[str] = []
        self.size: tuple[int, int] | None = None
        self.channels: int | None = None
        self.patch_size: int | None = None
        self.data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.processor = None  # what mode=predict and the pipeline preprocess files with

    @cached_property
    def stem_config(self) -> dict:
        """image_size, channels, patch_size, stem, position and pooling: the task config's, with what it leaves unset
        taken from SCRATCH (image size and channels: the data's) or, under model.pretrained, from the checkpoint."""
        tc = self.config
        chosen = {k: getattr(tc, k) for k in ("image_size", "channels", *SCRATCH) if getattr(tc, k) is not None}
        if self.checkpoint is None:
            settings = {"image_size": None, "channels": None, **SCRATCH, **chosen}
            if settings["stem"] == "conv" and settings["patch_size"] & (settings["patch_size"] - 1):
                raise base.UserError(f"task.patch_size={settings['patch_size']} with the conv stem (task.stem unset: "
                                     f"conv): give a power of 2, or task.stem=patch")
            return settings
        return self.checkpoint_stem(chosen)

    def checkpoint_stem(self, chosen: dict) -> dict:
        """The stem of model.pretrained (ViTForImageClassification's), checked before any data is read: a checkpoint
        of another family, an image size its patches do not divide or a setting it contradicts is one line."""
        ckpt, f = self.checkpoint, self.checkpoint.fields
        size = chosen.get("image_size")
        ckpt.fit(self.head, {"stem": "image", "image_size": size})  # another family; a size its patches do not divide
        own = {"channels": f["num_channels"], "patch_size": f["patch_size"], "stem": "patch", "position": "learned"}
        for key, value in own.items():
            if chosen.get(key, value) != value:
                raise ckpt.refuse(f"task.{key}={chosen[key]} contradicts it (channels {own['channels']}, "
                                  f"{own['patch_size']}-pixel patches, a patch stem, learned positions); leave "
                                  f"task.{key} unset (null)")
        settings = {**own, "image_size": size or f["image_size"], "pooling": chosen.get("pooling", "cls")}
        pre = ckpt.preprocessor
        if not pre:
            log.warning("%s has no preprocessor_config.json: ViT's default normalisation (mean 0.5, std 0.5) is used",
                        ckpt.folder)
        elif pre.get("do_resize", True) and pre.get("resample", 2) != 2:
            log.info("its processor resizes with PIL resample=%s; the suite resizes bilinearly", pre["resample"])
        trained = f["image_size"]
        same = list(settings["image_size"]) == trained
        note = "" if same else f" (positions resampled from {trained[0]}x{trained[1]})"
        log.info("model.pretrained: %s images%s, %d channel(s), %d-pixel patches, learned positions, %s pooling, "
                 "normalised with mean %s std %s", "x".join(map(str, settings["image_size"])), note,
                 own["channels"], own["patch_size"], settings["pooling"], f["pixel_mean"], f["pixel_std"])
        return settings

    # -- data --------------------------------------------------------------------------------------------------------
    def _load(self, size=None, channels=None):
        """Every split of the data at the model's geometry (the given one, or the data's), and the label feature."""
        geometry = image.Geometry(size, channels, self.patch_size)
        splits, feature = image.load_images(self.cfg.data, geometry)
        self.size, self.channels = geometry.size, geometry.channels
        return splits, feature

    def prepare(self, run_dir: Path, is_main: bool) -> None:
        stem = self.stem_config
        self.patch_size = stem["patch_size"]
        splits, feature = self._load(stem["image_size"], stem["channels"])
        self.labels = class_names(splits["train"].labels, feature, self.config.label_names)
        self.data = {s: (im.pixels, torch.tensor(label_ids(im.labels, self.labels))) for s, im in splits.items()}
        if "validation" not in self.data:  # a seeded random part of train (the data may be sorted by class)
            x, y = self.data["train"]
            keep, val = image.hold_out(len(y), self.config.val_size)
            self.data["train"], self.data["validation"] = (x[keep], y[keep]), (x[val], y[val])
        log.info("images %s x %d channel(s), %d classes; %s", "x".join(map(str, self.size)), self.channels,
                 len(self.labels), ", ".join(f"{s} {len(y):,}" for s, (_, y) in self.data.items()))
        self.processor = image.image_processor(self.size)
        if is_main:  # beside config.json: pipeline("image-classification", model=run_dir) preprocesses with it
            self.processor.save_pretrained(run_dir)

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.data:
            return None
        t = self.cfg.trainer
        return image.image_loader(*self.data[split], t.batch_size if train else t.eval_batch_size,
                                  self.config.augment if train else None, len(self.labels),
                                  self.config.label_smoothing, t.num_workers)

    # -- model and metrics -------------------------------------------------------------------------------------------
    def model_fields(self) -> dict:
        """The stem's and head's fields; under model.pretrained the checkpoint's stem and core then replace them
        (Checkpoint.fit), except image_size (its positions are resampled to it) and the pooling."""
        s = self.stem_config
        return {"stem": "image", "position": "none", "image_size": list(self.size), "num_channels": self.channels,
                "patch_size": s["patch_size"], "image_stem": s["stem"], "patch_position": s["position"],
                "cls_token": s["pooling"] == "cls", "pooling": s["pooling"], "label_smoothing":
                self.config.label_smoothing, "zero_init_head": True, "id2label": dict(enumerate(self.labels))}
        # the core's positions are off: the stem adds 2-D ones

    def eval_step(self, model, batch) -> list:
        return predictions(model, batch)

    def compute_metrics(self, records: list) -> dict[str, float]:
        return classification_metrics(records, self.labels)

    # -- prediction --------------------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        try:
            if not (run_dir / "config.json").is_file():  # from_pretrained would give a default config
                raise OSError("no config.json")
            config = SuiteConfig.from_pretrained(run_dir)
        except (OSError, ValueError, TypeError) as e:
            raise base.UserError(f"{run_dir}/config.json is missing, corrupt or not a suite model's "
                                 f"({str(e).splitlines()[0]}); point run_dir at a saved run") from None
        if config.image_size is None:
            raise base.UserError(f"{run_dir} holds no image model (its config.json has no image_size)")
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.size, self.channels, self.patch_size = tuple(config.image_size), config.num_channels, config.patch_size
        self.processor = image.load_image_processor(run_dir, self.size)

    def read_inputs(self) -> list[Path]:
        """`image=<file>` or `image=<folder>` (its image files, sorted by name)."""
        return image.read_image_paths(self.cfg.get("image"))

    def probabilities(self, model, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's input (N, C, H, W) and class probabilities (N, classes) of image files, 64 at a time: what
        mode=predict and the image-classification pipeline report (the same processor prepares them)."""
        pixels = image.pixel_values(paths, self.processor)
        probs = torch.cat([model(pixel_values=chunk)["logits"].softmax(-1) for chunk in pixels.split(64)])
        return pixels, probs

    @torch.no_grad()
    def predict(self, model, inputs: list[Path]) -> list[str]:
        """`path<TAB>class probability<TAB>...` with the top 5 classes per image; optionally the attention PNG."""
        pixels, probs = self.probabilities(model, inputs)
        top = probs.topk(min(5, probs.size(1)), dim=-1)
        lines = [f"{path}\t" + "\t".join(f"{self.labels[i]} {p:.3f}" for p, i in zip(ps.tolist(), ix.tolist()))
                 for path, ps, ix in zip(inputs, top.values, top.indices)]
        if self.cfg.get("attention_png"):
            out, n = Path(str(self.cfg.attention_png)), min(len(pixels), 32)
            _, maps = image.attention_rollout(model, pixels[:n])
            captions = [f"{p.name[:14]}: {self.labels[i]}" for p, i in zip(inputs, top.indices[:, 0].tolist())]
            image.save_attention_png(pixels[:n], maps, captions, out)
            lines.append(f"attention maps of {n} image(s) written to {out}")
        return lines

    @torch.no_grad()
    def attention(self, model, inputs: list[Path] | None, path: Path) -> Path:
        """Attention rollout over the patches of one image (`image=` or the first test image), beside the image."""
        if inputs is None:
            splits, _ = self._load(self.size, self.channels)
            pixels, name = splits["test"].pixels[:1].float() / 255, "test image 0"
        else:
            pixels, name = image.pixel_values(inputs[:1], self.processor), inputs[0].name
        logits, maps = image.attention_rollout(model, pixels)
        label = self.labels[logits.argmax(-1).item()]
        image.save_attention_png(pixels, maps, [f"{name[:14]}: {label}"], path, scale=10)
        return path
