"""Names the zoo adds on top of timm's registry: short aliases of the default FIMA weights.

Both the factory (:mod:`fima_models._factory`) and the weight fetcher
(:func:`fima_models.models._hub.download_pretrained`) resolve these names, so they live below both.
"""
from typing import Dict

__all__ = ['MODEL_ALIASES', 'resolve_alias']

#: Short names that resolve to the default FIMA weights of an architecture.
MODEL_ALIASES: Dict[str, str] = {
    'r2plus1d_fima': 'r2plus1d_18.fima_k400',
    'r3d_fima': 'r3d_18.fima_k400',
    's3d_fima': 's3d.fima_k400',
    'i3d_fima': 'i3d.fima_k400',
}


def resolve_alias(name: str) -> str:
    """Return the ``arch.tag`` name an alias stands for, or ``name`` itself."""
    return MODEL_ALIASES.get(name, name)
