"""Data loading: every record format, strict errors that name file:line and field, the AlpacaEval split, the sampler."""
import json
from collections import Counter

import pytest

from conftest import FIXTURES, needs_eval_data
from rlsr.data import (DataError, Example, PromptSampler, alpaca_eval_test_keys, load_dataset, load_ifeval,
                       load_jsonl, split_key)

MIXED = FIXTURES / "data" / "mixed.jsonl"


def write_jsonl(tmp_path, *records, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def user(text):
    return {"role": "user", "content": text}


def test_every_format_of_the_fixture():
    ex = load_jsonl(MIXED)
    assert [e.id for e in ex] == [f"mixed.jsonl:{n}" for n in (1, 2, 3, 5, 6, 7, 8)]  # line 4 is blank
    assert all(e.source == "mixed.jsonl" for e in ex)
    messages, sharegpt, multi_turn, prompt_str, prompt_list, alpaca, alpaca_input = ex
    assert messages.messages == ({"role": "system", "content": "Be brief."}, user("Capital of France?"))
    assert messages.reference == "Paris."
    assert sharegpt.messages == ({"role": "system", "content": "You are kind."}, user("Say hi."))
    assert sharegpt.reference == "Hi!"
    # earlier assistant turns stay in the prompt; only the last one is the reference
    assert [m["role"] for m in multi_turn.messages] == ["user", "assistant", "user"]
    assert multi_turn.messages[1]["content"] == "4." and multi_turn.reference == "6."
    assert prompt_str.messages == (user("Name a colour."),) and prompt_str.reference == "Blue."
    assert prompt_list.messages == ({"role": "system", "content": "Terse."}, user("Name a fruit."))
    assert prompt_list.reference == "Apple."
    assert alpaca.messages == (user("Give a synonym of big."),) and alpaca.reference == "Large."
    assert alpaca_input.messages == (user("Translate to French.\n\nGood morning"),)


def test_completion_key_blank_input_and_json_list(tmp_path):
    (a,) = load_jsonl(write_jsonl(tmp_path, {"prompt": "p", "completion": "c"}))
    assert a.reference == "c"
    (b,) = load_jsonl(write_jsonl(tmp_path, {"instruction": "Do it.", "input": "  ", "output": "Done."}))
    assert b.messages == (user("Do it."),)
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"instruction": "i", "output": "o"}, {"prompt": "p", "response": "r"}]))
    assert [e.id for e in load_dataset(str(path))] == ["train.json[0]", "train.json[1]"]


def test_prompt_messages_are_copies():
    ex = load_jsonl(MIXED)[0]
    ex.prompt_messages()[0]["content"] = "changed"
    assert ex.messages[0]["content"] == "Be brief."
    assert ex == load_jsonl(MIXED)[0]


@pytest.mark.parametrize("record, field", [
    ('{"instruction": "i", "output": ', "invalid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ({"text": "hello"}, "no known format"),
    ({"instruction": "i", "output": ""}, "field 'output' must be a non-empty string"),
    ({"instruction": "i", "output": "   "}, "field 'output' must be a non-empty string"),
    ({"instruction": 3, "output": "o"}, "field 'instruction' must be a non-empty string"),
    ({"instruction": "i", "input": None, "output": "o"}, "field 'input' must be a string"),
    ({"instruction": "i"}, "field 'output'"),
    ({"prompt": "p"}, "exactly one of 'response', 'completion'"),
    ({"prompt": "p", "response": "r", "completion": "c"}, "exactly one of"),
    ({"prompt": "p", "response": ["r"]}, "field 'response' must be a non-empty string"),
    ({"prompt": {"q": 1}, "response": "r"}, "field 'prompt' must be a non-empty list"),
    ({"prompt": [user("u"), {"role": "assistant", "content": "a"}], "response": "r"},
     "field 'prompt' ends with an assistant turn"),
    ({"messages": []}, "field 'messages' must be a non-empty list"),
    ({"messages": [user("u"), {"role": "bot", "content": "a"}]}, "field 'messages[1].role' must be one of"),
    ({"messages": [user("u"), {"role": "assistant", "content": 5}]}, "field 'messages[1].content' must be a string"),
    ({"messages": [user("u"), {"role": "assistant", "content": ""}]},
     "field 'messages[1].content' must be a non-empty string"),
    ({"messages": [user("u"), "a"]}, "field 'messages[1]' must be an object"),
    ({"messages": [user("u")]}, "field 'messages' must end with an assistant turn"),
    ({"messages": [user("u"), {"role": "assistant", "content": "a"}, user("more")]}, "must end with an assistant"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
     "field 'messages' has no user turn"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "field 'messages' has no user turn"),
    ({"conversations": [{"from": "human", "value": "u"}, {"from": "bot", "value": "a"}]},
     "field 'conversations[1].from' must be one of"),
    ({"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": ""}]},
     "field 'conversations[1].value' must be a non-empty string"),
])
def test_malformed_line_names_file_line_and_field(tmp_path, record, field):
    good = {"instruction": "i", "output": "o"}
    path = write_jsonl(tmp_path, good, "", record)  # the bad record is on line 3, after a blank line
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    assert str(err.value).startswith(f"{path}:3: ") and field in str(err.value)


