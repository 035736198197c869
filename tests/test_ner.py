"""The NER task and its head: subword alignment, windows, IOB handling, decoding (Viterbi, max-marginals), spans,
overfitting, bad input, the run folder as a transformers model (Auto class, pipeline, remote code), run.py."""

import itertools
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification, pipeline

from core.tagging import max_marginals, transition_rules, viterbi
from core.task import UserError, load_task, save_weights  # importing core registers its Auto classes
from core.words import Collate, split_windows, stitch, to_iob2
from tasks.ner import WORD_RE
from tests.conftest import run_suite, text_logits_without_suite
from tests.test_train import compose_cfg

FIRST = "Angela Peter Maria Johannes Ingrid Kowalczyk".split()
LAST = "Merkel Blackburn Schwarzenegger Lindqvist Okonkwo".split()
PLACES = [["Paris"], ["New", "York"], ["Brussels"], ["Buenos", "Aires"], ["Reykjavik"]]
ORGS = [["European", "Commission"], ["Reuters"], ["United", "Nations"]]
VERBS = "visited left praised".split()


def conll_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """`<PER> <verb> <LOC|ORG> on Monday .` with IOB2 tags, names long enough for WordPiece to split."""
    person = [rng.choice(FIRST), rng.choice(LAST)]
    kind, other = rng.choice([("LOC", rng.choice(PLACES)), ("ORG", rng.choice(ORGS))])
    tokens = person + [rng.choice(VERBS)] + other + ["on", "Monday", "."]
    tags = ["B-PER", "I-PER", "O"] + [f"{'B' if i == 0 else 'I'}-{kind}" for i in range(len(other))] + ["O"] * 3
    return tokens, tags


def write_conll(root: Path, sizes=(60, 12, 12), seed: int = 0) -> Path:
    """<root>/conll2003/{train,validation,test}.jsonl with CoNLL-2003's fields {id, tokens, ner_tags}."""
    rng, folder = random.Random(seed), root / "conll2003"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "validation", "test"), sizes):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                tokens, tags = conll_sentence(rng)
                f.write(json.dumps({"id": i, "tokens": tokens, "ner_tags": tags}) + "\n")
    return folder


def make_task(root: Path, run_dir: Path, *overrides: str):
    cfg = compose_cfg("task=ner", "model=tiny", "task.vocab_size=120", f"data.root={root}", *overrides)
    task = load_task(cfg)
    task.prepare(run_dir, is_main=True)
    return task


@pytest.fixture(scope="module")
def conll_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ner_data")
    write_conll(root)
    return root


def test_alignment_round_trips_on_split_words(conll_root, tmp_path):
    task = make_task(conll_root, tmp_path)
    words = ["Schwarzenegger", "visited", "Reykjavik", "on", "Monday", "."]
    (row,) = task.rows([words], [[7, 0, 1, 0, 0, 0]])
    starts, ids, labels = row["word_starts"], row["input_ids"], row["labels"]
    assert len(starts) == len(words)
    ends = starts[1:] + [len(ids) - 1]
    assert max(e - s for s, e in zip(starts, ends)) > 1, "the vocabulary should split at least one of these rare names"
    for w, (start, end) in enumerate(zip(starts, ends)):
        assert task.tokenizer.decode(ids[start:end]) == words[w]  # the word's pieces, and only them
        assert labels[start] == [7, 0, 1, 0, 0, 0][w] and all(x == -100 for x in labels[start + 1 : end])
    assert labels[0] == labels[-1] == -100  # [CLS], [SEP]


