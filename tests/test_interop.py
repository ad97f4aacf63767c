"""rlsr's outputs open in the tools the README names, run by those tools' own code (each case skips, with the reason,
where its package is not installed; `pip install -r requirements-dev.txt` installs them all):

- lm-eval-harness: `lm_eval --model hf --model_args pretrained=DIR` scores a checkpoint rlsr wrote on a local
  multiple-choice task (tests/fixtures/interop/rlsr_tiny_mc.yaml over tiny_mc.jsonl, no hub access), and every
  choice's log-likelihood, greedy flag, acc and acc_norm equal ours, computed with rlsr.model.Transformer;
- alpaca_eval: its evaluate() (what `alpaca_eval evaluate --model_outputs ...` runs) reads eval.py's
  model_outputs/<name>.json files, with an annotator that needs no API (tests/fixtures/interop/
  alpaca_eval_fixed_judge: alpaca_eval's own test decoder, always "Output (b)");
- Arena-Hard: answer files as rlsr.arena_hard writes them read back with pandas, as arena-hard-auto's
  show_result.py and utils/add_markdown_info.py read them (arena-hard-auto is not a package; its json reads are
  tested in tests/test_arena_hard.py).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import FIXTURES, make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir, run_script
from rlsr.model import Transformer
from rlsr.run import save_model
from rlsr.tokenizer import Tokenizer

INTEROP = FIXTURES / "interop"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def rlsr_checkpoint(tmp_path):
    """A tiny random Qwen2 written the way the training scripts write RUN/final (weights, tokenizer, generation
    config, settings)."""
    init = make_tiny_policy_dir(tmp_path / "init")
    final = tmp_path / "final"
    save_model(final, Transformer.from_pretrained(init), Tokenizer.from_pretrained(init), {"steps": 0})
    return final


def loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) and whether every continuation token is the argmax, tokenised as lm-eval's
    HFLM does for a causal model: trailing spaces of the context move to the continuation, the pair is encoded
    whole, and the continuation is what follows the context's own encoding."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    cont = whole[len(ctx):]
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont]))                                  # [1, T, V]
    logp = torch.log_softmax(logits[0, len(ctx) - 1:-1].double(), dim=-1)           # [len(cont), V]
    target = torch.tensor(cont)
    return logp[torch.arange(len(cont)), target].sum().item(), bool((logp.argmax(-1) == target).all())


def test_lm_eval_scores_an_rlsr_checkpoint_with_our_loglikelihoods(tmp_path):
    for module in ("lm_eval", "transformers", "accelerate"):
        pytest.importorskip(module, reason=f"{module} not installed (pip install -r requirements-dev.txt)")
    final = rlsr_checkpoint(tmp_path)
    out = tmp_path / "lm_eval"
    env = dict(os.environ, **OFFLINE, HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "datasets"))
    # run inside the fixture folder: the task's data_files path is relative to it
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                           f"pretrained={final},dtype=float32", "--tasks", "rlsr_tiny_mc", "--include_path", ".",
                           "--device", "cpu", "--batch_size", "1", "--log_samples", "--output_path", str(out)],
                          cwd=INTEROP, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (samples_file,) = out.glob("*/samples_rlsr_tiny_mc_*.jsonl")
    (results_file,) = out.glob("*/results_*.json")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    docs = [json.loads(line) for line in (INTEROP / "tiny_mc.jsonl").read_text().splitlines()]
    assert [s["doc"] for s in samples] == docs

    model, tok = Transformer.from_pretrained(final), Tokenizer.from_pretrained(final)
    acc, acc_norm = [], []
    for s, doc in zip(samples, docs):
        ours, theirs = [], []
        for i, choice in enumerate(doc["choices"]):
            args = s["arguments"][f"gen_args_{i}"]
            assert args == {"arg_0": f"Question: {doc['question']}\nAnswer:", "arg_1": " " + choice}
            ours.append(loglikelihood(model, tok, args["arg_0"], args["arg_1"]))
            ll, greedy = s["filtered_resps"][i]
            theirs.append((float(ll), greedy == "True"))
        for (ll, greedy), (their_ll, their_greedy) in zip(ours, theirs):
            assert ll == pytest.approx(their_ll, abs=1e-4) and greedy == their_greedy
        lls = torch.tensor([ll for ll, _ in ours])
        acc.append(float(lls.argmax() == doc["answer"]))
        norm = lls / torch.tensor([float(len(c)) for c in doc["choices"]])  # acc_norm: per character of the choice
        acc_norm.append(float(norm.argmax() == doc["answer"]))
        assert (s["acc"], s["acc_norm"]) == (acc[-1], acc_norm[-1])
    result = json.loads(results_file.read_text())["results"]["rlsr_tiny_mc"]
    assert result["acc,none"] == pytest.approx(sum(acc) / len(acc))
    assert result["acc_norm,none"] == pytest.approx(sum(acc_norm) / len(acc_norm))


def test_alpaca_eval_reads_eval_py_model_outputs(tmp_path, monkeypatch):
    ae_main = pytest.importorskip("alpaca_eval.main", reason="alpaca_eval not installed (pip install -r "
                                  "requirements-dev.txt; it imports pkg_resources, so setuptools < 81)")
    from alpaca_eval import utils as ae_utils

    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    a, b = make_tiny_policy_dir(tmp_path / "a"), make_tiny_policy_dir(tmp_path / "b", family="llama")
    out = tmp_path / "eval"
    run_script("eval.py", [str(a), str(b), "--names", "first", "second", "--data",
                           str(make_tiny_data(tmp_path / "d.jsonl", 6)), "--encoders",
                           str(make_tiny_bert_dir(tmp_path / "enc")), "--no-arena-hard", "--no-ifeval",
                           "--no-lm-eval", "--max-new-tokens", "6", "--out-dir", str(out)])
    files = {n: out / "model_outputs" / f"{n}.json" for n in ("first", "second")}
    ours = {n: json.loads(p.read_text()) for n, p in files.items()}

    df = ae_utils.load_or_convert_to_dataframe(files["second"])   # how evaluate() loads --model_outputs
    assert df.to_dict("records") == ours["second"]
    assert ae_utils.get_generator_name(None, df) == "second"

    leaderboard, annotations = ae_main.evaluate(
        model_outputs=files["second"], reference_outputs=files["first"],
        annotators_config=str(INTEROP / "alpaca_eval_fixed_judge" / "configs.yaml"), output_path=tmp_path / "ae",
        precomputed_leaderboard=None, is_return_instead_of_print=True, fn_metric="get_winrate", sort_by="win_rate",
        caching_path=None, is_randomize_output_order=False)
    assert list(leaderboard.index) == ["second"]
    row = leaderboard.loc["second"]
    assert (row["n_total"], row["n_wins"], row["win_rate"]) == (6, 6, 100.0)  # the fixed judge always picks (b)
    by_instruction = {o["instruction"]: o for o in ours["first"]}
    assert len(annotations) == 6
    for ann in annotations:   # merged on the instruction, outputs carried through unchanged
        assert ann["output_1"] == by_instruction[ann["instruction"]]["output"]
        assert (ann["generator_1"], ann["generator_2"], ann["preference"]) == ("first", "second", 2.0)
    assert {ann["output_2"] for ann in annotations} == {o["output"] for o in ours["second"]}


def test_arena_hard_answer_files_read_by_pandas_as_arena_hard_auto_does(tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas not installed (pip install -r requirements-dev.txt)")
    from rlsr import arena_hard
    questions = [{"uid": "q1", "category": "hard_prompt", "prompt": "Split\u2028here?"},
                 {"uid": "q2", "category": "creative_writing", "prompt": "A poem \u2603"}]
    answers = ["## Plan\n1. **first**\n- second\n```\n# code, not a header\n```\nend\u2028of line",
               "Roses\u2029are __red__ {x}"]
    model_answer = tmp_path / "data" / arena_hard.BENCH / "model_answer"
    arena_hard.write_jsonl(model_answer / "my-model.jsonl",
                           [arena_hard.answer_record(q, "my-model", a, tstamp=1.0) for q, a in zip(questions, answers)])
    # show_result.py get_model_style_metadata: every *.jsonl, read_json(lines=True), model of the first row,
    # metadata by uid
    (file,) = model_answer.glob("*.jsonl")
    df = pd.read_json(file, lines=True)
    assert len(df) == 2 and df.iloc[0]["model"] == file.stem == "my-model"
    metadata = df.set_index("uid")["metadata"].to_dict()
    assert metadata["q1"] == {"header_count": {"h1": 0, "h2": 1, "h3": 0, "h4": 0, "h5": 0, "h6": 0},
                              "list_count": {"ordered": 1, "unordered": 1}, "bold_count": {"**": 1, "__": 0}}
    assert metadata["q2"]["bold_count"] == {"**": 0, "__": 1}
    # its style features: ints as they are, dicts summed (token_len comes from utils/add_markdown_info.py)
    assert [v if isinstance(v, int) else sum(v.values()) for v in metadata["q1"].values()] == [1, 2, 1]
    # utils/add_markdown_info.py and gen_judgment.py: the answer is messages[-1]["content"]["answer"]
    assert df["messages"].map(lambda m: m[-1]["content"]["answer"]).tolist() == answers
    assert df["messages"].map(lambda m: m[0]["content"]).tolist() == [q["prompt"] for q in questions]
