"""Posting blocks kept in chunk order through every write: full-text search looks candidates up by binary search.

retrieval/hybrid_search.sql finds a candidate's posting in an optional lexeme's block with width_bucket, which
needs the block's packed postings ascending (the chunk's slot is their top bits). 0009 appended a write's postings
at the end of their blocks: in order for new chunks, whose ids are the highest, but not for an updated chunk's
(edited text, a chunk moved to another collection), nor for two ingestions whose statements end in the other order
than their ids were drawn. Now an append that would break the order merges instead, and blocks already out of
order are sorted once.
"""

import functools
import importlib

from django.db import migrations

TEXT_INDEX = importlib.import_module("ragapp.documents.migrations.0005_text_index")
PACKED = importlib.import_module("ragapp.documents.migrations.0009_packed_postings")

APPENDED = "SET postings = block.postings || excluded.postings;"
# The common case, new chunks after the block's last one, stays a concatenation.
MERGED = """SET postings = CASE WHEN block.postings[cardinality(block.postings)] < excluded.postings[1]
                        THEN block.postings || excluded.postings
                        ELSE ARRAY(SELECT posting FROM unnest(block.postings || excluded.postings) AS posting
                                   ORDER BY posting) END;"""


def sorted_blocks_appended(entries: str, frequency: str) -> str:
    """0009's append, merging where the postings do not all come after the block's."""
    statement = PACKED.packed_blocks_appended(entries, frequency)
    if APPENDED not in statement:
        raise RuntimeError("0009's append changed: update the SET clause 0010 replaces.")
    return statement.replace(APPENDED, MERGED)


APPLY_FUNCTION = TEXT_INDEX.apply_function(
    functools.partial(TEXT_INDEX.remove, blocks_rewritten=PACKED.PACKED_BLOCKS_REWRITTEN),
    functools.partial(TEXT_INDEX.add, blocks_appended=sorted_blocks_appended),
    create="CREATE OR REPLACE FUNCTION",
)

SORT = """
UPDATE documents_postingblock
SET postings = ARRAY(SELECT posting FROM unnest(postings) AS posting ORDER BY posting)
WHERE postings <> ARRAY(SELECT posting FROM unnest(postings) AS posting ORDER BY posting);
"""


class Migration(migrations.Migration):

    dependencies = [
        ('documents', '0009_packed_postings'),
    ]

    operations = [
        # Going back leaves the blocks sorted, which 0009 reads as well.
        migrations.RunSQL(sql=APPLY_FUNCTION + SORT, reverse_sql=PACKED.APPLY_FUNCTION),
    ]
