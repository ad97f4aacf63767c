"""eval.py end to end on tiny random checkpoints (they cannot answer; the numbers only have to be computed right):
every column, the compute column, paired differences against a hand computation, the prompt-length filter, out-dir
refusal, --resume, checks that reject bad input before any work, and a judged run against a fake OpenAI server."""
import hashlib
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir, needs_eval_data, run_script, script_error
from rlsr import arena_hard, report
from rlsr.benchmarks import check_checkpoint, resolve_split, take
from rlsr.data import load_arena_hard, load_dataset, load_ifeval
from rlsr.lc_win_rate import lc_win_rate
from rlsr.metrics import paired_bootstrap_ci
from rlsr.model import Transformer
from rlsr.sampling import SamplingParams, generate
from rlsr.tokenizer import Tokenizer
from test_judge import FakeOpenAI, outputs_of

FAST = ["--max-new-tokens", "4", "--batch-size", "4", "--no-lm-eval"]  # lm-eval columns: tests/test_lm_tasks.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny checkpoints (qwen2, llama), two tiny encoders, a tiny AlpacaEval-style data file."""
    root = tmp_path_factory.mktemp("tiny")
    return {"a": make_tiny_policy_dir(root / "a"), "b": make_tiny_policy_dir(root / "b", family="llama"),
            "enc": [make_tiny_bert_dir(root / "enc_one"), make_tiny_bert_dir(root / "enc_two")],
            "data": make_tiny_data(root / "data.jsonl", n=8)}


def base_args(tiny, out, *extra):
    return [*FAST, "--data", str(tiny["data"]), "--encoders", *map(str, tiny["enc"]), "--out-dir", str(out), *extra]


def prompt_length(path, text: str) -> int:
    tok = Tokenizer.from_pretrained(path)
    return len(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))


def run_eval(argv) -> str:
    """eval.py run as a command: its standard output."""
    return run_script("eval.py", argv).stdout


def run_error(argv) -> str:
    """eval.py refusing its input: exit status 2, the error on standard error."""
    return script_error("eval.py", argv)

# ---------------------------------------------------------------- a fake judge: deterministic, no network


def fake_reply(body) -> str:
    """Arena-Hard conversations get a verdict chosen by a hash of the prompt (one in six unparseable); the
    AlpacaEval pairwise prompt gets the letter of the longer output (ties unparseable)."""
    user = body["messages"][-1]["content"]
    if "<|The Start of Assistant A's Answer|>" in user:
        labels = ["[[A>>B]]", "[[A>B]]", "[[A=B]]", "[[B>A]]", "[[B>>A]]", "no verdict"]
        return "My final verdict is " + labels[int(hashlib.sha256(user.encode()).hexdigest(), 16) % 6]
    a, b = outputs_of(user)
    return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"


def show_result_win_rate(records) -> float:
    """arena-hard-auto show_result.py: drop null judgments, explode the weighted battles, take the mean."""
    weight = 3
    label_to_score = {"A>B": [1], "A>>B": [1] * weight, "A=B": [0.5], "A<<B": [0] * weight, "A<B": [0],
                      "B>A": [0], "B>>A": [0] * weight, "B=A": [0.5], "B<<A": [1] * weight, "B<A": [1]}
    scores = []
    for x in records:
        games = x["games"]
        if games[0] is None or games[1] is None or games[0]["score"] is None or games[1]["score"] is None:
            continue
        scores += label_to_score[games[1]["score"]] + [1 - s for s in label_to_score[games[0]["score"]]]
    return float(np.mean(scores))


def statistic_by_hand(item) -> float:
    if isinstance(item, dict) and "num" in item:
        return sum(item["num"]) / sum(item["den"])
    if isinstance(item, dict):
        return lc_win_rate(item["preference"], item["length"], item["baseline_length"])
    return float(np.mean(item))


