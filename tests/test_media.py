"""Input images: MIME sniffing from the bytes, data URI parsing and limits, short descriptions."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from worker.mjapi import images as media
from worker.mjapi.errors import InvalidInput
from worker.mjapi.images import MAX_IMAGE_BYTES, describe_images, parse_data_uri, sniff_mime, to_data_uri

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_bytes(fmt: str, size: tuple[int, int] = (16, 16), frames: int = 1) -> bytes:
    buf = io.BytesIO()
    images = [Image.new("RGB", size, color) for color in ("red", "blue", "green")[:frames]]
    if frames > 1:
        images[0].save(buf, fmt, save_all=True, append_images=images[1:], duration=100, loop=0)
    else:
        images[0].save(buf, fmt)
    return buf.getvalue()


def uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_sniff_and_parse_each_accepted_type(fmt: str, mime: str) -> None:
    data = image_bytes(fmt)
    assert sniff_mime(data) == mime
    decoded = parse_data_uri(uri(data, mime), "base64")
    assert (decoded.mime, decoded.data, decoded.size) == (mime, data, len(data))
    assert to_data_uri(data) == uri(data, mime)


def test_sniff_refuses_unknown_and_animated() -> None:
    assert sniff_mime(b"BM" + b"\0" * 64) is None  # BMP
    assert sniff_mime(b"") is None
    assert sniff_mime(b"RIFF\0\0\0\0WAVE") is None
    animated = image_bytes("GIF", frames=3)
    assert animated.startswith(b"GIF89a")
    assert sniff_mime(animated) is None
    assert sniff_mime(image_bytes("GIF", frames=1)) == "image/gif"


def test_jpg_alias_and_whitespace_are_tolerated() -> None:
    data = image_bytes("JPEG")
    encoded = base64.b64encode(data).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert parse_data_uri(f"data:image/jpg;base64,{wrapped}", "x").mime == "image/jpeg"


def test_size_limit_is_exactly_four_megabytes() -> None:
    at_limit = PNG_MAGIC + b"\0" * (MAX_IMAGE_BYTES - len(PNG_MAGIC))
    assert parse_data_uri(uri(at_limit, "image/png"), "base64").size == MAX_IMAGE_BYTES
    with pytest.raises(InvalidInput, match=r"field 'base64': image is 4\.0 MB decoded, the limit is 4 MB"):
        parse_data_uri(uri(at_limit + b"\0", "image/png"), "base64")


PNG = image_bytes("PNG")
BAD_URIS = [
    ("http://example.com/a.png", "must be a data URI"),
    ("data:image/png,AAAA", "must be base64-encoded"),
    ("data:image/png;base64,", "image data is empty"),
    ("data:image/png;base64,@@@notbase64@@@", "invalid base64"),
    ("data:image/png;base64,iVBORw0KGgo", "invalid base64"),  # bad padding
    (uri(PNG, "image/jpeg"), "declared 'image/jpeg' but the bytes are PNG"),
    (uri(PNG, "text/plain"), "declared 'text/plain' but the bytes are PNG"),
    (uri(PNG, ""), "declared no type but the bytes are PNG"),
    (uri(b"BM" + b"\0" * 100, "image/bmp"), "not a JPEG, PNG, GIF or WEBP"),
    (uri(b"hello world", "image/png"), "not a JPEG, PNG, GIF or WEBP"),
    (uri(image_bytes("GIF", frames=2), "image/gif"), "animated GIF is not accepted"),
    (
        uri(PNG_MAGIC + b"\1" * int(5.2 * 1024 * 1024), "image/png"),
        r"image is 5\.2 MB decoded, the limit is 4 MB",
    ),
]


@pytest.mark.parametrize(("value", "rule"), BAD_URIS)
def test_bad_data_uris_name_the_field_and_rule(value: str, rule: str) -> None:
    with pytest.raises(InvalidInput, match=rf"^field 'base64_array\[1\]': .*{rule}") as info:
        parse_data_uri(value, "base64_array[1]")
    assert info.value.field == "base64_array[1]"
    assert isinstance(info.value, ValueError)
    assert len(str(info.value)) < 200  # never echoes the data


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidInput, match="field 'base64': must be a data URI string, not bytes"):
        parse_data_uri(PNG, "base64")


def test_to_data_uri_of_unknown_bytes_is_refused_by_parse() -> None:
    value = to_data_uri(b"not an image")
    assert value.startswith("data:application/octet-stream;base64,")
    with pytest.raises(InvalidInput, match="not a JPEG, PNG, GIF or WEBP"):
        parse_data_uri(value, "images")


def test_describe_images_is_short_and_never_shows_data() -> None:
    png, jpeg = uri(PNG, "image/png"), uri(image_bytes("JPEG"), "image/jpeg")
    assert describe_images([png, png]) == f"2×PNG {len(PNG) * 2}B"
    big = uri(PNG_MAGIC + b"\0" * (1258291 - len(PNG_MAGIC)), "image/png")
    assert describe_images([big]) == "1×PNG 1.2MB"
    mixed = describe_images([png, jpeg, "not a uri"])
    assert mixed.startswith("1×PNG+1×JPEG+1×? ") and mixed.endswith("B")
    assert describe_images([]) == "none"
    assert "base64" not in describe_images([png]) and len(describe_images([big] * 5)) < 30


def test_gif_frame_walk_handles_truncation() -> None:
    animated = image_bytes("GIF", frames=2)
    assert media._gif_frames(animated) == 2
    assert media._gif_frames(animated[:20]) <= 1
    assert media._gif_frames(b"GIF89a") == 0


def test_a_loopback_image_url_from_a_remote_relay_is_reported_not_retried(tmp_path: Path) -> None:
    from worker.media import DownloadError, download_image

    url = "http://localhost:3000/mj/image/1712345"  # new-api with its server address left at the default
    expected = "image host is loopback: the relay's server address is misconfigured"
    with pytest.raises(DownloadError, match=expected) as info:
        download_image(url, tmp_path, "j1", upstream_base_url="https://relay.example.com")
    assert not info.value.transient and not list(tmp_path.iterdir())
