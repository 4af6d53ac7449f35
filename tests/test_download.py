"""The COCO downloader against a local HTTP server on 127.0.0.1 serving a small archive."""

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from detutils.data import download
from detutils.data.coco import find_split
from detutils.data.download import (
    Archive,
    ChecksumError,
    DownloadError,
    download_coco2017,
    download_file,
    extract_zip,
)


def _zip(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# A miniature COCO 2017: val images and the annotation archive, as the real zips lay them out.
VAL_ZIP = _zip({f"val2017/{i:012d}.jpg": bytes(range(256)) * 40 for i in range(3)})
ANNOTATIONS_ZIP = _zip({"annotations/instances_val2017.json": b'{"images": []}'})
FILES = {"/zips/val2017.zip": VAL_ZIP, "/annotations/annotations_trainval2017.zip": ANNOTATIONS_ZIP}


def _archives(files=FILES):
    def archive(path):
        data = files[f"/{path}"]
        return Archive(path, len(data), hashlib.md5(data).hexdigest())

    return {
        "val": archive("zips/val2017.zip"),
        "annotations": archive("annotations/annotations_trainval2017.zip"),
    }


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with HTTP ranges; can cut the first response of a path."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and not server.ignore_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0]) - server.range_shift
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
        cut = server.cut_after.pop(self.path, None)
        if cut is not None:  # announce everything, send a part, hang up
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = dict(FILES)
    httpd.requests = []
    httpd.cut_after = {}
    httpd.ignore_range = False
    httpd.range_shift = 0  # a faulty server answers a range from this many bytes earlier
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _fetch(root, server, archives=None, **kwargs):
    return download_coco2017(
        root,
        ("val",),
        base_url=server.url,
        archives=archives or _archives(),
        progress=False,
        backoff=0.0,
        **kwargs,
    )


def test_clean_download_checks_and_extracts(tmp_path, server):
    root = _fetch(tmp_path / "coco", server)
    image_dir, ann_file = find_split(root, "val")  # the COCO 2017 layout
    assert sorted(p.name for p in image_dir.iterdir()) == [f"{i:012d}.jpg" for i in range(3)]
    assert (image_dir / "000000000001.jpg").read_bytes() == bytes(range(256)) * 40
    assert ann_file.read_text() == '{"images": []}'
    assert not (root / "val2017.zip").exists()  # archives removed after extraction
    assert (root / "val2017.zip.extracted").is_file()
    assert [r[1] for r in server.requests] == [None, None]  # no ranges needed

    server.requests.clear()
    _fetch(root, server)  # a second run finds everything done
    assert server.requests == []


def test_keep_archives(tmp_path, server):
    root = _fetch(tmp_path, server, keep_archives=True)
    assert (root / "val2017.zip").read_bytes() == VAL_ZIP


def test_cut_connection_is_resumed_with_a_range(tmp_path, server):
    server.cut_after["/zips/val2017.zip"] = 1000
    root = _fetch(tmp_path, server)
    val_requests = [r for r in server.requests if r[0] == "/zips/val2017.zip"]
    assert val_requests == [("/zips/val2017.zip", None), ("/zips/val2017.zip", "bytes=1000-")]
    assert len(list((root / "val2017").iterdir())) == 3


def test_interrupted_part_file_is_resumed(tmp_path, server):
    # A previous run stopped after 700 bytes: only the rest is fetched.
    (tmp_path / "val2017.zip.part").write_bytes(VAL_ZIP[:700])
    _fetch(tmp_path, server, keep_archives=True)
    assert ("/zips/val2017.zip", "bytes=700-") in server.requests
    assert (tmp_path / "val2017.zip").read_bytes() == VAL_ZIP
    assert not (tmp_path / "val2017.zip.part").exists()


def test_server_ignoring_ranges_sends_the_whole_file_again(tmp_path, server):
    server.ignore_range = True
    (tmp_path / "val2017.zip.part").write_bytes(VAL_ZIP[:700])
    _fetch(tmp_path, server, keep_archives=True)
    assert (tmp_path / "val2017.zip").read_bytes() == VAL_ZIP


def test_a_range_from_the_wrong_offset_is_refused(tmp_path, server):
    server.range_shift = 100
    (tmp_path / "val2017.zip.part").write_bytes(VAL_ZIP[:700])
    with pytest.raises(DownloadError, match="asked for bytes 700- but got 'bytes 600-"):
        _fetch(tmp_path, server)
    assert not (tmp_path / "val2017").exists()


def test_corrupted_file_is_reported_and_not_extracted(tmp_path, server):
    corrupted = bytearray(VAL_ZIP)
    corrupted[100] ^= 0xFF  # same size, one byte changed
    server.files["/zips/val2017.zip"] = bytes(corrupted)
    with pytest.raises(ChecksumError) as error:
        _fetch(tmp_path, server)  # the table holds the MD5 of the good archive
    message = str(error.value)
    assert "val2017.zip" in message and hashlib.md5(VAL_ZIP).hexdigest() in message
    assert not (tmp_path / "val2017").exists()  # nothing extracted
    assert not (tmp_path / "val2017.zip").exists() and not (tmp_path / "val2017.zip.part").exists()


def test_wrong_size_is_reported_before_the_transfer(tmp_path, server):
    archives = _archives()
    archives["val"] = Archive("zips/val2017.zip", len(VAL_ZIP) + 5, archives["val"].md5)
    with pytest.raises(DownloadError, match=f"has {len(VAL_ZIP)} bytes, expected"):
        _fetch(tmp_path, server, archives=archives)
    assert not (tmp_path / "val2017").exists()


def test_missing_file_is_an_http_error_naming_the_url(tmp_path, server):
    del server.files["/zips/val2017.zip"]
    with pytest.raises(DownloadError, match="val2017.zip: HTTP 404"):
        _fetch(tmp_path, server)


def test_gives_up_after_the_retries(tmp_path, server):
    url = f"{server.url}/zips/val2017.zip"

    class AlwaysCut(dict):
        def pop(self, key, default=None):
            return 10 if key == "/zips/val2017.zip" else default

    server.cut_after = AlwaysCut()
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        download_file(url, tmp_path / "v.zip", len(VAL_ZIP), retries=2, backoff=0, progress=False)
    assert (tmp_path / "v.zip.part").stat().st_size == 30  # kept for the next run to resume


def test_unknown_split_is_refused(tmp_path, server):
    with pytest.raises(ValueError, match="test"):
        download_coco2017(tmp_path, ("test",), base_url=server.url, archives=_archives())


def test_zip_members_cannot_escape_the_root(tmp_path):
    evil = tmp_path / "evil.zip"
    evil.write_bytes(_zip({"../outside.txt": b"no"}))
    with pytest.raises(DownloadError, match="outside"):
        extract_zip(evil, tmp_path / "root")
    assert not (tmp_path / "outside.txt").exists()


def test_not_a_zip_is_reported(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(DownloadError, match="fake.zip is not a valid zip"):
        extract_zip(tmp_path / "fake.zip", tmp_path)


def test_command_line_reads_the_base_url_from_the_environment(tmp_path, server, monkeypatch):
    monkeypatch.setattr(download, "COCO2017_ARCHIVES", _archives())
    monkeypatch.setenv(download.BASE_URL_ENV, server.url)
    argv = ["coco2017", "--root", str(tmp_path), "--split", "val", "--no-progress"]
    assert download.main(argv) == 0
    assert (tmp_path / "annotations" / "instances_val2017.json").is_file()


def test_command_line_reports_a_failure(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setattr(download, "COCO2017_ARCHIVES", _archives())
    del server.files["/zips/val2017.zip"]
    argv = ["coco2017", "--root", str(tmp_path), "--split", "val", "--base-url", server.url]
    assert download.main([*argv, "--no-progress"]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_official_table_has_sizes_and_checksums():
    table = download.COCO2017_ARCHIVES
    assert table["val"].path == "zips/val2017.zip" and table["val"].size == 815_585_330
    assert table["train"].path == "zips/train2017.zip" and table["train"].size == 19_336_861_798
    assert table["annotations"].name == "annotations_trainval2017.zip"
    assert all(len(archive.md5) == 32 for archive in table.values())