@needs_eval_data
def test_judged_run_has_every_column_paired_differences_and_official_files(tiny, tmp_path):
    a, b = tiny["a"], tiny["b"]
    (b / "compute.json").write_text(json.dumps({"flops": 3.14e15, "tokens": 12345}))
    server = FakeOpenAI()
    server.reply = fake_reply
    out = tmp_path / "eval"
    try:
        run_eval(base_args(tiny, out, str(a), str(b), "--names", "first", "second", "--limit", "6",
                           "--max-prompt-tokens", "300", "--judge-url", server.base_url,
                           "--judge-model", "fake/judge", "--judge-key-env", "", "--compare", "first:second"))
    finally:
        server.close()
        (b / "compute.json").unlink()
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["results"]}
    expected = {"win_rate", "lc_win_rate", "cosine_enc_one", "cosine_enc_two", "rouge_l", "bleu", "length",
                "terminated", "distinct_2",
                "arena_hard_win_rate", "arena_hard_win_rate_hard_prompt", "ifeval_prompt_level_strict",
                "ifeval_inst_level_strict", "ifeval_prompt_level_loose", "ifeval_inst_level_loose"}
    for r in rows.values():
        assert set(r["metrics"]) == expected
        for key, m in r["metrics"].items():
            assert np.isfinite([m["mean"], *m["ci"]]).all(), key
            if isinstance(r["per_item"][key], list):  # a mean lies inside its percentile interval
                assert m["ci"][0] <= m["mean"] + 1e-12 and m["mean"] <= m["ci"][1] + 1e-12, key
            assert m["mean"] == pytest.approx(statistic_by_hand(r["per_item"][key]), abs=1e-12), key
        assert set(r) >= {"name", "checkpoint", "metrics", "per_item", "seconds"}

    # Prompts: the first 6 of each benchmark, then those longer than 300 tokens left out (one tokenizer here).
    lengths = {"alpaca_eval": [prompt_length(a, ex.prompt_messages()[-1]["content"])
                               for ex in load_dataset(str(tiny["data"]))[:6]],
               "arena_hard": [prompt_length(a, q["prompt"]) for q in load_arena_hard()[:6]],
               "ifeval": [prompt_length(a, r["prompt"]) for r in load_ifeval()[:6]]}
    for bench, ls in lengths.items():
        p = res["prompts"][bench]
        assert p["total"] == 6 and p["left_out"] == sum(n > 300 for n in ls) and p["evaluated"] == 6 - p["left_out"]
    assert res["prompts"]["arena_hard"]["left_out"] >= 1 and res["prompts"]["ifeval"]["left_out"] >= 1

    # Paired differences, A - B, against a hand computation from per_item.
    (pair,) = res["paired"]
    assert pair["name"] == "first - second" and set(pair["metrics"]) == expected
    first, second = rows["first"]["per_item"], rows["second"]["per_item"]
    for key, m in pair["metrics"].items():
        assert m["mean"] == pytest.approx(statistic_by_hand(first[key]) - statistic_by_hand(second[key]),
                                          abs=1e-12), key
        if isinstance(first[key], list):   # a mean: the same resamples as rlsr.metrics.paired_bootstrap_ci
            mean, lo, hi = paired_bootstrap_ci(second[key], first[key])
            assert [m["mean"], *m["ci"]] == pytest.approx([mean, lo, hi], abs=1e-12), key

    # results.md: rows = methods, columns derived from the metrics, the compute column.
    md = (out / "results.md").read_text()
    header = md.splitlines()[0]
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:2] == ["method", "compute (training FLOPs)"] and set(cols[2:]) == expected
    assert cols[2:4] == ["win_rate", "lc_win_rate"]
    line = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| first") or
            ln.startswith("| second")}
    assert line["first"].split("|")[2].strip() == "-" and line["second"].split("|")[2].strip() == "3.1e15"
    assert rows["second"]["compute"] == {"flops": 3.14e15, "tokens": 12345} and rows["first"]["compute"] is None
    assert "| first - second |" in md and "No judge" not in md

    # The judges' own numbers: AlpacaEval preferences, LC from them, Arena-Hard as show_result.py scores it.
    for name in ("first", "second"):
        outputs = json.loads((out / "model_outputs" / f"{name}.json").read_text())
        assert len(outputs) == 6 and set(outputs[0]) == {"instruction", "output", "generator", "dataset"}
        judged = [json.loads(x) for x in (out / "judgments" / "alpaca_eval" / f"{name}.jsonl").read_text().split("\n")
                  if x]
        refs = [ex.reference for ex in load_dataset(str(tiny["data"]))[:6]]
        for o, j, ref in zip(outputs, judged, refs):
            # model shown as A first: the fake judge picks the longer output in each order
            want = 1.0 if len(o["output"].strip()) > len(ref.strip()) else 0.0 if len(o["output"].strip()) < \
                len(ref.strip()) else 0.5
            assert j["preference"] == want
        assert rows[name]["metrics"]["lc_win_rate"]["mean"] == pytest.approx(lc_win_rate(
            [j["preference"] for j in judged], [len(o["output"]) for o in outputs], [len(r) for r in refs]))
        answers = arena_hard.read_jsonl(out / "arena_hard" / "arena-hard-v2.0" / "model_answer" / f"{name}.jsonl")
        assert len(answers) == res["prompts"]["arena_hard"]["evaluated"]
        assert set(answers[0]) == {"uid", "ans_id", "model", "messages", "tstamp", "metadata"}
        assert answers[0]["model"] == name
        judgments = arena_hard.read_jsonl(out / "arena_hard" / "arena-hard-v2.0" / "model_judgment" / "fake_judge"
                                          / f"{name}.jsonl")
        assert [j["uid"] for j in judgments] == [x["uid"] for x in answers]
        assert rows[name]["metrics"]["arena_hard_win_rate"]["mean"] == pytest.approx(show_result_win_rate(judgments))
        dropped = sum(any(g["score"] is None for g in j["games"]) for j in judgments)
        assert rows[name]["arena_hard_judge"]["dropped"] == dropped
        lines = (out / "ifeval" / name / "input_response_data.jsonl").read_text().splitlines()
        assert len(lines) == res["prompts"]["ifeval"]["evaluated"] and set(json.loads(lines[0])) == {"prompt",
                                                                                                  "response"}
        assert (out / "per_checkpoint" / f"{name}.json").exists()