def test_long_sentences_are_windowed_not_truncated(conll_root, tmp_path):
    task = make_task(conll_root, tmp_path, "task.max_len=12")
    tokens, tags = [], []
    for _ in range(6):
        t, y = conll_sentence(random.Random(len(tokens)))
        tokens, tags = tokens + t, tags + [task.labels.index(x) for x in y]
    rows = task.rows([tokens], [tags])
    assert len(rows) > 1 and all(len(r["input_ids"]) <= 12 for r in rows)
    assert [r["offset"] for r in rows] == sorted({r["offset"] for r in rows})
    gold = [[r["labels"][s] for s in r["word_starts"]] for r in rows]
    records = [(r["sid"], r["offset"], g, g, g) for r, g in reversed(list(zip(rows, gold)))]  # any order back
    assert stitch(records)[0] == [tags]
    assert split_windows([[1] * 30, [2], [3, 4]], 4) == [(0, 1), (1, 3)]  # an over-long word gets its own window


def test_iob1_becomes_iob2_and_decoding_keeps_paths_legal():
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC",
                                                                          "B-ORG"]
    assert to_iob2(["B-PER", "I-PER", "O"]) == ["B-PER", "I-PER", "O"]
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    allowed, start = transition_rules(labels)
    trans, first = (~allowed).float() * -1e4, (~start).float() * -1e4
    # argmax would say I-PER O I-LOC: illegal twice; Viterbi must pick the best legal path instead
    scores = torch.tensor([[[0.0, 1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.5]]])
    (path,) = viterbi(scores, torch.ones(1, 3, dtype=torch.bool), trans, first)
    assert [labels[t] for t in path] == ["B-PER", "O", "B-LOC"]


def test_word_regex_gives_conll_like_words_and_exact_spans():
    text = "Angela Merkel's U.S. visit on 1996-08-22, said Reuters."
    words = [m.group() for m in WORD_RE.finditer(text)]
    assert words == ["Angela", "Merkel", "'s", "U.S.", "visit", "on", "1996-08-22", ",", "said", "Reuters", "."]
    assert all(text[m.start() : m.end()] == m.group() for m in WORD_RE.finditer(text))


