"""Streamed HTTP responses that reach the client as they are written."""

from collections.abc import Iterable

from django.http import StreamingHttpResponse


def unbuffered_stream(chunks: Iterable[str], content_type: str) -> StreamingHttpResponse:
    """A streaming response that neither caches nor a proxy in front (nginx) holds back."""
    response = StreamingHttpResponse(chunks, content_type=content_type)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