def test_without_a_judge_win_rate_columns_are_absent_and_said_so(tiny, tmp_path):
    out = tmp_path / "eval"
    run_eval(base_args(tiny, out, str(tiny["a"]), "--limit", "5", "--no-arena-hard", "--no-ifeval"))
    r = json.loads((out / "results.json").read_text())["results"][0]
    assert set(r["metrics"]) == {"cosine_enc_one", "cosine_enc_two", "rouge_l", "bleu", "length", "terminated",
                                 "distinct_2"}
    md = (out / "results.md").read_text()
    assert "No judge was given" in md and "win_rate" not in md.splitlines()[0]

def test_bertscore_and_bleu_columns_equal_the_rewards_and_seeds_are_summarised(tiny, tmp_path):
    from rlsr.encoder import Encoder
    from rlsr.text_metrics import BERTScore, sentence_bleu
    out = tmp_path / "eval"
    run_eval(base_args(tiny, out, str(tiny["a"]), str(tiny["b"]), "--names", "m@0", "m@1", "--limit", "4",
                       "--no-arena-hard", "--no-ifeval", "--bertscore"))
    res = json.loads((out / "results.json").read_text())["results"]
    answers = json.loads((out / "model_outputs" / "m@0.json").read_text())
    refs = [ex.reference for ex in load_dataset(str(tiny["data"]), "all")[:4]]
    want = BERTScore(Encoder.from_pretrained(tiny["enc"][0]))([a["output"] for a in answers], refs)[0].tolist()
    assert res[0]["per_item"]["bertscore_enc_one"] == pytest.approx(want, abs=1e-6)
    assert res[0]["per_item"]["bleu"] == [sentence_bleu(a["output"], r) for a, r in zip(answers, refs)]
    md = (out / "results.md").read_text()
    assert "m (2 seeds)" in md  # the two rows named m@SEED: mean and spread over seeds
    row = next(line for line in md.splitlines() if line.startswith("| m (2 seeds)"))
    cosines = [r["metrics"]["cosine_enc_one"]["mean"] for r in res]
    assert f"{np.mean(cosines):.3f} ± {np.std(cosines, ddof=1):.3f}" in row


