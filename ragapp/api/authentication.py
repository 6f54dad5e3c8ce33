"""`Authorization: Bearer KEY` with the same API tokens as `Token KEY`: OpenAI clients send Bearer."""

from rest_framework.authentication import TokenAuthentication


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"
