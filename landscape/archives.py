"""Reading a data folder or tar archive: member by member, in memory, never extracted.

A loader names the files it wants (a predicate on POSIX names relative to the folder or archive
root) and gets them as a mapping from name to ``Source``. An archive is read to its
end-of-archive marker and, compressed, to the end of its stream, or refused with one line: a cut
or damaged archive never passes for a smaller data set (docs/robustness.md).
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from landscape.dataset import DataError
from landscape.progress import transient_bar

# How the first bytes of a file name its compression; anything else is read as a plain tar.
COMPRESSION_MAGIC = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}

# A file of a folder (read when needed) or the bytes of an archive member (already read).
Source = Path | bytes
# Which files a loader keeps, by POSIX name relative to the folder or archive root.
Wanted = Callable[[str], bool]


def read_source(source: Source) -> bytes:
    """Returns the bytes of a ``Source``: the file read now, or the member read before."""
    return source if isinstance(source, bytes) else source.read_bytes()


def folder_files(path: Path, wanted: Wanted) -> dict[str, Source]:
    """Returns the ``wanted`` files under a folder, by relative POSIX name (read lazily)."""
    files = {}
    for file in path.rglob("*"):
        name = file.relative_to(path).as_posix()
        if wanted(name) and file.is_file():
            files[name] = file
    return files


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Raises DataError for a member that could write or read outside the archive if extracted.

    We never extract (members are read in memory), so this is defence in depth; it also
    rejects archives that were built to attack a less careful tool.
    """
    name = member.name
    if name.startswith(("/", "\\")) or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise DataError(f"{archive}: unsafe path {name!r} in the archive; refusing to read it")
    if member.issym() or member.islnk() or member.isdev():
        raise DataError(f"{archive}: {name!r} is a link or device; refusing to read the archive")


class _ArchiveCut(tarfile.TarError):
    """The archive stops before its end-of-archive marker, or a header in it is damaged."""


class _StrictHeader(tarfile.TarInfo):
    """Reads headers as tarfile does, but only the end-of-archive marker (a zero block) ends the
    archive: tarfile takes a missing, cut or damaged header for the end and stops silently."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.EmptyHeaderError:
            raise _ArchiveCut(
                "it ends where a member or the end-of-archive marker should be"
            ) from None
        except (tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as err:
            raise _ArchiveCut(f"damaged header: {err}") from None


def _read_end(tar: tarfile.TarFile) -> None:
    """Raises _ArchiveCut unless the archive ends as a whole one does: after the first zero block
    (the last one read), a second, then the rest of the compressed stream, whose trailer (CRC and
    length) gzip, bz2 and xz check when read to its end."""
    stream = tar.fileobj
    if stream.tell() != tar.offset + tarfile.BLOCKSIZE:
        raise _ArchiveCut("it does not end with an end-of-archive marker")
    if stream.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise _ArchiveCut("its end-of-archive marker is cut short")
    while stream.read(1 << 20):
        pass


def _tar_mode(path: Path) -> str:
    """Returns the ``tarfile.open`` mode for the file's compression (from its first bytes)."""
    with open(path, "rb") as f:
        head = f.read(6)
    return "r:" + next((c for magic, c in COMPRESSION_MAGIC.items() if head.startswith(magic)), "")


def tar_files(path: Path, wanted: Wanted, progress: bool = False) -> dict[str, Source]:
    """Returns the ``wanted`` regular files of a .tar / .tar.gz, read into memory.

    The archive is read to its end-of-archive marker and, compressed, to the end of the stream
    with its checksum verified, or refused: a cut or damaged archive never passes for a smaller
    data set.
    """
    files: dict[str, Source] = {}
    members = 0
    try:
        with (
            transient_bar(progress, None, f"reading {path.name}"),
            tarfile.open(path, _tar_mode(path), tarinfo=_StrictHeader) as tar,
        ):
            for member in tar:  # one sequential pass: a .tar.gz cannot seek cheaply
                members += 1
                _check_member(member, path)
                name = member.name.removeprefix("./")
                if member.isfile() and wanted(name):
                    handle = tar.extractfile(member)
                    files.setdefault(name, handle.read() if handle else b"")
            _read_end(tar)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        reason = " ".join(str(err).split())  # one line, whatever the library said
        if members == 0:
            raise DataError(f"{path}: not a folder or a readable tar archive ({reason})") from None
        raise DataError(
            f"{path}: the archive is incomplete or damaged after {members:,} "
            f"member{'s' * (members != 1)} ({reason}); nothing from it was used or cached: "
            "download or copy it again"
        ) from None
    return files


def source_files(path: Path, wanted: Wanted, progress: bool = False) -> dict[str, Source]:
    """Returns the ``wanted`` files of a folder (``folder_files``) or archive (``tar_files``)."""
    if path.is_dir():
        return folder_files(path, wanted)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    return tar_files(path, wanted, progress)
