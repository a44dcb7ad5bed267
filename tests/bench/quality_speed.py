"""Quality against speed: one point per engine and precision (perplexity relative to fp32,
single-stream decode tokens/s, 8-stream tokens/s), the "faster at equal or better quality"
reading, and the plot. Pure arithmetic apart from ``plot`` (matplotlib, imported there).

A serving result's engines each carry ``family`` (Enclave, llama.cpp, onnxruntime-genai,
transformers), ``precision``, ``perplexity``, ``decode_tokens_per_second`` and, for servers,
``load`` rows (tokens/s at 1, 4, 8, 16 streams).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ENCLAVE, LLAMA = "Enclave", "llama.cpp"
FAMILIES = (ENCLAVE, LLAMA, "onnxruntime-genai", "transformers")
# Perplexities within this fraction of each other count as equal quality. The evaluation is
# deterministic, so this is not noise: it makes the reading conservative, since a llama.cpp file
# a hair worse than Enclave's still joins the set Enclave has to beat.
EQUAL_QUALITY = 0.005


@dataclass(frozen=True)
class Point:
    family: str
    precision: str
    perplexity: float
    relative: float  # perplexity / fp32's - 1
    single: float | None  # single-stream decode tokens/s
    streams8: float | None  # tokens/s of all 8 streams together
    ttft512: float | None = None  # seconds to the first token of a 512-token prompt

    @property
    def label(self) -> str:
        return f"{self.family} {self.precision}"


def streams_rate(engine: dict, streams: int = 8) -> float | None:
    return next((row["tokens_per_second"] for row in engine.get("load", []) if row["streams"] == streams), None)


def points(engines: dict, reference: float) -> list[Point]:
    """Every engine of a plotted family with a perplexity, relative to the ``reference`` (fp32) one."""
    out = []
    for e in engines.values():
        if e.get("family") not in FAMILIES or e.get("perplexity") is None:
            continue
        out.append(
            Point(
                e["family"],
                e["precision"],
                e["perplexity"],
                e["perplexity"] / reference - 1,
                e.get("decode_tokens_per_second"),
                streams_rate(e),
                e.get("ttft_512_s"),
            )
        )
    return sorted(out, key=lambda p: (FAMILIES.index(p.family), p.relative))


def at_least_as_good(peer: Point, point: Point, tolerance: float = EQUAL_QUALITY) -> bool:
    """Is ``peer``'s quality equal to (within ``tolerance``) or better than ``point``'s?"""
    return peer.perplexity <= point.perplexity * (1 + tolerance)


def comparisons(pts: list[Point], tolerance: float = EQUAL_QUALITY) -> list[dict]:
    """For each Enclave point, the llama.cpp points at equal or better quality and Enclave's speed
    ratio against each (single stream, 8 streams; above 1 means Enclave is faster)."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    out = []
    for e in (p for p in pts if p.family == ENCLAVE):
        peers = [p for p in pts if p.family == LLAMA and at_least_as_good(p, e, tolerance)]
        rows = [
            {"peer": p, "single": ratio(e.single, p.single), "streams8": ratio(e.streams8, p.streams8)} for p in peers
        ]
        out.append(
            {
                "point": e,
                "peers": rows,
                "faster_single": bool(rows) and all(r["single"] is not None and r["single"] >= 1 for r in rows),
                "faster_streams8": bool(rows) and all(r["streams8"] is not None and r["streams8"] >= 1 for r in rows),
            }
        )
    return out


def best_at_quality(
    pts: list[Point], point: Point, attribute: str, lower_is_better: bool = False, tolerance: float = EQUAL_QUALITY
) -> Point | None:
    """The llama.cpp point at ``point``'s quality or better that does best on ``attribute``."""
    peers = [
        p
        for p in pts
        if p.family == LLAMA and at_least_as_good(p, point, tolerance) and getattr(p, attribute) is not None
    ]
    if not peers:
        return None
    return (min if lower_is_better else max)(peers, key=lambda p: getattr(p, attribute))


