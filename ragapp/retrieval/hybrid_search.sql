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
weights AS MATERIALIZED (
    -- Each query lexeme some chunk of the collection holds, with its inverse document frequency and
    -- the most it can add to one chunk's score: its share at its largest frequency, in a chunk of length 0.
    SELECT lexeme.lexeme, lexeme.chunk_count, idf.value AS idf,
           bm25_term(lexeme.max_frequency, 0, idf.value, statistics.mean_length, %(k1)s, %(b)s) AS bound
    FROM $lexeme_table AS lexeme
         CROSS JOIN statistics
         CROSS JOIN LATERAL (SELECT ln(1 + (statistics.chunks - lexeme.chunk_count + 0.5) / (lexeme.chunk_count + 0.5)) AS value) AS idf
    WHERE lexeme.collection_id = (SELECT id FROM permitted)
      AND lexeme.lexeme = ANY ((SELECT lexemes FROM query)::text[])
),
ordered_weights AS MATERIALIZED (
    SELECT lexeme, idf,
           sum(chunk_count) OVER (ORDER BY chunk_count, lexeme) - chunk_count AS rarer_postings,
           sum(bound) OVER (ORDER BY bound, lexeme) AS bound_so_far  -- this lexeme's and every smaller bound's
    FROM weights
),
lexeme_weights AS (
    SELECT array_agg(lexeme) AS lexemes, array_agg(idf) AS idfs FROM weights
),
-- Exact top k without scoring every chunk that holds a query word (MaxScore): the k-th best score of a
-- few chunks is a floor for the k-th best of all. Lexemes whose bounds add up to less than that floor
-- cannot lift a chunk holding only them into the top k, so only chunks holding one of the other,
-- "essential", lexemes are candidates, and only their postings are read.
seed AS (
    -- The chunks holding the rarest lexemes, about 2k postings: the first floor.
    SELECT DISTINCT posting.chunk_id AS id
    FROM ordered_weights
         JOIN $posting_table AS block
              ON block.collection_id = (SELECT id FROM permitted) AND block.lexeme = ordered_weights.lexeme
         CROSS JOIN LATERAL unnest(block.chunk_ids) AS posting (chunk_id)
    WHERE ordered_weights.rarer_postings < 2 * %(fulltext_k)s
),
seed_floor AS (
    SELECT coalesce(min(score), 0) AS score
    FROM (SELECT bm25_chunk(chunk.search_vector, lexeme_weights.lexemes, lexeme_weights.idfs, statistics.mean_length, %(k1)s, %(b)s) AS score
          FROM seed
               JOIN $chunk_table AS chunk ON chunk.id = seed.id
               CROSS JOIN query CROSS JOIN lexeme_weights CROSS JOIN statistics
          WHERE chunk.search_vector @@ query.terms AND NOT (%(excluding)s AND chunk.search_vector @@ ANY (query.excluded))
          ORDER BY score DESC
          LIMIT %(fulltext_k)s) AS best
    HAVING count(*) = %(fulltext_k)s
),
essential AS (
    SELECT lexeme, idf FROM ordered_weights WHERE bound_so_far >= (SELECT coalesce(max(score), 0) FROM seed_floor)
),
optional_bound AS (
    -- The most the non-essential lexemes can add together.
    SELECT coalesce(max(bound_so_far), 0) AS score
    FROM ordered_weights WHERE bound_so_far < (SELECT coalesce(max(score), 0) FROM seed_floor)
),
partial AS MATERIALIZED (
    -- Every chunk holding an essential lexeme, with the essential lexemes' share of its score.
    SELECT posting.chunk_id AS id,
           sum(bm25_term(posting.frequency, posting.length, essential.idf, statistics.mean_length, %(k1)s, %(b)s)) AS score
    FROM essential
         JOIN $posting_table AS block
              ON block.collection_id = (SELECT id FROM permitted) AND block.lexeme = essential.lexeme
         CROSS JOIN LATERAL unnest(block.chunk_ids, block.frequencies, block.lengths) AS posting (chunk_id, frequency, length)
         CROSS JOIN statistics
    GROUP BY posting.chunk_id
),
partial_floor AS (
    -- A higher floor, when the k best partial scores belong to chunks the question matches (their full
    -- scores are at least as high).
    SELECT coalesce(min(best.score), 0) AS score
    FROM (SELECT top_partial.score
          FROM (SELECT id, score FROM partial ORDER BY score DESC LIMIT 2 * %(fulltext_k)s) AS top_partial
               JOIN $chunk_table AS chunk ON chunk.id = top_partial.id
               CROSS JOIN query
          WHERE chunk.search_vector @@ query.terms AND NOT (%(excluding)s AND chunk.search_vector @@ ANY (query.excluded))
          ORDER BY top_partial.score DESC
          LIMIT %(fulltext_k)s) AS best
    HAVING count(*) = %(fulltext_k)s
),
candidates AS (
    SELECT partial.id
    FROM partial CROSS JOIN optional_bound
    WHERE partial.score + optional_bound.score + 1e-9 >= greatest((SELECT max(score) FROM seed_floor), (SELECT max(score) FROM partial_floor), 0)
),
bm25 AS (
    SELECT chunk.id, bm25_chunk(chunk.search_vector, lexeme_weights.lexemes, lexeme_weights.idfs, statistics.mean_length, %(k1)s, %(b)s) AS score
    FROM candidates
         JOIN $chunk_table AS chunk ON chunk.id = candidates.id
         CROSS JOIN query CROSS JOIN lexeme_weights CROSS JOIN statistics
    WHERE chunk.search_vector @@ query.terms AND NOT (%(excluding)s AND chunk.search_vector @@ ANY (query.excluded))
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
