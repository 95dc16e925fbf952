"""Stage 5b, caption refinement: make the caption agree with the speaking decision.

The default :class:`RuleBasedRewriter` works offline: in a silent clip it removes sentences that claim the person
speaks (and rewrites "talking to the camera" style clauses to "looking at the camera"); in a speaking clip with
no speaking claim it appends one sentence. :class:`LocalLLMRewriter` asks a local causal language model
(``transformers``, from a local directory only) and checks its answer, falling back to the rules when the answer
fails a check. Other rewriters plug in through :func:`build_rewriter` with ``"module:attr"``; nothing here calls
a network service.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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


def rewrite_with_source(rewriter: CaptionRewriter, caption: str, speaking: bool) -> tuple[str, str]:
    """``(refined caption, what wrote it)``: a rewriter's ``rewrite_with_source`` when it has one (it may fall
    back, and says so), else ``rewrite`` and the rewriter's class name."""
    if hasattr(rewriter, "rewrite_with_source"):
        return rewriter.rewrite_with_source(caption, speaking)
    return rewriter.rewrite(caption, speaking), type(rewriter).__name__


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

    def rewrite_with_source(self, caption: str, speaking: bool) -> tuple[str, str]:
        return self.rewrite(caption, speaking), "rules"


# Words that name who the caption is about; the first one in the caption must survive a rewrite.
_SUBJECTS = re.compile(
    r"\b(?:man|men|woman|women|person|people|boy|girl|guy|lady|gentleman|child|kid|teenager|he|she|they|"
    r"speaker|presenter|host|reporter|actor|actress|singer|player|individual|someone)\b",
    re.IGNORECASE,
)
_STOP = frozenset("a an the this that these those there here with in on at of and while as is are was were".split())


def subject_word(caption: str) -> str | None:
    """The word a caption is about: its first subject word (man, woman, person, she, ...), else its first word of
    more than three letters that is not a stop word; ``None`` for an empty caption."""
    m = _SUBJECTS.search(caption)
    if m:
        return m.group(0).lower()
    words = [w.lower() for w in re.findall(r"[A-Za-z']+", caption)]
    return next((w for w in words if len(w) > 3 and w not in _STOP), None)


def check_rewrite(caption: str, rewritten: str, speaking: bool) -> str | None:
    """Why a rewritten caption cannot be used, or ``None``: it must be one non-empty line of reasonable length,
    keep the caption's subject (:func:`subject_word`) and agree with the speaking decision (claim speech exactly
    when the person speaks)."""
    if not rewritten or "\n" in rewritten:
        return "empty or more than one line"
    if len(rewritten) > 2 * len(caption) + 60:
        return f"too long ({len(rewritten)} characters for a {len(caption)}-character caption)"
    subject = subject_word(caption)
    if subject and not re.search(rf"\b{re.escape(subject)}\b", rewritten, re.IGNORECASE):
        return f"lost the subject {subject!r}"
    claims = bool(_SPEECH_RE.search(rewritten))
    if claims != speaking:
        return "claims speech in a silent clip" if claims else "does not say that the person speaks"
    return None


class LocalLLMRewriter:
    """A local causal language model rewrites the caption; answers that fail :func:`check_rewrite` give way to
    the rule-based rewriter, and :meth:`rewrite_with_source` says which one wrote each caption.

    Loads with ``transformers`` from a local directory only (``local_files_only=True``): a name that is not an
    existing directory is an error, never a download. Decoding is greedy (reproducible).

    Args:
        model_path: Directory with a causal LM and its tokenizer (``save_pretrained`` layout).
        max_new_tokens: Longest answer.
        speaking_sentence: For the rule-based fallback.
        model: An already loaded model (with ``generate``); skips loading (tests, custom loading).
        tokenizer: Its tokenizer (with ``model``).

    Raises:
        FileNotFoundError: ``model_path`` is not a directory.
        ImportError: ``transformers`` is not installed.
    """

    PROMPT = (
        "Rewrite the video caption so that it is true. The person in the video {fact}. Keep everything else, "
        "including who the caption is about. Answer with the caption only, on one line.\n"
        "Caption: {caption}\nRewritten caption:"
    )

    def __init__(
        self,
        model_path: str | Path | None = None,
        max_new_tokens: int = 64,
        speaking_sentence: str = "The person is speaking.",
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        self.fallback = RuleBasedRewriter(speaking_sentence)
        self.max_new_tokens = max_new_tokens
        self.last_reason: str | None = None
        if model is not None:
            self.model, self.tokenizer = model, tokenizer
            return
        path = Path(str(model_path)).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"local LLM caption rewriter: model directory not found: {path}")
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ImportError("the local LLM caption rewriter needs 'transformers' (pip install transformers)") from exc
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True).eval()

    def _generate(self, prompt: str) -> str:
        import torch

        inputs = self.tokenizer(prompt, return_tensors="pt")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        text = self.tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return text.strip().split("\n")[0].strip()

    def rewrite_with_source(self, caption: str, speaking: bool) -> tuple[str, str]:
        """``(caption, "llm")`` when the model's answer passes :func:`check_rewrite`, else the rule-based
        rewrite and ``"rules (llm answer <reason>)"``."""
        caption = " ".join(caption.split())
        if not caption:
            return self.fallback.rewrite(caption, speaking), "rules (empty caption)"
        fact = "speaks" if speaking else "does not speak"
        answer = self._generate(self.PROMPT.format(fact=fact, caption=caption))
        self.last_reason = check_rewrite(caption, answer, speaking)
        if self.last_reason is None:
            return answer, "llm"
        return self.fallback.rewrite(caption, speaking), f"rules (llm answer {self.last_reason})"

    def rewrite(self, caption: str, speaking: bool) -> str:
        return self.rewrite_with_source(caption, speaking)[0]


def build_rewriter(spec: str = "rules", speaking_sentence: str = "The person is speaking.") -> CaptionRewriter:
    """Create a caption rewriter.

    Args:
        spec: ``"rules"`` for :class:`RuleBasedRewriter`; ``"local-llm:DIR"`` for :class:`LocalLLMRewriter` on the
            model in directory ``DIR``; or ``"package.module:factory"``: a class or function that returns an
            object with ``rewrite(caption, speaking) -> str``.
        speaking_sentence: Passed to the rule-based rewriter.

    Raises:
        ValueError: ``spec`` is malformed, cannot be imported, or does not give a rewriter.
    """
    if spec == "rules":
        return RuleBasedRewriter(speaking_sentence)
    if spec.startswith("local-llm:"):
        return LocalLLMRewriter(spec[len("local-llm:") :], speaking_sentence=speaking_sentence)
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


def rewrite_many(rewriter: CaptionRewriter, items: list[tuple[str, bool, dict | None]]) -> list[tuple[str, str]]:
    """``(refined caption, what wrote it)`` for each ``(caption, speaking, facts)``: one batch when the rewriter has
    ``rewrite_batch`` (the local LLM), else one :func:`rewrite_with_source` call each. ``facts`` are what the
    speech stage measured (:func:`cofe_curation.speech.speech_facts`), for rewriters that can use them."""
    if hasattr(rewriter, "rewrite_batch"):
        return rewriter.rewrite_batch(items)
    return [rewrite_with_source(rewriter, caption, speaking) for caption, speaking, _ in items]
