"""What every image task shares: reading images (npz arrays, an imagefolder, a Hub dataset; corrupt files skipped),
the validation hold-out, training augmentation (crop, flip, RandAugment, random erasing, Mixup/CutMix), the
transformers image processor a run folder carries for `pipeline("image-classification")` and mode=predict, and the
attention rollout picture. The model side is `core.stems.ImageStem` under a shared head.

Images are kept as uint8 (N, C, H, W) in memory and become floats in [0, 1] per batch; the stem normalises them.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image, ImageDraw
from timm.data import Mixup
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2
from transformers import AutoImageProcessor, ViTImageProcessor
from transformers.image_utils import load_image

from core.data import load_folder_or_hub, local_folder
from core.task import UserError
from core.transformer import record_attention

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PIL_ERRORS = (OSError, ValueError, SyntaxError)  # what PIL raises for a missing, corrupt or truncated file


# -- reading -------------------------------------------------------------------------------------------------------


def open_image(source: str | Path | bytes, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """A file path or bytes -> uint8 (C, H, W), converted L <-> RGB and resized (PIL, bilinear) as the model expects.

    Raises one of PIL_ERRORS when the file is missing, corrupt or truncated."""
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


@dataclass
class Images:
    """One split: uint8 images (N, C, H, W) and their labels as the data gives them (class ids or names)."""

    pixels: torch.Tensor
    labels: list


class Geometry:
    """The size and channels every image is brought to: the config's where set, else the first training image's."""

    def __init__(self, size: list[int] | None, channels: int | None, patch_size: int):
        self.size = tuple(int(s) for s in size) if size else None
        self.channels, self.patch_size = channels, patch_size
        if self.size:
            self.check()

    def fix(self, size: tuple[int, int], channels: int) -> None:
        """Take the data's size and channels for what the config leaves open, once, and check them."""
        if self.size is None:
            self.size = (int(size[0]), int(size[1]))
        self.channels = int(self.channels or channels)
        self.check()

    def check(self) -> None:
        if any(s % self.patch_size for s in self.size):
            raise UserError(f"images {self.size[0]}x{self.size[1]} with task.patch_size={self.patch_size}: the size "
                            f"must divide by the patch size (set task.image_size=[height,width])")

    @property
    def fixed(self) -> bool:
        return self.size is not None and self.channels is not None


def load_images(data: DictConfig, geometry: Geometry) -> tuple[dict[str, Images], object]:
    """Every split of `data` (the task's data group), train first, and the training labels' feature (a ClassLabel
    names the classes; None for npz). `data.format=npz` reads arrays; otherwise an imagefolder on disk or a Hub
    dataset with image and label columns (`data.columns`)."""
    folder = local_folder(data)
    if folder is not None and data.format == "npz":
        return read_npz(folder, data, geometry), None
    from datasets import Image as ImageFeature

    ds = load_folder_or_hub(data, "imagefolder", "images")
    image_col, label_col = data.columns["image"], data.columns["label"]
    if "train" not in ds:
        raise UserError(f"no train split in {folder or data.hub_id} (splits: {list(ds)})")
    for split, part in ds.items():
        if image_col not in part.column_names or label_col not in part.column_names:
            raise UserError(f"columns {[image_col, label_col]} not all in the {split} split ({part.column_names}); "
                            f"name them with data.columns.image/label=<column>")
    out = {}
    for split in sorted(ds, key=lambda s: s != "train"):  # train first: it fixes the image size and channels
        part = ds[split].cast_column(image_col, ImageFeature(decode=False))  # undecoded: bad files are skipped here
        out[split] = decode(split, part[image_col], part[label_col], geometry)
    return out, ds["train"].features[label_col]


