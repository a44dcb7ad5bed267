"""tests/bench/build-llama.sh's CPU feature detection (no llama.cpp build here: `--dest` only
probes and prints the cache directory)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64" or not shutil.which("cc"), reason="x86-64 with a C compiler only"
)

# GGML option (as the directory names it) -> the /proc/cpuinfo flags it needs, and the probe run
OPTIONS = {
    "sse42": (["sse4_2"], "sse4_2"),
    "avx": (["avx"], "avx"),
    "f16c": (["f16c"], "f16c"),
    "fma": (["fma"], "fma"),
    "avx2": (["avx2"], "avx2"),
    "bmi2": (["bmi2"], "bmi2"),
    "avx_vnni": (["avx_vnni"], "avx_vnni"),
    "avx512": (["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"], "avx512bw"),
    "avx512_vbmi": (["avx512vbmi"], "avx512vbmi"),
    "avx512_vnni": (["avx512_vnni"], "avx512_vnni"),
    "avx512_bf16": (["avx512_bf16"], "avx512_bf16"),
    "amx_tile": (["amx_tile"], "amx_tile"),
    "amx_int8": (["amx_int8"], "amx_int8"),
    "amx_bf16": (["amx_bf16"], "amx_bf16"),
}


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "cpu_probe"
    subprocess.run(["cc", "-O1", "-o", str(out), str(HERE / "cpu_probe.c")], check=True)
    return out


def granted(probe: Path, name: str) -> bool:
    return subprocess.run([str(probe), name], capture_output=True).returncode == 0


def test_the_build_directory_names_exactly_the_features_that_run(probe, tmp_path):
    dest = subprocess.run(
        [str(HERE / "build-llama.sh"), "--dest", "0.3.36", str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    name = Path(dest).name
    assert name.startswith("llama.cpp-0.3.36-x86_64-")
    chosen = set(name.removeprefix("llama.cpp-0.3.36-x86_64-").split("-")) - {"baseline"}
    assert chosen <= set(OPTIONS), chosen
    flags = set(
        next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        .split(":", 1)[1]
        .split()
    )
    for option, (needs, name_) in OPTIONS.items():
        runs = set(needs) <= flags and granted(probe, name_)
        if option.startswith("avx512_") or option == "amx_tile":
            runs = runs and "avx512" in chosen
        if option in ("amx_int8", "amx_bf16"):
            runs = runs and "amx_tile" in chosen
        assert (option in chosen) == runs, (
            f"{option}: listed {set(needs) <= flags}, probe {granted(probe, name_)}, chosen {option in chosen}"
        )
    assert not list(tmp_path.iterdir())  # --dest builds nothing


def test_the_probe_refuses_unknown_features(probe):
    assert subprocess.run([str(probe), "not-a-flag"], capture_output=True).returncode == 2
