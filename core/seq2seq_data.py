"""The task side of sequence to sequence (translation, summarisation): the decoding settings and task fields both
tasks have, a joint BPE vocabulary, source/target encoding with one or several references, length-grouped batches,
decoding through the model's `generate()`, prediction and the source-target alignment picture.

Each task composes a `Seq2SeqText` with its own data and metric (`tasks/translation.py`, `tasks/summarization.py`);
the model is `core.seq2seq.SuiteForConditionalGeneration`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

import torch
from datasets import DatasetDict
from omegaconf import DictConfig
from tokenizers import processors
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, GenerationConfig, PreTrainedConfig, PreTrainedTokenizerFast
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from core.attention_plots import last_layer, token_heatmap
from core.data import drop_empty, load_splits
from core.seq2seq import SuiteForConditionalGeneration
from core.task import Task, UserError, load_saved
from core.text import checkpoint_tokenizer, train_tokenizer
from core.transformer import record_attention

log = logging.getLogger(__name__)
SHOWN_SOURCE_TOKENS = 60  # the attention picture's columns stay legible up to about this many
PREDICT_BATCH = 32


@dataclass
class Decoding:
    """`task.generation`: how to decode. Saved as the run folder's generation_config.json, so `model.generate(**inputs)`
    decodes as mode=predict. Lengths count generated tokens, EOS included (transformers' meaning); every limit is
    explicit, never a library default."""

    max_new_tokens: int = 64  # at most this many generated tokens
    max_len_a: float = 0.0  # >0: also at most max_len_a * source tokens + max_len_b per input (fairseq's
    max_len_b: int = 0  # --max-len-a/b): an undertrained model's rambling stops near its source's length
    min_new_tokens: int = 0  # EOS is forbidden before this many tokens
    num_beams: int = 1  # 1 = greedy
    length_penalty: float = 1.0  # a finished hypothesis scores sum log p / length ** length_penalty
    no_repeat_ngram_size: int = 0  # forbid repeating any n-gram of this size; 0 = off

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ValueError(f"task.generation.max_new_tokens={self.max_new_tokens} and task.generation.num_beams="
                             f"{self.num_beams}: give at least 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"task.generation.min_new_tokens={self.min_new_tokens}: give 0 to max_new_tokens "
                             f"({self.max_new_tokens})")
        if self.max_len_a < 0 or self.no_repeat_ngram_size < 0:
            raise ValueError(f"task.generation.max_len_a={self.max_len_a} and task.generation.no_repeat_ngram_size="
                             f"{self.no_repeat_ngram_size}: give 0 (off) or more")

    def generation_config(self, model: PreTrainedConfig) -> GenerationConfig:
        """These settings with the model's special tokens (a checkpoint's own: Marian starts from PAD, BART from
        EOS); PAD is never generated (Marian's configs ban it too). Greedy decoding leaves length_penalty out
        (transformers refuses to save a beam-only setting without beams)."""
        pad, settings = model.pad_token_id, asdict(self)
        if self.num_beams == 1:
            del settings["length_penalty"]
        return GenerationConfig(**settings, decoder_start_token_id=model.decoder_start_token_id, pad_token_id=pad,
                                bos_token_id=model.bos_token_id, eos_token_id=model.eos_token_id,
                                suppress_tokens=[pad], early_stopping=False)


@dataclass
class Seq2SeqConfig:
    """The `task` fields both sequence-to-sequence tasks have; each task's Config sets its defaults, adds its own."""

    name: str = "seq2seq"
    vocab_size: int = 10000  # one BPE vocabulary for sources and targets, fitted on the training split
    lowercase: bool = False  # (model.pretrained: the checkpoint's own tokenizer instead; these two go unused)
    max_source_len: int = 128  # tokens incl. EOS; longer sources are truncated (with a warning in predict mode)
    max_target_len: int = 128  # tokens incl. EOS; longer training targets are truncated
    tie_embeddings: bool = True  # one matrix for source, target and output embeddings (the paper's sharing)
    label_smoothing: float = 0.1  # the paper's value
    val_num_beams: int = 1  # beams when validating during training (1: greedy, cheap); test uses generation's
    generation: Decoding = field(default_factory=Decoding)

    def __post_init__(self) -> None:
        if self.vocab_size < 16 or min(self.max_source_len, self.max_target_len) < 2:
            raise ValueError(f"task.vocab_size={self.vocab_size}, task.max_source_len={self.max_source_len} and "
                             f"task.max_target_len={self.max_target_len}: give at least 16 tokens and 2 positions")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"task.label_smoothing={self.label_smoothing}: give a fraction in [0, 1)")
        if self.val_num_beams < 1:
            raise ValueError(f"task.val_num_beams={self.val_num_beams}: give at least 1")


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped order (shuffled mega-batches, each sorted by length), drawn from (seed, epoch) as
    Accelerate's seedable sampler draws its order: a resumed run sees the epoch's order the first run saw."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # Accelerate's loader calls it (core/train.py epoch_batches)
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def references(value) -> list[str]:
    """A target (or references) cell as its list of reference texts: one string, or a list of several."""
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value or [] if v is not None and str(v).strip()]


