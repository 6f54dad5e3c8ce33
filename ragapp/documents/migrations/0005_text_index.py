"""Per-collection lexemes and posting blocks for full-text top-k, maintained by statement-level triggers.

Full-text search reads a query lexeme's chunk count and largest frequency before any posting, and
the postings of the lexemes that can still change the top k (retrieval/hybrid_search.sql). The
triggers below keep both exact through any insert, update or delete of chunks, cascades included,
as migration 0003 does for the collection totals. A chunk's postings sit in the block of its id
divided by 4096 (models.POSTING_BLOCK_CHUNKS).
"""

import django.contrib.postgres.fields
import django.db.models.deletion
from django.db import migrations, models

def changed(other: str | None) -> str:
    """Which chunks' postings change: all of them, or for an UPDATE those whose vector or collection moved.

    Re-embedding, say, updates every chunk and changes no posting.
    """
    if other is None:
        return "true"
    return f"""NOT EXISTS (
        SELECT 1 FROM {other} AS same
        WHERE same.id = chunk.id AND same.collection_id = chunk.collection_id AND same.search_vector = chunk.search_vector
    )"""


# Every block remove() emptied, written back without the postings `removed` (remove()'s CTEs) holds.
BLOCKS_REWRITTEN = """
    INSERT INTO documents_postingblock (collection_id, lexeme, block, chunk_ids, frequencies, lengths)
    SELECT emptied.collection_id, emptied.lexeme, emptied.block, array_agg(posting.chunk_id ORDER BY posting.chunk_id),
           array_agg(posting.frequency ORDER BY posting.chunk_id), array_agg(posting.length ORDER BY posting.chunk_id)
    FROM emptied
         CROSS JOIN LATERAL unnest(emptied.chunk_ids, emptied.frequencies, emptied.lengths)
             AS posting (chunk_id, frequency, length)
    WHERE NOT EXISTS (SELECT 1 FROM removed WHERE removed.id = posting.chunk_id AND removed.lexeme = emptied.lexeme)
    GROUP BY emptied.collection_id, emptied.lexeme, emptied.block;
"""


def remove(other: str | None, *, blocks_rewritten: str = BLOCKS_REWRITTEN) -> str:
    """Take old_chunks' postings out: lexeme counts go down (a lexeme no chunk holds goes), blocks are rewritten."""
    return f"""
    WITH removed AS MATERIALIZED (
        SELECT chunk.id, chunk.collection_id, entry.lexeme
        FROM old_chunks AS chunk CROSS JOIN LATERAL unnest(chunk.search_vector) AS entry
        WHERE {changed(other)}
    ),
    gone AS (
        SELECT collection_id, lexeme, count(*) AS chunks FROM removed GROUP BY collection_id, lexeme
    ),
    decremented AS (
        UPDATE documents_collectionlexeme AS lexeme SET chunk_count = lexeme.chunk_count - gone.chunks
        FROM gone
        WHERE lexeme.collection_id = gone.collection_id AND lexeme.lexeme = gone.lexeme
          AND lexeme.chunk_count > gone.chunks
    ),
    forgotten AS (
        DELETE FROM documents_collectionlexeme AS lexeme USING gone
        WHERE lexeme.collection_id = gone.collection_id AND lexeme.lexeme = gone.lexeme
          AND lexeme.chunk_count <= gone.chunks
    ),
    emptied AS (
        -- Every block holding a removed posting is taken out and written back without it.
        DELETE FROM documents_postingblock AS block
        USING (SELECT DISTINCT collection_id, lexeme, (id / 4096)::int AS block FROM removed) AS touched
        WHERE block.collection_id = touched.collection_id AND block.lexeme = touched.lexeme
          AND block.block = touched.block
        RETURNING block.*
    ){blocks_rewritten}"""


def blocks_appended(entries: str, frequency: str) -> str:
    """Append the postings of the chunks `entries` reads (FROM ... WHERE, as `chunk` and `entry`) to their blocks."""
    block = "(chunk.id / 4096)::int"
    return f"""
    INSERT INTO documents_postingblock AS block (collection_id, lexeme, block, chunk_ids, frequencies, lengths)
    SELECT chunk.collection_id, entry.lexeme, {block}, array_agg(chunk.id ORDER BY chunk.id),
           array_agg({frequency} ORDER BY chunk.id), array_agg(length(chunk.search_vector) ORDER BY chunk.id) {entries}
    GROUP BY chunk.collection_id, entry.lexeme, {block}
    ORDER BY chunk.collection_id, entry.lexeme, {block}
    ON CONFLICT (collection_id, lexeme, block) DO UPDATE
    SET chunk_ids = block.chunk_ids || excluded.chunk_ids,
        frequencies = block.frequencies || excluded.frequencies,
        lengths = block.lengths || excluded.lengths;
"""


def add(other: str | None, *, source: str = "new_chunks", blocks_appended=blocks_appended) -> str:
    """Add the postings of `source`'s chunks: lexeme counts go up, postings are appended to their blocks."""
    entries = f"""
    FROM {source} AS chunk CROSS JOIN LATERAL unnest(chunk.search_vector) AS entry
    WHERE {changed(other)}"""
    frequency = "coalesce(array_length(entry.positions, 1), 1)"  # a stripped vector has no positions: 1
    return f"""
    INSERT INTO documents_collectionlexeme AS lexeme (collection_id, lexeme, chunk_count, max_frequency)
    SELECT chunk.collection_id, entry.lexeme, count(*), max({frequency}) {entries}
    GROUP BY chunk.collection_id, entry.lexeme
    ORDER BY chunk.collection_id, entry.lexeme
    ON CONFLICT (collection_id, lexeme) DO UPDATE
    SET chunk_count = lexeme.chunk_count + excluded.chunk_count,
        max_frequency = greatest(lexeme.max_frequency, excluded.max_frequency);
{blocks_appended(entries, frequency)}"""


