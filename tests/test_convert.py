"""Converting TULU-3 / Infinity-Instruct style downloads into rlsr JSONL, with counts of what was dropped and why."""
import json

import pytest

from rlsr.convert import convert, main
from rlsr.data import load_dataset

TULU = [
    {"id": "a", "source": "tulu/flan", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    {"id": "b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
                             {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"},
                             {"role": "assistant", "content": "4"}, {"role": "user", "content": "thanks"}]},
    {"id": "c", "messages": [{"role": "user", "content": "no answer"}]},
    {"id": "d", "messages": [{"role": "user", "content": "blank"}, {"role": "assistant", "content": "  "}]},
    {"id": "e", "messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"},
                             {"role": "assistant", "content": "z"}]},
    {"id": "f", "messages": [{"role": "assistant", "content": "answer without a question"}]},
]
INFINITY = [{"id": 1, "conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Red."}]},
            {"id": 2, "conversations": [{"from": "human", "value": "Hm"}, {"from": "gpt", "value": None}]}]


def test_convert_counts_and_output_loads(tmp_path):
    (tmp_path / "tulu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TULU) + "{broken\n")
    (tmp_path / "inf.json").write_text(json.dumps(INFINITY))
    out = tmp_path / "out.jsonl"
    counts = convert([tmp_path / "tulu.jsonl", tmp_path / "inf.json"], out)
    assert counts["records"] == 9 and counts["kept"] == 3
    assert counts["dropped: field 'messages' must end with an assistant turn (the reference)"] == 1   # c
    assert counts["dropped: field 'messages[i].content' must be a non-empty string"] == 1             # d
    assert counts["dropped: field 'messages[i].role' must be one of system, user, assistant"] == 1    # e (tool)
    assert counts["dropped: field 'messages' has no user turn"] == 1                                    # f
    assert counts["dropped: field 'conversations[i].value' must be a string"] == 1                      # inf 2
    assert counts["dropped: invalid JSON (Expecting property name enclosed in double quotes)"] == 1
    examples = load_dataset(str(out))
    assert [ex.reference for ex in examples] == ["Hello", "4", "Red."]
    assert [m["content"] for m in examples[1].messages] == ["Be brief.", "1+1?", "2", "2+2?"]  # cut after the answer
    assert json.loads(out.read_text().splitlines()[0])["source"] == "tulu/flan"


def test_every_assistant_turn(tmp_path, capsys):
    (tmp_path / "tulu.jsonl").write_text(json.dumps(TULU[1]) + "\n")
    main([str(tmp_path / "tulu.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--every-assistant-turn"])
    assert [ex.reference for ex in load_dataset(str(tmp_path / "o.jsonl"))] == ["2", "4"]
    assert "1 records -> 2 examples" in capsys.readouterr().out


def test_parquet_input(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(INFINITY[:1]), tmp_path / "x.parquet")
    counts = convert([tmp_path / "x.parquet"], tmp_path / "o.jsonl")
    assert counts["kept"] == 1
