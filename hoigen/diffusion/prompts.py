r"""Text prompts: files of prompt templates and the ``{object}`` / ``{name}`` / ``{background}`` placeholders.

A prompt file holds one template per line; surrounding white space is stripped and blank lines are
ignored. Comments: a ``#`` at the start of a line or after white space starts a comment that runs to
the end of the line (``a hand holding a {object}  # close-ups`` is ``a hand holding a {object}``);
a ``#`` inside a word (``C#``) is text, and ``\#`` is a literal ``#`` anywhere.

Templates use ``str.format`` syntax with three names: ``{object}`` (the sample's object category,
e.g. "mug"; for the catch-all category ``object`` the object's readable name instead), ``{name}``
(the readable name, from the object's file or folder name: ``lego_brick.stl`` -> "lego brick",
``002_master_chef_can`` -> "master chef can") and ``{background}`` (a scene description drawn per
sample, e.g. "on a wooden kitchen table"); ``{{`` and ``}}`` give literal braces. Any other
placeholder (``{colour}``, ``{}``, ``{object.name}``) has no value and is an error naming the file
and line, as are an unreadable or non-UTF-8 file and a file with no prompts.

CLIP reads at most 77 tokens; a longer prompt is cut. ``TruncationWarner`` warns once per distinct
prompt (with the file and line of its template), and diffusers' own per-batch message is dropped.
"""

from __future__ import annotations

import logging
import re
import string
import threading
from pathlib import Path

from hoigen.errors import HoigenError

log = logging.getLogger("hoigen.prompts")

PLACEHOLDERS = ("object", "name", "background")
CATCH_ALL_CATEGORY = "object"
COMMENT = re.compile(r"(?:^|(?<=\s))(?<!\\)#.*$")

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


def strip_comment(line: str) -> str:
    """A prompt line without its comment (see the module), ``\\#`` turned into ``#``, stripped."""
    return COMMENT.sub("", line).replace("\\#", "#").strip()


def load_prompts(path: str | Path) -> list[str]:
    """Read prompt templates from a text file (one per line; ``#`` comments and blank lines skipped)."""
    return [template for _, template in numbered_prompts(path)]


def numbered_prompts(path: str | Path) -> list[tuple[int, str]]:
    """(line number, template) of every prompt in a prompt file (see ``load_prompts``)."""
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
        line = strip_comment(raw)
        if not line:
            continue
        try:
            check_template(line)
        except HoigenError as error:
            raise HoigenError(f"{path}:{number}: {error}") from None
        prompts.append((number, line))
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
    """Raise HoigenError when a template uses a placeholder other than ``{object}``, ``{name}``, ``{background}``."""
    unknown = sorted(template_fields(template) - set(PLACEHOLDERS))
    if unknown:
        names = ", ".join("{" + name + "}" for name in unknown)
        raise HoigenError(
            f"prompt {template!r} uses unknown placeholder {names}; "
            "only {object}, {name} and {background} are filled"
        )


def readable_name(object_id: str, category: str | None = None) -> str:
    """An object's name for prompts, from its id: ``lego-brick`` -> "lego brick", ``002-master-chef-can`` ->
    "master chef can", ``mug-003`` -> "mug"; the category when nothing but numbers is left."""
    words = [w for w in re.split(r"[^a-z0-9]+", str(object_id).lower()) if w and not w.isdigit()]
    return " ".join(words) or (category or CATCH_ALL_CATEGORY)


def object_words(category: str, object_id: str) -> dict[str, str]:
    """The ``{object}`` and ``{name}`` values of a sample: the category, or the name for category ``object``."""
    name = readable_name(object_id, category)
    return {"object": name if category == CATCH_ALL_CATEGORY else category, "name": name}


def fill_prompt(
    template: str,
    object: str | None = None,  # noqa: A002
    background: str | None = None,
    name: str | None = None,
) -> str:
    """Fill ``{object}``, ``{name}`` and ``{background}``; HoigenError if the template needs a value not given."""
    check_template(template)
    values = {"object": object, "background": background, "name": name}
    for name in sorted(template_fields(template)):
        if values[name] is None:
            raise HoigenError(f"prompt {template!r} needs a value for {{{name}}}; give one (e.g. --{name})")
    return template.format(**{k: v for k, v in values.items() if v is not None})


# diffusers' per-batch message and transformers' "Token indices sequence length is longer" one
CLIP_TRUNCATION = ("The following part of your input was truncated", "Token indices sequence length is longer")


class _DropClipTruncation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(CLIP_TRUNCATION)


def silence_clip_truncation() -> None:
    """Drop diffusers' per-batch CLIP truncation message (``TruncationWarner`` says it once per prompt)."""
    drop = _DropClipTruncation()
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("diffusers", "transformers.tokenization_utils")):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _DropClipTruncation) for f in logger.filters):
                logger.addFilter(drop)


class TruncationWarner:
    """One warning per distinct prompt longer than the tokenizer reads, naming its template's file and line.

    ``templates`` are the run's templates; ``source`` the prompt file they came from (None: the defaults).
    """

    def __init__(self, tokenizer, templates: list[str], source: str | Path | None = None) -> None:
        self.tokenizer = tokenizer
        self.limit = int(getattr(tokenizer, "model_max_length", 77) or 77)
        lines = dict((t, n) for n, t in reversed(numbered_prompts(source))) if source else {}
        self.origins = [
            (_template_pattern(t), f"{source}:{lines[t]}" if t in lines else f"default prompt {i + 1}")
            for i, t in enumerate(templates)
        ]
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        silence_clip_truncation()

    def where(self, prompt: str) -> str:
        """The file and line (or default prompt number) of the template a prompt was filled from."""
        return next((origin for pattern, origin in self.origins if pattern.fullmatch(prompt)), "a prompt")

    def check(self, prompts: list[str]) -> list[str]:
        """Warn about each prompt not seen before that the tokenizer cuts; return those warning lines."""
        lines = []
        for prompt in prompts:
            with self.lock:
                if prompt in self.seen:
                    continue
                self.seen.add(prompt)
            ids = self.tokenizer(prompt, truncation=False, verbose=False).input_ids
            if len(ids) <= self.limit:
                continue
            kept = self.tokenizer.decode(ids[1 : self.limit - 1], skip_special_tokens=True)
            cut = prompt[len(kept) :].strip() if prompt.startswith(kept) else "the end"
            line = (
                f"{self.where(prompt)}: prompt is {len(ids)} tokens, the text encoder reads {self.limit}; "
                f"cut off: {cut!r}; shorten the prompt"
            )
            log.warning(line)
            lines.append(line)
        return lines


def _template_pattern(template: str) -> re.Pattern:
    """A regular expression that a prompt filled from ``template`` matches in full."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field is not None:
            parts.append("(.*?)")
    return re.compile("".join(parts), re.DOTALL)
