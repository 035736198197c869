"""Translation (Multi30k En->De by default): joint BPE -> the shared encoder-decoder -> beam search -> sacreBLEU.

The sequence-to-sequence plumbing here (data, tokenizer, batching, decoding, prediction) is shared with
`tasks/summarization.py`, which only changes the data and the metric.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sacrebleu
import torch
from datasets import DatasetDict
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerFast
from transformers.trainer_pt_utils import LengthGroupedSampler

from core import task as base
from core.attention import last_layer, token_heatmap
from core.data import drop_empty, load_splits
from core.seq2seq import GenerationConfig, Seq2SeqTransformer
from core.tokenizer import train_tokenizer
from core.transformer import record_attention

log = logging.getLogger(__name__)
SHOWN_SOURCE_TOKENS = 60  # the attention picture's columns stay legible up to about this many


class Task(base.Task):
    """Source text -> target text; metrics `bleu` and `chrf` (sacreBLEU, detokenised, 0-100)."""

    metric = "bleu"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self.data: DatasetDict | None = None
        self.generation = base.to_dataclass(cfg.task.generation, GenerationConfig, "task.generation")

    # -- data --------------------------------------------------------------------------------------------------------
    def prepare(self, run_dir: Path, is_main: bool) -> None:
        ds = drop_empty(drop_empty(load_splits(self.cfg.data), "source"), "target")
        if is_main:
            tc = self.cfg.task
            texts = (text for split in ("source", "target") for text in ds["train"][split])  # one joint vocabulary
            self.tokenizer = train_tokenizer(texts, tc.vocab_size, "bpe", tc.lowercase)
            self.tokenizer.model_max_length = tc.max_source_len
            self.tokenizer.save_pretrained(run_dir)
        else:
            self.load_assets(run_dir)
        self.data = DatasetDict({split: part.map(self._encode, batched=True, remove_columns=part.column_names)
                                 for split, part in ds.items()})

    def encode_sources(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Token ids of each source (text, EOS), cut at task.max_source_len; also how many were cut."""
        limit = self.cfg.task.max_source_len
        ids = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]  # cut (and counted) here
        cut = sum(len(x) >= limit for x in ids)
        return [x[: limit - 1] + [self.tokenizer.eos_token_id] for x in ids], cut

    def _encode(self, batch: dict) -> dict:
        sources, _ = self.encode_sources(batch["source"])
        targets = self.tokenizer(batch["target"], add_special_tokens=False)["input_ids"]
        limit = self.cfg.task.max_target_len
        return {"input_ids": sources, "labels": [y[: limit - 1] + [self.tokenizer.eos_token_id] for y in targets],
                "reference": batch["target"]}

    def collate(self, rows: list[dict], num_beams: int | None = None) -> dict:
        """Pad sources with PAD and labels with -100 (ignored by the loss), to a multiple of 8."""
        pad = self.tokenizer.pad_token_id
        batch = {"input_ids": pad_right([r["input_ids"] for r in rows], pad),
                 "labels": pad_right([r["labels"] for r in rows], -100)}
        batch["attention_mask"] = batch["input_ids"] != pad
        if num_beams is not None:  # evaluation batches: decode and keep the reference text for scoring
            batch["num_beams"], batch["reference"] = num_beams, [r["reference"] for r in rows]
        return batch

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        if split not in self.data:
            return None
        t, part = self.cfg.trainer, self.data[split]
        lengths = [len(x) for x in part["input_ids"]]
        if train:  # shuffled mega-batches sorted by length: little padding, still random (transformers' sampler)
            sampler = LengthGroupedSampler(t.batch_size, lengths=lengths)
            return DataLoader(part, batch_size=t.batch_size, sampler=sampler, collate_fn=self.collate,
                              num_workers=t.num_workers, drop_last=True)
        # evaluation in length order (beams finish together); validation decodes greedily to keep it cheap
        beams = self.generation.num_beams if split == "test" else self.cfg.task.val_num_beams
        order = sorted(range(len(part)), key=lambda i: -lengths[i])
        return DataLoader(part, batch_size=t.eval_batch_size, sampler=order, num_workers=t.num_workers,
                          collate_fn=lambda rows: self.collate(rows, beams))

    # -- model, decoding and metrics ---------------------------------------------------------------------------------
    def build_model(self) -> Seq2SeqTransformer:
        tok, tc = self.tokenizer, self.cfg.task
        return Seq2SeqTransformer(self.model_cfg, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id,
                                  tc.tie_embeddings, tc.label_smoothing)

    def model_extras(self) -> dict:
        return {"vocab_size": len(self.tokenizer), "generation": vars(self.generation)}

    def decode(self, model, input_ids, attention_mask, num_beams: int) -> list[str]:
        model = getattr(model, "module", model)  # DDP wraps the model; generation needs the plain module
        gen = GenerationConfig(**{**vars(self.generation), "num_beams": num_beams})
        ids = model.generate(input_ids, attention_mask, gen)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]  # one line each, single spaces

    def eval_step(self, model, batch) -> list:
        hyps = self.decode(model, batch["input_ids"], batch["attention_mask"], batch["num_beams"])
        return list(zip(hyps, batch["reference"]))

    def compute_metrics(self, records: list) -> dict[str, float]:
        hyps, refs = map(list, zip(*records))
        bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
        scores = {"bleu": bleu.corpus_score(hyps, [refs]).score, "chrf": chrf.corpus_score(hyps, [refs]).score}
        log.info("sacreBLEU signatures: %s | %s", bleu.get_signature(), chrf.get_signature())
        return scores

    # -- prediction --------------------------------------------------------------------------------------------------
    def load_assets(self, run_dir: Path) -> None:
        try:
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(run_dir)
        except (OSError, ValueError) as e:
            raise base.UserError(f"{run_dir} lacks a readable tokenizer ({e})") from None

    @torch.no_grad()
    def predict(self, model, inputs: list[str]) -> list[str]:
        """One output per input, in order; an empty input gives an empty line."""
        keep = [i for i, text in enumerate(inputs) if text.strip()]
        ids, cut = self.encode_sources([inputs[i] for i in keep])
        if cut:
            log.warning("%d of %d inputs were longer than task.max_source_len=%d tokens and were truncated", cut,
                        len(keep), self.cfg.task.max_source_len)
        outputs = [""] * len(inputs)
        order = sorted(range(len(keep)), key=lambda j: -len(ids[j]))
        for start in range(0, len(order), 32):
            chunk = order[start : start + 32]
            input_ids = pad_right([ids[j] for j in chunk], self.tokenizer.pad_token_id)
            hyps = self.decode(model, input_ids, input_ids != self.tokenizer.pad_token_id, self.generation.num_beams)
            for j, hyp in zip(chunk, hyps):
                outputs[keep[j]] = hyp
        return outputs

    @torch.no_grad()
    def attention(self, model, inputs: list[str] | None, path: Path) -> Path:
        """Source-target alignment: the last decoder layer's cross-attention (mean over heads) of the greedy output
        over the source tokens; a long source (a dialogue) is shown up to its first SHOWN_SOURCE_TOKENS tokens."""
        if inputs is None:  # the first non-empty test source
            inputs = drop_empty(load_splits(self.cfg.data), "source")["test"][:1]["source"]
        if not inputs or not inputs[0].strip():
            raise base.UserError('the source to draw attention for is empty; give text="..."')
        (ids,), _ = self.encode_sources(inputs[:1])
        src = torch.tensor([ids])
        mask = torch.ones_like(src, dtype=torch.bool)
        gen = GenerationConfig(**{**vars(self.generation), "num_beams": 1})
        out = model.generate(src, mask, gen)[0]
        ended = len(out) < gen.max_new_tokens  # else it stopped at the cap, without EOS
        rows = out + [model.eos_id] if ended else out
        with record_attention() as records:  # teacher-forced on the greedy output: the same attention, in one pass
            model(input_ids=src, attention_mask=mask, decoder_input_ids=torch.tensor([[model.bos_id] + rows[:-1]]))
        weights = last_layer(records, "cross")  # (T, S): row t is the query that produced output token t
        shown = min(len(ids), SHOWN_SOURCE_TOKENS)
        title = "last decoder layer's cross-attention (mean over heads) of the greedy output"
        if shown < len(ids):
            title += f"\nsource cut to its first {shown} of {len(ids)} tokens for legibility"
        return token_heatmap(weights[:, :shown], self.tokens(rows), self.tokens(ids[:shown]), title, path,
                             row_label="output token", col_label="source token")

    def tokens(self, ids: list[int]) -> list[str]:
        """Subword tokens as axis labels; a line break (a dialogue turn) shown as a visible symbol."""
        return [t.replace("\n", "↵") for t in self.tokenizer.convert_ids_to_tokens(ids)]


def pad_right(seqs: list[list[int]], value: int, multiple: int = 8) -> torch.Tensor:
    """(N, L) tensor, L the longest length rounded up to `multiple` (tensor-core friendly shapes)."""
    width = -(-max(len(s) for s in seqs) // multiple) * multiple
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs])
