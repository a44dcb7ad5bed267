"""The serving benchmark's workload and arithmetic, shared by every engine (stdlib only: the
llama.cpp peer imports it from its own environment).

Every engine gets the same requests, greedy: decode runs continue a short opening for exactly
``DECODE_TOKENS`` tokens (end-of-sequence banned: Enclave's ``min_tokens``, llama.cpp's
``ignore_eos``, transformers' ``min_new_tokens``), time-to-first-token runs send windows of the
held-out Apache licence text cut to 128 and 512 tokens and ask for one token. Different
windows per repetition, so no engine answers from a prompt cache. Single-stream figures are the
best of their repetitions (medians kept beside them in the JSON): this machine is shared, and
interference only ever slows a run down.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import time
from pathlib import Path

DECODE_TOKENS = 128
DECODE_REPEATS = 5  # single-stream decode requests; the best one counts (as timeit: others share the machine)
REPEATS = 3  # prompts per time-to-first-token length; the fastest counts
TTFT_LENGTHS = (128, 512)
STREAMS = (1, 4, 8, 16)
BANDWIDTH_GBPS = 30.0  # this machine's memory bandwidth, measured (../shared/STACK.md)
HELDOUT = Path(__file__).resolve().parents[2] / "enclave" / "texts" / "heldout_apache2.txt"

OPENINGS = [
    "The court granted the motion to dismiss because",
    "The patient was admitted to the ward with",
    "Under the terms of the lease, the tenant",
    "The nurse recorded the blood pressure and",
    "In the appeal, counsel for the defendant argued that",
    "The discharge summary notes that the patient",
    "The contract may be terminated by either party if",
    "After the surgery, the physician recommended",
    "The jury returned a verdict after",
    "The radiology report describes a small",
    "The witness testified that on the night of",
    "Her medication list includes",
    "The statute of limitations for this claim",
    "On examination, the abdomen was",
    "The judge instructed the jury to",
    "The laboratory results showed an elevated",
]


def windows(encode, decode, length: int, count: int) -> list[str]:
    """``count`` texts from the held-out file that ``encode`` turns into ``length`` tokens each."""
    ids = encode(HELDOUT.read_text())
    out, start = [], 0
    while len(out) < count:
        text = decode(ids[start : start + length])
        n = len(encode(text))
        if n != length:  # a cut inside a word can re-tokenize differently: trim to fit
            text = decode(encode(text)[:length])
        out.append(text)
        start += length
        if start + length > len(ids):
            start = 0
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stream_stats(arrivals: list[float]) -> dict:
    """One request's token arrival times (seconds after it was sent; one entry per token)."""
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    decode = (
        (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
        if len(arrivals) > 1 and arrivals[-1] > arrivals[0]
        else float("nan")
    )
    return {
        "tokens": len(arrivals),
        "ttft": arrivals[0] if arrivals else float("nan"),
        "e2e": arrivals[-1] if arrivals else float("nan"),
        "decode_tps": decode,
        "gaps": gaps,
    }


def single_stream(generate, encode, decode) -> dict:
    """Decode speed and inter-token latency (continuing openings) and TTFT at 128 and 512
    prompt tokens, with ``generate(prompt, max_tokens) -> arrival times``."""
    generate(OPENINGS[-1], 8)  # warm up
    runs = [stream_stats(generate(OPENINGS[i], DECODE_TOKENS)) for i in range(DECODE_REPEATS)]
    gaps = [g for r in runs for g in r["gaps"]]
    rates = [r["decode_tps"] for r in runs]
    out = {
        "decode_tokens_per_second": max(rates),
        "decode_tokens_per_second_median": statistics.median(rates),
        "tokens": [r["tokens"] for r in runs],
        "itl_p50_ms": percentile(gaps, 50) * 1000,
        "itl_p99_ms": percentile(gaps, 99) * 1000,
    }
    for length in TTFT_LENGTHS:
        times = [generate(p, 1)[0] for p in windows(encode, decode, length, REPEATS)]
        out[f"ttft_{length}_s"], out[f"ttft_{length}_s_median"] = min(times), statistics.median(times)
    return out


def load_row(streams: int, results: list[list[float]], wall: float) -> dict:
    """Aggregate figures of ``streams`` callers that each sent requests back to back."""
    stats = [stream_stats(r) for r in results]
    tokens = sum(s["tokens"] for s in stats)
    e2e = [s["e2e"] for s in stats]
    return {
        "streams": streams,
        "requests": len(stats),
        "tokens": tokens,
        "seconds": wall,
        "tokens_per_second": tokens / wall,
        "e2e_p50_s": percentile(e2e, 50),
        "e2e_p99_s": percentile(e2e, 99),
        "ttft_p50_s": percentile([s["ttft"] for s in stats], 50),
    }


def requests_for(streams: int) -> int:
    return max(4, 3 * streams)


def memory_mb(pid: int | str = "self") -> dict:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process, MB, from /proc. VmHWM,
    unlike ru_maxrss, does not carry the parent's peak over exec."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "peak_rss_mb": int(fields["VmHWM"].split()[0]) / 1024}


def peak_rss_mb() -> float:
    """This process's peak resident memory."""
    return memory_mb()["peak_rss_mb"]


def wait_for(check, what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll ``check()`` until it is true; fail early if the server ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def judged(spec: dict, values: dict) -> dict:
    """Each bar of ``spec`` (name: (what, threshold, higher is better)) with its value and whether it is met."""
    return {
        k: {
            "what": what,
            "value": values[k],
            "threshold": t,
            "higher": up,
            "met": values[k] >= t if up else values[k] <= t,
        }
        for k, (what, t, up) in spec.items()
    }


def print_bars(bars: dict) -> None:
    """One line per bar, for the person running the bench."""
    for b in bars.values():
        print(f"{b['what']}: {b['value']:.2f} (bar {b['threshold']}): {'met' if b['met'] else 'MISSED'}")


def serving_args(doc: str):
    """The command line of a bench module that serves one model: --model, --threads, --out."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    return parser.parse_args()


def conclude(out: Path, name: str, result: dict, spec: dict, values: dict) -> None:
    """Judge the bars of ``spec`` on ``values``, save ``result`` as OUT/NAME.json, print the bars."""
    from tests.bench.compress_quality import save

    result["bars"] = judged(spec, values)
    save(out, name, result)
    print_bars(result["bars"])