def test_terminated_is_whether_each_answer_ended_by_a_stop_token(tiny, tmp_path):
    a = make_tiny_policy_dir(tmp_path / "a")
    # a third of the ids stop, so within 4 tokens some answers stop and some reach the cap
    (a / "generation_config.json").write_text(json.dumps({"eos_token_id": list(range(2, 416, 3))}))
    out = tmp_path / "eval"
    run_eval(base_args(tiny, out, str(a), "--no-arena-hard", "--no-ifeval"))
    row = json.loads((out / "results.json").read_text())["results"][0]["per_item"]
    tok, model = Tokenizer.from_pretrained(a), Transformer.from_pretrained(a, dtype=torch.float32)
    ids = [tok.apply_chat_template(ex.prompt_messages(), add_generation_prompt=True)
           for ex in load_dataset(str(tiny["data"]))]
    r = generate(model, ids, SamplingParams(max_new_tokens=4, temperature=0.0), tok.stop_ids, pad_id=tok.pad_id)
    want = [float(toks[-1] in tok.stop_ids) for toks in r.completions()]
    assert row["terminated"] == want and 0 < sum(want) < len(want)
    assert row["length"] == r.lengths.tolist()


def test_spread_takes_prompts_by_hash_in_file_order():
    items = [f"p{i}" for i in range(10)]
    picked = take(items, items, 4, spread=True)
    by_hash = sorted(items, key=lambda x: hashlib.sha256(x.encode()).hexdigest())[:4]
    assert picked == [x for x in items if x in by_hash] and take(items, items, 4, False) == items[:4]
    assert take(items, items, None, True) == items


# ---------------------------------------------------------------- the prompt-length filter


def test_prompt_filter_is_the_union_over_tokenizers(tiny, tmp_path):
    """A prompt too long under either checkpoint's chat template is left out for both."""
    long_template = make_tiny_policy_dir(tmp_path / "long")
    cfg_path = long_template / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = cfg["chat_template"].replace("You are a helpful AI assistant",
                                                        "You are a helpful kind AI assistant")
    cfg_path.write_text(json.dumps(cfg))
    words = ["Hello", "there", "colour", "joke", "chicken", "road", "terse", "kind", "help", "name"]
    data = tmp_path / "varied.jsonl"
    data.write_text("".join(json.dumps({"prompt": " ".join(words[:k]), "response": "kind help."}) + "\n"
                            for k in range(1, 11)))
    texts = [" ".join(words[:k]) for k in range(1, 11)]
    short = [prompt_length(tiny["a"], t) for t in texts]
    long = [prompt_length(long_template, t) for t in texts]
    assert all(y > x for x, y in zip(short, long))
    limit = sorted(short)[6]                       # some fit the short template only
    fits_both = [x <= limit and y <= limit for x, y in zip(short, long)]
    assert 0 < sum(fits_both) < sum(x <= limit for x in short)
    out = tmp_path / "eval"
    stdout = run_eval([*FAST, "--data", str(data), "--encoders", str(tiny["enc"][0]), "--no-arena-hard",
                       "--no-ifeval", "--max-prompt-tokens", str(limit), "--out-dir", str(out), str(tiny["a"]),
                       str(long_template), "--names", "short", "long"])
    assert f"{10 - sum(fits_both)} of 10 left out" in stdout
    p = json.loads((out / "results.json").read_text())["prompts"]["alpaca_eval"]
    assert p["left_out"] == 10 - sum(fits_both) and p["evaluated"] == sum(fits_both)
    assert p["left_out_ids"] == [f"varied.jsonl:{i + 1}" for i, f in enumerate(fits_both) if not f]
    kept = [t for t, f in zip(texts, fits_both) if f]
    for name in ("short", "long"):
        assert [o["instruction"] for o in json.loads((out / "model_outputs" / f"{name}.json").read_text())] == kept