class Seq2SeqText:
    """What a source -> target text task shares, composed (not inherited) by each task: the tokenizer and encoded
    splits, batches, decoding through the model's generate(), prediction and the alignment picture."""

    def __init__(self, config: Seq2SeqConfig, cfg: DictConfig):
        self.config, self.cfg = config, cfg  # the task's typed config; the whole run config (data, trainer)
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.data: DatasetDict | None = None  # encoded splits

    # -- data, vocabulary and encoding -------------------------------------------------------------------------------
    def load(self) -> DatasetDict:
        """The splits with a non-empty source and target; a split may carry more columns (several references)."""
        return drop_empty(drop_empty(load_splits(self.cfg.data, optional=("references",)), "source"), "target")

    def prepare(self, run_dir: Path, is_main: bool, checkpoint=None) -> None:
        """Fit one BPE vocabulary on the training sources and targets, or take a checkpoint's own tokenizer under
        model.pretrained (the main process saves it, the others read it back), then encode every split."""
        c = self.config
        if checkpoint is not None and max(c.max_source_len, c.max_target_len) > checkpoint.fields["max_len"]:
            raise UserError(f"task.max_source_len={c.max_source_len} and task.max_target_len={c.max_target_len}: the "
                            f"checkpoint has {checkpoint.fields['max_len']} positions; give at most that many")
        ds = self.load()
        if is_main and checkpoint is not None:  # its embedding was trained on that vocabulary
            self.tokenizer = checkpoint_tokenizer(checkpoint.folder, c.max_source_len, fast=False)  # Marian's: SPM
            self.tokenizer.save_pretrained(run_dir)
        elif is_main:
            texts = chain(ds["train"]["source"], (ref for cell in ds["train"]["target"] for ref in references(cell)))
            self.tokenizer = source_tokenizer(train_tokenizer(texts, c.vocab_size, "bpe", c.lowercase),
                                              c.max_source_len)
            self.tokenizer.save_pretrained(run_dir)
        else:
            self.load_tokenizer(run_dir)
        self.data = DatasetDict({split: part.map(self.encode, batched=True, remove_columns=part.column_names)
                                 for split, part in ds.items()})

    def load_tokenizer(self, run_dir: Path) -> None:
        self.tokenizer = load_saved(AutoTokenizer, run_dir, "tokenizer (tokenizer.json)")

    def encode_sources(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Token ids of each source as the saved tokenizer gives them (the suite's: text EOS; BART's: BOS text EOS)
        with truncation=True at task.max_source_len; also how many were cut."""
        return cut_to(self.tokenizer(texts, verbose=False)["input_ids"], self.config.max_source_len)

    def encode(self, batch: dict) -> dict:
        """Sources; the first reference as the training target (+ EOS); every reference, for scoring. A split's
        references are its `references` column where it has one (several per example), else its targets (one text,
        or a list of several)."""
        sources, _ = self.encode_sources(batch["source"])
        refs = [references(cell) for cell in batch["target"]]
        if "references" in batch:
            refs = [references(cell) or own for cell, own in zip(batch["references"], refs)]
        targets, _ = cut_to(self.tokenizer(text_target=[r[0] for r in refs], verbose=False)["input_ids"],
                            self.config.max_target_len)  # with the target side's special tokens (text EOS)
        return {"input_ids": sources, "labels": targets, "reference": refs}

    def collate(self, rows: list[dict], num_beams: int | None = None) -> dict:
        """Pad sources with PAD and labels with -100 (ignored by the loss), to a multiple of 8."""
        pad = self.tokenizer.pad_token_id
        batch = {"input_ids": pad_right([r["input_ids"] for r in rows], pad),
                 "labels": pad_right([r["labels"] for r in rows], -100)}
        batch["attention_mask"] = batch["input_ids"] != pad
        if num_beams is not None:  # evaluation batches: decode and keep the references for scoring
            batch["num_beams"], batch["reference"] = num_beams, [r["reference"] for r in rows]
        return batch

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.data:
            return None
        part, trainer = self.data[split], self.cfg.trainer
        lengths = [len(x) for x in part["input_ids"]]
        if train:  # shuffled mega-batches sorted by length: little padding, still random (transformers' sampler)
            sampler = SeededLengthGroupedSampler(trainer.batch_size, lengths, trainer.seed)
            return DataLoader(part, batch_size=trainer.batch_size, sampler=sampler, collate_fn=self.collate,
                              num_workers=trainer.num_workers, drop_last=True)
        # evaluation in length order (beams finish together); validation decodes with task.val_num_beams (cheap)
        beams = self.config.generation.num_beams if split == "test" else self.config.val_num_beams
        order = sorted(range(len(part)), key=lambda i: -lengths[i])
        return DataLoader(part, batch_size=trainer.eval_batch_size, sampler=order, num_workers=trainer.num_workers,
                          collate_fn=lambda rows: self.collate(rows, beams))

    def model_fields(self) -> dict:
        """The seq2seq head's fields of SuiteConfig for this vocabulary."""
        tok, c = self.tokenizer, self.config
        return {"stem": "text", "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
                "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                "decoder_start_token_id": tok.bos_token_id, "tie_word_embeddings": c.tie_embeddings,
                "label_smoothing": c.label_smoothing, "is_encoder_decoder": True}


    # -- decoding and prediction -------------------------------------------------------------------------------------
    def decode(self, model, input_ids, attention_mask, **settings) -> list[str]:
        """The output text of each source, one line each with single spaces: the model's generate() with the run's
        generation config, `settings` overriding it (validation's beams)."""
        model = getattr(model, "module", model)  # DDP wraps the model; generation needs the plain module
        ids = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
        return [" ".join(text.split()) for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def eval_step(self, model, batch: dict) -> list:
        """(output, references) per example."""
        hyps = self.decode(model, batch["input_ids"], batch["attention_mask"], num_beams=batch["num_beams"])
        return list(zip(hyps, batch["reference"]))

    @torch.no_grad()
    def predict(self, model, inputs: list[str]) -> list[str]:
        """One output per input, in order; an empty input gives an empty line. Inputs are decoded longest first in
        batches of PREDICT_BATCH, each padded to its longest source (as the tokenizer pads: a batch is what
        `generate(**tokenizer(texts, padding=True, return_tensors="pt"))` reads)."""
        keep = [i for i, text in enumerate(inputs) if text.strip()]
        ids, cut = self.encode_sources([inputs[i] for i in keep])
        if cut:
            log.warning("%d of %d inputs were longer than task.max_source_len=%d tokens and were truncated", cut,
                        len(keep), self.config.max_source_len)
        outputs = [""] * len(inputs)
        order = sorted(range(len(keep)), key=lambda j: -len(ids[j]))
        for start in range(0, len(order), PREDICT_BATCH):
            chunk = order[start : start + PREDICT_BATCH]
            input_ids = pad_right([ids[j] for j in chunk], self.tokenizer.pad_token_id, multiple=1)
            for j, hyp in zip(chunk, self.decode(model, input_ids, input_ids != self.tokenizer.pad_token_id)):
                outputs[keep[j]] = hyp
        return outputs

    @torch.no_grad()
    def attention(self, model, inputs: list[str] | None, path: Path) -> Path:
        """Source-target alignment of the first input (default: the first test source): the last decoder layer's
        cross-attention (mean over heads) of the greedy output over the source tokens; a long source (a dialogue) is
        shown up to its first SHOWN_SOURCE_TOKENS tokens."""
        texts = inputs if inputs is not None else self.load()["test"][:1]["source"]
        text = texts[0] if texts else ""
        if not text.strip():
            raise UserError('the source to draw attention for is empty; give text="..."')
        (ids,), _ = self.encode_sources([text])
        src = torch.tensor([ids])
        mask = torch.ones_like(src, dtype=torch.bool)
        out = model.generate(input_ids=src, attention_mask=mask, num_beams=1)[0].tolist()  # start, tokens[, EOS]
        with record_attention() as records:  # teacher-forced on the greedy output: the same attention, in one pass
            model(input_ids=src, attention_mask=mask, decoder_input_ids=torch.tensor([out[:-1]]))
        weights = last_layer(records, "cross")  # (T, S): row t is the query that produced output token t
        shown = min(len(ids), SHOWN_SOURCE_TOKENS)
        title = "last decoder layer's cross-attention (mean over heads) of the greedy output"
        if shown < len(ids):
            title += f"\nsource cut to its first {shown} of {len(ids)} tokens for legibility"
        return token_heatmap(weights[:, :shown], self.tokens(out[1:]), self.tokens(ids[:shown]), title, path,
                             row_label="output token", col_label="source token")

    def tokens(self, ids: list[int]) -> list[str]:
        """Subword tokens as axis labels; a line break (a dialogue turn) shown as a visible symbol."""
        return [t.replace("\n", "↵") for t in self.tokenizer.convert_ids_to_tokens(ids)]


def source_tokenizer(tok: PreTrainedTokenizerFast, max_source_len: int) -> PreTrainedTokenizerFast:
    """The fitted vocabulary as a seq2seq tokenizer: `text [EOS]`, cut at max_source_len with truncation=True, no
    token types, so that `tokenizer(texts, ...)` gives the sources exactly as the task encodes them."""
    eos = tok.eos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tok.eos_token_id)])
    tok.model_input_names = ["input_ids", "attention_mask"]
    tok.model_max_length = max_source_len
    return tok


