"""Text prompts: files of prompt templates and the ``{object}`` / ``{background}`` placeholders.

A prompt file holds one template per line; blank lines and lines starting with ``#`` are ignored,
and surrounding white space is stripped. Templates use ``str.format`` syntax with exactly two
names, ``{object}`` (filled with the sample's object category, e.g. "mug") and ``{background}``
(a scene description drawn per sample, e.g. "on a wooden kitchen table"); ``{{`` and ``}}`` give
literal braces. Any other placeholder (``{colour}``, ``{}``, ``{object.name}``) has no value and is
an error naming the file and line, as are an unreadable or non-UTF-8 file and a file with no
prompts.
"""

from __future__ import annotations

import string
from pathlib import Path

from hoigen.errors import HoigenError

PLACEHOLDERS = ("object", "background")

DEFAULT_PROMPTS = (
    "a photo of a hand grasping a {object}, {background}",
    "a close-up photo of a hand holding a {object}, {background}, natural light",
    "a realistic photo of a person's hand picking up a {object}, {background}",
    "a hand reaching for a {object}, {background}, sharp focus, high detail",
)

DEFAULT_BACKGROUNDS = (
    "on a wooden kitchen table",
    "on a white office desk",
    "in a living room",
    "outdoors on a picnic table",
    "on a cluttered workbench",
)

DEFAULT_NEGATIVE_PROMPT = (
    "blurry, low quality, deformed hand, extra fingers, missing fingers, bad anatomy, cartoon, drawing, text"
)


def load_prompts(path: str | Path) -> list[str]:
    """Read prompt templates from a text file (one per line; ``#`` comments and blank lines skipped)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise HoigenError(f"{path}: prompt file not found; pass a text file, one prompt per line") from None
    except IsADirectoryError:
        raise HoigenError(f"{path}: is a folder; pass a prompt text file, one prompt per line") from None
    except UnicodeDecodeError as error:
        data = path.read_bytes()
        line = data[: error.start].count(b"\n") + 1
        raise HoigenError(
            f"{path}:{line}: not UTF-8 text (byte {error.start}); save the prompt file as UTF-8"
        ) from None
    prompts = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            check_template(line)
        except HoigenError as error:
            raise HoigenError(f"{path}:{number}: {error}") from None
        prompts.append(line)
    if not prompts:
        raise HoigenError(f"{path}: holds no prompts (only blank or # lines); add one prompt per line")
    return prompts


def template_fields(template: str) -> set[str]:
    """The placeholder names used in a template."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise HoigenError(f"prompt {template!r}: {error}; write literal braces as {{{{ and }}}}") from None
    return {field for _, field, _, _ in parsed if field is not None}


def check_template(template: str) -> None:
    """Raise HoigenError when a template uses a placeholder other than ``{object}`` / ``{background}``."""
    unknown = sorted(template_fields(template) - set(PLACEHOLDERS))
    if unknown:
        names = ", ".join("{" + name + "}" for name in unknown)
        raise HoigenError(
            f"prompt {template!r} uses unknown placeholder {names}; "
            "only {object} and {background} are filled"
        )


def fill_prompt(template: str, object: str | None = None, background: str | None = None) -> str:  # noqa: A002
    """Fill ``{object}`` and ``{background}``; HoigenError if the template needs a value not given."""
    check_template(template)
    values = {"object": object, "background": background}
    for name in sorted(template_fields(template)):
        if values[name] is None:
            raise HoigenError(f"prompt {template!r} needs a value for {{{name}}}; give one (e.g. --{name})")
    return template.format(**{k: v for k, v in values.items() if v is not None})
