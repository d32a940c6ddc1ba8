"""download_checkpoints.py: atomic, verified, resumable downloads and an offline --verify_only,
against small files served from a loopback HTTP server (with Range) that stands in for Google
Drive and the OpenAI URL. No test touches the internet; the gdown calls themselves are not run."""
from __future__ import annotations

import hashlib
import random
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

import clip
import download_checkpoints as dc
import errors
from clip import WeightsFile
from conftest import ROOT, run_python

SIZE = 200_000


class Loopback:
    """What the server holds and how it misbehaves, and every request it got (name, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.corrupt: set[str] = set()        # serve other bytes of the same length
        self.truncate: set[str] = set()       # announce the whole length, send half, close (once)
        self.ignore_range: set[str] = set()   # answer 200 with the whole file to a Range request
        self.requests: list[tuple[str, str | None]] = []
        self.listings = 0
        self.url = ""

    def listing(self, folder_id: str) -> dict[str, str]:
        """The Drive folder's listing: every file the server holds, by name -> its URL."""
        self.listings += 1
        return {name: f"{self.url}/{name}" for name in self.files}

    def transport(self) -> dc.Transport:
        return dc.Transport(list_drive=self.listing, fetch_drive=dc.http_fetch, fetch_http=dc.http_fetch)


def handler(state: Loopback) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            name, wanted = self.path.lstrip("/"), self.headers.get("Range")
            state.requests.append((name, wanted))
            if name not in state.files:
                self.send_error(404)
                return
            data = state.files[name]
            if name in state.corrupt:
                data = bytes(b ^ 0xFF for b in data)
            start = 0
            if wanted and name not in state.ignore_range:
                start = int(wanted.removeprefix("bytes=").rstrip("-"))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name in state.truncate:
                state.truncate.discard(name)
                body = body[:len(body) // 2]
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[Loopback]:
    state = Loopback()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def payload(seed: int) -> bytes:
    return random.Random(seed).randbytes(SIZE)


def table(server: Loopback, names: tuple[str, ...] = ("ckpt_a.pt", "ckpt_b.pt")) -> dict[str, WeightsFile]:
    """Small stand-ins for the table: Drive checkpoints ``names`` and an OpenAI file with a URL."""
    files = {}
    for seed, name in enumerate((*names, dc.OPENAI)):
        server.files[name] = payload(seed)
        url = f"{server.url}/{name}" if name == dc.OPENAI else None
        files[name] = WeightsFile(name, hashlib.sha256(server.files[name]).hexdigest(), url)
    return files


def cli(tmp_path: Path, server: Loopback, files: dict[str, WeightsFile], *flags: str) -> int:
    argv = ["--dest", str(tmp_path / "weights"), "--openai_dest", str(tmp_path / "models"), *flags]
    return errors.run_cli(lambda args: dc.main(args, files=files, transport=server.transport()), argv)


def test_a_good_download_is_verified_and_renamed_with_nothing_temporary_left(tmp_path, server, capsys) -> None:
    files = table(server)
    assert cli(tmp_path, server, files, "--openai") == 0
    assert (tmp_path / "weights" / "ckpt_a.pt").read_bytes() == server.files["ckpt_a.pt"]
    assert (tmp_path / "weights" / "ckpt_b.pt").read_bytes() == server.files["ckpt_b.pt"]
    assert (tmp_path / "models" / dc.OPENAI).read_bytes() == server.files[dc.OPENAI]
    assert not list(tmp_path.rglob("*.part"))
    assert "3 weights files verified" in capsys.readouterr().out
    assert sorted(name for name, _ in server.requests) == ["ViT-B-32.pt", "ckpt_a.pt", "ckpt_b.pt"]


def test_a_rerun_skips_verified_files_without_any_request(tmp_path, server) -> None:
    files = table(server)
    assert cli(tmp_path, server, files, "--openai") == 0
    server.requests.clear()
    server.listings = 0
    assert cli(tmp_path, server, files, "--openai") == 0
    assert server.requests == [] and server.listings == 0


def test_a_corrupt_download_is_refused_and_nothing_is_left_under_the_final_name(tmp_path, server, capsys) -> None:
    files = table(server)
    server.corrupt.add("ckpt_a.pt")
    assert cli(tmp_path, server, files, "--only", "ckpt_a.pt") == errors.USER_ERROR_EXIT
    err = capsys.readouterr().err
    actual = hashlib.sha256(bytes(b ^ 0xFF for b in server.files["ckpt_a.pt"])).hexdigest()
    assert "ckpt_a.pt" in err and f"SHA256 is {actual}, expected {files['ckpt_a.pt'].sha256}" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list((tmp_path / "weights").glob("ckpt_a.pt*")), "neither the final name nor the temporary file"


def test_a_truncated_download_is_an_error_and_the_rerun_resumes_it_with_range(tmp_path, server, capsys) -> None:
    files = table(server)
    server.truncate.add("ckpt_a.pt")
    assert cli(tmp_path, server, files, "--only", "ckpt_a.pt") == errors.USER_ERROR_EXIT
    assert f"closed the connection after {SIZE // 2} of {SIZE} bytes" in capsys.readouterr().err
    final = tmp_path / "weights" / "ckpt_a.pt"
    assert not final.exists() and dc.part_path(final).stat().st_size == SIZE // 2
    server.requests.clear()
    assert cli(tmp_path, server, files, "--only", "ckpt_a.pt") == 0
    assert server.requests == [("ckpt_a.pt", f"bytes={SIZE // 2}-")]
    assert final.read_bytes() == server.files["ckpt_a.pt"] and not dc.part_path(final).exists()


def test_an_interrupted_download_resumes_from_its_partial_file_and_verifies(tmp_path, server) -> None:
    files = table(server)
    part = dc.part_path(tmp_path / "models" / dc.OPENAI)
    part.parent.mkdir()
    part.write_bytes(server.files[dc.OPENAI][:12_345])
    assert cli(tmp_path, server, files, "--only", dc.OPENAI) == 0
    assert server.requests == [(dc.OPENAI, "bytes=12345-")]
    assert (tmp_path / "models" / dc.OPENAI).read_bytes() == server.files[dc.OPENAI] and not part.exists()


def test_a_server_that_ignores_range_sends_the_whole_file_and_it_is_rewritten(tmp_path, server) -> None:
    files = table(server)
    server.ignore_range.add(dc.OPENAI)
    part = dc.part_path(tmp_path / "models" / dc.OPENAI)
    part.parent.mkdir()
    part.write_bytes(b"x" * 999)                     # not even a prefix of the file: it must not survive
    assert cli(tmp_path, server, files, "--only", dc.OPENAI) == 0
    assert (tmp_path / "models" / dc.OPENAI).read_bytes() == server.files[dc.OPENAI]


def test_a_corrupt_file_on_disk_is_replaced_by_a_verified_download(tmp_path, server) -> None:
    files = table(server)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "ckpt_b.pt").write_bytes(b"damaged")
    assert cli(tmp_path, server, files, "--only", "ckpt_b") == 0      # the name without .pt works too
    assert (tmp_path / "weights" / "ckpt_b.pt").read_bytes() == server.files["ckpt_b.pt"]


