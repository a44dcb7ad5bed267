"""enclave.bundle: keys, create, verify and install, and every way a bundle must be refused."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from enclave.bundle import create, keys
from enclave.bundle.install import BundleRefused, install_bundle
from enclave.bundle.layout import BundleManifest
from enclave.bundle.reader import read_bundle
from enclave.cli import main
from enclave.errors import EnclaveError
from enclave.manifest import FileEntry, create_artifact


def make_artifact(path: Path, kind: str = "onnx", text: str = "weights") -> Path:
    with create_artifact(path, kind, path.name) as draft:
        (draft.path / "model.onnx").write_text(text * 100)
        (draft.path / "sub").mkdir()
        (draft.path / "sub" / "config.json").write_text('{"a": 1}')
    return path


@pytest.fixture()
def signer(tmp_path):
    private, public, kid = keys.keygen(tmp_path / "site")
    return keys.load_private(private), {kid: keys.load_public(public)}, public


@pytest.fixture()
def bundle(tmp_path, signer) -> Path:
    private, _, _ = signer
    model, s1 = create.artifact_sources(make_artifact(tmp_path / "art"), "model", "clinic", "1")
    adapter, s2 = create.artifact_sources(make_artifact(tmp_path / "lora", kind="adapter"), "adapter", "lora", None)
    create.write_bundle(tmp_path / "b.tar", private, [model, adapter], s1 + s2, None, creator="tester@host")
    return tmp_path / "b.tar"


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar.getmembers()]


def repack(path: Path, items: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in items:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def resign(items, private, edit) -> list:
    """Apply ``edit`` to the parsed bundle.json and sign it again with ``private`` (a trusted creator)."""
    raw = json.loads(items[0][1])
    edit(raw)
    data = (json.dumps(raw, indent=2) + "\n").encode()
    sig = (json.dumps(keys.sign(private, data)) + "\n").encode()
    out = [(tarfile.TarInfo("bundle.json"), data), (tarfile.TarInfo("bundle.sig"), sig), *items[2:]]
    for info, payload in out[:2]:
        info.size = len(payload)
    return out


def test_keygen_files_and_refuses_to_overwrite(tmp_path):
    private, public, kid = keys.keygen(tmp_path / "k")
    assert private.stat().st_mode & 0o777 == 0o600 and b"PRIVATE KEY" in private.read_bytes()
    assert len(kid) == 16 and keys.key_id(keys.load_public(public)) == kid
    with pytest.raises(EnclaveError, match="never replaces a key"):
        keys.keygen(tmp_path / "k")
    with pytest.raises(EnclaveError, match="not a PEM public key"):
        keys.load_public(private)


def test_passphrase_protected_key(tmp_path, monkeypatch):
    monkeypatch.setenv("PASS", "s3cret")
    private, _, _ = keys.keygen(tmp_path / "k", passphrase_env="PASS")
    keys.load_private(private, "PASS")
    with pytest.raises(EnclaveError, match="not a readable PEM private key"):
        keys.load_private(private)


def test_good_bundle_verifies_and_lists_everything(bundle, signer):
    _, trusted, _ = signer
    report = read_bundle(bundle, trusted)
    assert report.ok, report.problems
    m = report.manifest
    assert m.creator == "tester@host" and m.schema_version == 1 and report.checked == len(m.files) == 6
    assert {(a.role, a.name, a.version, a.path) for a in m.artifacts} == {
        ("model", "clinic", "1", "models/clinic/1"),
        ("adapter", "lora", None, "adapters/lora"),
    }
    assert all(f.sha256 and f.size >= 0 for f in m.files)
    names = [i.name for i, _ in members(bundle)]
    assert names[:2] == ["bundle.json", "bundle.sig"]


def test_install_places_artifacts_atomically_and_twice_is_safe(bundle, signer, tmp_path):
    from enclave.repository import Repository

    _, trusted, _ = signer
    _, done = install_bundle(bundle, trusted, tmp_path / "repo")
    assert done.placed == ["model clinic version 1", "adapter lora"]
    repo = Repository(tmp_path / "repo")
    assert repo.models() == ["clinic"] and repo.active("clinic").version == "1" and repo.adapter("lora")
    (tmp_path / "repo" / ".bundle-incoming-killed" / "models").mkdir(parents=True)  # an install killed half-way
    _, again = install_bundle(bundle, trusted, tmp_path / "repo")
    assert again.placed == [] and len(again.skipped) == 2
    assert [p.name for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")] == [".bundle-install.lock"]


def assert_refused(path: Path, trusted, repo: Path, *expected: str) -> list[str]:
    report = read_bundle(path, trusted)
    assert not report.ok
    text = "\n".join(report.problems)
    for want in expected:
        assert want in text, text
    with pytest.raises(BundleRefused) as e:
        install_bundle(path, trusted, repo)
    assert "nothing was installed" in str(e.value)
    assert not (repo / "models").exists() and not (repo / "adapters").exists()
    assert [p.name for p in repo.iterdir()] == [".bundle-install.lock"]
    return report.problems


def test_tampered_file_is_named(bundle, signer, tmp_path):
    _, trusted, _ = signer
    items = members(bundle)
    i = next(k for k, (m, _) in enumerate(items) if m.name == "models/clinic/1/model.onnx")
    info, data = items[i]
    items[i] = (info, b"X" + data[1:])
    problems = assert_refused(
        repack(tmp_path / "t.tar", items), trusted, tmp_path / "repo", "models/clinic/1/model.onnx: sha256 differs"
    )
    assert len(problems) == 1


def test_truncated_bundle(bundle, signer, tmp_path):
    _, trusted, _ = signer
    cut = tmp_path / "cut.tar"
    cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    assert_refused(cut, trusted, tmp_path / "repo", "truncated")


def test_unsigned_and_wrong_key_and_edited_manifest(bundle, signer, tmp_path):
    _, trusted, _ = signer
    items = members(bundle)
    problems = assert_refused(repack(tmp_path / "u.tar", [items[0], *items[2:]]), trusted, tmp_path / "r1", "unsigned")
    assert len(problems) == 1, "the files of an unsigned bundle are still all checked"
    other, pub, _ = keys.keygen(tmp_path / "other")
    assert_refused(
        bundle, {keys.key_id(keys.load_public(pub)): keys.load_public(pub)}, tmp_path / "r2", "not a trusted key"
    )
    raw = json.loads(items[0][1])
    raw["creator"] = "mallory"
    data = (json.dumps(raw, indent=2) + "\n").encode()
    info = tarfile.TarInfo("bundle.json")
    info.size = len(data)
    assert_refused(
        repack(tmp_path / "e.tar", [(info, data), *items[1:]]), trusted, tmp_path / "r3", "changed after signing"
    )
    forged = resign(items, keys.load_private(other), lambda raw: None)
    assert_refused(repack(tmp_path / "f.tar", forged), trusted, tmp_path / "r4", "not a trusted key")


def test_other_schema_version(bundle, signer, tmp_path):
    private, trusted, _ = signer
    items = resign(members(bundle), private, lambda raw: raw.update(schema_version=2))
    assert_refused(
        repack(tmp_path / "v2.tar", items),
        trusted,
        tmp_path / "repo",
        "schema_version 2 is not one this Enclave reads (1)",
    )


def _declare(raw: dict, path: str, data: bytes) -> None:
    import hashlib

    raw["files"].append({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/enclave-owned", "models/../../escape.txt", "models/./x"])
def test_path_traversal_and_absolute_paths_are_refused_even_when_signed(bundle, signer, tmp_path, name):
    private, trusted, _ = signer
    payload = b"owned"
    items = resign(members(bundle), private, lambda raw: _declare(raw, name, payload))
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    assert_refused(
        repack(tmp_path / "p.tar", [*items, (info, payload)]), trusted, tmp_path / "repo", f"{name}: refused"
    )
    assert not (tmp_path / "escape.txt").exists() and not Path("/etc/enclave-owned").exists()


@pytest.mark.parametrize(
    "target, why",
    [
        ("../../../../etc/passwd", "leaves the bundle"),
        ("/etc/passwd", "leaves the bundle"),
        ("model.onnx", "regular files only"),
    ],
)
def test_links_are_refused(bundle, signer, tmp_path, target, why):
    _, trusted, _ = signer
    link = tarfile.TarInfo("models/clinic/1/link")
    link.type, link.linkname = tarfile.SYMTYPE, target
    assert_refused(
        repack(tmp_path / "l.tar", [*members(bundle), (link, b"")]),
        trusted,
        tmp_path / "repo",
        f"models/clinic/1/link: refused: a link to {target!r}",
        why,
    )


def test_extra_file_and_larger_entry_are_refused(bundle, signer, tmp_path):
    private, trusted, _ = signer
    extra = tarfile.TarInfo("models/clinic/1/extra.py")
    extra.size = 5
    assert_refused(
        repack(tmp_path / "x.tar", [*members(bundle), (extra, b"print")]),
        trusted,
        tmp_path / "r1",
        "not listed in bundle.json (an extra file)",
    )
    items = resign(members(bundle), private, lambda raw: _declare(raw, "models/clinic/1/small.bin", b"1234"))
    big = tarfile.TarInfo("models/clinic/1/small.bin")
    big.size = 4096
    assert_refused(
        repack(tmp_path / "big.tar", [*items, (big, b"\0" * 4096)]),
        trusted,
        tmp_path / "r2",
        "larger than declared (4096 > 4 bytes)",
    )


def test_missing_file_and_duplicate_entry(bundle, signer, tmp_path):
    _, trusted, _ = signer
    items = members(bundle)
    i = next(k for k, (m, _) in enumerate(items) if m.name.endswith("config.json"))
    assert_refused(
        repack(tmp_path / "m.tar", items[:i] + items[i + 1 :]), trusted, tmp_path / "r1", "missing from the bundle"
    )
    assert_refused(repack(tmp_path / "d.tar", [*items, items[i]]), trusted, tmp_path / "r2", "appears twice")


def test_conflicting_version_is_refused_before_anything_moves(tmp_path, signer, bundle):
    from enclave.repository import Repository

    private, trusted, _ = signer
    repo = Repository(tmp_path / "repo")
    repo.add(make_artifact(tmp_path / "different", text="other"), "clinic", "1")
    with pytest.raises(EnclaveError, match="already in .* with different contents"):
        install_bundle(bundle, trusted, repo.root)
    assert not repo.adapters_dir.exists() and repo.versions("clinic")[0].manifest.name == "different"


def test_cli_round_trip_and_file_by_file_failure(tmp_path, capsys):
    make_artifact(tmp_path / "art")
    assert main(["bundle", "keygen", str(tmp_path / "k")]) == 0
    out = tmp_path / "c.tar"
    assert (
        main(
            ["bundle", "create", str(out), "--key", str(tmp_path / "k.key"), "--model", f"clinic@7={tmp_path / 'art'}"]
        )
        == 0
    )
    assert main(["bundle", "verify", str(out), "--key", str(tmp_path / "k.pub")]) == 0
    assert "model clinic@7" in capsys.readouterr().out
    items = members(out)
    for k, (info, data) in enumerate(items):
        if info.name.endswith(("model.onnx", "config.json")):
            items[k] = (info, data[::-1])
    repack(out, items)
    assert main(["bundle", "verify", str(out), "--key", str(tmp_path / "k.pub")]) == 1
    err = capsys.readouterr().err
    assert (
        "FAILED" in err
        and "models/clinic/7/model.onnx: sha256 differs" in err
        and "models/clinic/7/sub/config.json: sha256 differs" in err
    )
    assert (
        main(["bundle", "install", str(out), "--key", str(tmp_path / "k.pub"), "--repo", str(tmp_path / "repo")]) == 2
    )
    assert "nothing was installed" in capsys.readouterr().err


def test_bad_arguments_name_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path / "home"))
    assert main(["bundle", "verify", str(tmp_path / "none.tar")]) == 2
    assert "no trusted public key" in capsys.readouterr().err
    keys.keygen(tmp_path / "k")
    assert main(["bundle", "create", str(tmp_path / "o.tar"), "--key", str(tmp_path / "k.key")]) == 2
    assert "nothing to bundle" in capsys.readouterr().err
    assert (
        main(
            ["bundle", "create", str(tmp_path / "o.tar"), "--key", str(tmp_path / "k.key"), "--model", "x=/nonexistent"]
        )
        == 2
    )
    assert "is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "o.tar").exists()


def test_manifest_model_rejects_unknown_keys():
    with pytest.raises(ValidationError):
        BundleManifest.model_validate(
            {
                "enclave_version": "0",
                "created_at": "t",
                "creator": "c",
                "key_id": "k",
                "artifacts": [],
                "files": [FileEntry(path="a", size=0, sha256="0" * 64).model_dump()],
                "surprise": 1,
            }
        )


def test_one_install_at_a_time(bundle, signer, tmp_path):
    import fcntl

    _, trusted, _ = signer
    (tmp_path / "repo").mkdir()
    with open(tmp_path / "repo" / ".bundle-install.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(EnclaveError, match="another `enclave bundle install` is running"):
            install_bundle(bundle, trusted, tmp_path / "repo")


def test_artifact_manifest_must_match_what_the_bundle_lists(bundle, signer, tmp_path):
    """A trusted creator's bundle whose artifact manifest disagrees with bundle.json is still refused."""
    import hashlib

    private, trusted, _ = signer
    items = members(bundle)
    i = next(k for k, (m, _) in enumerate(items) if m.name == "models/clinic/1/manifest.json")
    raw = json.loads(items[i][1])
    raw["files"] = raw["files"][:1]  # forgets a file the bundle carries
    data = json.dumps(raw).encode()
    info = tarfile.TarInfo(items[i][0].name)
    info.size = len(data)
    items[i] = (info, data)

    def declare(manifest):
        entry = next(f for f in manifest["files"] if f["path"] == "models/clinic/1/manifest.json")
        entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())

    with pytest.raises(EnclaveError, match="does not match the files bundle.json lists"):
        install_bundle(repack(tmp_path / "m.tar", resign(items, private, declare)), trusted, tmp_path / "repo")
    assert not (tmp_path / "repo" / "models").exists()


