"""Per-collection chunk and lexeme totals for BM25, maintained by statement-level triggers."""

import django.db.models.deletion
from django.db import migrations, models

# One function serves the three triggers: the rows a statement removed (old_chunks) are
# subtracted, the rows it added (new_chunks) are added. An update does both.
APPLY_FUNCTION = """
CREATE FUNCTION documents_chunk_statistics_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE documents_collectiontextstatistics AS statistics
        SET chunk_count = statistics.chunk_count - removed.chunks,
            lexeme_count = statistics.lexeme_count - removed.lexemes
        FROM (SELECT collection_id, count(*) AS chunks, coalesce(sum(length(search_vector)), 0) AS lexemes
              FROM old_chunks GROUP BY collection_id) AS removed
        WHERE statistics.collection_id = removed.collection_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO documents_collectiontextstatistics AS statistics (collection_id, chunk_count, lexeme_count)
        SELECT collection_id, count(*), coalesce(sum(length(search_vector)), 0)
        FROM new_chunks GROUP BY collection_id
        ON CONFLICT (collection_id) DO UPDATE
        SET chunk_count = statistics.chunk_count + excluded.chunk_count,
            lexeme_count = statistics.lexeme_count + excluded.lexeme_count;
    END IF;
    RETURN NULL;
END
$$;
"""

# A trigger with transition tables may serve one event only, hence three.
TRIGGERS = """
CREATE TRIGGER documents_chunk_statistics_insert AFTER INSERT ON documents_chunk
    REFERENCING NEW TABLE AS new_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION documents_chunk_statistics_apply();
CREATE TRIGGER documents_chunk_statistics_delete AFTER DELETE ON documents_chunk
    REFERENCING OLD TABLE AS old_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION documents_chunk_statistics_apply();
CREATE TRIGGER documents_chunk_statistics_update AFTER UPDATE ON documents_chunk
    REFERENCING OLD TABLE AS old_chunks NEW TABLE AS new_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION documents_chunk_statistics_apply();
"""

BACKFILL = """
INSERT INTO documents_collectiontextstatistics (collection_id, chunk_count, lexeme_count)
SELECT collection_id, count(*), coalesce(sum(length(search_vector)), 0) FROM documents_chunk GROUP BY collection_id;
"""

DROP = """
DROP TRIGGER documents_chunk_statistics_insert ON documents_chunk;
DROP TRIGGER documents_chunk_statistics_delete ON documents_chunk;
DROP TRIGGER documents_chunk_statistics_update ON documents_chunk;
DROP FUNCTION documents_chunk_statistics_apply();
"""


class Migration(migrations.Migration):

    dependencies = [
        ('documents', '0002_collection_rerank_fusion_weight'),
    ]

    operations = [
        migrations.CreateModel(
            name='CollectionTextStatistics',
            fields=[
                ('collection', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='text_statistics', serialize=False, to='documents.collection')),
                ('chunk_count', models.BigIntegerField(default=0)),
                ('lexeme_count', models.BigIntegerField(default=0)),
            ],
        ),
        migrations.RunSQL(sql=APPLY_FUNCTION + TRIGGERS + BACKFILL, reverse_sql=DROP),
    ]
