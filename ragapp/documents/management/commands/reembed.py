"""manage.py reembed: re-embed every stored chunk with the configured EMBEDDING_MODEL."""

from django.core.management.base import BaseCommand
from django.db import transaction
from tqdm import tqdm

from ragapp.core.services import database_migrate
from ragapp.documents import embedding
from ragapp.documents.models import Chunk, EmbeddingSpace

BATCH = 256


class Command(BaseCommand):
    help = (
        "Re-embed every chunk with the model named by EMBEDDING_MODEL and record it as the "
        "installation's model. Runs in one transaction: searches keep seeing the old vectors until it commits. "
        "The model must produce vectors of the chunk table's dimension."
    )

    def handle(self, *args, **options):
        database_migrate()
        embedding.embedding_model()  # fails early, with the fix, on a dimension mismatch
        with transaction.atomic():
            ids = list(Chunk.objects.order_by("id").values_list("id", flat=True))
            for start in tqdm(range(0, len(ids), BATCH), desc="Re-embedding", unit="batch"):
                chunks = list(Chunk.objects.filter(id__in=ids[start:start + BATCH]).only("id", "text"))
                for chunk, vector in zip(chunks, embedding.embed_texts([c.text for c in chunks]), strict=True):
                    chunk.embedding = vector
                Chunk.objects.bulk_update(chunks, ["embedding"])
            EmbeddingSpace.objects.all().delete()
            embedding.embedding_space_check()
        self.stdout.write(f"Re-embedded {len(ids)} chunks with {embedding.embedding_model_label()}.")