AT_QUALITY = "the fastest llama.cpp quantization at equal or better perplexity"
BARS = {  # name: (what, threshold, higher is better)
    "decode_vs_llama_cpp": (f"single-stream decode, Enclave int8 / {AT_QUALITY} (llama-server)", 1.0, True),
    "decode_vs_transformers": ("single-stream decode, Enclave int8 / transformers generate", 5.0, True),
    "streams8_vs_own_single": ("8 streams aggregate / Enclave's 1 stream (int8)", 3.0, True),
    "streams8_vs_llama_server": (
        f"8 streams aggregate, Enclave int8 / {AT_QUALITY} (llama-server, 8 slots)",
        2.0,  # issue #18 (1.0 before): batched prefill, prefix cache, logits only where sampled
        True,
    ),
    "ttft512_vs_llama_cpp": (f"time to first token at 512 prompt tokens, Enclave int8 / {AT_QUALITY}", 0.6, False),
}


def bars(engines: dict, reference: float, tolerance: float = EQUAL_QUALITY) -> dict:
    """The serving bars. Against llama.cpp, each compares Enclave int8 with the llama.cpp
    quantization that does best on that measure among those at equal or better perplexity;
    ``value`` None means no llama.cpp choice reaches int8's quality."""
    pts = points(engines, reference)
    e8 = next(p for p in pts if p.family == ENCLAVE and p.precision == "int8")
    own = {row["streams"]: row["tokens_per_second"] for row in engines["enclave-onnx-int8"]["load"]}
    values: dict[str, tuple[float | None, str | None]] = {
        "decode_vs_transformers": (
            e8.single / engines["transformers"]["decode_tokens_per_second"],
            "transformers fp32",
        ),
        "streams8_vs_own_single": (own[8] / own[1], None),
    }
    for name, attr, lower in (
        ("decode_vs_llama_cpp", "single", False),
        ("streams8_vs_llama_server", "streams8", False),
        ("ttft512_vs_llama_cpp", "ttft512", True),
    ):
        peer = best_at_quality(pts, e8, attr, lower_is_better=lower, tolerance=tolerance)
        values[name] = (getattr(e8, attr) / getattr(peer, attr), peer.label) if peer else (None, None)
    out = {}
    for k, (what, threshold, higher) in BARS.items():
        v, against = values[k]
        out[k] = {
            "value": v,
            "threshold": threshold,
            "met": None if v is None else (v >= threshold if higher else v <= threshold),
            "what": what,
            "against": against,
        }
    return out


STYLE = {
    ENCLAVE: ("tab:red", "o"),
    LLAMA: ("tab:blue", "s"),
    "onnxruntime-genai": ("tab:green", "^"),
    "transformers": ("tab:gray", "D"),
}


def plot(pts: list[Point], path: Path, title: str = "") -> Path:
    """Two panels, perplexity relative to fp32 (%) against single-stream decode and against
    8-stream tokens/s; lower right is better. Written as a PNG without a timestamp."""
    from matplotlib.figure import Figure  # no pyplot: no display backend, no global state

    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, attr, xlabel in (
        (axes[0], "single", "single-stream decode, tokens/s"),
        (axes[1], "streams8", "8 streams, tokens/s (all streams; servers only)"),
    ):
        for family in FAMILIES:
            shown = [p for p in pts if p.family == family and getattr(p, attr) is not None]
            if not shown:
                continue
            color, marker = STYLE[family]
            ax.scatter(
                [getattr(p, attr) for p in shown],
                [p.relative * 100 for p in shown],
                c=color,
                marker=marker,
                s=46,
                label=family,
                zorder=3,
            )
            for p in shown:
                ax.annotate(
                    p.precision,
                    (getattr(p, attr), p.relative * 100),
                    textcoords="offset points",
                    xytext=(5, 4),
                    fontsize=8,
                    color=color,
                )
        ax.set_xlabel(xlabel + "  (better \u2192)")
        ax.margins(x=0.1, y=0.08)
        ax.grid(True, alpha=0.3, zorder=0)
        ax.axhline(0, color="black", linewidth=0.6)
    axes[0].set_ylabel("perplexity vs fp32, %  (\u2193 better)")
    axes[0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    return path
