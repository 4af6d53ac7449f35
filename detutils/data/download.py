"""Download COCO 2017: resumable transfers, size and checksum checks, extraction.

    python -m detutils.data.download coco2017 --root data/coco [--split val] [--keep-archives]

Each archive is fetched into ``NAME.part`` next to its final place. A transfer cut
short (a dropped connection, a killed process) resumes where it stopped with an
HTTP ``Range`` request; a server that ignores ranges sends the whole file again.
A finished file is checked against its known size and MD5 before it is extracted;
a file that fails the check is reported, removed and never extracted. Extraction
leaves ``NAME.extracted`` beside the data, so a second run skips finished archives.

The base URL is ``http://images.cocodataset.org`` unless ``--base-url`` or the
environment variable ``DETUTILS_COCO_BASE_URL`` names a mirror (the tests point it
at a server on 127.0.0.1).

After ``--split val`` the root holds ``val2017/`` and ``annotations/``, the COCO 2017
layout that :func:`detutils.data.coco.find_split` reads.

Reference: https://cocodataset.org/#download (archive names); the sizes and MD5s are
those of the official archives as recorded by several public download scripts.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

__all__ = [
    "Archive",
    "COCO2017_ARCHIVES",
    "DEFAULT_BASE_URL",
    "BASE_URL_ENV",
    "DownloadError",
    "ChecksumError",
    "download_file",
    "file_md5",
    "extract_zip",
    "download_coco2017",
    "main",
]

DEFAULT_BASE_URL = "http://images.cocodataset.org"
BASE_URL_ENV = "DETUTILS_COCO_BASE_URL"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One downloadable file: its path under the base URL, size in bytes and MD5."""

    path: str
    size: int | None = None
    md5: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


