"""What a /v1/predict request carries, read within the server's limits: images as multipart files in
the field `files`, or JSON `{"images": ["<base64>", ...], "top_k": 3}`.

Every mistake is an `HttpError` with the status, a sentence that says what was wrong and what to
send instead, and the limit it hit; one image that cannot be used (not base64, a part that is not an
image) is not a request error: it comes back as that image's own error and the others are answered.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
# a part's own type: any image, or bytes whose type the client did not know
PART_TYPES = ("image/", "application/octet-stream")


class HttpError(Exception):
    def __init__(self, status: int, message: str, **details: Any):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status, **self.details}


@dataclass
class ImageInput:
    name: str  # the file name, or images[i] for JSON
    data: bytes | None
    error: str | None = None  # why this image cannot be used, decided before decoding


@dataclass
class PredictRequest:
    images: list[ImageInput]
    top_k: int | None


async def read_predict_request(request: Request, *, max_bytes: int, max_images: int) -> PredictRequest:
    """The request's images and top_k, or an HttpError (400, 413, 415, 422)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in (JSON_TYPE, MULTIPART_TYPE):
        raise HttpError(
            415,
            f"content type {kind or '(none)'!r} is not accepted: send images as {MULTIPART_TYPE} files in the field "
            f"'files', or as {JSON_TYPE} {{\"images\": [\"<base64>\", ...]}}",
            accepted=[MULTIPART_TYPE, JSON_TYPE],
        )
    body = await _read_body(request, max_bytes)
    parsed = await _multipart(request, body, max_images) if kind == MULTIPART_TYPE else _json(body)
    if not parsed.images:
        raise HttpError(422, "the request holds no image: send at least one file in the field 'files' "
                             "or one base64 string in 'images'")  # fmt: skip
    if len(parsed.images) > max_images:
        raise HttpError(413, f"{len(parsed.images)} images in one request; the limit is {max_images}: split it",
                        limit=max_images)  # fmt: skip
    return parsed


async def _read_body(request: Request, max_bytes: int) -> bytes:
    def too_large(size: str) -> HttpError:
        return HttpError(413, f"the request body is {size}; the limit is {max_bytes} bytes", limit=max_bytes)

    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(f"{int(declared)} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:  # a body without a length, or longer than it said: stop reading here
                raise too_large(f"over {max_bytes} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # nobody to answer: counted as 499 (nginx's "client closed"), not as a 500
        raise HttpError(499, "the client closed the connection before its body arrived") from None
    return b"".join(chunks)


async def _multipart(request: Request, body: bytes, max_images: int) -> PredictRequest:
    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=max_images + 1, max_fields=16).parse()
    except MultiPartException as exc:
        raise HttpError(400, f"the multipart body cannot be read ({exc.message}); send images as files in the "
                             "field 'files'", limit=max_images) from None  # fmt: skip
    try:
        others = [key for key in form if key not in ("files", "top_k")]
        if others:
            raise HttpError(422, f"unknown form field(s) {', '.join(map(repr, others))}: images go in 'files'")
        images = []
        for index, part in enumerate(form.getlist("files")):
            if not isinstance(part, UploadFile):
                images.append(ImageInput(f"files[{index}]", None, "this field is text, not a file"))
                continue
            name = part.filename or f"files[{index}]"
            kind = (part.content_type or "application/octet-stream").lower()
            if not kind.startswith(PART_TYPES):
                images.append(ImageInput(name, None, f"content type {kind!r} is not an image (image/* or "
                                                     "application/octet-stream)"))  # fmt: skip
                continue
            images.append(ImageInput(name, await part.read()))
        top_k = form.get("top_k")
        return PredictRequest(images, _top_k(top_k if isinstance(top_k, str) else None))
    finally:
        await form.close()


def _json(body: bytes) -> PredictRequest:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nesting thousands deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise HttpError(400, f"the body is not valid JSON ({reason}); "
                        "send {\"images\": [\"<base64>\", ...]}") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise HttpError(422, "the JSON body must be an object with 'images': a list of base64-encoded image files")
    unknown = sorted(set(document) - {"images", "top_k"})
    if unknown:
        raise HttpError(422, f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are 'images' and 'top_k'")
    images = []
    for index, item in enumerate(document["images"]):
        name = f"images[{index}]"
        if not isinstance(item, str):
            images.append(ImageInput(name, None, f"expected a base64 string, got {type(item).__name__}"))
            continue
        try:
            images.append(ImageInput(name, base64.b64decode(item, validate=True)))
        except (binascii.Error, ValueError):
            images.append(ImageInput(name, None, "not valid base64"))
    top_k = document.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)):
        raise HttpError(422, f"top_k must be a whole number of 1 or more, got {top_k!r}")
    return PredictRequest(images, _top_k(top_k))


def _top_k(value: int | str | None) -> int | None:
    """top_k from a form field, JSON or the query string: a whole number of 1 or more."""
    if value is None:
        return None
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # isdigit() alone admits '²', which int() refuses
        raise HttpError(422, f"top_k must be a whole number of 1 or more, got {value!r}")
    return int(text)


def query_top_k(request: Request) -> int | None:
    return _top_k(request.query_params.get("top_k"))
