"""A serving machine without torch, transformers or PEFT (`pip install enclave-llm[serve]`)
serves ONNX artifacts: the server runs in a process where importing them fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from enclave.repository import Repository

BLOCK = textwrap.dedent("""
    import sys, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers", "peft", "accelerate", "vllm", "onnxruntime_genai"):
                raise ImportError(f"{name} is not installed on this serving machine")
    sys.meta_path.insert(0, Block())
""")


def test_onnx_artifact_is_served_without_torch(serve_repo, tmp_path):
    repo = Repository(tmp_path / "repo")
    repo.add(serve_repo / "models" / "tiny-onnx" / "1", "tiny-onnx", "1")
    script = BLOCK + textwrap.dedent(f"""
        import asyncio
        from serve.config import ServeConfig
        from serve.server import Server
        from enclave.grpc_client import Client

        async def main():
            server = Server(ServeConfig(repo={str(repo.root)!r}, port=0, metrics_port=None))
            await server.start()
            def call():
                with Client(f"127.0.0.1:{{server.port}}") as c:
                    return c.generate([{{"role": "user", "content": "What is a writ?"}}], max_tokens=5)
            reply = await asyncio.to_thread(call)
            await server.stop(1)
            print(reply.usage.completion_tokens, reply.model, "torch" in sys.modules)
        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["5", "tiny-onnx", "False"]
