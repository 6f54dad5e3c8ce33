"""A scripted OpenAI-compatible chat server for tests that need an exact reply.

The real generator (vLLM) is outside the product; tests of what the product does with a reply
(an invalid citation, a rewrite, a slow stream, a failure) need replies chosen by the test,
which a real model does not give on demand. The end-to-end tests use a real vLLM instead.
It speaks real HTTP, so the app's `openai` client is exercised as in production.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "scripted-model"


class ScriptedGenerator:
    """`reply(messages) -> str` answers each request; requests are kept for assertions."""

    def __init__(self, reply: Callable[[list[dict]], str], *, token_delay: float = 0.0, status: int = 200):
        self.reply = reply
        self.token_delay = token_delay
        self.status = status
        self.requests: list[dict] = []
        self.report_usage = True  # False: act like a server that ignores stream_options
        self.refuse_stream_options = False  # True: act like a server that answers 400 to them

    def handler(self):
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._json({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]})
                else:
                    self._json({"error": {"message": "not found"}}, status=404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                scripted.requests.append(body)
                if scripted.status != 200:
                    self._json({"error": {"message": "scripted failure", "type": "server_error"}}, status=scripted.status)
                    return
                if scripted.refuse_stream_options and "stream_options" in body:
                    self._json({"error": {"message": "stream_options: extra fields not permitted",
                                          "type": "BadRequestError"}}, status=400)
                    return
                text = scripted.reply(body["messages"])
                if body.get("stream"):
                    usage = None
                    if scripted.report_usage and (body.get("stream_options") or {}).get("include_usage"):
                        # Counted the scripted way (words), so tests can predict them.
                        usage = {"prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
                                 "completion_tokens": len(stream_pieces(text))}
                    self._stream(text, body.get("model", MODEL), usage)
                else:
                    self._json({"id": "cmpl-1", "object": "chat.completion", "created": int(time.time()),
                                "model": MODEL, "choices": [{"index": 0, "finish_reason": "stop",
                                                             "message": {"role": "assistant", "content": text}}]})

            def _json(self, data: dict, status: int = 200):
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, text: str, model: str, usage: dict | None):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for piece in stream_pieces(text):
                    chunk = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(scripted.token_delay)
                if usage is not None:
                    usage_chunk = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                                   "choices": [], "usage": {**usage, "total_tokens": sum(usage.values())}}
                    self.wfile.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        return Handler


def stream_pieces(text: str) -> list[str]:
    """The text in word-sized pieces, as a model streams it."""
    pieces, current = [], ""
    for character in text:
        current += character
        if character == " ":
            pieces.append(current)
            current = ""
    return pieces + ([current] if current else [])


@contextlib.contextmanager
def scripted_generator(reply: Callable[[list[dict]], str], **options) -> Iterator[tuple[str, ScriptedGenerator]]:
    """Serve a ScriptedGenerator on a free port; yield (API base URL, the generator)."""
    scripted = ScriptedGenerator(reply, **options)
    server = ThreadingHTTPServer(("127.0.0.1", 0), scripted.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", scripted
    finally:
        server.shutdown()
        server.server_close()
