"""Model providers, chosen by name.

Each backend lives in its own module as one class that owns its settings, default model and
validation (:class:`ProviderClass`). :func:`provider_class` imports only the module of the
provider it is asked for, so running the offline simulator never imports the HTTP clients'
parsing code, and a new backend is one module plus one branch there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import prompts
from .base import Prompt, Provider, ProviderClass

if TYPE_CHECKING:
    import httpx

    from ..models import ReviewRequest
    from ..settings import ProviderName, Settings

__all__ = [
    "Prompt",
    "Provider",
    "ProviderClass",
    "build_prompt",
    "build_provider",
    "default_model",
    "provider_class",
    "validate_job",
]

# Generous for English prose, so the requested length is never cut off by the token limit.
_TOKENS_PER_WORD = 2


def provider_class(name: str) -> ProviderClass:
    """The class of the provider called ``name``, importing only that provider's module.

    Raises ``ValueError`` for a name that is no provider.
    """
    if name == "simulated":
        from .simulated import SimulatedProvider

        return SimulatedProvider
    if name == "openai":
        from .openai import OpenAIProvider

        return OpenAIProvider
    if name == "anthropic":
        from .anthropic import AnthropicProvider

        return AnthropicProvider
    raise ValueError(f"unknown provider {name!r}; choose simulated, openai or anthropic")


def build_provider(name: ProviderName, settings: Settings, http: httpx.AsyncClient) -> Provider:
    """Construct the provider called ``name`` from ``settings``.

    ``http`` is the shared client the HTTP providers stream through; the simulated provider
    ignores it. Raises ``ValueError`` when a hosted API is chosen without its API key.
    """
    return provider_class(name).from_settings(settings, http)


def validate_job(name: ProviderName, model: str, settings: Settings) -> None:
    """Refuse, before a job is queued, what this deployment cannot run.

    Raises ``ProviderConfigError`` for an unknown simulated preset, or a hosted API without its
    key (the same check the provider's constructor makes).
    """
    provider_class(name).validate(model, settings)


def default_model(name: ProviderName, settings: Settings) -> str:
    """The model a job uses when its request names none."""
    return provider_class(name).default_model(settings)


def build_prompt(
    request: ReviewRequest, model: str, settings: Settings, continuation: str = ""
) -> Prompt:
    """The prompt for ``request``; ``continuation``: the text already stored for the job.

    ``max_tokens`` is ``settings.max_output_tokens``, raised when the requested length needs
    more, so a long review is not cut off by a limit the operator set for typical ones. A
    continued attempt gets the same budget for its new text.
    """
    needed = request.length_words * _TOKENS_PER_WORD
    return Prompt(
        system=prompts.SYSTEM,
        user=prompts.user_prompt(request),
        model=model,
        max_tokens=max(settings.max_output_tokens, needed),
        request=request,
        continuation=continuation,
    )
