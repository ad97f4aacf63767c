"""SFT: the trained tokens, step-level normalisation (accumulation == one batch), packing, and train_sft.py."""
import json

import pytest
import torch

from conftest import (FIXTURES, kill_and_resume, logged_metrics, make_tiny_data, make_tiny_policy_dir, run_script)
from rlsr.data import Example
from rlsr.model import Transformer
from rlsr.packing import first_fit_decreasing, pack_examples
from rlsr.sft import sft_batches, sft_loss, tokenize_example
from rlsr.tokenizer import Tokenizer

TEMPLATES = json.loads((FIXTURES / "chat_templates.json").read_text())["templates"]
EXAMPLES = [Example(({"role": "user", "content": "Tell me a joke."},), "Why did the chicken cross the road?", "a", "t"),
            Example(({"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there"},
                     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."}),
                    "Red.", "b", "t"),
            Example(({"role": "user", "content": "You are terse."},), "Hello! How can I help?", "c", "t")]


@pytest.mark.parametrize("template", ["smollm2", "qwen2.5"])
def test_only_the_reference_and_its_end_token_are_trained(template):
    tok = Tokenizer.from_pretrained(FIXTURES / "tokenizer", chat_template=TEMPLATES[template])
    for ex in EXAMPLES:
        x = tokenize_example(tok, ex, max_len=1000)
        trained = [i for i, t in zip(x.ids, x.trained) if t]
        assert tok.decode(trained, skip_special_tokens=False) == ex.reference + "<|im_end|>"
        prompt = tok.apply_chat_template(ex.prompt_messages(), add_generation_prompt=True)
        assert x.ids[:len(prompt)] == prompt and not any(x.trained[:len(prompt)])  # earlier turns not trained
        assert trained[-1] in tok.stop_ids and not x.truncated
    cut = tokenize_example(tok, EXAMPLES[0], max_len=10)
    assert cut.truncated and len(cut.ids) == 10


def _tiny(tmp_path):
    path = make_tiny_policy_dir(tmp_path / "policy")
    return Transformer.from_pretrained(path, dtype=torch.float32, output_vocab=400), Tokenizer.from_pretrained(path)


def _grads(model, batches, n):
    model.zero_grad()
    loss = 0.0
    for b in batches:
        out = sft_loss(model, b, n)
        out.backward()
        loss += out.item()
    return loss, torch.cat([p.grad.flatten() for p in model.parameters()])


def test_accumulation_equals_one_batch_and_packing_equals_unpacked(tmp_path):
    model, tok = _tiny(tmp_path)
    xs = [tokenize_example(tok, ex, 1000) for ex in EXAMPLES * 2]
    n = sum(x.trained[1:].count(True) for x in xs)
    full_loss, full = _grads(model, [pack_examples([[(x.ids, x.trained)] for x in xs])], n)
    acc_loss, acc = _grads(model, sft_batches(xs, 2, False, 1000), n)
    limit = 2 * max(len(x.ids) for x in xs)
    rows = first_fit_decreasing([len(x.ids) for x in xs], limit)
    assert len(rows) < len(xs) and all(sum(len(xs[i].ids) for i in r) <= limit for r in rows)
    packed_loss, packed = _grads(model, sft_batches(xs, 100, True, limit), n)
    assert acc_loss == pytest.approx(full_loss, abs=1e-6) and (acc - full).abs().max() <= 1e-6
    assert packed_loss == pytest.approx(full_loss, abs=1e-5) and (packed - full).abs().max() <= 1e-5 * full.abs().max()
    # the loss is the mean cross-entropy per trained token, computed by hand from full logits
    with torch.no_grad():
        want = 0.0
        for x in xs:
            logits = model(torch.tensor([x.ids]))[0]
            logp = logits.log_softmax(-1)
            want -= sum(logp[t - 1, x.ids[t]].item() for t in range(1, len(x.ids)) if x.trained[t])
    assert full_loss == pytest.approx(want / n, rel=1e-5)


def sft_argv(policy, data, out, steps, *extra):
    return ["--init", str(policy), "--data", str(data), "--train-split", "all", "--eval-data", str(data),
            "--eval-split", "all", "--out-dir", str(out), "--steps", str(steps), "--examples-per-step", "4",
            "--micro-batch-size", "2", "--lr", "1e-3", "--save-every", "2", "--max-seq-len", "48", *extra]


def test_train_sft_lowers_held_out_loss_and_feeds_rlsr(tmp_path):
    policy, data = make_tiny_policy_dir(tmp_path / "policy"), make_tiny_data(tmp_path / "data.jsonl")
    run_script("train_sft.py", sft_argv(policy, data, tmp_path / "sft", 6, "--pack"))
    evals = [json.loads(line) for line in (tmp_path / "sft" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 6] and evals[1]["loss"] < evals[0]["loss"]
    m = logged_metrics(tmp_path / "sft")
    assert [r["step"] for r in m] == list(range(1, 7)) and {"loss", "grad_norm", "num_targets"} <= m[0].keys()
    assert Tokenizer.from_pretrained(tmp_path / "sft" / "final").stop_ids == {2}
    from conftest import make_tiny_bert_dir
    run_script("train_rlsr.py", ["--init", str(tmp_path / "sft" / "final"),
                                 "--encoder", str(make_tiny_bert_dir(tmp_path / "e")), "--data", str(data),
                                 "--train-split", "all", "--no-eval", "--out-dir", str(tmp_path / "rl"), "--steps", "1",
                                 "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4"])
    assert len(logged_metrics(tmp_path / "rl")) == 1


def test_sft_sigkill_then_resume_equals_uninterrupted(tmp_path):
    policy, data = make_tiny_policy_dir(tmp_path / "policy"), make_tiny_data(tmp_path / "data.jsonl")
    run_script("train_sft.py", sft_argv(policy, data, tmp_path / "full", 6))
    killed_at = kill_and_resume("train_sft.py", sft_argv(policy, data, tmp_path / "killed", 6), tmp_path / "killed", 3)
    assert killed_at < 6
    assert logged_metrics(tmp_path / "killed") == logged_metrics(tmp_path / "full")
