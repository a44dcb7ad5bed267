"""Recall of the PHI check (tune.data.phi) on the labelled sample shipped with the tests:
`python -m tests.tune.phi_recall` prints the table the README quotes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

SAMPLE = Path(__file__).parent / "data" / "phi_sample.jsonl"


def measure(path: Path = SAMPLE) -> dict:
    """Per labelled type: spans and how many a found span overlaps; spans found where none is
    labelled; PHI-free sentences flagged."""
    from tune.data.phi import find

    found, total, extra, flagged, clean = Counter(), Counter(), 0, 0, 0
    for line in path.read_text().splitlines():
        item = json.loads(line)
        spans = find(item["text"])
        labels = item["spans"]
        for label in labels:
            total[label["type"]] += 1
            found[label["type"]] += any(s.start < label["end"] and label["start"] < s.end for s in spans)
        extra += sum(not any(s.start < lab["end"] and lab["start"] < s.end for lab in labels) for s in spans)
        clean += not labels
        flagged += not labels and bool(spans)
    return {"found": found, "total": total, "extra": extra, "clean": clean, "clean_flagged": flagged}


def main() -> None:
    m = measure()
    print("| type | labelled | found | recall |\n|---|---:|---:|---:|")
    for kind, n in m["total"].most_common():
        print(f"| {kind} | {n} | {m['found'][kind]} | {m['found'][kind] / n:.0%} |")
    all_found, all_total = sum(m["found"].values()), sum(m["total"].values())
    print(f"| all | {all_total} | {all_found} | {all_found / all_total:.0%} |")
    print(f"\n{m['extra']} spans found outside the labels;", end=" ")
    print(f"{m['clean_flagged']} of {m['clean']} PHI-free sentences flagged")


if __name__ == "__main__":
    main()
