"""Hybrid retrieval in one SQL statement: HNSW kNN + full-text, fused by reciprocal ranks."""

import numpy as np
import pytest
from django.db import connection

from ragapp.documents.models import Chunk, CollectionTextStatistics, Document
from ragapp.documents.services import document_delete
from ragapp.documents.services import collection_get_or_create
from ragapp.retrieval.selectors import chunk_search, search_query, search_statement
from tests.conftest import text_statistics_hold

pytestmark = pytest.mark.django_db

POLICIES = {
    "travel.txt": "Train tickets are reimbursed in second class. Taxi rides need a receipt from the driver.",
    "vacation.txt": "Employees receive twenty-five days of paid vacation. Unused days expire at the end of March.",
    "security.txt": "Laptops must use full-disk encryption. Lost devices are reported to the security team at once.",
    "kitchen.txt": "The coffee machine is descaled every Friday by the facilities staff.",
}


@pytest.fixture
def policies(collection, ingest):
    return {name: ingest(collection, name, text.encode()) for name, text in POLICIES.items()}


def test_hybrid_returns_chunk_document_both_ranks_and_fused_score(collection, policies):
    results = chunk_search(query="How are taxi rides reimbursed?", collection=collection, reader=None, k=10)
    best = results[0]
    assert best.document.original_filename == "travel.txt"
    assert best.dense_rank == 1 and best.fulltext_rank == 1
    assert best.score == pytest.approx(2 / (60 + 1))
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    assert "Taxi" in best.chunk.text and best.document.title == "travel"


def test_each_candidate_carries_its_chunks_and_documents_stored_fields(collection, policies):
    columns = ["id", "ordinal", "text", "page", "heading_path", "char_start", "char_end", "token_count", "document_id"]
    for result in chunk_search(query="How are taxi rides reimbursed?", collection=collection, reader=None, k=10):
        stored = Chunk.objects.select_related("document").get(pk=result.chunk.pk)
        assert [getattr(result.chunk, name) for name in columns] == [getattr(stored, name) for name in columns]
        assert (result.document.pk, result.document.title, result.document.original_filename,
                result.document.content_type, result.document.file.name) == (
            stored.document.pk, stored.document.title, stored.document.original_filename,
            stored.document.content_type, stored.document.file.name)


def test_a_chunk_found_by_one_side_only_still_scores(collection, policies):
    results = chunk_search(query="descaled", collection=collection, reader=None, k=10)
    by_file = {r.document.original_filename: r for r in results}
    assert by_file["kitchen.txt"].fulltext_rank == 1
    assert all(r.fulltext_rank is None for name, r in by_file.items() if name != "kitchen.txt")


def test_the_dense_weight_shares_the_fusion_and_zero_keeps_full_texts_order_first(collection, policies):
    question = "Who reimburses train tickets and taxi rides?"
    fulltext = chunk_search(query=question, collection=collection, reader=None, k=10, mode="fulltext")
    hybrid = chunk_search(query=question, collection=collection, reader=None, k=10, dense_weight=0.0)
    assert [r.chunk.pk for r in hybrid[:len(fulltext)]] == [r.chunk.pk for r in fulltext]
    assert all(r.score == 0 for r in hybrid[len(fulltext):])
    collection.dense_weight = 1.0
    dense_only = chunk_search(query=question, collection=collection, reader=None, k=10)
    dense = chunk_search(query=question, collection=collection, reader=None, k=10, mode="dense")
    assert [r.chunk.pk for r in dense_only] == [r.chunk.pk for r in dense]
    equal = chunk_search(query=question, collection=collection, reader=None, k=10, dense_weight=0.5)
    assert equal[0].score == pytest.approx(1 / (60 + equal[0].dense_rank) + 1 / (60 + equal[0].fulltext_rank))


def test_single_side_modes(collection, policies):
    dense = chunk_search(query="holiday allowance", collection=collection, reader=None, k=10, mode="dense")
    fulltext = chunk_search(query="encryption", collection=collection, reader=None, k=10, mode="fulltext")
    assert dense[0].document.original_filename == "vacation.txt"
    assert all(r.fulltext_rank is None for r in dense)
    assert [r.document.original_filename for r in fulltext] == ["security.txt"]
    assert fulltext[0].dense_rank is None
    with pytest.raises(ValueError, match="mode must be one of"):
        chunk_search(query="x", collection=collection, reader=None, mode="bm25")


