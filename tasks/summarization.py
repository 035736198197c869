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
from torch.utils.data import DataLoader

from core import task as base
from core.seq2seq import SuiteForConditionalGeneration
from core.seq2seq_data import Decoding, Seq2SeqConfig, Seq2SeqText

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


class Task(base.Task):
    """Document -> summary; metrics `rouge1`, `rouge2`, `rougeL`."""

    metric = "rougeL"
    head = SuiteForConditionalGeneration
    pipeline_tag = "summarization"
    Config = Config

    def __init__(self, cfg):
        super().__init__(cfg)
        self.text = Seq2SeqText(self.config, cfg)

    def prepare(self, run_dir: Path, is_main: bool) -> None:
        self.text.prepare(run_dir, is_main)

    def dataloader(self, split: str, train: bool) -> DataLoader | None:
        return self.text.dataloader(split, train)

    def model_fields(self) -> dict:
        return self.text.model_fields()

    def build_model(self) -> SuiteForConditionalGeneration:
        """The head with this task's decoding settings (saved beside it as generation_config.json)."""
        model = super().build_model()
        model.generation_config = self.text.generation_config()
        return model

    def eval_step(self, model, batch) -> list:
        return self.text.eval_step(model, batch)

    def compute_metrics(self, records: list) -> dict[str, float]:
        return rouge(records)

    def load_assets(self, run_dir: Path) -> None:
        self.text.load_tokenizer(run_dir)

    def predict(self, model, inputs: list[str]) -> list[str]:
        return self.text.predict(model, inputs)

    def attention(self, model, inputs: list[str] | None, path: Path) -> Path:
        return self.text.attention(model, inputs, path)

    def read_inputs(self) -> list[str]:
        """`text=` is one document (`\\n` for line breaks); `input=<file>` holds documents separated by blank lines
        (a dialogue is several lines, one per utterance)."""
        if not self.cfg.get("input"):
            return [str(self.cfg.text).replace("\\n", "\n")] if self.cfg.get("text") is not None \
                else super().read_inputs()
        path = Path(self.cfg.input)
        if not path.is_file():
            raise base.UserError(f"input file {path} not found")
        blocks = path.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n\n")
        return [block.strip("\n") for block in blocks if block.strip()]
