"""Curves of training runs, overlaid, as one PNG; eval.py's metrics with their intervals as another.

    python -m rlsr.plot runs/rlsr                               # -> curves.png
    python -m rlsr.plot runs/rlsr runs/sft-rlsr -o cmp.png       # several runs overlaid, one colour each
    python -m rlsr.plot runs/rlsr-7b --x flops                  # x = cumulative training FLOPs (the `flops` field)
    python -m rlsr.plot --eval results/eval/results.json -o results.png

Reads RUN_DIR/metrics.jsonl (one record per step) and RUN_DIR/eval.jsonl (held-out records, same "step" key). A
panel is drawn only for keys some run has; a record without a key, or with a non-number there, is simply not a
point, and one with null / NaN there (undefined at that step) is a gap in the line. An RLSR run is one whose
metrics carry `reward`; its `loss` (the clipped policy loss, whose value says little) is not drawn, while an SFT
run's train and held-out loss share a panel. Colour = run, line style = the series within a panel; held-out results
are points, with their 95% bootstrap interval where eval.jsonl keeps the per-prompt values, and no line between
them.

matplotlib is in requirements.txt (curves.png is a run's own output); in an environment without it, `write_curves`
(called by the training scripts) and `plot_eval` print one line saying how to install it and return None. Figures are drawn on matplotlib's Agg canvas, never through pyplot, so no
window or global figure state is involved.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MISSING_MATPLOTLIB = "matplotlib is not installed, so no {what} was drawn (pip install matplotlib)"


@dataclass(frozen=True)
class Series:
    file: str          # "metrics" or "eval"
    key: str
    label: str         # shown in the panel's legend when the panel has several series


@dataclass(frozen=True)
class Panel:
    title: str
    series: tuple[Series, ...]
    kind: str = ""     # "rl" / "sft": drawn only for runs of that kind; "" for every run
    band: str = ""     # metrics key of a +-1 std band around the first series (reward_std)


def _m(key: str, label: str = "") -> Series:
    return Series("metrics", key, label or key)


def _e(key: str, label: str = "") -> Series:
    return Series("eval", key, label or key)


# The panels a GRPO user reads, in reading order; reward components come from the keys a run has (see panels_for).
PANELS = [
    Panel("reward (sampled), +-1 std", (_m("reward"),), "rl", band="reward_std"),
    Panel("held-out reward (greedy)", (_e("reward"),), "rl"),
    Panel("KL to the frozen KL model", (_m("kl"),)),
    Panel("entropy (nats/token)", (_m("entropy"),)),
    Panel("completion length (tokens)", (_m("completions/mean_length", "mean"),
                                         _m("completions/mean_terminated_length", "terminated"))),
    Panel("clipped ratio (hit the length cap)", (_m("completions/clipped_ratio"),)),
    Panel("PPO clip fractions", (_m("clip_ratio/low_mean", "low"), _m("clip_ratio/high_mean", "high"),
                                 _m("clip_ratio/region_mean", "region"))),
    Panel("grad norm (before clipping)", (_m("grad_norm"),)),
    Panel("monitor: corr(length, reward)", (_m("monitor/length_reward_corr"),)),
    Panel("monitor: distinct-2 (1 = no repetition)", (_m("monitor/distinct_2"),)),
    Panel("monitor: 4-gram copy of the reference", (_m("monitor/copy_fraction_4gram"),)),
    Panel("loss (nats/token)", (_m("loss", "train"), _e("loss", "held-out")), "sft"),
    Panel("tokens/s", (_m("tokens_per_s"),)),
]


@dataclass
class RunLog:
    name: str
    path: Path
    metrics: list[dict]
    eval: list[dict]

    @property
    def kind(self) -> str:
        return "rl" if any("reward" in r for r in self.metrics) else "sft"


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL log, one per step (the last record of a repeated step wins), ordered by step.

    A torn last line (a run writing while we read) is ignored; any other unreadable line is an error naming it.
    """
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    by_step: dict = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON record ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), (int, float)):
            raise ValueError(f"{path}:{i + 1}: a record needs a numeric \"step\" field")
        by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def load_run(path: str | Path, name: str | None = None) -> RunLog:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a run directory")
    if not (path / "metrics.jsonl").exists() and not (path / "eval.jsonl").exists():
        raise FileNotFoundError(f"{path}: has neither metrics.jsonl nor eval.jsonl")
    return RunLog(name or path.resolve().name, path, read_jsonl(path / "metrics.jsonl"), read_jsonl(path / "eval.jsonl"))


