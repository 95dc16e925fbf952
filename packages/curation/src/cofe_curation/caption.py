"""Stage 5b, caption refinement: make the caption agree with the speaking decision.

The default :class:`RuleBasedRewriter` works offline: in a silent clip it removes sentences that claim the person
speaks (and rewrites "talking to the camera" style clauses to "looking at the camera"); in a speaking clip with
no speaking claim it appends one sentence. Another rewriter (a local LLM, for example) plugs in through
:func:`build_rewriter` with ``"module:attr"``; nothing here calls a network service.
"""

from __future__ import annotations

import importlib
import re
from typing import Protocol, runtime_checkable

# Verbs and nouns that claim speech. Word boundaries keep "sayings" or "talkative" from matching partially.
_SPEECH = (
    r"speak(?:s|ing)?|talk(?:s|ing)?|say(?:s|ing)?|said|tell(?:s|ing)?|chat(?:s|ting)?|convers(?:es|ing|ation)"
    r"|narrat(?:es|ing)|explain(?:s|ing)?|lip[- ]?sync(?:s|ing)?|sing(?:s|ing)?|whisper(?:s|ing)?|shout(?:s|ing)?"
    r"|speech|monologue|dialogue|addresses the camera|mouth(?:ing|s)? words"
)
_SPEECH_RE = re.compile(rf"\b(?:{_SPEECH})\b", re.IGNORECASE)
# "... while talking to the camera" -> "... while looking at the camera": keeps the gaze, drops the claim.
_TO_CAMERA_RE = re.compile(rf"\b(?:{_SPEECH})\s+(?:to|into|at)\s+the\s+camera\b", re.IGNORECASE)
# "is talking (to her friend) while turning" -> "is turning": drops a speech verb phrase joined to another action.
_JOINED_RE = re.compile(rf"\b(?:{_SPEECH})\b(?:\s+[\w']+){{0,3}}?\s+(?:and|while|as)\s+", re.IGNORECASE)
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")


@runtime_checkable
class CaptionRewriter(Protocol):
    """Rewrites a caption so that it agrees with whether the visible person speaks."""

    def rewrite(self, caption: str, speaking: bool) -> str:
        """Return the refined caption."""
        ...


class RuleBasedRewriter:
    """Offline rule-based rewriter (the default).

    Args:
        speaking_sentence: Sentence appended to a speaking clip's caption when it has no speaking claim.
    """

    def __init__(self, speaking_sentence: str = "The person is speaking.") -> None:
        self.speaking_sentence = speaking_sentence

    def rewrite(self, caption: str, speaking: bool) -> str:
        caption = " ".join(caption.split())
        if speaking:
            if _SPEECH_RE.search(caption):
                return caption
            if caption and caption[-1] not in ".!?":
                caption += "."
            return f"{caption} {self.speaking_sentence}".strip()
        caption = _TO_CAMERA_RE.sub("looking at the camera", caption)
        caption = _JOINED_RE.sub("", caption)
        kept = []
        for sentence in _SENTENCE_RE.split(caption):
            if not _SPEECH_RE.search(sentence):
                kept.append(sentence)
                continue
            # Drop only the clause that claims speech when the sentence has other clauses.
            clauses = re.split(r",\s*|\s+(?:and|while|as)\s+", sentence)
            rest = [c for c in clauses if c and not _SPEECH_RE.search(c)]
            if rest and rest[0] is clauses[0] and len(rest[0].split()) >= 3:
                text = ", ".join(c.rstrip(".!?") for c in rest)
                kept.append(text + ".")
        return " ".join(kept).strip()


def build_rewriter(spec: str = "rules", speaking_sentence: str = "The person is speaking.") -> CaptionRewriter:
    """Create a caption rewriter.

    Args:
        spec: ``"rules"`` for :class:`RuleBasedRewriter`, or ``"package.module:factory"``: a class or function
            that returns an object with ``rewrite(caption, speaking) -> str`` (for example a local LLM).
        speaking_sentence: Passed to the rule-based rewriter.

    Raises:
        ValueError: ``spec`` is malformed, cannot be imported, or does not give a rewriter.
    """
    if spec == "rules":
        return RuleBasedRewriter(speaking_sentence)
    if ":" not in spec:
        raise ValueError(f"caption rewriter {spec!r}: expected 'rules' or 'package.module:factory'")
    module_name, attr = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"caption rewriter {spec!r} cannot be imported: {exc}") from exc
    rewriter = factory()
    if not isinstance(rewriter, CaptionRewriter):
        raise ValueError(f"caption rewriter {spec!r} returned {type(rewriter).__name__}, which has no rewrite()")
    return rewriter
