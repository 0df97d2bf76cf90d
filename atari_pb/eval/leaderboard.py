"""Leaderboard files from results records: tables (Markdown, CSV, LaTeX, a static HTML page) and PNG figures.

Everything is computed from the records alone with a fixed bootstrap seed, so the same results give the same
files. Tables are formatted by pure functions (`markdown_table`, `latex_table`, `csv_rows`, `parts_table`);
only `write_leaderboard` touches the disk.

Protocols scored on a scale of their own (`Protocol.score_scale`, e.g. the probe's F1) get tables of their
own per scale, aggregated raw, and a protocol declaring sub-scores (`Protocol.score_parts`, e.g. the probe's
categories) a table of their means per method beside; both read only the registry's declarations.

Every table says which data each row's encoder was pre-trained on (the rows' `pretrain_data`, aggregate.py),
and a table whose pre-trained rows were pre-trained on different data says so in a line above it (Markdown,
HTML; a comment in LaTeX) and in a logged warning: such rows are ranked together, but never silently.
"""

from __future__ import annotations

import csv
import html
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atari_pb.data.provenance import NONE
from atari_pb.eval.aggregate import (
    CONFIDENCE,
    METRIC_TITLES,
    METRICS,
    aggregate,
    performance_profiles,
    probability_of_improvement,
    protocols_with_results,
    splits_with_results,
)
from atari_pb.eval.records import ResultRecord
from atari_pb.eval.scores import (
    NORMALIZATIONS,
    dqn_normalized,
    has_human_scores,
    human_normalized,
    is_raw,
    score_matrices,
)
from atari_pb.eval.scoring import scoring, use_records

log = logging.getLogger(__name__)

CSV_COLUMNS: tuple[str, ...] = (
    "method",
    "protocol",
    "split",
    "n_games",
    "n_seeds",
    "iqm",
    "iqm_low",
    "iqm_high",
    "median",
    "mean",
    "optimality_gap",
)
# after the required columns: the remaining CIs, then the human-normalised aggregates (blank for Far-OOD)
_CI_EXTRAS = (
    "median_low",
    "median_high",
    "mean_low",
    "mean_high",
    "optimality_gap_low",
    "optimality_gap_high",
)
_HUMAN_EXTRAS = tuple(f"human_{m}{s}" for m in METRICS for s in ("", "_low", "_high"))
_DATA_EXTRAS = ("pretrain_data",)  # last: files read by position before it existed keep their columns
CSV_EXTRA_COLUMNS: tuple[str, ...] = (*_CI_EXTRAS, *_HUMAN_EXTRAS, *_DATA_EXTRAS)
SCORES_COLUMNS = (
    "method",
    "protocol",
    "split",
    "game",
    "seed",
    "score",
    "dqn_normalized",
    "human_normalized",
)
SPLIT_TITLES = {"id": "ID", "near_ood": "Near-OOD", "far_ood": "Far-OOD"}
SCALE_TITLES = {"dqn": "DQN-normalised", "human": "Human-normalised", "f1": "F1"}
PARTS_COLUMNS = ("method", "protocol", "split", "n_games", "n_seeds", "mean")  # then the protocol's parts
_PAIR_SEPARATOR = "\x1f"  # joins a pair's names for rliable's plot; cannot occur in a method's folder name
_HEADERS = (
    "Method",
    "Protocol",
    "Split",
    "Games",
    "Seeds",
    *(METRIC_TITLES[m] for m in METRICS),
    "Pre-training data",
)
MIXED_TITLE = "Mixed pre-training data:"


# ---------------------------------------------------------------- tables (pure)
def format_estimate(row: dict[str, Any], metric: str, digits: int = 3) -> str:
    """'0.532 [0.410, 0.660]': the point estimate and its 95% CI."""
    return f"{row[metric]:.{digits}f} [{row[f'{metric}_low']:.{digits}f}, {row[f'{metric}_high']:.{digits}f}]"


def _cells(row: dict[str, Any]) -> list[str]:
    return [
        row["method"],
        row["protocol"],
        row["split"],
        str(row["n_games"]),
        str(row["n_seeds"]),
        *(format_estimate(row, m) for m in METRICS),
        row["pretrain_data"],
    ]