def test_full_text_stems_english_and_matches_any_word(collection, policies):
    results = chunk_search(query="reimbursing receipts for a limousine", collection=collection, reader=None, k=10, mode="fulltext")
    assert results[0].document.original_filename == "travel.txt"


def test_results_never_leave_the_collection(collection, policies, ingest):
    other = collection_get_or_create(name="Other")
    ingest(other, "taxi.txt", b"Taxi rides are never reimbursed here.")
    for mode in ("dense", "fulltext", "hybrid"):
        results = chunk_search(query="taxi reimbursed", collection=collection, reader=None, k=50, mode=mode)
        assert {r.document.original_filename for r in results} <= set(POLICIES)


def test_chinese_question_finds_chinese_passage(ingest):
    chinese = collection_get_or_create(name="中文", language="simple")
    ingest(chinese, "beijing.txt", "北京大学是中国著名的高等学府，位于北京市海淀区。".encode())
    ingest(chinese, "shanghai.txt", "上海是中国的经济中心，外滩非常有名。".encode())
    results = chunk_search(query="北京大学位于哪个区？", collection=chinese, reader=None, k=10, mode="fulltext")
    assert results[0].document.original_filename == "beijing.txt"


def test_stopword_only_question_returns_dense_results_without_error(collection, policies):
    results = chunk_search(query="the of and", collection=collection, reader=None, k=10)
    assert results and all(r.fulltext_rank is None for r in results)


