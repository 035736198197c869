"""Translation and summarisation: metrics as the libraries compute them (one reference or several), learning end to
end through run.py, prediction order and empty inputs, truncation warnings, dialogue files, and run folders that
transformers opens alone: from_pretrained, generate() decoding as mode=predict, and a process without the suite."""

import json
import random
import shutil
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from rouge_score import rouge_scorer
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, BartForConditionalGeneration, MarianMTModel

import core  # noqa: F401  (registers the suite's models with the Auto classes)
from core.seq2seq import token_lists
from core.task import UserError, load_run, save_weights
from tests.conftest import (
    ROOT,
    bart_checkpoint,
    killed_and_resumed,
    marian_checkpoint,
    run_suite,
    run_without_suite,
)

EN_DE = {"a": "ein", "man": "mann", "woman": "frau", "dog": "hund", "cat": "katze", "big": "großer",
         "small": "kleiner", "runs": "rennt", "sleeps": "schläft", "sees": "sieht", "the": "den", "ball": "ball"}
TRAIN_PAIRS = [("a man runs.", "ein mann rennt."), ("a dog sleeps.", "ein hund schläft."),
               ("a big cat sees the ball.", "ein großer katze sieht den ball."),
               ("a small woman sees the dog.", "ein kleiner frau sieht den hund."),
               ("a woman runs.", "ein frau rennt."), ("a cat sleeps.", "ein katze schläft.")]


