"""mode=attention: the core's recorder keeps the paper's probabilities, and every task draws a picture of a saved run.

Each tiny run trains for a few steps only: the pictures need not mean anything here, they must exist and not be blank.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import transformer
from core.task import Task, UserError
from core.transformer import Encoder, EncoderDecoder, TransformerConfig, record_attention, reference_attention
from tests.conftest import run_suite, write_sst2
from tests.test_asr import write_audiofolder
from tests.test_forecasting import write_ett
from tests.test_ner import write_conll
from tests.test_train import compose_cfg
from tests.test_translation import write_multi30k
from tests.test_vit import write_fashion_npz

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models run fastest on one thread of this shared machine
FEW_STEPS = ["model=tiny", "model.d_model=32", "model.d_ff=64", "trainer.max_steps=3", "trainer.max_minutes=0",
             "trainer.warmup_steps=1", "trainer.eval_every=0", "trainer.log_every=1", "trainer.batch_size=8"]


def captured_outputs(module: torch.nn.Module) -> list[torch.Tensor]:
    """Every output of `module` while the list is alive (a forward hook)."""
    outputs = []
    module.register_forward_hook(lambda mod, args, out: outputs.append(out.detach()))
    return outputs


def test_recorded_probs_are_the_reference_softmax_and_ignore_padding():
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=32, n_heads=4, d_ff=64, n_layers=2, dropout=0.0)
    encoder = Encoder(cfg).eval()
    qkv = captured_outputs(encoder.layers[1].attn.qkv)
    x, padding = torch.randn(2, 7, 32), torch.ones(2, 7, dtype=torch.bool)
    padding[1, 4:] = False  # the second sequence has 4 real tokens
    with record_attention() as records:
        encoder(x, padding)
    assert [r.kind for r in records] == ["self", "self"] and transformer._recorded is None
    probs = records[1].probs  # (B, H, T, S)
    q, k, v = qkv[0].view(2, 7, 3, 4, 8).permute(2, 0, 3, 1, 4)
    mask = padding[:, None, None, :]
    torch.testing.assert_close(probs @ v, reference_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 7))
    assert (probs[1, :, :, 4:] == 0).all() and (probs[1, :, :, :4] > 0).all()


def test_recorder_tells_self_from_cross_and_matches_the_fast_path_with_rope_and_causality():
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=32, n_heads=2, d_ff=64, n_layers=1, n_decoder_layers=2, dropout=0.0,
                            position="rope")
    model = EncoderDecoder(cfg).eval()
    layer = model.decoder.layers[1]
    self_in = captured_outputs(layer.self_attn.qkv)
    heads_out = []  # what attend returned, heads concatenated: the input of each output projection
    for proj in (layer.self_attn.out, layer.cross_attn.out):
        proj.register_forward_pre_hook(lambda mod, args: heads_out.append(args[0].detach()))
    cross_kv = captured_outputs(layer.cross_attn.kv)
    src, tgt = torch.randn(1, 6, 32), torch.randn(1, 5, 32)
    with record_attention() as records:
        model(src, tgt)
    assert [r.kind for r in records] == ["self", "self", "cross", "self", "cross"]
    causal, cross = records[3].probs, records[4].probs  # the last decoder layer
    assert causal.shape == (1, 2, 5, 5) and cross.shape == (1, 2, 5, 6)
    assert (causal.triu(1) == 0).all() and torch.allclose(cross.sum(-1), torch.ones(1, 2, 5))
    v_self = self_in[0].view(1, 5, 3, 2, 16)[:, :, 2].transpose(1, 2)  # (B, H, T, Dh): rope leaves v alone
    v_cross = cross_kv[0].view(1, 6, 2, 2, 16)[:, :, 1].transpose(1, 2)
    for probs, v, out in ((causal, v_self, heads_out[0]), (cross, v_cross, heads_out[1])):
        torch.testing.assert_close((probs @ v).transpose(1, 2).reshape(1, 5, 32), out, atol=1e-5, rtol=1e-5)


def test_a_task_without_a_picture_says_so(tmp_path):
    with pytest.raises(UserError, match="task sentiment has no attention picture"):
        Task(compose_cfg("task=sentiment")).attention(None, None, tmp_path / "a.png")


def test_attention_needs_a_saved_run(tmp_path):
    out = run_suite("mode=attention", cwd=tmp_path)
    assert out.returncode == 2 and "error: mode=attention needs run_dir=<a saved run folder>" in out.stderr
    out = run_suite("mode=attention", f"run_dir={tmp_path / 'nothing'}", cwd=tmp_path)
    assert out.returncode == 2 and "is not a saved run" in out.stderr and "Traceback" not in out.stderr


def assert_picture(png: Path) -> None:
    """The PNG opens and is not one flat colour."""
    with Image.open(png) as img:
        pixels = np.asarray(img.convert("L"), dtype=np.float32)
    assert pixels.size > 10_000 and pixels.std() > 10, (png, pixels.shape, pixels.std())


def train_then_draw(tmp_path: Path, args: list[str], *draw_args: str) -> Path:
    """Train a few steps through run.py, then `mode=attention` on that run (no task= given: the run says which)."""
    out = run_suite(*args, *FEW_STEPS, cwd=tmp_path, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").glob("*")
    out = run_suite("mode=attention", f"run_dir={run_dir}", *draw_args, cwd=tmp_path, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-3000:]
    png = run_dir / "attention.png" if not draw_args else Path(draw_args[0].split("=", 1)[1])
    assert out.stdout.strip() == f"attention picture written to {png.resolve()}"  # logs went to stderr
    assert_picture(png)
    return run_dir


def test_sentiment_picture_of_a_given_text(tmp_path):
    write_sst2(tmp_path / "data", sizes=(32, 8, 8))
    run_dir = train_then_draw(tmp_path, ["task=sentiment", "task.vocab_size=100", f"data.root={tmp_path / 'data'}"])
    out = run_suite("mode=attention", "task=sentiment", f"run_dir={run_dir}", "text=a dull film",
                    f"out={tmp_path / 'text.png'}", cwd=tmp_path, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_picture(tmp_path / "text.png")
    out = run_suite("mode=attention", "task=vit", f"run_dir={run_dir}", cwd=tmp_path)
    assert out.returncode == 2 and "holds a sentiment model, not vit" in out.stderr


def test_translation_alignment_picture(tmp_path):
    write_multi30k(tmp_path / "data", n_train=24)
    train_then_draw(tmp_path, ["task=translation", f"data.root={tmp_path / 'data'}", "task.vocab_size=120",
                               "task.generation.max_new_tokens=6", "task.generation.num_beams=1"],
                    f"out={tmp_path / 'alignment.png'}")


def test_ner_picture(tmp_path):
    write_conll(tmp_path / "data", sizes=(16, 4, 4))
    train_then_draw(tmp_path, ["task=ner", "task.vocab_size=100", f"data.root={tmp_path / 'data'}"])


def test_vit_picture(tmp_path):
    write_fashion_npz(tmp_path / "data", n_train=60, n_test=10)
    train_then_draw(tmp_path, ["task=vit", "task.val_size=10", f"data.root={tmp_path / 'data'}"])


def test_asr_picture(tmp_path):
    write_audiofolder(tmp_path / "data", per_word=4)
    train_then_draw(tmp_path, ["task=asr", f"data.root={tmp_path / 'data'}", "data.dir=digits", "task.val_size=2",
                               "task.stem_channels=4", "task.connected.train=2", "task.connected.validation=1",
                               "task.connected.test=1"])


def test_forecasting_picture(tmp_path):
    write_ett(tmp_path / "data" / "etth1" / "ETTh1.csv", 400)
    train_then_draw(tmp_path, ["task=forecasting", f"data.root={tmp_path / 'data'}", "data.borders=null",
                               "task.lookback=48", "task.horizon=12"])
