-- Question -> candidate chunks of one collection, in one statement: HNSW kNN and BM25 full-text,
-- each side's own top k, fused by reciprocal rank: score = sum over sides of weight / (rrf_k + rank),
-- so a chunk found by one side only still scores. Filled in by ragapp.retrieval.selectors: dollar
-- placeholders are table names and the permission subquery, the others are values.
--
-- The full-text side ranks by BM25 (PostgreSQL's ts_rank has no inverse document frequency: SciFact
-- nDCG@10 0.41 against 0.68), exactly, without reading every chunk that holds a query word. It reads
-- the collection's lexeme counts (CollectionLexeme) and posting blocks (PostingBlock), which triggers
-- keep exact, and prunes with MaxScore: the k-th best score of a few chunks is a floor under the k-th
-- best of all; the commonest lexemes, whose bounds add up to less than the floor, cannot bring a chunk
-- holding only them into the top k, so only chunks holding one of the other, "essential", lexemes are
-- ranked. A chunk's length is its number of distinct lexemes; the collection's totals come from
-- CollectionTextStatistics. bench/hybrid_search_exact.sql is the statement this replaced, which scored
-- every matching chunk: the benchmark's and the tests' reference.
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
    -- Inlined where it is used, so the planner sees constant tsqueries and can size them.
    SELECT replace(websearch_to_tsquery(%(language)s::regconfig, %(matched_text)s)::text, ' & ', ' | ')::tsquery AS terms,
           -- The same with each phrase's words ANDed: what a chunk's lexemes must satisfy, positions aside.
           regexp_replace(replace(websearch_to_tsquery(%(language)s::regconfig, %(matched_text)s)::text, ' & ', ' | '),
                          '<(-|[0-9]+)>', '&', 'g')::tsquery AS unordered_terms,
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
    -- Each query lexeme some chunk holds: its inverse document frequency; its bound, the most it can add
    -- to one chunk's score (its share at its largest frequency, in a chunk of length 0); and whether a
    -- chunk holding it matches the question whatever else it holds ("alone": not so for a word of a
    -- phrase, since a lone lexeme without positions never matches a phrase).
    SELECT lexeme.lexeme, lexeme.chunk_count, idf.value AS idf,
           bm25_term(lexeme.max_frequency, 0, idf.value, statistics.mean_length, %(k1)s, %(b)s) AS bound,
           array_to_tsvector(ARRAY[lexeme.lexeme]) @@ (SELECT terms FROM query) AS alone
    FROM $lexeme_table AS lexeme
         CROSS JOIN statistics
         CROSS JOIN LATERAL (SELECT ln(1 + (statistics.chunks - lexeme.chunk_count + 0.5) / (lexeme.chunk_count + 0.5)) AS value) AS idf
    WHERE lexeme.collection_id = (SELECT id FROM permitted)
      AND lexeme.lexeme = ANY ((SELECT lexemes FROM query)::text[])
),
ordered_weights AS MATERIALIZED (
    SELECT lexeme, chunk_count, idf, alone,
           -- Postings before this lexeme's in the seed's order: lexemes that match alone, rarest first, then the others.
           sum(chunk_count) OVER (ORDER BY NOT alone, chunk_count, lexeme) - chunk_count AS seed_postings_before,
           sum(bound) OVER (ORDER BY bound, lexeme) AS bound_so_far,  -- this lexeme's and every smaller bound's
           -- Its bit in a chunk's mask of phrase words: a mask aggregates in fixed space, where an array's unknown size
           -- made the planner spill the partial sums to disk past ~8k chunks. The 63rd bit stands for every lexeme from the
           -- 63rd on, so a mask never names fewer lexemes than a chunk holds.
           1::int8 << least(row_number() OVER (ORDER BY lexeme) - 1, 62)::int AS phrase_bit
    FROM weights
),
lexeme_weights AS (
    SELECT array_agg(lexeme) AS lexemes, array_agg(idf) AS idfs FROM weights
),
seed AS (
    -- The first 2k postings of the rarest lexemes (a rare lexeme weighs most): their chunks' exact scores
    -- give the first floor. Lexemes that match alone come first, so that most of those chunks match: a
    -- phrase word's chunks often do not, and fewer than k matches left the floor at 0, pruning nothing.
    SELECT array_agg(DISTINCT rarest.chunk_id) AS ids
    FROM (SELECT posting_chunk(block.block, posting) AS chunk_id
          FROM ordered_weights
               JOIN $posting_table AS block
                    ON block.collection_id = (SELECT id FROM permitted) AND block.lexeme = ordered_weights.lexeme
               CROSS JOIN LATERAL unnest(block.postings) AS posting
          WHERE ordered_weights.seed_postings_before < 2 * %(fulltext_k)s
          ORDER BY ordered_weights.seed_postings_before
          LIMIT 2 * %(fulltext_k)s) AS rarest
),
seed_floor AS (
    -- One row: the k-th best, or 0 when fewer than k chunks match.
    SELECT coalesce(CASE WHEN count(*) = %(fulltext_k)s THEN min(best.score) END, 0) AS score
    FROM (SELECT scored.score
          FROM seed CROSS JOIN lexeme_weights CROSS JOIN statistics CROSS JOIN query
               CROSS JOIN LATERAL bm25_chunks(seed.ids, lexeme_weights.lexemes, lexeme_weights.idfs, statistics.mean_length,
                                              %(k1)s, %(b)s, query.terms, query.excluded, %(excluding)s) AS scored
          ORDER BY scored.score DESC
          LIMIT %(fulltext_k)s) AS best
),
split_weights AS MATERIALIZED (
    SELECT ordered_weights.*, ordered_weights.bound_so_far >= seed_floor.score AS essential
    FROM ordered_weights CROSS JOIN seed_floor
),
optional_bound AS (
    -- The most the optional (non-essential) lexemes can add together.
    SELECT coalesce(max(bound_so_far), 0) AS score FROM split_weights WHERE NOT essential
),
shares AS NOT MATERIALIZED (
    -- One row per posting of a query lexeme: what it adds to its chunk's score, for the candidates' optional
    -- lexemes (the essential ones are summed per block, below). Inlined where it is read, so the reader's filter on
    -- `essential` decides which lexemes' blocks are read at all. The postings are unnested in a select list, which
    -- streams them; a lateral unnest first copies each list into a tuplestore (twice the time to unnest).
    SELECT posting_chunk(list.block, list.posting) AS chunk_id, list.alone, list.essential,
           bm25_term(posting_frequency(list.posting), posting_length(list.posting), list.idf, statistics.mean_length,
                     %(k1)s, %(b)s) AS share
    FROM (SELECT block.block, split_weights.alone, split_weights.essential, split_weights.idf,
                 unnest(block.postings) AS posting
          FROM split_weights
               JOIN $posting_table AS block
                    ON block.collection_id = (SELECT id FROM permitted) AND block.lexeme = split_weights.lexeme) AS list
         CROSS JOIN statistics
),
essential_blocks AS (
    -- The essential lexemes' blocks, gathered by block number: each number's lists are then summed on their own, in
    -- a hash table of at most 4,096 chunks that stays in the CPU's cache, where one table for every chunk of the
    -- collection (100k+ at 1M) did not, and cost three times as much a posting.
    SELECT block.block,
           -- A lexeme that matches alone flags its chunks with the sign bit, a phrase word with its bit: one aggregate
           -- gives both, where two cost more a posting.
           array_agg(ROW(split_weights.idf,
                         CASE WHEN split_weights.alone THEN 1::int8 << 63 ELSE split_weights.phrase_bit END,
                         block.postings)) AS lists
    FROM split_weights
         JOIN $posting_table AS block
              ON block.collection_id = (SELECT id FROM permitted) AND block.lexeme = split_weights.lexeme
    WHERE split_weights.essential
    GROUP BY block.block
),
partial AS MATERIALIZED (
    -- Every chunk holding an essential lexeme, with those lexemes' share of its score, whether one of
    -- them matches the question alone, and the mask of those that do not (words of phrases).
    SELECT summed.id, summed.score, summed.flags < 0 AS matches, summed.flags & ~(1::int8 << 63) AS phrase_mask
    FROM essential_blocks
         CROSS JOIN statistics
         CROSS JOIN LATERAL (
             SELECT posting_chunk(essential_blocks.block, list.posting) AS id, sum(term.share) AS score,
                    bit_or(list.flag) AS flags
             FROM (SELECT list.idf, list.flag, unnest(list.postings) AS posting
                   FROM unnest(essential_blocks.lists) AS list (idf float8, flag int8, postings int8[])) AS list
                  CROSS JOIN LATERAL (SELECT bm25_term(posting_frequency(list.posting), posting_length(list.posting), list.idf,
                                                       statistics.mean_length, %(k1)s, %(b)s) AS share) AS term
             GROUP BY 1
             -- A chunk that cannot reach the seed's floor even with every optional lexeme is no candidate, whatever
             -- the floor becomes, and cannot be among the k that raise it: not kept, so not scanned again.
             HAVING sum(term.share) + (SELECT score FROM optional_bound) + 1e-9 >= (SELECT score FROM seed_floor)
         ) AS summed
),
floor AS (
    -- A higher floor, when k chunks surely matched by the question (and no exclusion to rule them out)
    -- reach it with their partial scores alone.
    SELECT greatest((SELECT score FROM seed_floor),
                    (SELECT min(best.score)
                     FROM (SELECT score FROM partial WHERE matches AND NOT %(excluding)s
                           ORDER BY score DESC LIMIT %(fulltext_k)s) AS best
                     HAVING count(*) = %(fulltext_k)s),
                    0) AS score
),
candidates AS MATERIALIZED (
    SELECT partial.id, partial.score, partial.matches, partial.phrase_mask
    FROM partial CROSS JOIN optional_bound
    WHERE partial.score + optional_bound.score + 1e-9 >= (SELECT score FROM floor)
),
-- The candidates' exact scores come one of three ways, whichever reads least, counted in postings read whole
-- (~0.15 us each at 1M chunks): the chunks' own rows (all lexemes at once, ~40 postings' worth a chunk); each
-- candidate's posting in each optional lexeme's block, found by binary search (~1 a lookup, plus ~50 a block
-- read); or the optional lexemes' lists read whole. The gating subqueries run once, and the ways not taken are
-- never executed.
exact_way AS (
    SELECT CASE WHEN cost.rows <= least(cost.lookups, cost.lists) THEN 'rows'
                WHEN cost.lookups <= cost.lists THEN 'lookups'
                ELSE 'lists' END AS way
    FROM (SELECT candidate.count * 40 AS rows,
                 optional.count * (candidate.count + 50 * least(candidate.count, statistics.chunks / 4096 + 1)) AS lookups,
                 optional.postings AS lists
          FROM (SELECT count(*) FROM candidates) AS candidate,
               (SELECT count(*), coalesce(sum(chunk_count), 0) AS postings FROM split_weights WHERE NOT essential) AS optional,
               statistics) AS cost
),
exact_from_rows AS (
    SELECT scored.id, scored.score
    FROM (SELECT array_agg(id) AS ids FROM candidates WHERE (SELECT way FROM exact_way) = 'rows') AS chosen
         CROSS JOIN lexeme_weights CROSS JOIN statistics CROSS JOIN query
         CROSS JOIN LATERAL bm25_chunks(chosen.ids, lexeme_weights.lexemes, lexeme_weights.idfs, statistics.mean_length,
                                        %(k1)s, %(b)s, query.terms, query.excluded, %(excluding)s) AS scored
),
candidate_blocks AS (
    SELECT (id / 4096)::int AS block, array_agg(id) AS ids
    FROM candidates
    WHERE (SELECT way FROM exact_way) = 'lookups'
    GROUP BY 1
),
optional_lists AS MATERIALIZED (
    -- The optional lexemes' blocks that hold candidates. `[1:]` stores each list decompressed, once: a long list is
    -- kept compressed, and every lookup in it would otherwise decompress it again.
    SELECT block.block, split_weights.idf, split_weights.alone, block.postings[1:] AS postings, candidate_blocks.ids
    FROM split_weights
         JOIN $posting_table AS block
              ON block.collection_id = (SELECT id FROM permitted) AND block.lexeme = split_weights.lexeme
         JOIN candidate_blocks ON candidate_blocks.block = block.block
    WHERE NOT split_weights.essential AND (SELECT way FROM exact_way) = 'lookups'
),
looked_up AS (
    -- A block's postings are sorted by chunk (packed, the chunk's slot comes first): width_bucket's binary search
    -- finds the last posting at or below the largest the candidate could have (frequency and length at their most):
    -- the candidate's own, when that posting's chunk is the candidate.
    SELECT found.id AS chunk_id, found.alone,
           bm25_term(posting_frequency(found.posting), posting_length(found.posting), found.idf, statistics.mean_length,
                     %(k1)s, %(b)s) AS share
    FROM (SELECT optional_lists.block, candidate.id, optional_lists.idf, optional_lists.alone,
                 optional_lists.postings[width_bucket(posting_pack(candidate.id, 65535, 2147483647),
                                                      optional_lists.postings)] AS posting
          FROM optional_lists CROSS JOIN LATERAL unnest(optional_lists.ids) AS candidate (id)) AS found
         CROSS JOIN statistics
    WHERE posting_chunk(found.block, found.posting) = found.id
),
exact_from_postings AS (
    -- Candidates plus their optional lexemes' shares, summed in one hash aggregate (a join here was planned as a
    -- nested loop when the candidates were guessed few). Lists read whole keep only postings of candidates:
    -- `IS TRUE` keeps the IN a hashed subplan, a hash built once on the candidates.
    SELECT id, sum(score) AS score, bool_or(matches) AS matches, bit_or(phrase_mask) AS phrase_mask
    FROM (SELECT id, score, matches, phrase_mask FROM candidates WHERE (SELECT way FROM exact_way) <> 'rows'
          UNION ALL
          SELECT chunk_id, share, alone, NULL FROM looked_up
          UNION ALL
          SELECT chunk_id, share, alone, NULL
          FROM shares
          WHERE NOT essential AND (SELECT way FROM exact_way) = 'lists'
            AND (chunk_id IN (SELECT id FROM candidates)) IS TRUE) AS part
    GROUP BY id
),
exact AS (
    SELECT id, score, true AS checked, false AS matches, NULL::int8 AS phrase_mask FROM exact_from_rows
    UNION ALL
    SELECT id, score, false, matches, phrase_mask FROM exact_from_postings
),
ranked AS (
    -- Best first, behind a fence (OFFSET 0), so that the check below runs on the best chunks only, until k pass.
    SELECT * FROM exact ORDER BY score DESC, id OFFSET 0
),
fulltext AS (
    -- A chunk holding a lexeme that matches alone is matched; any other, or any chunk when words are
    -- excluded, is checked against its own row, unless its phrase words (with every optional lexeme,
    -- which it may hold) cannot satisfy the question even out of order. Rows scored from the chunks'
    -- rows were checked there.
    SELECT id, row_number() OVER (ORDER BY score DESC, id) AS rank
    FROM ranked
    WHERE CASE WHEN ranked.checked THEN true
               WHEN NOT %(excluding)s AND ranked.matches THEN true
               WHEN NOT %(excluding)s
                    AND NOT array_to_tsvector(ARRAY(SELECT lexeme FROM split_weights
                                                    WHERE NOT essential OR coalesce(ranked.phrase_mask & phrase_bit, 0) <> 0))
                            @@ (SELECT unordered_terms FROM query) THEN false
               -- OFFSET 0 keeps this a lookup of the chunk's row: without it the planner may, when it guesses many
               -- ranked rows, check them all in one hashed pass over every chunk matching the question (150k at 1M).
               ELSE EXISTS (SELECT 1 FROM $chunk_table AS chunk
                            WHERE chunk.id = ranked.id AND chunk.search_vector @@ (SELECT terms FROM query)
                              AND NOT (%(excluding)s AND chunk.search_vector @@ ANY ((SELECT excluded FROM query)::tsquery[]))
                            OFFSET 0)
          END
    ORDER BY score DESC, id
    LIMIT %(fulltext_k)s
),
fused AS (
    SELECT coalesce(dense.id, fulltext.id) AS id, dense.rank AS dense_rank, fulltext.rank AS fulltext_rank,
           -- Each side weighted by its share (the collection's dense_weight), doubled: at the default 0.5 this is
           -- the plain sum of reciprocal ranks.
           2 * (%(dense_weight)s * coalesce(1.0 / (%(rrf_k)s + dense.rank), 0)
                + (1 - %(dense_weight)s) * coalesce(1.0 / (%(rrf_k)s + fulltext.rank), 0)) AS score
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