COCO2017_ARCHIVES = {
    "train": Archive("zips/train2017.zip", 19_336_861_798, "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val": Archive("zips/val2017.zip", 815_585_330, "442b8da7639aecaf257c1dceb8ba8c80"),
    "annotations": Archive(
        "annotations/annotations_trainval2017.zip", 252_907_541, "f4bbac642086de4f52a3fdda2de5fa2c"
    ),
}


class DownloadError(RuntimeError):
    """A file could not be fetched (HTTP error, wrong size, too many cut connections)."""


class ChecksumError(DownloadError):
    """A fetched file does not have the MD5 it should have."""


def file_md5(path: str | Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _transfer(url: str, part: Path, size: int | None, timeout: float, progress: bool) -> None:
    """One request: append to ``part`` from its current length. Raises OSError when cut."""
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start >= size:
        return  # complete already (or too long: the size check reports it)
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # range not satisfiable: nothing left to fetch
            return
        if error.code in (408, 429) or error.code >= 500:
            raise ConnectionError(f"HTTP {error.code} from {url}") from None  # worth a retry
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    with response:
        if start and response.status != 206:
            start = 0  # the server ignored the range: it sends the whole file
        content_range = response.headers.get("Content-Range", "")
        if start and not content_range.startswith(f"bytes {start}-"):
            raise DownloadError(f"{url}: asked for bytes {start}- but got {content_range!r}")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{url}: the server has {total} bytes, expected {size}")
        bar = tqdm(
            total=total or size,
            initial=start,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not progress,
        )
        with bar, open(part, "r+b" if start else "wb") as stream:
            stream.seek(start)
            stream.truncate()
            while chunk := response.read(CHUNK_BYTES):
                stream.write(chunk)
                bar.update(len(chunk))
        received = part.stat().st_size
        if total is not None and received < total:
            raise ConnectionError(f"{url}: connection closed after {received} of {total} bytes")


def download_file(
    url: str,
    dest: str | Path,
    size: int | None = None,
    md5: str | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch ``url`` to ``dest``, resuming a partial ``dest.part``, then check it.

    Args:
        url: address of the file.
        dest: final path; the transfer writes ``dest`` + ``.part`` until it is checked.
        size: expected size in bytes (checked when given).
        md5: expected hex MD5 (checked when given).
        retries: how many times a cut transfer is resumed before giving up.
        backoff: seconds to wait before retry k are ``backoff * k``.
        timeout: seconds without data before a connection counts as cut.
        progress: show a progress bar.

    Returns:
        ``dest``, a file of the expected size and MD5.

    Raises:
        DownloadError: an HTTP error, a size that differs, or ``retries`` exceeded.
        ChecksumError: the MD5 differs; the bad file is removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.exists():
        dest.replace(part)  # check it again like a fresh transfer, resuming if short
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, size, timeout, progress)
            break
        except (OSError, http.client.HTTPException) as error:
            if attempt == retries:
                raise DownloadError(
                    f"{url}: gave up after {retries + 1} attempts ({error}); "
                    f"run again to resume from {part}"
                ) from error
            print(f"{dest.name}: {error}; resuming (attempt {attempt + 2})", file=sys.stderr)
            time.sleep(backoff * (attempt + 1))
    received = part.stat().st_size if part.exists() else 0
    if size is not None and received != size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{dest.name}: {received} bytes received, expected {size}; removed")
    if md5 is not None:
        actual = file_md5(part)
        if actual != md5.lower():
            part.unlink()
            raise ChecksumError(
                f"{dest.name} from {url} is corrupt: MD5 {actual}, expected {md5}; "
                "the file was removed and not extracted, run again to fetch it afresh"
            )
    part.replace(dest)
    return dest


def extract_zip(archive: str | Path, root: str | Path) -> list[str]:
    """Extract a zip archive under ``root``, refusing members that would land outside it.

    Returns:
        the member names extracted.

    Raises:
        DownloadError: the file is not a zip archive, or a member path leaves ``root``.
    """
    archive, root = Path(archive), Path(root).resolve()
    try:
        with zipfile.ZipFile(archive) as zipped:
            names = zipped.namelist()
            for name in names:
                target = (root / name).resolve()
                if target != root and root not in target.parents:
                    raise DownloadError(f"{archive}: member {name!r} would extract outside {root}")
            zipped.extractall(root)
    except zipfile.BadZipFile as error:
        raise DownloadError(f"{archive} is not a valid zip archive: {error}") from None
    return names


def download_coco2017(
    root: str | Path,
    splits: tuple[str, ...] = ("train", "val"),
    base_url: str | None = None,
    archives: dict[str, Archive] | None = None,
    keep_archives: bool = False,
    progress: bool = True,
    retries: int = 5,
    backoff: float = 2.0,
) -> Path:
    """Fetch, check and extract the COCO 2017 images of ``splits`` and the annotations.

    Args:
        root: folder that receives ``{split}2017/`` and ``annotations/``.
        splits: any of ``"train"`` and ``"val"``.
        base_url: server to fetch from; default ``$DETUTILS_COCO_BASE_URL`` or the
            official ``http://images.cocodataset.org``.
        archives: name -> :class:`Archive`; default :data:`COCO2017_ARCHIVES`.
        keep_archives: keep the zip files after extraction.
        progress, retries, backoff: as in :func:`download_file`.

    Returns:
        ``root`` as a Path.
    """
    archives = COCO2017_ARCHIVES if archives is None else archives
    base_url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    unknown = [s for s in splits if s not in archives or s == "annotations"]
    if unknown:
        known = [name for name in archives if name != "annotations"]
        raise ValueError(f"unknown split(s) {unknown}; choose from {known}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for key in (*splits, "annotations"):
        archive = archives[key]
        marker = root / f"{archive.name}.extracted"
        if marker.exists():
            print(f"{archive.name}: extracted already ({marker})")
            continue
        url = f"{base_url}/{archive.path}"
        path = download_file(
            url, root / archive.name, archive.size, archive.md5, retries, backoff, progress=progress
        )
        names = extract_zip(path, root)
        marker.write_text(json.dumps({"url": url, "size": archive.size, "md5": archive.md5}))
        if not keep_archives:
            path.unlink()
        print(f"{archive.name}: {len(names)} entries extracted to {root}")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detutils.data.download", description="Download a detection data set."
    )
    parser.add_argument("dataset", choices=["coco2017"])
    parser.add_argument("--root", type=Path, required=True, help="folder to fill")
    parser.add_argument(
        "--split", action="append", choices=["train", "val"], help="default: train and val"
    )
    parser.add_argument("--base-url", default=None, help=f"default: ${BASE_URL_ENV} or official")
    parser.add_argument("--keep-archives", action="store_true", help="keep the zip files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    splits = tuple(dict.fromkeys(args.split or ["train", "val"]))
    try:
        root = download_coco2017(
            args.root,
            splits,
            base_url=args.base_url,
            keep_archives=args.keep_archives,
            progress=not args.no_progress,
        )
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"COCO 2017 ({', '.join(splits)}) is in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
