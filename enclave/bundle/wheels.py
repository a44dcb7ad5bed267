"""The wheels that install `enclave-llm[serve]` on a machine with no index: fetched with
`pip download` on the creating machine, pinned by hash in wheels/requirements.txt, installed with
`pip install --no-index --find-links --require-hashes` on the target."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import enclave
from enclave import __version__
from enclave.bundle.layout import Wheels
from enclave.errors import EnclaveError
from enclave.manifest import sha256_file

EXTRAS = "serve"
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def source_tree() -> Path | None:
    """The checkout Enclave runs from, when it was installed from one (pip install -e .)."""
    root = Path(enclave.__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "enclave").is_dir() else None


_INDEX_FIX = "check that the package index is reachable from this machine, or leave out --wheels"


def _pip(args: list[str], what: str, fix: str = _INDEX_FIX, python: str = sys.executable) -> None:
    """Run pip; a failure is an EnclaveError with pip's last lines."""
    done = subprocess.run(
        [python, "-m", "pip", "--disable-pip-version-check", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-8:])
        raise EnclaveError(f"{what} failed (pip exited {done.returncode}):\n{tail}", fix=fix)


def download(
    dest: Path, python_version: str | None, platform: str | None, enclave_wheel: Path | None, extras: str = EXTRAS
) -> Wheels:
    """Fill ``dest`` with the enclave-llm wheel and every wheel `enclave-llm[EXTRAS]` needs; write requirements.txt."""
    dest.mkdir(parents=True, exist_ok=True)
    root = source_tree()
    if enclave_wheel is None:
        if root is None:
            raise EnclaveError(
                "--wheels needs the enclave-llm wheel: this Enclave was not installed from a checkout",
                fix="pass --enclave-wheel PATH (the .whl you installed from)",
            )
        _pip(["wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(root)], "building the enclave-llm wheel")
        enclave_wheel = next(dest.glob("enclave_llm-*.whl"))
    args = ["download", "--quiet", "--dest", str(dest), "--only-binary=:all:"]
    if python_version:
        args += ["--python-version", python_version, "--implementation", "cp"]
    if platform:
        args += ["--platform", platform]
    if root is not None and (root / "constraints.txt").is_file():
        args += ["-c", str(root / "constraints.txt")]
    _pip([*args, f"{Path(enclave_wheel).resolve()}[{extras}]"], f"pip download enclave-llm[{extras}]")
    count = write_requirements(dest, extras)
    return Wheels(
        requirement=f"enclave-llm[{extras}]=={__version__}",
        python_version=python_version or f"{sys.version_info[0]}.{sys.version_info[1]}",
        platform=platform or "this machine's",
        count=count,
    )


def write_requirements(folder: Path, extras: str = EXTRAS) -> int:
    """requirements.txt: one `name==version --hash=sha256:...` line per wheel; returns the count."""
    lines = []
    for wheel in sorted(folder.glob("*.whl")):
        m = _WHEEL.match(wheel.name)
        if not m:
            raise EnclaveError(
                f"{wheel.name}: not a wheel file name pip understands", fix="remove it from the wheels folder"
            )
        digest = sha256_file(wheel)
        name = "enclave-llm" if m["name"] == "enclave_llm" else m["name"]
        extra = f"[{extras}]" if name == "enclave-llm" else ""
        lines.append(f"{name}{extra}=={m['version']} --hash=sha256:{digest}")
    (folder / "requirements.txt").write_text("\n".join(lines) + "\n")
    return len(lines)


def install(folder: Path, python: str) -> None:
    """Install the bundle's wheels with no index: only these files, each checked against its hash."""
    _pip(
        [
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(folder),
            "--require-hashes",
            "-r",
            str(folder / "requirements.txt"),
        ],
        f"installing the bundle's wheels into {python}",
        python=python,
        fix="the wheels must match the target's Python and platform: "
        "recreate the bundle with --python-version and --platform for this machine",
    )