def train_steps(task, steps: int = 150) -> torch.nn.Module:
    torch.manual_seed(0)
    model = task.build_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = Collate(task.tokenizer, chars=task.cfg.task.char_features)(task.data["train"])
    for _ in range(steps):
        loss = model(**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module", params=[("constrained", "true"), ("crf", "false")], ids=lambda p: "-".join(p))
def trained(request, tmp_path_factory):
    """A tiny model trained to fit 8 sentences, saved as a run folder (weights, config.json, tokenizer)."""
    decoder, chars = request.param
    root = tmp_path_factory.mktemp(f"ner_{decoder}")
    write_conll(root, sizes=(8, 8, 8))
    task = make_task(root, root, f"task.decoder={decoder}", f"task.char_features={chars}", "model.dropout=0.0",
                     "task.word_dropout=0.0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_steps(task)
    finally:
        torch.set_num_threads(threads)
    save_weights(model, root)
    return task, model, root


def test_tiny_model_overfits_and_predicts_character_spans(trained):
    task, model, root = trained
    records = []
    with torch.no_grad():
        for batch in task.dataloader("train", train=False):
            records += task.eval_step(model, batch)
    assert task.compute_metrics(records)["f1"] == 100.0
    row = json.loads((root / "conll2003/train.jsonl").read_text().splitlines()[0])
    text = " ".join(row["tokens"][:-1]) + "."  # "Maria Lindqvist left Buenos Aires on Monday."
    (line,) = task.predict(model, [text])
    expected = [f"{t[2:]} {text.index(w)}:{text.index(w) + len(w)} {w}" for t, w in entity_surfaces(row)]
    assert line == f"{text}\t{'; '.join(expected)}"


def parity_texts(seed: int = 1, n: int = 6) -> list[str]:
    """Sentences whose words the pipeline's pre-tokenizer and WORD_RE split alike (names, verbs, `on Monday.`)."""
    rng = random.Random(seed)
    return [" ".join(conll_sentence(rng)[0][:-1]) + "." for _ in range(n)] + ["Paris ."]


def assert_pipeline_matches_predict(task, model, run_dir: Path, texts: list[str]) -> None:
    """transformers' token-classification pipeline on the run folder gives mode=predict's label for every subword
    of every word, and its word-level entity groups are mode=predict's character spans."""
    nlp = pipeline("token-classification", model=str(run_dir))
    for text, line in zip(texts, task.predict(model, texts)):
        words = list(WORD_RE.finditer(text))
        (tags,) = task.tag(model, [[m.group() for m in words]])
        tokens = nlp(text, ignore_labels=[])  # every subword with its argmax label
        for m, tag in zip(words, tags):
            inside = [t["entity"] for t in tokens if m.start() <= t["start"] < m.end()]
            assert inside and set(inside) == {tag}, (text, m.group(), inside, tag)
        spans = [f"{g['entity_group']} {g['start']}:{g['end']} {text[g['start'] : g['end']]}"
                 for g in nlp(text, aggregation_strategy="first")]
        assert line == f"{text}\t{'; '.join(spans) if spans else '(no entities)'}"


def test_a_run_folder_reloads_through_the_auto_class_and_the_pipeline_agrees(trained):
    task, model, root = trained
    assert not (root / "labels.json").exists() and not (root / "chars.json").exists()
    again = AutoModelForTokenClassification.from_pretrained(root).eval()
    assert type(again) is type(model) and again.config.id2label == dict(enumerate(task.labels))
    batch = Collate(task.tokenizer, chars=task.config.char_features)(task.data["test"])
    with torch.no_grad():
        for inputs in ({k: v for k, v in batch.items() if k != "labels"}, {"input_ids": batch["input_ids"],
                                                                          "attention_mask": batch["attention_mask"]}):
            a, b = model(**inputs), again(**inputs)
            assert torch.equal(a.logits, b.logits) and torch.equal(a.word_scores, b.word_scores)
    fresh = load_task(task.cfg)
    fresh.load_assets(root)
    loaded = fresh.load_model(root)
    assert fresh.labels == task.labels  # from config.json
    if task.config.char_features:  # the char-CNN's characters come with its weights
        assert fresh.chars == task.chars and len(fresh.chars) > 30
    else:
        assert fresh.chars == {}
    texts = parity_texts()
    assert fresh.predict(loaded, texts) == task.predict(model, texts)
    assert_pipeline_matches_predict(fresh, loaded, root, texts)


@pytest.fixture(scope="module")
def random_crf(tmp_path_factory):
    """An untrained CRF model with chars whose transitions are random and strong: its Viterbi paths often differ
    from the per-word argmax, so only the max-marginals can give the pipeline mode=predict's labels."""
    root = tmp_path_factory.mktemp("ner_random_crf")
    write_conll(root)
    task = make_task(root, root, "task.decoder=crf", "task.char_features=true", "task.max_word_chars=6")
    torch.manual_seed(3)
    model = task.build_model().eval()
    with torch.no_grad():
        model.tags.trans.normal_(0.0, 4.0)
        model.tags.start.normal_(0.0, 4.0)
    save_weights(model, root)
    return task, model, root


def test_the_pipeline_reads_the_viterbi_path_of_a_crf(random_crf):
    task, model, root = random_crf
    texts = parity_texts(seed=2)
    rows = task.rows([WORD_RE.findall(t) for t in texts])
    with torch.no_grad():
        out = model(**{k: v for k, v in Collate(task.tokenizer)(rows).items() if k not in ("sid", "offset")})
    assert model.decode(out) != model.decode(out, constrained=False)  # the emissions alone would be wrong
    assert_pipeline_matches_predict(task, model, root, texts)


def test_bare_input_ids_give_the_words_and_characters_the_task_gives(random_crf):
    """Without word_starts and chars (a pipeline's call) the model finds each word's first subword and its
    characters (its pieces' end to end, at most max_word_chars) as the task's own windows have them."""
    task, model, _ = random_crf
    sentences = [["Schwarzenegger", "visited", "Reykjavik", "."], ["Ingrid", "Kowalczyk", "left", "Paris"]]
    batch = Collate(task.tokenizer)(task.rows(sentences))
    assert any(b - a > 1 for a, b in zip(batch["word_starts"][0].tolist(), batch["word_starts"][0, 1:].tolist()))
    starts, mask = model.vocab.words(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(starts, batch["word_starts"]) and torch.equal(mask, batch["word_starts"] > 0)
    token_word = model.vocab.token_words(batch["input_ids"], batch["attention_mask"], starts, mask)
    chars = model.vocab.word_chars(batch["input_ids"], starts, token_word)
    assert chars.size(-1) == 6 and torch.equal(chars[:, :, : batch["chars"].size(-1)], batch["chars"])
    assert (chars[0, 0] > 1).all()  # "Schwarzenegger" is cut at 6 characters, read across its pieces
    with torch.no_grad():
        bare = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        full = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "word_starts", "chars")})
    assert torch.equal(bare.logits, full.logits)