def test_a_benchmark_emptied_by_the_filter_is_named(tiny, tmp_path):
    err = run_error(base_args(tiny, tmp_path / "eval", str(tiny["a"]), "--no-arena-hard", "--no-ifeval",
                              "--max-prompt-tokens", "10"))
    assert "alpaca_eval: all 8 prompts are longer than --max-prompt-tokens 10" in err
    assert not (tmp_path / "eval").exists()

# ---------------------------------------------------------------- out-dir, --resume, --overwrite


def test_out_dir_refusal_resume_and_overwrite(tiny, tmp_path):
    server = FakeOpenAI()
    server.reply = fake_reply
    try:
        out_dir_refusal_resume_and_overwrite(tiny, tmp_path, ["--judge-url", server.base_url, "--judge-key-env", ""])
    finally:
        server.close()


def out_dir_refusal_resume_and_overwrite(tiny, tmp_path, judge):
    out = tmp_path / "eval"
    common = base_args(tiny, out, "--limit", "5", "--no-arena-hard", "--no-ifeval", *judge)
    run_eval([str(tiny["a"]), str(tiny["b"]), "--names", "one", "two", *common])
    per = {n: (out / "per_checkpoint" / f"{n}.json").read_bytes() for n in ("one", "two")}
    assert "win_rate" in json.loads(per["one"])["metrics"]           # the judge ran

    err = run_error([str(tiny["a"]), "--names", "one", *common])
    assert "exists and is not empty" in err and "--overwrite" in err and "--resume" in err

    third = make_tiny_policy_dir(tmp_path / "third", family="qwen3")
    stdout = run_eval([str(tiny["a"]), str(tiny["b"]), str(third), "--names", "one", "two", "three", *common,
                       "--resume", "--batch-size", "2"])               # --batch-size may change
    assert "one, two already evaluated, skipped" in stdout
    assert {n: (out / "per_checkpoint" / f"{n}.json").read_bytes() for n in ("one", "two")} == per
    res = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in res["results"]] == ["one", "two", "three"]
    assert [p["name"] for p in res["paired"]] == ["two - one", "three - one"]

    err = run_error([str(tiny["a"]), "--names", "one", *common, "--resume", "--max-new-tokens", "5"])
    assert "--max-new-tokens 4" in err and "this run has 5" in err
    err = run_error([str(tiny["b"]), "--names", "one", *common, "--resume"])
    assert "holds checkpoint" in err and str(tiny["a"]) in err

    run_eval([str(tiny["b"]), "--names", "two", *common, "--overwrite"])
    assert sorted(p.name for p in (out / "per_checkpoint").iterdir()) == ["two.json"]
    assert (out / "per_checkpoint" / "two.json").read_bytes() != per["two"]  # evaluated again (its timings differ)

# ---------------------------------------------------------------- checks before any work


def break_checkpoint(path, how: str):
    if how == "config_json":
        (path / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"],')
    elif how == "architecture":
        cfg = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps(dict(cfg, architectures=["GPT2LMHeadModel"], model_type="gpt2")))
    elif how == "truncated_weights":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "missing_tensor":
        from safetensors.torch import load_file, save_file
        tensors = load_file(path / "model.safetensors")
        tensors.pop("model.norm.weight")
        save_file(tensors, path / "model.safetensors")
    elif how == "no_weights":
        (path / "model.safetensors").unlink()
    elif how == "tokenizer":
        (path / "tokenizer.json").write_text("{ not json")
    elif how == "not_a_directory":
        shutil.rmtree(path)


