"""Free text (English or Chinese) -> the template slots (subject, action, speed, camera, environment), and
the structured prompt built from them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.prompts.choices import CAMERAS, SPEEDS, PromptSpec, check_choice, normalize_choice
from engine.prompts.templates import Templates
from engine.prompts.words import (
    CAMERA_IN_TEXT,
    CAMERA_VERBS,
    CJK,
    CJK_CLAUSE_BREAK,
    CJK_RUN,
    DETERMINERS,
    SPEED_IN_TEXT,
    Glossary,
    bare_word,
    collapse,
    is_mostly_chinese,
    is_verb,
    phrase_at,
)

_STRUCTURED = re.compile(r"\[\s*[A-Za-z][A-Za-z ]*:\s*[^\[\]]*\]")


_LABEL = re.compile(r"\[\s*([A-Za-z][A-Za-z ]*?)\s*:")


_LEADING_SHOT = re.compile(
    r"^(?:an?\s+)?((?:extreme\s+)?close[\s-]?up|closeup|wide\s+shot|medium\s+shot|long\s+shot|"
    r"aerial\s+(?:view|shot)|portrait)\s+of\s+", re.I)


_AUXILIARIES = frozenset({"is", "are", "was", "were", "be", "being", "that", "who", "which"})


_ADVERBS = frozenset({"slowly", "quickly", "gently", "softly", "gracefully", "rapidly", "suddenly", "calmly",
                      "happily", "playfully", "lazily", "smoothly", "steadily", "continuously", "still",
                      "also", "just"})


_ENV_PREPOSITIONS = frozenset({"in", "on", "under", "beneath", "inside", "near", "beside", "during", "amid",
                               "among", "against"})


def _action_index(words: list[str], glossary: Glossary) -> int | None:
    """Where the action starts: the first verb form used as a verb. After a determiner or 'with' it is a
    noun or an adjective ("the waves", "with flowing hair"); so is a plural followed by a verb ("waves
    crash") and a first word followed later by an -ing verb ("snow falling", "rain drops rippling")."""
    bare = [bare_word(w) for w in words]
    for i, word in enumerate(bare):
        if phrase_at(words, i, glossary):
            return i
        if not is_verb(word, glossary):
            continue
        if i > 0 and bare[i - 1] in DETERMINERS:
            continue
        following = bare[i + 1] if i + 1 < len(bare) else ""
        if word.endswith("s") and not word.endswith("ss") and following and is_verb(following, glossary):
            continue
        if i == 0 and not word.endswith("ing") and any(
                w.endswith("ing") and is_verb(w, glossary) for w in bare[1:]):
            continue
        return i
    return None


def _env_start(words: list[str], start: int, glossary: Glossary) -> int | None:
    """First environment preposition at or after `start` whose phrase holds no motion ("on the beach")."""
    for j in range(max(start, 1), len(words) - 1):
        if bare_word(words[j]) in _ENV_PREPOSITIONS and _action_index(words[j + 1:], glossary) is None:
            return j
    return None



@dataclass
class Slots:
    subject: list[str] = field(default_factory=list)
    action: list[str] = field(default_factory=list)
    speed: list[str] = field(default_factory=list)
    camera: list[str] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)     # Chinese words the glossary lacks


def _slots_from_english(text: str, glossary: Glossary) -> Slots:
    slots = Slots()
    for clause in (c.strip() for c in re.split(r"[,;]+", text.rstrip(". "))):
        if not clause:
            continue
        for m in SPEED_IN_TEXT.finditer(clause):
            slots.speed.append(m.group(0))
        clause = collapse(SPEED_IN_TEXT.sub(" ", clause))
        shot = _LEADING_SHOT.match(clause)
        if shot:
            slots.camera.append(shot.group(1))
            clause = clause[shot.end():]
        if clause:
            _place_clause(clause, slots, glossary)
    return slots


def _place_clause(clause: str, slots: Slots, glossary: Glossary) -> None:
    words = clause.split()
    if CAMERA_IN_TEXT.search(clause) and not any(
            is_verb(bare_word(w), glossary) and bare_word(w) not in CAMERA_VERBS for w in words):
        slots.camera.append(clause)
        return
    i = _action_index(words, glossary)
    if i is None:
        k = 0 if bare_word(words[0]) in _ENV_PREPOSITIONS else _env_start(words, 1, glossary)
        if slots.subject or slots.action or k == 0:
            slots.environment.append(clause)
        elif k is not None:
            slots.subject.append(" ".join(words[:k]))
            slots.environment.append(" ".join(words[k:]))
        else:
            slots.subject.append(clause)
        return
    start = i
    while start > 0 and bare_word(words[start - 1]) in _AUXILIARIES | _ADVERBS:
        start -= 1
    subject = words[:start]
    action = [w for w in words[start:i] if bare_word(w) not in _AUXILIARIES] + words[i:]
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


def slots_from_chinese(text: str, glossary: Glossary) -> Slots:
    slots = Slots()
    for clause in CJK_CLAUSE_BREAK.split(text):
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
    for part in re.findall(f"[{CJK}]+|[^{CJK}]+", clause):
        if CJK_RUN.fullmatch(part):
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


def _place_chinese_clause(nouns: list[str], actions: list[str], slots: Slots) -> None:
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


def build_prompt(spec: PromptSpec, templates: Templates) -> str:
    """The structured prompt the model sees. Free text is split into subject, action and environment;
    camera and speed choices add their phrases; Chinese goes through the glossary. Text already written
    in [Label: ...] form is kept as is and only completed with the missing camera and speed."""
    glossary = templates.glossary
    camera = templates.camera_phrase(check_choice("camera", spec.camera)) if spec.camera else ""
    speed = templates.speed_phrase(check_choice("speed", spec.speed)) if spec.speed else ""
    text = collapse(spec.text or "")
    if _STRUCTURED.search(text):
        return _complete_structured(glossary.translate_inline(text), camera, speed, templates)
    slots = (slots_from_chinese(text, glossary) if is_mostly_chinese(text)
             else _slots_from_english(glossary.translate_inline(text), glossary))
    return templates.render(_final_slots(slots, spec, camera, speed, templates))


def _final_slots(slots: Slots, spec: PromptSpec, camera: str, speed: str, templates: Templates) -> dict:
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
    return collapse(text)


def _append_in_group(text: str, label: str, phrase: str) -> str:
    group = re.compile(rf"(\[\s*{re.escape(label)}\s*:[^\[\]]*?)\s*\]", re.I)
    return group.sub(lambda m: f"{m.group(1).rstrip(' ,')}, {phrase}]", text, count=1)
