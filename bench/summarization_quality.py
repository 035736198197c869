"""SAMSum quality benchmark: the default `python run.py task=summarization` (from scratch, at most 60 minutes of
training), then its test ROUGE-1/2/L as recorded, the validation curve, and three test dialogues with their
reference and generated summaries (decoded again through `mode=predict`, the path a user takes).

    SUITE_DATA=../shared/data python bench/summarization_quality.py [extra Hydra overrides]
"""

import json
import os
import sys
import tempfile
from pathlib import Path

from quality import run, summary, trained


def main() -> None:
    data = Path(os.environ.get("SUITE_DATA", "../shared/data")) / "samsum"
    run_dir, m, history = trained("task=summarization", f"data.root={data.parent}", *sys.argv[1:])
    r = m["metrics"]
    print(f"SAMSum test ROUGE-1 {r['rouge1']:.2f} (target >= 30)  ROUGE-2 {r['rouge2']:.2f}  "
          f"ROUGE-L {r['rougeL']:.2f} (target >= 27)")
    print(summary(run_dir, m, history, "samples"))
    for h in history:
        print(f"  step {h['step']:>6}  {h['elapsed'] / 60:5.1f} min  val ROUGE-1/2/L (greedy) "
              f"{h['val/rouge1']:.2f} / {h['val/rouge2']:.2f} / {h['val/rougeL']:.2f}")
    test = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()[:3]]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n\n".join(row["document"].replace("\r\n", "\n") for row in test) + "\n")
    summaries = run("mode=predict", "task=summarization", f"run_dir={run_dir}", f"input={f.name}").splitlines()
    for row, generated in zip(test, summaries):
        print(f"\n{row['document']}\n  reference: {row['summary']}\n  generated: {generated}")


if __name__ == "__main__":
    main()
