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
    FileEntry,
    Manifest,
    content_digest,
    create_artifact,
    json_schema,
    read_manifest,
    require_valid,
    sha256_file,
    update_metrics,
    verify,
)

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


@pytest.mark.parametrize(
    "content, reason", [("{not json", "not valid JSON"), ('{"kind": "adapter"}', "files: Field required")]
)
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


def declare(art: Path, path: str, data: bytes) -> None:
    """Add a file entry to the manifest and recompute its digest, as someone editing it by hand would."""
    import hashlib

    raw = json.loads((art / "manifest.json").read_text())
    raw["files"].append({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    raw["files"].sort(key=lambda f: f["path"])
    raw["digest"] = content_digest([FileEntry.model_validate(f) for f in raw["files"]])
    (art / "manifest.json").write_text(json.dumps(raw))


@pytest.mark.parametrize(
    "entry",
    [
        "../outside.txt",
        "sub/../../outside.txt",
        "OUTSIDE_ABS",
        "sub\\..\\..\\outside.txt",
        "sub//config.json",
        "./weights.safetensors",
        "x\x00y",
    ],
)
def test_unsafe_entries_are_refused_by_name(tmp_path, entry):
    art = make(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    entry = str(outside) if entry == "OUTSIDE_ABS" else entry
    declare(art, entry, b"secret")  # the outside file's real size and hash: the old check passed it
    problems = verify(art)[1]
    assert len(problems) == 1 and problems[0].startswith(f"{entry!r}: refused: "), problems
    assert problems[0].endswith("; entries are relative paths inside the artifact")
    with pytest.raises(IntegrityError, match="refused"):
        require_valid(art)


def test_an_entry_below_a_file_is_missing(tmp_path):
    art = make(tmp_path)
    declare(art, "weights.safetensors/x", b"x")
    assert verify(art)[1] == ["weights.safetensors/x: missing"]


def test_an_absolute_entry_reveals_nothing_about_the_file(tmp_path, capsys):
    from enclave.cli import main

    art = make(tmp_path)
    declare(art, "/etc/passwd", b"not the real contents")
    assert main(["verify", str(art)]) == 1
    err = capsys.readouterr().err
    assert "'/etc/passwd': refused: an absolute or non-POSIX path" in err
    assert "size" not in err and "sha256" not in err


def test_symlinked_file_and_parent_are_refused(tmp_path):
    art = make(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "weights.safetensors").write_bytes((art / "weights.safetensors").read_bytes())
    (elsewhere / "sub" / "config.json").write_text((art / "sub" / "config.json").read_text())
    (art / "weights.safetensors").unlink()
    (art / "weights.safetensors").symlink_to(
        elsewhere / "weights.safetensors"
    )  # same bytes: hashes match through the link
    (art / "sub" / "config.json").unlink()
    (art / "sub").rmdir()
    (art / "sub").symlink_to(elsewhere / "sub")
    assert verify(art)[1] == [
        "'sub/config.json': refused: sub is a symbolic link (artifacts hold plain files only)",
        "'weights.safetensors': refused: weights.safetensors is a symbolic link (artifacts hold plain files only)",
        "sub: a symbolic link, not listed in the manifest",
    ]


def test_unlisted_symlinked_directory_is_named(tmp_path):
    art = make(tmp_path)
    (art / "etc").symlink_to("/etc")
    assert verify(art)[1] == ["etc: a symbolic link, not listed in the manifest"]


def test_symlinked_manifest_is_refused(tmp_path):
    art, other = make(tmp_path), make(tmp_path, "b")
    (art / "manifest.json").unlink()
    (art / "manifest.json").symlink_to(other / "manifest.json")
    with pytest.raises(IntegrityError, match="manifest.json: refused: a symbolic link"):
        verify(art)


def test_an_artifact_reached_through_a_symlinked_directory_still_verifies(tmp_path):
    art = make(tmp_path)
    (tmp_path / "alias").symlink_to(art)  # e.g. ENCLAVE_HOME on another volume: only links inside the artifact count
    assert verify(tmp_path / "alias")[1] == []


def test_sha256_file_can_refuse_to_follow_a_link(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    assert sha256_file(tmp_path / "link") == sha256_file(tmp_path / "f")
    with pytest.raises(OSError):
        sha256_file(tmp_path / "link", follow_symlinks=False)
