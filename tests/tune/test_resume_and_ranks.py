"""The two promises that need real processes: resume after kill -9, and N ranks = 1 rank."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from enclave.manifest import verify
from tests.tune.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def enclave(*args, home, **kw):
    env = {**os.environ, "ENCLAVE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def finish(proc) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def weights(home, name):
    return load_file(home / "adapters" / name / "adapter_model.safetensors")


def test_resume_after_kill_9_ends_with_the_same_adapter(enclave_home, tiny_checkpoint, facts_file):
    # Dropout on, so the restored RNG state matters too.
    extra = {"train.max_steps": 120, "train.checkpoint_every": 5, "train.eval_every": 10, "lora.dropout": 0.1}
    finish(
        enclave(
            "-m",
            "enclave",
            "tune",
            *tiny_overrides(tiny_checkpoint, facts_file, name="straight", **extra),
            home=enclave_home,
        )
    )

    args = ["-m", "enclave", "tune", *tiny_overrides(tiny_checkpoint, facts_file, name="killed", **extra)]
    proc = enclave(*args, home=enclave_home)
    ckpts = enclave_home / "runs" / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (ckpts.is_dir() and any(p.name >= "step-0000030" for p in ckpts.glob("step-*"))):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (enclave_home / "adapters" / "killed").exists()  # no partial artifact

    out = finish(enclave(*args, "--resume", home=enclave_home))
    assert "resumed from step-" in out
    assert verify(enclave_home / "adapters" / "killed")[1] == []
    a, b = weights(enclave_home, "straight"), weights(enclave_home, "killed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_two_ranks_equal_one_rank_with_the_same_global_batch(enclave_home, tiny_checkpoint, facts_file):
    extra = {"train.max_steps": 8, "lora.dropout": 0.0, "train.batch_size": 8}
    finish(
        enclave(
            "-m",
            "enclave",
            "tune",
            *tiny_overrides(tiny_checkpoint, facts_file, name="one", **extra),
            home=enclave_home,
        )
    )
    out = finish(
        enclave(
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "enclave",
            "tune",
            *tiny_overrides(tiny_checkpoint, facts_file, name="two", **extra),
            home=enclave_home,
        )
    )
    assert "(2 rank(s))" in out
    a, b = weights(enclave_home, "one"), weights(enclave_home, "two")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
