"""What the README's "Failing safely" promises, one case a test: logs a crash or a full disk cannot spoil, one
process per run directory, a resume that is the run it claims to be, untrusted files bounded, one `error:` line
instead of a traceback, refusals instead of exit 0 on garbage, and failures found before the work instead of after
it. Tiny random models (tests/conftest.py); the scripts run as commands."""
import errno
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_tiny_data, make_tiny_policy_dir, run_script, script_error
from rlsr import tokenizer as tokenizer_module
from rlsr.lock import lock_dir, unlock_dir
from rlsr.run import Run
from test_eval import break_checkpoint
from test_training import assets, rlsr_argv  # noqa: F401 (a fixture and the tiny run's flags)


def steps_logged(run, file="metrics.jsonl"):
    return [json.loads(line)["step"] for line in (run / file).read_text().splitlines()]


def snapshot(run):
    """Every file of a run directory with its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file() and p.name != ".lock"}


def one_error(script, argv, code=2, before=""):
    """The script fails with `code` and a single `error: ...` line, no traceback."""
    err = script_error(script, argv, code, before)
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err

# ---------------------------------------------------------------- logs a crash or a full disk cannot spoil


def test_log_append_cut_by_a_full_disk_leaves_only_whole_lines(tmp_path, monkeypatch):
    run = Run(tmp_path, {})
    run.log({"step": 1, "reward": 0.5})
    real_write = os.write

    def full_disk(fd, data):  # half the line reaches the file, then the disk is full
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        run.log({"step": 2, "reward": 0.25})
    monkeypatch.setattr(os, "write", real_write)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "reward": 0.5}\n'
    run.log({"step": 2, "reward": 0.25})
    assert [r["step"] for r in run.read_log()] == [1, 2]


def test_resume_trims_a_cut_last_log_line(assets, tmp_path):
    run = tmp_path / "run"
    run_script("train_rlsr.py", rlsr_argv(assets, run, "--no-eval"))
    shutil_final(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "reward": 0.4')                 # a kill -9 in the middle of a write
    out = run_script("train_rlsr.py", ["--resume", str(run), "--steps", "3"]).stdout
    assert "dropped a last line cut by a killed write" in out
    assert steps_logged(run) == [1, 2, 3]


def shutil_final(run):
    """As if the run was killed before it wrote final/."""
    import shutil
    shutil.rmtree(run / "final")

# ---------------------------------------------------------------- one process per run directory


def test_two_fresh_runs_on_one_out_dir_exactly_one_proceeds(assets, tmp_path):
    run, barrier = tmp_path / "run", tmp_path / "barrier"
    barrier.mkdir()
    # the widest race: both processes have found the directory empty, then meet (for up to 10 s) just before
    # writing settings.json
    meet = ("import os, pathlib, time\nimport rlsr.run\nwrite_json = rlsr.run.write_json\n"
            "def met(path, obj):\n"
            "    if pathlib.Path(path).name == 'settings.json':\n"
            f"        d = pathlib.Path({str(barrier)!r}); (d / str(os.getpid())).touch(); t = time.time()\n"
            "        while len(list(d.iterdir())) < 2 and time.time() - t < 10: time.sleep(0.01)\n"
            "    return write_json(path, obj)\n"
            "rlsr.run.write_json = met")
    code = (f"import runpy, sys\n{meet}\nsys.argv = {['train_rlsr.py', *rlsr_argv(assets, run, '--no-eval')]!r}\n"
            f"runpy.run_path({str(ROOT / 'train_rlsr.py')!r}, run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(e for code, e in results if code == 2)
    assert "is in use by another process (pid " in err or "exists and is not empty" in err
    assert steps_logged(run) == [1, 2]                       # each step once


def test_a_locked_run_directory_is_refused_naming_the_holder(assets, tmp_path):
    run = tmp_path / "run"
    run_script("train_rlsr.py", rlsr_argv(assets, run, "--no-eval"))
    shutil_final(run)
    lock_dir(run)                                            # this test process holds it, as a running job would
    try:
        before = snapshot(run)
        err = one_error("train_rlsr.py", ["--resume", str(run), "--steps", "3"])
        assert f"is in use by another process (pid {os.getpid()} on " in err
        assert snapshot(run) == before
    finally:
        unlock_dir(run)
    run_script("train_rlsr.py", ["--resume", str(run), "--steps", "3"])   # the lock ends with its process
    assert steps_logged(run) == [1, 2, 3]

# ---------------------------------------------------------------- a resume is the run it claims to be


def test_resuming_a_finished_run_is_refused_and_rewrites_nothing(assets, tmp_path):
    run = tmp_path / "run"
    run_script("train_rlsr.py", rlsr_argv(assets, run))
    before = snapshot(run)
    err = one_error("train_rlsr.py", ["--resume", str(run)])
    assert err.startswith("error: nothing to resume: the run finished (2 steps")
    assert snapshot(run) == before and len(steps_logged(run, "summary.jsonl")) == 1


def test_resume_without_a_checkpoint_is_refused_without_restart(assets, tmp_path):
    run = tmp_path / "run"
    run_script("train_rlsr.py", rlsr_argv(assets, run, "--no-eval", "--save-every", "0"))
    shutil_final(run)                                        # killed before the end: nothing to resume from
    before = snapshot(run)
    err = one_error("train_rlsr.py", ["--resume", str(run)])
    assert err.startswith("error: no checkpoint: starting over is refused without --restart")
    assert snapshot(run) == before
    out = run_script("train_rlsr.py", ["--resume", str(run), "--restart"]).stdout
    assert "--restart, training again from step 1" in out and steps_logged(run) == [1, 2]


def test_resume_with_steps_before_the_newest_checkpoint_is_refused(assets, tmp_path):
    run = tmp_path / "run"
    run_script("train_rlsr.py", rlsr_argv(assets, run, "--no-eval", steps=3))
    shutil_final(run)
    err = one_error("train_rlsr.py", ["--resume", str(run), "--steps", "2"])
    assert "--steps 2 is before the newest checkpoint" in err and "(step 3)" in err
    out = run_script("train_rlsr.py", ["--resume", str(run), "--steps", "4"]).stdout
    assert "resumed" in out and "from step-000003 (step 3), training to step 4" in out


def test_resume_refuses_data_whose_text_changed_but_not_its_count(assets, tmp_path):
    data = make_tiny_data(tmp_path / "data.jsonl", 16)
    policy, encoder, _ = assets
    run = tmp_path / "run"
    run_script("train_rlsr.py", rlsr_argv((policy, encoder, data), run, "--no-eval"))
    data.write_text(data.read_text().replace("chicken", "chickens"))   # same records, one word changed
    err = one_error("train_rlsr.py", ["--resume", str(run), "--steps", "3"])
    assert "the data changed since the run started" in err
    settings = json.loads((run / "settings.json").read_text())
    assert len(settings["data_sha256"]) == 64


@pytest.mark.parametrize("change, message", [
    (lambda s: {k: v for k, v in s.items() if k != "group_size"}, "settings.json: no 'group_size'"),
    (lambda s: [s], "settings.json: expected a JSON object"),
    (lambda s: dict(s, group_size="eight"), "settings.json: 'group_size' is 'eight', not a value of --group-size"),
])
def test_settings_json_missing_a_key_or_not_an_object_is_named(assets, tmp_path, change, message):
    run = tmp_path / "run"
    run_script("train_rlsr.py", rlsr_argv(assets, run, "--no-eval"))
    shutil_final(run)
    settings = run / "settings.json"
    settings.write_text(json.dumps(change(json.loads(settings.read_text()))))
    assert message in one_error("train_rlsr.py", ["--resume", str(run), "--steps", "3"])

# ---------------------------------------------------------------- untrusted files, bounded


NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
NESTED_STRING_LOOPS = "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize("source, message", [
    (NESTED_LOOPS, "ran for more than"),
    (NESTED_STRING_LOOPS, "ran for more than"),
    ("{{ 'x' * 2000000000 }}", "repeats a value"),
    ("{{ ([0] * 2000000000) | length }}", "repeats a value"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "made a value of more than"),
    ("{{ 'x' | center(2000000000) }}", "with the number 2000000000"),
    ("{{ 'x'.ljust(2000000000) }}", "with the number 2000000000"),
    ("{{ 2 ** 100000000000 }}", "a number too large"),
    ("{{ '%2000000000s' % 'x' }}", "width or precision"),
    ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "output passed"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed too deeply"),
])
def test_chat_template_render_is_bounded_in_time_and_size(monkeypatch, source, message):
    monkeypatch.setattr(tokenizer_module, "RENDER_SECONDS", 1.0)
    template = tokenizer_module.compile_template(source)
    t0 = time.monotonic()
    with pytest.raises(tokenizer_module.TemplateLimitError, match=message):
        tokenizer_module.render_bounded(template, messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 5


def with_template(policy_dir, tmp_path, source):
    bad = make_tiny_policy_dir(tmp_path / "templated")
    cfg = json.loads((bad / "tokenizer_config.json").read_text())
    (bad / "tokenizer_config.json").write_text(json.dumps(dict(cfg, chat_template=source)))
    return bad


@pytest.mark.parametrize("script", ["train_rlsr.py", "train_sft.py", "eval.py"])
@pytest.mark.parametrize("source", [NESTED_LOOPS, "{{ 'x' * 2000000000 }}"])
def test_a_hanging_or_huge_chat_template_is_stopped_in_training_and_eval(assets, tmp_path, script, source):
    bad = with_template(assets[0], tmp_path, source)
    out = tmp_path / "out"
    argv = ([str(bad), "--data", str(assets[2]), "--no-arena-hard", "--no-ifeval", "--no-lm-eval",
             "--out-dir", str(out)]
            if script == "eval.py" else rlsr_argv(assets, out, "--init", str(bad)) if script == "train_rlsr.py"
            else ["--init", str(bad), "--data", str(assets[2]), "--out-dir", str(out)])
    t0 = time.monotonic()
    err = one_error(script, argv, before="import rlsr.tokenizer as t; t.RENDER_SECONDS = 1.0")
    assert "chat template" in err and time.monotonic() - t0 < 60
    assert not out.exists()


def test_config_json_with_a_million_layers_is_refused_naming_file_and_field(assets, tmp_path):
    bad = make_tiny_policy_dir(tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    for field, value in (("num_hidden_layers", 5_000_000), ("vocab_size", 10 ** 12), ("hidden_size", -3)):
        (bad / "config.json").write_text(json.dumps(dict(cfg, **{field: value})))
        err = one_error("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", "--init", str(bad)))
        assert f"config.json: {field} {value} is not an integer in [1, " in err
    assert not (tmp_path / "run").exists()

# ---------------------------------------------------------------- one `error:` line, not a traceback


@pytest.mark.parametrize("script", ["train_rlsr.py", "train_sft.py"])
@pytest.mark.parametrize("how, message", [
    ("truncated_weights", "truncated"), ("architecture", "not supported"), ("wrong_shapes", "has shape"),
    ("tokenizer", "tokenizer"),
])
def test_bad_init_is_one_error_line_through_evals_checks(assets, tmp_path, script, how, message):
    bad = make_tiny_policy_dir(tmp_path / "bad")
    if how == "wrong_shapes":
        cfg = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=cfg["intermediate_size"] * 2)))
    else:
        break_checkpoint(bad, how)
    argv = (rlsr_argv(assets, tmp_path / "run", "--init", str(bad)) if script == "train_rlsr.py"
            else ["--init", str(bad), "--data", str(assets[2]), "--out-dir", str(tmp_path / "run")])
    err = one_error(script, argv)
    assert err.startswith(f"error: --init {bad}") and message in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, message", [
    (["--seed", "-1"], "--seed -1 must be in [0, 2**32)"),
    (["--device", "foo"], "--device 'foo'"),
    (["--train-split", "trian"], "--train-split 'trian': expected train, test or all"),
    (["--max-new-tokens", "100000000"], "--max-new-tokens 100000000: the model has 256 positions"),
    (["--out-dir", "/proc/rlsr-run"], "/proc/rlsr-run: cannot write there"),
    (["--weight-decay", "1e9"], "--weight-decay 1000000000.0 must be <= 1"),
    (["--reward", "cosine=0"], "every weight is 0"),
])
def test_bad_flags_are_one_error_line_and_leave_nothing(assets, tmp_path, extra, message):
    assert message in one_error("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", *extra))
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_a_gpu_is_one_error_line(assets, tmp_path):
    err = one_error("train_sft.py", ["--init", str(assets[0]), "--data", str(assets[2]), "--device", "cuda",
                                     "--out-dir", str(tmp_path / "run")])
    assert "--device cuda: CUDA is not available" in err


@pytest.mark.parametrize("line, message", [
    ('{"prompt": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
    ('{"prompt": "a", "response": "b", "n": ' + "9" * 5000 + "}", "4300 digits"),
    ('{"prompt": "caf\\ud800", "response": "b"}', "lone surrogate"),
])
def test_data_lines_deeply_nested_huge_number_or_lone_surrogate_are_named(assets, tmp_path, line, message):
    data = tmp_path / "data.jsonl"
    data.write_text(make_tiny_data(tmp_path / "ok.jsonl", 4).read_text() + line + "\n")
    err = one_error("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", "--data", str(data)))
    assert "data.jsonl:5:" in err and message in err


def test_kl_model_with_another_vocabulary_is_refused(assets, tmp_path):
    other = make_tiny_policy_dir(tmp_path / "other")
    tk = json.loads((other / "tokenizer.json").read_text())
    vocab = tk["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]                  # same size, two tokens swapped
    (other / "tokenizer.json").write_text(json.dumps(tk))
    err = one_error("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", "--kl-model", str(other), "--beta", "0.04"))
    assert "--kl-model" in err and "vocabulary differs from the policy's" in err


def test_prompts_longer_than_the_models_positions_are_flagged(assets, tmp_path):
    out = run_script("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", "--no-eval", "--max-new-tokens", "250",
                                                "--save-every", "0", steps=1), check=False)
    assert "prompts longer than 6 tokens are left out: the model has 256 positions" in out.stdout

# ---------------------------------------------------------------- failures found before the work, not after it


def test_save_every_zero_checks_the_space_for_final_before_training(assets, tmp_path):
    small_disk = "import collections, shutil\nshutil.disk_usage = lambda p: collections.namedtuple('U', 'free')(10_000)"
    err = one_error("train_rlsr.py", rlsr_argv(assets, tmp_path / "run", "--save-every", "0"), before=small_disk)
    assert "no space left on" in err and "for final/: it needs about" in err
    assert not (tmp_path / "run").exists()

# ---------------------------------------------------------------- eval.py: refusals instead of exit 0 on garbage


def eval_argv(assets, out, *extra):
    encoder, data = assets[1], assets[2]
    return ["--data", str(data), "--encoders", str(encoder), "--no-arena-hard", "--no-ifeval", "--no-lm-eval",
            "--max-new-tokens", "4", "--batch-size", "4", "--limit", "4", "--out-dir", str(out), *extra]


def test_eval_refuses_a_checkpoint_with_nonfinite_weights(assets, tmp_path):
    from safetensors.torch import load_file, save_file
    bad = make_tiny_policy_dir(tmp_path / "nan")
    tensors = load_file(bad / "model.safetensors")
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, bad / "model.safetensors")
    err = one_error("eval.py", [str(bad), *eval_argv(assets, tmp_path / "eval")])
    assert "tensor 'model.norm.weight'" in err and "holds NaN or inf" in err
    assert not (tmp_path / "eval").exists()


def test_eval_resume_evaluates_again_a_checkpoint_whose_weights_changed(assets, tmp_path):
    from safetensors.torch import load_file, save_file
    ckpt, out = make_tiny_policy_dir(tmp_path / "ckpt"), tmp_path / "eval"
    run_script("eval.py", [str(ckpt), "--names", "one", *eval_argv(assets, out)])
    first = json.loads((out / "per_checkpoint" / "one.json").read_text())
    tensors = load_file(ckpt / "model.safetensors")
    tensors["model.norm.weight"] *= 3                        # new weights at the same path
    save_file(tensors, ckpt / "model.safetensors")
    stdout = run_script("eval.py", [str(ckpt), "--names", "one", *eval_argv(assets, out, "--resume")]).stdout
    assert "changed since" in stdout and "one is evaluated again" in stdout and "already evaluated" not in stdout
    again = json.loads((out / "per_checkpoint" / "one.json").read_text())
    assert again["weights_sha256"] != first["weights_sha256"]


def test_eval_overwrite_removes_only_what_eval_wrote(assets, tmp_path):
    out = tmp_path / "eval"
    run_script("eval.py", [str(assets[0]), "--names", "one", *eval_argv(assets, out)])
    (out / "notes.txt").write_text("mine")
    (out / "model_outputs" / "by_hand.json").write_text("[]")
    stdout = run_script("eval.py", [str(assets[0]), "--names", "two", *eval_argv(assets, out, "--overwrite")]).stdout
    assert "kept 2 file(s)" in stdout
    assert (out / "notes.txt").read_text() == "mine" and (out / "model_outputs" / "by_hand.json").exists()
    assert sorted(p.name for p in (out / "per_checkpoint").iterdir()) == ["two.json"]
    listed = json.loads((out / "written.json").read_text())["files"]
    assert "per_checkpoint/two.json" in listed and "notes.txt" not in listed


def test_eval_out_dir_is_locked_by_the_eval_writing_it(assets, tmp_path):
    out = tmp_path / "eval"
    run_script("eval.py", [str(assets[0]), "--names", "one", *eval_argv(assets, out)])
    lock_dir(out)
    try:
        err = one_error("eval.py", [str(assets[0]), "--names", "one", *eval_argv(assets, out, "--overwrite")])
        assert f"is in use by another process (pid {os.getpid()} on " in err
        assert (out / "per_checkpoint" / "one.json").exists()
    finally:
        unlock_dir(out)


def test_eval_max_new_tokens_is_bounded_by_the_models_positions(assets, tmp_path):
    err = one_error("eval.py", [str(assets[0]), *eval_argv(assets, tmp_path / "eval"), "--max-new-tokens", "100000000"])
    assert "--max-new-tokens 100000000: checkpoint" in err and "has 256 positions" in err


def test_eval_lm_eval_generative_tasks_need_more_positions_than_their_answers(assets, tmp_path):
    """triviaqa and nq_open answer with up to 256 tokens (the harness's max_gen_toks): a 256-position model is refused
    before any work."""
    argv = [a for a in eval_argv(assets, tmp_path / "eval") if a != "--no-lm-eval"]
    err = one_error("eval.py", [str(assets[0]), *argv, "--lm-eval-tasks", "arc_easy", "nq_open", "triviaqa"])
    assert "lm-eval tasks nq_open, triviaqa answer with up to 256 tokens" in err and "has 256 positions" in err
    assert not (tmp_path / "eval").exists()


def test_eval_judge_whose_replies_never_parse_is_an_error_before_any_work(assets, tmp_path):
    from test_judge import FakeOpenAI
    server = FakeOpenAI()
    server.reply = "Both outputs have their merits."
    try:
        err = one_error("eval.py", [str(assets[0]), *eval_argv(assets, tmp_path / "eval"), "--judge-url",
                                    server.base_url, "--judge-key-env", ""])
    finally:
        server.close()
    assert "not a verdict (A or B)" in err and len(server.requests) == 1
    assert not (tmp_path / "eval").exists()                 # probed before any answer was generated


def test_eval_judge_that_never_replies_fails_in_bounded_time_before_any_work(assets, tmp_path):
    import socket
    silent = socket.create_server(("127.0.0.1", 0))       # accepts connections, never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    t0 = time.monotonic()
    try:
        err = one_error("eval.py", [str(assets[0]), *eval_argv(assets, tmp_path / "eval"), "--judge-url", url,
                                    "--judge-key-env", "", "--judge-timeout", "1", "--judge-retries", "1"])
    finally:
        silent.close()
    assert "failed after 2 attempts" in err and time.monotonic() - t0 < 40   # 2 x 1 s + a 1 s wait, plus start-up
    assert not (tmp_path / "eval").exists()

# ---------------------------------------------------------------- curves.png says what was measured


def test_curves_draw_a_gap_where_no_sample_terminated():
    from rlsr.metrics import StepSamples, step_metrics
    samples = StepSamples(rewards=[0.1, 0.1, 0.2, 0.2], lengths=[4, 4, 4, 4], texts=["a b"] * 4,
                          references=["a b"] * 4, stopped=[False] * 4)
    sums = {"tokens": 16.0, "clip_count": 16.0, "clip_ratio/low_mean": 0.0, "clip_ratio/high_mean": 0.0,
            "clip_ratio/region_mean": 0.0, "ratio_mean": 16.0, "kl": 0.0, "loss": 0.0, "entropy": 16.0}
    m = step_metrics(samples, sums, 2)
    assert m["completions/mean_terminated_length"] != m["completions/mean_terminated_length"]   # NaN: logged null
    assert m["monitor/length_reward_corr"] != m["monitor/length_reward_corr"]                   # undefined, not 0


def test_held_out_points_are_drawn_with_intervals_and_no_line_between_them(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from rlsr import plot
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": 0.3}) + "\n" for s in (1, 2)))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"step": 0, "reward": 0.6, "rewards": [0.5, 0.7, 0.6]}) + "\n"
                                         + json.dumps({"step": 2, "reward": 0.7, "rewards": [0.6, 0.8, 0.7]}) + "\n")
    figures = []
    monkeypatch.setattr(plot, "_save", lambda fig, out: figures.append(fig))
    plot.plot_runs([tmp_path], tmp_path / "curves.png")
    ax = next(a for a in figures[0].axes if a.get_title() == "held-out reward (greedy)")
    points = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(points) == 1 and points[0].get_linestyle() == "None"          # no line joins the two evaluations
    bars = [line for line in ax.lines if line.get_marker() != "o"]
    assert [list(b.get_xdata()) for b in bars] == [[0.0, 0.0], [2.0, 2.0]]  # one 95% interval at each
    assert all(lo < y < hi for b, y in zip(bars, (0.6, 0.7)) for lo, hi in [sorted(b.get_ydata())])

# ---------------------------------------------------------------- the newcomer's first commands


def pins(file):
    return {line.split("==")[0] for line in (ROOT / file).read_text().splitlines() if "==" in line
            and not line.startswith("#")}


def test_curves_png_needs_only_requirements_txt():
    assert "matplotlib" in pins("requirements.txt") and "matplotlib" not in pins("requirements-dev.txt")


@pytest.mark.parametrize("script, shown", [
    ("train_rlsr.py", "peak learning rate, in (0, 1] (default: 5e-05)"),
    ("train_sft.py", "(default: runs/sft)"),
    ("eval.py", "(default: results/eval)"),
])
def test_help_shows_the_defaults(script, shown):
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True).stdout
    assert shown in " ".join(out.split())


def test_bench_prints_progress_before_its_figure(assets):
    out = subprocess.run([sys.executable, str(ROOT / "bench.py"), "sample", "--model", str(assets[0]), "--rows", "1",
                          "--new-tokens", "2", "--repeats", "1", "--device", "cpu"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    assert "loading" in out.stderr and "warm-up" in out.stderr and "timed run 1 of 1" in out.stderr
    assert out.stdout.splitlines()[-1].startswith("tokens_per_s=")


def test_bench_runs_on_the_default_policy(smollm2_path):
    """Without --model: the packaged SmolLM2-135M-Instruct."""
    out = subprocess.run([sys.executable, str(ROOT / "bench.py"), "sample", "--rows", "1", "--new-tokens", "2",
                          "--repeats", "1", "--device", "cpu"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert f"loading {smollm2_path}" in out.stderr and out.stdout.splitlines()[-1].startswith("tokens_per_s=")
