"""Output image files: metadata written into PNG, JPEG and WebP without touching the pixels, thumbnails (WebP,
256 px longest side), the paged static gallery, the media store's keys and URLs, and the media settings' errors.
Pure logic on real files made by Pillow; the worker and a real S3 server are in test_object_storage.py."""

from __future__ import annotations

import importlib
import importlib.util
import io
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from PIL import Image

from tests.support.mjq import mjq
from worker.media.metadata import XMP_NS, embed, image_metadata
from worker.media.storage import MediaStore, UploadError, media_store
from worker.media.thumbs import make_thumbnail
from worker.reports.gallery import write_gallery
from worker.settings import SettingsError, load_settings

META = {"prompt": 'a café ☕ "quoted" <b> & more', "job_id": "j-1", "batch_id": "night", "mjqueue_version": "0.1.0"}


def encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (40, 24), **options: Any) -> bytes:
    image = Image.new(mode, size, (200, 30, 60, 128) if mode == "RGBA" else (200, 30, 60))
    image.putpixel((3, 3), (0, 255, 0, 255) if mode == "RGBA" else (0, 255, 0))
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def xmp_values(info: Mapping[Any, Any]) -> dict[str, str]:
    """The mjq:* attributes of an XMP packet read back by Pillow (``info["xmp"]``)."""
    root = ElementTree.fromstring(info["xmp"])
    description = root.find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    assert description is not None
    return {k.removeprefix("{" + XMP_NS + "}"): v for k, v in description.attrib.items() if k.startswith("{" + XMP_NS)}


