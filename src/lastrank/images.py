"""Images as request inputs (multimodal models): turning what a caller sends into a checked PIL image.

    image_input(value, where)  PIL.Image.Image | bytes | os.PathLike  -> PIL image (RGB-convertible, loaded)
    image_inputs(images)       {"query" / index: such a value} -> {same key: PIL image}, what a RerankRequest holds
    decoded_image(value, where)  a PIL image within the limits, checked without I/O (RerankRequest's check)
    open_image(data, where)    encoded bytes -> RGB PIL image, decoded as the official code decodes, with the
                               limits below
    to_rgb(image)              a PIL image given as such -> RGB as the model's processor makes it
    decode_base64(text, where) base64 or a `data:image/...;base64,` URI -> bytes (for the HTTP dialects)
    encode_image(value, where) the Python API's image -> base64 (what lastrank.Client sends)
    fetch_image_url(url, policy, where)  an http(s) URL the server's UrlPolicy allows -> bytes (off by default)

Every failure is an InvalidRequestError (a 4xx at the API) that says which input and why: not base64, not an
image PIL can read, more than MAX_IMAGE_BYTES encoded bytes (PayloadTooLargeError), more than
MAX_IMAGE_PIXELS pixels (a decompression bomb: refused from the header, before any pixel is decoded), a
truncated or corrupt file. Paths are read only in the Python API (split_images); a RerankRequest holds decoded
images only (decoded_image), so building one never reads a file.

Decoding follows jina-reranker-m0's official compute_score, whose load_images keeps a PIL image as it is and
reads anything else (a path, a URL, base64 or a data URI) with transformers.image_utils.load_image, which
applies the EXIF orientation (PIL.ImageOps.exif_transpose) and then .convert("RGB"): transparency is
dropped, not composited. So every encoded input here (bytes, a path, base64 over HTTP, a fetched URL) becomes
exactly that RGB image in open_image, and a PIL image passed by a Python caller stays as given: the model's
processor converts it (to_rgb: transparency composited onto white, EXIF orientation ignored).
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import os
import re
import sys
import warnings
from dataclasses import dataclass

from lastrank.errors import InvalidRequestError, PayloadTooLargeError

MAX_IMAGE_BYTES = 20 << 20  # encoded size of one image
# Decoded pixels of one image. Below PIL's own warning threshold (89.5M): the model never needs more (the
# processor scales every image down to at most 602,112 pixels), and a 40M-pixel RGB image is 120 MB decoded.
MAX_IMAGE_PIXELS = 40_000_000
_DATA_URI = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
_URL_SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]*):")


def decode_base64(text: str, where: str) -> bytes:
    """Standard base64 (whitespace allowed), optionally as a data URI; strict: any other character is an error."""
    if not isinstance(text, str):
        raise InvalidRequestError(f"{where}: an image must be a base64 string, got {type(text).__name__}")
    if is_url(text):
        raise InvalidRequestError(f"{where}: image URLs are not enabled on this server (lastrank serve "
                                  f"--allow-image-urls HOST); send the image as base64 or a data URI")
    scheme = _URL_SCHEME.match(text)  # ':' is no base64 character: "file:...", "ftp://..." are URLs, not data
    if scheme and scheme.group(1).lower() != "data":
        if scheme.group(1).lower() == "file":
            raise InvalidRequestError(f"{where}: the image is a file: URL; file URLs are never read (the server's "
                                      f"files are not the client's); send the image as base64 or a data URI")
        raise InvalidRequestError(f"{where}: the image is a {scheme.group(1)}: URL; only http(s) image URLs are "
                                  f"fetched, where the server allows them; send the image as base64 or a data URI")
    if text.startswith("data:"):
        match = _DATA_URI.match(text)
        if not match:
            raise InvalidRequestError(f"{where}: a data URI image must look like data:image/<type>;base64,<data>")
        text = text[match.end():]
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 16:
        raise PayloadTooLargeError(f"{where}: the image is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"{where}: the image is not valid base64") from None


def is_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


URL_TIMEOUT_S = 10.0  # connect, every read, and the whole download of one image URL


@dataclass(frozen=True)
class UrlPolicy:
    """Which image URLs a server fetches (lastrank serve --allow-image-urls / --allow-private-image-urls)."""

    hosts: tuple[str, ...]  # exact host names, or "*.example.com" for its subdomains
    allow_private: bool = False  # may an allowed host resolve to a private / loopback / link-local address
    timeout_s: float = URL_TIMEOUT_S

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for pattern in self.hosts:
            pattern = pattern.lower().rstrip(".")
            if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
                return True
        return False


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1 is loopback
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def fetch_image_url(url: str, policy: UrlPolicy, where: str) -> bytes:
    """GET one image URL under `policy`: http(s) only, no credentials in the URL, an allowed host, every address
    the host resolves to public unless allow_private, no redirects followed, at most MAX_IMAGE_BYTES and
    policy.timeout_s. Every refusal or failure is an InvalidRequestError (PayloadTooLargeError for size).
    The connection goes to the address checked here (the Host header and, for https, the TLS server name and
    certificate check keep the URL's host), so a DNS answer that changes after the check (rebinding) is not
    used."""
    import socket
    import time
    from urllib.parse import urlsplit

    import httpx

    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise InvalidRequestError(f"{where}: not a valid image URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError(f"{where}: an image URL must be http(s)://host/...")
    if parts.username or parts.password:
        raise InvalidRequestError(f"{where}: image URLs with credentials are not fetched")
    host = parts.hostname
    if not policy.host_allowed(host):
        raise InvalidRequestError(f"{where}: image host {host!r} is not allowed on this server")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        raise InvalidRequestError(f"{where}: the image host {host!r} could not be resolved") from None
    if not policy.allow_private and not all(_public(a) for a in addresses):
        raise InvalidRequestError(f"{where}: the image host {host!r} resolves to a private, loopback or link-local "
                                  f"address; not fetched")
    start = time.monotonic()
    try:
        target = httpx.URL(url)
        pinned = target.copy_with(host=sorted(addresses)[0].split("%")[0])
        headers = {"Accept": "image/*", "Host": target.netloc.decode("ascii")}
        with httpx.Client(follow_redirects=False, timeout=policy.timeout_s, trust_env=False) as client:
            with client.stream("GET", pinned, headers=headers, extensions={"sni_hostname": host}) as response:
                if response.is_redirect:
                    raise InvalidRequestError(f"{where}: the image URL redirects ({response.status_code}); "
                                              f"redirects are not followed")
                if response.status_code != 200:
                    raise InvalidRequestError(f"{where}: the image URL answered HTTP {response.status_code}")
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:
                        raise PayloadTooLargeError(f"{where}: the image is larger than {MAX_IMAGE_BYTES} bytes")
                    if time.monotonic() - start > policy.timeout_s:
                        raise InvalidRequestError(f"{where}: the image URL took over {policy.timeout_s:g} s")
    except httpx.HTTPError as e:
        raise InvalidRequestError(f"{where}: the image URL could not be fetched ({type(e).__name__})") from None
    return bytes(data)


def open_image(data: bytes, where: str):
    """Encoded image bytes -> a loaded RGB PIL image, as transformers' load_image makes it (the module
    docstring): EXIF orientation applied, then .convert("RGB"); the limits in the module docstring."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise PayloadTooLargeError(f"{where}: the image is larger than {MAX_IMAGE_BYTES} bytes")
    if not data:
        raise InvalidRequestError(f"{where}: the image is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InvalidRequestError(f"{where}: the image has {width}x{height} pixels, more than "
                                          f"{MAX_IMAGE_PIXELS} (a decompression bomb or simply too large)")
            image.load()
            image = ImageOps.exif_transpose(image).convert("RGB")
        except InvalidRequestError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidRequestError(f"{where}: the image has more than {MAX_IMAGE_PIXELS} pixels "
                                      f"(a decompression bomb)") from None
        except UnidentifiedImageError:
            raise InvalidRequestError(f"{where}: not an image in a format lastrank can read") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise InvalidRequestError(f"{where}: the image could not be decoded ({e})") from None
    return image