def decode(split: str, files: list[dict], labels: list, geometry: Geometry) -> Images:
    """Image files ({"path", "bytes"} as datasets gives them) -> Images; an unreadable file is skipped and named."""
    images, kept = [], []
    for i, (f, y) in enumerate(zip(files, labels)):
        source = f.get("bytes") or f["path"]
        try:
            if not geometry.fixed:  # from the first readable training image
                with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                    geometry.fix((img.height, img.width), 1 if img.mode in ("L", "1", "I;16", "I") else 3)
            images.append(open_image(source, geometry.channels, geometry.size))
            kept.append(y)
        except PIL_ERRORS as e:
            log.warning("skipped unreadable image %s (%s)", f.get("path") or f"{split}[{i}]", e)
    if not images:
        raise UserError(f"no readable images in the {split} split")
    return Images(torch.stack(images), kept)


def read_npz(folder: Path, data: DictConfig, geometry: Geometry) -> dict[str, Images]:
    """Splits from .npz files: `data.files` (file per split) and `data.npz_keys` (image and label arrays per split)."""
    out, arrays = {}, {}
    for split in sorted(data.files, key=lambda s: s != "train"):
        path = folder / data.files[split]
        try:
            arrays.setdefault(path, np.load(path))
            x, y = (arrays[path][key] for key in data.npz_keys[split])
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"could not read {split} arrays {list(data.npz_keys[split])} from {path} "
                            f"({type(e).__name__}: {e})") from None
        if not geometry.fixed:
            geometry.fix(x.shape[1:3], 1 if x.ndim == 3 else x.shape[3])
        out[split] = Images(from_arrays(x, geometry.channels, geometry.size), y.tolist())
    return out


def hold_out(n: int, val_size: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, validation) of a seeded random split of n examples (the data may be sorted by class):
    `val_size` examples, or that fraction of them when below 1 (so the default suits any size of data)."""
    count = max(1, round(n * val_size)) if val_size < 1 else int(val_size)
    if not 0 < count < n:
        raise UserError(f"task.val_size={val_size:g} holds out {count} of the {n} training examples: give a fraction "
                        f"below 1 or a count between 1 and {n - 1}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[count:], order[:count]


def read_image_paths(value: str | None) -> list[Path]:
    """`image=<file>` or `image=<folder>` (its image files, sorted by name), for mode=predict and mode=attention."""
    if not value:
        raise UserError("mode=predict needs image=<an image file or a folder of images>")
    path = Path(str(value))
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return files
    if not path.is_file():
        raise UserError(f"image {path} not found")
    return [path]


# -- the image processor: one preprocessing path for mode=predict and transformers' pipeline -------------------------


def image_processor(size: tuple[int, int]) -> ViTImageProcessor:
    """Resize to the model's size (bilinear, antialiased) and scale to [0, 1]; no normalisation: the stem
    normalises (config.pixel_mean/pixel_std), so that pixel_values mean the same everywhere."""
    return ViTImageProcessor(size={"height": int(size[0]), "width": int(size[1])}, do_resize=True, do_rescale=True,
                             rescale_factor=1 / 255, do_normalize=False)


def load_image_processor(run_dir: Path, size: tuple[int, int]):
    """The processor a run folder carries (what the pipeline loads), else one for the model's size."""
    if (run_dir / "preprocessor_config.json").is_file():
        try:
            return AutoImageProcessor.from_pretrained(run_dir)
        except (OSError, ValueError) as e:
            raise UserError(f"{run_dir}/preprocessor_config.json is unreadable ({str(e).splitlines()[0]}); delete it "
                            f"to use the model's image size") from None
    return image_processor(size)


def pixel_values(paths: list[Path], processor) -> torch.Tensor:
    """Image files -> (N, C, H, W) in [0, 1] exactly as the image-classification pipeline prepares each (upright by
    EXIF, RGB, then the processor); an unreadable file is a UserError naming it."""
    out = []
    for path in paths:
        try:
            out.append(processor(images=load_image(str(path)), return_tensors="pt")["pixel_values"])
        except PIL_ERRORS as e:
            raise UserError(f"cannot open image {path} ({e}); give a PNG/JPEG file or a folder of them") from None
    return torch.cat(out)


# -- augmentation --------------------------------------------------------------------------------------------------