@pytest.mark.parametrize("how,message", [
    ("config_json", "invalid JSON"), ("architecture", "not supported"), ("truncated_weights", "truncated"),
    ("missing_tensor", "missing tensor 'model.norm.weight'"), ("no_weights", "no weights"),
    ("tokenizer", "tokenizer"), ("not_a_directory", "not a directory"),
])
def test_bad_second_checkpoint_is_rejected_before_the_first_is_evaluated(tiny, tmp_path, how, message):
    bad = make_tiny_policy_dir(tmp_path / "bad")
    break_checkpoint(bad, how)
    out = tmp_path / "eval"
    err = run_error(base_args(tiny, out, str(tiny["a"]), str(bad), "--no-arena-hard", "--no-ifeval"))
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "bad" in err
    assert not out.exists()                         # nothing written, not even the directory


@pytest.mark.parametrize("extra,message", [
    (["--limit", "-1"], "--limit must be >= 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--max-prompt-tokens", "0"], "--max-prompt-tokens must be >= 1"),
    (["--compare", "x:a"], "--compare 'x:a'"),
    (["--compare", "a"], "--compare 'a'"),
    (["--names", "a", "a"], "both named 'a'"),
    (["--names", "a/b", "c"], "cannot be a file name"),
    (["--overwrite", "--resume"], "exclude each other"),
    (["--judge", "j", "--judge-url", "http://127.0.0.1:9"], "give one judge"),
    (["--no-alpaca-eval", "--no-arena-hard", "--no-ifeval"], "every benchmark is turned off"),
    (["--lm-eval-limit", "-1"], "--lm-eval-limit must be >= 0"),
    (["--lm-limit", "-1"], "--lm-eval-limit must be >= 0"),  # --lm-limit, --lm-tasks: aliases
    (["--lm-eval-tasks", "mmlu", "mmlu_pro"], "argument --lm-eval-tasks/--lm-tasks: invalid choice: 'mmlu_pro'"),
    (["--lm-tasks", "mmlu_pro"], "argument --lm-eval-tasks/--lm-tasks: invalid choice: 'mmlu_pro'"),
    (["--judge-url", "http://127.0.0.1:9", "--judge-key-env", "RLSR_EVAL_TEST_UNSET_KEY"],
     "RLSR_EVAL_TEST_UNSET_KEY"),
    (["--data", "nowhere.jsonl"], "is neither a built-in data set"),
    (["--encoders", "enc_one_missing_dir"], "--encoders enc_one_missing_dir"),
])
def test_bad_flags_are_rejected_before_any_work(tiny, tmp_path, extra, message):
    names = [] if "--names" in extra else ["--names", "a", "b"]
    argv = [str(tiny["a"]), str(tiny["b"]), *names, *base_args(tiny, tmp_path / "eval"), "--no-arena-hard",
            "--no-ifeval", *extra]
    err = run_error(argv)
    assert message in err, err
    assert not (tmp_path / "eval").exists()

# ---------------------------------------------------------------- the table


def test_columns_are_derived_from_the_metrics_in_the_preferred_order():
    m = {"mean": 0.5, "ci": [0.4, 0.6]}
    rows = [{"name": "x", "metrics": {"zeta_new": m, "ifeval_inst_level_loose": m, "cosine_mpnet": m, "length": m,
                                      "cosine_minilm": m, "arena_hard_win_rate_creative_writing": m}},
            {"name": "y", "metrics": {"win_rate": m, "alpha_new": m, "arena_hard_win_rate": m}}]
    assert report.columns_of(rows) == ["win_rate", "cosine_mpnet", "cosine_minilm", "length",
                                           "arena_hard_win_rate", "arena_hard_win_rate_creative_writing",
                                           "ifeval_inst_level_loose", "alpha_new", "zeta_new"]
    md = report.report(rows, [], {}, judged=True, max_tokens=512)
    assert md.splitlines()[0].endswith("| alpha_new | zeta_new |")
    assert "| x | - | - | 0.500 [0.400, 0.600] |" in md   # y's win_rate is absent for x: "-"


