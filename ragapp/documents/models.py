"""Collections of documents and the chunks retrieval searches."""

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Coalesce
from pgvector.django import HnswIndex, VectorField

# One embedding model per installation: an HNSW index needs one fixed dimension.
# all-MiniLM-L6-v2 (the default model) gives 384. `manage.py reembed` swaps in another model of
# the same dimension; another dimension needs a migration of this column and its index.
EMBEDDING_DIMENSIONS = 384

# PostgreSQL text-search configurations a collection may use. Chinese has no configuration:
# its text is segmented into words before indexing (see ragapp.retrieval.segmentation), and
# the segmented words pass through any of these unchanged.
SEARCH_LANGUAGES = [
    ("english", "English (stemming)"),
    ("simple", "Simple (no stemming; Chinese and mixed text)"),
    ("french", "French"),
    ("german", "German"),
    ("spanish", "Spanish"),
    ("italian", "Italian"),
    ("portuguese", "Portuguese"),
    ("dutch", "Dutch"),
    ("russian", "Russian"),
]


def search_vector_expression():
    """to_tsvector over the indexed text, with the row's own language as a constant config.

    A generated column must be immutable, so the language is matched against constants
    instead of being cast from the column (a text -> regconfig cast is only stable).
    """
    indexed_text = Coalesce("search_text", "text")
    return models.Case(
        *[
            models.When(language=language, then=SearchVector(indexed_text, config=language))
            for language, _ in SEARCH_LANGUAGES
        ],
        default=SearchVector(indexed_text, config="simple"),
        output_field=SearchVectorField(),
    )


class Collection(models.Model):
    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=200, unique=True)
    language = models.CharField(
        max_length=20, choices=SEARCH_LANGUAGES, default="english",
        help_text="Text-search language for full-text retrieval. Fixed once the collection has documents, "
                  "since their text was indexed in it: for another language, create a new collection.",
    )
    reranking_enabled = models.BooleanField(default=True)
    rerank_fusion_weight = models.FloatField(
        default=1.0,
        help_text="Weight of the reranker's ranking against the retrieval ranking when both are fused "
                  "(1 = reranker order alone). `manage.py evaluate --tune-fusion` picks it on known questions.",
    )
    dense_weight = models.FloatField(
        default=0.5, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of the dense (embedding) side when retrieval fuses it with full text; 0.5 weighs both "
                  "equally, 0 keeps full text's order alone. Lower it when the embedding model does not read the "
                  "collection's language: `manage.py evaluate --tune-dense-weight` picks it on known questions.",
    )
    readers = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="readable_collections")
    reader_groups = models.ManyToManyField("auth.Group", blank=True, related_name="readable_collections")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Document(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        PARSING = "parsing"
        CHUNKING = "chunking"
        EMBEDDING = "embedding"
        READY = "ready"
        FAILED = "failed"

    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=500)
    file = models.FileField(upload_to="documents/%Y/%m/", max_length=500, blank=True)
    original_filename = models.CharField(max_length=500)
    # An identifier from the source the document came from (e.g. a BEIR corpus id); blank for uploads.
    external_id = models.CharField(max_length=200, blank=True, db_index=True)
    content_type = models.CharField(max_length=100, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, help_text="Percent done.")
    error = models.TextField(blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    ingested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["collection", "sha256"], name="document_unique_content_per_collection"),
        ]

    def __str__(self) -> str:
        return self.title


class Chunk(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    # Copied from the document so retrieval filters without a join.
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="+")
    language = models.CharField(max_length=20, choices=SEARCH_LANGUAGES)
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    # The text with Chinese segmented into space-separated words; null when identical to text.
    search_text = models.TextField(null=True, blank=True)
    page = models.PositiveIntegerField(null=True, blank=True)
    heading_path = models.JSONField(default=list, blank=True)
    char_start = models.PositiveIntegerField()
    char_end = models.PositiveIntegerField()
    token_count = models.PositiveIntegerField()
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS)
    search_vector = models.GeneratedField(
        expression=search_vector_expression(), output_field=SearchVectorField(), db_persist=True,
    )

    class Meta:
        ordering = ["document", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_unique_ordinal"),
        ]
        indexes = [
            # m and ef_construction from sweeps at 100k and 1M chunks (bench/README.md, retrieval.py): at 1M,
            # (24, 100) gave recall@10 0.957-0.972 at ef_search 1000; (32, 200) gives 0.98 at 400, 0.9995 at 800.
            HnswIndex(
                name="chunk_embedding_hnsw", fields=["embedding"],
                m=32, ef_construction=200, opclasses=["vector_cosine_ops"],
            ),
            GinIndex(name="chunk_search_vector_gin", fields=["search_vector"]),
        ]

    def __str__(self) -> str:
        return f"{self.document} #{self.ordinal}"


class CollectionTextStatistics(models.Model):
    """The collection totals BM25 needs, kept current by triggers on the chunk table.

    Full-text ranking divides each chunk's length by the collection's mean; counting that on
    every question would read every chunk. Database triggers (migration 0003) add and subtract
    each inserted, deleted or updated chunk, whatever code path or cascade changed it.
    """

    collection = models.OneToOneField(
        Collection, on_delete=models.CASCADE, primary_key=True, related_name="text_statistics",
    )
    chunk_count = models.BigIntegerField(default=0)
    lexeme_count = models.BigIntegerField(default=0)  # sum of length(search_vector): distinct lexemes per chunk

    def __str__(self) -> str:
        return f"{self.collection}: {self.chunk_count} chunks"


class CollectionLexeme(models.Model):
    """One lexeme of a collection: how many chunks hold it, and the most times one chunk holds it.

    Full-text search reads these before any posting to know each query lexeme's weight and the
    most it can add to a chunk's score (see retrieval/hybrid_search.sql). Triggers (migration
    0005) keep chunk_count exact through every insert, update and delete of chunks;
    max_frequency only ever grows, so it stays an upper bound after deletes.
    """

    pk = models.CompositePrimaryKey("collection", "lexeme")
    collection = models.ForeignKey(Collection, on_delete=models.DO_NOTHING, related_name="+", db_index=False)
    lexeme = models.TextField()
    chunk_count = models.BigIntegerField()
    max_frequency = models.IntegerField()

    def __str__(self) -> str:
        return f"{self.lexeme} ({self.chunk_count} chunks)"


class PostingBlock(models.Model):
    """A lexeme's postings for one range of 4,096 chunk ids: the chunks, how often each holds it, their lengths.

    Blocks bound what adding one document rewrites: a few short arrays, never a common lexeme's
    whole list (the range is chunk id / 4096, in migration 0005's SQL).

    Each posting is one number, in chunk order: the chunk, its frequency of the lexeme and its length
    (its number of distinct lexemes, as BM25 reads it), packed as migration 0009 says. Kept exact by the
    same triggers as CollectionLexeme; chunks deleted with their collection take their blocks with them
    through those triggers, hence DO_NOTHING here.
    """

    pk = models.CompositePrimaryKey("collection", "lexeme", "block")
    collection = models.ForeignKey(Collection, on_delete=models.DO_NOTHING, related_name="+", db_index=False)
    lexeme = models.TextField()
    block = models.IntegerField()
    postings = ArrayField(models.BigIntegerField())

    def __str__(self) -> str:
        return f"{self.lexeme} block {self.block}: {len(self.postings)} chunks"


class EmbeddingSpace(models.Model):
    """The embedding model whose vectors the chunk table holds (a single row)."""

    model_name = models.CharField(max_length=500)
    dimensions = models.PositiveIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.model_name} ({self.dimensions} dimensions)"
