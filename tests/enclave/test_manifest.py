import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from enclave.errors import EnclaveError, IntegrityError
from enclave.manifest import (
    Manifest, content_digest, create_artifact, json_schema, read_manifest, require_valid, sha256_file, update_metrics, verify,
)  # fmt: skip

SCHEMA = Path(__file__).parents[2] / "enclave" / "schema" / "manifest.schema.json"


def make(root: Path, name: str = "a", **kw) -> Path:
    final = root / name
    with create_artifact(final, "adapter", name, settings={"r": 8}, **kw) as draft:
        (draft.path / "weights.safetensors").write_bytes(b"\x00" * 1000)
        (draft.path / "sub").mkdir()
        (draft.path / "sub" / "config.json").write_text('{"a": 1}')
        draft.metrics["loss"] = 0.5
    return final


def test_round_trip(tmp_path):
    art = make(tmp_path)
    m = read_manifest(art)
    assert m.kind == "adapter" and m.name == "a" and m.settings == {"r": 8} and m.metrics == {"loss": 0.5}
    assert [(f.path, f.size) for f in m.files] == [("sub/config.json", 8), ("weights.safetensors", 1000)]
    assert m.files[1].sha256 == "541b3e9daa09b20bf85fa273e5cbd3e80185aa4ec298e765db87742b70138a53"
    assert m.digest == content_digest(list(m.files))
    assert Manifest.model_validate(json.loads((art / "manifest.json").read_text())) == m
    assert verify(art)[1] == []


def test_parents_record_lineage(tmp_path):
    parent = read_manifest(make(tmp_path, "base"))
    with create_artifact(tmp_path / "child", "merged", "child", parents=[parent.as_parent("base")]) as d:
        (d.path / "x").write_text("x")
    child = read_manifest(tmp_path / "child")
    assert child.parents[0].digest == parent.digest and child.parents[0].role == "base"


def test_update_metrics_keeps_digest_and_verifies(tmp_path):
    art = make(tmp_path)
    before = read_manifest(art).digest
    update_metrics(art, {"perplexity": 7.5})
    m = require_valid(art)
    assert m.metrics == {"loss": 0.5, "perplexity": 7.5} and m.digest == before


def test_changed_byte_is_named(tmp_path):
    art = make(tmp_path)
    data = bytearray((art / "weights.safetensors").read_bytes())
    data[500] ^= 1
    (art / "weights.safetensors").write_bytes(bytes(data))
    _, problems = verify(art)
    assert problems == ["weights.safetensors: sha256 differs from the manifest (file changed)"]
    with pytest.raises(IntegrityError, match="weights.safetensors"):
        require_valid(art)


def test_missing_and_extra_files_are_named(tmp_path):
    art = make(tmp_path)
    (art / "sub" / "config.json").unlink()
    (art / "evil.pkl").write_bytes(b"x")
    _, problems = verify(art)
    assert problems == ["sub/config.json: missing", "evil.pkl: not listed in the manifest"]


def test_truncated_file_reports_size(tmp_path):
    art = make(tmp_path)
    (art / "weights.safetensors").write_bytes(b"\x00" * 10)
    assert verify(art)[1] == ["weights.safetensors: size 10, manifest says 1000"]


def test_edited_manifest_is_detected(tmp_path):
    art = make(tmp_path)
    data = json.loads((art / "manifest.json").read_text())
    data["files"][1]["sha256"] = "0" * 64
    (art / "manifest.json").write_text(json.dumps(data))
    problems = verify(art)[1]
    assert "manifest.json: digest does not match its file list (manifest edited)" in problems


@pytest.mark.parametrize("content, reason", [("{not json", "not valid JSON"), ('{"kind": "adapter"}', "files: Field required")])
def test_corrupt_manifest(tmp_path, content, reason):
    art = make(tmp_path)
    (art / "manifest.json").write_text(content)
    with pytest.raises(IntegrityError, match=reason):
        read_manifest(art)


def test_exception_during_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with create_artifact(tmp_path / "a", "adapter", "a") as draft:
            (draft.path / "w").write_bytes(b"1")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


WRITER = """
import sys, time
from pathlib import Path
from enclave.manifest import create_artifact
with create_artifact(Path(sys.argv[1]), "adapter", "a") as d:
    (d.path / "w").write_bytes(b"1" * 1000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_kill_9_during_write_leaves_nothing_under_final_name(tmp_path):
    final = tmp_path / "a"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(final)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not final.exists()
    assert [p.name.startswith(".a.tmp-") for p in tmp_path.iterdir()] == [True]
    make(tmp_path, "a")  # a rerun starts cleanly and removes the stale temporary
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert verify(final)[1] == []


def test_existing_artifact_needs_overwrite(tmp_path):
    make(tmp_path)
    with pytest.raises(EnclaveError, match="already exists"):
        make(tmp_path)
    first = read_manifest(tmp_path / "a").created_at
    time.sleep(1.1)
    make(tmp_path, overwrite=True)
    assert read_manifest(tmp_path / "a").created_at != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_symlinks_are_refused(tmp_path):
    with pytest.raises(EnclaveError, match="symbolic link"):
        with create_artifact(tmp_path / "a", "adapter", "a") as draft:
            (draft.path / "link").symlink_to("/etc/passwd")
    assert not (tmp_path / "a").exists()


def test_sha256_file_matches_hashlib(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_json_schema_is_current_and_validates_manifests(tmp_path):
    committed = json.loads(SCHEMA.read_text())
    assert committed == json_schema(), "regenerate with `make schema`"
    jsonschema.validate(json.loads((make(tmp_path) / "manifest.json").read_text()), committed)
    bad = json.loads((tmp_path / "a" / "manifest.json").read_text()) | {"kind": "pickle"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, committed)
