"""reproduce.sh's wiring, every stage run with --smoke on tiny models (RLSR_REPRO_* substitute them): the rows, the
columns, the paired differences, each run's start and KL reference, the stage times and the samples. Not the
numbers: tiny random models cannot answer."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, make_tiny_bert_dir, make_tiny_data, make_tiny_policy_dir, needs_eval_data, needs_lm_data
from rlsr.lm_tasks import TASKS

ROWS = {"base": ["base", "sft", "rlsr", "rlsr-llm", "sft+rlsr"],
        "instruct": ["base", "sft", "rlsr", "rlsr-mpnet", "sft+rlsr"]}
PAIRED = {"base": ["rlsr - sft", "rlsr-llm - rlsr", "sft+rlsr - sft", "sft+rlsr - rlsr", "sft - base", "rlsr - base",
                   "rlsr-llm - base", "sft+rlsr - base"],
          "instruct": ["rlsr - sft", "sft+rlsr - sft", "rlsr-mpnet - rlsr", "sft - base", "rlsr - base"]}


def reproduce(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """bash reproduce.sh run from the repository root with this interpreter as `python`."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(["bash", str(ROOT / "reproduce.sh"), *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PATH=path, PYTHONPATH=str(ROOT), **env))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = make_tiny_data(root / "data.jsonl")
    encoders = [make_tiny_bert_dir(root / name) for name in ("sb", "llm", "other")]
    policy = make_tiny_policy_dir(root / "policy")
    config = json.loads((policy / "config.json").read_text())  # room for the generative lm-eval tasks' 256 tokens
    (policy / "config.json").write_text(json.dumps(dict(config, max_position_embeddings=1024)))
    return {"RLSR_REPRO_INIT": str(policy),
            "RLSR_REPRO_ENCODER": str(encoders[0]), "RLSR_REPRO_ENCODER2": str(encoders[1]),
            "RLSR_REPRO_EVAL_ENCODERS": " ".join(map(str, encoders)),
            "RLSR_REPRO_DATA": f"--data {data} --train-split all --eval-data {data} --eval-split all"}


@needs_eval_data
@needs_lm_data
@pytest.mark.parametrize("start", ["base", "instruct"])
def test_every_row_column_and_paired_difference_is_wired(tiny, tmp_path, start):
    out = tmp_path / "repro"
    r = reproduce(["--start", start, "--smoke", str(out)], tiny)
    assert r.returncode == 0, r.stderr[-3000:]

    res = json.loads((out / "eval" / "results.json").read_text())
    rows = {x["name"]: x for x in res["results"]}
    assert list(rows) == ROWS[start]
    columns = {"cosine_sb", "cosine_llm", "cosine_other", "rouge_l", "length", "terminated",
               "ifeval_prompt_level_strict", "ifeval_inst_level_strict"}
    lm = {"lm_average"} | {f"lm_{t}" for t in TASKS}
    for name, row in rows.items():
        assert columns <= set(row["metrics"]), name
        assert (lm <= set(row["metrics"])) == (start == "base"), name  # the instruct table has no lm-eval tasks
        assert (row["compute"] is None) == (name == "base"), name     # training FLOPs of every trained row
    assert [p["name"] for p in res["paired"]] == PAIRED[start]
    assert "arena_hard" not in res["prompts"]

    # each row's start, reward encoder, seed; the KL reference is the start (no --kl-model)
    second = ROWS[start][3]
    runs = {"sft": (tiny["RLSR_REPRO_INIT"], None), "rlsr": (tiny["RLSR_REPRO_INIT"], tiny["RLSR_REPRO_ENCODER"]),
            second: (tiny["RLSR_REPRO_INIT"], tiny["RLSR_REPRO_ENCODER2"]),
            "sft-rlsr": (str(out / "seed0" / "sft" / "final"), tiny["RLSR_REPRO_ENCODER"])}
    for run, (init, encoder) in runs.items():
        settings = json.loads((out / "seed0" / run / "settings.json").read_text())
        assert settings["init"] == init and settings["seed"] == 0, run
        if encoder is not None:
            assert settings["encoder"] == encoder and settings["kl_model"] is None, run

    stages = [line.split(":")[0] for line in (out / "stage_times.txt").read_text().splitlines()]
    assert stages == ["sft", "rlsr", second, "sft+rlsr", "eval", "total"]
    samples = (out / "samples.md").read_text()
    assert samples.count("## Prompt ") == 2 and all(samples.count(f"**{n}**") == 2 for n in ROWS[start])
    first = json.loads((out / "eval" / "model_outputs" / "base.json").read_text())[0]["instruction"]
    assert first.splitlines()[0] in samples


def test_a_bad_option_is_refused(tmp_path):
    r = reproduce(["--start", "chat", str(tmp_path / "x")], {})
    assert r.returncode == 2 and "--start must be base or instruct" in r.stderr
    assert not (tmp_path / "x").exists()