def number(v) -> float | None:
    """A plottable value: a finite int or float (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def flops_axis(run: RunLog):
    """step -> cumulative training FLOPs, from the `flops` field of metrics.jsonl (step 0: none yet)."""
    pts = sorted((r["step"], f) for r in run.metrics if (f := number(r.get("flops"))) is not None)
    if not pts:
        raise ValueError(f"{run.path / 'metrics.jsonl'}: no \"flops\" field (cumulative training FLOPs per step) in "
                         "any record, so there is no FLOPs axis for this run; plot with --x step")
    steps, flops = [0.0] + [s for s, _ in pts], [0.0] + [f for _, f in pts]

    def at(step: float) -> float | None:
        # eval records sit at steps that may have no metrics record of their own (step 0): interpolate
        return float(np.interp(step, steps, flops)) if step <= steps[-1] else None
    return at


# The per-prompt values an eval.jsonl record keeps beside a held-out metric: its interval is drawn from them.
PER_ITEM = {"reward": "rewards"}


def points(run: RunLog, series: Series, x_of) -> tuple[list[float], list[float]]:
    """The series' (x, y) points. A step that logged the key as null (undefined there, e.g. the mean length of
    terminated completions when none terminated) gives y = NaN, so the line has a gap there rather than a 0."""
    xs, ys = [], []
    for r in run.metrics if series.file == "metrics" else run.eval:
        y, x = number(r.get(series.key)), x_of(r["step"])
        if y is None and series.key in r and (r[series.key] is None or isinstance(r[series.key], float)):
            y = math.nan
        if y is not None and x is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def intervals(run: RunLog, series: Series, x_of) -> list[tuple[float, float, float]]:
    """(x, low, high) of a held-out series' 95% bootstrap interval at each step that kept its per-prompt values."""
    from rlsr.metrics import bootstrap_ci
    out = []
    for r in run.eval:
        values, x = r.get(PER_ITEM.get(series.key, "")), x_of(r["step"])
        if (isinstance(values, list) and len(values) > 1 and x is not None
                and all(number(v) is not None for v in values)):
            _, low, high = bootstrap_ci(values)
            out.append((x, low, high))
    return out


def panels_for(runs: list[RunLog]) -> list[Panel]:
    """The fixed panels some run has data for, then reward components and encoder truncation from `reward/<name>`."""
    def has(run: RunLog, s: Series) -> bool:
        return any(number(r.get(s.key)) is not None for r in (run.metrics if s.file == "metrics" else run.eval))
    reward_keys = sorted({k for run in runs for r in run.metrics for k in r if k.startswith("reward/")})
    components = tuple(_m(k, k.removeprefix("reward/")) for k in reward_keys if "truncated" not in k)
    truncated = tuple(_m(k, k.removeprefix("reward/")) for k in reward_keys if "truncated" in k)
    # one component is the reward itself (a sum of one term of weight 1): no panel of its own then
    extra = [Panel("reward components", components if len(components) > 1 else (), "rl"),
             Panel("encoder inputs truncated", truncated, "rl")]
    out = []
    for p in PANELS[:2] + extra + PANELS[2:]:
        if any((not p.kind or run.kind == p.kind) and has(run, s) for run in runs for s in p.series):
            out.append(p)
    return out