def write_multi30k(root: Path, n_train: int = 96) -> Path:
    """<root>/multi30k_en_de/{train,validation,test}.jsonl with Multi30k's fields {id, src, tgt}."""
    folder = root / "multi30k_en_de"
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"train": TRAIN_PAIRS * (n_train // len(TRAIN_PAIRS)), "validation": TRAIN_PAIRS, "test": TRAIN_PAIRS}
    for split, pairs in rows.items():
        (folder / f"{split}.jsonl").write_text(
            "".join(json.dumps({"id": i, "src": s, "tgt": t}) + "\n" for i, (s, t) in enumerate(pairs)))
    return root


def write_samsum(root: Path, n: int = 40, seed: int = 0) -> Path:
    """<root>/samsum/{train,validation,test}.jsonl with SAMSum's fields {id, document, summary}."""
    rng = random.Random(seed)
    folder = root / "samsum"
    folder.mkdir(parents=True, exist_ok=True)
    names, things = ["Anna", "Ben", "Cleo", "Dan"], ["cookies", "tickets", "flowers", "pizza"]
    for split, size in (("train", n), ("validation", 8), ("test", 8)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(size):
                a, b = rng.sample(names, 2)
                thing = rng.choice(things)
                doc = f"{a}: I bought {thing}.\n{b}: Great, bring some!\n{a}: Sure, tomorrow."
                f.write(json.dumps({"id": str(i), "document": doc, "summary": f"{a} will bring {b} {thing}."}) + "\n")
    return root


def compose_task(name: str, *overrides: str):
    from core.task import load_task

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return load_task(compose("config", overrides=[f"task={name}", "model=tiny", *overrides]))


def test_bleu_and_chrf_are_sacrebleu_on_the_same_strings():
    hyps = ["ein mann rennt .", "eine frau schläft", "zwei hunde spielen im schnee"]
    refs = ["ein mann rennt.", "eine frau schläft auf dem sofa", "zwei hunde spielen im schnee"]
    metrics = compose_task("translation").compute_metrics(list(zip(hyps, refs)))
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert 0 < metrics["bleu"] < 100


def test_rouge_is_rouge_score_with_stemming_in_percent():
    hyps = ["Anna will bring cookies to Ben.", "Dan is running late"]
    refs = ["Anna brings Ben cookies tomorrow.", "Dan runs late for the meeting."]
    metrics = compose_task("summarization").compute_metrics(list(zip(hyps, refs)))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, h) for h, r in zip(hyps, refs)]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert metrics[key] == pytest.approx(100 * sum(d[key].fmeasure for d in direct) / len(direct))
    assert metrics["rouge1"] > 0  # "runs" and "running" meet through the stemmer


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory):
    """A tiny model trained through run.py until it reproduces its six training pairs."""
    work = tmp_path_factory.mktemp("translation")
    root = write_multi30k(work / "data")
    out = run_suite("task=translation", "model=tiny", "model.dropout=0", f"data.root={root}", "trainer.lr=3e-3",
                    "trainer.batch_size=8", "trainer.max_steps=240", "trainer.warmup_steps=20", "trainer.max_minutes=0",
                    "trainer.eval_every=80", "trainer.log_every=20", "task.label_smoothing=0", cwd=work, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = Path(out.stdout.split("run saved in ")[-1].split(" (")[0])
    return work, run_dir, out.stdout


def test_translation_learns_its_pairs_and_scores_them_exactly(translation_run):
    _, run_dir, stdout = translation_run
    assert "test bleu 100.0000" in stdout
    assert (run_dir / "tokenizer.json").is_file() and (run_dir / "model.safetensors").is_file()


def test_run_folder_loads_with_auto_model_to_the_same_outputs(translation_run):
    """AutoModelForSeq2SeqLM.from_pretrained(run_dir) after `import core` is the model mode=predict loads: the same
    logits, and generate() with the saved generation_config.json translates the training pairs as mode=predict."""
    _, run_dir, _ = translation_run
    task, model = load_run(run_dir)
    auto = AutoModelForSeq2SeqLM.from_pretrained(run_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    sources = [s for s, _ in TRAIN_PAIRS]
    assert tokenizer(sources, truncation=True)["input_ids"] == task.text.encode_sources(sources)[0]  # text, EOS
    enc = tokenizer(sources, padding=True, truncation=True, return_tensors="pt")
    targets = tokenizer([t for _, t in TRAIN_PAIRS], padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = auto(**enc, decoder_input_ids=targets).logits
        assert torch.equal(logits, model(**enc, decoder_input_ids=targets).logits)
    saved = json.loads((run_dir / "generation_config.json").read_text())
    assert {k: saved[k] for k in ("num_beams", "length_penalty", "max_len_a", "max_len_b", "max_new_tokens")} == \
        {"num_beams": 4, "length_penalty": 0.6, "max_len_a": 1.5, "max_len_b": 10, "max_new_tokens": 96}
    texts = tokenizer.batch_decode(auto.generate(**enc), skip_special_tokens=True)
    assert texts == [t for _, t in TRAIN_PAIRS] == task.predict(model, sources)


def test_run_folder_loads_where_the_suite_is_not_installed(translation_run, tmp_path):
    """A copied run folder, in a process that cannot import the suite: AutoTokenizer and AutoModelForSeq2SeqLM with
    trust_remote_code=True load it alone; the same logits as here, and generate() translates as mode=predict."""
    _, run_dir, _ = translation_run
    folder = tmp_path / "model"
    folder.mkdir()
    for path in run_dir.iterdir():
        if path.is_file():
            shutil.copy(path, folder)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    enc = tokenizer([s for s, _ in TRAIN_PAIRS], padding=True, return_tensors="pt")
    targets = tokenizer([t for _, t in TRAIN_PAIRS], padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = AutoModelForSeq2SeqLM.from_pretrained(run_dir).eval()(**enc, decoder_input_ids=targets).logits
    torch.save({"enc": dict(enc), "targets": targets, "logits": logits}, tmp_path / "io.pt")
    out = run_without_suite(
        "import json, torch\nfrom transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n"
        "io = torch.load('io.pt')\n"
        "model = AutoModelForSeq2SeqLM.from_pretrained('model', trust_remote_code=True).eval()\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        "with torch.no_grad():\n"
        "    logits = model(**io['enc'], decoder_input_ids=io['targets']).logits\n"
        "assert torch.equal(logits, io['logits']), (logits - io['logits']).abs().max()\n"
        "tokenizer = AutoTokenizer.from_pretrained('model', trust_remote_code=True)\n"
        "print('outputs', json.dumps(tokenizer.batch_decode(model.generate(**io['enc']), skip_special_tokens=True)))\n",
        cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.split("outputs ")[-1]) == [t for _, t in TRAIN_PAIRS]


def untrained_run(tmp_path: Path, name: str, *overrides: str) -> Path:
    """A run folder as run.py saves one (config.yaml, tokenizer, config.json, weights, generation_config.json) of
    an untrained tiny model: it rambles, so decoding runs into its length limits."""
    task = compose_task(name, *overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    task.prepare(run_dir, is_main=True)
    torch.manual_seed(0)
    save_weights(task.build_model().eval(), run_dir)
    OmegaConf.save(task.cfg, run_dir / "config.yaml", resolve=True)
    return run_dir


def test_generate_without_arguments_decodes_as_mode_predict(tmp_path):
    """generate(**tokenizer(texts)) with the run's generation_config.json alone gives mode=predict's outputs: beam 4,
    length penalty 0.6, the source-relative cap 1.5 * source tokens + 10 binding (an untrained model never ends)."""
    root = write_multi30k(tmp_path / "data", n_train=24)
    run_dir = untrained_run(tmp_path, "translation", f"data.root={root}", "task.vocab_size=120")
    sources = [s for s, _ in TRAIN_PAIRS]
    inputs = tmp_path / "in.en"
    inputs.write_text("\n".join(sources) + "\n")
    out = run_suite("mode=predict", f"run_dir={run_dir}", f"input={inputs}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    predicted = out.stdout.split("\n")[: len(sources)]
    model = AutoModelForSeq2SeqLM.from_pretrained(run_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    order = sorted(range(len(sources)), key=lambda i: -len(tokenizer(sources[i])["input_ids"]))  # predict's batch
    enc = tokenizer([sources[i] for i in order], padding=True, truncation=True, return_tensors="pt")
    generated = model.generate(**enc)
    texts = [" ".join(t.split()) for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    assert [predicted[i] for i in order] == texts
    lengths = [len(x) for x in token_lists(generated, tokenizer.eos_token_id, tokenizer.pad_token_id)]
    caps = (1.5 * enc["attention_mask"].sum(1) + 10).long().tolist()  # all well under max_new_tokens=96
    assert all(n <= cap for n, cap in zip(lengths, caps)) and sum(n == cap for n, cap in zip(lengths, caps)) >= 3
    assert model.generation_config.num_beams == 4 and max(caps) < 96


def test_predict_keeps_order_and_gives_empty_lines_for_empty_inputs(translation_run, tmp_path):
    work, run_dir, _ = translation_run
    inputs = tmp_path / "in.en"
    inputs.write_text("a dog sleeps.\n\na man runs.\n   \na small woman sees the dog.\n")
    out = run_suite("mode=predict", "task=translation", f"run_dir={run_dir}", f"input={inputs}", cwd=work)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:5] == ["ein hund schläft.", "", "ein mann rennt.", "",
                                          "ein kleiner frau sieht den hund."]


def test_predict_warns_and_counts_truncated_sources(translation_run):
    work, run_dir, _ = translation_run
    long = " ".join(["a big cat sees the ball."] * 30)  # ~180 tokens; the saved run's limit is 128
    out = run_suite("mode=predict", "task=translation", f"run_dir={run_dir}", f"text={long}", cwd=work)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1 of 1 inputs were longer than task.max_source_len=128" in out.stdout + out.stderr
    assert out.stdout.strip()  # still translated (its first 31 tokens)


def test_predict_with_a_run_of_another_task_names_that_task(translation_run, tmp_path):
    work, run_dir, _ = translation_run
    out = run_suite("mode=predict", "task=summarization", f"run_dir={run_dir}", "text=hello", cwd=work)
    assert out.returncode == 2 and "holds a translation model" in out.stderr and "task=translation" in out.stderr


def test_batches_are_grouped_by_length(tmp_path):
    root = tmp_path / "data"
    folder = root / "multi30k_en_de"
    folder.mkdir(parents=True)
    rng = random.Random(0)
    words = list(EN_DE)
    rows = [" ".join(rng.choices(words, k=rng.randint(2, 40))) for _ in range(512)]
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"id": i, "src": s, "tgt": s}) + "\n"
                                                       for i, s in enumerate(rows)))
    task = compose_task("translation", f"data.root={root}", "trainer.batch_size=16")
    task.prepare(tmp_path / "run", is_main=True)

    def padding_ratio(batches) -> float:
        pads = sum((b["input_ids"] == task.text.tokenizer.pad_token_id).sum().item() for b in batches)
        return pads / sum(b["attention_mask"].sum().item() for b in batches)

    grouped = padding_ratio(task.dataloader("train", train=True))
    rows = list(task.text.data["train"])
    shuffled = [task.text.collate(rows[i : i + 16]) for i in range(0, len(rows), 16)]  # the file order is random
    assert grouped < 0.5 * padding_ratio(shuffled)


def test_summarization_reads_dialogues_separated_by_blank_lines(tmp_path):
    path = tmp_path / "dialogues.txt"
    path.write_text("Anna: hi\nBen: hello\n\n\nCleo: pizza?\r\nDan: yes\n")
    task = compose_task("summarization", f"input={path}")
    assert task.read_inputs() == ["Anna: hi\nBen: hello", "Cleo: pizza?\nDan: yes"]
    assert compose_task("summarization", "text=Anna: hi\\nBen: hello").read_inputs() == ["Anna: hi\nBen: hello"]
    with pytest.raises(UserError, match="not found"):
        compose_task("summarization", f"input={tmp_path / 'missing.txt'}").read_inputs()


def test_summarization_trains_and_summarises_through_run_py(tmp_path):
    root = write_samsum(tmp_path / "data")
    out = run_suite("task=summarization", "model=tiny", f"data.root={root}", "trainer.batch_size=8",
                    "trainer.max_steps=30", "trainer.max_minutes=0", "trainer.eval_every=15",
                    "task.generation.max_new_tokens=12", "task.generation.num_beams=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rouge1" in out.stdout and "rougeL" in out.stdout
    run_dir = Path(out.stdout.split("run saved in ")[-1].split(" (")[0])
    dialogues = tmp_path / "in.txt"
    dialogues.write_text("Anna: I bought pizza.\nBen: Great!\n\nCleo: hi\nDan: hi\n")
    pred = run_suite("mode=predict", "task=summarization", f"run_dir={run_dir}", f"input={dialogues}", cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert len(pred.stdout.rstrip("\n").split("\n")) == 2  # one summary per dialogue


def test_generation_lengths_are_validated():
    with pytest.raises(UserError, match="task.generation"):
        compose_task("translation", "task.generation.num_beams=four")
    task = compose_task("summarization")
    assert task.config.generation.max_new_tokens == 80 and task.config.generation.no_repeat_ngram_size == 3


def test_several_references_are_scored_against_all_of_them():
    hyps = ["ein mann rennt .", "zwei hunde spielen"]
    refs = [["ein mann läuft.", "ein mann rennt ."], "zwei hunde spielen im schnee"]  # a list, or one text
    metrics = compose_task("translation").compute_metrics(list(zip(hyps, refs)))
    streams = [["ein mann läuft.", "zwei hunde spielen im schnee"], ["ein mann rennt .", None]]
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score)
    assert metrics["bleu"] > compose_task("translation").compute_metrics([(hyps[0], refs[0][0]), (hyps[1], refs[1])])[
        "bleu"]
    rouge = compose_task("summarization").compute_metrics([("Anna brings cookies.", ["Ben buys tea.",
                                                                                      "Anna brings cookies."])])
    assert rouge["rouge1"] == pytest.approx(100.0)  # the best of the references


def test_a_split_with_extra_columns_and_several_references_loads_and_scores_all(tmp_path):
    """Bring-your-own data: the test split carries a column the others lack (several reference summaries), and a
    target that is a list; both load, and every reference is kept for scoring."""
    root = write_samsum(tmp_path / "data")
    test = tmp_path / "data" / "samsum" / "test.jsonl"
    rows = [json.loads(line) for line in test.read_text().splitlines()]
    rows[0]["more_summaries"] = ["first of two.", "second of two."]
    rows[0]["annotator"] = "x"
    for row in rows[1:]:
        row["more_summaries"], row["annotator"] = [], "y"
    rows[1]["summary"] = [rows[1]["summary"], "another summary."]
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = compose_task("summarization", f"data.root={root}", "task.vocab_size=100",
                        "data.columns.references=more_summaries")
    task.prepare(tmp_path / "run", is_main=True)
    refs = task.text.data["test"]["reference"]
    assert refs[0] == ["first of two.", "second of two."] and refs[1] == [rows[1]["summary"][0], "another summary."]
    assert refs[2] == [rows[2]["summary"]]  # no extra references: its summary
    assert task.text.data["test"]["labels"][1][:-1] == task.text.tokenizer(rows[1]["summary"][0],
                                                                         add_special_tokens=False)["input_ids"]
    batch = next(iter(task.dataloader("test", train=False)))
    assert isinstance(batch["reference"][0], list)
    plain = compose_task("summarization", f"data.root={root}", "task.vocab_size=100")  # references not named
    plain.prepare(tmp_path / "plain", is_main=True)
    assert plain.text.data["test"]["reference"][0] == [rows[0]["summary"]]


def test_two_processes_score_every_test_pair_exactly_once(tmp_path):
    """torchrun with 2 processes over 7 test pairs (uneven shards): the run's test BLEU/chrF equal the saved model's
    predictions scored once each in one process (float32 on both sides, so the decoding is the same)."""
    root = write_multi30k(tmp_path / "data")
    test = TRAIN_PAIRS + [("a big dog runs.", "ein großer hund rennt.")]
    (root / "multi30k_en_de" / "test.jsonl").write_text(
        "".join(json.dumps({"id": i, "src": s, "tgt": t}) + "\n" for i, (s, t) in enumerate(test)))
    out = run_suite("task=translation", "model=tiny", f"data.root={root}", "trainer.batch_size=8",
                    "trainer.max_steps=40", "trainer.eval_every=20", "trainer.max_minutes=0",
                    "trainer.eval_batch_size=2", "trainer.mixed_precision=no", f"run_dir={tmp_path / 'run'}",
                    cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
                    launcher=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"], timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("test bleu")]
    sources = tmp_path / "test.en"
    sources.write_text("\n".join(s for s, _ in test) + "\n")
    pred = run_suite("mode=predict", f"run_dir={tmp_path / 'run'}", f"input={sources}", cwd=tmp_path)
    hyps = pred.stdout.split("\n")[: len(test)]
    refs = [t for _, t in test]
    bleu, chrf = sacrebleu.corpus_bleu(hyps, [refs]).score, sacrebleu.corpus_chrf(hyps, [refs]).score
    assert line == f"test bleu {bleu:.4f}  chrf {chrf:.4f}"


def test_a_killed_translation_run_resumes_to_the_same_weights(tmp_path):
    """Issue 18 for a seq2seq task: its length-grouped batch order is drawn from (seed, epoch), so a run killed with
    SIGKILL mid-epoch and resumed ends with the uninterrupted run's weights and test scores."""
    root = write_multi30k(tmp_path / "data")
    whole, again = killed_and_resumed(
        ["task=translation", "model=tiny", "model.dropout=0.1", f"data.root={root}", "trainer.batch_size=8",
         "trainer.max_steps=36", "trainer.eval_every=18", "trainer.save_every=6", "trainer.max_minutes=0",
         "trainer.log_every=1", "task.generation.max_new_tokens=12", "task.generation.num_beams=2"],
        tmp_path, kill_after_step=24)
    assert again["param_checksums"] == whole["param_checksums"] and again["metrics"] == whole["metrics"]
    assert again["steps"] == whole["steps"] == 36


# -- model.pretrained: a Marian or BART checkpoint fine-tuned through the task ---------------------------------------

CHECKPOINTS = {"marian": (marian_checkpoint, MarianMTModel), "bart": (bart_checkpoint, BartForConditionalGeneration)}


@pytest.mark.parametrize("family", sorted(CHECKPOINTS))
def test_a_checkpoint_reads_its_own_tokens_and_computes_as_transformers(tmp_path, family):
    """Under model.pretrained the task encodes with the checkpoint's tokenizer and special tokens (Marian: text EOS,
    decoding from PAD; BART: BOS text EOS, decoding from EOS); the model it builds gives transformers' logits on the
    task's own batch (teacher forcing) and decodes the same greedy tokens as transformers' generate()."""
    make, their_class = CHECKPOINTS[family]
    root = write_multi30k(tmp_path / "data")
    folder = make(tmp_path / family, [text for pair in TRAIN_PAIRS for text in pair])
    positions = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    too_long = compose_task("translation", f"data.root={root}", f"model.pretrained={folder}",
                            f"task.max_source_len={positions + 1}")
    with pytest.raises(UserError, match=f"the checkpoint has {positions} positions"):  # before anything is written
        too_long.prepare(tmp_path / "refused", is_main=True)
    assert not (tmp_path / "refused").exists()
    task = compose_task("translation", f"data.root={root}", f"model.pretrained={folder}")
    task.prepare(tmp_path / "run", is_main=True)
    theirs = their_class.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    test = task.text.data["test"]
    assert test["input_ids"] == tokenizer([s for s, _ in TRAIN_PAIRS])["input_ids"]
    assert test["labels"] == tokenizer(text_target=[t for _, t in TRAIN_PAIRS])["input_ids"]
    model = task.build_model().eval()
    assert model.generation_config.decoder_start_token_id == theirs.config.decoder_start_token_id
    batch = task.text.collate([test[i] for i in range(len(test))])
    enc = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"].long()}
    with torch.no_grad():
        ours, ref = model(**enc, labels=batch["labels"]).logits, theirs(**enc, labels=batch["labels"]).logits
        assert (ours - ref).abs().max() <= 1e-5
        pad = theirs.config.pad_token_id
        greedy = dict(num_beams=1, max_new_tokens=6, min_new_tokens=1)
        expected = theirs.generate(**enc, **greedy, do_sample=False, suppress_tokens=[pad], no_repeat_ngram_size=0,
                                   forced_bos_token_id=None, forced_eos_token_id=None)
        assert token_lists(model.generate(**enc, **greedy), theirs.config.eos_token_id, pad) == \
            token_lists(expected, theirs.config.eos_token_id, pad)


def test_translation_fine_tunes_a_marian_checkpoint_through_run_py(tmp_path):
    """run.py task=translation model.pretrained=<a Marian folder>: it trains (the loss falls), names the run by what
    it started from, and its run folder is a transformers model whose generate() translates as mode=predict."""
    root = write_multi30k(tmp_path / "data")
    folder = marian_checkpoint(tmp_path / "opus-mt-tiny", [text for pair in TRAIN_PAIRS for text in pair])
    run_dir = tmp_path / "run"
    out = run_suite("task=translation", f"model.pretrained={folder}", f"data.root={root}", "trainer.batch_size=8",
                    "trainer.lr=3e-3", "trainer.max_steps=24", "trainer.warmup_steps=4", "trainer.max_minutes=0",
                    "trainer.eval_every=12", "task.generation.num_beams=2", f"run_dir={run_dir}", cwd=tmp_path,
                    env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "opus-mt-tiny+pretrained" and "bleu" in metrics["metrics"]
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    enc = tokenizer([s for s, _ in TRAIN_PAIRS], text_target=[t for _, t in TRAIN_PAIRS], padding=True,
                    return_tensors="pt")
    labels = enc.pop("labels")
    labels[labels == tokenizer.pad_token_id] = -100

    def loss(model) -> float:  # teacher-forced cross-entropy on the training pairs
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(**enc, labels=labels).logits.transpose(1, 2), labels).item()

    trained, start = AutoModelForSeq2SeqLM.from_pretrained(run_dir), MarianMTModel.from_pretrained(folder)
    assert loss(trained.eval()) < 0.8 * loss(start.eval())  # it learned from the checkpoint's start
    assert (run_dir / "source.spm").is_file()  # the checkpoint's tokenizer travels with the run
    sources = [s for s, _ in TRAIN_PAIRS[:3]]
    (tmp_path / "in.txt").write_text("\n".join(sources) + "\n")
    pred = run_suite("mode=predict", f"run_dir={run_dir}", f"input={tmp_path / 'in.txt'}", cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr[-2000:]
    outputs = trained.generate(**tokenizer(sources, padding=True, return_tensors="pt"))  # generation_config.json's
    assert tokenizer.batch_decode(outputs, skip_special_tokens=True) == pred.stdout.split("\n")[:3]


def test_summarization_fine_tunes_a_bart_checkpoint_through_run_py(tmp_path):
    root = write_samsum(tmp_path / "data")
    rows = [json.loads(line) for line in (root / "samsum" / "train.jsonl").read_text().splitlines()]
    folder = bart_checkpoint(tmp_path / "bart-tiny", [r["document"] for r in rows] + [r["summary"] for r in rows])
    run_dir = tmp_path / "run"
    out = run_suite("task=summarization", f"model.pretrained={folder}", f"data.root={root}", "trainer.batch_size=8",
                    "trainer.max_steps=10", "trainer.max_minutes=0", "trainer.eval_every=5",
                    "task.generation.max_new_tokens=12", "task.generation.num_beams=2", f"run_dir={run_dir}",
                    cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["model"] == "bart-tiny+pretrained"
    saved = json.loads((run_dir / "generation_config.json").read_text())
    assert (saved["decoder_start_token_id"], saved["eos_token_id"], saved["num_beams"]) == (2, 2, 2)  # BART's
