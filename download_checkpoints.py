"""Fetch and verify the 10 released CheXzero checkpoints and, with --openai, OpenAI's ViT-B/32.

    python download_checkpoints.py                # the 10 checkpoints into models/chexzero_weights/
    python download_checkpoints.py --openai       # and ViT-B-32.pt into models/ (to train from CLIP)
    python download_checkpoints.py --verify_only  # check the files on disk, without any network
    python download_checkpoints.py --only best_64_5e-05_original_22000_0.864.pt

File names and SHA256 come from ``clip.WEIGHTS_FILES``; models/README.md shows the same table.
The checkpoints come from the CheXzero authors' Google Drive folder (through gdown), ViT-B-32.pt
over plain HTTPS. Each file is written under a temporary name in its folder (``NAME.part``), checked
against its SHA256 and only then renamed to ``NAME``, so a file under its final name is whole and
verified. A rerun skips the files that verify (without any request), continues a partial download
(an HTTP Range request; gdown's own resume on Google Drive) and replaces a file that does not
verify once the new copy does. Offline, place the files by hand (models/README.md) and check them
with --verify_only. A user error is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import http.client
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from tqdm import tqdm

import clip
import errors
import run_lock
from clip import WeightsFile
from errors import UserError

log = logging.getLogger("download_checkpoints")

OPENAI = "ViT-B-32.pt"
DEFAULT_DEST = clip.MODELS_DIR / "chexzero_weights"
BY_HAND = ("Offline, place the files by hand as models/README.md describes (names, SHA256, sources) "
           "and check them with python download_checkpoints.py --verify_only")

# fetch(source, part): make the temporary file ``part`` hold the whole file from ``source`` (a URL or a
# Google Drive file id), continuing from the bytes it already holds where the source allows it.
Fetch = Callable[[str, Path], None]


class DownloadError(UserError, RuntimeError):
    """A file could not be fetched: no network, the server refused, or the transfer broke off."""


class ChecksumError(DownloadError):
    """A fetched file whose SHA256 is not the one in ``clip.WEIGHTS_FILES``."""


def http_fetch(url: str, part: Path, timeout: float = 60.0) -> None:
    """Complete ``part`` from ``url`` over HTTP(S): continue after its bytes with a Range request,
    or write the whole file again when the server ignores Range. A transfer that ends before the
    announced length raises :class:`DownloadError` and keeps ``part`` for the next try."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # nothing after the bytes we hold: whole (or too long; the SHA256 tells)
            return
        raise DownloadError(f"{url}: the server answered HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        raise DownloadError(f"could not reach {url} ({reason})") from err
    with response:
        resumed = bool(start) and response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
            raise DownloadError(f"{url}: the server answered the Range request for byte {start} with "
                                f"{response.headers.get('Content-Range')!r}")
        if start and not resumed:
            log.info("%s: the server ignores Range requests; fetching it from the start", url)
        length = response.headers.get("Content-Length")
        offset = start if resumed else 0
        expected = offset + int(length) if length is not None and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as out, \
                tqdm(total=expected, initial=offset, unit="B", unit_scale=True, desc=part.stem, disable=None) as bar:
            while True:
                try:
                    block = response.read(1 << 20)
                except (OSError, http.client.HTTPException) as err:
                    raise DownloadError(f"{url}: the transfer broke off after {out.tell()} bytes ({err}); "
                                        "run again to resume it") from err
                if not block:
                    break
                try:
                    out.write(block)
                except OSError as err:  # e.g. the disk is full: errors.run_cli names the file
                    raise OSError(err.errno, err.strerror, str(part)) from err
                bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
    if expected is not None and size < expected:
        raise DownloadError(f"{url}: the server closed the connection after {size} of {expected} bytes; "
                            "run again to resume it")


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain: requests wraps e.g. "name not known" in two layers of retries."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return err


def drive_listing(folder_id: str) -> dict[str, str]:
    """File name -> Google Drive file id of the files in a public Drive folder (one listing request
    through gdown, nothing downloaded). Needs the network: no test covers it offline."""
    import gdown
    import requests
    try:
        files = gdown.download_folder(id=folder_id, skip_download=True, quiet=True, timeout=60)
    except requests.RequestException as err:
        raise DownloadError(f"could not list the Google Drive folder {folder_id} ({_root_cause(err)})") from err
    except gdown.exceptions.DownloadError as err:  # e.g. the folder is not public (gdown says so)
        raise DownloadError(f"could not list the Google Drive folder {folder_id} ({err})") from err
    return {Path(f.path).name: f.id for f in files}


def drive_fetch(file_id: str, part: Path) -> None:
    """Fetch Google Drive file ``file_id`` to ``part`` through gdown, which resumes its own partial
    file (``<part>XXXXXXXX.part`` beside it) and moves it to ``part`` only when whole. Needs the
    network: no test covers it offline."""
    import gdown
    import requests
    try:
        gdown.download(id=file_id, output=str(part), resume=True, quiet=False, timeout=60)
    except requests.RequestException as err:
        raise DownloadError(f"could not fetch Google Drive file {file_id} ({_root_cause(err)})") from err
    except gdown.exceptions.DownloadError as err:  # e.g. Drive's daily quota for the file (gdown says so)
        raise DownloadError(f"could not fetch Google Drive file {file_id} ({err})") from err


@dataclass(frozen=True)
class Transport:
    """Where the bytes come from: the Drive folder's listing and fetch for the checkpoints, HTTP(S)
    for files with a URL. Tests put a loopback server behind all three."""

    list_drive: Callable[[str], Mapping[str, str]] = drive_listing
    fetch_drive: Fetch = drive_fetch
    fetch_http: Fetch = http_fetch


def part_path(path: Path) -> Path:
    """The temporary name a download of ``path`` is written under, in the same folder."""
    return path.with_name(path.name + ".part")


def problem(path: Path, sha256: str) -> str | None:
    """What is wrong with the file at ``path`` (missing, not a file, another SHA256), or None if it verifies."""
    if not path.exists():
        partial = [p for p in path.parent.glob(path.name + ".part*") if p.is_file()] if path.parent.is_dir() else []
        return f"{path}: missing" + (" (a partial download is there: run download_checkpoints.py to finish it)"
                                     if partial else "")
    if not path.is_file():
        return f"{path}: not a file"
    actual = clip.file_sha256(path)
    return None if actual == sha256 else f"{path}: corrupt: SHA256 {actual}, expected {sha256}"


def fetch_verified(entry: WeightsFile, folder: Path, source: str, fetch: Fetch) -> None:
    """Fetch ``entry`` from ``source`` into ``folder/NAME``: into ``NAME.part`` first, continuing a
    partial one, then renamed once its SHA256 matches. A mismatch deletes the temporary file and
    raises :class:`ChecksumError`; a file already under the final name is replaced only then."""
    final = folder / entry.name
    part = part_path(final)
    log.info("%s: fetching%s", final, " (resuming a partial download)" if part.exists() else "")
    try:
        fetch(source, part)
    except DownloadError as err:
        raise DownloadError(f"{entry.name}: {err}. {BY_HAND}") from err
    actual = clip.file_sha256(part)
    if actual != entry.sha256:
        part.unlink()
        raise ChecksumError(f"{final}: the downloaded file's SHA256 is {actual}, expected {entry.sha256}; the "
                            "temporary file was deleted. Run again; if it happens again, the source holds another "
                            "file than models/README.md lists")
    part.replace(final)
    log.info("%s: verified (SHA256 %s)", final, actual)


def folder_of(entry: WeightsFile, dest: Path, openai_dest: Path) -> Path:
    """Drive checkpoints go to ``dest``, files with a URL (OpenAI's) to ``openai_dest``."""
    return dest if entry.url is None else openai_dest


def download(entries: Sequence[WeightsFile], dest: Path, openai_dest: Path, transport: Transport = Transport(),
             drive_folder: str = clip.CHEXZERO_DRIVE_FOLDER) -> list[Path]:
    """Fetch the ``entries`` that are not on disk verified; return every entry's verified path.

    Verified files are skipped without any request (the Drive folder is listed only when a
    checkpoint is missing). The first file that cannot be fetched or verified stops the run
    with a :class:`DownloadError`; the files fetched before it stay, verified.
    """
    todo = []
    for entry in entries:
        path = folder_of(entry, dest, openai_dest) / entry.name
        issue = problem(path, entry.sha256)
        if issue is None:
            log.info("%s: already there and verified", path)
        else:
            if path.exists():
                log.warning("%s; fetching it again (the file is replaced once the new copy verifies)", issue)
            todo.append(entry)
    drive_ids: Mapping[str, str] = {}
    if any(entry.url is None for entry in todo):
        try:
            drive_ids = transport.list_drive(drive_folder)
        except DownloadError as err:
            raise DownloadError(f"{err}. {BY_HAND}") from err
    for entry in todo:
        folder = folder_of(entry, dest, openai_dest)
        if entry.url is not None:
            source, fetch = entry.url, transport.fetch_http
        elif entry.name in drive_ids:
            source, fetch = drive_ids[entry.name], transport.fetch_drive
        else:
            raise DownloadError(f"{entry.name}: the Google Drive folder {drive_folder} lists no such file (it holds: "
                                f"{', '.join(sorted(drive_ids)) or 'nothing'}). {BY_HAND}")
        with run_lock.hold(folder / ".download", "downloading checkpoints"):
            fetch_verified(entry, folder, source, fetch)
    return [folder_of(entry, dest, openai_dest) / entry.name for entry in entries]


def verify(entries: Sequence[WeightsFile], dest: Path, openai_dest: Path) -> list[str]:
    """One line for each entry that is missing or corrupt on disk (no network); empty if all verify."""
    issues = [problem(folder_of(entry, dest, openai_dest) / entry.name, entry.sha256) for entry in entries]
    return [issue for issue in issues if issue is not None]


def _selection(p: argparse.ArgumentParser, args: argparse.Namespace, files: Mapping[str, WeightsFile]) -> list[str]:
    """The file names the flags ask for: --only's (each name with or without .pt), else every
    Drive checkpoint; --openai adds OpenAI's ViT-B/32."""
    if args.only:
        names = []
        for item in (name.strip() for value in args.only for name in value.split(",")):
            name = f"{item}.pt" if item not in files and f"{item}.pt" in files else item
            if name not in files:
                p.error(f"--only {item!r}: no such file; valid names: {', '.join(files)}")
            names.append(name)
    else:
        names = [name for name, entry in files.items() if entry.url is None]
    if args.openai:
        names.append(OPENAI)
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None, files: Mapping[str, WeightsFile] | None = None,
         transport: Transport = Transport()) -> int:
    """Fetch (or with --verify_only, check) the selected weights files; 0 when all verify.

    ``files`` (default ``clip.WEIGHTS_FILES``) and ``transport`` let tests serve small files from a
    loopback server. Problems raise :class:`errors.UserError` (one line under ``errors.run_cli``).
    """
    files = clip.WEIGHTS_FILES if files is None else files
    p = errors.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                   help="folder of the CheXzero checkpoints (default: models/chexzero_weights)")
    p.add_argument("--openai", action="store_true", help=f"also OpenAI's {OPENAI} (to train from CLIP's weights)")
    p.add_argument("--openai_dest", type=Path, default=clip.MODELS_DIR,
                   help=f"folder of {OPENAI}, where clip.load looks first (default: models)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="only these files (repeat the flag or give a comma list; names as in models/README.md, "
                        ".pt optional); --openai still adds ViT-B-32.pt")
    p.add_argument("--verify_only", action="store_true",
                   help="check the files on disk against their SHA256, without any network; exit 2 if any is "
                        "missing or corrupt")
    args = p.parse_args(argv)
    entries = [files[name] for name in _selection(p, args, files)]
    if args.verify_only:
        issues = verify(entries, args.dest, args.openai_dest)
        for issue in issues:
            print(issue, file=sys.stderr)
        if issues:
            raise UserError(f"{len(issues)} of {len(entries)} weights files missing or corrupt; run python "
                            "download_checkpoints.py (with the same flags, without --verify_only) to fetch them, or "
                            "place them by hand as models/README.md describes")
    else:
        download(entries, args.dest, args.openai_dest, transport)
    folders = sorted({str(folder_of(entry, args.dest, args.openai_dest)) for entry in entries})
    print(f"{len(entries)} weights files verified in {', '.join(folders)}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    raise SystemExit(errors.run_cli(main))