BIG = 16 << 20


def with_big_member(items, private) -> list:
    """The bundle plus a 16 MiB file of zeros, declared in bundle.json and signed by ``private``."""
    payload = b"\0" * BIG
    items = resign(items, private, lambda raw: _declare(raw, "wheels/big.bin", payload))
    info = tarfile.TarInfo("wheels/big.bin")
    info.size = BIG
    return [*items, (info, payload)]


def repack_gz(path: Path, items) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in items:
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture()
def staged(monkeypatch):
    """Bytes found in the staging folder right after the reader returned (install removes it afterwards)."""
    import enclave.bundle.install as install

    found = []

    def spy(path, trusted, extract_to=None):
        try:
            return read_bundle(path, trusted, extract_to=extract_to)
        finally:
            found.append(sum(p.stat().st_size for p in extract_to.rglob("*") if p.is_file()))

    monkeypatch.setattr(install, "read_bundle", spy)
    return found


@pytest.mark.parametrize("how", ["unsigned", "edited after signing", "untrusted key"])
def test_unsigned_or_badly_signed_bundle_writes_nothing(bundle, signer, tmp_path, staged, how):
    private, trusted, _ = signer
    items = with_big_member(members(bundle), private)
    if how == "unsigned":
        items = [items[0], *items[2:]]
    elif how == "edited after signing":
        data = items[0][1].replace(b'"tester@host"', b'"mallory@host"')
        info = tarfile.TarInfo("bundle.json")
        info.size = len(data)
        items = [(info, data), *items[1:]]
    else:
        other, _, _ = keys.keygen(tmp_path / "other")
        items = resign(items, keys.load_private(other), lambda raw: None)
    path = repack_gz(tmp_path / "b.tar.gz", items)
    assert path.stat().st_size < BIG // 100  # zeros compress: a small file that unpacks large
    unpack = tmp_path / "unpack"
    unpack.mkdir()
    report = read_bundle(path, trusted, extract_to=unpack)
    assert list(unpack.iterdir()) == []
    assert not report.ok and "nothing was unpacked" in report.problems[-1]
    with pytest.raises(BundleRefused, match="nothing was installed"):
        install_bundle(path, trusted, tmp_path / "repo")
    assert staged == [0]
    assert [p.name for p in (tmp_path / "repo").iterdir()] == [".bundle-install.lock"]


