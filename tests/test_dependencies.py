"""rlsr runs on its own stack: importing every module and script pulls in no training framework, even where the
test environment has them installed (requirements-dev.txt brings transformers for the interop tests)."""
import json
import os
import subprocess
import sys

from conftest import ROOT

FRAMEWORKS = {"transformers", "trl", "accelerate", "sentence_transformers", "lightning", "pytorch_lightning", "peft",
              "datasets", "vllm", "bert_score", "sacrebleu", "rouge_score", "matplotlib", "wandb", "tensorboard"}


def test_no_training_framework_is_imported():
    modules = sorted(p.stem for p in (ROOT / "rlsr").glob("*.py") if p.stem != "__init__")
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module('rlsr.' + m)\n"
            "import train_rlsr, train_sft, eval, bench\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not loaded & FRAMEWORKS, sorted(loaded & FRAMEWORKS)  # optional ones load only when used
