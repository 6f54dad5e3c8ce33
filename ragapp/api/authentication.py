"""`Authorization: Bearer KEY` with the same API tokens as `Token KEY`: OpenAI clients send Bearer."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from rest_framework.authentication import TokenAuthentication


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Describe Bearer as its own scheme: drf-spectacular would name it `tokenAuth`, like `Token KEY`.

    Defined beside the class so that it is registered wherever the class is imported."""

    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(header_name="Authorization", token_prefix=self.target.keyword)