def _require_matplotlib():
    """matplotlib's Figure and Line2D; ImportError is the callers' signal that it is missing."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    return Figure, Line2D


def _save(fig, out: Path):
    """Write the PNG under a temporary name and rename it, so a viewer never sees half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=fig.dpi)
    os.replace(tmp, out)


def _grid(n: int, ncols: int = 4) -> tuple[int, int]:
    ncols = min(ncols, n)
    return math.ceil(n / ncols), ncols


def plot_runs(run_dirs: list[str | Path], out: str | Path, x: str = "step") -> Path:
    """One PNG of every panel some run has data for, runs overlaid (colour = run, legend = run directory names).

    x: "step", or "flops" (every run's metrics must carry `flops`: cumulative training FLOPs at that step).
    Raises ImportError without matplotlib, ValueError when there is nothing to draw or no FLOPs axis.
    """
    if x not in ("step", "flops"):
        raise ValueError(f"x must be 'step' or 'flops', not {x!r}")
    Figure, Line2D = _require_matplotlib()
    paths = [Path(p) for p in run_dirs]
    names = [p.resolve().name for p in paths]
    if len(set(names)) < len(names):  # two runs both called `final`, say: tell them apart by the given path
        names = [str(p) for p in paths]
    runs = [load_run(p, n) for p, n in zip(paths, names)]
    x_fns = [flops_axis(run) if x == "flops" else float for run in runs]   # step -> x, per run
    panels = panels_for(runs)
    if not panels:
        raise ValueError("nothing to plot: no known metric in " + ", ".join(str(p) for p in paths))

    rows, cols = _grid(len(panels))
    # fixed margins in inches: matplotlib's automatic layouts cost more than the drawing itself
    w, h = 4.2 * cols, 2.9 * rows + 0.5
    fig = Figure(figsize=(w, h), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw=dict(
        left=0.55 / w, right=1 - 0.15 / w, bottom=0.45 / h, top=1 - 0.8 / h, wspace=0.28, hspace=0.55)).ravel()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    styles = ["-", "--", ":", "-."]
    for ax, panel in zip(axes, panels):
        for run, colour, x_of in zip(runs, colours, x_fns):
            if panel.kind and run.kind != panel.kind:
                continue
            for j, s in enumerate(panel.series):
                xs, ys = points(run, s, x_of)
                if not xs:
                    continue
                if s.file == "eval":  # a few evaluations: points with their intervals, no line between them
                    ax.plot(xs, ys, color=colour, linestyle="none", marker="o", markersize=3.5)
                    for bx, low, high in intervals(run, s, x_of):
                        ax.plot([bx, bx], [low, high], color=colour, linewidth=1.2)
                else:
                    ax.plot(xs, ys, color=colour, linestyle=styles[j % len(styles)], linewidth=1.4,
                            marker="o" if len(xs) == 1 else None, markersize=3.5)
                if panel.band and j == 0:
                    band = [(bx, y, sd) for r in run.metrics if (y := number(r.get(s.key))) is not None
                            and (sd := number(r.get(panel.band))) is not None
                            and (bx := x_of(r["step"])) is not None]
                    if band:
                        bx, by, bs = zip(*band)
                        ax.fill_between(bx, [a - b for a, b in zip(by, bs)], [a + b for a, b in zip(by, bs)],
                                        color=colour, alpha=0.15, linewidth=0)
        if len(panel.series) > 1:  # which line style is which series; colours are the figure legend's
            for j, s in enumerate(panel.series):
                ax.plot([], [], color="0.3", linestyle="none" if s.file == "eval" else styles[j % len(styles)],
                        label=s.label, marker="o" if s.file == "eval" else None, markersize=3.5)
            ax.legend(fontsize=7, frameon=False)
        ax.set_title(panel.title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_xlabel("training FLOPs" if x == "flops" else "step", fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, linewidth=2) for c in colours]
    fig.legend(handles, [run.name for run in runs], loc="upper center", ncols=min(len(runs), 6), frameon=False,
               fontsize=9)
    out = Path(out)
    _save(fig, out)
    return out


