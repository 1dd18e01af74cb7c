"""Structured prompts from templates/prompts, caption flags, prompt hints and step advice.

I2VGen-XL at 30 steps has little room to recover from a vague prompt; naming the parts
("[Subject: a cat] [Action: turning its head, slow motion] [Camera: static shot]") keeps subject and motion
steady. Users write free text, in English or Chinese; this module builds the structured prompt for them.
The text encoder is an English CLIP model, so Chinese words are translated through the glossary; words the
glossary does not know stay as written (the raw text is kept on the job as `prompt_raw`).
"""

from __future__ import annotations

import functools
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.media.detail import DETAILED_AT, VERY_DETAILED_AT

CAMERAS = ("static", "zoom-in", "zoom-out", "pan-left", "pan-right", "tilt-up", "tilt-down", "orbit")
SPEEDS = ("slow", "normal", "fast")
SLOTS = ("subject", "action", "speed", "camera", "environment")
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates" / "prompts"
MAX_CONTENT_WORDS = 15

_CHOICE_ALIASES = {
    "still": "static", "fixed": "static", "none": "static",
    "push-in": "zoom-in", "dolly-in": "zoom-in", "pull-out": "zoom-out", "dolly-out": "zoom-out",
    "pull-back": "zoom-out", "arc": "orbit", "slow-motion": "slow", "slowmo": "slow", "slow-mo": "slow",
    "medium": "normal", "quick": "fast", "static-shot": "static", "orbit-shot": "orbit",
    "fast-motion": "fast", "normal-speed": "normal",
}
_ZH_CATEGORIES = ("subject", "action", "camera", "speed", "environment", "modifier", "connector")


