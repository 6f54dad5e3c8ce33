"""Cross-encoder reranking: score (query, passage) pairs and serve them over HTTP.

Reading order: ``synthetic`` (tiny random models for tests), ``model`` (load and score),
``protocol`` (request/response types), ``batcher`` (dynamic batching across requests),
``server`` (the HTTP worker). Nothing here imports Django.
"""
