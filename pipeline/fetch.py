"""Resumable, verified HTTP downloads and safe zip extraction (used for COCO).

`download_file` writes to `<name>.part`, resuming with an HTTP Range request when a part is
there (after an interrupted run or a dropped connection, retried with backoff), and renames to
`<name>` only after the size and md5 match. So a file under its final name is always complete
and verified; a mismatch deletes the part and raises `ChecksumError`.

`extract_zip` checks every entry first and refuses the whole archive (`UnsafeArchiveError`) if
any entry would land outside the target folder (absolute paths, `..`, drive letters, links),
then extracts into a temporary folder that is renamed into place.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import stat
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from mrcnn.fileio import file_digest

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file on a server: path under the base URL, size in bytes and md5 (None: unchecked)."""

    path: str
    size: int | None
    md5: str | None

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


class ChecksumError(RuntimeError):
    """A download whose size or md5 is not the expected one."""


class UnsafeArchiveError(RuntimeError):
    """An archive with an entry that would be written outside the target folder."""


class DownloadError(RuntimeError):
    """A download that kept failing after all retries."""


def download_file(
    url: str,
    dest: Path,
    *,
    size: int | None,
    md5: str | None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download `url` to `dest` (resumable, verified); a no-op if `dest` already exists."""
    dest = Path(dest)
    if dest.is_file() and (size is None or dest.stat().st_size == size):
        logger.info("%s already downloaded", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _fetch_into(url, part, size, timeout)
            break
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            if isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500 and e.code != 416:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
            attempt += 1
            if attempt > retries:
                raise DownloadError(f"{url}: failed after {retries} retries: {e}") from e
            have = part.stat().st_size if part.exists() else 0
            logger.warning("%s: %s; retry %d/%d from byte %d", url, e, attempt, retries, have)
            sleep(backoff * 2 ** (attempt - 1))
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink()
        raise ChecksumError(f"{dest.name}: size {got_size} != expected {size}; deleted it")
    if md5 is not None:
        got = file_digest(part, "md5")
        if got != md5:
            part.unlink()
            raise ChecksumError(
                f"{dest.name}: md5 {got} != expected {md5}; deleted the download. The file on "
                "the server differs from the known one (or the transfer was corrupted)."
            )
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, size: int | None, timeout: float) -> None:
    """Append the rest of `url` to `part` (Range request if the part is non-empty)."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have == size:
        return
    if size is not None and have > size:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # range not satisfiable: our part is suspect; start over
            part.unlink()
        raise
    with resp:
        if have and resp.status != 206:  # the server ignored the range: start over
            logger.info("%s: server does not resume; downloading from the start", url)
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else size
        with (
            open(part, "ab" if have else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=part.name[:-5],
                leave=False,
            ) as bar,
        ):
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if length is not None and part.stat().st_size < total:
        raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def check_zip_members(archive: zipfile.ZipFile, name: str) -> None:
    """Raise `UnsafeArchiveError` if any entry could escape the extraction folder."""
    for info in archive.infolist():
        p = info.filename.replace("\\", "/")
        parts = PurePosixPath(p).parts
        is_link = stat.S_ISLNK(info.external_attr >> 16)
        if p.startswith("/") or ".." in parts or (parts and ":" in parts[0]) or is_link:
            raise UnsafeArchiveError(
                f"{name}: refusing entry {info.filename!r} (outside the "
                "target folder or a link); nothing was extracted"
            )


def extract_zip(
    archive_path: Path, target: Path, members: Callable[[str], bool] | None = None
) -> None:
    """Extract (the entries accepted by `members` of) a zip into `target`, atomically: into a
    temporary sibling folder first, renamed to `target` when complete."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.extracting")
    if tmp.exists():
        shutil.rmtree(tmp)
    with zipfile.ZipFile(archive_path) as zf:
        check_zip_members(zf, Path(archive_path).name)
        infos = [i for i in zf.infolist() if members is None or members(i.filename)]
        tmp.mkdir(parents=True)
        root = tmp.resolve()
        for info in tqdm(
            infos, desc=f"extract {Path(archive_path).name}", unit="file", leave=False
        ):
            out = (tmp / info.filename).resolve()
            if root not in out.parents and out != root:  # belt and braces after the check
                raise UnsafeArchiveError(f"refusing {info.filename!r}")
            zf.extract(info, tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
