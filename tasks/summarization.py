"""Abstractive summarisation (SAMSum dialogues by default): its data, its metric (ROUGE) and its predictions.

The model is the shared sequence-to-sequence head (`core.seq2seq`): one BPE vocabulary for documents and summaries
-> the shared encoder-decoder -> beam search through transformers' `generate()`. What summarisation shares with
translation (data, vocabulary, encoding, batches, decoding, prediction, the alignment picture) is
`core.seq2seq_data.Seq2SeqText`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rouge_score import rouge_scorer

from core import task as base
from core.seq2seq_data import Decoding, Seq2SeqConfig, Seq2SeqTask

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass
class Config(Seq2SeqConfig):
    """The `task` group of conf/task/summarization.yaml."""

    name: str = "summarization"
    vocab_size: int = 8000  # one BPE vocabulary for documents and summaries
    max_source_len: int = 400  # tokens incl. EOS (Gliwa et al. 2019 truncate dialogues to 400)
    max_target_len: int = 96
    generation: Decoding = field(default_factory=lambda: Decoding(
        max_new_tokens=80, max_len_a=1.5, max_len_b=10, min_new_tokens=5, num_beams=4, no_repeat_ngram_size=3))


def rouge(records: list) -> dict[str, float]:
    """Mean F1 over examples in percent, Porter stemming on, as `rouge-score` (and the `evaluate` wrapper around it)
    reports it; an example with several references (a list) scores its best against any of them."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, ref in records:
        scores = scorer.score_multi(ref if isinstance(ref, list) else [ref], hyp)
        for key in ROUGE_TYPES:
            sums[key] += scores[key].fmeasure
    return {key: 100 * value / len(records) for key, value in sums.items()}


class Task(Seq2SeqTask):
    """Document -> summary; metrics `rouge1`, `rouge2`, `rougeL`."""

    metric = "rougeL"
    pipeline_tag = "summarization"
    Config = Config

    def compute_metrics(self, records: list) -> dict[str, float]:
        return rouge(records)

    def read_inputs(self) -> list[str]:
        """`text=` is one document (`\\n` for line breaks); `input=<file>` holds documents separated by blank lines
        (a dialogue is several lines, one per utterance)."""
        if not self.cfg.get("input"):
            return [text.replace("\\n", "\n") for text in super().read_inputs()]
        blocks = "\n".join(base.read_lines(Path(self.cfg.input))).split("\n\n")
        documents = [block.strip("\n") for block in blocks if block.strip()]
        if not documents:
            raise base.UserError(f"input file {self.cfg.input} holds no document: separate them by blank lines")
        return documents