def test_verify_only_names_each_missing_or_corrupt_file_without_any_network(tmp_path, server, capsys) -> None:
    files = table(server, names=("ckpt_a.pt", "ckpt_b.pt", "ckpt_c.pt"))
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "ckpt_a.pt").write_bytes(server.files["ckpt_a.pt"])
    (weights / "ckpt_b.pt").write_bytes(server.files["ckpt_b.pt"][:-1] + b"?")
    dc.part_path(weights / "ckpt_c.pt").write_bytes(b"half")
    assert cli(tmp_path, server, files, "--verify_only") == errors.USER_ERROR_EXIT
    lines = capsys.readouterr().err.strip().splitlines()
    actual = hashlib.sha256(server.files["ckpt_b.pt"][:-1] + b"?").hexdigest()
    assert lines[0] == f"{weights / 'ckpt_b.pt'}: corrupt: SHA256 {actual}, expected {files['ckpt_b.pt'].sha256}"
    assert lines[1].startswith(f"{weights / 'ckpt_c.pt'}: missing (a partial download is there")
    assert "error: 2 of 3 weights files missing or corrupt" in lines[2] and len(lines) == 3
    assert server.requests == [] and server.listings == 0
    assert (weights / "ckpt_b.pt").exists(), "--verify_only deletes nothing"