def mixed_pretrain_data(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The different pre-training data of the pre-trained rows (not the baselines') of one table, in order
    of first appearance; [] when they all share one (aggregate labels different data differently)."""
    seen = list(dict.fromkeys(r["pretrain_data"] for r in rows if r["pretrain_data"] != NONE))
    return seen if len(seen) > 1 else []


def mixed_note(rows: Sequence[dict[str, Any]]) -> str:
    """The one-line warning above a table whose pre-trained rows were pre-trained on different data; ""
    when they were not."""
    mixed = mixed_pretrain_data(rows)
    if not mixed:
        return ""
    return (
        f"{MIXED_TITLE} rows below were pre-trained on different data ({'; '.join(mixed)}); "
        "compare them with care."
    )


def warn_mixed(rows: Sequence[dict[str, Any]], where: str) -> None:
    """Log the mixed-data note of each table (one per scale) of `rows`."""
    for scale, group in by_scale(rows).items():
        note = mixed_note(group)
        if note:
            log.warning("%s, %s table: %s", where, scale_title(scale), note)


def scale_title(scale: str) -> str:
    return SCALE_TITLES.get(scale, scale)


def axis_label(scale: str) -> str:
    """'DQN-normalised score', or a raw scale's title ('F1')."""
    return f"{scale_title(scale)} score" if scale in NORMALIZATIONS else scale_title(scale)


def _markdown_grid(headers: Sequence[str], body: Sequence[Sequence[str]], left: int, tail: int = 0) -> str:
    """`left` columns aligned left, then numbers aligned right, then `tail` more columns of text."""
    escape = str.maketrans({"|": r"\|"})
    align = "---|" * left + "---:|" * (len(headers) - left - tail) + "---|" * tail
    lines = ["| " + " | ".join(headers) + " |", "|" + align]
    lines += ["| " + " | ".join(c.translate(escape) for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def by_scale(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by their scale (`normalization`), in order of first appearance."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["normalization"], []).append(row)
    return out


def parts_columns(rows: Sequence[dict[str, Any]], protocol: str) -> list[str]:
    """The sub-scores any of the protocol's rows has, in the protocol's declared order."""
    have = {name for r in rows if r["protocol"] == protocol for name in r.get("parts", {})}
    return [name for name in scoring(protocol).parts if name in have]


def parts_table(rows: Sequence[dict[str, Any]], protocol: str) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of the mean of each sub-score per method of `protocol` (blank where a method's
    games have none of it), after the method's mean score."""
    names = parts_columns(rows, protocol)
    body = [
        [
            r["method"],
            r["protocol"],
            r["split"],
            str(r["n_games"]),
            str(r["n_seeds"]),
            f"{r['mean']:.3f}",
            *(f"{r['parts'][n]:.3f}" if n in r["parts"] else "" for n in names),
        ]
        for r in rows
        if r["protocol"] == protocol
    ]
    return ["Method", "Protocol", "Split", "Games", "Seeds", "Mean", *names], body


def _parts_protocols(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["protocol"] for r in rows if "parts" in r))


def _parts_caption(protocol: str, scale: str) -> str:
    return f"{protocol}: mean {scale_title(scale)} per {scoring(protocol).parts_title}"


def _markdown_rows(rows: Sequence[dict[str, Any]]) -> str:
    """An aggregate table, under its mixed-data note when it has one."""
    note = mixed_note(rows)
    above = f"**{MIXED_TITLE}**{note.removeprefix(MIXED_TITLE)}\n\n" if note else ""
    return above + _markdown_grid(_HEADERS, [_cells(r) for r in rows], 3, tail=1)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of aggregate rows (estimates with 95% CIs in brackets), under a
    note when its pre-trained rows were pre-trained on different data. Rows on a protocol's own scale (see
    the module docstring) follow in a titled table per scale, with the table of their sub-scores."""
    groups = by_scale(rows)
    game = [r for scale, group in groups.items() if scale in NORMALIZATIONS for r in group]
    parts = [_markdown_rows(game)] if game or not rows else []
    for scale, group in groups.items():
        if scale in NORMALIZATIONS:
            continue
        parts.append(f"{scale_title(scale)} (raw, not normalised):\n\n" + _markdown_rows(group))
        for protocol in _parts_protocols(group):
            header, body = parts_table(group, protocol)
            parts.append(f"{_parts_caption(protocol, scale)}:\n\n" + _markdown_grid(header, body, 3))
    return "\n".join(parts)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def latex_table(rows: Sequence[dict[str, Any]], normalization: str = "dqn") -> str:
    """A LaTeX tabular (no packages needed); a rule between splits and between protocols."""

    def estimate(row: dict[str, Any], metric: str) -> str:
        low, high = row[f"{metric}_low"], row[f"{metric}_high"]
        return f"{row[metric]:.3f} {{\\scriptsize [{low:.3f}, {high:.3f}]}}"

    note = mixed_note(rows)
    lines = [
        f"% Atari-PB leaderboard, {scale_title(normalization)} scores: "
        f"point estimate [{CONFIDENCE:.0%} stratified-bootstrap CI]",
        *([f"% {note}"] if note else []),
        "\\begin{tabular}{lllrr" + "l" * len(METRICS) + "l}",
        "\\hline",
        " & ".join(latex_escape(h) for h in _HEADERS) + " \\\\",
        "\\hline",
    ]
    previous = None
    for row in rows:
        group = (row["split"], row["protocol"])
        if previous is not None and group != previous:
            lines.append("\\hline")
        previous = group
        cells = [latex_escape(str(row[k])) for k in ("method", "protocol", "split", "n_games", "n_seeds")]
        data = latex_escape(row["pretrain_data"])
        lines.append(" & ".join([*cells, *(estimate(row, m) for m in METRICS), data]) + " \\\\")
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def csv_rows(
    dqn_rows: Sequence[dict[str, Any]], human_rows: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One CSV row per (method, protocol, split): DQN-normalised aggregates, human ones as extra columns."""
    human = {(r["method"], r["protocol"], r["split"]): r for r in human_rows}
    out = []
    for row in dqn_rows:
        line = {k: row[k] for k in (*CSV_COLUMNS, *_CI_EXTRAS)}
        h = human.get((row["method"], row["protocol"], row["split"]))
        for col in _HUMAN_EXTRAS:
            line[col] = "" if h is None else h[col.removeprefix("human_")]
        line.update({k: row[k] for k in _DATA_EXTRAS})
        out.append(line)
    return out


def _csv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def score_rows(records: Sequence[ResultRecord]) -> list[dict[str, Any]]:
    """Every run's raw and normalised score, for checking a table against the runs behind it."""
    out = []
    for r in sorted(records, key=lambda r: (r.split, r.protocol, r.method, r.game, r.seed)):
        raw = is_raw(r.protocol)  # a scale of its own: no game normalisation
        human = None if raw else human_normalized(r.game, r.score)
        out.append(
            {
                "method": r.method,
                "protocol": r.protocol,
                "split": r.split,
                "game": r.game,
                "seed": r.seed,
                "score": r.score,
                "dqn_normalized": "" if raw else dqn_normalized(r.game, r.score),
                "human_normalized": "" if human is None else human,
            }
        )
    return out


def parts_csv_rows(rows: Sequence[dict[str, Any]], protocol: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of `parts_<protocol>.csv`: PARTS_COLUMNS then each sub-score's mean."""
    names = parts_columns(rows, protocol)
    out = [
        {**{k: r[k] for k in PARTS_COLUMNS}, **{n: r["parts"].get(n, "") for n in names}}
        for r in rows
        if r["protocol"] == protocol
    ]
    return [*PARTS_COLUMNS, *names], out


# ---------------------------------------------------------------- figures
def _estimates(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    points = {r["method"]: np.array([r[m] for m in METRICS]) for r in rows}
    cis = {
        r["method"]: np.array([[r[f"{m}_low"] for m in METRICS], [r[f"{m}_high"] for m in METRICS]])
        for r in rows
    }
    return points, cis


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window, also without a display
    import matplotlib.pyplot as plt

    return plt


def plot_interval_figure(rows: Sequence[dict[str, Any]], path: Path, xlabel: str) -> Path:
    """rliable's interval-estimate figure: one panel per metric, a bar per method (95% CI) and its point."""
    plt = _pyplot()
    from rliable import plot_utils

    points, cis = _estimates(rows)
    methods = [r["method"] for r in rows][::-1]  # rliable draws the first at the bottom; best on top
    row_height = max(0.6, 2.0 / len(methods))
    fig, _ = plot_utils.plot_interval_estimates(
        points,
        cis,
        metric_names=[METRIC_TITLES[m] for m in METRICS],
        algorithms=methods,
        xlabel=xlabel,
        row_height=row_height,
        # rliable places the label in figure coordinates: keep it ~0.55 inch below the axes at any height
        xlabel_y_coordinate=-0.55 / (row_height * len(methods)),
        max_ticks=3,
        wspace=0.2,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_profile_figure(profiles, path: Path, xlabel: str, title: str) -> Path:
    """rliable's performance-profile figure: fraction of runs above tau, with 95% CI bands."""
    plt = _pyplot()
    from rliable import plot_utils

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(
        profiles.profiles,
        profiles.taus,
        performance_profile_cis=profiles.cis,
        ax=ax,
        xlabel=xlabel + r" ($\tau$)",
        legend=True,
        legendsize="medium",
        labelsize="large",
        ticklabelsize="medium",
    )
    ax.set_title(title)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_improvement_figure(
    probabilities: dict[tuple[str, str], tuple[float, float, float]], path: Path, title: str
) -> Path:
    """rliable's probability-of-improvement figure: P(X > Y) with its 95% CI for each pair."""
    plt = _pyplot()
    from rliable import plot_utils

    keys = {pair: _PAIR_SEPARATOR.join(pair) for pair in probabilities}
    fig, ax = plt.subplots(figsize=(5, 1.0 + 0.45 * len(probabilities)))
    plot_utils.plot_probability_of_improvement(
        {keys[p]: v[0] for p, v in probabilities.items()},
        {keys[p]: np.array(v[1:]) for p, v in probabilities.items()},
        pair_separator=_PAIR_SEPARATOR,
        ax=ax,
        xticks=[0.0, 0.25, 0.5, 0.75, 1.0],
        ticklabelsize="medium",
        labelsize="medium",
    )
    ax.set_xlim(0.0, 1.0)
    ax.set_title(title, pad=24)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------- HTML (pure)
def _html_grid(headers: Sequence[str], body: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    lines = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body
    )
    table = f'<table class="{cls}">' if cls else "<table>"
    return f"{table}\n<thead><tr>{head}</tr></thead>\n<tbody>\n{lines}\n</tbody>\n</table>"


def _html_table(rows: Sequence[dict[str, Any]]) -> str:
    """An aggregate table, under its mixed-data note when it has one."""
    note = mixed_note(rows)
    above = (
        f'<p class="mixed"><strong>{MIXED_TITLE}</strong>{html.escape(note.removeprefix(MIXED_TITLE))}</p>\n'
        if note
        else ""
    )
    return above + _html_grid(_HEADERS, [_cells(r) for r in rows], "board")


def _html_raw(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The tables of the protocols on a scale of their own: per scale, the aggregates then the sub-scores."""
    parts = []
    for scale, group in by_scale(rows).items():
        parts.append(f"<h3>{html.escape(scale_title(scale))} (raw, not normalised)</h3>")
        parts.append(_html_table(group))
        for protocol in _parts_protocols(group):
            parts.append(f"<h3>{html.escape(_parts_caption(protocol, scale))}</h3>")
            parts.append(_html_grid(*parts_table(group, protocol)))
    return parts


_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px}
td:nth-child(n+4){text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
figure{display:inline-block;margin:0.5em 1em 1em 0;vertical-align:top}img{max-width:100%}
figcaption{font-size:0.9em;color:#555}table.board td:last-child{text-align:left}
p.mixed{background:#fff4e0;border-left:4px solid #e69500;padding:4px 8px}"""


def html_page(sections: Sequence[dict[str, Any]], reps: int, seed: int, n_records: int) -> str:
    """The static page: per split, the tables, then per protocol the figures (linked PNGs beside it)."""
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Atari-PB leaderboard</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Atari-PB leaderboard</h1>",
        f"<p>{n_records} fine-tuning runs. Each cell: point estimate [{CONFIDENCE:.0%} stratified-bootstrap "
        f"confidence interval], {reps} bootstrap replications, seed {seed} (rliable). IQM is the 25% trimmed "
        "mean over all runs x games; the optimality gap is how far runs fall short of 1 (the reference). "
        "DQN-normalised: 0 = the worse and 1 = the better of the random and reference agents (DQN 50M for "
        "ID and Near-OOD games, Rainbow 2M for Far-OOD). Human-normalised: 0 = random, 1 = human. Protocols "
        "scored on a scale of their own (F1) are aggregated raw in tables of their own. Per-run "
        'scores: <a href="scores.csv">scores.csv</a>; tables: <a href="leaderboard.csv">CSV</a>, '
        '<a href="leaderboard.md">Markdown</a>, <a href="leaderboard.tex">LaTeX</a>.</p>',
    ]
    for sec in sections:
        parts.append(f"<h2>{html.escape(SPLIT_TITLES[sec['split']])}</h2>")
        if sec["dqn"]:
            parts.append(f"<h3>{SCALE_TITLES['dqn']}</h3>")
            parts.append(_html_table(sec["dqn"]))
        if sec["human"]:
            parts.append(f"<h3>{SCALE_TITLES['human']}</h3>")
            parts.append(_html_table(sec["human"]))
        parts += _html_raw(sec.get("raw", []))
        for protocol, figures in sec["figures"].items():
            parts.append(f"<h3>Figures: {html.escape(protocol)}</h3>")
            for name, caption in figures:
                src = html.escape(name, quote=True)
                parts.append(
                    f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(caption, quote=True)}">'
                    f"</a><figcaption>{html.escape(caption)}</figcaption></figure>"
                )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- writing (I/O)
def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _protocol_figures(
    records: Sequence[ResultRecord],
    split: str,
    protocol: str,
    dqn_rows: list[dict[str, Any]],
    human_rows: list[dict[str, Any]],
    out: Path,
    reps: int,
    seed: int,
) -> list[tuple[Path, str]]:
    """The figures of one (split, protocol): (file, caption) pairs. `dqn_rows`: the protocol's rows on the
    DQN-normalised scale, or on its own scale."""
    title = f"{SPLIT_TITLES[split]}, {protocol}"
    rows = [r for r in dqn_rows if r["protocol"] == protocol]
    scale = rows[0]["normalization"]
    figures = [
        (
            plot_interval_figure(rows, out / f"interval_estimates_{split}_{protocol}.png", axis_label(scale)),
            f"{title}: aggregates with 95% CIs ({scale_title(scale)})",
        )
    ]
    hrows = [r for r in human_rows if r["protocol"] == protocol]
    if hrows:
        path = out / f"interval_estimates_{split}_{protocol}_human.png"
        figures.append(
            (
                plot_interval_figure(hrows, path, "Human-normalised score"),
                f"{title}: aggregates with 95% CIs (human-normalised)",
            )
        )
    matrices = score_matrices(records, split, protocol, "dqn")
    order = [r["method"] for r in rows]  # best IQM first
    ranked = {m: matrices.scores[m] for m in order}
    profiles = performance_profiles(ranked, reps=reps, seed=seed)
    path = out / f"performance_profile_{split}_{protocol}.png"
    figures.append(
        (
            plot_profile_figure(profiles, path, axis_label(scale), title),
            f"{title}: performance profiles (fraction of runs above tau)",
        )
    )
    if len(order) >= 2:
        probabilities = probability_of_improvement(ranked, reps=reps, seed=seed)
        path = out / f"probability_of_improvement_{split}_{protocol}.png"
        figures.append(
            (
                plot_improvement_figure(probabilities, path, title),
                f"{title}: probability of improvement P(X > Y)",
            )
        )
    return figures


def _markdown_page(sections: list[dict[str, Any]], reps: int, seed: int) -> str:
    md = ["# Atari-PB leaderboard", ""]
    md.append(
        f"Point estimate [{CONFIDENCE:.0%} stratified-bootstrap CI], {reps} bootstrap replications, seed {seed}."
    )
    for sec in sections:
        md += ["", f"## {SPLIT_TITLES[sec['split']]}", ""]
        if sec["dqn"]:
            md += [f"### {SCALE_TITLES['dqn']}", "", markdown_table(sec["dqn"])]
        if sec["human"]:
            md += [f"### {SCALE_TITLES['human']}", "", markdown_table(sec["human"])]
        for scale, group in by_scale(sec.get("raw", [])).items():
            md += [f"### {scale_title(scale)} (raw, not normalised)", "", _markdown_rows(group)]
            for protocol in _parts_protocols(group):
                header, body = parts_table(group, protocol)
                md += [f"#### {_parts_caption(protocol, scale)}", "", _markdown_grid(header, body, 3)]
        for protocol, figures in sec["figures"].items():
            md.append(
                f"Figures ({protocol}): " + ", ".join(f"[{caption}]({name})" for name, caption in figures)
            )
            md.append("")
    return "\n".join(md).rstrip() + "\n"


def _split_rows(
    records: Sequence[ResultRecord], split: str, reps: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(DQN-normalised, human-normalised, own-scale) aggregate rows of one split."""
    protocols = protocols_with_results(records, split)
    game = [p for p in protocols if not is_raw(p)]
    raw = [p for p in protocols if is_raw(p)]
    dqn_rows = aggregate(records, split, "dqn", reps, seed, game) if game else []
    human = game and has_human_scores(split)
    human_rows = aggregate(records, split, "human", reps, seed, game) if human else []
    raw_rows = aggregate(records, split, "dqn", reps, seed, raw) if raw else []  # on their own scales
    return dqn_rows, human_rows, raw_rows


def _raw_files(out: Path, rows: Sequence[dict[str, Any]]) -> list[Path]:
    """leaderboard_<scale>.{csv,tex} per own scale and parts_<protocol>.csv per protocol with sub-scores."""
    written = []
    scale_columns = (*CSV_COLUMNS, *_CI_EXTRAS, *_DATA_EXTRAS)
    for scale, group in by_scale(rows).items():
        line = [{k: r[k] for k in scale_columns} for r in group]
        written.append(_write(out / f"leaderboard_{scale}.csv", _csv_text(scale_columns, line)))
        written.append(_write(out / f"leaderboard_{scale}.tex", latex_table(group, scale)))
    for protocol in _parts_protocols(rows):
        columns, lines = parts_csv_rows(rows, protocol)
        written.append(_write(out / f"parts_{protocol}.csv", _csv_text(columns, lines)))
    return written


def write_leaderboard(
    records: Sequence[ResultRecord], out: Path, reps: int = 2000, seed: int = 0
) -> list[Path]:
    """Write every table and figure for every split and protocol with results; returns the files written.

    Files: leaderboard.{md,csv,tex}, leaderboard_human.tex, scores.csv, index.html and per (split, protocol)
    interval_estimates_<split>_<protocol>.png (+ _human.png where human scores exist),
    performance_profile_<split>_<protocol>.png and, with two or more methods,
    probability_of_improvement_<split>_<protocol>.png. With protocols on a scale of their own, also
    leaderboard_<scale>.{csv,tex} and, for those with sub-scores, parts_<protocol>.csv (every split).
    """
    use_records(records)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sections = []
    all_dqn: list[dict[str, Any]] = []
    all_human: list[dict[str, Any]] = []
    all_raw: list[dict[str, Any]] = []
    for split in splits_with_results(records):
        dqn_rows, human_rows, raw_rows = _split_rows(records, split, reps, seed)
        warn_mixed([*dqn_rows, *raw_rows], SPLIT_TITLES[split])  # the human table has the DQN one's rows
        all_dqn += dqn_rows
        all_human += human_rows
        all_raw += raw_rows
        figures: dict[str, list[tuple[str, str]]] = {}
        for protocol in protocols_with_results(records, split):
            rows = raw_rows if is_raw(protocol) else dqn_rows
            made = _protocol_figures(records, split, protocol, rows, human_rows, out, reps, seed)
            written += [path for path, _ in made]
            figures[protocol] = [(path.name, caption) for path, caption in made]
        sections.append(
            {"split": split, "dqn": dqn_rows, "human": human_rows, "raw": raw_rows, "figures": figures}
        )

    csv = _csv_text((*CSV_COLUMNS, *CSV_EXTRA_COLUMNS), csv_rows(all_dqn, all_human))
    written.append(_write(out / "leaderboard.csv", csv))
    written.append(_write(out / "scores.csv", _csv_text(SCORES_COLUMNS, score_rows(records))))
    written.append(_write(out / "leaderboard.tex", latex_table(all_dqn, "dqn")))
    written.append(_write(out / "leaderboard_human.tex", latex_table(all_human, "human")))
    written += _raw_files(out, all_raw)
    written.append(_write(out / "leaderboard.md", _markdown_page(sections, reps, seed)))
    written.append(_write(out / "index.html", html_page(sections, reps, seed, len(records))))
    log.debug("leaderboard: %d files in %s", len(written), out)
    return written