def test_json_list_errors_name_the_item(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"instruction": "i", "output": "o"}, {"instruction": "i", "output": ""}]))
    with pytest.raises(DataError, match=r"train\.json\[1\]: field 'output'"):
        load_jsonl(path)
    path.write_text(json.dumps({"instruction": "i", "output": "o"}))
    with pytest.raises(DataError, match="expected a JSON list"):
        load_jsonl(path)


def test_unknown_name_lists_builtins_and_files_have_no_splits(tmp_path):
    with pytest.raises(FileNotFoundError, match="alpaca_eval"):
        load_dataset("no_such_dataset")
    with pytest.raises(ValueError, match="no splits"):
        load_dataset(str(MIXED), split="train")
    with pytest.raises(ValueError, match="load_ifeval"):
        load_dataset("ifeval")


def test_split_ignores_order_and_keeps_duplicates_together():
    texts = sorted((f"question {i}" for i in range(20)), key=split_key)
    dup = texts[10]
    # Alone, s0 would hold dup out (its lowest of 5 keys) and s1 would train on it (not among its lowest 2 of 10).
    records = [{"dataset": "s0", "instruction": t} for t in [dup] + texts[11:15]]
    records += [{"dataset": "s1", "instruction": t} for t in texts[:9] + [f" {dup}\n"]]
    test = alpaca_eval_test_keys(records)
    assert test == {split_key(t) for t in (dup, texts[0], texts[1])}
    assert test == alpaca_eval_test_keys(records[::-1])


@needs_eval_data
def test_alpaca_eval_split_sizes_disjoint_and_stable():
    full, train, test = (load_dataset("alpaca_eval", s) for s in (None, "train", "test"))
    assert (len(full), len(train), len(test)) == (805, 644, 161)
    assert load_dataset("alpaca_eval", "all") == full
    assert Counter(e.source.split("/")[1] for e in test) == {
        "helpful_base": 26, "koala": 31, "oasst": 38, "selfinstruct": 50, "vicuna": 16}
    assert sorted(e.id for e in train + test) == sorted(e.id for e in full)
    prompts = lambda split: {" ".join(e.messages[0]["content"].split()) for e in split}  # noqa: E731
    assert not prompts(train) & prompts(test)
    # pinned members: a change to the split rule or the packaged data shows up here
    assert test[0].id == "alpaca_eval:1" and train[0].id == "alpaca_eval:0"
    assert all(e.reference.strip() and e.messages[0]["role"] == "user" for e in full)
    with pytest.raises(ValueError, match="split"):
        load_dataset("alpaca_eval", "validation")


@needs_eval_data
def test_ifeval_records():
    records = load_ifeval()
    assert len(records) == 541 and len({r["key"] for r in records}) == 541
    assert set(records[0]) == {"key", "prompt", "instruction_id_list", "kwargs"}
    assert all(len(r["instruction_id_list"]) == len(r["kwargs"]) for r in records)


def examples(n):
    return [Example(messages=(user(str(i)),), reference=str(i), id=str(i), source="t") for i in range(n)]


def ids(batches):
    return [[e.id for e in b] for b in batches]


def test_sampler_covers_every_example_once_per_epoch_and_reshuffles():
    sampler = PromptSampler(examples(10), batch_size=5, seed=3)
    stream = [e.id for b in [next(sampler) for _ in range(6)] for e in b]
    epochs = [stream[i:i + 10] for i in range(0, 30, 10)]
    assert all(sorted(ep) == sorted(str(i) for i in range(10)) for ep in epochs)
    assert len({tuple(ep) for ep in epochs}) == 3
    assert [e.id for e in next(PromptSampler(examples(10), 5, seed=3))] == stream[:5]  # equal seeds, equal orders
    assert [e.id for e in next(PromptSampler(examples(10), 10, seed=4))] != stream[:10]


def test_sampler_batches_straddle_epochs_and_stay_full():
    sampler = PromptSampler(examples(7), batch_size=3)
    batches = [next(sampler) for _ in range(7)]  # 21 examples = 3 epochs exactly
    assert all(len(b) == 3 for b in batches) and sampler.state_dict()["epoch"] == 3
    stream = [e.id for b in batches for e in b]
    assert all(sorted(stream[i:i + 7]) == sorted(str(i) for i in range(7)) for i in (0, 7, 14))


def test_sampler_resumes_exactly_mid_epoch():
    reference = PromptSampler(examples(11), batch_size=4, seed=7)
    expected = ids(next(reference) for _ in range(9))
    first = PromptSampler(examples(11), batch_size=4, seed=7)
    head = ids(next(first) for _ in range(4))  # 16 examples: epoch 1, position 5
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    assert state == {"seed": 7, "epoch": 1, "position": 5, "num_examples": 11}
    resumed = PromptSampler(examples(11), batch_size=4, seed=0)
    resumed.load_state_dict(state)
    assert head + ids(next(resumed) for _ in range(5)) == expected
    with pytest.raises(ValueError, match="11 examples"):
        PromptSampler(examples(12), batch_size=4).load_state_dict(state)
