"""Chat templates rendered as transformers renders them, assistant masks, stop ids (fixtures: tests/make_fixtures.py)."""
import json
import shutil

import pytest

from conftest import FIXTURES, needs_smollm2
from rlsr.tokenizer import Tokenizer

CASES = json.loads((FIXTURES / "chat_templates.json").read_text())


def tiny(template_name="smollm2"):
    return Tokenizer.from_pretrained(FIXTURES / "tokenizer", chat_template=CASES["templates"][template_name])


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: f"{c['template']}-{len(c['messages'])}msg-agp{int(c['add_generation_prompt'])}")
def test_chat_template_ids_equal_transformers(case):
    tok = tiny(case["template"])
    assert tok.render(case["messages"], case["add_generation_prompt"]) == case["text"]
    assert tok.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"]) == case["ids"]


def test_templates_inject_their_own_default_system_prompt():
    user = [{"role": "user", "content": "Hi"}]
    assert "named SmolLM" in tiny("smollm2").render(user)
    assert "You are Qwen, created by Alibaba Cloud" in tiny("qwen2.5").render(user)


@pytest.mark.parametrize("template", ["smollm2", "qwen2.5"])
def test_assistant_mask_covers_replies_and_their_end_token_only(template):
    tok = tiny(template)
    conv = next(c["messages"] for c in CASES["cases"] if len(c["messages"]) == 4 and c["messages"][0]["role"] == "user")
    ids, mask = tok.apply_chat_template(conv, return_assistant_mask=True)
    assert len(ids) == len(mask) == len(tok.apply_chat_template(conv))
    assistant = tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
    assert assistant == "Hello! How can I help?<|im_end|>Why did the chicken cross the road?<|im_end|>"
    # the last assistant token is the end-of-turn token, i.e. a stop id: SFT teaches the model to stop
    last = max(i for i, m in enumerate(mask) if m)
    assert ids[last] in tok.stop_ids and ids[last] == tok.end_of_turn_id


def test_assistant_mask_with_leading_whitespace_and_unicode():
    tok = tiny("qwen2.5")
    conv = CASES["cases"][-1]["messages"]
    ids, mask = tok.apply_chat_template(conv, return_assistant_mask=True)
    assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False) == "  Très bien!\n\nMerci.<|im_end|>"


def test_stop_ids_union_of_config_generation_config_and_end_of_turn(tmp_path):
    d = tmp_path / "tok"
    shutil.copytree(FIXTURES / "tokenizer", d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|endoftext|>"  # as in Qwen base checkpoints: eos differs from the chat end token
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 1]}))
    tok = Tokenizer.from_pretrained(d)
    assert tok.eos_id == 0 and tok.end_of_turn_id == 2
    assert tok.stop_ids == {0, 1, 2}


def test_plain_template_for_base_checkpoints(tmp_path):
    d = tmp_path / "tok"
    shutil.copytree(FIXTURES / "tokenizer", d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    cfg["eos_token"] = "<|endoftext|>"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_pretrained(d)
    assert not tok.has_chat_template
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert tok.render(conv[:1], add_generation_prompt=True) == "User: Hi\n\nAssistant:"
    assert tok.render(conv) == "User: Hi\n\nAssistant: Hello<|endoftext|>\n\n"
    ids, mask = tok.apply_chat_template(conv, return_assistant_mask=True)
    assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False) == " Hello<|endoftext|>"
    assert tok.stop_ids == {tok.eos_id}


def test_save_and_reload_keeps_template_and_stops(tmp_path):
    tok = tiny("qwen2.5")
    tok.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    conv = CASES["cases"][2]["messages"]
    assert again.apply_chat_template(conv) == tok.apply_chat_template(conv)
    assert again.stop_ids == tok.stop_ids


def test_decode_skips_special_tokens():
    tok = tiny()
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi there"}])
    assert "<|im_start|>" not in tok.decode(ids) and "<|im_start|>" in tok.decode(ids, skip_special_tokens=False)


@needs_smollm2
def test_packaged_smollm2_tokenizer_matches_transformers_gguf_conversion(smollm2_path):
    ref = json.loads((FIXTURES / "smollm2_reference.json").read_text())
    tok = Tokenizer.from_pretrained(smollm2_path)
    assert [tok.encode(t) for t in ref["texts"]] == ref["ids"]
    conv = [{"role": "user", "content": "Give three tips for staying healthy."}]
    assert tok.apply_chat_template(conv, add_generation_prompt=True) == ref["chat_prompt_ids"]
    assert tok.stop_ids == {2} and tok.vocab_size == 49152
    assert [tok.decode(tok.encode(t)) for t in ref["texts"]] == ref["texts"]
