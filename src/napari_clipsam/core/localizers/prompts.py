"""Prompts -> sentences for the text encoder: template sets, synonyms, validation.

A *prompt* is what the user types for one class. Synonyms of one class are separated by
";" ("cell; nucleus"): each synonym is put into every template, the template embeddings of
a synonym are averaged (normalised mean of normalised embeddings, as CLIP's prompt
ensembling does), and the class feature is the normalised mean of its synonyms' features.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["CLIP_SURGERY_TEMPLATES", "TEMPLATE_SETS", "check_prompts", "resolve_templates", "split_synonyms"]

#: The 85 prompt templates of CLIP Surgery's ``encode_text_with_prompt_ensemble``, in order.
CLIP_SURGERY_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "the plastic {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.", "the {} in a video game.",
    "a sketch of a {}.", "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.",
    "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.",
    "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.", "itap of a {}.",
    "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.", "there is a {} in the scene.",
    "there is the {} in the scene.", "this is a {} in the scene.", "this is the {} in the scene.",
    "this is one {} in the scene.",
)


def _openai_imagenet(simple: bool = False) -> tuple[str, ...]:
    # open_clip ships CLIP's ImageNet prompt-engineering templates as callables
    from open_clip import zero_shot_metadata as meta

    fns = meta.SIMPLE_IMAGENET_TEMPLATES if simple else meta.OPENAI_IMAGENET_TEMPLATES
    return tuple(fn("{}") for fn in fns)


#: Named template sets. "imagenet": CLIP's 80 ImageNet templates; "imagenet-simple": the
#: 7-template subset CLIP's authors recommend; "surgery": CLIP Surgery's 85.
TEMPLATE_SETS: dict[str, object] = {
    "single": ("a photo of a {}.",),
    "imagenet": lambda: _openai_imagenet(False),
    "imagenet-simple": lambda: _openai_imagenet(True),
    "surgery": CLIP_SURGERY_TEMPLATES,
}


def resolve_templates(templates: str | Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    """A template-set name, a sequence of templates (each with one "{}"), or None (default)."""
    if templates is None:
        out = tuple(default)
    elif isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            value = TEMPLATE_SETS[templates]
            out = tuple(value() if callable(value) else value)
        elif "{}" in templates:
            out = (templates,)
        else:
            raise ValueError(f"unknown template set {templates!r}: choose one of {sorted(TEMPLATE_SETS)} "
                             "or give templates containing '{}' where the prompt goes")
    else:
        out = tuple(str(t) for t in templates)
    if not out:
        raise ValueError("no prompt templates given; use e.g. templates='single'")
    for t in out:
        try:
            ok = t.count("{}") == 1 and t.format("x") is not None
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"prompt template {t!r} must contain '{{}}' exactly once (where the prompt goes) "
                             "and no other braces")
    return out


def split_synonyms(prompt: str) -> list[str]:
    """'cell; nucleus' -> ['cell', 'nucleus'] (blank parts dropped)."""
    return [s.strip() for s in str(prompt).split(";") if s.strip()]


def check_prompts(prompts: Sequence[str] | str) -> list[str]:
    """Validate prompts: a non-empty list of non-empty strings (synonyms joined by ';')."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, (set, frozenset, dict)) or not isinstance(prompts, Iterable):
        raise TypeError(f"prompts must be a string or a list of strings (their order numbers the classes), "
                        f"got {type(prompts).__name__}")
    prompts = list(prompts)
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {bad[0]!r} ({type(bad[0]).__name__}); "
                        "write it as text, e.g. 'cell'")
    raw = [p.strip() for p in prompts]
    empty = [i for i, p in enumerate(raw) if not split_synonyms(p)]
    if not raw:
        raise ValueError("no prompts given: type at least one word, e.g. 'nucleus'")
    if empty:
        raise ValueError(f"prompt(s) at position {empty} are empty; remove blank lines or type a word")
    seen: dict[tuple[str, ...], str] = {}
    for p in raw:
        key = canonical(p)
        if key in seen:
            same = f"{p!r} is given twice" if seen[key] == p else f"{seen[key]!r} and {p!r} are the same class"
            raise ValueError(f"prompt {same}; each prompt is one class, remove the repeat")
        seen[key] = p
    # "cat;" is the class "cat", "cell ;nucleus" the class "cell; nucleus" (blank synonyms dropped)
    prompts = ["; ".join(split_synonyms(p)) for p in raw]
    return prompts


def check_background(prompts, background) -> None:
    """A ValueError if a class is both a prompt and a background prompt (checked prompts)."""
    wanted = {canonical(b) for b in background}
    clash = [p for p in prompts if canonical(p) in wanted]
    if clash:
        raise ValueError(f"{clash} is both a prompt and a background prompt; remove it from one list")


def canonical(prompt: str) -> tuple[str, ...]:
    """What identifies a class: its set of synonyms as CLIP's tokenizer reads them, i.e.
    without case or repeated spaces ('cat;' == 'cat', 'a; b' == 'b; a', 'Cat' == 'cat')."""
    return tuple(sorted({" ".join(s.split()).casefold() for s in split_synonyms(prompt)}))
