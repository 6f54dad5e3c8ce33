"""The HNSW index rebuilt with m=24, ef_construction=100 (was 16, 64), chosen by bench/retrieval.py's sweep.

Rebuilding takes about as long as building it: seconds for 100k chunks, minutes for a million.
"""

import pgvector.django.indexes
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('documents', '0006_collection_dense_weight'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='chunk',
            name='chunk_embedding_hnsw',
        ),
        migrations.AddIndex(
            model_name='chunk',
            index=pgvector.django.indexes.HnswIndex(ef_construction=100, fields=['embedding'], m=24, name='chunk_embedding_hnsw', opclasses=['vector_cosine_ops']),
        ),
    ]
