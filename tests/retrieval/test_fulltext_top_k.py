"""Full-text top k from postings (MaxScore) against the exact BM25 statement it replaced.

The reference is bench/hybrid_search_exact.sql: the statement that scored every chunk holding a
query word. Both run through search_statement with the same values, on a collection large enough
for the pruning to leave most matching chunks unscored.
"""

import re
from pathlib import Path
from string import Template

import numpy as np
import pytest
from django.db import connection, transaction

from ragapp.documents.models import Chunk, Document
from ragapp.documents.services import collection_get_or_create
from ragapp.retrieval.selectors import search_session_configure, search_query, search_statement
from tests.conftest import text_statistics_hold

pytestmark = pytest.mark.django_db

EXACT_SQL = Template((Path(__file__).parents[2] / "bench" / "hybrid_search_exact.sql").read_text())
WORDS = ("invoice receipt travel train taxi laptop encryption coffee vacation security badge printer network "
         "password manager budget report meeting office holiday parking kitchen expense policy contract "
         "salary training onboarding desk monitor keyboard backup server ticket support refund hotel "
         "flight visa insurance pension").split()
QUESTIONS = [
    "train ticket refund", "laptop encryption password", "coffee", "hotel flight visa insurance pension",
    "expense policy for travel by train or taxi", "the security of the network server backup",
    '"travel policy" hotel', "budget report -meeting", 'office -"parking kitchen"', "x-ray of the desk monitor",
    "the of and", "unheardofword", "salary salary salary", '"pension insurance" hotel',
    "x-ray invoice receipt travel",  # few candidates, common optional words: scored from the chunks' rows
]


@pytest.fixture
def large_collection(db):
    """600 chunks of 8-60 words drawn with Zipf-like frequencies from WORDS, one document per 20 chunks."""
    rng = np.random.default_rng(7)
    collection = collection_get_or_create(name="Large")
    weights = 1 / np.arange(1, len(WORDS) + 1)
    weights /= weights.sum()
    for document_index in range(30):
        document = Document.objects.create(collection=collection, title=f"d{document_index}", original_filename=f"d{document_index}.txt",
                                           sha256=f"{document_index:064d}", status=Document.Status.READY)
        Chunk.objects.bulk_create([
            Chunk(document=document, collection=collection, language=collection.language, ordinal=ordinal,
                  text=" ".join(rng.choice(WORDS, size=rng.integers(8, 60), p=weights)) + (" x-ray" if ordinal == 3 else ""),
                  char_start=0, char_end=1, token_count=10, embedding=_unit(rng))
            for ordinal in range(20)
        ])
    return collection


def _unit(rng) -> list[float]:
    vector = rng.standard_normal(384)
    return (vector / np.linalg.norm(vector)).tolist()


def _fulltext_statement(collection, question: str, *, k: int, template: Template | None = None) -> tuple[str, dict]:
    return search_statement(parsed=search_query(question), collection=collection, reader=None, embedding=None,
                            k=k, limit=k, mode="fulltext", **({"template": template} if template else {}))


def _fulltext(collection, question: str, *, k: int, template: Template | None = None) -> list[tuple[int, int]]:
    statement = _fulltext_statement(collection, question, k=k, template=template)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(*statement)
        return [(row[0], row[14]) for row in cursor.fetchall()]  # chunk id, full-text rank


def assert_same_ranking(collection, question: str, *, k: int) -> None:
    """The same chunks at the same ranks, except where two chunks' scores tie (up to summation order)."""
    found, exact = _fulltext(collection, question, k=k), _fulltext(collection, question, k=k, template=EXACT_SQL)
    assert len(found) == len(exact), question
    differing = [(got, expected) for (got, _), (expected, _) in zip(found, exact) if got != expected]
    if differing:
        scores = _scores(collection, question, [chunk for pair in differing for chunk in pair])
        assert all(abs(scores[got] - scores[expected]) < 1e-9 for got, expected in differing), (question, differing, scores)


