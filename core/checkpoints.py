"""Published checkpoints in the suite's own core: BERT-family encoders, ViT, Whisper's encoder, Marian and BART.

As nanoGPT's `GPT.from_pretrained` loads GPT-2 into its own model, this module reads a transformers checkpoint (a
local folder, or a Hub id for users online) and gives (a) the `SuiteConfig` fields that make the suite's stem and
core the same network and (b) the checkpoint's tensors under the suite's names, q/k/v fused into the core's `qkv`
and cross-attention's k/v into `kv`. The names live here, one function per family; `core/transformer.py` stays the
paper. The suite's outputs match transformers' to 1e-5 in float32 (tests/test_checkpoints.py).

    ckpt = open_checkpoint("bert-base-uncased")     # or a folder: config.json + model.safetensors (+ tokenizer)
    model = ckpt.build(SuiteForSequenceClassification, task_fields)   # the task's head, the checkpoint's weights
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, GenerationMixin, PreTrainedConfig

from core.modeling import SuiteConfig, SuiteModel
from core.task import UserError

Tensors = dict[str, torch.Tensor]
HUB_FILES = ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json",
             "merges.txt", "source.spm", "target.spm", "spiece.model", "sentencepiece.bpe.model", "normalizer.json",
             "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}  # checkpoint's name -> the core's
CORE = {"bias": True, "causal": False, "position_offset": 0, "embed_norm": False, "sinusoid_layout": "interleaved"}
#       the core's options every family below sets unless it says otherwise (a model group's own never leak in)


class CheckpointError(UserError):
    """A checkpoint the suite cannot load, or one that does not fit the task: one line naming what and why."""


# -- reading a checkpoint's tensors ---------------------------------------------------------------------------------


class Weights:
    """A checkpoint's tensors by name, without the model-class prefix (`bert.`, `model.`). A family's mapping takes
    each tensor it uses, so that what is left can be checked against what the family knowingly drops."""

    def __init__(self, tensors: Tensors, prefixes: tuple[str, ...]):
        self.tensors = {}
        for name, t in tensors.items():
            name = next((name[len(p):] for p in prefixes if name.startswith(p)), name)
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            self.tensors[name] = t.float() if t.is_floating_point() else t

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise CheckpointError(f"the checkpoint has no tensor {name!r}: its weights do not match its config.json")
        return self.tensors.pop(name)

    def linear(self, src: str, dst: str) -> Tensors:
        """weight and bias of a linear layer, convolution or LayerNorm (bias only when the checkpoint has one)."""
        out = {f"{dst}.weight": self(f"{src}.weight")}
        if f"{src}.bias" in self.tensors:
            out[f"{dst}.bias"] = self(f"{src}.bias")
        return out

    def fused(self, srcs: list[str], dst: str) -> Tensors:
        """Separate projections stacked into one (q, k, v -> `qkv`; k, v -> `kv`), in the core's order; a bias the
        checkpoint lacks (Whisper's k_proj, ViT's with qkv_bias=false) is a zero bias, which computes the same."""
        weights = [self(f"{s}.weight") for s in srcs]
        biases = [self(f"{s}.bias") if f"{s}.bias" in self.tensors else torch.zeros(len(w)) for s, w in
                  zip(srcs, weights)]
        return {f"{dst}.weight": torch.cat(weights), f"{dst}.bias": torch.cat(biases)}

    def left(self, dropped: tuple[str, ...]) -> list[str]:
        """Tensors no mapping took and that the family does not knowingly drop."""
        return sorted(n for n in self.tensors if not n.startswith(dropped))


def read_tensors(folder: Path) -> Tensors:
    """Every tensor of model.safetensors (sharded or not) or pytorch_model.bin, on the CPU."""
    index = folder / "model.safetensors.index.json"
    try:
        if (folder / "model.safetensors").is_file():
            return load_file(folder / "model.safetensors")
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
        if (folder / "pytorch_model.bin").is_file():
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"the weights in {folder} are corrupt ({str(e).splitlines()[0]})") from None
    raise CheckpointError(f"{folder} has config.json but no model.safetensors or pytorch_model.bin")


# -- one function per family: the fields that rebuild it, then its names -> the suite's -----------------------------


def activation(hf: PreTrainedConfig, name: str) -> str:
    act = getattr(hf, name)
    if act not in ACTIVATIONS:
        raise CheckpointError(f"its activation is {name}={act!r}; the suite's core has {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def bert_fields(hf: PreTrainedConfig) -> dict:
    """BERT (and same-architecture checkpoints: MiniLM, ...): post-norm, learned positions, embedding LayerNorm,
    token types, no embedding scaling."""
    if getattr(hf, "position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"its position_embedding_type is {hf.position_embedding_type!r}; the suite maps "
                              f"'absolute' (learned) positions")
    return {"d_model": hf.hidden_size, "n_heads": hf.num_attention_heads, "d_ff": hf.intermediate_size,
            "n_layers": hf.num_hidden_layers, "activation": activation(hf, "hidden_act"), "norm_first": False,
            "position": "learned", "max_len": hf.max_position_embeddings, "norm_eps": hf.layer_norm_eps,
            "embed_norm": True, "stem": "text", "vocab_size": hf.vocab_size, "type_vocab_size": hf.type_vocab_size,
            "embed_scale": False, "pad_token_id": hf.pad_token_id}


def bert_weights(w: Weights, hf: PreTrainedConfig, config: SuiteConfig) -> Tensors:
    """BertModel's names (`bert.` dropped) -> SuiteModel's."""
    sd = {"stem.tokens.weight": w("embeddings.word_embeddings.weight"),
          "stem.types.weight": w("embeddings.token_type_embeddings.weight"),
          "encoder.embed.positions.table": w("embeddings.position_embeddings.weight"),
          **w.linear("embeddings.LayerNorm", "encoder.embed.norm")}
    return sd | bert_layers(w, hf.num_hidden_layers, "attention.self", "attention.output.LayerNorm", "output.LayerNorm")


def bert_layers(w, n: int, attention: str, norm1: str, norm2: str) -> dict:
    """The `n` layers of a BERT-style encoder (BERT, ViT: `encoder.layer.{i}`), q/k/v under `attention` fused into
    the core's qkv; the two LayerNorms are named `norm1` (around attention) and `norm2` (around the FFN)."""
    sd = {}
    for i in range(n):
        src, dst = f"encoder.layer.{i}", f"encoder.layers.{i}"
        sd |= w.fused([f"{src}.{attention}.{p}" for p in ("query", "key", "value")], f"{dst}.attn.qkv")
        sd |= w.linear(f"{src}.attention.output.dense", f"{dst}.attn.out")
        sd |= w.linear(f"{src}.{norm1}", f"{dst}.norm1")
        sd |= w.linear(f"{src}.intermediate.dense", f"{dst}.ff.up")
        sd |= w.linear(f"{src}.output.dense", f"{dst}.ff.down")
        sd |= w.linear(f"{src}.{norm2}", f"{dst}.norm2")
    return sd


