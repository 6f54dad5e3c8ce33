"""Migration 0009 packs the posting blocks stored before it, and unpacks them going back, losing nothing; 0010 sorts
those out of chunk order."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests.conftest import text_statistics_hold

BEFORE = [("documents", "0008_hnsw_build_from_1m_sweep")]
PACKED = [("documents", "0009_packed_postings")]
SORTED = [("documents", "0010_sorted_posting_blocks")]
BLOCKS_IN_CHUNK_ORDER = "SELECT bool_and(postings = ARRAY(SELECT unnest(postings) ORDER BY 1)) FROM documents_postingblock"
POSTINGS_IN_THREE_ARRAYS = """
    SELECT block.lexeme, block.block, posting.chunk_id, posting.frequency, posting.length
    FROM documents_postingblock AS block
         CROSS JOIN LATERAL unnest(block.chunk_ids, block.frequencies, block.lengths) AS posting (chunk_id, frequency, length)
    WHERE block.collection_id = %s ORDER BY 1, 2, 3
"""


def _migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def _migrate_to_latest() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def _blocks_in_chunk_order() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(BLOCKS_IN_CHUNK_ORDER)
        return cursor.fetchone()[0]


def _postings_in_three_arrays(collection) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(POSTINGS_IN_THREE_ARRAYS, [collection.pk])
        return cursor.fetchall()


@pytest.mark.django_db(transaction=True)
def test_blocks_stored_before_are_packed_and_unpacked_unchanged(collection, ingest):
    _migrate(BEFORE)
    try:
        ingest(collection, "handbook.txt", ("Taxi receipts are reimbursed monthly, taxi by taxi. " * 30).encode())
        ingest(collection, "kitchen.txt", b"The coffee machine is descaled every Friday.")
        before = _postings_in_three_arrays(collection)
        assert len(before) > 10 and any(frequency > 1 for *_, frequency, _ in before)

        _migrate(PACKED)
        assert text_statistics_hold(collection)  # reads the packed column
        assert _blocks_in_chunk_order(), "a block's postings are out of chunk order"

        _migrate(BEFORE)
        assert _postings_in_three_arrays(collection) == before
    finally:
        _migrate_to_latest()
    ingest(collection, "more.txt", b"Taxi receipts again.")  # the triggers write the packed column again
    assert text_statistics_hold(collection)


@pytest.mark.django_db(transaction=True)
def test_blocks_out_of_chunk_order_are_sorted_and_lose_nothing(collection, ingest):
    _migrate(PACKED)
    try:
        ingest(collection, "handbook.txt", ("Taxi receipts are reimbursed monthly, taxi by taxi. " * 30).encode())
        with connection.cursor() as cursor:  # as 0009's appends could leave them: an updated chunk's postings last
            cursor.execute("UPDATE documents_postingblock SET postings = ARRAY(SELECT unnest(postings) ORDER BY 1 DESC) "
                           "WHERE collection_id = %s AND cardinality(postings) > 1", [collection.pk])
            assert cursor.rowcount > 0
        assert not _blocks_in_chunk_order()

        _migrate(SORTED)
        assert _blocks_in_chunk_order() and text_statistics_hold(collection)
    finally:
        _migrate_to_latest()
