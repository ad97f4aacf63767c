"""rlsr/plot.py: the panels chosen from the keys runs have, values that are skipped, the FLOPs axis, and PNGs that
open and show every run's colour (matplotlib tests skip without matplotlib; the no-matplotlib path runs always)."""
import json
import math
import sys

import pytest

from conftest import has_package
from rlsr import plot

needs_matplotlib = pytest.mark.skipif(not has_package("matplotlib"), reason="matplotlib not installed "
                                      "(pip install -r requirements.txt)")

RLSR_KEYS = ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "completions/clipped_ratio",
             "completions/mean_terminated_length", "clip_ratio/low_mean", "clip_ratio/high_mean",
             "clip_ratio/region_mean", "grad_norm", "monitor/length_reward_corr", "monitor/distinct_2",
             "monitor/copy_fraction_4gram", "tokens_per_s", "loss", "learning_rate", "time/rollout")


def write_jsonl(path, rows, raw_tail: str = ""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + raw_tail)


def rlsr_run(path, steps=12, offset=0.0, flops=True, extra=None):
    """Records with train_rlsr.py's keys; reward rises, KL grows; flops = 2e12 per step."""
    rows = []
    for s in range(1, steps + 1):
        r = {k: 0.1 + 0.01 * s for k in RLSR_KEYS}
        r.update({"step": s, "reward": 0.3 + offset + 0.02 * s, "reward_std": 0.05, "kl": 0.004 * s,
                  "reward/truncated_responses": 0.0, "reward/truncated_references": 0.01})
        if flops:
            r["flops"] = 2e12 * s
        r.update((extra or {}).get(s, {}))
        rows.append(r)
    write_jsonl(path / "metrics.jsonl", rows)
    write_jsonl(path / "eval.jsonl", [{"step": 0, "reward": 0.6 + offset, "rewards": [0.5, 0.7], "ids": ["a", "b"]},
                                      {"step": steps, "reward": 0.7 + offset, "rewards": [0.6, 0.8]}])
    return path


def sft_run(path, steps=10):
    write_jsonl(path / "metrics.jsonl", [{"step": s, "loss": 2.0 - 0.05 * s, "perplexity": math.exp(2.0 - 0.05 * s),
                                          "grad_norm": 1.5, "tokens_per_s": 900.0, "num_tokens": 512}
                                         for s in range(1, steps + 1)])
    write_jsonl(path / "eval.jsonl", [{"step": 0, "loss": 2.01}, {"step": steps, "loss": 1.9}])
    return path


def titles(runs):
    return [p.title for p in plot.panels_for([plot.load_run(r) for r in runs])]


# ---------------------------------------------------------------- without matplotlib: panel choice and values

def test_panels_follow_the_keys_each_kind_of_run_has(tmp_path):
    rl, sft = rlsr_run(tmp_path / "rlsr"), sft_run(tmp_path / "sft")
    assert plot.load_run(rl).kind == "rl" and plot.load_run(sft).kind == "sft"
    rl_titles = titles([rl])
    # every fixed RLSR panel, the truncation panel; no loss panel (an RLSR run's loss is the policy loss), and no
    # component panel for a single reward (it would repeat the reward panel)
    assert rl_titles == ["reward (sampled), +-1 std", "held-out reward (greedy)", "encoder inputs truncated",
                         "KL to the frozen KL model", "entropy (nats/token)", "completion length (tokens)",
                         "clipped ratio (hit the length cap)", "PPO clip fractions", "grad norm (before clipping)",
                         "monitor: corr(length, reward)", "monitor: distinct-2 (1 = no repetition)",
                         "monitor: 4-gram copy of the reference", "tokens/s"]
    assert titles([sft]) == ["grad norm (before clipping)", "loss (nats/token)", "tokens/s"]
    both = titles([rl, sft])
    assert both == rl_titles[:-1] + ["loss (nats/token)", "tokens/s"]


def test_reward_components_get_a_panel_when_there_are_several(tmp_path):
    comps = {s: {"reward/cosine": 0.5, "reward/rouge_l": 0.2} for s in range(1, 5)}
    run = plot.load_run(rlsr_run(tmp_path / "r", steps=4, extra=comps))
    panel = next(p for p in plot.panels_for([run]) if p.title == "reward components")
    assert [s.key for s in panel.series] == ["reward/cosine", "reward/rouge_l"]  # not the truncation fractions
    assert plot.points(run, panel.series[1], float) == ([1.0, 2.0, 3.0, 4.0], [0.2] * 4)