@pytest.mark.parametrize(
    ("fmt", "mime", "mode", "options"),
    [
        ("PNG", "image/png", "RGB", {}),
        ("PNG", "image/png", "RGBA", {}),
        ("JPEG", "image/jpeg", "RGB", {"quality": 90}),
        ("WEBP", "image/webp", "RGB", {"quality": 90}),  # simple lossy: gets a VP8X header
        ("WEBP", "image/webp", "RGBA", {"lossless": True}),  # simple lossless with alpha
        ("WEBP", "image/webp", "RGB", {"quality": 90, "exif": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"}),  # VP8X
    ],
)
def test_metadata_is_written_into_the_file_and_the_pixels_stay(fmt: str, mime: str, mode: str, options: Any) -> None:
    original = encoded(fmt, mode, **options)
    tagged = embed(original, mime, META, (40, 24))
    assert tagged != original
    with Image.open(io.BytesIO(original)) as before, Image.open(io.BytesIO(tagged)) as after:
        assert after.format == fmt and after.size == before.size and after.mode == before.mode
        assert after.tobytes() == before.tobytes()  # inserted, never re-encoded
        if fmt == "PNG":
            assert dict(after.text) == META  # type: ignore[attr-defined]
        else:
            assert xmp_values(after.info) == META
    if fmt == "JPEG":
        assert tagged[:2] == b"\xff\xd8" and tagged[2:4] == b"\xff\xe0"  # JFIF's APP0 stays first


def test_an_odd_file_keeps_its_bytes() -> None:
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20
    assert embed(broken, "image/png", META, (1, 1)) == broken
    gif = encoded("GIF")
    assert embed(gif, "image/gif", META, (40, 24)) == gif


def test_image_metadata_of_a_job_leaves_out_what_is_unknown() -> None:
    job = {"job_id": "j", "prompt": "p", "final_prompt": "", "upstream_id": "u1", "upstream": "acme",
           "parent_job": None, "batch_id": "b", "extra": {"seed": 1234}}
    meta = image_metadata(job)
    assert meta["seed"] == "1234" and meta["upstream"] == "acme" and meta["mjqueue_version"]
    assert "final_prompt" not in meta and "parent_job" not in meta
    assert "seed" not in image_metadata({"job_id": "j", "extra": {}})


@pytest.mark.parametrize(
    ("size", "mode", "expected"),
    [((1024, 768), "RGB", (256, 192)), ((300, 900), "RGB", (85, 256)), ((640, 640), "RGBA", (256, 256)),
     ((100, 60), "RGB", (100, 60))],
)
def test_thumbnails_are_webp_256_px_on_the_longest_side(
    tmp_path: Path, size: tuple[int, int], mode: str, expected: tuple[int, int]
) -> None:
    image = tmp_path / "b" / "j.png"
    image.parent.mkdir()
    image.write_bytes(encoded("PNG", mode, size))
    thumb = make_thumbnail(image)
    assert thumb == tmp_path / "b" / "thumbs" / "j.webp"
    with Image.open(thumb) as small:
        assert small.format == "WEBP" and small.size == expected and ("A" in small.getbands()) == (mode == "RGBA")


def test_an_unreadable_image_gets_no_thumbnail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert make_thumbnail(bad) is None


def _jobs(tmp_path: Path) -> list[dict[str, Any]]:
    """Five families: sizes 1, 3 (a grid with two upscales), 1, 2, 1 = 8 cards; one failure, one old download
    without a thumbnail."""
    jobs: list[dict[str, Any]] = []
    media = tmp_path / "media" / "night"
    media.mkdir(parents=True)
    for n, children in enumerate([0, 2, 0, 1, 0]):
        for c in range(children + 1):
            job_id = f"r{n}" if c == 0 else f"r{n}-u{c}"
            image = media / f"{job_id}.png"
            image.write_bytes(encoded("PNG", size=(512, 512)))
            job = {"job_id": job_id, "status": "succeeded", "prompt": f"prompt {n}", "created_at": n * 10 + c,
                   "image_path": str(image), "parent_job": f"r{n}" if c else None, "batch_id": "night"}
            if job_id != "r2":  # r2: downloaded before thumbnails existed
                job["thumb_path"] = str(make_thumbnail(image))
            jobs.append(job)
    jobs.append({"job_id": "bad", "status": "failed", "fail_reason": "banned prompt", "created_at": 99})
    return jobs


def test_the_static_gallery_is_paged_with_thumbnails(tmp_path: Path) -> None:
    jobs = _jobs(tmp_path)
    out = tmp_path / "out" / "gallery.html"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gallery-9.html").write_text("left from a bigger run")
    assert write_gallery("night", jobs, out, {"succeeded": 8, "failed": 1}, per_page=3) == out
    pages = sorted(p.name for p in out.parent.glob("gallery*.html"))
    assert pages == ["gallery-2.html", "gallery-3.html", "gallery-4.html", "gallery.html"]
    seen: dict[str, str] = {}
    for name in pages:
        html = (out.parent / name).read_text(encoding="utf-8")
        cards = re.findall(r'data-job="([^"]+)"', html)
        assert len(cards) <= 3 or name == "gallery-2.html"  # the grid with its two upscales: one family, 3 cards
        seen.update(dict.fromkeys(cards, name))
        for src in re.findall(r'<img src="([^"]+)"', html):
            assert src.endswith(".webp") and (out.parent / src).is_file()  # thumbnails, relative to the page
        assert ("page " in html and 'href="gallery.html"' in html) or name == "gallery.html"
    assert set(seen) == {j["job_id"] for j in jobs}
    assert seen["r1"] == seen["r1-u1"] == seen["r1-u2"] and seen["r3"] == seen["r3-u1"]  # families stay together
    first = out.read_text(encoding="utf-8")
    assert 'rel="next" href="gallery-2.html"' in first and 'rel="prev"' not in first
    assert (tmp_path / "media" / "night" / "thumbs" / "r2.webp").is_file()  # made for the old download
    assert "banned prompt" in (out.parent / seen["bad"]).read_text(encoding="utf-8")
    write_gallery("night", jobs, out, per_page=100)  # fewer pages now: the extra ones go
    assert sorted(p.name for p in out.parent.glob("gallery*.html")) == ["gallery.html"]
    assert "page 1 of" not in out.read_text(encoding="utf-8")


def test_the_media_store_keys_urls_and_copy(tmp_path: Path) -> None:
    media = tmp_path / "media"
    image = media / "night" / "a b.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x")
    local = MediaStore(media, media.resolve().as_uri(), "")
    assert not local.remote and local.public_url("k") is None
    assert local.uri(local.key(image)) == media.resolve().as_uri() + "/night/a b.png"
    elsewhere = tmp_path / "shared"
    store = MediaStore(media, elsewhere.as_uri(), "https://cdn.example.com/m/{key}")
    assert store.remote and store.key(image) == "night/a b.png"
    assert store.public_url("night/a b.png") == "https://cdn.example.com/m/night/a%20b.png"
    store.put(image)
    assert (elsewhere / "night" / "a b.png").read_bytes() == b"x"
    (tmp_path / "blocked").write_text("a file where a folder should be")
    with pytest.raises(UploadError) as failure:
        MediaStore(media, (tmp_path / "blocked").as_uri(), "", secrets=("night",)).put(image)
    assert "upload of ***/a b.png" in str(failure.value) and "night" not in str(failure.value)  # secrets blanked
    assert not failure.value.transient  # a folder that is a file: trying again cannot help


def test_media_settings_name_the_variable_and_never_echo_options(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value, rule in [
        ("MJQ_MEDIA_URL", "zz://bucket", "unknown storage scheme zz://"),
        ("MJQ_MEDIA_PUBLIC_URL", "https://cdn.example.com/", "must contain {key}"),
        ("MJQ_MEDIA_STORAGE_OPTIONS", '["token-abc123"]', "must be a JSON object"),
    ]:
        monkeypatch.setenv(name, value)
        with pytest.raises(SettingsError) as failure:
            load_settings()
        assert f"{name}: {rule}" in str(failure.value) and "token-abc123" not in str(failure.value)
        monkeypatch.delenv(name)
    monkeypatch.setenv("MJQ_MEDIA_URL", "s3://bucket/prefix/")
    monkeypatch.setenv("MJQ_MEDIA_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("MJQ_MEDIA_S3_SECRET_ACCESS_KEY", "sekrit-value")
    monkeypatch.setenv("MJQ_MEDIA_STORAGE_OPTIONS", '{"anon": false}')
    store = media_store(load_settings())
    assert store.url == "s3://bucket/prefix" and store.remote
    assert store.options["endpoint_url"] == "http://127.0.0.1:9000" and store.options["anon"] is False
    assert "sekrit-value" not in repr(store) and "sekrit-value" in store.secrets


def test_an_object_store_without_its_backend_stops_every_command_at_start(tmp_path: Path) -> None:
    """gs:// and az:// on this install (gcsfs and adlfs are not installed: the project's extras add them): the
    CLI and `mjq serve` stop at once with one line naming the variable, the scheme and what to install, exit 2,
    no traceback, before anything is queued (the Redis it would queue into is not even reachable)."""
    assert importlib.util.find_spec("gcsfs") is None and importlib.util.find_spec("adlfs") is None
    prompts = tmp_path / "night.txt"
    prompts.write_text("a lighthouse at dawn\n", encoding="utf-8")
    unreachable = {"MJQ_REDIS_URL": "redis://127.0.0.1:9/0"}  # a refused connection, were it reached
    for url, package, extra, args in [
        ("gs://bucket/night", "gcsfs", "gcs", ("batch", str(prompts))),
        ("az://container/night", "adlfs", "azure", ("serve",)),
    ]:
        run = mjq(None, *args, env={**unreachable, "MJQ_MEDIA_URL": url}, timeout=120)
        scheme = url.split("://")[0]
        assert run.code == 2, run.out + run.err
        assert (f"MJQ_MEDIA_URL: {scheme}:// needs the fsspec backend {package}, which is not installed: "
                f"pip install 'mjqueue[{extra}]' (or pip install {package})") in run.err + run.out
        assert "Traceback" not in run.err + run.out and "Redis" not in run.err + run.out


def test_s3_without_s3fs_is_the_same_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """s3fs is installed here (the dev extra): hidden from imports, s3:// gets the gs:// answer, with its extra."""
    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` now raises ImportError
    cached = importlib.import_module("fsspec.registry")._registry  # backends fsspec has imported already
    monkeypatch.delitem(cached, "s3", raising=False)
    monkeypatch.setenv("MJQ_MEDIA_URL", "s3://bucket/night")
    with pytest.raises(SettingsError) as failure:
        load_settings()
    assert ("MJQ_MEDIA_URL: s3:// needs the fsspec backend s3fs, which is not installed: "
            "pip install 'mjqueue[s3]' (or pip install s3fs)") in str(failure.value)


def test_downloads_share_one_http_client_per_process() -> None:
    """One client for every image download of a process (a client per download built a TLS context each time:
    over a third of a busy worker's CPU)."""
    from worker.settings import Settings
    from worker.store.runtime import Runtime

    rt = Runtime(Settings(_env_file=None))
    assert rt.download_http() is rt.download_http()
    assert not rt.download_http().is_closed