@pytest.mark.parametrize("flops,cell", [(3.14e15, "3.1e15"), (9.96e15, "1.0e16"), (1.0, "1.0e0"), (0, "0"),
                                        (123456789.0, "1.2e8")])
def test_compute_cell(flops, cell):
    assert report.fmt_flops({"flops": flops}) == cell
    assert report.fmt_flops(None) == "-"


def test_bad_compute_json_is_rejected(tiny, tmp_path):
    ckpt = make_tiny_policy_dir(tmp_path / "c")
    (ckpt / "compute.json").write_text(json.dumps({"flops": "a lot"}))
    err = run_error(base_args(tiny, tmp_path / "eval", str(ckpt), "--no-arena-hard", "--no-ifeval"))
    assert "compute.json: field 'flops' must be a finite number" in err


def test_prompts_a_checkpoint_trained_on_are_reported(tiny, tmp_path):
    """A checkpoint whose run trained on the evaluated prompts is said to have (settings.json beside its weights)."""
    trained = tmp_path / "run" / "final"
    shutil.copytree(tiny["a"], trained)
    (trained / "settings.json").write_text(json.dumps({"data": str(tiny["data"]), "train_split": None,
                                                       "eval_data": None, "eval_split": None}))
    n = len(load_dataset(str(tiny["data"]), "train"))              # a file alone trains on its hash split 'train'
    assert 0 < n < 8
    out = tmp_path / "eval"
    stdout = run_eval(base_args(tiny, out, "--no-arena-hard", "--no-ifeval", str(tiny["a"]), str(trained),
                                "--names", "untrained", "trained"))
    warning = f"WARNING: {n} of 8 alpaca_eval prompts are prompts it trained on (--data {tiny['data']}, split train)"
    assert f"trained: {warning}" in stdout
    assert f"- trained: {warning}" in (out / "results.md").read_text()
    assert "untrained: WARNING" not in (out / "results.md").read_text()


def test_default_split_is_test_when_a_checkpoint_trained_on_alpaca_eval(tmp_path, capsys):
    (tmp_path / "settings.json").write_text(json.dumps({"data": "alpaca_eval", "train_split": None}))
    ckpt = SimpleNamespace(name="rlsr", spec=str(tmp_path), path=tmp_path)
    base = SimpleNamespace(name="base", spec="base", path=tmp_path)
    args = SimpleNamespace(data="alpaca_eval", split=None)      # eval.py's defaults
    resolve_split(args, [base])
    assert args.split == "all"                                   # the packaged model: every prompt is held out
    args = SimpleNamespace(data="alpaca_eval", split=None)
    resolve_split(args, [base, ckpt])
    assert args.split == "test" and "rlsr trained on alpaca_eval" in capsys.readouterr().out
    args = SimpleNamespace(data="alpaca_eval", split="all")
    resolve_split(args, [base, ckpt])
    assert args.split == "all"                                   # given: kept (and the overlap is then reported)


def test_chat_template_flag_applies_to_every_checkpoint_and_a_broken_one_is_refused(tiny, tmp_path):
    template = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    own = check_checkpoint(str(tiny["a"]), "a")
    other = check_checkpoint(str(tiny["a"]), "a", template)
    conv = [{"role": "user", "content": "Hello there"}]
    assert other.tokenizer.render(conv) == "<|im_start|>Hello there<|im_end|>" != own.tokenizer.render(conv)
    assert other.fingerprint != own.fingerprint  # prompt ids are computed per template, not per directory alone
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}\n{{ m['content'] }\n")
    out = tmp_path / "eval"
    err = run_error(base_args(tiny, out, str(tiny["a"]), "--chat-template", str(broken)))
    assert err.startswith("error: --chat-template ") and "broken.jinja: line 2" in err and not out.exists()
