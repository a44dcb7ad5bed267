"""Crash safety: kill -9 at random moments during tune, compress and bundle install (at least 10
kills). After every kill nothing partial is visible under a final name (whatever exists there
verifies); `--resume` / a rerun then finishes, and `enclave verify` passes on everything left."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import fact_rows, write_jsonl
from tests.reliability.conftest import profile
from tests.tune.conftest import tiny_overrides

pytestmark = pytest.mark.reliability

KILLS = profile({"tune": 4, "compress": 3, "install": 7}, {"tune": 10, "compress": 10, "install": 10})


def enclave(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "enclave", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def kill_at_random(cmd: list[str], env: dict, rng: random.Random, within: tuple[float, float]) -> float:
    """Start a command, kill -9 it after a random delay; the delay (or -1 if it finished first)."""
    proc = enclave(*cmd, env=env)
    delay = rng.uniform(*within)
    try:
        proc.wait(delay)
        return -1.0
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return delay


def verified(path: Path) -> bool:
    from enclave.manifest import verify

    _, problems = verify(path)
    return not problems


def test_kill_9_during_tune_compress_and_install_leaves_nothing_partial(tmp_path, tiny_checkpoint, record):
    rng = random.Random(3)
    env = {**os.environ, "ENCLAVE_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    from enclave.manifest import verify

    kills, finished_first = [], 0
    # --- tune, killed, then resumed -----------------------------------------------------
    data = write_jsonl(tmp_path / "facts.jsonl", fact_rows())
    recipe = tiny_overrides(
        tiny_checkpoint,
        data,
        name="crash",
        **{"train.max_steps": 60, "train.checkpoint_every": 2, "train.eval_every": 4},
    )
    adapter = tmp_path / "home" / "adapters" / "crash"
    for i in range(KILLS["tune"]):
        fresh = i == 0 or adapter.exists()
        if adapter.exists():  # the last round finished before its kill: start this one over
            subprocess.run(["rm", "-rf", str(adapter)], check=True)
        delay = kill_at_random(["tune", "run", "--restart" if fresh else "--resume", *recipe], env, rng, (2.0, 6.0))
        kills.append(("tune", round(delay, 2)))
        finished_first += delay < 0
        assert not adapter.exists() or verified(adapter), "a partial adapter under its final name"
    if not adapter.exists():
        done = subprocess.run(
            [sys.executable, "-m", "enclave", "tune", "run", "--resume", *recipe],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert verified(adapter)
    # --- compress (prune with calibration), killed, then run again ---------------------------
    out = tmp_path / "pruned"
    prune = [
        "compress",
        "prune",
        "--model",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--algorithm",
        "sparsegpt",
        "calibration.source=builtin:clinical_legal",
        "calibration.samples=8",
        "calibration.seq_len=32",
        "--overwrite",
    ]
    for _ in range(KILLS["compress"]):
        delay = kill_at_random(prune, env, rng, (1.0, 4.0))
        kills.append(("compress", round(delay, 2)))
        finished_first += delay < 0
        assert not out.exists() or verified(out), "a partial artifact under its final name"
    done = subprocess.run([sys.executable, "-m", "enclave", *prune], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert verified(out)
    # --- bundle install, killed, then run again ---------------------------------------------
    keys, bundle, repo = tmp_path / "keys" / "k", tmp_path / "b.tar", tmp_path / "repo"
    for cmd in (
        ["bundle", "keygen", str(keys)],
        ["bundle", "create", str(bundle), "--key", f"{keys}.key", "--model", f"crash@1={out}"],
    ):
        made = subprocess.run([sys.executable, "-m", "enclave", *cmd], env=env, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr[-2000:]
    install = ["bundle", "install", str(bundle), "--key", f"{keys}.pub", "--repo", str(repo), "--no-wheels"]
    final = repo / "models" / "crash" / "1"
    for _ in range(KILLS["install"]):
        delay = kill_at_random(install, env, rng, (0.02, 0.25))
        kills.append(("install", round(delay, 2)))
        finished_first += delay < 0
        assert not final.exists() or verified(final), "a partial model under its final name"
        if final.exists():  # it got there before the kill: start the next round from nothing
            subprocess.run(["rm", "-rf", str(repo)], check=True)
    done = subprocess.run([sys.executable, "-m", "enclave", *install], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    left = [adapter, out, final]
    problems = {str(p): verify(p)[1] for p in left}
    record(
        {
            "kills": kills,
            "killed": sum(1 for _, d in kills if d >= 0),
            "finished_before_the_kill": finished_first,
            "verified_after": {k: not v for k, v in problems.items()},
        }
    )
    assert not any(problems.values()), problems
    assert sum(1 for _, d in kills if d >= 0) >= 10
