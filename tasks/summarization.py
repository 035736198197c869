"""Abstractive summarisation (SAMSum dialogues by default): translation's sequence-to-sequence task, scored by ROUGE.

Everything but the metric and the input format is `tasks/translation.py`: a BPE vocabulary fitted on the training
documents and summaries, the shared encoder-decoder, beam search from the core.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rouge_score import rouge_scorer

from core import task as base
from tasks import translation

log = logging.getLogger(__name__)
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class Task(translation.Task):
    """Document -> summary; metrics `rouge1`, `rouge2`, `rougeL` (F1 in percent, Porter stemming on)."""

    metric = "rougeL"

    def compute_metrics(self, records: list) -> dict[str, float]:
        """Mean F1 over examples, as `rouge-score` (and the `evaluate` wrapper around it) reports it."""
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
        sums = dict.fromkeys(ROUGE_TYPES, 0.0)
        for hyp, ref in records:
            scores = scorer.score(ref, hyp)
            for key in ROUGE_TYPES:
                sums[key] += scores[key].fmeasure
        return {key: 100 * value / len(records) for key, value in sums.items()}

    def read_inputs(self) -> list[str]:
        """`text=` is one document; `input=<file>` holds documents separated by blank lines (a dialogue is several
        lines, one per utterance)."""
        if not self.cfg.get("input"):
            return [str(self.cfg.text).replace("\\n", "\n")] if self.cfg.get("text") is not None \
                else super().read_inputs()
        path = Path(self.cfg.input)
        if not path.is_file():
            raise base.UserError(f"input file {path} not found")
        blocks = path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n\n")
        return [block.strip("\n") for block in blocks if block.strip()]
