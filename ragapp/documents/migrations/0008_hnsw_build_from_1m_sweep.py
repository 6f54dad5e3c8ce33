"""The HNSW index rebuilt with m=32, ef_construction=200 (was 24, 100), from a sweep at 1M chunks.

At 1M chunks (24, 100) sat at the recall target: two builds of the same vectors gave recall@10 0.972 and 0.957
at ef_search 1000. (32, 200) gives 0.98 at 400 and 0.9995 at 800 (bench/README.md). Rebuilding takes about as
long as building: minutes for 100k chunks, about 14 for a million on 2 cores with 5GB of maintenance_work_mem.
"""

import pgvector.django.indexes
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('documents', '0007_hnsw_build_from_sweep'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='chunk',
            name='chunk_embedding_hnsw',
        ),
        migrations.AddIndex(
            model_name='chunk',
            index=pgvector.django.indexes.HnswIndex(ef_construction=200, fields=['embedding'], m=32, name='chunk_embedding_hnsw', opclasses=['vector_cosine_ops']),
        ),
    ]
