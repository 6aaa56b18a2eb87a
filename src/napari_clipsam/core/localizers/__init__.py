"""CLIP localizers behind one interface: ``get_localizer(name, model, tokenizer, **params)``."""

from __future__ import annotations

from .attention import AttentionLocalizer
from .base import Localizer, Tiling, min_max
from .gem import GEMLocalizer
from .gradcam import GradCAMLocalizer
from .prompts import CLIP_SURGERY_TEMPLATES, TEMPLATE_SETS, check_prompts, split_synonyms
from .raw import RawLocalizer
from .surgery import SurgeryLocalizer
from .variants import ClearCLIPLocalizer, MaskCLIPLocalizer, NACLIPLocalizer, SCLIPLocalizer

LOCALIZERS: dict[str, type[Localizer]] = {
    cls.name: cls for cls in (GEMLocalizer, RawLocalizer,
                           MaskCLIPLocalizer, SCLIPLocalizer, ClearCLIPLocalizer, NACLIPLocalizer, AttentionLocalizer,
                           SurgeryLocalizer, GradCAMLocalizer)
}


def get_localizer(name: str, model, tokenizer, **params) -> Localizer:
    """Build the localizer called ``name`` (see ``LOCALIZERS``) over an open_clip model."""
    key = str(name).lower()
    if key not in LOCALIZERS:
        raise ValueError(f"unknown localizer {name!r}; choose one of {sorted(LOCALIZERS)}")
    return LOCALIZERS[key](model, tokenizer, **params)


__all__ = ["CLIP_SURGERY_TEMPLATES", "LOCALIZERS", "Localizer", "TEMPLATE_SETS", "Tiling", "check_prompts",
           "get_localizer", "min_max", "split_synonyms"]