def apply_function(remove=remove, add=add, *, create: str = "CREATE FUNCTION") -> str:
    """The trigger function, from `remove` and `add` (later migrations pass their own block layout)."""
    # An UPDATE takes the old postings out before it adds the new ones.
    return f"""
{create} documents_chunk_text_index_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        {remove(None)}
    ELSIF TG_OP = 'UPDATE' THEN
        {remove("new_chunks")}
        {add("old_chunks")}
    ELSE
        {add(None)}
    END IF;
    RETURN NULL;
END
$$;
"""


APPLY_FUNCTION = apply_function()

# A trigger with transition tables may serve one event only, hence three.
TRIGGERS = """
CREATE TRIGGER documents_chunk_text_index_insert AFTER INSERT ON documents_chunk
    REFERENCING NEW TABLE AS new_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION documents_chunk_text_index_apply();
CREATE TRIGGER documents_chunk_text_index_delete AFTER DELETE ON documents_chunk
    REFERENCING OLD TABLE AS old_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION documents_chunk_text_index_apply();
CREATE TRIGGER documents_chunk_text_index_update AFTER UPDATE ON documents_chunk
    REFERENCING OLD TABLE AS old_chunks NEW TABLE AS new_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION documents_chunk_text_index_apply();
"""

BACKFILL = add(None, source="documents_chunk")

# BM25 in one place for full-text search (retrieval/hybrid_search.sql): one lexeme's share of a
# chunk's score, and the whole scores of the chunks `ids` the question matches (`terms`, and none of
# `excluded` when `excluding`), over the query lexemes they hold. A chunk's length is its number of
# distinct lexemes; a frequency is the lexeme's number of positions in it. Both are plain SQL bodies,
# so the planner inlines them (a function call per chunk costs 4 times the scoring).
SCORE_FUNCTIONS = """
CREATE FUNCTION bm25_term(frequency float8, length float8, idf float8, mean_length float8, k1 float8, b float8)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT idf * frequency * (k1 + 1) / (frequency + k1 * (1 - b + b * length / mean_length))
$$;

CREATE FUNCTION bm25_chunks(ids bigint[], lexemes text[], idfs float8[], mean_length float8, k1 float8, b float8,
                            terms tsquery, excluded tsquery[], excluding boolean)
RETURNS TABLE (id bigint, score float8) LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT chunk.id, sum(bm25_term(coalesce(array_length(entry.positions, 1), 1), length(chunk.search_vector),
                                   weight.idf, mean_length, k1, b))
    FROM documents_chunk AS chunk
         CROSS JOIN LATERAL unnest(ts_filter(setweight(chunk.search_vector, 'A', lexemes), '{a}')) AS entry
         JOIN unnest(lexemes, idfs) AS weight (lexeme, idf) ON weight.lexeme = entry.lexeme
    WHERE chunk.id = ANY (ids) AND chunk.search_vector @@ terms AND NOT (excluding AND chunk.search_vector @@ ANY (excluded))
    GROUP BY chunk.id
$$;
"""

DROP = """
DROP TRIGGER documents_chunk_text_index_insert ON documents_chunk;
DROP TRIGGER documents_chunk_text_index_delete ON documents_chunk;
DROP TRIGGER documents_chunk_text_index_update ON documents_chunk;
DROP FUNCTION documents_chunk_text_index_apply();
DROP FUNCTION bm25_chunks(bigint[], text[], float8[], float8, float8, float8, tsquery, tsquery[], boolean);
DROP FUNCTION bm25_term(float8, float8, float8, float8, float8, float8);
"""


class Migration(migrations.Migration):

    dependencies = [
        ('documents', '0004_collection_language_fixed_help'),
    ]

    operations = [
        migrations.CreateModel(
            name='CollectionLexeme',
            fields=[
                ('pk', models.CompositePrimaryKey('collection', 'lexeme', blank=True, editable=False, primary_key=True, serialize=False)),
                ('lexeme', models.TextField()),
                ('chunk_count', models.BigIntegerField()),
                ('max_frequency', models.IntegerField()),
                ('collection', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='documents.collection')),
            ],
        ),
        migrations.CreateModel(
            name='PostingBlock',
            fields=[
                ('pk', models.CompositePrimaryKey('collection', 'lexeme', 'block', blank=True, editable=False, primary_key=True, serialize=False)),
                ('lexeme', models.TextField()),
                ('block', models.IntegerField()),
                ('chunk_ids', django.contrib.postgres.fields.ArrayField(base_field=models.BigIntegerField(), size=None)),
                ('frequencies', django.contrib.postgres.fields.ArrayField(base_field=models.IntegerField(), size=None)),
                ('lengths', django.contrib.postgres.fields.ArrayField(base_field=models.IntegerField(), size=None)),
                ('collection', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='documents.collection')),
            ],
        ),
        migrations.RunSQL(sql=APPLY_FUNCTION + TRIGGERS + BACKFILL + SCORE_FUNCTIONS, reverse_sql=DROP),
    ]
