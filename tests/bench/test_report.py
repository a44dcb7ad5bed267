"""The benchmark arithmetic and the BENCHMARKS.md writer (no engine runs here)."""

from __future__ import annotations

import pytest

from tests.bench import quality_speed as qs
from tests.bench import report, workload
from tests.bench.engine import BARS as ENGINE_BARS
from tests.bench.http_api import BARS as HTTP_BARS


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
    md = (
        "# B\n\nprose stays\n\n<!-- generated:tune_speed -->\nold figures\n<!-- /generated:tune_speed -->\n\n"
        "more prose\n<!-- generated:header -->\n<!-- /generated:header -->\n"
    )
    sides = {
        "enclave": {"tokens_per_second": 300.0, "seconds": 10, "mean_loss": 1.5, "peak_rss_mb": 4096},
        "trainer": {"tokens_per_second": 150.0, "seconds": 20, "mean_loss": 1.6, "peak_rss_mb": 5120},
    }
    results = {
        "tune_speed": {
            "date": "2026-11-24",
            "recipe": "r.yaml",
            "steps": 8,
            "sides": sides,
            "bar": {"value": 2.0, "threshold": 1.0, "met": True},
        }
    }
    info = {"machine": report.machine(), "versions": {"torch": "2.13.0"}}
    out = report.render(md, results, info)
    assert "old figures" not in out and "prose stays" in out and "more prose" in out
    assert "| Enclave (`enclave tune`'s loop) | 300.0 |" in out and "2.00x (bar >= 1): **met**" in out
    assert "torch 2.13.0" in out and out.count("<!-- generated:tune_speed -->") == 1
    with pytest.raises(SystemExit, match="generated:header"):
        report.render("# no markers\n", results, info)


def load(one: float, eight: float) -> list[dict]:
    return [
        {"streams": n, "requests": 4, "tokens_per_second": t, "e2e_p50_s": 1.0, "e2e_p99_s": 1.2, "ttft_p50_s": 0.05}
        for n, t in ((1, one), (8, eight))
    ]


def engine(
    family: str, precision: str, ppl: float, decode: float, eight: float | None = None, ttft512: float = 0.5, **extra
) -> dict:
    e = {
        "family": family,
        "precision": precision,
        "perplexity": ppl,
        "weights": f"{precision} weights",
        "decode_tokens_per_second": decode,
        "itl_p50_ms": 8.0,
        "itl_p99_ms": 12.0,
        "ttft_128_s": 0.1,
        "ttft_512_s": ttft512,
        "bytes_per_token": 100e6,
        "peak_rss_mb": 500,
        **extra,
    }
    if eight is not None:
        e["load"] = load(decode * 0.9, eight)
    return e


def serving_result() -> dict:
    """fp32 at 20.0; Enclave int8 at 20.1; llama.cpp Q8_0 better (20.0), Q4_1 equal within 0.5%
    (20.15), Q4_0 worse (24.0)."""
    bench = {"pp512": 800.0, "pp512_stddev": 10.0, "tg128": 130.0, "tg128_stddev": 2.0}
    engines = {
        "enclave-onnx-int8": engine("Enclave", "int8", 20.1, 120.0, 400.0, ttft512=0.6),
        "enclave-onnx-int4": engine("Enclave", "int4", 24.5, 140.0, 380.0),
        "llama.cpp-Q4_0": engine("llama.cpp", "Q4_0", 24.0, 180.0, 350.0, ttft512=0.3, llama_bench=bench, slots=8),
        "llama.cpp-Q4_1": engine("llama.cpp", "Q4_1", 20.15, 100.0, 200.0, ttft512=0.9, llama_bench=bench, slots=8),
        "llama.cpp-Q8_0": engine("llama.cpp", "Q8_0", 20.0, 80.0, 250.0, ttft512=0.8, llama_bench=bench, slots=8),
        "llama.cpp-F32": {"family": "llama.cpp (check)", "precision": "F32", "perplexity": 20.01},
        "onnxruntime-genai": engine("onnxruntime-genai", "int4", 24.5, 160.0),
        "transformers": engine("transformers", "fp32", 20.0, 15.0),
    }
    build = {"llama_cpp_python": "0.3.36", "features": ["AVX", "AVX2", "FMA"], "native": False}
    return {
        "date": "2026-12-01",
        "threads": 2,
        "decode_tokens": 128,
        "bandwidth_gbps": 30.0,
        "reference_perplexity": 20.0,
        "equal_quality": qs.EQUAL_QUALITY,
        "llama_cpp_build": build,
        "engines": engines,
        "bars": qs.bars(engines, 20.0),
    }


