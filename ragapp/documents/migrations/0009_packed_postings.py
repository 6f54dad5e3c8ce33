"""A block's postings packed into one int8 array: chunk, frequency and length in one number each.

Full-text search unnests every posting of the lexemes it reads (retrieval/hybrid_search.sql). Three parallel
arrays make PostgreSQL unnest three functions and zip their results, which cost about as much as the scoring;
one array costs a third. Measured at 1M chunks (bench/README.md): a question's essential postings summed in 26
instead of 37 ms, the commonest lexemes' postings for 20k candidates read in 46 instead of 67 ms.

A posting is (chunk id mod 4096) << 48 | frequency << 32 | length. The block number gives back the rest of the
chunk id; a frequency is at most 256 (PostgreSQL keeps 256 positions a lexeme) and a length, a tsvector's count
of lexemes, is below 2^32. Sorting by the packed number sorts by chunk id. The triggers of migration 0005 are
rewritten to keep this column exact, as they kept the three.
"""

import django.contrib.postgres.fields
from django.db import migrations, models

# One place for the layout: the triggers, the search statement and the tests' check call these (plain SQL
# bodies, inlined by the planner).
POSTING_FUNCTIONS = """
CREATE FUNCTION posting_pack(chunk_id bigint, frequency integer, length integer)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- Parenthesised: PostgreSQL gives << and | one precedence, left to right.
    SELECT ((chunk_id % 4096) << 48) | (frequency::bigint << 32) | length::bigint
$$;
CREATE FUNCTION posting_chunk(block integer, posting bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT block::bigint * 4096 + (posting >> 48) $$;
CREATE FUNCTION posting_frequency(posting bigint)
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT ((posting >> 32) & 65535)::integer $$;
CREATE FUNCTION posting_length(posting bigint)
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT (posting & 4294967295)::integer $$;
"""

# The old arrays are emptied as the new one is written, so that the rows written carry one copy, not two.
PACK = """
ALTER TABLE documents_postingblock ADD COLUMN postings bigint[],
    ALTER COLUMN chunk_ids DROP NOT NULL, ALTER COLUMN frequencies DROP NOT NULL, ALTER COLUMN lengths DROP NOT NULL;
UPDATE documents_postingblock AS block
SET postings = (SELECT array_agg(posting_pack(posting.chunk_id, posting.frequency, posting.length) ORDER BY posting.chunk_id)
                FROM unnest(block.chunk_ids, block.frequencies, block.lengths) AS posting (chunk_id, frequency, length)),
    chunk_ids = NULL, frequencies = NULL, lengths = NULL;
ALTER TABLE documents_postingblock ALTER COLUMN postings SET NOT NULL,
    DROP COLUMN chunk_ids, DROP COLUMN frequencies, DROP COLUMN lengths;
"""

UNPACK = """
ALTER TABLE documents_postingblock ADD COLUMN chunk_ids bigint[], ADD COLUMN frequencies integer[], ADD COLUMN lengths integer[];
UPDATE documents_postingblock AS block
SET chunk_ids = ARRAY(SELECT posting_chunk(block.block, posting) FROM unnest(block.postings) WITH ORDINALITY AS p (posting, n) ORDER BY n),
    frequencies = ARRAY(SELECT posting_frequency(posting) FROM unnest(block.postings) WITH ORDINALITY AS p (posting, n) ORDER BY n),
    lengths = ARRAY(SELECT posting_length(posting) FROM unnest(block.postings) WITH ORDINALITY AS p (posting, n) ORDER BY n);
ALTER TABLE documents_postingblock ALTER COLUMN chunk_ids SET NOT NULL, ALTER COLUMN frequencies SET NOT NULL,
    ALTER COLUMN lengths SET NOT NULL, DROP COLUMN postings;
"""

DROP_POSTING_FUNCTIONS = """
DROP FUNCTION posting_pack(bigint, integer, integer);
DROP FUNCTION posting_chunk(integer, bigint);
DROP FUNCTION posting_frequency(bigint);
DROP FUNCTION posting_length(bigint);
"""


def changed(other: str | None) -> str:
    """Which chunks' postings change: all of them, or for an UPDATE those whose vector or collection moved."""
    if other is None:
        return "true"
    return f"""NOT EXISTS (
        SELECT 1 FROM {other} AS same
        WHERE same.id = chunk.id AND same.collection_id = chunk.collection_id AND same.search_vector = chunk.search_vector
    )"""


def remove(other: str | None) -> str:
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
    )
    INSERT INTO documents_postingblock (collection_id, lexeme, block, postings)
    SELECT emptied.collection_id, emptied.lexeme, emptied.block, array_agg(posting ORDER BY posting)
    FROM emptied CROSS JOIN LATERAL unnest(emptied.postings) AS posting
    WHERE NOT EXISTS (SELECT 1 FROM removed
                      WHERE removed.id = posting_chunk(emptied.block, posting) AND removed.lexeme = emptied.lexeme)
    GROUP BY emptied.collection_id, emptied.lexeme, emptied.block;
"""


def add(other: str | None) -> str:
    """Add the postings of new_chunks: lexeme counts go up, postings are appended to their blocks.

    New chunks have the highest ids, so appending keeps a block sorted.
    """
    entries = f"""
    FROM new_chunks AS chunk CROSS JOIN LATERAL unnest(chunk.search_vector) AS entry
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

    INSERT INTO documents_postingblock AS block (collection_id, lexeme, block, postings)
    SELECT chunk.collection_id, entry.lexeme, (chunk.id / 4096)::int,
           array_agg(posting_pack(chunk.id, {frequency}, length(chunk.search_vector)) ORDER BY chunk.id) {entries}
    GROUP BY chunk.collection_id, entry.lexeme, (chunk.id / 4096)::int
    ORDER BY chunk.collection_id, entry.lexeme, (chunk.id / 4096)::int
    ON CONFLICT (collection_id, lexeme, block) DO UPDATE
    SET postings = block.postings || excluded.postings;
"""


# An UPDATE takes the old postings out before it adds the new ones.
APPLY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION documents_chunk_text_index_apply() RETURNS trigger LANGUAGE plpgsql AS $$
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


def apply_function_0005() -> str:
    """The trigger function as migration 0005 wrote it, for going back."""
    import importlib

    return importlib.import_module("ragapp.documents.migrations.0005_text_index").APPLY_FUNCTION.replace(
        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


class Migration(migrations.Migration):

    dependencies = [
        ('documents', '0008_hnsw_build_from_1m_sweep'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(sql=POSTING_FUNCTIONS + PACK + APPLY_FUNCTION,
                                  reverse_sql=UNPACK + apply_function_0005() + DROP_POSTING_FUNCTIONS),
            ],
            state_operations=[
                migrations.RemoveField(model_name='postingblock', name='chunk_ids'),
                migrations.RemoveField(model_name='postingblock', name='frequencies'),
                migrations.RemoveField(model_name='postingblock', name='lengths'),
                migrations.AddField(
                    model_name='postingblock',
                    name='postings',
                    field=django.contrib.postgres.fields.ArrayField(base_field=models.BigIntegerField(), size=None),
                    preserve_default=False,
                ),
            ],
        ),
    ]
