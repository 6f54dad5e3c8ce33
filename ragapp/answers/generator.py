"""The generator client: chat completions from an OpenAI-compatible server (vLLM), streamed.

Reached with the official `openai` package at GENERATOR_URL. Every failure becomes
GeneratorUnavailable with a message a user can act on; callers then show passages instead.
"""

import functools
import logging
import math
import re
from collections.abc import Iterator

import openai
from django.conf import settings

from ragapp.core.health import generator_notice

logger = logging.getLogger(__name__)
WIDE_CHARACTERS = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uac00-\ud7af]")


class GeneratorUnavailable(Exception):
    """No answer could be generated; the message says why and what to do."""


def generator_configured() -> bool:
    return bool(settings.GENERATOR_URL)


@functools.cache
def _client(url: str, api_key: str, timeout: float) -> openai.OpenAI:
    # No retries: a user is waiting, and the fallback (passages) is better than a long stall.
    return openai.OpenAI(base_url=url, api_key=api_key, timeout=timeout, max_retries=0)


def generator_client() -> openai.OpenAI:
    if not generator_configured():
        raise GeneratorUnavailable("No generator is configured: set GENERATOR_URL to an OpenAI-compatible server "
                                   "(vLLM), or start the product with `manage.py serve`, which runs one.")
    return _client(settings.GENERATOR_URL, settings.GENERATOR_API_KEY, settings.GENERATOR_TIMEOUT_SECONDS)


def generator_model() -> str:
    """GENERATOR_MODEL, or the first model the server lists."""
    if settings.GENERATOR_MODEL:
        return settings.GENERATOR_MODEL
    return _served_model(settings.GENERATOR_URL)


@functools.lru_cache(maxsize=8)
def _served_model(url: str) -> str:
    try:
        models = generator_client().models.list().data
    except openai.OpenAIError as error:
        raise GeneratorUnavailable(_describe(error)) from error
    if not models:
        raise GeneratorUnavailable(f"The generator at {url} serves no model: set GENERATOR_MODEL.")
    return models[0].id


def chat_stream(*, messages: list[dict], max_tokens: int | None = None, usage: dict | None = None) -> Iterator[str]:
    """Yield the answer's text as it is generated; fill `usage` with the token counts the server reports."""
    client, model = generator_client(), generator_model()
    request = dict(model=model, messages=messages, stream=True, max_tokens=max_tokens or settings.GENERATOR_MAX_TOKENS,
                   temperature=settings.GENERATOR_TEMPERATURE)
    try:
        try:
            stream = client.chat.completions.create(**request, stream_options={"include_usage": True})
        except openai.BadRequestError as error:
            if "stream_options" not in str(error):
                raise
            # An older OpenAI-compatible server that refuses the option: answer without the counts.
            stream = client.chat.completions.create(**request)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
            if chunk.usage is not None and usage is not None:
                usage.update(prompt_tokens=chunk.usage.prompt_tokens, completion_tokens=chunk.usage.completion_tokens)
    except openai.OpenAIError as error:
        raise GeneratorUnavailable(_describe(error)) from error


def chat_complete(*, messages: list[dict], max_tokens: int) -> str:
    """The whole reply at once (for short internal requests such as rewriting a question)."""
    client, model = generator_client(), generator_model()
    try:
        response = client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0.0,
        )
    except openai.OpenAIError as error:
        raise GeneratorUnavailable(_describe(error)) from error
    if not response.choices:
        return ""
    return response.choices[0].message.content or ""


def _describe(error: openai.OpenAIError) -> str:
    where = settings.GENERATOR_URL
    if isinstance(error, openai.APITimeoutError):
        return f"The generator at {where} did not answer within {settings.GENERATOR_TIMEOUT_SECONDS:g} s."
    if isinstance(error, openai.APIConnectionError):
        return generator_notice() or f"The generator at {where} cannot be reached: is it running? ({error.__cause__ or error})"
    if isinstance(error, openai.APIStatusError):
        return f"The generator at {where} refused the request ({error.status_code}): {_short(error.message)}"
    return f"The generator at {where} failed: {_short(str(error))}"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


_tokenizers: dict[str, object] = {}


def token_counter():
    """Count tokens as the generator does (GENERATOR_TOKENIZER), or estimate them cautiously."""
    name = settings.GENERATOR_TOKENIZER
    if name and name not in _tokenizers:
        try:
            from transformers import AutoTokenizer

            _tokenizers[name] = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as error:
            # Not kept: the local generator's folder appears once its first start has prepared it.
            logger.warning("Cannot load GENERATOR_TOKENIZER %s (%s): estimating token counts instead.", name, error)
    tokenizer = _tokenizers.get(name)
    if tokenizer is None:
        return estimated_tokens
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def estimated_tokens(text: str) -> int:
    """A cautious token count without the tokenizer: subword tokenizers average ~4 characters a
    token in English (3 errs on the safe side), and Chinese or Japanese characters are often
    a token each."""
    wide = len(WIDE_CHARACTERS.findall(text))
    return wide + math.ceil((len(text) - wide) / 3)
