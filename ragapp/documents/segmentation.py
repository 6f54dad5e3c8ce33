"""Word segmentation for full-text search: PostgreSQL's parsers do not split Chinese.

Runs of Chinese characters are cut into words with jieba and joined by spaces, on the
stored side (a chunk's `search_text`) and on the query side alike, so both sides meet on
the same words. Text without Chinese is left to PostgreSQL unchanged.
"""

import functools
import logging
import re

# CJK Unified Ideographs (with extension A) and the compatibility block.
CHINESE_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def contains_chinese(text: str) -> bool:
    return CHINESE_RUN.search(text) is not None


def segment_for_search(text: str) -> str | None:
    """Return `text` with each Chinese run split into space-separated words, or None if it has none."""
    if not contains_chinese(text):
        return None
    jieba = _jieba()
    # Search mode also emits the shorter words inside long ones (中华人民共和国 -> 中华, 人民, ...),
    # so a question that uses a part of a compound still matches it.
    return CHINESE_RUN.sub(lambda run: " " + " ".join(jieba.cut_for_search(run.group())) + " ", text)
