"""manage.py ingest PATH... --collection NAME: ingest files and folders from the command line."""

from pathlib import Path

from django.core.files import File
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from ragapp.core.services import database_migrate
from ragapp.documents.models import SEARCH_LANGUAGES, Document
from ragapp.documents.services import collection_get_or_create, document_create, document_ingest


class Command(BaseCommand):
    help = "Ingest files and folders (recursively) into a collection, with a progress bar."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", type=Path, help="Files or folders to ingest.")
        parser.add_argument("--collection", required=True, help="Collection name; created if it does not exist.")
        parser.add_argument(
            "--language", default="english", choices=[code for code, _ in SEARCH_LANGUAGES],
            help="Text-search language for a new collection (default: english).",
        )
        parser.add_argument(
            "--queue", action="store_true",
            help="Queue the files for the background workers instead of ingesting them here.",
        )

    def handle(self, *args, paths, collection, language, queue, **options):
        files = list(_expand(paths))
        if not files:
            raise CommandError("No files found under the given paths.")
        database_migrate()
        target = collection_get_or_create(name=collection, language=language)
        counts = {"ready": 0, "failed": 0, "duplicate": 0, "queued": 0}
        for path in tqdm(files, desc=f"Ingesting into {target.name}", unit="file"):
            counts[self._ingest_one(path, target, queue)] += 1
        self.stdout.write(", ".join(f"{count} {name}" for name, count in counts.items() if count))

    def _ingest_one(self, path: Path, collection, queue: bool) -> str:
        with path.open("rb") as handle:
            document, created = document_create(collection=collection, file=File(handle, name=path.name), queue=queue)
        if not created:
            tqdm.write(f"{path}: already in the collection as '{document.title}'")
            return "duplicate"
        if document.status == Document.Status.QUEUED and not queue:
            document_ingest(document=document)
            document.refresh_from_db()
        if document.status == Document.Status.FAILED:
            tqdm.write(f"{path}: failed: {document.error}")
            return "failed"
        return "queued" if queue else "ready"


def _expand(paths: list[Path]):
    """Yield the files named, and every file under the folders named, in a stable order."""
    for path in paths:
        if not path.exists():
            raise CommandError(f"{path} does not exist.")
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            yield path