def normalize_choice(value: str) -> str:
    """'Zoom In', 'zoom_in', 'ZoomIn', 'zoomin' -> 'zoom-in'. Unknown values come back normalized, not checked."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", value.strip())
    text = re.sub(r"[\s_\-\u2010-\u2015]+", "-", text.lower()).strip("-")
    compact = text.replace("-", "")
    for choice in CAMERAS + SPEEDS:
        if compact == choice.replace("-", ""):
            return choice
    return _CHOICE_ALIASES.get(text, text)


def check_choice(kind: str, value: str) -> str:
    """The normalized camera or speed choice, or a UserError naming the valid ones."""
    choices = CAMERAS if kind == "camera" else SPEEDS
    choice = normalize_choice(value)
    if choice not in choices:
        raise UserError(
            f"Unknown {kind} '{value}'. Choose one of: {', '.join(choices)}.",
            f"unknown_{kind}", value=value, choices=", ".join(choices),
        )
    return choice


@dataclass
class PromptSpec:
    text: str
    camera: str | None = None
    speed: str | None = None
    subject: str | None = None
    environment: str | None = None


# ---------------------------------------------------------------- glossary and templates

@dataclass(frozen=True)
class Glossary:
    cameras: dict[str, str]
    speeds: dict[str, str]
    motion_verbs: tuple[str, ...]
    motion_phrases: tuple[str, ...]
    vague: tuple[str, ...]
    suggestions: dict[str, str]
    zh: dict[str, tuple[str, str]]        # Chinese word -> (category, English); category "skip" drops it
    motion_forms: frozenset[str] = frozenset()
    zh_longest: int = 1

    def segment(self, run: str) -> list[tuple[str, str, str]]:
        """(category, English, original) for a run of CJK text, longest match first; unknown text is
        category "unknown" with itself as the English."""
        out: list[tuple[str, str, str]] = []
        unknown = ""
        i = 0
        while i < len(run):
            for j in range(min(len(run), i + self.zh_longest), i, -1):
                hit = self.zh.get(run[i:j])
                if hit:
                    if unknown:
                        out.append(("unknown", unknown, unknown))
                        unknown = ""
                    out.append((hit[0], hit[1], run[i:j]))
                    i = j
                    break
            else:
                unknown += run[i]
                i += 1
        if unknown:
            out.append(("unknown", unknown, unknown))
        return out

    def translate_inline(self, text: str) -> str:
        """Every CJK run replaced by its English words, in order; unknown words kept, particles dropped."""
        def one(m: re.Match) -> str:
            words = " ".join(eng for cat, eng, _ in self.segment(m.group(0)) if cat != "skip")
            before = m.string[m.start() - 1:m.start()]
            after = m.string[m.end():m.end() + 1]
            return (" " if before.isalnum() else "") + words + (" " if after.isalnum() else "")
        return _collapse(_CJK_RUN.sub(one, text))


@dataclass(frozen=True)
class Templates:
    name: str
    description: str
    format: str
    defaults: dict[str, str]
    cameras: dict[str, str]
    speeds: dict[str, str]
    glossary: Glossary
    path: Path | None = None

    def render(self, slots: dict[str, str]) -> str:
        """The format with each slot filled; empty slots go with their comma, empty [ ] groups go whole."""
        parts = []
        for piece in re.split(r"(\[[^\[\]]*\])", self.format):
            names = _placeholders(piece)
            if names and not any(slots.get(n) for n in names):
                continue
            for name in names:
                if not slots.get(name):
                    piece = _drop_placeholder(piece, name)
            parts.append(piece.format_map({n: slots.get(n, "") for n in SLOTS}))
        return _collapse("".join(parts))

    def label_of(self, slot: str) -> str | None:
        """The label of the [Label: ...] group that holds a slot, e.g. 'Camera' for camera."""
        for piece in re.findall(r"\[[^\[\]]*\]", self.format):
            if slot in _placeholders(piece):
                m = re.match(r"\[\s*([^:\]{]+?)\s*:", piece)
                return m.group(1) if m else None
        return None

    def camera_phrase(self, choice: str) -> str:
        return self.cameras.get(choice, choice)

    def speed_phrase(self, choice: str) -> str:
        return self.speeds.get(choice, choice)


def _placeholders(piece: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(piece) if name is not None]


def _drop_placeholder(piece: str, name: str) -> str:
    for pattern in (rf"\s*,\s*\{{{name}\}}", rf"\{{{name}\}}\s*,\s*", rf"\{{{name}\}}"):
        new = re.sub(pattern, "", piece, count=1)
        if new != piece:
            return new
    return piece


def available_templates(folder: Path | None = None) -> list[str]:
    """Names of the template sets in the folder (every .toml with a format key)."""
    folder = Path(folder) if folder else TEMPLATES_DIR
    names = []
    for path in sorted(folder.glob("*.toml")):
        try:
            if "format" in tomllib.loads(path.read_text(encoding="utf-8")):
                names.append(path.stem)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError):
            continue
    return names


def load_templates(folder: Path | None = None, name: str = "default") -> Templates:
    """The template set `name` from `folder` (default: the repository's templates/prompts). Cached; an
    edited file is read again."""
    folder = (Path(folder) if folder else TEMPLATES_DIR).resolve()
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name or ""):
        raise UserError(f"Template set names use letters, digits, - and _ only, not '{name}'.",
                        "templates_unknown", name=name)
    path = folder / f"{name}.toml"
    if not path.is_file():
        names = ", ".join(available_templates(folder)) or "none"
        raise UserError(f"No prompt template set '{name}' in {folder}; available: {names}.",
                        "templates_unknown", name=name, choices=names)
    return _load_templates_cached(str(folder), name, _folder_stamp(folder))


def load_glossary(folder: Path | None = None, name: str = "glossary") -> Glossary:
    folder = (Path(folder) if folder else TEMPLATES_DIR).resolve()
    return _load_glossary_cached(str(folder), name, _folder_stamp(folder))


def _folder_stamp(folder: Path) -> tuple[tuple[str, int], ...]:
    return tuple((p.name, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.toml")))


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"Prompt file not found: {path}", "templates_missing", path=str(path)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"Prompt file {path} is not valid TOML: {exc}", "templates_invalid",
                        path=str(path)) from None


@functools.lru_cache(maxsize=32)
def _load_glossary_cached(folder: str, name: str, _stamp: tuple) -> Glossary:
    path = Path(folder) / f"{name}.toml"
    raw = _read_toml(path)
    english = raw.get("english", {})
    zh: dict[str, tuple[str, str]] = {}
    for category, words in raw.get("zh", {}).items():
        if category == "skip":
            zh.update({w: ("skip", "") for w in words.get("words", [])})
        elif category in _ZH_CATEGORIES:
            zh.update({w: (category, str(e)) for w, e in words.items()})
        else:
            raise UserError(f"{path}: unknown section [zh.{category}]; use one of "
                            f"{', '.join(_ZH_CATEGORIES + ('skip',))}.", "templates_invalid", path=str(path))
    verbs = tuple(str(v).lower() for v in english.get("motion_verbs", []))
    phrases = tuple(str(p).lower() for p in english.get("motion_phrases", []))
    # Multi-word English actions from the Chinese table ("head rotation") also mark an action.
    phrases += tuple(sorted({e.lower() for c, e in zh.values() if c == "action" and " " in e} - set(phrases)))
    return Glossary(
        cameras={normalize_choice(k): str(v) for k, v in raw.get("camera", {}).items()},
        speeds={normalize_choice(k): str(v) for k, v in raw.get("speed", {}).items()},
        motion_verbs=verbs,
        motion_phrases=phrases,
        vague=tuple(str(v).lower() for v in english.get("vague", [])),
        suggestions={str(k).lower(): str(v) for k, v in raw.get("suggestions", {}).items()},
        zh=zh,
        motion_forms=frozenset(f for v in verbs for f in _verb_forms(v)),
        zh_longest=max((len(w) for w in zh), default=1),
    )


@functools.lru_cache(maxsize=32)
def _load_templates_cached(folder: str, name: str, stamp: tuple) -> Templates:
    path = Path(folder) / f"{name}.toml"
    raw = _read_toml(path)
    fmt = raw.get("format")
    if not isinstance(fmt, str) or not fmt.strip():
        raise UserError(f"{path}: 'format' is missing.", "templates_invalid", path=str(path))
    _check_format(fmt, path)
    glossary = _load_glossary_cached(folder, str(raw.get("glossary", "glossary")), stamp)
    cameras = dict(glossary.cameras) | {normalize_choice(k): str(v) for k, v in raw.get("camera", {}).items()}
    speeds = dict(glossary.speeds) | {normalize_choice(k): str(v) for k, v in raw.get("speed", {}).items()}
    defaults = {slot: str(raw.get("defaults", {}).get(slot, "")).strip() for slot in SLOTS}
    return Templates(name, str(raw.get("description", "")), fmt, defaults, cameras, speeds, glossary, path)


def _check_format(fmt: str, path: Path) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise UserError(f"{path}: bad format string: {exc}", "templates_invalid", path=str(path)) from None
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in SLOTS or spec or conversion:
            raise UserError(f"{path}: unknown placeholder {{{name}}} in format; use "
                            f"{', '.join('{' + s + '}' for s in SLOTS)}.", "templates_invalid", path=str(path))


# ---------------------------------------------------------------- words

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_CJK_CLAUSE_BREAK = re.compile(r"[，。、；！？,.;!?\n]+")
_STRUCTURED = re.compile(r"\[\s*[A-Za-z][A-Za-z ]*:\s*[^\[\]]*\]")
_LABEL = re.compile(r"\[\s*([A-Za-z][A-Za-z ]*?)\s*:")
_SPEED_IN_TEXT = re.compile(
    r"\b(?:in\s+)?(?:slow[\s-]?motion|slow[\s-]?mo|fast[\s-]?motion|time[\s-]?lapse)\b", re.I)
_CAMERA_IN_TEXT = re.compile(
    r"\b(?:(?:extreme\s+)?close[\s-]?up|closeup|wide[\s-]angle|(?:wide|medium|long|full|establishing|static|"
    r"still|tracking|drone|aerial|arc|orbit|dolly)\s+shot|fixed\s+camera|dolly(?:\s+(?:in|out|forward|back))?|"
    r"zoom(?:s|ing)?(?:\s+(?:in|out))?|pan(?:s|ning)?\s+(?:left|right)|tilt(?:s|ing)?\s+(?:up|down)|"
    r"orbit(?:s|ing)?|aerial(?:\s+view)?|handheld|pov|(?:low|high)[\s-]angle|bird'?s[\s-]eye\s+view|camera)\b",
    re.I)
_LEADING_SHOT = re.compile(
    r"^(?:an?\s+)?((?:extreme\s+)?close[\s-]?up|closeup|wide\s+shot|medium\s+shot|long\s+shot|"
    r"aerial\s+(?:view|shot)|portrait)\s+of\s+", re.I)
_CAMERA_VERBS = frozenset({"zoom", "zooms", "zooming", "pan", "pans", "panning", "tilt", "tilts", "tilting",
                           "dolly", "orbit", "orbits", "orbiting", "track", "tracks", "tracking", "push",
                           "pushes", "pushing", "pull", "pulls", "pulling", "move", "moves", "moving"})
_SLOW_WORDS = re.compile(r"slow[\s-]?motion|slow[\s-]?mo\b|\bslowly\b|慢动作|慢镜头|慢慢|缓慢|缓缓", re.I)
_TEXTURE_WORDS = re.compile(
    r"\b(?:hair|fur|furry|feathers?|whiskers|water|ocean|sea|river|waterfall|rain|snow(?:flakes)?|"
    r"smoke|fire|flames?|sparks?|grass|leaves|foliage|petals|fabric|cloth|silk|lace|dress|detailed|"
    r"intricate|texture[sd]?|sparkl\w*|glitter\w*|reflections?|particles)\b|头发|长发|毛|水|浪|雨|雪|烟|火|"
    r"草|树叶|叶子|花瓣|布料|细节|精致", re.I)

_DETERMINERS = frozenset({"a", "an", "the", "its", "his", "her", "their", "my", "your", "our", "some",
                          "this", "these", "those", "with", "of"})
_AUXILIARIES = frozenset({"is", "are", "was", "were", "be", "being", "that", "who", "which"})
_ADVERBS = frozenset({"slowly", "quickly", "gently", "softly", "gracefully", "rapidly", "suddenly", "calmly",
                      "happily", "playfully", "lazily", "smoothly", "steadily", "continuously", "still",
                      "also", "just"})
_ENV_PREPOSITIONS = frozenset({"in", "on", "under", "beneath", "inside", "near", "beside", "during", "amid",
                               "among", "against"})
_NOT_VERBS_ING = frozenset({
    "thing", "something", "nothing", "anything", "everything", "king", "ring", "wing", "string", "spring",
    "building", "painting", "drawing", "morning", "evening", "ceiling", "clothing", "sibling", "pudding",
    "wedding", "lightning", "lighting", "setting", "icing", "awning", "bedding", "duckling", "seedling",
    "dumpling", "earring", "viking", "darling", "herring", "railing", "frosting", "stuffing", "ending",
    "during", "ping", "bling"})
_STOP_WORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "of", "in", "on", "at", "to", "for", "with", "by", "from", "into",
    "onto", "over", "under", "its", "his", "her", "their", "my", "your", "our", "it", "he", "she", "they",
    "this", "that", "these", "those", "is", "are", "was", "were", "be", "being", "been", "as", "while",
    "then", "very", "some", "who", "which", "subject", "action", "camera", "environment"})
_IRREGULAR = {"fly": ("flies", "flew"), "run": ("ran",), "lie": ("lying", "lies"), "die": ("dying",)}


def _verb_forms(base: str) -> set[str]:
    """base, -s and -ing forms (with e-drop and consonant doubling; over-generating is harmless)."""
    forms = {base, base + "s", base + "es", base + "ing"}
    if base.endswith("y") and base[-2:-1] not in "aeiou":
        forms.add(base[:-1] + "ies")
    if base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
        forms.add(base[:-1] + "ing")
    if re.search(r"[^aeiou][aeiou][^aeiouwxy]$", base) and len(base) <= 5:
        forms.add(base + base[-1] + "ing")
    forms.update(_IRREGULAR.get(base, ()))
    return forms


def _bare(word: str) -> str:
    return word.lower().strip(".,!?;:\"'()“”‘’")


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _is_mostly_chinese(text: str) -> bool:
    """CJK characters count half a word each (Chinese words average about two characters)."""
    cjk = len(re.findall(f"[{_CJK}]", text))
    latin = len(re.findall(r"[A-Za-z]+", text))
    return cjk > 0 and cjk / 2 >= latin


def _is_verb(word: str, glossary: Glossary) -> bool:
    return word in glossary.motion_forms or (len(word) >= 5 and word.endswith("ing")
                                             and word not in _NOT_VERBS_ING)


def _phrase_at(words: list[str], i: int, glossary: Glossary) -> bool:
    rest = " ".join(_bare(w) for w in words[i:])
    return any(rest == p or rest.startswith(p + " ") for p in glossary.motion_phrases)


def _action_index(words: list[str], glossary: Glossary) -> int | None:
    """Where the action starts: the first verb form used as a verb. After a determiner or 'with' it is a
    noun or an adjective ("the waves", "with flowing hair"); so is a plural followed by a verb ("waves
    crash") and a first word followed later by an -ing verb ("snow falling", "rain drops rippling")."""
    bare = [_bare(w) for w in words]
    for i, word in enumerate(bare):
        if _phrase_at(words, i, glossary):
            return i
        if not _is_verb(word, glossary):
            continue
        if i > 0 and bare[i - 1] in _DETERMINERS:
            continue
        following = bare[i + 1] if i + 1 < len(bare) else ""
        if word.endswith("s") and not word.endswith("ss") and following and _is_verb(following, glossary):
            continue
        if i == 0 and not word.endswith("ing") and any(
                w.endswith("ing") and _is_verb(w, glossary) for w in bare[1:]):
            continue
        return i
    return None


def _has_motion(text: str, glossary: Glossary) -> bool:
    words = [_bare(w) for w in text.split()]
    joined = " ".join(words)
    return (any(_is_verb(w, glossary) for w in words)
            or any(re.search(rf"\b{re.escape(p)}\b", joined) for p in glossary.motion_phrases)
            or bool(_CAMERA_IN_TEXT.search(text)) or bool(_SPEED_IN_TEXT.search(text)))


def _env_start(words: list[str], start: int, glossary: Glossary) -> int | None:
    """First environment preposition at or after `start` whose phrase holds no motion ("on the beach")."""
    for j in range(max(start, 1), len(words) - 1):
        if _bare(words[j]) in _ENV_PREPOSITIONS and _action_index(words[j + 1:], glossary) is None:
            return j
    return None


# ---------------------------------------------------------------- slots from free text

@dataclass
class _Slots:
    subject: list[str] = field(default_factory=list)
    action: list[str] = field(default_factory=list)
    speed: list[str] = field(default_factory=list)
    camera: list[str] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)     # Chinese words the glossary lacks


def _slots_from_english(text: str, glossary: Glossary) -> _Slots:
    slots = _Slots()
    for clause in (c.strip() for c in re.split(r"[,;]+", text.rstrip(". "))):
        if not clause:
            continue
        for m in _SPEED_IN_TEXT.finditer(clause):
            slots.speed.append(m.group(0))
        clause = _collapse(_SPEED_IN_TEXT.sub(" ", clause))
        shot = _LEADING_SHOT.match(clause)
        if shot:
            slots.camera.append(shot.group(1))
            clause = clause[shot.end():]
        if clause:
            _place_clause(clause, slots, glossary)
    return slots


def _place_clause(clause: str, slots: _Slots, glossary: Glossary) -> None:
    words = clause.split()
    if _CAMERA_IN_TEXT.search(clause) and not any(
            _is_verb(_bare(w), glossary) and _bare(w) not in _CAMERA_VERBS for w in words):
        slots.camera.append(clause)
        return
    i = _action_index(words, glossary)
    if i is None:
        k = 0 if _bare(words[0]) in _ENV_PREPOSITIONS else _env_start(words, 1, glossary)
        if slots.subject or slots.action or k == 0:
            slots.environment.append(clause)
        elif k is not None:
            slots.subject.append(" ".join(words[:k]))
            slots.environment.append(" ".join(words[k:]))
        else:
            slots.subject.append(clause)
        return
    start = i
    while start > 0 and _bare(words[start - 1]) in _AUXILIARIES | _ADVERBS:
        start -= 1
    subject = words[:start]
    action = [w for w in words[start:i] if _bare(w) not in _AUXILIARIES] + words[i:]
    k = _env_start(subject, 1, glossary)
    if k is not None:
        slots.environment.append(" ".join(subject[k:]))
        subject = subject[:k]
    j = _env_start(action, 1, glossary)
    if j is not None:
        slots.environment.append(" ".join(action[j:]))
        action = action[:j]
    if subject and slots.subject:
        slots.action.append(" ".join(subject + action))    # a later clause: "..., rain falling outside"
    else:
        if subject:
            slots.subject.append(" ".join(subject))
        slots.action.append(" ".join(action))


def _slots_from_chinese(text: str, glossary: Glossary) -> _Slots:
    slots = _Slots()
    for clause in _CJK_CLAUSE_BREAK.split(text):
        nouns: list[str] = []      # before the first action: who or what moves
        actions: list[str] = []    # each with the nouns that follow it (its object): "looking at flowers"
        pending: list[str] = []
        joined = False
        for cat, eng, original in _tokens(clause, glossary):
            if cat == "modifier":
                pending.append(eng)
            elif cat == "connector":
                joined = bool(nouns or actions)
            elif cat in ("subject", "unknown", "noun"):
                phrase = " ".join(pending + [eng])
                if actions:
                    actions[-1] += f" and {phrase}" if joined else f" {phrase}"
                elif joined:
                    nouns[-1] += f" and {phrase}"
                else:
                    nouns.append(phrase)
                pending, joined = [], False
                if cat == "unknown":
                    slots.unknown.append(original)
            elif cat == "action":
                actions.append(" ".join(pending + [eng]))
                pending, joined = [], False
            elif cat == "environment":
                slots.environment.append(" ".join(pending + [eng]))
                pending = []
            elif cat in ("camera", "speed"):
                getattr(slots, cat).append(eng)
        if pending:
            nouns.append(" ".join(pending))
        _place_chinese_clause(nouns, actions, slots)
    return slots


def _tokens(clause: str, glossary: Glossary) -> list[tuple[str, str, str]]:
    """Glossary tokens for CJK runs; a run of Latin words in between is a noun phrase, an action, or a
    noun phrase followed by its action ("a cat turning")."""
    tokens: list[tuple[str, str, str]] = []
    for part in re.findall(f"[{_CJK}]+|[^{_CJK}]+", clause):
        if _CJK_RUN.fullmatch(part):
            tokens.extend(t for t in glossary.segment(part) if t[0] != "skip")
            continue
        words = [w for w in part.split() if any(ch.isalnum() for ch in w)]
        if not words:
            continue
        i = _action_index(words, glossary)
        noun, action = (words, []) if i is None else (words[:i], words[i:])
        if noun:
            tokens.append(("noun", " ".join(noun), " ".join(noun)))
        if action:
            tokens.append(("action", " ".join(action), " ".join(action)))
    return tokens


def _place_chinese_clause(nouns: list[str], actions: list[str], slots: _Slots) -> None:
    if not slots.subject and nouns and (actions or not slots.action):
        slots.subject.extend(nouns)
        if actions:
            slots.action.append(", ".join(actions))
    elif nouns and actions:
        slots.action.append(" ".join([", ".join(nouns)] + [" and ".join(actions)]))   # "hair floating"
    else:
        slots.environment.extend(nouns)
        if actions:
            slots.action.append(", ".join(actions))


# ---------------------------------------------------------------- building

def build_prompt(spec: PromptSpec, templates: Templates) -> str:
    """The structured prompt the model sees. Free text is split into subject, action and environment;
    camera and speed choices add their phrases; Chinese goes through the glossary. Text already written
    in [Label: ...] form is kept as is and only completed with the missing camera and speed."""
    glossary = templates.glossary
    camera = templates.camera_phrase(check_choice("camera", spec.camera)) if spec.camera else ""
    speed = templates.speed_phrase(check_choice("speed", spec.speed)) if spec.speed else ""
    text = _collapse(spec.text or "")
    if _STRUCTURED.search(text):
        return _complete_structured(glossary.translate_inline(text), camera, speed, templates)
    slots = (_slots_from_chinese(text, glossary) if _is_mostly_chinese(text)
             else _slots_from_english(glossary.translate_inline(text), glossary))
    return templates.render(_final_slots(slots, spec, camera, speed, templates))


def _final_slots(slots: _Slots, spec: PromptSpec, camera: str, speed: str, templates: Templates) -> dict:
    glossary = templates.glossary
    values = {
        "subject": _merge([glossary.translate_inline(spec.subject or "")], slots.subject),
        "action": _merge([], slots.action),
        "speed": _merge([speed], slots.speed),
        "camera": _merge([camera], slots.camera),
        "environment": _merge([glossary.translate_inline(spec.environment or "")], slots.environment),
    }
    for slot, default in templates.defaults.items():
        if not values[slot] and default:
            if slot == "camera" and normalize_choice(default) in CAMERAS:
                default = templates.camera_phrase(normalize_choice(default))
            elif slot == "speed" and normalize_choice(default) in SPEEDS:
                default = templates.speed_phrase(normalize_choice(default))
            values[slot] = default
    return values


def _merge(chosen: list[str], found: list[str]) -> str:
    """Chosen phrases first, then the ones found in the text that they do not already say."""
    out: list[str] = [c for c in chosen if c]
    for phrase in found:
        phrase = phrase.strip(" ,")
        if phrase and not any(_says(o, phrase) for o in out):
            out.append(phrase)
    return ", ".join(out)


def _says(phrase: str, other: str) -> bool:
    """Whether `phrase` already says `other`, articles and a leading 'in' aside ("in slow motion")."""
    words = lambda s: " ".join(w for w in re.findall(r"[\w-]+", s.lower()) if w not in ("a", "an", "the"))  # noqa: E731
    wanted = re.sub(r"^in ", "", words(other))
    return f" {wanted} " in f" {words(phrase)} "


def _complete_structured(text: str, camera: str, speed: str, templates: Templates) -> str:
    present = {m.group(1).lower() for m in _LABEL.finditer(text)}
    for slot, phrase in (("camera", camera), ("speed", speed)):
        if not phrase or phrase.lower() in text.lower():
            continue
        label = templates.label_of(slot)
        if label and label.lower() in present:
            text = _append_in_group(text, label, phrase)
        else:
            text = f"{text} {templates.render({slot: phrase})}"
            present.add((label or "").lower())
    return _collapse(text)


def _append_in_group(text: str, label: str, phrase: str) -> str:
    group = re.compile(rf"(\[\s*{re.escape(label)}\s*:[^\[\]]*?)\s*\]", re.I)
    return group.sub(lambda m: f"{m.group(1).rstrip(' ,')}, {phrase}]", text, count=1)


# ---------------------------------------------------------------- caption flags

_FLAG_NAMES = {"camera": "camera", "cam": "camera", "speed": "speed", "seed": "seed", "negative": "negative",
               "neg": "negative", "preset": "preset", "subject": "subject", "environment": "environment",
               "env": "environment"}
_FREE_TEXT_FLAGS = ("negative", "subject", "environment")
_MAX_SEED = 2**32 - 1
# "--" and what phones and input methods turn it into: em dash, en dash, a Chinese double em dash.
_FLAG = re.compile(r"(?:^|(?<=\s))(--|——|—|–|−−)([A-Za-z][A-Za-z_-]*)(=|\s+|$)")
_QUOTES = {'"': '"', "'": "'", "“": "”", "„": "“", "‘": "’", "«": "»", "「": "」", "『": "』"}


def parse_flags(caption: str) -> tuple[str, dict]:
    """Split '--camera zoom-in --speed slow a cat' into ('a cat', {'camera': 'zoom-in', 'speed': 'slow'}).
    Also '—camera' / '–camera' (phones replace '--'), '--camera=zoom-in', '--camera zoom in', '--seed 42',
    '--negative "blurry, dark"' (unquoted: up to the next option), '--preset hq', '--subject', '--env'.
    Option keys: camera, speed (checked choices), seed (int), negative, subject, environment (text), preset
    (a lower-case name; the caller checks it against the configured presets, "auto" included).
    A '--' option with an unknown name is an error; with a dash that phones insert it is left as prose."""
    caption = caption or ""
    text_parts: list[str] = []
    options: dict = {}
    pos = 0
    while m := _FLAG.search(caption, pos):
        dash, raw_name = m.group(1), m.group(2)
        name = _FLAG_NAMES.get(raw_name.lower().replace("_", "-"))
        text_parts.append(caption[pos:m.start()])
        if name is None:
            if dash == "--":
                raise UserError(f"Unknown option --{raw_name}; use {', '.join('--' + n for n in _flag_list())}.",
                                "unknown_option", option=raw_name)
            text_parts.append(m.group(0))   # a dash in the prose, not an option
            pos = m.end()
            continue
        value, pos = _flag_value(caption, m.end(), name, explicit=m.group(3) == "=")
        options[name] = _check_flag(name, value)
    text_parts.append(caption[pos:])
    return _collapse("".join(text_parts)), options


def _flag_list() -> list[str]:
    return list(dict.fromkeys(_FLAG_NAMES.values()))


def _flag_value(caption: str, at: int, name: str, explicit: bool) -> tuple[str | None, int]:
    if at >= len(caption) or (not explicit and caption[at:at + 1].isspace()):
        return None, at
    if name in _FREE_TEXT_FLAGS:
        close = _QUOTES.get(caption[at])
        if close:
            end = caption.find(close, at + 1)
            if end < 0:
                raise UserError(f"The --{name} text has no closing quote.", "unclosed_quote", option=name)
            return caption[at + 1:end], end + 1
        nxt = _FLAG.search(caption, at)
        end = nxt.start() if nxt else len(caption)
        return caption[at:end].strip() or None, end
    token = re.match(r"\S+", caption[at:])
    if token is None or _FLAG.match(caption, at):
        return None, at
    end = at + token.end()
    value = token.group(0).rstrip(",;.")
    if name in ("camera", "speed"):
        valid = CAMERAS if name == "camera" else SPEEDS
        two = re.match(r"\s+([A-Za-z]+)", caption[end:])    # "--camera zoom in", "--speed slow motion"
        if two and normalize_choice(f"{value} {two.group(1)}") in valid:
            return f"{value} {two.group(1)}", end + two.end()
    return value, end


def _check_flag(name: str, value: str | None):
    if value is None:
        examples = {"camera": "zoom-in", "speed": "slow", "seed": "42", "negative": '"blurry"',
                    "preset": "hq", "subject": '"a cat"', "environment": '"at the beach"'}
        raise UserError(f"--{name} needs a value, e.g. --{name} {examples[name]}.", "missing_value", option=name)
    if name in ("camera", "speed"):
        return check_choice(name, value)
    if name == "seed":
        if not re.fullmatch(r"\d{1,10}", value) or int(value) > _MAX_SEED:
            raise UserError(f"--seed takes a whole number from 0 to {_MAX_SEED}, not '{value}'.",
                            "bad_seed", value=value)
        return int(value)
    if name == "preset":
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise UserError(f"--preset takes a preset name like quick, hq or auto, not '{value}'.",
                            "bad_preset", value=value)
        return value.lower()
    return value.strip()


# ---------------------------------------------------------------- hints

@dataclass(frozen=True)
class Hint:
    key: str           # stable, for translations
    message: str       # English
    params: dict


def prompt_hints(text: str, glossary: Glossary) -> list[Hint]:
    """Advice on a prompt, never a refusal: vague motion, too long, no action, mostly Chinese."""
    text = _collapse(text or "")
    chinese = _is_mostly_chinese(text)
    slots = _slots_from_chinese(text, glossary) if chinese else None
    english = glossary.translate_inline(text).lower()
    hints = []
    english_no_speed = _SPEED_IN_TEXT.sub(" ", english)
    vague = _vague_word(english_no_speed, glossary)
    if vague:
        suggestion = _suggestion(english, glossary)
        hints.append(Hint("vague_motion", f"'{vague}' does not say how things move; try something concrete, "
                          f"e.g. {suggestion}.", {"word": vague, "suggestion": suggestion}))
    count = _content_word_count(text, glossary)
    if count > MAX_CONTENT_WORDS:
        hints.append(Hint("too_long", f"Your prompt has {count} key words; about {MAX_CONTENT_WORDS} or fewer "
                          "keep the model focused on one subject and one motion.",
                          {"words": count, "limit": MAX_CONTENT_WORDS}))
    if not _has_motion(english, glossary):
        examples = "turning its head, walking forward, hair blowing in the wind, waves rolling"
        hints.append(Hint("no_action", "Say what should move and how, e.g. "
                          f"{examples}; without an action the video may barely move.", {"examples": examples}))
    if chinese:
        translation = _plain_translation(slots)
        unknown = ", ".join(dict.fromkeys(slots.unknown))
        message = f"The model understands English best. Your prompt was read as: \"{translation}\"."
        if unknown:
            message += f" Not translated: {unknown}."
        hints.append(Hint("mostly_chinese", message, {"translation": translation, "unknown": unknown}))
    return hints


def _vague_word(english: str, glossary: Glossary) -> str | None:
    """The first vague word or phrase, unless a concrete motion is said beside it ("moving her arms while
    dancing")."""
    found = None
    rest = english
    for phrase in sorted(glossary.vague, key=len, reverse=True):
        pattern = rf"\b{re.escape(phrase)}\b"
        if re.search(pattern, rest):
            found = found or phrase
            rest = re.sub(pattern, " ", rest)
    if found is None:
        return None
    concrete = [w for w in re.findall(r"[a-z]+", rest) if _is_verb(w, glossary) and w not in _CAMERA_VERBS]
    return None if concrete else found


def _suggestion(english: str, glossary: Glossary) -> str:
    for word in re.findall(r"[a-z]+", english):
        for key in (word, word.rstrip("s"), word + "s"):
            if key in glossary.suggestions and key != "default":
                return glossary.suggestions[key]
    return glossary.suggestions.get("default", "turning its head, walking forward")


def _content_word_count(text: str, glossary: Glossary) -> int:
    count = 0
    for part in re.findall(f"[{_CJK}]+|[A-Za-z0-9'-]+", text):
        if _CJK_RUN.fullmatch(part):
            count += sum(1 for cat, _, _ in glossary.segment(part) if cat not in ("skip", "connector"))
        elif part.lower() not in _STOP_WORDS:
            count += 1
    return count


def _plain_translation(slots: _Slots) -> str:
    parts = slots.subject + slots.action + slots.speed + slots.camera + slots.environment
    return ", ".join(p for p in parts if p)


# ---------------------------------------------------------------- step advice

@dataclass
class Advice:
    suggest_hq: bool
    reasons: list[str]
    keys: list[str] = field(default_factory=list)     # stable ids of the reasons, for translations


def step_advice(prompt: str, image_detail: float | None) -> Advice:
    """Whether more denoising steps are worth it. Pass the built prompt (it carries the speed phrase) and
    DetailScore.score of the input image, or None when unknown. Slow motion, fine-texture words and a
    detailed image each count one point, a very detailed image two; two points suggest HQ."""
    reasons: list[str] = []
    keys: list[str] = []
    points = 0
    if _SLOW_WORDS.search(prompt or ""):
        points += 1
        keys.append("slow_motion")
        reasons.append("slow motion shows every step's smoothness")
    textures = list(dict.fromkeys(m.group(0).lower() for m in _TEXTURE_WORDS.finditer(prompt or "")))
    if textures:
        points += 1
        keys.append("texture_words")
        reasons.append(f"fine textures in the prompt ({', '.join(textures[:4])})")
    if image_detail is not None and image_detail >= DETAILED_AT:
        very = image_detail >= VERY_DETAILED_AT
        points += 2 if very else 1
        keys.append("very_detailed_image" if very else "detailed_image")
        reasons.append(f"{'very ' if very else ''}detailed image (detail score {image_detail:.2f})")
    return Advice(points >= 2, reasons, keys)


def resolve_auto_preset(advice: Advice) -> str:
    """The preset an `auto` request runs with."""
    return "hq" if advice.suggest_hq else "quick"