def _scores(collection, question: str, chunk_ids: list[int]) -> dict[int, float]:
    """BM25 of the chunks for the question, from the collection's lexeme counts."""
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT scored.id, scored.score
            FROM documents_collectiontextstatistics AS statistics
                 CROSS JOIN LATERAL (
                     SELECT array_agg(lexeme.lexeme) AS lexemes,
                            array_agg(ln(1 + (statistics.chunk_count - lexeme.chunk_count + 0.5) / (lexeme.chunk_count + 0.5))) AS idfs
                     FROM documents_collectionlexeme AS lexeme
                     WHERE lexeme.collection_id = statistics.collection_id
                       AND lexeme.lexeme = ANY (tsvector_to_array(to_tsvector('english', %(text)s)))) AS weights
                 CROSS JOIN LATERAL bm25_chunks(%(ids)s, weights.lexemes, weights.idfs,
                                                statistics.lexeme_count::float8 / statistics.chunk_count, 0.9, 0.4,
                                                replace(websearch_to_tsquery('english', %(matched)s)::text, ' & ', ' | ')::tsquery,
                                                ARRAY[]::tsquery[], false) AS scored
            WHERE statistics.collection_id = %(collection)s""",
                       {"text": search_query(question).scored_text, "matched": search_query(question).matched_text, "ids": chunk_ids, "collection": collection.pk})
        return dict(cursor.fetchall())


@pytest.mark.parametrize("k", [1, 5, 20, 100])
def test_top_k_from_postings_is_the_exact_bm25_top_k(large_collection, k):
    for question in QUESTIONS:
        assert_same_ranking(large_collection, question, k=k)


def test_pruning_leaves_most_matching_chunks_unscored(large_collection):
    """The rarest words set a floor that rules the common words out: fewer chunks are scored than match."""
    parsed = search_query("pension visa coffee")
    statement, params = search_statement(parsed=parsed, collection=large_collection, reader=None, embedding=None,
                                         k=5, limit=5, mode="fulltext")
    with transaction.atomic(), connection.cursor() as cursor:
        search_session_configure(cursor, k=5, collection=large_collection)
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
        plan = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM documents_chunk WHERE collection_id = %s AND search_vector @@ "
                       "to_tsquery('english', 'pension | visa | coffee')", [large_collection.pk])
        matching = cursor.fetchone()[0]
    partial_rows = _cte_rows(plan[0]["Plan"], "CTE partial")
    assert 0 < partial_rows < matching / 2, (partial_rows, matching)


def test_a_rare_phrase_word_leaves_the_floor_above_zero(large_collection):
    """Most chunks holding a rare word of a phrase match neither the phrase nor any other word: the floor
    comes from chunks of the words that match alone, or it stays 0 and nothing is pruned."""
    parsed = search_query('"pension insurance" hotel')
    statement, params = search_statement(parsed=parsed, collection=large_collection, reader=None, embedding=None,
                                         k=5, limit=5, mode="fulltext")
    statement = statement.replace("SELECT chunk.id, chunk.ordinal", "SELECT (SELECT score FROM seed_floor), chunk.id, chunk.ordinal", 1)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params)
        floors = {row[0] for row in cursor.fetchall()}
    assert len(floors) == 1 and floors.pop() > 0


def _cte_rows(node: dict, name: str) -> int:
    if node.get("Subplan Name") == name:
        return node["Actual Rows"]
    for child in node.get("Plans", []):
        if (rows := _cte_rows(child, name)) is not None:
            return rows
    return None


def test_top_k_stays_exact_after_deletes_and_updates(large_collection):
    Document.objects.filter(collection=large_collection, title__in=["d1", "d2", "d3"]).delete()
    Chunk.objects.filter(collection=large_collection, ordinal=5).update(text="pension pension visa")
    assert text_statistics_hold(large_collection)
    for question in QUESTIONS:
        assert_same_ranking(large_collection, question, k=10)


def test_the_exact_reference_still_reads_every_matching_chunk(large_collection):
    """The peer must stay the old statement: it reads chunks' vectors, never the postings or lexeme counts."""
    statement, params = search_statement(parsed=search_query("pension visa"), collection=large_collection, reader=None,
                                         embedding=None, k=10, limit=10, mode="fulltext", template=EXACT_SQL)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + statement, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "on documents_chunk" in plan and "postingblock" not in plan and "collectionlexeme" not in plan, plan


