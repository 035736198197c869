"""The ViT task: patch stem shapes, augmentation, learning, prediction from files, and a run through run.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from PIL import Image

from core.task import UserError, load_weights, save_weights
from core.transformer import TransformerConfig
from tasks.vit import ConvStem, Task, VisionTransformer, attention_maps, random_crop_flip
from tests.conftest import ROOT, run_suite

TINY_CFG = TransformerConfig(d_model=32, n_heads=2, d_ff=64, n_layers=2, dropout=0.0)


def fashion_like(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 noise with a bright 4x4 block on the patch grid at a place that depends on the class (0..9)."""
    y = np.arange(n) % 10
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        r, col = 4 + 12 * (c // 5), 4 * (c % 5) + 4
        x[i, r : r + 4, col : col + 4] = 230
    return x, y.astype(np.uint8)


def write_fashion_npz(root: Path, n_train: int = 600, n_test: int = 100) -> Path:
    """<root>/fashion_mnist/fashion_mnist.npz with Fashion-MNIST's keys, dtypes and shapes."""
    rng = np.random.default_rng(0)
    folder = root / "fashion_mnist"
    folder.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = fashion_like(n_train, rng), fashion_like(n_test, rng)
    np.savez(folder / "fashion_mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return root


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory) -> Path:
    return write_fashion_npz(tmp_path_factory.mktemp("images"))


def vit_task(*overrides: str) -> Task:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return Task(compose("config", overrides=["task=vit", "model=tiny", *overrides]))


@pytest.mark.parametrize("size, channels, pooling, position, stem", [
    ((24, 40), 3, "cls", "learned", "patch"),
    ((28, 28), 1, "mean", "sincos2d", "patch"),
    ((16, 8), 3, "mean", "learned", "patch"),
    ((24, 40), 3, "cls", "sincos2d", "conv"),
    ((28, 28), 1, "mean", "learned", "conv"),
])
def test_patch_embedding_shapes(size, channels, pooling, position, stem):
    model = VisionTransformer(TINY_CFG, size, 4, channels, 7, pooling, position, stem=stem)
    images = torch.rand(5, channels, *size)
    tokens = model.stem(images)
    patches = (size[0] // 4) * (size[1] // 4)
    assert tokens.shape == (5, patches + (pooling == "cls"), 32)
    assert model.stem.grid == (size[0] // 4, size[1] // 4)
    assert model(images=images)["logits"].shape == (5, 7)
    assert attention_maps(model, images).shape == (5, size[0] // 4, size[1] // 4)


def test_conv_stem_needs_a_power_of_two_patch():
    with pytest.raises(ValueError, match="power of 2"):
        VisionTransformer(TINY_CFG, (24, 24), 3, 1, 7, stem="conv")
    for bad in (["task.stem=conv", "task.patch_size=7"], ["task.stem=convolutional"]):  # from config: one line
        with pytest.raises(UserError, match="task.stem="):
            vit_task(*bad)


def test_a_run_saved_with_either_stem_reloads_with_it(tmp_path):
    for stem in ("patch", "conv", None):  # None: saved before task.stem existed, when every run had patches
        task = vit_task(f"task.stem={stem or 'patch'}")
        task.labels, task.size, task.channels = ["a", "b"], (28, 28), 1
        run_dir = tmp_path / str(stem)
        run_dir.mkdir()
        info = {k: v for k, v in task.model_extras().items() if stem or k != "stem"}
        save_weights(task.build_model(), run_dir, info)
        (run_dir / "labels.json").write_text(json.dumps(task.labels))
        (run_dir / "image.json").write_text(json.dumps({"size": [28, 28], "channels": 1}))
        again = vit_task("task.stem=conv")  # the current default must not override what the run saved
        again.load_assets(run_dir)
        assert isinstance(load_weights(again.build_model(), run_dir).stem.patch, ConvStem) == (stem == "conv")


def test_augmentation_keeps_labels(fashion_root, tmp_path):
    task = vit_task(f"data.root={fashion_root}", "task.val_size=100", "task.augment.randaugment=2",
                    "task.augment.erasing=0.5", "task.augment.crop_padding=4")
    task.prepare(tmp_path, is_main=True)
    x, y = task.data["train"]
    loader = task.dataloader("train", train=True)
    batch = loader.collate_fn([loader.dataset[i] for i in range(20)])
    assert torch.equal(batch["labels"], y[:20]) and batch["images"].shape == (20, 1, 28, 28)
    assert 0 <= batch["images"].min() and batch["images"].max() <= 1
    assert not torch.equal(batch["images"], x[:20].float() / 255)  # something was augmented

    mixed = vit_task(f"data.root={fashion_root}", "task.val_size=100", "task.augment.mixup=0.8",
                     "task.augment.cutmix=1.0", "trainer.batch_size=16")
    mixed.prepare(tmp_path, is_main=True)
    loader = mixed.dataloader("train", train=True)
    y = mixed.data["train"][1][:16]
    batch = loader.collate_fn([loader.dataset[i] for i in range(16)])
    soft = batch["labels"]
    assert soft.shape == (16, 10) and torch.allclose(soft.sum(1), torch.ones(16))
    assert batch["images"].shape == (16, 1, 28, 28)
    for i in range(16):  # each target's mass sits on the image's own class and its partner's (the batch reversed)
        assert soft[i, list({int(y[i]), int(y[15 - i])})].sum() > 0.9


def test_batched_crop_and_flip_match_per_image_crops():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 6, 5), dtype=torch.uint8)  # no zeros: padding shows as 0
    out = random_crop_flip(images, padding=2, hflip=0.5)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flipped = 0
    for b in range(64):  # each output is one 6 x 5 window of its own padded image, mirrored or not
        windows = [padded[b, :, dy : dy + 6, dx : dx + 5] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(out[b], w) for w in windows)
        mirrored = any(torch.equal(out[b], w.flip(-1)) for w in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 15 < flipped < 49  # about half are mirrored
    assert torch.equal(random_crop_flip(images, padding=0, hflip=0.0), images)
    assert torch.equal(random_crop_flip(images, padding=0, hflip=1.0), images.flip(-1))


def test_tiny_model_overfits_a_few_images():
    torch.manual_seed(0)
    model = VisionTransformer(TINY_CFG, (16, 16), 4, 3, 4, "cls", "learned", 0.0)
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(images=images, labels=labels)["loss"].item()
    for _ in range(80):
        loss = model(images=images, labels=labels)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out = model(images=images, labels=labels)
    assert out["loss"].item() < 0.05 * first
    assert torch.equal(out["logits"].argmax(-1), labels)


def test_prediction_on_a_png_equals_prediction_on_the_tensor(tmp_path):
    task = vit_task()
    task.labels, task.size, task.channels = [f"c{i}" for i in range(10)], (28, 28), 1
    torch.manual_seed(0)
    model = task.build_model().eval()
    torch.nn.init.normal_(model.head.weight)  # the zero-initialised head would give every class 0.1
    pixels = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    Image.fromarray(pixels[0].numpy(), "L").save(tmp_path / "x.png")
    (line,) = task.predict(model, [tmp_path / "x.png"])
    with torch.no_grad():
        probs = model(images=pixels[None].float() / 255)["logits"].softmax(-1)[0]
    top = probs.topk(5)
    assert line.split("\t") == [str(tmp_path / "x.png")] + [
        f"c{i} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist())]
    # an RGB file for a greyscale model is converted, not refused
    Image.fromarray(pixels[0].numpy(), "L").convert("RGB").save(tmp_path / "rgb.png")
    assert task.predict(model, [tmp_path / "rgb.png"])[0].split("\t")[1:] == line.split("\t")[1:]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(UserError, match="cannot open image .*bad.png"):
        task.predict(model, [tmp_path / "bad.png"])


def test_imagefolder_skips_corrupt_files_and_converts_channels(tmp_path, caplog):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for name in ("boot", "shirt"):
            folder = tmp_path / "data" / "shapes" / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                mode = "RGB" if i % 2 else "L"  # mixed greyscale and colour files
                shape = (12, 8, 3) if mode == "RGB" else (12, 8)
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
    (tmp_path / "data/shapes/train/boot/broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    task = vit_task(f"data.root={tmp_path / 'data'}", "data.dir=shapes", "data.format=imagefolder",
                    "task.channels=1", "task.image_size=[12,8]", "task.val_size=2")
    task.prepare(tmp_path, is_main=True)
    assert "broken.png" in caplog.text and "skipped" in caplog.text
    assert task.labels == ["boot", "shirt"] and task.size == (12, 8)
    assert sum(len(y) for _, y in (task.data["train"], task.data["validation"])) == 8
    assert task.data["test"][0].shape == (8, 1, 12, 8)


def test_train_predict_and_attention_through_run_py(fashion_root, tmp_path):
    args = ["task=vit", "model=tiny", "model.dropout=0", "trainer.batch_size=32", "trainer.lr=2e-3",
            "trainer.warmup_steps=10", "trainer.max_minutes=0", "trainer.max_steps=60", "trainer.eval_every=30",
            "task.val_size=100", "task.augment.crop_padding=0", "task.augment.hflip=0", f"data.root={fashion_root}",
            "task.stem=patch"]  # the convolutional stem's BatchNorm learns this block-on-noise toy far slower
    out = run_suite(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").glob("*")
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] >= 0.8, metrics  # the class is where the bright block is
    assert {"acc_t_shirt_top", "acc_ankle_boot"} <= set(metrics)

    x, y = fashion_like(10, np.random.default_rng(5))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(x[i]).save(images / f"{i}.png")
    out = run_suite("task=vit", "mode=predict", f"run_dir={run_dir}", f"image={images}",
                    f"attention_png={tmp_path / 'attn.png'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().split("\n")
    assert len(lines) == 4 and "attention maps of 3 image(s)" in lines[3]
    names = yaml.safe_load((ROOT / "conf/task/vit.yaml").read_text())["task"]["label_names"]
    for i, line in enumerate(lines[:3]):
        fields = line.split("\t")
        assert fields[0].endswith(f"{i}.png") and len(fields) == 6
        assert sum(float(f.rsplit(" ", 1)[1]) for f in fields[1:]) <= 1.001
    assert sum(line.split("\t")[1].rsplit(" ", 1)[0] == names[y[i]] for i, line in enumerate(lines[:3])) >= 2
    assert Image.open(tmp_path / "attn.png").size[0] > 28

    (tmp_path / "bad.png").write_text("not an image")
    out = run_suite("task=vit", "mode=predict", f"run_dir={run_dir}", f"image={tmp_path / 'bad.png'}", cwd=tmp_path)
    assert out.returncode == 2 and "cannot open image" in out.stderr and "Traceback" not in out.stderr