def test_nulls_and_nans_are_gaps_strings_and_unknown_keys_are_skipped(tmp_path):
    extra = {2: {"kl": None, "reward": float("nan"), "new_metric": 3.0, "notes": "text", "nested": {"a": 1}},
             3: {"kl": "0.1", "reward": float("inf"), "entropy": True}}
    run = plot.load_run(rlsr_run(tmp_path / "r", steps=4, extra=extra))
    xs, ys = plot.points(run, plot.Series("metrics", "kl", ""), float)     # null: a gap; a string: no point
    assert xs == [1.0, 2.0, 4.0] and ys == pytest.approx([0.004, math.nan, 0.016], abs=1e-15, nan_ok=True)
    xs, ys = plot.points(run, plot.Series("metrics", "reward", ""), float)
    assert xs == [1.0, 2.0, 3.0, 4.0] and ys == pytest.approx([0.32, math.nan, math.nan, 0.38], abs=1e-15, nan_ok=True)
    assert plot.points(run, plot.Series("metrics", "entropy", ""), float)[0] == [1.0, 2.0, 4.0]
    assert plot.points(run, plot.Series("eval", "reward", ""), float) == ([0.0, 4.0], [0.6, 0.7])
    assert "new_metric" not in {s.key for p in plot.panels_for([run]) for s in p.series}


def test_logs_torn_last_line_ignored_bad_line_named_repeated_step_last_wins(tmp_path):
    p = tmp_path / "metrics.jsonl"
    write_jsonl(p, [{"step": 1, "kl": 1.0}, {"step": 2, "kl": 2.0}, {"step": 1, "kl": 5.0}], raw_tail='{"step": 3, "k')
    assert plot.read_jsonl(p) == [{"step": 1, "kl": 5.0}, {"step": 2, "kl": 2.0}]
    p.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        plot.read_jsonl(p)
    p.write_text('{"kl": 1}\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: a record needs a numeric \"step\""):
        plot.read_jsonl(p)


def test_flops_axis_maps_steps_and_interpolates_eval_steps(tmp_path):
    run = plot.load_run(rlsr_run(tmp_path / "r", steps=4))
    at = plot.flops_axis(run)
    assert [at(s) for s in (0, 1, 2.5, 4)] == [0.0, 2e12, 5e12, 8e12] and at(5) is None
    no = plot.load_run(rlsr_run(tmp_path / "no", steps=4, flops=False))
    with pytest.raises(ValueError, match=r"no/metrics.jsonl: no \"flops\" field .* plot with --x step"):
        plot.flops_axis(no)


def test_write_curves_without_matplotlib_says_so_once_and_returns_none(tmp_path, monkeypatch, capsys):
    run = rlsr_run(tmp_path / "r", steps=3)
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(plot, "_warned", set())
    assert plot.write_curves(run) is None and plot.write_curves(run) is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "matplotlib is not installed" in out and "pip install matplotlib" in out
    assert not (run / "curves.png").exists()
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"results": [{"name": "a", "metrics": {"cosine": {"mean": 0.5, "ci": [0.4, 0.6]}}}]}))
    assert plot.plot_eval(results, tmp_path / "results.png") is None and "results.png" in capsys.readouterr().out


