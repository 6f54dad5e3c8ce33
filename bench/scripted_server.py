"""The tests' scripted OpenAI-compatible generator, served in a process of its own at a fixed token rate.

bench/load.py starts it apart from the load client, so that the client's GIL never slows the
tokens down: every answer takes the same time, and what varies is the app's own.

    python bench/scripted_server.py --port 8021 --words 60 --tokens-per-second 20
"""

import argparse
import sys
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.answers.scripted_generator import ScriptedGenerator  # noqa: E402 - needs the repository on sys.path

# Plain prose about a study, repeated to length; the closing [1] cites the first passage, as a grounded answer does.
PROSE = "the study reports that the treatment changed the measured outcome in most of the patients it followed".split()


class QueuedServer(ThreadingHTTPServer):
    # A burst of concurrent answers connects at once: with the default backlog of 5, some
    # connections would wait a second for the kernel's SYN retry, and that would show as latency.
    request_queue_size = 256


def answer_text(words: int) -> str:
    """An answer of `words` words (each streamed as one token) that cites passage 1."""
    body = [PROSE[index % len(PROSE)] for index in range(max(words - 1, 0))]
    return " ".join([*body, "[1]."])


def options_parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="Port to listen on, on 127.0.0.1.")
    parser.add_argument("--words", type=int, default=60, help="Words per answer, one token each (default 60).")
    parser.add_argument("--tokens-per-second", type=float, default=20.0, help="Streaming rate of each answer (default 20).")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    options = options_parse(argv)
    text = answer_text(options.words)
    generator = ScriptedGenerator(lambda messages: text, token_delay=1 / options.tokens_per_second)
    with QueuedServer(("127.0.0.1", options.port), generator.handler()) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
