"""Word-level facts the slot parser, the hints and the step advice share: scripts, verb forms, cue words."""

from __future__ import annotations

import re
from dataclasses import dataclass

CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
CJK_RUN = re.compile(f"[{CJK}]+")
CJK_CLAUSE_BREAK = re.compile(r"[，。、；！？,.;!?\n]+")
SPEED_IN_TEXT = re.compile(
    r"\b(?:in\s+)?(?:slow[\s-]?motion|slow[\s-]?mo|fast[\s-]?motion|time[\s-]?lapse)\b", re.I)
CAMERA_IN_TEXT = re.compile(
    r"\b(?:(?:extreme\s+)?close[\s-]?up|closeup|wide[\s-]angle|(?:wide|medium|long|full|establishing|static|"
    r"still|tracking|drone|aerial|arc|orbit|dolly)\s+shot|fixed\s+camera|dolly(?:\s+(?:in|out|forward|back))?|"
    r"zoom(?:s|ing)?(?:\s+(?:in|out))?|pan(?:s|ning)?\s+(?:left|right)|tilt(?:s|ing)?\s+(?:up|down)|"
    r"orbit(?:s|ing)?|aerial(?:\s+view)?|handheld|pov|(?:low|high)[\s-]angle|bird'?s[\s-]eye\s+view|camera)\b",
    re.I)
CAMERA_VERBS = frozenset({"zoom", "zooms", "zooming", "pan", "pans", "panning", "tilt", "tilts", "tilting",
                           "dolly", "orbit", "orbits", "orbiting", "track", "tracks", "tracking", "push",
                           "pushes", "pushing", "pull", "pulls", "pulling", "move", "moves", "moving"})
SLOW_WORDS = re.compile(r"slow[\s-]?motion|slow[\s-]?mo\b|\bslowly\b|慢动作|慢镜头|慢慢|缓慢|缓缓", re.I)
TEXTURE_WORDS = re.compile(
    r"\b(?:hair|fur|furry|feathers?|whiskers|water|ocean|sea|river|waterfall|rain|snow(?:flakes)?|"
    r"smoke|fire|flames?|sparks?|grass|leaves|foliage|petals|fabric|cloth|silk|lace|dress|detailed|"
    r"intricate|texture[sd]?|sparkl\w*|glitter\w*|reflections?|particles)\b|头发|长发|毛|水|浪|雨|雪|烟|火|"
    r"草|树叶|叶子|花瓣|布料|细节|精致", re.I)

DETERMINERS = frozenset({"a", "an", "the", "its", "his", "her", "their", "my", "your", "our", "some",
                          "this", "these", "those", "with", "of"})
_NOT_VERBS_ING = frozenset({
    "thing", "something", "nothing", "anything", "everything", "king", "ring", "wing", "string", "spring",
    "building", "painting", "drawing", "morning", "evening", "ceiling", "clothing", "sibling", "pudding",
    "wedding", "lightning", "lighting", "setting", "icing", "awning", "bedding", "duckling", "seedling",
    "dumpling", "earring", "viking", "darling", "herring", "railing", "frosting", "stuffing", "ending",
    "during", "ping", "bling"})
STOP_WORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "of", "in", "on", "at", "to", "for", "with", "by", "from", "into",
    "onto", "over", "under", "its", "his", "her", "their", "my", "your", "our", "it", "he", "she", "they",
    "this", "that", "these", "those", "is", "are", "was", "were", "be", "being", "been", "as", "while",
    "then", "very", "some", "who", "which", "subject", "action", "camera", "environment"})
_IRREGULAR = {"fly": ("flies", "flew"), "run": ("ran",), "lie": ("lying", "lies"), "die": ("dying",)}


def verb_forms(base: str) -> set[str]:
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


def bare_word(word: str) -> str:
    return word.lower().strip(".,!?;:\"'()“”‘’")


def collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def is_mostly_chinese(text: str) -> bool:
    """CJK characters count half a word each (Chinese words average about two characters)."""
    cjk = len(re.findall(f"[{CJK}]", text))
    latin = len(re.findall(r"[A-Za-z]+", text))
    return cjk > 0 and cjk / 2 >= latin


def is_verb(word: str, glossary: Glossary) -> bool:
    return word in glossary.motion_forms or (len(word) >= 5 and word.endswith("ing")
                                             and word not in _NOT_VERBS_ING)


def phrase_at(words: list[str], i: int, glossary: Glossary) -> bool:
    rest = " ".join(bare_word(w) for w in words[i:])
    return any(rest == p or rest.startswith(p + " ") for p in glossary.motion_phrases)


def has_motion(text: str, glossary: Glossary) -> bool:
    words = [bare_word(w) for w in text.split()]
    joined = " ".join(words)
    return (any(is_verb(w, glossary) for w in words)
            or any(re.search(rf"\b{re.escape(p)}\b", joined) for p in glossary.motion_phrases)
            or bool(CAMERA_IN_TEXT.search(text)) or bool(SPEED_IN_TEXT.search(text)))


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
        return collapse(CJK_RUN.sub(one, text))