def test_points_are_relative_to_fp32_and_skip_the_check_row():
    pts = qs.points(serving_result()["engines"], 20.0)
    assert [p.label for p in pts][:2] == ["Enclave int8", "Enclave int4"] and "llama.cpp F32" not in [
        p.label for p in pts
    ]
    q8 = next(p for p in pts if p.precision == "Q8_0")
    assert q8.relative == 0 and q8.single == 80.0 and q8.streams8 == 250.0
    assert next(p for p in pts if p.family == "transformers").streams8 is None  # not a server: left panel only
    assert next(p for p in pts if p.label == "Enclave int8").relative == pytest.approx(0.005)


def test_equal_or_better_quality_reading():
    pts = qs.points(serving_result()["engines"], 20.0)
    by = {c["point"].precision: c for c in qs.comparisons(pts)}
    int8 = by["int8"]
    assert [r["peer"].precision for r in int8["peers"]] == ["Q8_0", "Q4_1"]  # Q4_1 within 0.5%, Q4_0 worse
    assert [r["single"] for r in int8["peers"]] == pytest.approx([120 / 80, 120 / 100])
    assert [r["streams8"] for r in int8["peers"]] == pytest.approx([400 / 250, 400 / 200])
    assert int8["faster_single"] and int8["faster_streams8"]
    assert [r["peer"].precision for r in qs.comparisons(pts, tolerance=0)[0]["peers"]] == [
        "Q8_0"
    ]  # strict: Q4_1 is worse
    int4 = by["int4"]  # every llama.cpp point is at least as good; Q4_0 decodes faster
    assert len(int4["peers"]) == 3 and not int4["faster_single"] and int4["faster_streams8"]


def test_bars_take_the_best_llama_cpp_point_at_equal_quality():
    b = serving_result()["bars"]
    assert (
        b["decode_vs_llama_cpp"]["value"] == pytest.approx(1.2)
        and b["decode_vs_llama_cpp"]["against"] == "llama.cpp Q4_1"
    )
    assert (
        b["streams8_vs_llama_server"]["value"] == pytest.approx(1.6)
        and b["streams8_vs_llama_server"]["against"] == "llama.cpp Q8_0"
    )
    assert b["ttft512_vs_llama_cpp"]["value"] == pytest.approx(0.6 / 0.8) and not b["ttft512_vs_llama_cpp"]["met"]
    assert (b["streams8_vs_llama_server"]["threshold"], b["ttft512_vs_llama_cpp"]["threshold"]) == (2.0, 0.6)
    assert not b["streams8_vs_llama_server"]["met"]  # 1.6x: the bar is 2.0x since #18
    assert b["decode_vs_transformers"]["value"] == pytest.approx(8.0) and b["streams8_vs_own_single"][
        "value"
    ] == pytest.approx(400 / 108)
    engines = serving_result()["engines"]
    engines["enclave-onnx-int8"]["perplexity"] = 19.0  # better than every llama.cpp file: nothing to compare with
    none = qs.bars(engines, 20.0)["decode_vs_llama_cpp"]
    assert none["value"] is None and none["met"] is None
    assert "nothing to compare" in report.met(none, ">=")


def test_render_writes_the_quality_speed_and_serving_sections():
    md = (
        "<!-- generated:header -->\n<!-- /generated:header -->\n"
        "<!-- generated:serving -->\nold\n<!-- /generated:serving -->\n"
        "<!-- generated:quality_speed -->\nold\n<!-- /generated:quality_speed -->\n"
    )
    out = report.render(
        md, {"serving": serving_result()}, {"machine": report.machine(), "versions": {"torch": "2.13.0"}}
    )
    assert "old" not in out and "Python 3" in out and "; torch 2.13.0; llama.cpp from" in out
    assert (
        out.startswith("<!-- generated:header -->\nMachine: ")
        and "; llama.cpp from the llama-cpp-python 0.3.36 sdist (GGML_NATIVE off, " in out
    )
    assert "GGML_NATIVE off, for the CPU features this machine grants: AVX, AVX2, FMA)." in out
    assert (
        "| llama.cpp | Q4_1 | 20.15 | +0.7% | 100.0 | 200.0 |" in out
        and "| transformers | fp32 | 20.00 | +0.0% | 15.0 | - |" in out
    )
    assert (
        "Q8_0 (20.00): 1.50x single-stream, 1.60x at 8 streams; Q4_1 (20.15): 1.20x single-stream, 2.00x at 8 streams"
        in out
    )
    assert "**faster than each, in both**" in out and "**faster than each at 8 streams only**" in out
    assert "llama.cpp's F32 GGUF" in out and "scores 20.010 against transformers' 20.000" in out
    assert "| Q4_0 | 95 | 800.0 \u00b1 10.0 | 130.0 \u00b1 2.0 | 180.0 |" in out  # llama-bench table
    assert "1.20x against llama.cpp Q4_1 (bar >= 1): **met**" in out
    assert f"]({report.PLOT.as_posix()})" in out