_warned: set[str] = set()


def _say_once(message: str):
    if message not in _warned:
        _warned.add(message)
        print(message, flush=True)


def write_curves(run_dir: str | Path) -> Path | None:
    """RUN_DIR/curves.png from the run's own logs; None, with one printed line, if it cannot be drawn.

    For the training scripts (at each checkpoint and at the end): it never raises, so a plot never fails a run,
    and says each distinct reason once per process.
    """
    try:
        return plot_runs([run_dir], Path(run_dir) / "curves.png")
    except ImportError:
        _say_once(MISSING_MATPLOTLIB.format(what="curves.png"))
    except Exception as e:  # noqa: BLE001 (a broken log must not stop training)
        _say_once(f"curves.png not written: {e}")
    return None


def plot_eval(results_json: str | Path, out: str | Path) -> Path | None:
    """eval.py's results.json -> one panel per metric: each checkpoint's mean with its 95% interval as error bars.

    Returns None, with one printed line, when matplotlib is missing.
    """
    results_json = Path(results_json)
    results = json.loads(results_json.read_text()).get("results")
    if not isinstance(results, list) or not results:
        raise ValueError(f"{results_json}: no \"results\" list (eval.py's results.json has one)")
    try:
        Figure, _ = _require_matplotlib()
    except ImportError:
        _say_once(MISSING_MATPLOTLIB.format(what=Path(out).name))
        return None
    metrics: list[str] = []
    for i, r in enumerate(results):
        if not isinstance(r.get("metrics"), dict) or "name" not in r:
            raise ValueError(f"{results_json}: results[{i}] needs \"name\" and a \"metrics\" object")
        metrics += [m for m in r["metrics"] if m not in metrics]
    if not metrics:
        raise ValueError(f"{results_json}: no metrics to plot")
    names = [str(r["name"]) for r in results]
    rows, cols = _grid(len(metrics), 3)
    width = max(3.6, 0.55 * len(names) + 1.6)
    fig = Figure(figsize=(width * cols, 3.0 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        for k, r in enumerate(results):
            m = r["metrics"].get(metric)
            mean = number(m.get("mean")) if isinstance(m, dict) else None
            if mean is None:
                continue
            ci = m.get("ci") or [None, None]
            lo, hi = number(ci[0]), number(ci[1])
            err = None if lo is None or hi is None else [[max(mean - lo, 0.0)], [max(hi - mean, 0.0)]]
            ax.errorbar([k], [mean], yerr=err, fmt="o", color=f"C{k % 10}", capsize=4, markersize=5)
        ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 3 else 0, ha="right" if
                      len(names) > 3 else "center", fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(f"{metric} (95% interval)", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    out = Path(out)
    _save(fig, out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories to overlay")
    ap.add_argument("-o", "--out", help="PNG to write (default: curves.png, or results.png with --eval)")
    ap.add_argument("--x", default="step", choices=["step", "flops"], help="x axis: step, or cumulative training "
                    "FLOPs (the `flops` field of metrics.jsonl)")
    ap.add_argument("--eval", metavar="RESULTS_JSON", help="draw eval.py's results.json instead of training curves")
    args = ap.parse_args(argv)
    if bool(args.run_dirs) == bool(args.eval):
        ap.error("give RUN_DIR... or --eval RESULTS_JSON")
    try:
        if args.eval:
            path = plot_eval(args.eval, args.out or "results.png")
        else:
            path = plot_runs(args.run_dirs, args.out or "curves.png", args.x)
    except ImportError:
        ap.exit(1, MISSING_MATPLOTLIB.format(what="figure") + "\n")
    except (ValueError, FileNotFoundError) as e:
        ap.exit(2, f"error: {e}\n")
    if path is None:
        ap.exit(1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
