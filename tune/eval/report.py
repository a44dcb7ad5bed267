"""Evaluation reports: a side-by-side table on the terminal and a Markdown file."""

from __future__ import annotations

from rich.table import Table

from enclave.ui import console
from tune.eval.run import EvalResult

ORDER = [
    "perplexity",
    "general_perplexity",
    "text_perplexity",
    "exact_match",
    "token_f1",
    "bleu",
    "rouge_l",
    "accuracy",
    "macro_f1",
]


def _metrics(results: list[EvalResult]) -> list[str]:
    present = {m for r in results for m in r.metrics}
    return [m for m in ORDER if m in present]


def print_side_by_side(results: list[EvalResult], title: str = "Evaluation on the test split") -> None:
    table = Table(title=title)
    table.add_column("metric")
    for r in results:
        table.add_column(r.label, justify="right")
    if len(results) == 2:
        table.add_column("change", justify="right")
    for m in _metrics(results):
        row = [f"{r.metrics.get(m, float('nan')):.2f}" for r in results]
        if len(results) == 2:
            row.append(f"{results[1].metrics[m] - results[0].metrics[m]:+.2f}")
        table.add_row(m + (" (lower is better)" if m.endswith("perplexity") else ""), *row)
    console().print(table)
    for r in results:
        for w in r.warnings:
            console().print(f"[yellow]warning[/yellow]: {w}")


def markdown(results: list[EvalResult], header: str) -> str:
    """A Markdown report: overall side by side, then per group and the largest group gaps."""
    metrics = _metrics(results)
    lines = [
        f"# {header}",
        "",
        "| metric | " + " | ".join(r.label for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    lines += [
        f"| {m} | " + " | ".join(f"{r.metrics.get(m, float('nan')):.2f}" for r in results) + " |" for m in metrics
    ]
    for r in results:
        if not r.per_group:
            continue
        groups = sorted(r.per_group)
        lines += [
            "",
            f"## {r.label}: by group",
            "",
            "| metric | " + " | ".join(groups) + " | largest gap |",
            "|---|" + "---:|" * (len(groups) + 1),
        ]
        for m in [m for m in metrics if m in r.per_group[groups[0]]]:
            gap = r.gaps.get(m, {}).get("gap", 0.0)
            lines.append(f"| {m} | " + " | ".join(f"{r.per_group[g][m]:.2f}" for g in groups) + f" | {gap:.2f} |")
        lines += ["", *[f"> warning: {w}" for w in r.warnings]] if r.warnings else []
    return "\n".join(lines) + "\n"
