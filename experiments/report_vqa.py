"""The easy-VQA study's section of docs/results.md, from ``experiments/results/vqa/MODE-sSEED.json``.

``vqa_section(results_dir, img_dir, docs_dir)`` returns the section's markdown lines: the setup, a
table per mode (mean and min-max over seeds) beside the paper's VQA 2.0 numbers, sentences computed
from the data (does accuracy saturate; which orderings in test NLL are wider than the seeds' spread),
and a figure of the test NLL of every run when matplotlib is installed. Everything is computed from
the JSON files written by ``experiments/vqa_study.py`` and the paper's numbers below (paper-notes C).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from report_multi30k import machines

#: paper Table 1 (VQA 2.0: NLL, VQA eval metric) and Table 3 (VQA prior entropy); none for the other modes
PAPER = {
    "soft": (1.76, 58.93, 2.70),
    "marginal": (1.69, 60.33, 2.66),
    "hard-enum": (1.78, 57.60, 0.73),
    "hard-sample": (1.82, 56.30, 0.58),
    "var-enum": (1.69, 58.44, 2.07),
    "var-sample": (1.75, 57.52, 2.44),
}
#: the order of the table (varattn.latent.mode_names(); other names sort after these)
ORDER = ["soft", "marginal", "hard-enum", "hard-sample", "var-enum", "var-sample", "var-relaxed", "var-gumbel", "rws"]
#: accuracy on a question type at or above this in every run counts as saturated
SATURATED = 0.98
FIGURE = "vqa-study-nll.png"
#: seeds the study plans for every mode (experiments/vqa_study.py)
PLANNED_SEEDS = 3
#: the hand-written reading of the table, in the results directory, inserted as it is when present
DISCUSSION = "discussion.md"


def load_results(results_dir: Path) -> dict[str, list[dict]]:
    """``{mode: [result, ...]}`` from ``results_dir/*.json``, modes in table order, runs by seed."""
    groups: dict[str, list[dict]] = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if "mode" in result and "test" in result:
            groups.setdefault(result["mode"], []).append(result)
    rank = {m: k for k, m in enumerate(ORDER)}
    return {m: sorted(groups[m], key=lambda r: r["seed"]) for m in sorted(groups, key=lambda m: (rank.get(m, 99), m))}


# -- figures of runs -------------------------------------------------------------------------------
def test_figure(result: dict, key: str) -> float | None:
    """A test figure of one run: ``nll``, ``accuracy``, ``elbo_nll``, entropies; ``yes/no``, ``shape``, ``color``
    for the accuracy on that question type; ``epochs_to_best``, ``train_min`` (wall), ``train_cpu_min``."""
    if key == "epochs_to_best":
        return float(result["best"]["epoch"])
    if key == "train_min":
        return result["train_wall_s"] / 60.0
    if key == "train_cpu_min":
        return result["train_cpu_s"] / 60.0
    if key in ("yes/no", "shape", "color"):
        return result["test"].get("accuracy_by_type", {}).get(key)
    return result["test"].get(key)


def values(runs: list[dict], key: str) -> list[float]:
    out = [test_figure(r, key) for r in runs]
    return [v for v in out if v is not None and math.isfinite(v)]


def _fmt(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def spread(vals: list[float], digits: int = 3, scale: float = 1.0) -> str:
    """``mean (min–max)`` over seeds; the value alone for one run or equal runs; ``–`` for none."""
    if not vals:
        return "–"
    vals = [v * scale for v in vals]
    mean = sum(vals) / len(vals)
    if f"{min(vals):.{digits}f}" == f"{max(vals):.{digits}f}":  # one run, or all alike at this precision
        return _fmt(mean, digits)
    return f"{mean:.{digits}f} ({min(vals):.{digits}f}–{max(vals):.{digits}f})"


def mean(vals: list[float]) -> float:
    return sum(vals) / len(vals)


def nll_digits(groups: dict[str, list[dict]]) -> int:
    """Decimals that give the smallest mean NLL of any mode three significant digits (at least 3):
    converged easy-VQA models reach NLLs of a thousandth of a nat."""
    means = [mean(v) for rs in groups.values() for key in ("nll", "elbo_nll") if (v := values(rs, key))]
    low = min((m for m in means if m > 0), default=1.0)
    return max(3, 2 - math.floor(math.log10(low)))


# -- the table -------------------------------------------------------------------------------------
def table(groups: dict[str, list[dict]]) -> list[str]:
    digits = nll_digits(groups)
    lines = ["| mode | seeds | **test NLL** | accuracy % | yes/no · shape · colour % | -ELBO | prior H | q H | "
             "exact posterior H | best epoch | epochs trained | train min (CPU min) | paper NLL | paper eval | "
             "paper prior H |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, runs in groups.items():
        paper = PAPER.get(mode, (None, None, None))
        by_type = " · ".join(_fmt(mean(v) * 100, 2) if (v := values(runs, k)) else "–"
                             for k in ("yes/no", "shape", "color"))
        trained = [float(r["epochs"]) for r in runs]
        epochs = f"{spread(values(runs, 'epochs_to_best'), 1)} | {spread(trained, 1)}"
        minutes = f"{spread(values(runs, 'train_min'), 1)} ({spread(values(runs, 'train_cpu_min'), 1)})"
        lines.append(
            f"| `{mode}` | {len(runs)} | **{spread(values(runs, 'nll'), digits)}** | "
            f"{spread(values(runs, 'accuracy'), 2, 100)} | "
            f"{by_type} | {spread(values(runs, 'elbo_nll'), digits)} | {spread(values(runs, 'prior_entropy'), 2)} | "
            f"{spread(values(runs, 'posterior_entropy'), 2)} | {spread(values(runs, 'exact_posterior_entropy'), 2)} | "
            f"{epochs} | {minutes} | {_fmt(paper[0], 2)} | {_fmt(paper[1], 2)} | {_fmt(paper[2], 2)} |")
    return lines


# -- sentences computed from the data -------------------------------------------------------------
def status_lines(groups: dict[str, list[dict]]) -> list[str]:
    """Seeds finished against planned for every mode of ``ORDER`` (and any other mode that has results)."""
    modes = ORDER + [m for m in groups if m not in ORDER]
    done = {m: len(groups.get(m, [])) for m in modes}
    parts = ", ".join(f"`{m}` {done[m]}/{PLANNED_SEEDS}" for m in modes)
    missing = sum(max(0, PLANNED_SEEDS - n) for n in done.values())
    tail = (" Every planned run is in." if not missing else
            f" {missing} planned run{'s are' if missing != 1 else ' is'} still missing: a missing row or seed is not a "
            "result.")
    return [f"**Status** (seeds finished / planned): {parts}.{tail}"]


def saturation_lines(groups: dict[str, list[dict]]) -> list[str]:
    """Does accuracy saturate: the lowest shape and colour accuracy of any run, and the modes' accuracy range."""
    runs = [r for rs in groups.values() for r in rs]
    lowest = {k: min(values(runs, k), default=None) for k in ("shape", "color", "yes/no")}
    means = {m: mean(v) for m, rs in groups.items() if (v := values(rs, "accuracy"))}
    if not means:
        return []
    lo, hi = min(means.values()), max(means.values())
    nll = [mean(v) for rs in groups.values() if (v := values(rs, "nll"))]
    digits = nll_digits(groups)
    text = (f"Test accuracy of the modes (means over seeds) spans {lo * 100:.1f}–{hi * 100:.1f} % and their test NLL "
            f"{min(nll):.{digits}f}–{max(nll):.{digits}f} nats; over all "
            f"{len(runs)} runs the lowest accuracy on shape questions is {_fmt(_pct(lowest['shape']), 1)} %, on "
            f"colour questions {_fmt(_pct(lowest['color']), 1)} % and on yes/no questions "
            f"{_fmt(_pct(lowest['yes/no']), 1)} %. ")
    saturated = [k for k in ("shape", "color", "yes/no") if lowest[k] is not None and lowest[k] >= SATURATED]
    names = {"shape": "shape", "color": "colour", "yes/no": "yes/no"}
    if len(saturated) == 3:
        text += (f"Accuracy saturates on every question type (every run at {SATURATED * 100:.0f} % or above): "
                 "easy-VQA is too easy for accuracy to separate the modes, and the test NLL, which keeps falling as "
                 "a model grows surer of the right answer, is the primary figure.")
    elif saturated:
        rest = [names[k] for k in ("shape", "color", "yes/no") if k not in saturated]
        text += (f"Accuracy saturates on {' and '.join(names[k] for k in saturated)} questions (every run at "
                 f"{SATURATED * 100:.0f} % or above), so only the {' and '.join(rest)} questions are left to tell "
                 "the modes apart by accuracy; the test NLL, which keeps falling as a model grows surer of the right "
                 "answer, is the primary figure.")
    else:
        text += f"No question type saturates (some run is below {SATURATED * 100:.0f} % on each); NLL is still the "
        text += "primary figure, as in the paper."
    return [text]


def _pct(x: float | None) -> float | None:
    return None if x is None else x * 100


def separated(a: list[float], b: list[float]) -> bool:
    """``a`` is lower than ``b`` beyond the seeds' spread: every run of ``a`` below every run of ``b``."""
    return len(a) > 1 and len(b) > 1 and max(a) < min(b)


def ordering_lines(groups: dict[str, list[dict]]) -> list[str]:
    """The modes ranked by mean test NLL, ``<`` where neighbours' seed ranges do not overlap; the separated
    pairs, and whether they agree with the paper's NLL ordering."""
    nll = {m: v for m, rs in groups.items() if (v := values(rs, "nll"))}
    if len(nll) < 2:
        return []
    ranked = sorted(nll, key=lambda m: mean(nll[m]))
    digits = nll_digits(groups)
    chain = f"`{ranked[0]}` {mean(nll[ranked[0]]):.{digits}f}"
    for prev, cur in zip(ranked, ranked[1:]):
        chain += f" {'<' if separated(nll[prev], nll[cur]) else '≈'} `{cur}` {mean(nll[cur]):.{digits}f}"
    pairs = [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:]]
    judged = [(a, b) for a, b in pairs if len(nll[a]) > 1 and len(nll[b]) > 1]
    apart = [(a, b) for a, b in judged if separated(nll[a], nll[b])]
    lines = [f"Modes by mean test NLL (`<`: every seed of the left mode below every seed of the right one; `≈`: "
             f"the seed ranges overlap): {chain}.",
             f"Of the {len(judged)} pair{'s' if len(judged) != 1 else ''} of modes with at least two seeds each, "
             f"{len(apart)} {'are' if len(apart) != 1 else 'is'} separated by more "
             "than the spread over seeds" + (": " + ", ".join(f"`{a}` < `{b}`" for a, b in apart) + "." if apart
                                            else ".")]
    with_paper = [(a, b) for a, b in apart if a in PAPER and b in PAPER and PAPER[a][0] != PAPER[b][0]]
    if with_paper:
        agree = [(a, b) for a, b in with_paper if PAPER[a][0] < PAPER[b][0]]
        lines[-1] += (f" Of the separated pairs whose two modes differ in the paper's NLL ({len(with_paper)}), "
                      f"{len(agree)} go the paper's way on VQA 2.0"
                      + (", against it: " + ", ".join(f"`{a}` < `{b}`" for a, b in with_paper if (a, b) not in agree)
                         if len(agree) < len(with_paper) else "") + ".")
    return lines


def entropy_lines(groups: dict[str, list[dict]]) -> list[str]:
    """How much sharper the exact posterior is than the prior, per mode that has one (nats, means over seeds)."""
    gaps = {m: mean(p) - mean(e) for m, rs in groups.items()
            if (p := values(rs, "prior_entropy")) and (e := values(rs, "exact_posterior_entropy"))}
    if not gaps:
        return []
    parts = ", ".join(f"`{m}` {g:.2f}" for m, g in sorted(gaps.items(), key=lambda kv: -kv[1]))
    return [f"Prior entropy minus exact posterior entropy (nats; how much knowing the answer narrows down the "
            f"region; uniform over 16 cells is {math.log(16):.2f}): {parts}."]


def setup_lines(groups: dict[str, list[dict]]) -> list[str]:
    runs = [r for rs in groups.values() for r in rs]
    first = runs[0]
    study, model = first["study"], first.get("model") or {}
    cfg = first.get("config") or {}
    cpu_h = sum(r.get("train_cpu_s", 0.0) for r in runs) / 3600
    wall_h = sum(r.get("train_wall_s", 0.0) for r in runs) / 3600
    sets = f" with {', '.join(f'`{s}`' for s in study['sets'])}" if study.get("sets") else ""
    regions = f"`{model.get('cnn_regions', 'wide')}`"
    if model.get("cnn_regions") == "local":
        regions += f" (a {model.get('cnn_grid')}x{model.get('cnn_grid')} cut of the image, one patch per cell)"
    stopped = sum(1 for r in runs if (r.get("stopped") or "").startswith("early"))
    other = sum(1 for r in runs if r["study"] != study or (r.get("model") or {}) != model)
    note = f" ({other} of the runs had other settings than these, the first run's)" if other else ""
    return [
        f"- Runs: {len(runs)} ({len(groups)} mode{'s' if len(groups) != 1 else ''}), the `{study['config']}` "
        f"config{sets}; CNN regions {regions}"
        f"{note}.",
        f"- Training: batches of {cfg.get('batch_size')}, Adam {cfg.get('lr')}, learning rate halved after an epoch "
        f"whose validation is worse than the best before (from epoch {cfg.get('decay_start_epoch')}), until the "
        f"validation metric (-ELBO with an inference network, else the exact NLL) has not improved for "
        f"{study['patience']} epochs, at most {study['max_epochs']} epochs ({stopped} of {len(runs)} runs stopped "
        "early); the best validation checkpoint is evaluated on the test split.",
        f"- Time: {wall_h:.1f} h of training wall clock, {cpu_h:.1f} CPU hours, {study['threads']} thread per "
        f"process, on {machines(runs)}.",
    ]


def plot_nll(groups: dict[str, list[dict]], path: Path) -> Path | None:
    """Test NLL of every run (dots) and the mode's mean (bar); None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m, rs in groups.items() if values(rs, "nll")]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(modes) + 1.2))
    for k, mode in enumerate(modes):
        vals = values(groups[mode], "nll")
        ax.plot(vals, [k] * len(vals), "o", color="tab:blue", alpha=0.7)
        ax.plot([mean(vals)] * 2, [k - 0.3, k + 0.3], color="black")
    ax.set_yticks(range(len(modes)), modes)
    ax.invert_yaxis()
    ax.set_xlabel("test NLL (nats per question), one dot per seed")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def vqa_section(results_dir: Path, img_dir: Path, docs_dir: Path) -> list[str]:
    """The markdown lines of the easy-VQA section (empty but for a note when there are no results yet)."""
    groups = load_results(results_dir)
    lines = ["## easy-VQA: every mode to convergence", ""]
    if not groups:
        return lines + [f"No results yet in `{Path(results_dir).name}/` (run `python experiments/vqa_study.py`).", ""]
    lines += status_lines(groups) + [""] + setup_lines(groups) + [""]
    questions = sorted({r["test"]["questions"] for rs in groups.values() for r in rs})
    lines += [f"Test split of easy-VQA ({' or '.join(f'{q:,}' for q in questions)} questions, 13 answers, one "
              "annotator). Mean over seeds, min–max in "
              "brackets; NLL and -ELBO in nats per question, entropies in nats over the regions. The paper's "
              "columns are VQA 2.0 (Table 1: NLL and VQA eval; Table 3: prior entropy over up to 36 detected "
              "regions): other data, other scale; only orderings can be compared.", ""]
    lines += table(groups) + [""]
    for part in (saturation_lines, ordering_lines, entropy_lines):
        text = part(groups)
        if text:
            lines += text + [""]
    figure = plot_nll(groups, Path(img_dir) / FIGURE)
    if figure is not None:
        lines += [f"![test NLL per run]({Path(os.path.relpath(figure, docs_dir)).as_posix()})", ""]
    discussion = Path(results_dir) / DISCUSSION
    if discussion.exists():
        lines += [discussion.read_text(encoding="utf-8").strip(), ""]
    return lines
