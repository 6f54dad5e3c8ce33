"""A block's postings packed into one int8 array: chunk, frequency and length in one number each.

Full-text search unnests every posting of the lexemes it reads (retrieval/hybrid_search.sql). Three parallel
arrays make PostgreSQL unnest three functions and zip their results, which cost about as much as the scoring;
one array costs a third. Measured at 1M chunks (bench/README.md): a question's essential postings summed in 26
instead of 37 ms, the commonest lexemes' postings for 20k candidates read in 46 instead of 67 ms.

A posting is (chunk id mod 4096) << 48 | frequency << 32 | length. The block number gives back the rest of the
chunk id; a frequency is at most 256 (PostgreSQL keeps 256 positions a lexeme) and a length, a tsvector's count
of lexemes, is below 2^32. Sorting by the packed number sorts by chunk id. The trigger function keeps this column
exact as it kept the three: 0005's statements, with only their writes to the blocks replaced.
"""

import functools
import importlib

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


# The triggers of 0005, whose statements stay; only what they write into the blocks changes.
TEXT_INDEX = importlib.import_module("ragapp.documents.migrations.0005_text_index")

# Every block remove() emptied, written back without the postings `removed` holds.
PACKED_BLOCKS_REWRITTEN = """
    INSERT INTO documents_postingblock (collection_id, lexeme, block, postings)
    SELECT emptied.collection_id, emptied.lexeme, emptied.block, array_agg(posting ORDER BY posting)
    FROM emptied CROSS JOIN LATERAL unnest(emptied.postings) AS posting
    WHERE NOT EXISTS (SELECT 1 FROM removed
                      WHERE removed.id = posting_chunk(emptied.block, posting) AND removed.lexeme = emptied.lexeme)
    GROUP BY emptied.collection_id, emptied.lexeme, emptied.block;
"""


def packed_blocks_appended(entries: str, frequency: str) -> str:
    """Append the postings of the chunks `entries` reads to their blocks: new chunks have the highest ids, so a
    block stays sorted."""
    return f"""
    INSERT INTO documents_postingblock AS block (collection_id, lexeme, block, postings)
    SELECT chunk.collection_id, entry.lexeme, (chunk.id / 4096)::int,
           array_agg(posting_pack(chunk.id, {frequency}, length(chunk.search_vector)) ORDER BY chunk.id) {entries}
    GROUP BY chunk.collection_id, entry.lexeme, (chunk.id / 4096)::int
    ORDER BY chunk.collection_id, entry.lexeme, (chunk.id / 4096)::int
    ON CONFLICT (collection_id, lexeme, block) DO UPDATE
    SET postings = block.postings || excluded.postings;
"""


APPLY_FUNCTION = TEXT_INDEX.apply_function(
    functools.partial(TEXT_INDEX.remove, blocks_rewritten=PACKED_BLOCKS_REWRITTEN),
    functools.partial(TEXT_INDEX.add, blocks_appended=packed_blocks_appended),
    create="CREATE OR REPLACE FUNCTION",
)
# Going back: 0005's function again.
APPLY_FUNCTION_0005 = TEXT_INDEX.apply_function(create="CREATE OR REPLACE FUNCTION")


class Migration(migrations.Migration):

    dependencies = [
        ('documents', '0008_hnsw_build_from_1m_sweep'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(sql=POSTING_FUNCTIONS + PACK + APPLY_FUNCTION,
                                  reverse_sql=UNPACK + APPLY_FUNCTION_0005 + DROP_POSTING_FUNCTIONS),
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