@needs_matplotlib
def test_write_curves_never_raises_on_a_broken_log(tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    write_jsonl(run / "metrics.jsonl", [{"step": 1, "kl": 1.0}], raw_tail="garbage\n{\"step\": 2}\n")
    monkeypatch.setattr(plot, "_warned", set())
    assert plot.write_curves(run) is None
    assert "curves.png not written" in capsys.readouterr().out


# ---------------------------------------------------------------- with matplotlib: real PNGs

def png_pixels(path):
    """RGB rows of a PNG, read by PIL (a matplotlib dependency), after checking the PNG signature."""
    from PIL import Image
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def has_colour(im, hex_colour: str, tol: int = 40, at_least: int = 20) -> bool:
    """At least `at_least` pixels within `tol` (per channel) of the colour: lines of that colour were drawn."""
    want = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    near = sum(n for n, c in im.getcolors(maxcolors=1 << 20) if all(abs(a - b) <= tol for a, b in zip(c, want)))
    return near >= at_least


def assert_not_blank(im):
    colours = im.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50                                             # not one flat colour
    white = sum(n for n, c in colours if c == (255, 255, 255))
    assert 0.3 < white / (im.width * im.height) < 0.99                  # mostly background, but drawn on


@needs_matplotlib
def test_rlsr_and_sft_runs_overlaid_in_one_png(tmp_path):
    rl, rl2, sft = rlsr_run(tmp_path / "rlsr"), rlsr_run(tmp_path / "sft-rlsr", offset=0.1), sft_run(tmp_path / "sft")
    out = plot.plot_runs([rl, rl2, sft], tmp_path / "curves.png")
    im = png_pixels(out)
    assert_not_blank(im)
    assert im.width == 4 * 420 and im.height == 4 * 290 + 50               # 14 panels on a 4 x 4 grid, 100 dpi
    for colour in ("#1f77b4", "#ff7f0e", "#2ca02c"):                       # C0, C1, C2: one per run
        assert has_colour(im, colour), colour
    assert not list(tmp_path.glob(".*.tmp"))


@needs_matplotlib
def test_unknown_keys_and_nan_do_not_break_the_picture(tmp_path):
    extra = {s: {"new/metric": s, "kl": None if s % 2 else float("nan"), "label": "x"} for s in range(1, 6)}
    out = plot.plot_runs([rlsr_run(tmp_path / "r", steps=5, extra=extra)], tmp_path / "c.png")
    assert_not_blank(png_pixels(out))


@needs_matplotlib
def test_x_in_flops_and_its_absence(tmp_path, capsys):
    out = plot.plot_runs([rlsr_run(tmp_path / "a")], tmp_path / "flops.png", x="flops")
    assert_not_blank(png_pixels(out))
    with pytest.raises(ValueError, match="no \"flops\" field"):
        plot.plot_runs([rlsr_run(tmp_path / "a2"), sft_run(tmp_path / "s")], tmp_path / "x.png", x="flops")
    with pytest.raises(SystemExit) as e:
        plot.main([str(tmp_path / "s"), "--x", "flops", "-o", str(tmp_path / "y.png")])
    assert e.value.code == 2 and "s/metrics.jsonl: no \"flops\" field" in capsys.readouterr().err
    assert not (tmp_path / "y.png").exists()


@needs_matplotlib
def test_write_curves_and_the_command_line(tmp_path, capsys):
    run = rlsr_run(tmp_path / "r")
    assert plot.write_curves(run) == run / "curves.png"
    assert_not_blank(png_pixels(run / "curves.png"))
    plot.main([str(run), str(sft_run(tmp_path / "s")), "-o", str(tmp_path / "both.png")])
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'both.png'}"
    assert has_colour(png_pixels(tmp_path / "both.png"), "#ff7f0e")


@needs_matplotlib
def test_plot_eval_draws_each_checkpoint_with_its_interval(tmp_path, capsys):
    metrics = lambda m: {"cosine_minilm": {"mean": m, "ci": [m - 0.03, m + 0.04]},  # noqa: E731
                         "rouge_l": {"mean": m / 4, "ci": [m / 4 - 0.01, m / 4 + 0.01]},
                         "length": {"mean": 200 + 10 * m, "ci": [190, 230]}}
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"settings": {}, "results": [
        {"name": "base", "metrics": metrics(0.61)}, {"name": "sft", "metrics": metrics(0.67)},
        {"name": "rlsr", "metrics": {**metrics(0.69), "win_rate": {"mean": 0.3, "ci": [0.2, 0.4]}}}]}))
    out = plot.plot_eval(results, tmp_path / "results.png")
    im = png_pixels(out)
    assert_not_blank(im)
    for colour in ("#1f77b4", "#ff7f0e", "#2ca02c"):
        assert has_colour(im, colour, at_least=10), colour
    plot.main(["--eval", str(results), "-o", str(tmp_path / "r2.png")])
    assert "wrote" in capsys.readouterr().out and (tmp_path / "r2.png").exists()
    results.write_text(json.dumps({"results": []}))
    with pytest.raises(ValueError, match="results.json: no \"results\" list"):
        plot.plot_eval(results, tmp_path / "r3.png")
