"""Translation (Multi30k En->De by default): its data, its metric (sacreBLEU's BLEU and chrF) and its predictions.

The model is the shared sequence-to-sequence head (`core.seq2seq`): one BPE vocabulary for both languages -> the
shared encoder-decoder -> beam search through transformers' `generate()`. What translation shares with
summarisation (data, vocabulary, encoding, batches, decoding, prediction, the alignment picture) is
`core.seq2seq_data.Seq2SeqText`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import sacrebleu

from core.seq2seq_data import Decoding, Seq2SeqConfig, Seq2SeqTask

log = logging.getLogger(__name__)


@dataclass
class Config(Seq2SeqConfig):
    """The `task` group of conf/task/translation.yaml."""

    name: str = "translation"
    source_lang: str | None = "en"  # informational (recorded with the run); data.columns decide the direction
    target_lang: str | None = "de"
    vocab_size: int = 10000  # one BPE vocabulary for both languages, fitted on the training split
    generation: Decoding = field(default_factory=lambda: Decoding(
        max_new_tokens=96, max_len_a=1.5, max_len_b=10, min_new_tokens=1, num_beams=4, length_penalty=0.6))


def bleu_and_chrf(records: list) -> dict[str, float]:
    """Corpus BLEU and chrF (sacreBLEU, detokenised, 0-100) of (output, references) records; an example's
    references are one text or a list of several, and each output is scored against all of its own."""
    hyps = [hyp for hyp, _ in records]
    refs = [ref if isinstance(ref, list) else [ref] for _, ref in records]
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(max(map(len, refs)))]  # None: no more
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    scores = {"bleu": bleu.corpus_score(hyps, streams).score, "chrf": chrf.corpus_score(hyps, streams).score}
    log.info("sacreBLEU signatures: %s | %s", bleu.get_signature(), chrf.get_signature())
    return scores


class Task(Seq2SeqTask):
    """Source text -> target text; metrics `bleu` and `chrf`."""

    metric = "bleu"
    pipeline_tag = "translation"
    Config = Config

    def compute_metrics(self, records: list) -> dict[str, float]:
        return bleu_and_chrf(records)