def cut_to(ids: list[list[int]], limit: int) -> tuple[list[list[int]], int]:
    """Token id lists longer than `limit` cut to it, keeping their final special token (EOS), as a tokenizer's
    truncation=True does; also how many were cut."""
    return [x if len(x) <= limit else x[: limit - 1] + x[-1:] for x in ids], sum(len(x) > limit for x in ids)


def pad_right(seqs: list[list[int]], value: int, multiple: int = 8) -> torch.Tensor:
    """(N, L) tensor, L the longest length rounded up to `multiple` (tensor-core friendly shapes)."""
    width = -(-max(len(s) for s in seqs) // multiple) * multiple
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs])


class Seq2SeqTask(Task):
    """What translation and summarisation share as tasks: the seq2seq head and every step but the metric, each
    handed to `Seq2SeqText`. A subclass names its metric, config and `compute_metrics`."""

    head = SuiteForConditionalGeneration

    def __init__(self, cfg):
        super().__init__(cfg)
        self.text = Seq2SeqText(self.config, cfg)

    fine_tunes = True  # prepare() takes the checkpoint's tokenizer under model.pretrained (Marian, BART)

    def prepare(self, run_dir: Path, is_main: bool) -> None:
        self.text.prepare(run_dir, is_main, self.checkpoint)

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        return self.text.dataloader(split, train)

    def model_fields(self) -> dict:
        return self.text.model_fields()

    def build_model(self) -> SuiteForConditionalGeneration:
        """The head with this task's decoding settings (saved beside it as generation_config.json)."""
        model = super().build_model()
        model.generation_config = self.config.generation.generation_config(model.config)
        return model

    def eval_step(self, model, batch) -> list:
        return self.text.eval_step(model, batch)

    def load_assets(self, run_dir: Path) -> None:
        self.text.load_tokenizer(run_dir)

    def predict(self, model, inputs: list[str]) -> list[str]:
        return self.text.predict(model, inputs)

    def attention(self, model, inputs: list[str] | None, path: Path) -> Path:
        return self.text.attention(model, inputs, path)