def test_verify_only_from_the_command_line_refuses_a_corrupt_released_checkpoint(tmp_path) -> None:
    name = "best_64_5e-05_original_22000_0.864.pt"
    (tmp_path / name).write_bytes(b"not the released weights")
    done = run_python("download_checkpoints.py", "--verify_only", "--only", name, "--dest", str(tmp_path))
    assert done.returncode == errors.USER_ERROR_EXIT
    assert f"{tmp_path / name}: corrupt: SHA256 {hashlib.sha256(b'not the released weights').hexdigest()}, " \
           f"expected {clip.WEIGHTS_FILES[name].sha256}" in done.stderr
    assert "1 of 1 weights files missing or corrupt" in done.stderr and "Traceback" not in done.stderr


def test_an_unknown_only_name_is_refused_listing_the_valid_ones(tmp_path, server, capsys) -> None:
    files = table(server)
    with pytest.raises(SystemExit) as exit_:        # argparse's exit, status 2 like any user error
        cli(tmp_path, server, files, "--only", "ckpt_a.pt,nope.pt")
    assert exit_.value.code == errors.USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert "--only 'nope.pt': no such file; valid names: ckpt_a.pt, ckpt_b.pt, ViT-B-32.pt" in err
    assert server.requests == [] and not (tmp_path / "weights").exists()


def test_offline_the_error_says_what_failed_and_how_to_place_the_files_by_hand(tmp_path, server, capsys) -> None:
    with socket.socket() as probe:                   # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    files = {dc.OPENAI: WeightsFile(dc.OPENAI, "0" * 64, f"{closed}/{dc.OPENAI}")}
    assert cli(tmp_path, server, files, "--only", dc.OPENAI) == errors.USER_ERROR_EXIT
    err = capsys.readouterr().err
    assert f"{dc.OPENAI}: could not reach {closed}/{dc.OPENAI}" in err and "models/README.md" in err
    assert len(err.strip().splitlines()) == 1


def test_a_checkpoint_missing_from_the_drive_listing_is_named(tmp_path, server, capsys) -> None:
    files = table(server)
    files["ckpt_z.pt"] = WeightsFile("ckpt_z.pt", "0" * 64)
    assert cli(tmp_path, server, files, "--only", "ckpt_z.pt") == errors.USER_ERROR_EXIT
    assert "ckpt_z.pt: the Google Drive folder" in capsys.readouterr().err and server.requests == []


def test_models_readme_shows_the_same_table_as_the_code() -> None:
    readme = (ROOT / "models" / "README.md").read_text()
    rows = re.findall(r"^\| (\S+\.pt) \| ([0-9a-f]{64}) \| (.+) \|$", readme, flags=re.MULTILINE)
    shown = {name: (sha256, re.search(r"<(https://\S+)>", source)) for name, sha256, source in rows}
    assert {name: (sha256, url and url.group(1)) for name, (sha256, url) in shown.items()} == \
           {f.name: (f.sha256, f.url) for f in clip.WEIGHTS_FILES.values()}
    assert len(clip.CHEXZERO_CHECKPOINTS) == 10
    assert clip.CHEXZERO_DRIVE_FOLDER in readme
    vit = clip.WEIGHTS_FILES[dc.OPENAI]
    assert clip._MODELS["ViT-B/32"] == vit.url and vit.url.split("/")[-2] == vit.sha256