def test_reingesting_and_deleting_a_collection_keep_the_text_index_exact(collection, ingest):
    from ragapp.documents.models import CollectionLexeme, PostingBlock
    from ragapp.documents.services import document_ingest, document_reingest

    document = ingest(collection, "handbook.txt", ("Taxi receipts are reimbursed monthly. " * 40).encode())
    other = ingest(collection, "kitchen.txt", b"The coffee machine is descaled every Friday.")
    assert text_statistics_hold(collection)
    assert document_reingest(document=document)
    document_ingest(document=document)
    assert text_statistics_hold(collection) and _fulltext(collection, "taxi coffee", k=5)

    collection.delete()  # Django deletes the chunks first: their triggers take the postings out
    assert not CollectionLexeme.objects.filter(collection_id=collection.pk).exists()
    assert not PostingBlock.objects.filter(collection_id=collection.pk).exists()
    assert not Document.objects.filter(pk__in=[document.pk, other.pk]).exists()


def test_every_way_of_scoring_candidates_is_taken_here(large_collection):
    """Candidates are scored from their rows, by looking their optional postings up, or from the optional lists read
    whole: the tests above must cover all three."""
    taken = {_exact_way(large_collection, question, k) for k in (1, 5, 20, 100) for question in QUESTIONS}
    assert {"rows", "lookups", "lists"} <= taken, taken


def test_optional_postings_meet_the_candidates_in_a_hash_never_a_loop_per_candidate(large_collection):
    """Reading the optional lists whole must cost one pass whatever the planner guesses of the candidates' count."""
    by_lists = [_analysed_plan(large_collection, question, k) for k in (1, 5, 20, 100) for question in QUESTIONS
                if _exact_way(large_collection, question, k) == "lists"]
    assert by_lists, "no question read the optional lists whole: the test has nothing to check"
    for plan in by_lists:
        assert "hashed SubPlan" in plan
        assert "Join Filter: (posting.chunk_id = " not in plan and "Nested Loop Left Join" not in plan, plan


def test_blocks_stay_in_chunk_order_whatever_order_postings_come_in(large_collection):
    """A block is kept in chunk order, since lookups binary-search it: an edited chunk's postings, which come after
    higher ids', are merged in order."""
    Chunk.objects.filter(collection=large_collection, ordinal=5).update(text="pension pension visa keyboard")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FILTER (WHERE postings <> ARRAY(SELECT unnest(postings) ORDER BY 1)), count(*) "
                       "FROM documents_postingblock WHERE collection_id = %s", [large_collection.pk])
        out_of_order, blocks = cursor.fetchone()
    assert blocks and out_of_order == 0
    for question in ("pension visa", "keyboard pension hotel flight", "visa"):
        for k in (5, 100):
            assert_same_ranking(large_collection, question, k=k)


def test_partial_sums_stay_in_memory_one_block_at_a_time(large_collection):
    """The essential postings are summed per block of 4,096 chunk ids, each block in its own hash table (at 1M chunks,
    one table for every chunk missed the CPU's cache and cost 3x a posting); with fixed-size sums a table holds at most
    4,096 small groups, so it stays in memory even at a work_mem far below the search's own."""
    for question in ("hotel flight visa insurance pension", '"travel policy" hotel', "x-ray of the desk monitor"):
        plan = _analysed_plan(large_collection, question, work_mem="1MB")
        partial = plan[plan.index("CTE partial"):]
        partial = partial[:partial.index("\n  CTE ")]
        gathered = re.search(r"Group Key: block\w*\.block\n", partial)  # the blocks, gathered by number
        assert gathered and "HashAggregate" in partial[gathered.end():], partial  # then summed one number at a time
        assert "Disk" not in partial and "external" not in partial, partial


def _exact_way(collection, question: str, k: int = 100) -> str | None:
    """How the candidates' exact scores were found: "rows", "lookups" or "lists" (None: no candidates)."""
    statement, params = _fulltext_statement(collection, question, k=k)
    statement = statement.replace("SELECT chunk.id, chunk.ordinal", "SELECT (SELECT way FROM exact_way), chunk.id, chunk.ordinal", 1)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    return row[0] if row else None


def _analysed_plan(collection, question: str, k: int = 100, *, work_mem: str | None = None) -> str:
    statement, params = _fulltext_statement(collection, question, k=k)
    with transaction.atomic(), connection.cursor() as cursor:
        if work_mem:
            cursor.execute("SELECT set_config('work_mem', %s, true)", [work_mem])
        cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + statement, params)
        return "\n".join(row[0] for row in cursor.fetchall())