def _plan(collection, query: str, *, rows: int = 6000) -> str:
    """EXPLAIN HYBRID_SQL for `query` over `rows` synthetic chunks: enough for the planner to want the indexes."""
    document = Document.objects.create(collection=collection, title="synthetic", original_filename="s.txt", sha256="0" * 64)
    vectors = np.random.default_rng(0).normal(size=(rows, 384)).astype(np.float32)
    Chunk.objects.bulk_create(
        Chunk(document=document, collection=collection, language="english", ordinal=i, text=f"row {i} marker{i}",
              char_start=0, char_end=5, token_count=2, embedding=vector)
        for i, vector in enumerate(vectors)
    )
    statement, params = search_statement(parsed=search_query(query), collection=collection, reader=None,
                                         embedding=vectors[0], k=100, limit=100, mode="hybrid")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE documents_chunk")
        cursor.execute("EXPLAIN " + statement, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_nearest_neighbour_query_uses_the_hnsw_index(collection):
    """With a realistic number of rows the planner must pick the HNSW index, not a scan and sort."""
    plan = _plan(collection, "marker7")
    assert "Index Scan using chunk_embedding_hnsw" in plan, plan
    assert "documents_postingblock_pkey" in plan, plan  # full text reads postings (index or bitmap scan)
    assert "chunk_search_vector_gin" not in plan, plan  # not every chunk holding a query word
    assert "@@ ANY" not in plan and "CTE query" not in plan, plan  # no exclusion filters; constant tsqueries


def test_a_query_with_an_exclusion_still_uses_the_hnsw_index(collection):
    plan = _plan(collection, "marker7 -marker8")
    assert "Index Scan using chunk_embedding_hnsw" in plan, plan
    assert "documents_postingblock_pkey" in plan, plan
    assert "@@ ANY" in plan, plan


def test_a_rare_word_outranks_a_common_word_repeated(collection, ingest):
    """BM25's inverse document frequency: ts_rank would put the repeated common word first."""
    for index in range(6):
        ingest(collection, f"memo{index}.txt", f"Memo {index}: the budget meeting moved to room {index}.".encode())
    ingest(collection, "budget.txt", b"Budget, budget, budget: the budget is the budget.")
    ingest(collection, "helicopter.txt", b"The helicopter pad is on the roof.")
    results = chunk_search(query="budget helicopter", collection=collection, reader=None, k=10, mode="fulltext")
    assert results[0].document.original_filename == "helicopter.txt"
    assert results[1].document.original_filename == "budget.txt"


def test_quotes_and_backslashes_in_a_question_are_searched_as_text(collection, ingest):
    ingest(collection, "paths.txt", rb"O'Reilly keeps the files under C:\\data\\reports.")
    results = chunk_search(query=r"O'Reilly's C:\\data\\ 'reports' \\", collection=collection, reader=None, k=10, mode="fulltext")
    assert results[0].document.original_filename == "paths.txt"


def _files(results) -> list[str]:
    return [r.document.original_filename for r in results]


@pytest.mark.parametrize("mode", ["hybrid", "dense", "fulltext"])
def test_a_dashed_word_excludes_every_chunk_holding_it_in_every_mode(collection, policies, ingest, mode):
    ingest(collection, "taxi.txt", b"Taxi companies bill the department monthly.")
    assert "travel.txt" in _files(chunk_search(query="taxi", collection=collection, reader=None, k=10, mode=mode))
    results = chunk_search(query="taxi -receipt", collection=collection, reader=None, k=10, mode=mode)
    assert "taxi.txt" in _files(results) and "travel.txt" not in _files(results)
    assert all("receipt" not in r.chunk.text for r in results)


def test_excluding_a_word_leaves_the_ranking_of_the_rest_as_it_was(collection, policies, ingest):
    ingest(collection, "taxi.txt", b"Taxi companies bill the department monthly.")
    ingest(collection, "receipts.txt", b"A receipt is kept for every taxi ride, train ride and meal.")
    ranked = chunk_search(query="taxi train ride", collection=collection, reader=None, k=10, mode="fulltext")
    excluding = chunk_search(query="taxi train ride -receipt", collection=collection, reader=None, k=10, mode="fulltext")
    assert _files(excluding) == [name for name in _files(ranked) if name not in ("travel.txt", "receipts.txt")]
    assert _files(excluding) == ["taxi.txt"]


def test_words_of_an_excluded_phrase_are_not_scored(collection, policies, ingest):
    """Scoring 'taxi' would put the taxi firm first; the shorter catering chunk wins on 'companies' alone."""
    ingest(collection, "taxi.txt", b"Taxi companies bill the department monthly.")
    ingest(collection, "catering.txt", b"Catering companies bill monthly.")
    results = chunk_search(query='companies -"taxi rides"', collection=collection, reader=None, k=10, mode="fulltext")
    assert _files(results) == ["catering.txt", "taxi.txt"]


def test_a_quoted_phrase_matches_only_chunks_holding_the_phrase(collection, policies):
    assert _files(chunk_search(query='"taxi rides"', collection=collection, reader=None, k=10, mode="fulltext")) == ["travel.txt"]
    assert chunk_search(query='"taxi driver"', collection=collection, reader=None, k=10, mode="fulltext") == []


@pytest.mark.parametrize("mode", ["hybrid", "dense", "fulltext"])
def test_a_dashed_phrase_excludes_chunks_holding_the_phrase_only(collection, policies, ingest, mode):
    ingest(collection, "taxi.txt", b"Taxi companies bill the department monthly.")
    results = chunk_search(query='taxi -"taxi rides"', collection=collection, reader=None, k=10, mode=mode)
    assert "taxi.txt" in _files(results) and "travel.txt" not in _files(results)
    not_a_phrase_there = chunk_search(query='taxi -"rides taxi"', collection=collection, reader=None, k=10, mode=mode)
    assert "travel.txt" in _files(not_a_phrase_there)


def test_a_question_of_exclusions_only_finds_nothing_by_full_text(collection, policies):
    assert chunk_search(query="-receipt", collection=collection, reader=None, k=10, mode="fulltext") == []
    hybrid = chunk_search(query="-receipt", collection=collection, reader=None, k=10)
    assert hybrid and "travel.txt" not in _files(hybrid) and all(r.fulltext_rank is None for r in hybrid)


def test_an_excluded_chinese_word_rules_out_the_chunks_holding_it_not_its_parts(ingest):
    chinese = collection_get_or_create(name="中文", language="simple")
    ingest(chinese, "beijing.txt", "北京大学是中国著名的高等学府，位于北京市海淀区。".encode())
    ingest(chinese, "fudan.txt", "复旦大学位于上海。".encode())
    results = chunk_search(query="大学 -北京大学", collection=chinese, reader=None, k=10, mode="fulltext")
    assert _files(results) == ["fudan.txt"]


def test_collection_statistics_follow_ingest_reingest_update_and_delete(collection, policies, ingest):
    assert text_statistics_hold(collection) and collection.text_statistics.chunk_count == len(POLICIES)
    ingest(collection, "long.txt", ("A long handbook paragraph about expenses. " * 300).encode())
    assert text_statistics_hold(collection)
    Chunk.objects.filter(collection=collection, document=policies["kitchen.txt"]).update(text="Descaling moved to Monday mornings.")
    assert text_statistics_hold(collection)
    document_delete(document=policies["travel.txt"])
    assert text_statistics_hold(collection)
    Document.objects.filter(collection=collection).delete()
    assert text_statistics_hold(collection) and CollectionTextStatistics.objects.get(collection=collection).chunk_count == 0