def decoded_image(value, where: str):
    """What a RerankRequest holds as an image: a PIL image within the pixel limit, checked without any I/O
    (bytes and paths are decoded at the edges, by image_input)."""
    image = sys.modules.get("PIL.Image")  # a PIL image exists only once Pillow is imported
    if image is None or not isinstance(value, image.Image):
        raise InvalidRequestError(f"{where}: a RerankRequest holds decoded images (PIL.Image.Image), got "
                                  f"{type(value).__name__}; images.image_input decodes bytes and paths "
                                  f"(Reranker.rerank does it for you)")
    width, height = value.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidRequestError(f"{where}: the image has {width}x{height} pixels, more than {MAX_IMAGE_PIXELS}")
    return value


def image_input(value, where: str):
    """What the Python API accepts as an image (a PIL image, encoded bytes or a path) -> a checked PIL image."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return decoded_image(value, where)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return open_image(bytes(value), where)
    if isinstance(value, os.PathLike):
        return open_image(read_image_file(value, where), where)
    raise InvalidRequestError(f"{where}: an image must be a PIL.Image.Image, bytes or a path (pathlib.Path), "
                              f"got {type(value).__name__}")


def image_inputs(images: dict, documents_field: str = "documents") -> dict:
    """{"query" / document index: what image_input takes} -> the same keys with checked PIL images: what a
    RerankRequest holds (errors name the input as `documents_field[i]`, or "query")."""
    return {k: image_input(v, "query" if k == "query" else f"{documents_field}[{k}]") for k, v in images.items()}


def read_image_file(path: os.PathLike, where: str) -> bytes:
    try:
        if os.path.getsize(path) > MAX_IMAGE_BYTES:
            raise PayloadTooLargeError(f"{where}: {os.fspath(path)} is larger than {MAX_IMAGE_BYTES} bytes")
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InvalidRequestError(f"{where}: cannot read {os.fspath(path)}: {e.strerror or e}") from None


def to_rgb(image):
    """PIL image -> RGB PIL image; transparency composited onto white (as transformers' convert_to_rgb, which
    the model's processor applies to the PIL images the official code passes it as given)."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def encode_image(value, where: str) -> str:
    """A Python API image (PIL image, encoded bytes, path) -> the base64 text the HTTP API takes (lastrank.Client):
    a file's or bytes' encoded bytes as they are (the server checks and decodes them as Reranker does), a PIL
    image as the RGB PNG the model reads from it locally (to_rgb; lossless): sent with its transparency or its
    EXIF orientation, the server would decode it as an encoded image (alpha dropped, EXIF applied) and score
    it differently from Reranker.rerank given the same PIL image."""
    from PIL import Image

    if isinstance(value, Image.Image):
        image = to_rgb(image_input(value, where))  # PNG written without EXIF (Pillow writes it only when asked)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    elif isinstance(value, os.PathLike):
        data = read_image_file(value, where)
    else:
        data = bytes(value)
    return base64.b64encode(data).decode("ascii")


def is_image_input(value) -> bool:
    """True for what the Python API takes as an image among documents (a str is always text)."""
    if isinstance(value, (bytes, bytearray, memoryview, os.PathLike)):
        return True
    # A PIL image exists only once Pillow is imported, so text-only callers never pay for importing it
    # (`lastrank rerank` on a text model: tests/cli/test_cold_start.py).
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(value, image.Image)


def split_images(query, documents) -> tuple[str, list, dict | None]:
    """The Python API's mixed inputs -> RerankRequest's (query, documents, images): an image query or document
    (PIL image, bytes, path) moves to `images`, read and decoded (image_input), and leaves a label in its place
    (a path's name, else "")."""
    if not isinstance(documents, (list, tuple)):
        return query, documents, None  # RerankRequest says what is wrong with it
    images = {}
    labels = []
    for i, doc in enumerate(documents):
        if is_image_input(doc):
            images[i] = doc
            doc = os.fspath(doc) if isinstance(doc, os.PathLike) else ""
        labels.append(doc)
    if is_image_input(query):
        images["query"] = query
        query = os.fspath(query) if isinstance(query, os.PathLike) else ""
    return query, labels, image_inputs(images) or None
