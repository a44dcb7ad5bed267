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
    if any(report.get("preference", {}).values()):
        t.add_row("of them preference pairs", ", ".join(f"{k} {v}" for k, v in report["preference"].items()))
    tok = report["tokens"]
    t.add_row(
        "tokens per example", f"min {tok['min']}, median {tok['median']:.0f}, max {tok['max']}, total {tok['total']:,}"
    )
    for split, groups in report["groups"].items():
        if groups:
            t.add_row(f"groups in {split}", ", ".join(f"{g} {n}" for g, n in sorted(groups.items())))
    con.print(t)
    drops = report.get("dropped_records", [])
    if drops:
        more = sum(report["dropped"].values()) - len(drops)
        con.print(f"dropped records ({sum(report['dropped'].values())})")
        for line in drops:
            con.print(f"  {line}", markup=False, highlight=False)
        if more > 0:
            con.print(f"  ... and {more} more")
    counts, edges = tok["histogram"]["counts"], tok["histogram"]["edges"]
    if counts:
        peak = max(counts)
        con.print("token length histogram")
        for i, c in enumerate(counts):
            con.print(f"  {edges[i]:>7.0f}-{edges[i + 1]:<7.0f} {'#' * max(1 if c else 0, round(40 * c / peak))} {c}")


def print_phi(report, shown: int = 8) -> None:
    """Personal data found per type: how many spans, in which records (file and line)."""
    from tune.data.clean import _source_key

    con = console()
    if not report.counts:
        con.print("personal data (PHI): none found")
        return
    t = Table(title=f"Personal data (PHI) found in {report.records} record(s): review them, or --redact OUT")
    t.add_column("type")
    t.add_column("spans", justify="right")
    t.add_column("records")
    for kind, n in report.counts.most_common():
        by_file: dict[str, list[str]] = {}
        for source in sorted(report.lines[kind], key=_source_key):
            name, _, line = source.rpartition(":")
            by_file.setdefault(name, []).append(line)
        cells = []
        for name, lines in by_file.items():
            more = f" and {len(lines) - shown} more" if len(lines) > shown else ""
            cells.append(f"{name} line{'s' if len(lines) > 1 else ''} {', '.join(lines[:shown])}{more}")
        t.add_row(kind, str(n), "; ".join(cells))
    con.print(t)
    con.print("found by philter-lite; a check, not a guarantee (recall on a labelled sample: README, Data)")
