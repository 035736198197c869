"""Multi30k quality benchmark: the default `python run.py task=translation` (from scratch, at most 60 minutes of
training), then test2016 BLEU two ways:

- cased, detokenised sacreBLEU against the raw references (what the run itself records as `bleu`);
- lower-cased, Moses-tokenised against the dataset's `tok/test_2016_flickr.lc.norm.tok.de` (as most Multi30k
  papers report): the hypotheses go through the same Moses normalisation and tokenisation (sacremoses).

    SUITE_DATA=../shared/data python bench/translation_quality.py [extra Hydra overrides]
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import sacrebleu
from quality import run, summary, trained
from sacremoses import MosesPunctNormalizer, MosesTokenizer


def moses_lc(lines: list[str]) -> list[str]:
    """What the Multi30k `lc.norm.tok` files are: normalise-punctuation, tokenizer.perl -l de, lower-case."""
    norm, tok = MosesPunctNormalizer(lang="de"), MosesTokenizer(lang="de")
    return [tok.tokenize(norm.normalize(line), return_str=True, escape=True).lower() for line in lines]


def main() -> None:
    data = Path(os.environ.get("SUITE_DATA", "../shared/data")) / "multi30k_en_de"
    run_dir, m, history = trained("task=translation", f"data.root={data.parent}", *sys.argv[1:])
    test = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    with tempfile.NamedTemporaryFile("w", suffix=".en", delete=False) as f:
        f.write("\n".join(row["src"] for row in test) + "\n")
    hyps = run("mode=predict", "task=translation", f"run_dir={run_dir}", f"input={f.name}").splitlines()
    assert len(hyps) == len(test), (len(hyps), len(test))
    (run_dir / "test2016.hyp.de").write_text("\n".join(hyps) + "\n")
    refs_tok = (data / "tok" / "test_2016_flickr.lc.norm.tok.de").read_text().splitlines()
    cased = sacrebleu.corpus_bleu(hyps, [[row["tgt"] for row in test]])
    lc_tok = sacrebleu.corpus_bleu(moses_lc(hyps), [refs_tok], tokenize="none", force=True)
    print(f"test2016 BLEU, lower-cased Moses-tokenised: {lc_tok.score:.2f} (target >= 32)")
    print(f"test2016 BLEU, cased detokenised (sacreBLEU 13a): {cased.score:.2f}; the run recorded "
          f"bleu {m['metrics']['bleu']:.2f}, chrF {m['metrics']['chrf']:.2f}")
    print(summary(run_dir, m, history, "samples"))
    for h in history:
        print(f"  step {h['step']:>6}  {h['elapsed'] / 60:5.1f} min  val BLEU (greedy) {h['val/bleu']:.2f}")


if __name__ == "__main__":
    main()
