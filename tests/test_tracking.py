"""rlsr/tracking.py: the flags, a clear error without the package, TensorBoard's scalars and settings read back with
its own EventAccumulator (a killed run's later steps replaced on resume), and W&B offline runs read back from their
.wandb files (resume keeps the run id). The tracker tests skip without the package."""
import argparse
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, has_package
from rlsr import tracking

needs_tensorboard = pytest.mark.skipif(not has_package("tensorboard"), reason="tensorboard not installed "
                                       "(pip install -r requirements-dev.txt)")
needs_wandb = pytest.mark.skipif(not has_package("wandb"), reason="wandb not installed "
                                 "(pip install -r requirements-dev.txt)")

SETTINGS = {"lr": 5e-5, "steps": 6, "init": None, "names": ["a", "b"], "tensorboard": True, "wandb": None}


def parser():
    ap = argparse.ArgumentParser(prog="train")
    tracking.add_tracker_args(ap)
    return ap


def test_scalars_keep_numbers_only():
    rec = {"step": 3, "reward": 0.5, "n": 2, "ok": True, "kl": None, "ids": ["a"], "text": "x", "nan": float("nan")}
    got = tracking.scalars(rec, "eval/")
    assert set(got) == {"eval/reward", "eval/n", "eval/nan"} and got["eval/reward"] == 0.5 and got["eval/n"] == 2.0


def test_flags_default_off_and_need_their_package(monkeypatch, capsys):
    assert vars(parser().parse_args([])) == {"wandb": None, "tensorboard": False}
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "tensorboard") else real(name, *a))
    for argv, package in ((["--wandb", "proj"], "wandb"), (["--tensorboard"], "tensorboard")):
        with pytest.raises(SystemExit) as e:
            parser().parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"{argv[0]} needs the {package} package" in err and f"pip install {package}" in err
    # a resumed run takes the flags from its settings, not the command line: the constructor checks again
    with pytest.raises(tracking.TrackerUnavailable, match="--tensorboard needs the tensorboard package"):
        tracking.Trackers("unused", SETTINGS, argparse.Namespace(tensorboard=True, wandb=None))


def test_no_tracker_does_nothing(tmp_path):
    t = tracking.Trackers(tmp_path, SETTINGS, argparse.Namespace(), None)
    t.log({"step": 1, "reward": 1.0}, 1)
    t.close()
    assert list(tmp_path.iterdir()) == []


@needs_tensorboard
def test_tensorboard_scalars_settings_and_resume_purge(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    args = parser().parse_args(["--tensorboard"])
    first = tracking.Trackers(tmp_path, SETTINGS, args, None)
    first.log({"step": 0, "reward": 0.6, "rewards": [0.5, 0.7], "completions": ["x"]}, 0, prefix="eval/")
    for s in range(1, 6):  # the killed run got to step 5; its last checkpoint is step 3
        first.log({"step": s, "reward": 0.1 * s, "kl": None, "flag": True}, s)
    resumed = tracking.Trackers(tmp_path, SETTINGS, args, resume_step=3)
    for s in range(4, 7):
        resumed.log({"step": s, "reward": 10.0 * s}, s)
    resumed.close()
    first.close()

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["eval/reward", "reward"]
    got = [(e.step, round(e.value, 6)) for e in acc.Scalars("reward")]
    assert got == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 40.0), (5, 50.0), (6, 60.0)]
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("eval/reward")] == [(0, 0.6)]
    # the settings: a text summary holding the JSON, and the hparams plugin's session
    (text,) = acc.Tensors("settings/text_summary")
    assert json.loads(text.tensor_proto.string_val[0].decode().strip("`\n")) == SETTINGS
    from tensorboard.plugins.hparams import plugin_data_pb2
    content = acc.PluginTagToContent("hparams")
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert {h.name for h in exp.experiment.hparam_infos} == {k for k, v in SETTINGS.items() if v is not None}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == 5e-5
    assert start.session_start_info.hparams["names"].string_value == '["a", "b"]'


WANDB_DRIVER = textwrap.dedent("""
    import argparse, sys
    sys.path.insert(0, {root!r})
    from rlsr.tracking import Trackers, add_tracker_args
    ap = argparse.ArgumentParser()
    add_tracker_args(ap)
    run_dir, resume, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    t = Trackers(run_dir, {{"lr": 5e-5, "steps": 4}}, ap.parse_args(["--wandb", "rlsr-test"]),
                 None if resume == "new" else int(resume))
    for s in range(first, last + 1):
        t.log({{"step": s, "reward": 0.25 * s, "text": "not a number"}}, s)
    t.log({{"step": last, "reward": 1.5}}, last, prefix="eval/")
    t.close()
""")


def wandb_records(path):
    """The records of a .wandb file: W&B's header, then LevelDB-log chunks (32 KiB blocks, 7-byte chunk headers:
    crc32, length, type full/first/middle/last) holding protobuf Records."""
    from wandb.proto import wandb_internal_pb2
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:           # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(pending))
    return out


def wandb_history(path) -> dict:
    hist = {}
    for r in wandb_records(path):
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            hist.setdefault(r.history.step.num, {}).update(items)
    return hist


@needs_wandb
def test_wandb_offline_run_written_and_resume_reuses_its_id(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_CONFIG_DIR=str(tmp_path / "cfg"), WANDB_CACHE_DIR=str(tmp_path / "cache"),
               WANDB_DATA_DIR=str(tmp_path / "data"))
    driver = tmp_path / "driver.py"
    driver.write_text(WANDB_DRIVER.format(root=str(ROOT)))
    run = tmp_path / "run"
    run.mkdir()
    for resume, first, last in (("new", 1, 3), ("2", 3, 4)):   # the second start resumes from a step-2 checkpoint
        subprocess.run([sys.executable, str(driver), str(run), resume, str(first), str(last)], check=True, env=env,
                       capture_output=True, timeout=300)
    run_id = (run / "wandb_id.txt").read_text().strip()
    dirs = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(dirs) == 2                              # W&B offline writes one directory per start, same run id
    histories = []
    for d in dirs:
        records = wandb_records(d / f"run-{run_id}.wandb")
        (meta,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert meta.run_id == run_id and meta.project == "rlsr-test" and meta.display_name == "run"
        config = {i.key: json.loads(i.value_json) for i in meta.config.update}
        assert config["lr"] == 5e-5 and config["steps"] == 4
        histories.append(wandb_history(d / f"run-{run_id}.wandb"))
    steps = [{s: {k: v for k, v in h.items() if not k.startswith("_")} for s, h in hist.items()} for hist in histories]
    assert steps[0] == {1: {"reward": 0.25}, 2: {"reward": 0.5}, 3: {"reward": 0.75, "eval/reward": 1.5}}
    assert steps[1] == {3: {"reward": 0.75}, 4: {"reward": 1.0, "eval/reward": 1.5}}
