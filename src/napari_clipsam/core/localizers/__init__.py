"""CLIP localizers behind one interface: ``get_localizer(name, model, tokenizer, **params)``."""

from __future__ import annotations

import inspect

from .attention import AttentionLocalizer
from .base import Localizer, Tiling, min_max
from .gem import GEMLocalizer
from .gradcam import GradCAMLocalizer
from .prompts import CLIP_SURGERY_TEMPLATES, TEMPLATE_SETS, check_background, check_prompts, split_synonyms
from .raw import RawLocalizer
from .surgery import SurgeryLocalizer
from .variants import ClearCLIPLocalizer, MaskCLIPLocalizer, NACLIPLocalizer, SCLIPLocalizer

LOCALIZERS: dict[str, type[Localizer]] = {
    cls.name: cls for cls in (GEMLocalizer, RawLocalizer,
                           MaskCLIPLocalizer, SCLIPLocalizer, ClearCLIPLocalizer, NACLIPLocalizer, AttentionLocalizer,
                           SurgeryLocalizer, GradCAMLocalizer)
}


def localizer_class(name: str) -> type[Localizer]:
    """The class registered as ``name`` (case-insensitive); an unknown name raises naming the choices."""
    key = name.lower() if isinstance(name, str) else None
    if key not in LOCALIZERS:
        raise ValueError(f"unknown localizer {name!r}; choose one of {sorted(LOCALIZERS)}")
    return LOCALIZERS[key]


def _keywords(cls: type) -> set[str]:
    """Keyword parameters of ``cls.__init__`` and of the ``__init__``s it passes ``**kwargs`` to."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names |= {n for n, p in params.items()
                  if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and n not in
                                                   ("self", "model", "tokenizer"))}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names


def check_localizer_options(name: str, **params) -> None:
    """What can be checked without a model: the name, that every option is one the method
    takes, and the shared options' types and ranges (``Localizer.check_options``). Options
    that depend on the model (depth, layer, window vs patch size) are checked when it is built."""
    cls = localizer_class(name)
    unknown = sorted(set(params) - _keywords(cls))
    if unknown:
        raise TypeError(f"'{cls.name}' takes no option(s) {unknown}; its options are {sorted(_keywords(cls))}")
    common = inspect.signature(Localizer.check_options).parameters
    cls.check_options(**{k: v for k, v in params.items() if k in common})


def get_localizer(name: str, model, tokenizer, **params) -> Localizer:
    """Build the localizer called ``name`` (see ``LOCALIZERS``) over an open_clip model."""
    check_localizer_options(name, **params)
    if not (hasattr(model, "visual") and hasattr(model, "encode_text")):
        raise TypeError(f"model must be an open_clip CLIP model (core.models.load_clip), got {type(model).__name__}")
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be the open_clip tokenizer of the model, got {type(tokenizer).__name__}")
    return localizer_class(name)(model, tokenizer, **params)


__all__ = ["CLIP_SURGERY_TEMPLATES", "LOCALIZERS", "Localizer", "TEMPLATE_SETS", "Tiling", "check_background",
           "check_localizer_options", "check_prompts", "get_localizer", "localizer_class", "min_max", "split_synonyms"]
