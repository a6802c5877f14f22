"""Model providers, chosen by name.

Each backend lives in its own module and is imported only when it is chosen, so running the
offline simulator never imports the HTTP clients' parsing code, and a new backend is one module
plus one branch in :func:`build_provider`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import prompts
from .base import Prompt, Provider

if TYPE_CHECKING:
    import httpx

    from ..models import ReviewRequest
    from ..settings import ProviderName, Settings

__all__ = [
    "Prompt",
    "Provider",
    "build_prompt",
    "build_provider",
    "default_model",
    "validate_job",
]

# Generous for English prose, so the requested length is never cut off by the token limit.
_TOKENS_PER_WORD = 2


def build_provider(name: ProviderName, settings: Settings, http: httpx.AsyncClient) -> Provider:
    """Construct the provider called ``name`` from ``settings``.

    ``http`` is the shared client the HTTP providers stream through; the simulated provider
    ignores it. Raises ``ValueError`` when a hosted API is chosen without its API key.
    """
    if name == "simulated":
        from .simulated import SimulatedProvider

        return SimulatedProvider.from_settings(settings)
    if name == "openai":
        from .openai import OpenAIProvider

        return OpenAIProvider.from_settings(settings, http)
    if name == "anthropic":
        from .anthropic import AnthropicProvider

        return AnthropicProvider.from_settings(settings, http)
    raise ValueError(f"unknown provider {name!r}; choose simulated, openai or anthropic")


def validate_job(name: ProviderName, model: str, settings: Settings) -> None:
    """Refuse, before a job is queued, what this deployment cannot run.

    Raises ``ProviderConfigError`` for an unknown simulated preset, or a hosted API without its
    key (the same check the provider's constructor makes).
    """
    from .base import require_key

    if name == "simulated":
        from .simulated import SimulatedProvider

        SimulatedProvider.validate_model(model)
    elif name == "openai":
        from .openai import PUBLIC_HOST

        key = settings.openai_api_key
        require_key(
            key.get_secret_value() if key else None,
            settings.openai_base_url,
            PUBLIC_HOST,
            "REVIEWSTREAM_OPENAI_API_KEY",
        )
    else:
        from .anthropic import PUBLIC_HOST

        key = settings.anthropic_api_key
        require_key(
            key.get_secret_value() if key else None,
            settings.anthropic_base_url,
            PUBLIC_HOST,
            "REVIEWSTREAM_ANTHROPIC_API_KEY",
        )


def default_model(name: ProviderName, settings: Settings) -> str:
    """The model a job uses when its request names none."""
    if name == "openai":
        return settings.openai_model
    if name == "anthropic":
        return settings.anthropic_model
    return "sim-default"


def build_prompt(request: ReviewRequest, model: str, settings: Settings) -> Prompt:
    """The prompt for ``request``.

    ``max_tokens`` is ``settings.max_output_tokens``, raised when the requested length needs
    more, so a long review is not cut off by a limit the operator set for typical ones.
    """
    needed = request.length_words * _TOKENS_PER_WORD
    return Prompt(
        system=prompts.SYSTEM,
        user=prompts.user_prompt(request),
        model=model,
        max_tokens=max(settings.max_output_tokens, needed),
        request=request,
    )
