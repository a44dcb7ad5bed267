"""The data report as a table, for `enclave tune check-data` and the start of every run."""

from __future__ import annotations

from rich.table import Table

from enclave.ui import console


def print_report(report: dict, title: str = "Data report") -> None:
    """Print counts, drops, token lengths (a text histogram) and groups per split."""
    con = console()
    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("records loaded", str(report["loaded"]))
    for reason, n in report["dropped"].items():
        where = ", ".join(report["dropped_examples"].get(reason, [])[:3])
        t.add_row(f"dropped: {reason.replace('_', ' ')}", f"{n}" + (f"  (e.g. {where})" if n else ""))
    t.add_row("kept per split", ", ".join(f"{k} {v}" for k, v in report["splits"].items()))
    tok = report["tokens"]
    t.add_row(
        "tokens per example", f"min {tok['min']}, median {tok['median']:.0f}, max {tok['max']}, total {tok['total']:,}"
    )
    for split, groups in report["groups"].items():
        if groups:
            t.add_row(f"groups in {split}", ", ".join(f"{g} {n}" for g, n in sorted(groups.items())))
    con.print(t)
    counts, edges = tok["histogram"]["counts"], tok["histogram"]["edges"]
    if counts:
        peak = max(counts)
        con.print("token length histogram")
        for i, c in enumerate(counts):
            con.print(f"  {edges[i]:>7.0f}-{edges[i + 1]:<7.0f} {'#' * max(1 if c else 0, round(40 * c / peak))} {c}")
