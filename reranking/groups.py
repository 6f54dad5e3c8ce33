"""Training groups for the reranker: the data type, its JSONL rows, and the seeded query split.

No torch here: the app (`ragapp.tuning`) mines and writes groups without loading the training code.
"""

import json
import lzma
import random
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path


class TrainingError(Exception):
    """The groups or the options cannot be trained on as given; the message says what to fix."""


@dataclass(frozen=True)
class TrainingGroup:
    query: str
    positives: list[str]
    negatives: list[str]
    # Graded relevance of each positive in [0, 1] (bce/mse targets); None: every positive is 1.
    positive_labels: list[float] | None = None
    # Mined without labels (a pseudo-query, e.g. a document's title): trained on, never used to
    # validate, since validation must say how the model ranks real questions.
    pseudo: bool = False


GROUP_DEFAULTS = {field.name: field.default for field in fields(TrainingGroup) if field.default is not MISSING}


def group_row(group: TrainingGroup, *, query_id: str | None = None) -> dict:
    """The JSONL row of a group; `query_id` rides along for people and is ignored on reading."""
    # Fields left at their defaults stay out of the file: a plain labelled group's row reads as it always did.
    row = {key: value for key, value in asdict(group).items() if value is not None and value != GROUP_DEFAULTS.get(key)}
    return row if query_id is None else {"query_id": query_id, **row}


def group_from_row(row: dict, *, where: str) -> TrainingGroup:
    """The group of one JSONL row; a row that is not one raises TrainingError naming `where`."""
    try:
        group = TrainingGroup(
            query=str(row["query"]), positives=[str(text) for text in row["positives"]],
            negatives=[str(text) for text in row.get("negatives", [])],
            positive_labels=[float(label) for label in row["positive_labels"]] if row.get("positive_labels") else None,
            pseudo=bool(row.get("pseudo", False)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise TrainingError(f"{where}: expected {{\"query\": str, \"positives\": [str], \"negatives\": [str]}} ({error}).") from error
    if group.positive_labels is not None and (
        len(group.positive_labels) != len(group.positives) or not all(0 <= label <= 1 for label in group.positive_labels)
    ):
        raise TrainingError(f"{where}: positive_labels needs one value in [0, 1] per positive.")
    return group


def training_groups_read(*, path: Path) -> list[TrainingGroup]:
    """Read groups from JSONL: one {"query", "positives", "negatives"[, "positive_labels", "pseudo"]} a line.

    A path ending in .xz is read through xz (groups travel compressed: their hard negatives recur).
    """
    opener = lzma.open if Path(path).suffix == ".xz" else open
    groups = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                groups.append(group_from_row(json.loads(line), where=f"{path}, line {line_number}"))
    return groups


def training_groups_write(*, groups: Iterable[TrainingGroup], path: Path,
                          query_ids: Iterable[str] | None = None) -> int:
    """Write groups as JSONL, each with its query id when `query_ids` gives them in the same order; return how many."""
    if query_ids is None:
        rows = (group_row(group) for group in groups)
    else:
        rows = (group_row(group, query_id=query_id) for group, query_id in zip(groups, query_ids, strict=True))
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def queries_hold_out(*, queries: Iterable[str], fraction: float, seed: int) -> set[str]:
    """The about `fraction` of the distinct queries (or query ids) that a `seed`ed shuffle sets aside.

    The same queries always give the same split, in whatever order or repetition they come.
    """
    shuffled = sorted(set(queries))
    random.Random(seed).shuffle(shuffled)
    return set(shuffled[: round(len(shuffled) * fraction)])


def validation_split(groups: Sequence[TrainingGroup], *, fraction: float, seed: int) -> tuple[list, list]:
    """Split groups by query: (training, validation), about `fraction` of the labelled queries in validation.

    Every group of one query lands on the same side, so validation queries are never trained on.
    Pseudo-query groups always train: the fraction is of the labelled queries alone.
    """
    if not fraction:
        return list(groups), []
    held = queries_hold_out(queries=(group.query for group in groups if not group.pseudo), fraction=fraction, seed=seed)
    validation = [group for group in groups if group.query in held and not group.pseudo]
    training = [group for group in groups if group.query not in held or group.pseudo]
    if not validation or not training:
        raise TrainingError(
            f"A validation fraction of {fraction} leaves {len(training)} training and {len(validation)} validation groups "
            f"out of {len(groups)}: give more groups or a fraction that leaves some on both sides."
        )
    return training, validation