@dataclass
class Augment:
    """The `task.augment` group: training-time augmentation; 0 turns each off."""

    crop_padding: int = 2  # random crop back to the image size after zero-padding each side by this many pixels
    hflip: float = 0.5  # horizontal-flip probability: 0 when a mirror image is another class (digits, text)
    randaugment: int = 0  # RandAugment operations per image (torchvision)
    randaugment_magnitude: int = 9  # their strength, 0..30
    mixup: float = 0.0  # Mixup alpha (timm.data.Mixup)
    cutmix: float = 0.0  # CutMix alpha (timm.data.Mixup)
    erasing: float = 0.0  # random-erasing probability (torchvision)

    def __post_init__(self) -> None:
        for name in ("hflip", "erasing"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"task.augment.{name}={getattr(self, name)}: give a probability in [0, 1]")
        for name in ("crop_padding", "randaugment", "randaugment_magnitude", "mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(f"task.augment.{name}={getattr(self, name)}: give a value >= 0 (0 = off)")


class ImageDataset(Dataset):
    """uint8 images held in memory; `transform` (per image, uint8 in and out) runs when one is read."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        x = self.images[i]
        return {"pixel_values": self.transform(x) if self.transform else x, "labels": self.labels[i]}


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


class ImageCollate:
    """uint8 rows -> a float batch in [0, 1]. Training adds, in order: random crop and flip (batched), random
    erasing (per image, torchvision), Mixup/CutMix (timm) with their soft labels."""

    def __init__(self, aug: Augment | None = None, mix: Mixup | None = None):
        self.aug, self.mix = aug, mix
        self.erase = v2.RandomErasing(aug.erasing) if aug is not None and aug.erasing else None

    def __call__(self, rows: list[dict]) -> dict:
        batch = default_collate(rows)
        images = batch["pixel_values"]
        if self.aug is not None:
            images = random_crop_flip(images, self.aug.crop_padding, self.aug.hflip)
        images = images.float() / 255
        if self.erase is not None:
            images = torch.stack([self.erase(x) for x in images])
        if self.mix is not None:
            images, batch["labels"] = self.mix(images, batch["labels"])
        batch["pixel_values"] = images
        return batch


def image_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, aug: Augment | None,
                 num_classes: int, label_smoothing: float = 0.0, num_workers: int = 0) -> DataLoader:
    """Batches {pixel_values, labels}: shuffled and augmented by `aug` when given (training), in order otherwise."""
    train = aug is not None
    mix = None
    if train and (aug.mixup or aug.cutmix):
        if batch_size % 2:
            raise UserError(f"Mixup/CutMix need an even trainer.batch_size (got {batch_size})")
        mix = Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, label_smoothing=label_smoothing,
                    num_classes=num_classes)
    randaugment = v2.RandAugment(aug.randaugment, aug.randaugment_magnitude) if train and aug.randaugment else None
    return DataLoader(ImageDataset(images, labels, randaugment), batch_size=batch_size, shuffle=train,
                      collate_fn=ImageCollate(aug, mix), num_workers=num_workers, drop_last=train)


# -- attention rollout ---------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_rollout(model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, classes) and attention rollout (Abnar & Zuidema, 2020) over the patches: (B, H/P, W/P), each map
    summing to 1. Each encoder layer's probabilities (recorded by the core), averaged over heads, are mixed with the
    residual path (0.5 A + 0.5 I) and multiplied through the layers; then the class token's row is read (cls
    pooling) or the rows of all patches averaged (mean pooling)."""
    with record_attention() as records:
        logits = model(pixel_values=pixels)["logits"]
    rollout = None
    for record in records:
        probs = record.probs.mean(1)  # (B, T, T)
        a = 0.5 * probs + 0.5 * torch.eye(probs.size(-1), device=probs.device)
        rollout = a if rollout is None else a @ rollout
    first = int(bool(model.config.cls_token))  # the class token, when there is one, comes before the patches
    rows = rollout[:, 0] if model.config.pooling == "cls" else rollout[:, first:].mean(1)  # (B, T)
    weights = rows[:, first:]
    weights = weights / weights.sum(-1, keepdim=True)  # (B, N)
    return logits, weights.view(len(pixels), *model.model.stem.grid)


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
