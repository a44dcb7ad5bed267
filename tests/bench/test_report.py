"""The benchmark arithmetic and the BENCHMARKS.md writer (no engine runs here)."""

from __future__ import annotations

import pytest

from tests.bench import report, workload


def test_stream_stats_and_percentiles():
    s = workload.stream_stats([0.5, 0.6, 0.7, 1.0])
    assert s["ttft"] == 0.5 and s["e2e"] == 1.0 and s["tokens"] == 4
    assert s["decode_tps"] == pytest.approx(3 / 0.5)
    assert s["gaps"] == pytest.approx([0.1, 0.1, 0.3])
    assert workload.percentile([1, 2, 3, 4, 5], 50) == 3 and workload.percentile([1, 2], 99) == pytest.approx(1.99)
    row = workload.load_row(2, [[0.1, 0.2], [0.1, 0.3, 0.4]], wall=0.5)
    assert row["tokens"] == 5 and row["tokens_per_second"] == 10 and row["e2e_p50_s"] == pytest.approx(0.3)


def test_prompt_windows_have_the_asked_length():
    encode = lambda text: text.split()  # noqa: E731  (a word "tokenizer")
    decode = " ".join
    prompts = workload.windows(encode, decode, 16, 3)
    assert len(set(prompts)) == 3 and all(len(encode(p)) == 16 for p in prompts)


def test_render_rewrites_only_generated_sections():
    md = "# B\n\nprose stays\n\n<!-- generated:tune_speed -->\nold figures\n<!-- /generated:tune_speed -->\n\nmore prose\n<!-- generated:header -->\n<!-- /generated:header -->\n"
    sides = {"enclave": {"tokens_per_second": 300.0, "seconds": 10, "mean_loss": 1.5, "peak_rss_mb": 4096},
             "trainer": {"tokens_per_second": 150.0, "seconds": 20, "mean_loss": 1.6, "peak_rss_mb": 5120}}  # fmt: skip
    results = {"tune_speed": {"date": "2026-11-24", "recipe": "r.yaml", "steps": 8, "sides": sides, "bar": {"value": 2.0, "threshold": 1.0, "met": True}}}
    info = {"machine": report.machine(), "versions": {"torch": "2.13.0"}}
    out = report.render(md, results, info)
    assert "old figures" not in out and "prose stays" in out and "more prose" in out
    assert "| Enclave (`enclave tune`'s loop) | 300.0 |" in out and "2.00x (bar >= 1): **met**" in out
    assert "torch 2.13.0" in out and out.count("<!-- generated:tune_speed -->") == 1
    with pytest.raises(SystemExit, match="generated:header"):
        report.render("# no markers\n", results, info)
