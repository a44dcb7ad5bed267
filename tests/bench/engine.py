"""The onnxruntime engine's own bars (issue #18, BENCHMARKS.md "Adapters, prefix cache and chunked
prefill"): LoRA adapters served unmerged, the prefix cache, chunked prefill and adapter memory,
side by side in one run on SmolLM2-135M-Instruct's ONNX int8 export, through `enclave serve` and
gRPC as a client sees them.

The adapter is a real `enclave tune` run of the demo recipe (rank 16 on all seven projections,
one epoch); the other nine are copies with their B weights scaled, each its own adapter artifact
on the same base (speed and memory do not depend on the values). Every figure is a ratio of two
measurements made here, minutes apart, on the same server where the bar compares within one:

- one stream with an adapter / one stream on the base; / the torch backend with the same adapter;
- 8 concurrent streams over 4 adapters / 8 streams on the base;
- a 1,024-token shared prefix plus a 32-token question: time to first token with the prefix
  cached / with a prefix never seen before;
- 7 streams decoding while a 2,000-token prompt arrives: the p99 of their inter-token gaps that
  overlap its prefill (its sending to its first token) / their median without it (also with chunking off,
  ``scheduler.max_batched_tokens=4096``, to show what it prevents);
- the server's resident memory with 10 adapters loaded minus without / the adapters' file sizes.

Run: python -m tests.bench.engine [--threads 2] [--out bench-results]
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.bench.serving import enclave_server, export
from tests.bench.workload import OPENINGS, conclude, memory_mb, percentile, serving_args, stream_stats, windows

ROOT = Path(__file__).resolve().parents[2]
DECODE = 96  # tokens per decode request
BARS = {  # name: (what, threshold, higher is better)
    "adapter_1_vs_base": ("1 stream with an adapter / 1 stream on the base", 0.85, True),
    "adapter_1_vs_torch": ("1 stream with an adapter / the torch backend with the same adapter", 5.0, True),
    "adapters_8_vs_base": ("8 streams over 4 adapters / 8 streams on the base", 0.8, True),
    "prefix_ttft": ("time to first token, 1,024-token prefix cached / not cached", 0.25, False),
    "arrival_itl": ("p99 inter-token latency of 7 streams, 2,000 prompt tokens arriving / median without", 3.0, False),
    "adapter_memory": ("resident memory added by 10 adapters / their files' size", 1.5, False),
}


def adapters(model: str, work: Path, count: int) -> list[Path]:
    """One adapter from `enclave tune` (the demo recipe, one epoch) and ``count - 1`` scaled copies."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from enclave.manifest import create_artifact, read_manifest

    tuned = work / "adapters" / "bench-0"
    overrides = ["train.epochs=1", "train.eval_every=11", "eval.max_examples=48", f"output={tuned}", "name=bench-0"]
    cmd = [sys.executable, "-m", "enclave", "tune", "--config", "tune/recipes/clinical_legal.yaml", *overrides]
    subprocess.run([*cmd, "--restart"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    made, manifest = [tuned], read_manifest(tuned)
    tensors = load_file(str(tuned / "adapter_model.safetensors"))
    for i in range(1, count):
        name = f"bench-{i}"
        settings = {**manifest.settings, "bench_copy_of": manifest.name, "lora_B_scale": 1 + i / 10}
        with create_artifact(work / "adapters" / name, "adapter", name, manifest.parents, settings) as draft:
            for f in tuned.iterdir():
                if f.is_file() and f.name not in ("manifest.json", "adapter_model.safetensors"):
                    shutil.copy(f, draft.path / f.name)
            scaled = {k: v * np.float32(1 + i / 10) if "lora_B" in k else v for k, v in tensors.items()}
            save_file(scaled, str(draft.path / "adapter_model.safetensors"))
        made.append(work / "adapters" / name)
    return made


@contextlib.contextmanager
def server(repo: Path, loaded: list[str], threads: int, *overrides: str, model: str = "bench"):
    """`enclave serve` on ``repo`` with these adapters loaded for ``model``; yields (target, pid)."""
    cfg = repo.parent / "serve.yaml"
    cfg.write_text(json.dumps({"default_model": model, "adapters": {model: loaded} if loaded else {}}))  # YAML
    with enclave_server(repo, threads, *overrides, config=cfg) as running:
        yield running


def request(target: str, prompt: str, max_tokens: int, adapter: str = "", model: str = "bench") -> list[float]:
    """One streamed request; the arrival time of each token (seconds after sending)."""
    from enclave.grpc_client import Client

    with Client(target, timeout=600) as c:
        sent, arrivals = time.perf_counter(), []
        for piece in c.stream(prompt, model=model, adapter=adapter, max_tokens=max_tokens, min_tokens=max_tokens):
            arrivals += [time.perf_counter() - sent] * len(piece.token_ids)
        return arrivals


def single(target: str, sides: list[tuple[str, str]], repeats: int = 4) -> list[float]:
    """Single-stream decode tokens/s of each (model, adapter), requests alternating between them,
    the best of ``repeats`` each (the machine is shared: interference only slows a run down)."""
    for model, adapter in sides:
        request(target, OPENINGS[0], 4, adapter, model)
    best = [0.0] * len(sides)
    for i in range(repeats):
        for j, (model, adapter) in enumerate(sides):
            rate = stream_stats(request(target, OPENINGS[i], DECODE, adapter, model))["decode_tps"]
            best[j] = max(best[j], rate)
    return best


def streams(target: str, adapters_: list[str], requests: int = 24) -> float:
    """Tokens/s of len(adapters_) callers, caller i asking with adapters_[i] back to back."""
    n = len(adapters_)
    request(target, OPENINGS[0], 4)
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(n) as pool:
        results = list(
            pool.map(lambda i: request(target, OPENINGS[i % len(OPENINGS)], DECODE, adapters_[i % n]), range(requests))
        )
    return sum(len(r) for r in results) / (time.perf_counter() - started)


def prefix_ttft(target: str, texts: list[str], questions: list[str]) -> dict:
    """TTFT of prefix + question: prefixes never seen (uncached), and one prefix asked again (cached)."""
    uncached = [request(target, texts[1 + i] + q, 1)[0] for i, q in enumerate(questions)]
    request(target, texts[0] + questions[0], 1)  # the shared prefix goes into the cache
    cached = [request(target, texts[0] + q, 1)[0] for q in questions[1:]]
    return {"uncached_s": statistics.median(uncached), "cached_s": statistics.median(cached)}


def arrival(target: str, long_prompt: str, running: int = 7, tokens: int = 256) -> dict:
    """``running`` streams decode; once they run, ``long_prompt`` arrives. Their inter-token gaps
    without it (median), those that overlap its prefill (from its sending to its first token: p99
    and max), and the long prompt's time to first token."""

    def run(with_arrival: bool) -> tuple[list[list[float]], tuple[float, float] | None]:
        times: list[list[float]] = [[] for _ in range(running)]
        go = threading.Event()

        def stream(i: int) -> None:
            go.wait()
            sent = time.perf_counter()
            times[i] = [sent + t for t in request(target, OPENINGS[i], tokens)]

        workers = [threading.Thread(target=stream, args=(i,)) for i in range(running)]
        for w in workers:
            w.start()
        go.set()
        window = None
        if with_arrival:
            time.sleep(2.0)  # the streams are decoding
            sent = time.perf_counter()
            window = (sent, sent + request(target, long_prompt, 1)[0])
        for w in workers:
            w.join()
        return times, window

    quiet, _ = run(False)
    busy, (start, end) = run(True)
    during = [b - a for t in busy for a, b in zip(t, t[1:]) if a < end and b > start]  # overlapping it
    return {
        "median_ms": percentile([b - a for t in quiet for a, b in zip(t, t[1:])], 50) * 1000,
        "p99_ms": percentile(during, 99) * 1000,
        "max_ms": max(during) * 1000,
        "gaps_during": len(during),
        "ttft_s": end - start,
    }


def main() -> None:
    args = serving_args(__doc__)
    from transformers import AutoTokenizer

    from enclave.repository import Repository
    from enclave.store import resolve_model

    base = resolve_model(args.model).path
    r: dict = {"threads": args.threads, "decode_tokens": DECODE}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("engine bench: export int8, tune an adapter", flush=True)
        artifact = export(args.model, "int8", work)
        made = adapters(args.model, work, 10)
        names = [p.name for p in made]
        repo = Repository(work / "repo")
        repo.add(artifact, "bench", "1")
        repo.add(base, "torch", "1")
        for p in made:
            repo.add_adapter(p)
        r["adapter_files_mb"] = sum(f.stat().st_size for p in made for f in p.glob("*.safetensors")) / 2**20
        r["adapter"] = {"rank": 16, "targets": 7, "file_mb": r["adapter_files_mb"] / len(made)}
        tok = AutoTokenizer.from_pretrained(artifact, local_files_only=True)

        def encode(text):
            return tok(text, add_special_tokens=False)["input_ids"]

        prefixes, questions = windows(encode, tok.decode, 1024, 5), windows(encode, tok.decode, 32, 20)[10:14]
        long_prompt = windows(encode, tok.decode, 2000, 1)[0]

        print("engine bench: adapters, prefix cache", flush=True)
        with server(repo.root, names[:4], args.threads) as (target, _):
            r["base_1"], r["adapter_1"] = single(target, [("bench", ""), ("bench", names[0])])
            r["base_8"], r["adapters_8"] = streams(target, [""] * 8), streams(target, names[:4] * 2)
            r["prefix"] = prefix_ttft(target, prefixes, questions)
        print("engine bench: torch backend with the adapter", flush=True)
        with server(repo.root, names[:1], args.threads, model="torch") as (t, _):
            r["torch_adapter_1"] = single(t, [("torch", names[0])], repeats=2)[0]
        print("engine bench: a 2,000-token prompt arrives", flush=True)
        with server(repo.root, [], args.threads) as (target, _):
            r["arrival"] = arrival(target, long_prompt)
        unchunked = ("scheduler.max_batched_tokens=4096", "scheduler.prefill_stall=0")
        with server(repo.root, [], args.threads, *unchunked) as (target, _):
            r["arrival_unchunked"] = arrival(target, long_prompt)
        print("engine bench: memory of 10 adapters", flush=True)
        rss = {}
        for loaded in ([], names):
            with server(repo.root, loaded, args.threads) as (target, pid):
                for name in ["", *loaded]:
                    request(target, OPENINGS[0], 8, name)
                rss[len(loaded)] = memory_mb(pid)["rss_mb"]
        r["rss_mb"] = {"no adapters": rss[0], "10 adapters": rss[10]}
    values = {
        "adapter_1_vs_base": r["adapter_1"] / r["base_1"],
        "adapter_1_vs_torch": r["adapter_1"] / r["torch_adapter_1"],
        "adapters_8_vs_base": r["adapters_8"] / r["base_8"],
        "prefix_ttft": r["prefix"]["cached_s"] / r["prefix"]["uncached_s"],
        "arrival_itl": r["arrival"]["p99_ms"] / r["arrival"]["median_ms"],
        "adapter_memory": (rss[10] - rss[0]) / r["adapter_files_mb"],
    }
    conclude(args.out, "engine", r, BARS, values)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