def pair(x) -> list[int]:
    return [int(x), int(x)] if isinstance(x, int) else [int(v) for v in x]


def vit_fields(hf: PreTrainedConfig) -> dict:
    """ViT: pre-norm, a class token, learned positions (its row included) added by the image stem."""
    grid = [s // hf.patch_size for s in pair(hf.image_size)]
    return {"d_model": hf.hidden_size, "n_heads": hf.num_attention_heads, "d_ff": hf.intermediate_size,
            "n_layers": hf.num_hidden_layers, "activation": activation(hf, "hidden_act"), "norm_first": True,
            "position": "none", "max_len": grid[0] * grid[1] + 1, "norm_eps": hf.layer_norm_eps, "stem": "image",
            "image_size": pair(hf.image_size),
            "num_channels": hf.num_channels, "patch_size": hf.patch_size, "image_stem": "patch",
            "patch_position": "learned", "cls_token": True}


def resample_positions(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """A (1, 1 + h*w, D) table with a class-token row, bicubically resized to another grid of patches, as
    transformers' ViT does with `interpolate_pos_encoding=True` (and timm's `resample_abs_pos_embed`)."""
    if tuple(old) == tuple(new):
        return table
    D = table.size(-1)
    patches = table[:, 1:].reshape(1, *old, D).permute(0, 3, 1, 2)  # (1, D, h, w)
    patches = F.interpolate(patches, size=tuple(new), mode="bicubic", align_corners=False)
    return torch.cat([table[:, :1], patches.permute(0, 2, 3, 1).reshape(1, -1, D)], dim=1)


def vit_weights(w: Weights, hf: PreTrainedConfig, config: SuiteConfig) -> Tensors:
    """ViTModel's names (`vit.` dropped) -> SuiteModel's; positions resized when the task's images are another size."""
    old = [s // hf.patch_size for s in pair(hf.image_size)]
    new = [s // config.patch_size for s in config.image_size]
    sd = {"stem.cls": w("embeddings.cls_token"),
          "stem.pos": resample_positions(w("embeddings.position_embeddings"), old, new),
          **w.linear("embeddings.patch_embeddings.projection", "stem.patch"),
          **w.linear("layernorm", "encoder.norm")}
    return sd | bert_layers(w, hf.num_hidden_layers, "attention.attention", "layernorm_before", "layernorm_after")


def whisper_fields(hf: PreTrainedConfig) -> dict:
    """Whisper's encoder: two 1-D convolutions, a fixed sinusoid table stored with the weights (loaded as a learned
    one), pre-norm layers."""
    return {"d_model": hf.d_model, "n_heads": hf.encoder_attention_heads, "d_ff": hf.encoder_ffn_dim,
            "n_layers": hf.encoder_layers, "activation": activation(hf, "activation_function"), "norm_first": True,
            "position": "learned", "max_len": hf.max_source_positions, "norm_eps": 1e-5, "stem": "audio",
            "audio_stem": "conv1d", "n_mels": hf.num_mel_bins}


def bart_layer(w: Weights, src: str, dst: str, decoder: bool) -> Tensors:
    """One layer under fairseq's names (Whisper, Marian and BART share them) -> the core's Encoder/DecoderLayer."""
    attn = "self_attn" if decoder else "attn"
    sd = {**w.fused([f"{src}.self_attn.{p}_proj" for p in "qkv"], f"{dst}.{attn}.qkv"),
          **w.linear(f"{src}.self_attn.out_proj", f"{dst}.{attn}.out"),
          **w.linear(f"{src}.self_attn_layer_norm", f"{dst}.norm1"),
          **w.linear(f"{src}.fc1", f"{dst}.ff.up"), **w.linear(f"{src}.fc2", f"{dst}.ff.down"),
          **w.linear(f"{src}.final_layer_norm", f"{dst}.norm3" if decoder else f"{dst}.norm2")}
    if decoder:
        sd |= w.linear(f"{src}.encoder_attn.q_proj", f"{dst}.cross_attn.q")
        sd |= w.fused([f"{src}.encoder_attn.{p}_proj" for p in "kv"], f"{dst}.cross_attn.kv")
        sd |= w.linear(f"{src}.encoder_attn.out_proj", f"{dst}.cross_attn.out")
        sd |= w.linear(f"{src}.encoder_attn_layer_norm", f"{dst}.norm2")
    return sd


def whisper_weights(w: Weights, hf: PreTrainedConfig, config: SuiteConfig) -> Tensors:
    """WhisperModel's encoder names (`model.` dropped) -> SuiteModel's."""
    sd = {**w.linear("encoder.conv1", "stem.conv1"), **w.linear("encoder.conv2", "stem.conv2"),
          "encoder.embed.positions.table": w("encoder.embed_positions.weight"),
          **w.linear("encoder.layer_norm", "encoder.norm")}
    for i in range(hf.encoder_layers):
        sd |= bart_layer(w, f"encoder.layers.{i}", f"encoder.layers.{i}", decoder=False)
    return sd


def seq2seq_fields(hf: PreTrainedConfig) -> dict:
    """What Marian and BART share: post-norm layers under fairseq's names, one embedding for source and target
    tokens (and output, when tied), a fixed bias on the logits."""
    target_vocab = getattr(hf, "decoder_vocab_size", None) or hf.vocab_size
    if not getattr(hf, "share_encoder_decoder_embeddings", True) or target_vocab != hf.vocab_size:
        raise CheckpointError("it has separate source and target vocabularies; the suite's seq2seq head shares one "
                              "embedding (share_encoder_decoder_embeddings=true)")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if getattr(hf, a) != getattr(hf, b):
            raise CheckpointError(f"{a}={getattr(hf, a)} differs from {b}={getattr(hf, b)}; the suite's core has one "
                                  f"n_heads and d_ff for both sides")
    if getattr(hf, "normalize_before", False) or getattr(hf, "add_final_layer_norm", False):
        raise CheckpointError("its layers are pre-norm (normalize_before/add_final_layer_norm, as mBART's); the suite "
                              "maps post-norm Marian and BART")
    return {"d_model": hf.d_model, "n_heads": hf.encoder_attention_heads, "d_ff": hf.encoder_ffn_dim,
            "n_layers": hf.encoder_layers, "n_decoder_layers": hf.decoder_layers,
            "activation": activation(hf, "activation_function"), "norm_first": False, "max_len":
            hf.max_position_embeddings, "norm_eps": 1e-5, "vocab_size": hf.vocab_size,
            "type_vocab_size": 0, "embed_scale": bool(hf.scale_embedding), "pad_token_id": hf.pad_token_id,
            "bos_token_id": hf.bos_token_id, "eos_token_id": hf.eos_token_id,
            "decoder_start_token_id": hf.decoder_start_token_id, "final_logits_bias": True,
            "tie_word_embeddings": hf.tie_word_embeddings}


def marian_fields(hf: PreTrainedConfig) -> dict:
    """Marian: fixed sinusoids laid out as [sines | cosines], no embedding LayerNorm, SiLU ("swish")."""
    return {**seq2seq_fields(hf), "position": "sinusoidal", "sinusoid_layout": "halves"}


def bart_fields(hf: PreTrainedConfig) -> dict:
    """BART: learned positions from row 2 of their table (fairseq's offset), LayerNorm on the embeddings."""
    return {**seq2seq_fields(hf), "position": "learned", "position_offset": 2, "embed_norm": True}


def seq2seq_weights(w: Weights, hf: PreTrainedConfig, config: SuiteConfig) -> Tensors:
    """MarianMTModel's / BartForConditionalGeneration's layers, embedding, output matrix and logits bias (`model.`
    dropped) -> SuiteForConditionalGeneration's."""
    shared = w("shared.weight" if "shared.weight" in w.tensors else "encoder.embed_tokens.weight")
    bias = w("final_logits_bias") if "final_logits_bias" in w.tensors else torch.zeros(1, len(shared))
    sd = {"shared.tokens.weight": shared, "final_logits_bias": bias,
          "lm_head.weight": shared if hf.tie_word_embeddings else w("lm_head.weight")}
    for side, n in (("encoder", hf.encoder_layers), ("decoder", hf.decoder_layers)):
        for i in range(n):
            sd |= bart_layer(w, f"{side}.layers.{i}", f"{side}.layers.{i}", decoder=side == "decoder")
    return sd


def marian_weights(w: Weights, hf: PreTrainedConfig, config: SuiteConfig) -> Tensors:
    """Marian: the layers and embeddings; its sinusoid tables are computed by the core, not loaded."""
    return seq2seq_weights(w, hf, config)


def bart_weights(w: Weights, hf: PreTrainedConfig, config: SuiteConfig) -> Tensors:
    """BART: the layers and embeddings, and each side's position table and embedding LayerNorm."""
    sd = seq2seq_weights(w, hf, config)
    for side in ("encoder", "decoder"):
        sd[f"{side}.embed.positions.table"] = w(f"{side}.embed_positions.weight")
        sd |= w.linear(f"{side}.layernorm_embedding", f"{side}.embed.norm")
    return sd


# -- the families, and a checkpoint opened for a task ----------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """How one architecture maps onto the suite."""

    label: str  # how messages name it
    kind: str  # what the task's model reads: text | image | audio | seq2seq
    fields: Callable[[PreTrainedConfig], dict]  # the SuiteConfig fields that rebuild the network
    weights: Callable[[Weights, PreTrainedConfig, SuiteConfig], Tensors]  # its names -> the suite's
    prefixes: tuple[str, ...]  # the model classes' prefix, dropped from every name
    dropped: tuple[str, ...]  # tensors the suite knowingly leaves out (poolers, other heads, Whisper's decoder, ...)


FAMILIES = {
    "bert": Family("BERT-family encoder", "text", bert_fields, bert_weights, ("bert.",),
                   ("pooler.", "cls.", "classifier.", "qa_outputs.", "embeddings.position_ids")),
    "vit": Family("ViT", "image", vit_fields, vit_weights, ("vit.",),
                  ("pooler.", "classifier.", "embeddings.mask_token")),
    "whisper": Family("Whisper encoder", "audio", whisper_fields, whisper_weights, ("model.",),
                      ("decoder.", "proj_out.", "projector.", "classifier.", "layer_weights")),
    "marian": Family("Marian", "seq2seq", marian_fields, marian_weights, ("model.",),
                     ("encoder.embed_positions.", "decoder.embed_positions.", "encoder.embed_tokens.",
                      "decoder.embed_tokens.", "lm_head.")),
    "bart": Family("BART", "seq2seq", bart_fields, bart_weights, ("model.",),
                   ("encoder.embed_tokens.", "decoder.embed_tokens.", "lm_head.", "classification_head.")),
}
SUPPORTED = "BERT-family encoders (bert), ViT (vit), Whisper (whisper), Marian (marian), BART (bart)"
NEEDS = {"text": "a BERT-family encoder (bert)", "image": "ViT (vit)", "audio": "Whisper (whisper)",
         "seq2seq": "Marian (marian) or BART (bart)"}
READS = {"input_ids": "text", "pixel_values": "image", "input_features": "audio"}


def task_kind(head: type[nn.Module], fields: dict) -> str:
    """What a task's model reads: seq2seq for a generating head, else its stem (text | image | audio)."""
    if issubclass(head, GenerationMixin):
        return "seq2seq"
    return fields.get("stem") or READS.get(getattr(head, "main_input_name", ""), "text")


@dataclass
class Checkpoint:
    """A published checkpoint opened from its folder: its family, the fields that rebuild it, its files."""

    source: str  # what the user gave: a folder or a Hub id
    folder: Path  # the local folder: config.json, weights, tokenizer or preprocessor files
    family: str  # a key of FAMILIES
    hf_config: PreTrainedConfig  # the checkpoint's own config, as transformers reads it
    fields: dict  # SuiteConfig fields that make the suite's core and stem this network
    preprocessor: dict = field(default_factory=dict)  # preprocessor_config.json (image statistics, log-mel set-up)

    @property
    def kind(self) -> str:
        return FAMILIES[self.family].kind

    @property
    def name(self) -> str:
        """A short name for the leaderboard: the Hub id's last part or the folder's (`all-minilm-l6-v2`)."""
        parts = [p for p in Path(self.source).parts if p not in ("model", "models", "checkpoint", "snapshots")
                 and not re.fullmatch(r"[0-9a-f]{40}", p)]
        return (parts[-1] if parts else self.family).lower().replace("_", "-")

    def refuse(self, detail: str) -> CheckpointError:
        return CheckpointError(f"model.pretrained={self.source}: {FAMILIES[self.family].label} checkpoint: {detail}")

    def fit(self, head: type[nn.Module], fields: dict) -> dict:
        """The task's fields (core + stem + head) with the checkpoint's core and stem in place of its own; a task
        whose model reads another modality, or whose inputs do not fit the checkpoint, is refused in one line."""
        kind = task_kind(head, fields)
        if kind != self.kind:
            raise self.refuse(f"this task's model reads {kind}; give {NEEDS[kind]}")
        merged = {**fields, **self.fields, "suite": {**(fields.get("suite") or {}), "pretrained": self.source}}
        if kind in ("text", "seq2seq") and fields.get("vocab_size", 0) > self.fields["vocab_size"]:
            raise self.refuse(f"the task's tokenizer has {fields['vocab_size']} tokens, the checkpoint's embedding "
                              f"{self.fields['vocab_size']}; use the tokenizer in {self.folder}")
        if kind == "image" and fields.get("image_size"):  # the task's size; positions are resized to it
            size, P = pair(fields["image_size"]), self.fields["patch_size"]
            if size[0] % P or size[1] % P:
                raise self.refuse(f"the task's {size[0]}x{size[1]} images do not divide into its {P}-pixel patches; "
                                  f"set task.image_size to a multiple of {P} (it was trained at "
                                  f"{self.fields['image_size'][0]}x{self.fields['image_size'][1]})")
            merged["image_size"] = size
        if kind == "audio" and fields.get("n_mels", self.fields["n_mels"]) != self.fields["n_mels"]:
            raise self.refuse(f"the task computes {fields['n_mels']} log-mel bins, the checkpoint reads "
                              f"{self.fields['n_mels']}; compute its features (Checkpoint.preprocessor)")
        return merged

    def state_dict(self, config: SuiteConfig) -> Tensors:
        """The checkpoint's tensors under the suite's names (relative to SuiteModel, or to the seq2seq head)."""
        family = FAMILIES[self.family]
        w = Weights(read_tensors(self.folder), family.prefixes)
        try:
            sd = family.weights(w, self.hf_config, config)
        except CheckpointError as e:
            raise self.refuse(str(e)) from None
        if left := w.left(family.dropped):
            raise self.refuse(f"{len(left)} of its tensors have no place in the suite's model (e.g. {left[0]!r}); "
                              f"it is not a plain {family.label}")
        return sd

    def load_into(self, model: nn.Module) -> list[str]:
        """Copy the weights into a suite model built from `fit`'s fields; returns the names of the model's tensors
        left as initialised (the task's head: a classifier, a CRF, a char-CNN)."""
        root = "" if self.kind == "seq2seq" else next(
            (n + "." if n else "" for n, m in model.named_modules() if isinstance(m, SuiteModel)), None)
        if root is None:
            raise self.refuse(f"{type(model).__name__} has no SuiteModel (stem and encoder) to load it into")
        sd = {root + k: v for k, v in self.state_dict(model.config).items()}
        own = model.state_dict()
        for k, v in sd.items():
            if k not in own or own[k].shape != v.shape:
                found = tuple(own[k].shape) if k in own else "nothing"
                raise self.refuse(f"{k} has shape {tuple(v.shape)} in the checkpoint and {found} in the suite's model;"
                                  f" build the model from Checkpoint.fit's fields")
        if missing := [k for k in own if k.startswith(root) and k not in sd]:
            raise self.refuse(f"it holds no weights for {missing[0]} ({len(missing)} in all)")
        model.load_state_dict(sd, strict=False)
        return [k for k in own if k not in sd]

    def build(self, head: type[nn.Module], fields: dict | None = None) -> nn.Module:
        """`head` on SuiteConfig(the task's fields + the checkpoint's), the checkpoint's weights loaded: what a task's
        `build_model` returns for `model.pretrained`."""
        model = head(SuiteConfig(**self.fit(head, fields or {})))
        model.fresh_parameters = set(self.load_into(model))  # the task's head: trainer.head_lr_scale applies to it
        return model


# -- opening: a local folder, or a Hub id downloaded (only when no such folder exists) ------------------------------


def local_folder(source: str) -> Path:
    """The folder itself when it exists (no download is attempted); else the Hub snapshot of that id."""
    if Path(source).is_dir():
        return Path(source)
    if not re.fullmatch(r"[\w][\w.-]*(/[\w][\w.-]*)?", source):
        raise CheckpointError(f"model.pretrained={source}: no such folder (give a folder with config.json and "
                              f"model.safetensors, or a Hub id such as bert-base-uncased)")
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        folder = Path(snapshot_download(source, allow_patterns=HUB_FILES))
        if not any(folder.glob("model*.safetensors")):  # older repositories have only PyTorch pickles
            hf_hub_download(source, "pytorch_model.bin")
        return folder
    except (OSError, ValueError) as e:
        raise CheckpointError(f"model.pretrained={source}: no such folder here, and the Hub did not give it "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'offline?'}); "
                              f"give a local folder with config.json and model.safetensors") from None


def open_checkpoint(source: str | Path) -> Checkpoint:
    """Read a checkpoint's config (a folder, or a Hub id for users online) and the suite fields that rebuild it;
    another architecture is refused in one line. The weights are read when the model is built."""
    source = str(source)
    folder = local_folder(source)
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"model.pretrained={source}: no readable config.json in {folder} "
                              f"({str(e).splitlines()[0]})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in FAMILIES:
        arch = ", ".join(raw.get("architectures") or []) if isinstance(raw, dict) else ""
        raise CheckpointError(f"model.pretrained={source}: a {model_type or 'unknown'} model{f' ({arch})' * bool(arch)}"
                              f"; the suite loads {SUPPORTED}")
    try:  # typed, with transformers' defaults for what config.json omits
        hf = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"model.pretrained={source}: its config.json does not read as a {model_type} config "
                              f"({str(e).splitlines()[0]})") from None
    pre = folder / "preprocessor_config.json"
    try:
        preprocessor = json.loads(pre.read_text()) if pre.is_file() else {}
    except ValueError as e:
        raise CheckpointError(f"model.pretrained={source}: {pre} is not JSON ({e})") from None
    ckpt = Checkpoint(source, folder, model_type, hf, {}, preprocessor)
    try:
        ckpt.fields = {**CORE, **FAMILIES[model_type].fields(hf)}
    except CheckpointError as e:
        raise ckpt.refuse(str(e)) from None
    if model_type == "vit":  # the inputs' normalisation, from its image processor (ViT's default: 0.5, 0.5)
        C, normalize = ckpt.fields["num_channels"], preprocessor.get("do_normalize", True)
        for key, name, off in (("pixel_mean", "image_mean", 0.0), ("pixel_std", "image_std", 1.0)):
            value = preprocessor.get(name, 0.5) if normalize else off
            value = [value] * C if isinstance(value, (int, float)) else value  # one number for every channel
            if not isinstance(value, list) or len(value) != C or not all(isinstance(v, (int, float)) for v in value):
                raise ckpt.refuse(f"its preprocessor_config.json has {name}={value!r}; give {C} numbers (one per "
                                  f"channel) or one")
            ckpt.fields[key] = [float(v) for v in value]
    return ckpt


def from_pretrained(head: type[nn.Module], source: str | Path, fields: dict | None = None) -> nn.Module:
    """nanoGPT's GPT.from_pretrained for the suite: `head` built on a published checkpoint's core and stem, with the
    task's own head fields, holding the checkpoint's weights."""
    return open_checkpoint(source).build(head, fields)
