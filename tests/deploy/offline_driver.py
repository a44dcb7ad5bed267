"""Run on the target side of the offline test, inside a network namespace with only loopback:
install a bundle, start `enclave serve` on it, call it, stop it. Prints one JSON line of results.

    python offline_driver.py --bundle B --key K --repo R [--python VENV_PY] [--install-wheels]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--python", help="the target's interpreter; with --install-wheels it receives the bundle's wheels")
    ap.add_argument("--install-wheels", action="store_true")
    args = ap.parse_args()
    target_py = args.python or sys.executable
    installer = [
        sys.executable,
        "-m",
        "enclave",
        "bundle",
        "install",
        args.bundle,
        "--key",
        args.key,
        "--repo",
        args.repo,
    ]
    installer += ["--python", target_py] if args.install_wheels else ["--no-wheels"]
    install = subprocess.run(installer, capture_output=True, text=True, timeout=600)
    result = {"install_rc": install.returncode, "install_out": install.stdout, "install_err": install.stderr[-3000:]}
    if install.returncode == 0:
        result.update(serve_and_call(target_py, args.repo))
    print(json.dumps(result))
    return 0


def serve_and_call(python: str, repo: str) -> dict:
    cmd = [python, "-m", "enclave", "serve", "run", "--repo", repo, "--port", "0", "--metrics-port", "0", "threads=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: dict = {}
    try:
        line = proc.stdout.readline()
        out["listening"] = line.strip()
        if "listening on" not in line:
            proc.kill()
            out["serve_err"] = proc.stderr.read()[-3000:]
            return out
        port = int(line.split("listening on ")[1].split(",")[0].rsplit(":", 1)[1])
        from enclave.grpc_client import Client

        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            out["health"] = client.health()
            out["models"] = sorted(m.name for m in client.models().models)
            reply = client.generate("hello", max_tokens=4)
            out["completion_tokens"] = reply.usage.completion_tokens
        proc.send_signal(signal.SIGTERM)
        out["serve_rc"] = proc.wait(60)
        out["serve_err"] = proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    return out


if __name__ == "__main__":
    sys.exit(main())
