"""The ViT task: image stem shapes, augmentation, learning, prediction from files, saved runs through transformers
(from_pretrained, trust_remote_code, the image-classification pipeline) and a run through run.py."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    BertConfig,
    BertModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
    pipeline,
)

import core  # noqa: F401  (registers the suite's models with the Auto classes)
from core.checkpoints import CheckpointError
from core.heads import SuiteForImageClassification
from core.image import attention_rollout, hold_out, image_processor, random_crop_flip
from core.stems import ConvPatches
from core.task import UserError, load_run, save_weights
from tasks.vit import Task
from tests.conftest import ROOT, run_suite, run_without_suite
from tests.test_checkpoints import jitter

TINY = ["model=tiny", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.n_layers=2", "model.dropout=0"]


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


def tiny_model(size=(28, 28), channels=1, classes=10, *overrides: str) -> tuple[Task, SuiteForImageClassification]:
    """A 32-wide, 2-layer model as the task builds it for images of this size and these channels."""
    task = vit_task(*TINY, *overrides)
    task.labels, task.size, task.channels = [f"c{i}" for i in range(classes)], tuple(size), channels
    return task, task.build_model()


@pytest.mark.parametrize("size, channels, pooling, position, stem", [
    ((24, 40), 3, "cls", "learned", "patch"),
    ((28, 28), 1, "mean", "sincos2d", "patch"),
    ((16, 8), 3, "mean", "learned", "patch"),
    ((24, 40), 3, "cls", "sincos2d", "conv"),
    ((28, 28), 1, "mean", "learned", "conv"),
])
def test_patch_embedding_shapes(size, channels, pooling, position, stem):
    _, model = tiny_model(size, channels, 7, f"task.pooling={pooling}", f"task.position={position}",
                          f"task.stem={stem}")
    images = torch.rand(5, channels, *size)
    tokens, mask = model.model.stem(pixel_values=images)
    patches = (size[0] // 4) * (size[1] // 4)
    assert tokens.shape == (5, patches + (pooling == "cls"), 32) and mask is None
    assert model.model.stem.grid == (size[0] // 4, size[1] // 4)
    assert isinstance(model.model.stem.patch, ConvPatches) == (stem == "conv")
    assert model(pixel_values=images)["logits"].shape == (5, 7)
    logits, maps = attention_rollout(model.eval(), images)
    assert maps.shape == (5, size[0] // 4, size[1] // 4) and logits.shape == (5, 7)
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(5))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_rollout_multiplies_each_layers_attention_recomputed_from_its_qkv(pooling):
    """The recorder's probabilities give the rollout that the layers' own Q and K give (the pre-reshape method)."""
    torch.manual_seed(0)
    _, model = tiny_model((16, 12), 1, 3, f"task.pooling={pooling}", "task.stem=patch")
    model.eval()
    captured = []
    for layer in model.model.encoder.layers:
        layer.attn.qkv.register_forward_hook(lambda mod, args, out: captured.append(out))
    images = torch.rand(3, 1, 16, 12)
    _, maps = attention_rollout(model, images)
    rollout = None
    for qkv in captured:
        B, T = qkv.shape[:2]
        q, k, _ = qkv.view(B, T, 3, 2, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
        a = 0.5 * (q @ k.transpose(-2, -1) / q.size(-1) ** 0.5).softmax(-1).mean(1) + 0.5 * torch.eye(T)
        rollout = a if rollout is None else a @ rollout
    want = rollout[:, 0, 1:] if pooling == "cls" else rollout.mean(1)
    want = want / want.sum(-1, keepdim=True)
    torch.testing.assert_close(maps, want.view(3, 4, 3))


def test_conv_stem_needs_a_power_of_two_patch():
    with pytest.raises(ValueError, match="power of 2"):
        ConvPatches(3, 1, 32)
    for bad in (["task.stem=conv", "task.patch_size=7"], ["task.stem=convolutional"]):  # from config: one line
        with pytest.raises(UserError, match="task.stem="):
            vit_task(*bad)


@pytest.mark.parametrize("override", ["task.pooling=max", "task.position=rope", "task.channels=2",
                                      "task.image_size=[28]", "task.augment.hflip=2", "task.val_size=0"])
def test_a_bad_task_setting_is_named_in_one_line(override):
    with pytest.raises(UserError, match=re.escape(override.split("=")[0] + "=")):
        vit_task(override)


def test_a_run_saved_with_either_stem_reloads_with_it(tmp_path):
    for stem in ("patch", "conv", None):  # None: saved before image_stem existed, when every run had patches
        task, model = tiny_model((28, 28), 1, 2, f"task.stem={stem or 'patch'}")
        run_dir = tmp_path / str(stem)
        save_weights(model.eval(), run_dir)
        if stem is None:
            config = json.loads((run_dir / "config.json").read_text())
            del config["image_stem"]
            (run_dir / "config.json").write_text(json.dumps(config))
        again = vit_task("task.stem=conv")  # the current default must not override what the run saved
        again.load_assets(run_dir)
        loaded = again.load_model(run_dir)
        assert isinstance(loaded.model.stem.patch, ConvPatches) == (stem == "conv")
        assert again.labels == ["c0", "c1"] and again.size == (28, 28) and again.channels == 1
        images = torch.rand(4, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(loaded(pixel_values=images)["logits"], model(pixel_values=images)["logits"])


def test_a_run_folder_without_a_readable_image_model_is_named_in_one_line(tmp_path):
    task = vit_task()
    with pytest.raises(UserError, match="config.json is missing, corrupt"):
        task.load_assets(tmp_path)  # no config.json
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json is missing, corrupt"):
        task.load_assets(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "transformer_suite", "stem": "text"}))
    with pytest.raises(UserError, match="holds no image model"):
        task.load_assets(tmp_path)


@pytest.mark.parametrize("stem, pooling, position", [("conv", "mean", "sincos2d"), ("patch", "cls", "learned")])
def test_a_trained_model_reloads_through_the_auto_class_to_identical_outputs(tmp_path, stem, pooling, position):
    torch.manual_seed(0)
    _, model = tiny_model((16, 12), 3, 4, f"task.stem={stem}", f"task.pooling={pooling}",
                          f"task.position={position}")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    images, labels = torch.rand(8, 3, 16, 12), torch.arange(8) % 4
    for _ in range(5):  # moves every weight off its initial value, BatchNorm's running statistics included
        model(pixel_values=images, labels=labels)["loss"].backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is SuiteForImageClassification and loaded.config.id2label[3] == "c3"
    with torch.no_grad():
        want, got = model(pixel_values=images)["logits"], loaded(pixel_values=images)["logits"]
    assert torch.equal(got, want) and not torch.allclose(want, torch.zeros_like(want))
    assert torch.equal(loaded.model.stem.pos, model.model.stem.pos)  # a fixed table is rebuilt, not left empty


def test_augmentation_keeps_labels(fashion_root, tmp_path):
    task = vit_task(f"data.root={fashion_root}", "task.val_size=100", "task.augment.randaugment=2",
                    "task.augment.erasing=0.5", "task.augment.crop_padding=4")
    task.prepare(tmp_path, is_main=True)
    x, y = task.data["train"]
    loader = task.dataloader("train", train=True)
    batch = loader.collate_fn([loader.dataset[i] for i in range(20)])
    assert torch.equal(batch["labels"], y[:20]) and batch["pixel_values"].shape == (20, 1, 28, 28)
    assert 0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1
    assert not torch.equal(batch["pixel_values"], x[:20].float() / 255)  # something was augmented

    mixed = vit_task(f"data.root={fashion_root}", "task.val_size=100", "task.augment.mixup=0.8",
                     "task.augment.cutmix=1.0", "trainer.batch_size=16")
    mixed.prepare(tmp_path, is_main=True)
    loader = mixed.dataloader("train", train=True)
    y = mixed.data["train"][1][:16]
    batch = loader.collate_fn([loader.dataset[i] for i in range(16)])
    soft = batch["labels"]
    assert soft.shape == (16, 10) and torch.allclose(soft.sum(1), torch.ones(16))
    assert batch["pixel_values"].shape == (16, 1, 28, 28)
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


def test_validation_hold_out_is_sized_relative_to_the_data():
    train, val = hold_out(600, 0.25)
    assert len(val) == 150 and len(train) == 450 and sorted(torch.cat([train, val]).tolist()) == list(range(600))
    assert len(hold_out(600, 100)[1]) == 100 and len(hold_out(8, 1 / 12)[1]) == 1  # a tiny folder keeps one back
    order = torch.randperm(60000, generator=torch.Generator().manual_seed(0))  # the default: Fashion-MNIST's split
    assert torch.equal(hold_out(60000, 0.0833333333)[1], order[:5000])  # of before (5,000 images), unchanged
    for n, size in ((5, 5), (1, 0.5)):
        with pytest.raises(UserError, match="task.val_size="):
            hold_out(n, size)


def test_tiny_model_overfits_a_few_images():
    torch.manual_seed(0)
    _, model = tiny_model((16, 16), 3, 4, "task.pooling=cls", "task.position=learned", "task.stem=patch",
                          "task.label_smoothing=0")
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(pixel_values=images, labels=labels)["loss"].item()
    for _ in range(80):
        loss = model(pixel_values=images, labels=labels)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    out = model(pixel_values=images, labels=labels)
    assert out["loss"].item() < 0.05 * first
    assert torch.equal(out["logits"].argmax(-1), labels)


def test_prediction_on_a_png_equals_prediction_on_the_tensor(tmp_path):
    torch.manual_seed(0)
    task, model = tiny_model((28, 28), 1, 10)
    task.processor = image_processor((28, 28))  # what prepare saves and load_assets reads back
    model.eval()
    torch.nn.init.normal_(model.classifier.linear.weight)  # the zero-initialised head would give every class 0.1
    pixels = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    Image.fromarray(pixels[0].numpy(), "L").save(tmp_path / "x.png")
    (line,) = task.predict(model, [tmp_path / "x.png"])
    with torch.no_grad():
        probs = model(pixel_values=pixels[None].float() / 255)["logits"].softmax(-1)[0]
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
    assert task.build_model().config.id2label == {0: "boot", 1: "shirt"}  # label names live in config.json


# -- a run through run.py, then its folder in transformers' hands ------------------------------------------------------


@pytest.fixture(scope="module")
def fashion_run(fashion_root, tmp_path_factory) -> Path:
    """A tiny model trained on the block-on-noise toy by `python run.py task=vit ...`: its run folder."""
    cwd = tmp_path_factory.mktemp("vit_run")
    args = ["task=vit", "model=tiny", "model.dropout=0", "trainer.batch_size=32", "trainer.lr=2e-3",
            "trainer.warmup_steps=10", "trainer.max_minutes=0", "trainer.max_steps=60", "trainer.eval_every=30",
            "task.val_size=100", "task.augment.crop_padding=0", "task.augment.hflip=0", f"data.root={fashion_root}",
            "task.stem=patch"]  # the convolutional stem's BatchNorm learns this block-on-noise toy far slower
    out = run_suite(*args, cwd=cwd, env={"OMP_NUM_THREADS": "1"})  # one thread: the fastest on a shared machine
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (cwd / "outputs" / "runs").glob("*")
    return run_dir


def probe_images(folder: Path) -> list[Path]:
    """Three toy images at the model's size, one greyscale and one colour image of other sizes."""
    folder.mkdir(exist_ok=True)
    x, _ = fashion_like(3, np.random.default_rng(5))
    for i in range(3):
        Image.fromarray(x[i]).save(folder / f"{i}.png")
    Image.fromarray(x[0]).resize((36, 40), Image.NEAREST).save(folder / "3_big.png")
    rgb = np.random.default_rng(6).integers(0, 255, (20, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(folder / "4_wide_rgb.png")
    return sorted(folder.glob("*.png"))


def test_train_predict_and_attention_through_run_py(fashion_run, tmp_path):
    metrics = json.loads((fashion_run / "metrics.json").read_text())["metrics"]
    assert metrics["accuracy"] >= 0.8, metrics  # the class is where the bright block is
    assert {"acc_t_shirt_top", "acc_ankle_boot"} <= set(metrics)
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in fashion_run.iterdir()}
    assert not (fashion_run / "labels.json").exists() and not (fashion_run / "image.json").exists()

    x, y = fashion_like(10, np.random.default_rng(5))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(x[i]).save(images / f"{i}.png")
    out = run_suite("task=vit", "mode=predict", f"run_dir={fashion_run}", f"image={images}",
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
    out = run_suite("task=vit", "mode=predict", f"run_dir={fashion_run}", f"image={tmp_path / 'bad.png'}", cwd=tmp_path)
    assert out.returncode == 2 and "cannot open image" in out.stderr and "Traceback" not in out.stderr


def test_the_image_pipeline_gives_the_labels_and_scores_of_mode_predict(fashion_run, tmp_path):
    files = probe_images(tmp_path / "probe")
    out = run_suite("task=vit", "mode=predict", f"run_dir={fashion_run}", f"image={tmp_path / 'probe'}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = [[f.rsplit(" ", 1) for f in line.split("\t")[1:]] for line in out.stdout.strip().split("\n")]
    pipe = pipeline("image-classification", model=str(fashion_run))
    assert pipe.image_processor.do_normalize is False  # the stem normalises: the processor only resizes and scales
    results = pipe([str(f) for f in files], top_k=5)
    assert len(printed) == len(results) == 5
    for line, result in zip(printed, results):
        assert [label for label, _ in line] == [r["label"] for r in result]
        assert [float(p) for _, p in line] == [round(r["score"], 3) for r in result]
    task, model = load_run(fashion_run)  # and to the last digit, from the same code path
    with torch.no_grad():
        _, probs = task.probabilities(model, files)
    for p, result in zip(probs, results):
        top = p.topk(5)
        assert [task.labels[i] for i in top.indices] == [r["label"] for r in result]
        torch.testing.assert_close(top.values, torch.tensor([r["score"] for r in result]), rtol=0, atol=1e-6)
    assert len({tuple(r["label"] for r in result) for result in results}) > 1  # the images are told apart


def test_a_copied_run_folder_loads_where_the_suite_is_not_installed(fashion_run, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(fashion_run, copy, ignore=shutil.ignore_patterns("checkpoints", "config.yaml", "*.log"))
    files = probe_images(tmp_path / "probe")
    pixels = torch.rand(4, 1, 28, 28)
    torch.save(pixels, tmp_path / "pixels.pt")
    code = f"""
import json, torch
from transformers import AutoModelForImageClassification, pipeline
model = AutoModelForImageClassification.from_pretrained({str(copy)!r}, trust_remote_code=True).eval()
assert "transformers_modules" in type(model).__module__, type(model).__module__
with torch.no_grad():
    torch.save(model(pixel_values=torch.load("pixels.pt"))["logits"], "logits.pt")
pipe = pipeline("image-classification", model={str(copy)!r}, trust_remote_code=True)
json.dump(pipe({[str(f) for f in files]!r}, top_k=3), open("pipeline.json", "w"))
"""
    out = run_without_suite(code, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    _, model = load_run(fashion_run)
    with torch.no_grad():
        want = model(pixel_values=pixels)["logits"]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), want, rtol=1e-5, atol=1e-6)
    here = pipeline("image-classification", model=str(fashion_run))([str(f) for f in files], top_k=3)
    there = json.loads((tmp_path / "pipeline.json").read_text())
    assert [[r["label"] for r in x] for x in there] == [[r["label"] for r in x] for x in here]
    for x, y in zip(there, here):
        assert [r["score"] for r in x] == pytest.approx([r["score"] for r in y], abs=1e-6)


# -- model.pretrained: a ViT checkpoint fine-tuned with its own preprocessing -----------------------------------------

MEAN, STD = [0.3, 0.45, 0.6], [0.2, 0.25, 0.3]  # not ViT's default 0.5: the task must read them from the processor


def tiny_vit_checkpoint(folder: Path, processor: bool = True) -> Path:
    """A jittered random ViT (32x32 RGB, 8-pixel patches, 32 wide) saved as a Hub checkpoint, with its image
    processor (non-default statistics) unless `processor` is False."""
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64)
    jitter(ViTModel(config, add_pooling_layer=False)).save_pretrained(folder)
    if processor:
        ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory) -> Path:
    return tiny_vit_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny_vit")


def test_a_vit_checkpoint_brings_its_preprocessing_and_matches_transformers(fashion_root, vit_checkpoint, tmp_path):
    """Through the task (prepare, build_model, its test loader) the 28x28 greyscale images become the checkpoint's
    32x32 RGB input, normalised with its processor's statistics and pooled at the class token: the encoder states
    equal ViTModel's on what the checkpoint's own ViTImageProcessor makes of the same images (as RGB files, as the
    image pipeline hands them over)."""
    task = vit_task(f"data.root={fashion_root}", "task.val_size=100", f"model.pretrained={vit_checkpoint}")
    task.prepare(tmp_path, is_main=True)
    model = task.build_model().eval()
    c = model.config
    assert (task.size, task.channels, c.image_size, c.num_channels, c.patch_size) == ((32, 32), 3, [32, 32], 3, 8)
    assert (c.image_stem, c.patch_position, c.cls_token, c.pooling) == ("patch", "learned", True, "cls")
    assert c.pixel_mean == pytest.approx(MEAN) and c.pixel_std == pytest.approx(STD)
    batch = next(iter(task.dataloader("test", train=False)))
    x = np.load(fashion_root / "fashion_mnist" / "fashion_mnist.npz")["x_test"][: len(batch["labels"])]
    inputs = AutoImageProcessor.from_pretrained(vit_checkpoint)([Image.fromarray(a).convert("RGB") for a in x],
                                                                return_tensors="pt")
    theirs = ViTModel.from_pretrained(vit_checkpoint, add_pooling_layer=False).eval()
    torch.nn.init.normal_(model.classifier.linear.weight)  # the zero-initialised head would hide the pooling
    with torch.no_grad():
        ours = model.model(pixel_values=batch["pixel_values"]).last_hidden_state
        want = theirs(**inputs).last_hidden_state
        logits = model(pixel_values=batch["pixel_values"]).logits
    d = (ours - want).abs().max().item()
    print(f"vit task vs ViTModel + ViTImageProcessor: max |diff| = {d:.2e}")
    assert ours.shape == (len(x), 1 + 16, 32) and d <= 1e-5
    torch.testing.assert_close(logits, model.classifier.linear(ours[:, 0]))  # ViTForImageClassification's pooling


def test_the_checkpoint_resamples_its_positions_to_a_chosen_image_size(fashion_root, vit_checkpoint, tmp_path):
    task = vit_task(f"data.root={fashion_root}", "task.val_size=100", f"model.pretrained={vit_checkpoint}",
                    "task.image_size=48", "task.pooling=mean")  # mean pooling is the head's choice: allowed
    task.prepare(tmp_path, is_main=True)
    model = task.build_model()
    assert task.data["test"][0].shape[1:] == (3, 48, 48) and model.config.image_size == [48, 48]
    assert model.model.stem.pos.shape == (1, 1 + 36, 32) and model.config.pooling == "mean"


@pytest.mark.parametrize("override, says", [
    ("task.image_size=36", "36x36 images do not divide into its 8-pixel patches"),
    ("task.patch_size=4", "task.patch_size=4 contradicts it"),
    ("task.stem=conv", "task.stem=conv contradicts it"),
    ("task.position=sincos2d", "task.position=sincos2d contradicts it"),
    ("task.channels=1", "task.channels=1 contradicts it"),
])
def test_what_a_vit_checkpoint_cannot_take_is_refused_before_the_data_is_read(vit_checkpoint, tmp_path, override,
                                                                              says):
    task = vit_task(f"data.root={tmp_path / 'no_data_here'}", f"model.pretrained={vit_checkpoint}", override)
    with pytest.raises(CheckpointError) as e:
        task.prepare(tmp_path, is_main=True)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_checkpoint_without_a_processor_takes_vits_default_normalisation(tmp_path, caplog):
    folder = tiny_vit_checkpoint(tmp_path / "bare", processor=False)
    task = vit_task(f"model.pretrained={folder}")
    assert task.stem_config["image_size"] == [32, 32] and task.stem_config["patch_size"] == 8
    assert "no preprocessor_config.json" in caplog.text and "mean 0.5, std 0.5" in caplog.text
    assert task.checkpoint.fields["pixel_mean"] == [0.5] * 3 == task.checkpoint.fields["pixel_std"]


def test_another_family_is_refused_in_one_line_through_run_py(tmp_path):
    BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(tmp_path / "bert")
    out = run_suite("task=vit", f"model.pretrained={tmp_path / 'bert'}", f"data.root={tmp_path / 'no_data_here'}",
                    cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "BERT-family" in errors[0] and "reads image" in errors[0] and "ViT" in errors[0]
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())


@pytest.fixture(scope="module")
def pretrained_run(fashion_root, vit_checkpoint, tmp_path_factory) -> Path:
    """`python run.py task=vit model.pretrained=<the tiny checkpoint>` for a few steps: its run folder."""
    cwd = tmp_path_factory.mktemp("vit_pretrained_run")
    args = ["task=vit", f"model.pretrained={vit_checkpoint}", f"data.root={fashion_root}", "task.val_size=64",
            "trainer.batch_size=32", "trainer.max_minutes=0", "trainer.max_steps=4", "trainer.warmup_steps=1"]
    out = run_suite(*args, cwd=cwd, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (cwd / "outputs" / "runs").glob("*")
    return run_dir


def test_a_fine_tuned_vit_checkpoint_is_a_transformers_image_classifier(pretrained_run, vit_checkpoint, tmp_path):
    saved = json.loads((pretrained_run / "metrics.json").read_text())
    assert saved["model"] == "tiny-vit+pretrained" and saved["steps"] == 4, saved
    model = AutoModelForImageClassification.from_pretrained(pretrained_run).eval()
    assert type(model) is SuiteForImageClassification and model.config.pixel_mean == pytest.approx(MEAN)
    start = ViTModel.from_pretrained(vit_checkpoint, add_pooling_layer=False).embeddings.patch_embeddings.projection
    assert not torch.equal(model.model.stem.patch.weight, start.weight)  # fine-tuned, not merely copied
    files = probe_images(tmp_path / "probe")
    pipe = pipeline("image-classification", model=str(pretrained_run))
    results = pipe([str(f) for f in files], top_k=3)
    task, loaded = load_run(pretrained_run)  # what mode=predict computes
    with torch.no_grad():
        pixels, probs = task.probabilities(loaded, files)
        logits = model(pixel_values=pixels).logits
    assert pixels.shape == (len(files), 3, 32, 32)
    torch.testing.assert_close(logits.softmax(-1), probs, rtol=0, atol=1e-6)
    for p, result in zip(probs, results):
        top = p.topk(3)
        assert [task.labels[i] for i in top.indices] == [r["label"] for r in result]
        torch.testing.assert_close(top.values, torch.tensor([r["score"] for r in result]), rtol=0, atol=1e-6)
