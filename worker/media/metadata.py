"""What made an image, written into the file itself: PNG iTXt chunks, an XMP packet in JPEG (APP1) and WebP.

A downloaded picture otherwise carries nothing of its prompt or job once it leaves the manifest. The metadata is
inserted at the byte level, never by re-encoding: the pixels and every byte the upstream sent stay as they were
(a JPEG or WebP re-saved by Pillow would lose quality). The sha256 recorded for an image (``image_sha256``) is
that of the stored file, metadata included, so ``sha256sum`` of the local file or of its object-storage copy
matches the manifest. An optional JSON sidecar (``MJQ_SIDECARS``) beside each image says the same for tools that
read no metadata.

PNG keys (also the XMP attribute names, namespace ``mjq``): ``FIELDS`` below, plus ``tile`` for a cut grid tile.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Mapping
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

log = logging.getLogger("mjqueue.media")

FIELDS = (
    "prompt",
    "final_prompt",
    "job_id",
    "upstream_id",
    "upstream",
    "action",
    "parent_job",
    "batch_id",
    "seed",
    "mjqueue_version",
)
XMP_NS = "https://mjqueue.dev/ns/1.0/"
MAX_VALUE_CHARS = 6000  # a JPEG APP1 segment holds 64 KiB in all
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_XMP_JPEG_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"


def mjqueue_version() -> str:
    try:
        return package_metadata.version("mjqueue")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def image_metadata(job: Mapping[str, Any]) -> dict[str, str]:
    """The ``FIELDS`` known for a job record (empty ones left out; the seed only when the upstream gave it)."""
    extra = job.get("extra") or {}
    values = {
        **{name: job.get(name) for name in FIELDS},
        "seed": extra.get("seed") if isinstance(extra, Mapping) else None,
        "mjqueue_version": mjqueue_version(),
    }
    return {name: str(value)[:MAX_VALUE_CHARS] for name, value in values.items() if value not in (None, "")}


def embed(data: bytes, mime: str, meta: Mapping[str, str], size: tuple[int | None, int | None]) -> bytes:
    """``data`` with ``meta`` added in the format's own metadata place; unchanged for other formats or a file
    too odd to edit (the image matters more than its metadata)."""
    try:
        if mime == "image/png":
            return _png(data, meta)
        if mime == "image/jpeg":
            return _jpeg(data, meta)
        if mime == "image/webp":
            return _webp(data, meta, size)
    except (ValueError, struct.error) as exc:
        log.warning("metadata not written into a %s image: %s", mime, exc)
    return data


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png(data: bytes, meta: Mapping[str, str]) -> bytes:
    """iTXt chunks (UTF-8, uncompressed) right after IHDR, so readers that stop at the pixels still see them."""
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG with IHDR first")
    after_ihdr = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    chunks = b"".join(
        _png_chunk(b"iTXt", key.encode("latin-1") + b"\x00\x00\x00" + b"\x00" + b"\x00" + value.encode("utf-8"))
        for key, value in meta.items()
    )
    return data[:after_ihdr] + chunks + data[after_ihdr:]


def xmp_packet(meta: Mapping[str, str]) -> bytes:
    """An XMP packet with one ``mjq:<field>`` attribute per value (and the prompt as ``dc:description``)."""
    attrs = " ".join(f"mjq:{key}={quoteattr(value)}" for key, value in meta.items())
    description = meta.get("prompt", "")
    body = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:mjq="{XMP_NS}" xmlns:dc="http://purl.org/dc/elements/1.1/" {attrs}>'
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{_text(description)}</rdf:li></rdf:Alt>'
        "</dc:description></rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    )
    return body.encode("utf-8")


def _text(value: str) -> str:
    return quoteattr(value)[1:-1]


def _jpeg(data: bytes, meta: Mapping[str, str]) -> bytes:
    """An APP1 XMP segment after SOI (and after a JFIF APP0, which must stay first)."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG")
    payload = _XMP_JPEG_PREFIX + xmp_packet(meta)
    if len(payload) + 2 > 0xFFFF:
        raise ValueError("XMP packet too large for one JPEG segment")
    at = 2
    if data[2:4] == b"\xff\xe0":  # APP0 (JFIF)
        at = 4 + struct.unpack(">H", data[4:6])[0]
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:at] + segment + data[at:]


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def _webp(data: bytes, meta: Mapping[str, str], size: tuple[int | None, int | None]) -> bytes:
    """An ``XMP `` chunk at the end of the RIFF, with the XMP flag of the VP8X header set (a simple-format file
    gets a VP8X header first, which needs the canvas size)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP")
    chunks: list[tuple[bytes, bytes]] = []
    at = 12
    while at + 8 <= len(data):
        kind, length = data[at : at + 4], struct.unpack("<I", data[at + 4 : at + 8])[0]
        chunks.append((kind, data[at + 8 : at + 8 + length]))
        at += 8 + length + (length % 2)
    chunks = [(kind, body) for kind, body in chunks if kind != b"XMP "]
    if not chunks:
        raise ValueError("WebP without chunks")
    if chunks[0][0] == b"VP8X":
        header = bytearray(chunks[0][1])
        header[0] |= 0x04
        chunks[0] = (b"VP8X", bytes(header))
    else:
        width, height = size
        if not width or not height:
            raise ValueError("WebP of unknown size")
        alpha = 0x10 if chunks[0][0] == b"VP8L" and len(chunks[0][1]) > 4 and chunks[0][1][4] & 0x10 else 0
        canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        chunks.insert(0, (b"VP8X", bytes([0x04 | alpha, 0, 0, 0]) + canvas))
    chunks.append((b"XMP ", xmp_packet(meta)))
    body = b"WEBP" + b"".join(_riff_chunk(kind, chunk) for kind, chunk in chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def sidecar_path(image: Path) -> Path:
    """``<image>.json`` beside the image (``j1.png`` -> ``j1.png.json``)."""
    return image.with_name(image.name + ".json")


def sidecar_json(meta: Mapping[str, str], image: Mapping[str, Any]) -> bytes:
    """The sidecar: the same values as in the file, and the file's name, checksum, size and dimensions."""
    return json.dumps({**meta, **image}, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"
