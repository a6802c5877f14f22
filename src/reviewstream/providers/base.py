"""The provider interface: a prompt in, text deltas out, usage at the end.

Two protocols: :class:`Provider` is what a worker streams from; :class:`ProviderClass` is the
class side (its default model, its validation, building it from settings), which
``providers.provider_class`` returns for a provider's name.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httpx

from ..errors import ProviderConfigError
from ..models import ReviewRequest, Usage

if TYPE_CHECKING:
    from pydantic import SecretStr

    from ..settings import Settings


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a provider is asked to write; ``request`` lets the simulated model write offline.

    ``continuation`` is the text already stored for this job (all its stored tokens joined),
    empty for a first attempt. Stored tokens never change, so a provider given a continuation
    yields only what comes *after* it: never the stored text again, and nothing that would
    rewrite it. How each provider gets the model to pick up there is its own business (see
    each provider's docstring).
    """

    system: str
    user: str
    model: str
    max_tokens: int
    request: ReviewRequest
    continuation: str = ""


def require_key(api_key: str | None, base_url: str, public_host: str, env_var: str) -> None:
    """A hosted API needs its key; a compatible server elsewhere (vLLM, Ollama…) may not."""
    if not api_key and httpx.URL(base_url).host == public_host:
        raise ProviderConfigError(
            f"{base_url} needs an API key: set {env_var} (or point the base URL at a compatible"
            " server that needs none)"
        )


def secret(key: SecretStr | None) -> str | None:
    """The value of an API key setting, or ``None`` when it is not set."""
    return key.get_secret_value() if key is not None else None


class Provider(Protocol):
    """An async source of text deltas.

    ``stream`` yields ``str`` deltas as the model writes them and, last, at most one ``Usage``.
    With a ``prompt.continuation``, the deltas are those that follow that text.
    It raises a ``ProviderError`` subclass on failure (never ends quietly on a truncated
    stream). Closing the iterator early (``aclose()``) closes the upstream connection.
    """

    name: str

    def stream(self, prompt: Prompt) -> AsyncGenerator[str | Usage, None]: ...


class ProviderClass(Protocol):
    """A provider's class: everything the service and the worker need before it streams.

    Classmethods on the provider satisfy it, so a class is its own factory and nothing else
    has to know its settings.
    """

    name: str

    def default_model(self, settings: Settings) -> str:
        """The model a job uses when its request names none."""
        ...

    def validate(self, model: str, settings: Settings) -> None:
        """Raise ``ProviderConfigError`` if this deployment cannot run ``model``."""
        ...

    def from_settings(self, settings: Settings, http: httpx.AsyncClient) -> Provider:
        """The provider configured by ``settings``, streaming through ``http``."""
        ...
