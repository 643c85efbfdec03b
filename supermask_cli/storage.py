"""File access through fsspec (local paths, ``file://``, ``memory://``, ``s3://`` …) with atomic writes."""

from __future__ import annotations

import os
import re
import socket
import tempfile
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import SupermaskError


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return fsspec.core.url_to_fs(path)
    except ImportError as exc:
        hint = "; pip install -e '.[s3]'" if path.startswith(("s3://", "s3a://")) else ""
        raise SupermaskError(f"'{path}': unsupported storage URL ({exc}{hint})") from None
    except ValueError as exc:
        raise SupermaskError(f"'{path}': unsupported storage URL ({exc})") from None


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', keeping any URL scheme of ``base``."""
    return "/".join([base.rstrip("/"), *parts])


def parent(path: str) -> str:
    """The folder holding ``path`` ('' for a bare file name), URL scheme kept."""
    return path.rsplit("/", 1)[0] if "/" in path else ""


def local_dir_inside(directory: str | os.PathLike, run_dir: str) -> bool:
    """Whether ``directory`` is ``run_dir`` or below it, for a local run dir (a URL run dir is never
    on this machine's disk: False)."""
    if "://" in run_dir and not run_dir.startswith("file://"):
        return False
    run = Path(run_dir.removeprefix("file://")).expanduser().resolve()
    mine = Path(directory).expanduser().resolve()
    return mine == run or run in mine.parents


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.exists(p)


def listdir(path: str) -> list[str]:
    """Base names in a directory; empty when it does not exist."""
    fs, p = filesystem(path)
    if not fs.isdir(p):
        return []
    return sorted(os.path.basename(entry.rstrip("/")) for entry in fs.ls(p, detail=False))


def read_bytes(path: str, max_bytes: int, what: str = "file") -> bytes:
    """Read a whole file, refusing (before reading) one larger than ``max_bytes``."""
    fs, p = filesystem(path)
    if not fs.isfile(p):
        raise SupermaskError(f"{what} '{path}' not found")
    size = fs.size(p)
    if size is not None and size > max_bytes:
        raise SupermaskError(f"{what} '{path}' is {size} bytes, over the {max_bytes}-byte limit")
    with fs.open(p, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SupermaskError(f"{what} '{path}' is over the {max_bytes}-byte limit")
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_TEMP_NAME = re.compile(r"^\.tmp-(?P<host>.+)-(?P<pid>\d+)-[^-]*\.part$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(directory: str) -> list[str]:
    """Delete the temporary files of writers on this host that were killed mid-write (their
    process is gone); temp files of live writers and of other hosts sharing the directory stay."""
    host = socket.gethostname()
    removed = []
    for name in os.listdir(directory):
        match = _TEMP_NAME.match(name)
        if not match or match["host"] != host or _alive(int(match["pid"])):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except FileNotFoundError:  # another writer removed it first
            pass
    return removed


def write_atomic(path: str, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of the new one.

    Local files: temporary file in the same directory (named after host and pid, so that the
    next write there removes what a killed writer left), fsync, rename, fsync of the directory.
    Object stores: a single PUT, which those stores make atomic, conditional on the object not
    existing where the store offers that (S3). An existing file is kept unless ``force``."""
    fs, p = filesystem(path)
    if not force and fs.exists(p):
        raise SupermaskError(f"'{path}' already exists; pass --force to overwrite it")
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(os.path.abspath(p))
        os.makedirs(directory, exist_ok=True)
        remove_stale_temps(directory)
        prefix = f".tmp-{socket.gethostname()}-{os.getpid()}-"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            if force:
                os.replace(tmp, p)
            else:
                try:
                    os.link(tmp, p)  # atomic and refuses an existing name, even if another writer just made it
                    os.unlink(tmp)
                except FileExistsError:
                    raise SupermaskError(f"'{path}' already exists; pass --force to overwrite it") from None
                except OSError:  # a filesystem without hard links
                    if os.path.exists(p):
                        raise SupermaskError(f"'{path}' already exists; pass --force to overwrite it") from None
                    os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    else:
        folder = parent(p)
        if folder:
            fs.makedirs(folder, exist_ok=True)
        _put(fs, p, data, path, create=not force)


S3_SINGLE_PUT_LIMIT = 5 * 1024**3


def _put(fs: fsspec.AbstractFileSystem, p: str, data: bytes, path: str, *, create: bool) -> None:
    """One PUT of the whole object. ``create``: a conditional write (S3's ``If-None-Match: *``
    through s3fs ``mode="create"``) that the store refuses if the object appeared since the
    check above; stores without conditional writes fall back to fsspec's check-then-put, which
    leaves a window between the check and the PUT in which two writers can both succeed."""
    kwargs: dict = {}
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "s3" in protocols:  # one PUT, never a multipart upload (which the condition would not cover)
        if len(data) > S3_SINGLE_PUT_LIMIT:
            raise SupermaskError(f"'{path}' is {len(data)} bytes, over S3's single-PUT limit")
        kwargs["chunksize"] = max(len(data), 1)
    try:
        if create:
            fs.pipe_file(p, data, mode="create", **kwargs)
        else:
            fs.pipe_file(p, data, **kwargs)
    except FileExistsError:
        raise SupermaskError(f"'{path}' already exists; pass --force to overwrite it") from None


def write_text_atomic(path: str, text: str, *, force: bool = False) -> None:
    write_atomic(path, text.encode(), force=force)