def test_a_run_folder_loads_where_the_suite_is_not_installed(random_crf, tmp_path):
    task, model, root = random_crf
    folder = tmp_path / "shared_model"
    shutil.copytree(root, folder, ignore=shutil.ignore_patterns("conll2003"))
    texts = parity_texts(seed=4, n=3)
    enc = task.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits
    first, groups = text_logits_without_suite(folder, "AutoModelForTokenClassification", texts, tmp_path, """
nlp = pipeline("token-classification", model=folder, trust_remote_code=True)
print(json.dumps([[(e["entity_group"], e["start"], e["end"]) for e in nlp(t, aggregation_strategy="first")]
                  for t in texts]))
""")[-2:]
    module, logits = first.split(" ", 1)
    assert module.startswith("transformers_modules.")  # the folder's own copy of the modeling code
    torch.testing.assert_close(torch.tensor(json.loads(logits)), expected, atol=1e-5, rtol=1e-5)
    spans = [[f"{kind} {start}:{end} {text[start:end]}" for kind, start, end in found]
             for text, found in zip(texts, json.loads(groups))]
    assert [line.split("\t")[1] for line in task.predict(model, texts)] == \
        ["; ".join(s) if s else "(no entities)" for s in spans]


def test_max_marginals_point_at_the_viterbi_path():
    """Per word and tag, the best path through that tag (checked against every path of short rows); their argmax is
    the Viterbi path, which the per-word argmax often is not."""
    torch.manual_seed(0)
    B, W, L = 64, 5, 4
    scores, trans, start = torch.randn(B, W, L), torch.randn(L, L) * 2, torch.randn(L)
    lengths = torch.randint(1, W + 1, (B,))
    mask = torch.arange(W)[None] < lengths[:, None]
    marg, paths = max_marginals(scores, mask, trans, start), viterbi(scores, mask, trans, start)
    s, t, first = scores.tolist(), trans.tolist(), start.tolist()
    for b in range(B):
        n = int(lengths[b])
        best = [[-float("inf")] * L for _ in range(n)]
        for path in itertools.product(range(L), repeat=n):
            total = first[path[0]] + sum(s[b][w][tag] for w, tag in enumerate(path))
            total += sum(t[p][q] for p, q in zip(path, path[1:]))
            for w, tag in enumerate(path):
                best[w][tag] = max(best[w][tag], total)
        best = torch.tensor(best)
        torch.testing.assert_close(marg[b, :n], best)
        assert marg[b, :n].argmax(-1).tolist() == paths[b] == best.argmax(-1).tolist()
    greedy = [row[: int(n)] for row, n in zip(scores.argmax(-1).tolist(), lengths)]
    assert sum(g != p for g, p in zip(greedy, paths)) > B // 4


def test_a_wrong_decoder_is_one_line_before_anything_is_built(tmp_path):
    with pytest.raises(UserError, match=r"^task.decoder='viterbi': choose one of argmax, constrained, crf$"):
        load_task(compose_cfg("task=ner", "model=tiny", "task.decoder=viterbi", f"data.root={tmp_path}"))
    with pytest.raises(UserError, match=r"task.word_dropout=1.5"):
        load_task(compose_cfg("task=ner", "model=tiny", "task.word_dropout=1.5", f"data.root={tmp_path}"))


