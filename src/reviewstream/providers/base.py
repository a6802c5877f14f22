"""The provider interface: a prompt in, text deltas out, usage at the end."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

import httpx

from ..errors import ProviderConfigError
from ..models import ReviewRequest, Usage


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a provider is asked to write; ``request`` lets the simulated model write offline."""

    system: str
    user: str
    model: str
    max_tokens: int
    request: ReviewRequest


def require_key(api_key: str | None, base_url: str, public_host: str, env_var: str) -> None:
    """A hosted API needs its key; a compatible server elsewhere (vLLM, Ollama…) may not."""
    if not api_key and httpx.URL(base_url).host == public_host:
        raise ProviderConfigError(
            f"{base_url} needs an API key: set {env_var} (or point the base URL at a compatible"
            " server that needs none)"
        )


class Provider(Protocol):
    """An async source of text deltas.

    ``stream`` yields ``str`` deltas as the model writes them and, last, at most one ``Usage``.
    It raises a ``ProviderError`` subclass on failure (never ends quietly on a truncated
    stream). Closing the iterator early (``aclose()``) closes the upstream connection.
    """

    name: str

    def stream(self, prompt: Prompt) -> AsyncGenerator[str | Usage, None]: ...