def test_plot_writes_a_png(tmp_path):
    r = serving_result()
    path = qs.plot(qs.points(r["engines"], 20.0), tmp_path / "plots" / "q.png", "test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_render_writes_the_engine_section():
    bars = {
        k: {"what": what, "value": 0.5, "threshold": t, "higher": up, "met": (0.5 >= t) if up else (0.5 <= t)}
        for k, (what, t, up) in ENGINE_BARS.items()
    }
    arrival = {"median_ms": 30.0, "p99_ms": 90.0, "max_ms": 120.0, "gaps_during": 900, "ttft_s": 9.5}
    r = {
        "date": "2026-12-02",
        "threads": 2,
        "adapter": {"rank": 16, "targets": 7, "file_mb": 18.7},
        "base_1": 80.0,
        "adapter_1": 70.0,
        "torch_adapter_1": 6.0,
        "base_8": 220.0,
        "adapters_8": 160.0,
        "prefix": {"uncached_s": 1.4, "cached_s": 0.09},
        "arrival": arrival,
        "arrival_unchunked": {**arrival, "p99_ms": 6000.0, "max_ms": 6000.0, "ttft_s": 6.0},
        "rss_mb": {"no adapters": 1240.0, "10 adapters": 1490.0},
        "adapter_files_mb": 187.0,
        "bars": bars,
    }
    md = report.render(
        "<!-- generated:header -->\n<!-- /generated:header -->\n"
        "<!-- generated:engine -->\n<!-- /generated:engine -->\n",
        {"engine": r},
        {"machine": report.machine(), "versions": {}},
    )
    assert "rank 16 on all 7 projections, 18.7 MB" in md
    assert "| 1 stream with an adapter / 1 stream on the base | 0.50 | >= 0.85 | **missed** |" in md
    assert "| time to first token, 1,024-token prefix cached / not cached | 0.50 | <= 0.25 | **missed** |" in md
    assert "90 ms / 120 ms / 9.50 s" in md and "6000 ms / 6000 ms / 6.00 s" in md


def test_render_writes_the_http_api_section():
    bars = {
        k: {"what": what, "value": 0.95, "threshold": t, "higher": up, "met": True}
        for k, (what, t, up) in HTTP_BARS.items()
    }
    r = {
        "date": "2026-12-02",
        "threads": 2,
        "streams": 8,
        "requests": 24,
        "decode_tokens": 96,
        "grpc_8": 250.0,
        "http_8": 237.5,
        "runs": {"grpc": [240.0, 250.0], "http": [237.5, 230.0]},
        "bars": bars,
    }
    md = report.render(
        "<!-- generated:header -->\n<!-- /generated:header -->\n"
        "<!-- generated:http_api -->\n<!-- /generated:http_api -->\n",
        {"http_api": r},
        {"machine": report.machine(), "versions": {}},
    )
    assert "8 streams through the OpenAI HTTP API / through gRPC, tokens/s | 0.95 | >= 0.9 | met" in md
    assert "| OpenAI HTTP | 237.5 |" in md and "gRPC 240.0, 250.0" in md


def test_render_writes_the_structured_section():
    from tests.bench.structured import BARS

    bars = {k: {"what": w, "value": 0.93, "threshold": t, "higher": up, "met": True} for k, (w, t, up) in BARS.items()}
    r = {"date": "2026-12-02", "threads": 2, "tokens": 128, "streams": 8, "bars": bars}
    r.update({"free_1": 91.4, "json_1": 92.6, "free_8": 278.0, "json_8": 259.0})
    md = report.render(
        "<!-- generated:header -->\n<!-- /generated:header -->\n"
        "<!-- generated:structured -->\n<!-- /generated:structured -->\n",
        {"structured": r},
        {"machine": report.machine(), "versions": {}},
    )
    assert "| 8 streams, JSON-schema answers / free answers, tokens/s | 0.93 | >= 0.85 | met |" in md
    assert "| 8 streams, tokens/s | 278.0 | 259.0 |" in md