def entity_surfaces(row: dict) -> list[tuple[str, str]]:
    out = []
    for word, tag in zip(row["tokens"], row["ner_tags"]):
        if tag.startswith("B-"):
            out.append((tag, word))
        elif tag.startswith("I-"):
            out[-1] = (out[-1][0], out[-1][1] + " " + word)
    return out


def test_bad_tags_are_reported_with_their_line(tmp_path):
    folder = write_conll(tmp_path)
    lines = (folder / "test.jsonl").read_text().splitlines()
    row = json.loads(lines[4])
    row["ner_tags"][0] = "B-DATE"
    lines[4] = json.dumps(row)
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"conll2003/test.jsonl line 5: tag 'B-DATE' is outside the label set"):
        make_task(tmp_path, tmp_path)
    row["ner_tags"][0] = "PERSON"
    lines[4] = json.dumps(row)
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"line 5: tag 'PERSON' is not O, B-<type> or I-<type>"):
        make_task(tmp_path, tmp_path)
    row["ner_tags"] = row["ner_tags"][:-1]
    lines[4] = json.dumps(row)
    (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"line 5: \d+ tokens but \d+ tags"):
        make_task(tmp_path, tmp_path)


def test_run_py_trains_and_predicts_entities(tmp_path):
    write_conll(tmp_path / "data")
    args = ["task=ner", "model=tiny", "task.vocab_size=120", "trainer.max_steps=4", "trainer.batch_size=8",
            "trainer.eval_every=2", "trainer.mixed_precision=no"]
    out = run_suite(*args, "run_dir=run", cwd=tmp_path, env={"SUITE_DATA": str(tmp_path / "data"),
                                                                      "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test f1 " in out.stdout and "PER_f1" in out.stdout
    assert len((tmp_path / "run/history.jsonl").read_text().splitlines()) == 2
    text = "Angela Merkel visited Paris on Monday."
    pred = run_suite("task=ner", "mode=predict", "run_dir=run", f"text={text}", cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr[-2000:]
    line = pred.stdout.strip().splitlines()[-1]
    assert line.startswith(text + "\t")
    for entity in line.split("\t")[1].split("; "):  # whatever an untrained model finds, its spans must be exact
        if entity != "(no entities)":
            kind, span, surface = entity.split(" ", 2)
            start, end = map(int, span.split(":"))
            assert kind in ("PER", "LOC", "ORG") and text[start:end] == surface
    assert not (tmp_path / "run/labels.json").exists() and not (tmp_path / "run/chars.json").exists()
    spans = [f"{g['entity_group']} {g['start']}:{g['end']} {text[g['start'] : g['end']]}"
             for g in pipeline("token-classification", model=str(tmp_path / "run"))(text, aggregation_strategy="first")]
    assert line.split("\t")[1] == ("; ".join(spans) if spans else "(no entities)")


def test_integer_tags_need_names_and_iob1_data_is_read(tmp_path):
    folder = write_conll(tmp_path)
    names = ["O", "I-PER", "I-LOC", "I-ORG", "B-PER", "B-LOC", "B-ORG"]  # IOB1: entities start with I-
    for split in ("train", "validation", "test"):
        path = folder / f"{split}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for r in rows:
            r["ner_tags"] = [names.index(t.replace("B-", "I-")) for t in r["ner_tags"]]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="train.jsonl line 1: integer tags .* set task.tag_names"):
        make_task(tmp_path, tmp_path)
    task = make_task(tmp_path, tmp_path, f"task.tag_names=[{','.join(names)}]")
    assert task.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    first = json.loads((folder / "train.jsonl").read_text().splitlines()[0])
    row = task.data["train"][0]
    assert [task.labels[row["labels"][s]] for s in row["word_starts"]][:2] == ["B-PER", "I-PER"]
    assert first["ner_tags"][:2] == [1, 1]
