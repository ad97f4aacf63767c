"""eval.py end to end on tiny random checkpoints: output formats, intervals, paired differences."""
import json

import eval as evaluation
from conftest import make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir, needs_eval_data


@needs_eval_data
def test_eval_writes_official_formats_and_paired_table(tmp_path):
    a = make_tiny_policy_dir(tmp_path / "a")
    b = make_tiny_policy_dir(tmp_path / "b", family="llama")
    data = make_tiny_data(tmp_path / "data.jsonl", n=6)
    out = tmp_path / "eval"
    evaluation.main([str(a), str(b), "--names", "first", "second", "--data", str(data), "--split", "all",
                     "--limit", "5", "--max-new-tokens", "6", "--encoder", str(make_tiny_bert_dir(tmp_path / "enc")),
                     "--judge", str(a), "--out-dir", str(out)])
    outputs = json.loads((out / "model_outputs" / "second.json").read_text())
    assert len(outputs) == 5 and set(outputs[0]) == {"instruction", "output", "generator", "dataset"}
    assert outputs[0]["generator"] == "second"
    lines = (out / "ifeval" / "first" / "input_response_data.jsonl").read_text().splitlines()
    assert len(lines) == 5 and set(json.loads(lines[0])) == {"prompt", "response"}
    res = json.loads((out / "results.json").read_text())["results"]
    assert [r["name"] for r in res] == ["first", "second"]
    for key in ("cosine", "rouge_l", "length", "distinct_2", "win_rate", "ifeval_prompt_level_strict",
                "ifeval_inst_level_loose"):
        m = res[0]["metrics"][key]
        assert m["ci"][0] <= m["mean"] <= m["ci"][1], key
    assert set(res[1]["paired_vs_first"]) == set(res[0]["metrics"])
    md = (out / "results.md").read_text()
    assert md.startswith("| method | win_rate | cosine |") and "second - first" in md