def test_bundle_larger_than_the_free_space_is_refused_before_writing(bundle, signer, tmp_path, staged, monkeypatch):
    import shutil

    from enclave.bundle import reader

    private, trusted, _ = signer
    path = repack(tmp_path / "big.tar", with_big_member(members(bundle), private))
    declared = sum(f.size for f in read_bundle(path, trusted).manifest.files)
    real = shutil.disk_usage
    monkeypatch.setattr(
        shutil, "disk_usage", lambda p: real(p)._replace(free=declared)
    )  # room for the bytes, not the margin
    with pytest.raises(
        EnclaveError,
        match=rf"needs [0-9,]+ bytes \({declared:,} declared plus a margin\) .* "
        rf"which has {declared:,} bytes free; nothing was written",
    ):
        install_bundle(path, trusted, tmp_path / "repo")
    assert staged == [0]
    assert [p.name for p in (tmp_path / "repo").iterdir()] == [".bundle-install.lock"]
    needed = declared + declared // 100 + reader._SPACE_MARGIN
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=needed - 1))
    with pytest.raises(EnclaveError, match=f"needs {needed:,} bytes"):
        install_bundle(path, trusted, tmp_path / "repo")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=needed))
    _, done = install_bundle(path, trusted, tmp_path / "repo")
    assert done.placed == ["model clinic version 1", "adapter lora"]


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("name", "../../escape", "artifacts[1].name '../../escape' is not a safe name"),
        ("name", "Lora", "artifacts[1].name 'Lora' is not a safe name"),
        (
            "path",
            "models/clinic/1",
            "artifacts[1].path 'models/clinic/1' is not where the adapter 'lora' goes ('adapters/lora')",
        ),
        ("version", "1", "artifacts[1].version '1': an adapter has no version"),
    ],
)
def test_artifact_names_in_bundle_json_must_be_directory_names(bundle, signer, tmp_path, field, value, why):
    private, trusted, _ = signer
    items = resign(members(bundle), private, lambda raw: raw["artifacts"][1].update({field: value}))
    assert_refused(repack(tmp_path / "n.tar", items), trusted, tmp_path / "repo", f"bundle.json {why}")
