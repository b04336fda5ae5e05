"""URL downloads against a real HTTP server on 127.0.0.1: progress, resume, checksums, offline, atomicity."""

from __future__ import annotations

import hashlib
import os

import pytest
from http_files import FileServer

from medhub.errors import ChecksumError, DownloadError, OfflineError
from medhub.hub import download_url


@pytest.fixture
def payload(tmp_path):
    """A 3 MiB file (several download chunks) in a served folder, with its sha256."""
    folder = tmp_path / "served"
    folder.mkdir()
    data = os.urandom(3 * (1 << 20) + 123)
    (folder / "weights.pth").write_bytes(data)
    return folder, data, hashlib.sha256(data).hexdigest()


def test_download_verifies_and_shows_progress(payload, tmp_path, capsys):
    folder, data, digest = payload
    dest = tmp_path / "cache" / "weights.pth"
    with FileServer(folder) as server:
        path = download_url(server.url("weights.pth"), dest, sha256=digest, progress=True)
    assert path == dest and path.read_bytes() == data
    assert not dest.with_name("weights.pth.part").exists()
    err = capsys.readouterr().err
    assert "weights.pth" in err and "3.00M" in err  # tqdm bar with the byte total


def test_cached_file_is_reused_without_network(payload, tmp_path):
    folder, data, digest = payload
    dest = tmp_path / "cache" / "weights.pth"
    with FileServer(folder) as server:
        download_url(server.url("weights.pth"), dest, sha256=digest, progress=False)
        download_url(server.url("weights.pth"), dest, sha256=digest, progress=False)
        assert len(server.requests) == 1
    # offline: the cached file is served, a missing one is named in the error
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        assert download_url("http://127.0.0.1:9/weights.pth", dest, sha256=digest).read_bytes() == data
        with pytest.raises(OfflineError, match=r"other\.pth is not cached .*unset HF_HUB_OFFLINE"):
            download_url("http://127.0.0.1:9/other.pth", tmp_path / "cache" / "other.pth")
    finally:
        del os.environ["HF_HUB_OFFLINE"]


def test_broken_download_resumes_with_range(payload, tmp_path):
    folder, data, digest = payload
    dest = tmp_path / "cache" / "weights.pth"
    part = dest.with_name("weights.pth.part")
    with FileServer(folder) as server:
        server.cut["weights.pth"] = 1_500_000
        with pytest.raises(DownloadError, match="run the same call again to resume"):
            download_url(server.url("weights.pth"), dest, sha256=digest, progress=False)
        assert not dest.exists()
        assert part.stat().st_size == 1_500_000
        download_url(server.url("weights.pth"), dest, sha256=digest, progress=False)
        assert server.requests[-1] == ("weights.pth", "bytes=1500000-")
    assert dest.read_bytes() == data and not part.exists()


def test_truncated_part_file_resumes(payload, tmp_path):
    """A .part left by a killed process (no error raised at all) is completed, not restarted."""
    folder, data, digest = payload
    dest = tmp_path / "cache" / "weights.pth"
    dest.parent.mkdir(parents=True)
    dest.with_name("weights.pth.part").write_bytes(data[:777])
    with FileServer(folder) as server:
        download_url(server.url("weights.pth"), dest, sha256=digest, progress=False)
        assert server.requests == [("weights.pth", "bytes=777-")]
    assert dest.read_bytes() == data


def test_server_without_range_support_restarts(payload, tmp_path):
    folder, data, digest = payload
    dest = tmp_path / "cache" / "weights.pth"
    dest.parent.mkdir(parents=True)
    dest.with_name("weights.pth.part").write_bytes(b"garbage that must not be kept")
    with FileServer(folder, ranges=False) as server:
        download_url(server.url("weights.pth"), dest, sha256=digest, progress=False)
    assert dest.read_bytes() == data


def test_checksum_mismatch_deletes_and_caches_nothing(payload, tmp_path):
    folder, _, digest = payload
    wrong = hashlib.sha256(b"something else").hexdigest()
    dest = tmp_path / "cache" / "weights.pth"
    with FileServer(folder) as server, pytest.raises(ChecksumError, match="sha256 mismatch") as caught:
        download_url(server.url("weights.pth"), dest, sha256=wrong, progress=False)
    assert isinstance(caught.value, OSError) and caught.value.actual == digest
    assert sorted(p.name for p in dest.parent.iterdir() if not p.name.endswith(".lock")) == []


def test_tampered_cached_file_is_removed(payload, tmp_path):
    folder, data, digest = payload
    dest = tmp_path / "cache" / "weights.pth"
    with FileServer(folder) as server:
        download_url(server.url("weights.pth"), dest, sha256=digest, progress=False)
        dest.write_bytes(data[:-1] + b"\x00")  # someone edits the cached file
        with pytest.raises(ChecksumError, match="was deleted"):
            download_url(server.url("weights.pth"), dest, sha256=digest, progress=False)
        assert not dest.exists()
        download_url(server.url("weights.pth"), dest, sha256=digest, progress=False)  # a clean refetch
    assert dest.read_bytes() == data


def test_http_errors_are_one_line(tmp_path):
    (tmp_path / "served").mkdir()
    with FileServer(tmp_path / "served") as server, pytest.raises(DownloadError, match="HTTP 404") as caught:
        download_url(server.url("missing.pth"), tmp_path / "x.pth", progress=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "x.pth").exists()
