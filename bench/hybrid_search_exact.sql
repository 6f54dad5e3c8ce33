-- Question -> candidate chunks of one collection, in one statement: HNSW kNN and BM25 full-text,
-- each side's own top k, fused by reciprocal rank: score = sum over sides of 1 / (rrf_k + rank),
-- so a chunk found by one side only still scores. Filled in by ragapp.retrieval.selectors: dollar
-- placeholders are table names and the permission subquery, the others are values.
--
-- The full-text side ranks by BM25 over chunks (PostgreSQL's ts_rank has no inverse document
-- frequency: SciFact nDCG@10 0.41 against 0.68). One pass over the chunks holding any query lexeme
-- (through the GIN index) gives everything: each chunk's tsvector is cut down to the query's lexemes
-- (setweight marks them, ts_filter keeps them), which yields term frequencies, and counting those
-- rows per lexeme yields document frequencies. A chunk's length is its number of distinct lexemes;
-- the collection's totals come from CollectionTextStatistics.
-- Ranked chunks must match the question's words as websearch_to_tsquery reads them (quoted phrases
-- stay phrases), ORed: a natural-language question rarely has every word in one passage. A chunk
-- holding a word or phrase the question excludes (-word, see query_syntax) is ruled out on both
-- sides; excluded words are never scored. Without exclusions the excluding flag is a false constant,
-- and the planner drops those filters.
WITH permitted (id) AS (
    -- The collection, when the caller may read it: documents.selectors' rule, compiled into the
    -- statement every entry point runs, so none can skip it.
    $permitted_collection
),
query AS NOT MATERIALIZED (
    -- Inlined where it is used (twice), so the planner sees constant tsqueries and can size them.
    SELECT replace(websearch_to_tsquery(%(language)s::regconfig, %(matched_text)s)::text, ' & ', ' | ')::tsquery AS terms,
           replace(plainto_tsquery(%(language)s::regconfig, %(scored_text)s)::text, ' & ', ' | ')::tsquery AS any_lexeme,
           tsvector_to_array(to_tsvector(%(language)s::regconfig, %(scored_text)s)) AS lexemes,
           -- One query per excluded word or phrase: its own words stay ANDed (a segmented
           -- Chinese word is several), a chunk holding any of them is out.
           ARRAY(SELECT websearch_to_tsquery(%(language)s::regconfig, part)
                 FROM unnest(%(excluded_texts)s::text[]) AS part) AS excluded
),
nearest AS (
    -- The vector is written out here, not taken from the query CTE: the HNSW index can only
    -- serve an ORDER BY against a constant.
    SELECT chunk.id, chunk.embedding <=> %(embedding)s::vector AS distance
    FROM $chunk_table AS chunk
    WHERE chunk.collection_id = (SELECT id FROM permitted)
      AND NOT (%(excluding)s AND chunk.search_vector @@ ANY ((SELECT excluded FROM query)::tsquery[]))
    ORDER BY chunk.embedding <=> %(embedding)s::vector
    LIMIT %(dense_k)s
),
dense AS (
    SELECT id, row_number() OVER (ORDER BY distance, id) AS rank FROM nearest
),
statistics AS (
    SELECT chunk_count::float8 AS chunks, lexeme_count::float8 / greatest(chunk_count, 1) AS mean_length
    FROM $statistics_table
    WHERE collection_id = (SELECT id FROM permitted) AND %(fulltext_k)s > 0
),
occurrences AS (
    -- One row per chunk and query lexeme it holds. Stored vectors carry no weights (all D),
    -- so weight A marks exactly the query's lexemes.
    -- Excluded chunks still count in the document frequencies: they are text of the collection.
    SELECT chunk.id, chunk.search_vector @@ query.terms AND NOT (%(excluding)s AND chunk.search_vector @@ ANY (query.excluded)) AS matches,
           length(chunk.search_vector) AS length,
           entry.lexeme, coalesce(array_length(entry.positions, 1), 1)::float8 AS frequency
    FROM $chunk_table AS chunk
         CROSS JOIN query
         CROSS JOIN LATERAL unnest(ts_filter(setweight(chunk.search_vector, 'A', query.lexemes), '{a}')) AS entry
    WHERE chunk.collection_id = (SELECT id FROM permitted) AND chunk.search_vector @@ query.any_lexeme AND %(fulltext_k)s > 0
),
lexeme_weights AS (
    SELECT occurrences.lexeme, ln(1 + (statistics.chunks - count(*) + 0.5) / (count(*) + 0.5)) AS idf
    FROM occurrences CROSS JOIN statistics
    GROUP BY occurrences.lexeme, statistics.chunks
),
bm25 AS (
    SELECT occurrences.id,
           sum(weight.idf * occurrences.frequency * (%(k1)s + 1)
               / (occurrences.frequency + %(k1)s * (1 - %(b)s + %(b)s * occurrences.length / statistics.mean_length))) AS score
    FROM occurrences
         JOIN lexeme_weights AS weight ON weight.lexeme = occurrences.lexeme
         CROSS JOIN statistics
    WHERE occurrences.matches
    GROUP BY occurrences.id
),
fulltext AS (
    SELECT id, row_number() OVER (ORDER BY score DESC, id) AS rank FROM bm25
    ORDER BY rank
    LIMIT %(fulltext_k)s
),
fused AS (
    SELECT coalesce(dense.id, fulltext.id) AS id, dense.rank AS dense_rank, fulltext.rank AS fulltext_rank,
           coalesce(1.0 / (%(rrf_k)s + dense.rank), 0) + coalesce(1.0 / (%(rrf_k)s + fulltext.rank), 0) AS score
    FROM dense FULL OUTER JOIN fulltext ON dense.id = fulltext.id
)
SELECT chunk.id, chunk.ordinal, chunk.text, chunk.page, chunk.heading_path, chunk.char_start, chunk.char_end,
       chunk.token_count, document.id, document.title, document.original_filename, document.content_type,
       document.file, fused.dense_rank, fused.fulltext_rank, fused.score
FROM fused
JOIN $chunk_table AS chunk ON chunk.id = fused.id
JOIN $document_table AS document ON document.id = chunk.document_id
ORDER BY fused.score DESC, chunk.id
LIMIT %(limit)s
