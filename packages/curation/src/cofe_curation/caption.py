"""Stage 5b, caption refinement: make the caption agree with the speaking decision.

The default :class:`RuleBasedRewriter` works offline on the clause grammar of :mod:`cofe_curation.caption_grammar`:
in a clip that is not speaking it removes or rewrites every speech clause whole ("talks to the camera about her
trip" -> "looks at the camera"; "smiles while speaking to someone off-camera" -> "smiles"), keeping tense and
number; in a speaking clip it removes claims of silence ("a silent woman") and appends one plain sentence when the
caption says nothing of speech. :class:`LocalLLMRewriter` asks a local causal language model (``transformers``,
from a local directory only), in batches and on the GPU when there is one, tells it what the speech stage measured,
and checks every answer (:func:`check_rewrite`), falling back to the rules when one fails. Other rewriters plug in
through :func:`build_rewriter` with ``"module:attr"``; nothing here calls a network service.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cofe_curation.caption_grammar import (
    claims_silence,
    claims_speech,
    grammar_problems,
    remove_silence,
    remove_speech,
    speech_words,
)


@runtime_checkable
class CaptionRewriter(Protocol):
    """Rewrites a caption so that it agrees with whether the visible person speaks."""

    def rewrite(self, caption: str, speaking: bool) -> str:
        """Return the refined caption."""
        ...


def rewrite_with_source(
    rewriter: CaptionRewriter, caption: str, speaking: bool, facts: dict | None = None
) -> tuple[str, str]:
    """``(refined caption, what wrote it)``: a rewriter's ``rewrite_with_source`` when it has one (it may fall
    back, and says so), else ``rewrite`` and the rewriter's class name."""
    method = getattr(rewriter, "rewrite_with_source", None)
    if method is not None:
        if len(inspect.signature(method).parameters) >= 3:
            return method(caption, speaking, facts)
        return method(caption, speaking)  # a rewriter written before facts were passed
    return rewriter.rewrite(caption, speaking), type(rewriter).__name__


def rewrite_many(rewriter: CaptionRewriter, items: list[tuple[str, bool, dict | None]]) -> list[tuple[str, str]]:
    """``(refined caption, what wrote it)`` for each ``(caption, speaking, facts)``: one batch when the rewriter has
    ``rewrite_batch`` (the local LLM), else one :func:`rewrite_with_source` call each. ``facts`` are what the
    speech stage measured (:func:`cofe_curation.speech.speech_facts`), for rewriters that can use them."""
    if not items:
        return []
    if hasattr(rewriter, "rewrite_batch"):
        return rewriter.rewrite_batch(items)
    return [rewrite_with_source(rewriter, caption, speaking, facts) for caption, speaking, facts in items]


def _sentence_case(text: str) -> str:
    text = " ".join(text.split())
    if text and text[-1] not in ".!?":
        text += "."
    return text[:1].upper() + text[1:]


class RuleBasedRewriter:
    """Offline rule-based rewriter (the default), on the clause grammar of :mod:`cofe_curation.caption_grammar`.

    Args:
        speaking_sentence: Sentence appended to a speaking clip's caption when it has no speaking claim.
    """

    def __init__(self, speaking_sentence: str = "The person is speaking.") -> None:
        self.speaking_sentence = speaking_sentence

    def rewrite(self, caption: str, speaking: bool) -> str:
        caption = " ".join(caption.split())
        if not speaking:
            return remove_speech(caption)
        if claims_silence(caption):
            caption = remove_silence(caption)
        if claims_speech(caption):
            return caption
        return f"{_sentence_case(caption)} {self.speaking_sentence}".strip()

    def rewrite_with_source(self, caption: str, speaking: bool, facts: dict | None = None) -> tuple[str, str]:
        return self.rewrite(caption, speaking), "rules"


# Words that name who the caption is about; the first one in the caption must survive a rewrite.
_SUBJECTS = re.compile(
    r"\b(?:man|men|woman|women|person|people|boy|girl|guy|lady|gentleman|child|kid|teenager|he|she|they|"
    r"speaker|presenter|host|reporter|actor|actress|singer|player|individual|someone)\b",
    re.IGNORECASE,
)
_STOP = frozenset("a an the this that these those there here with in on at of and while as is are was were".split())
# A pronoun subject may come back as the noun the rules give it ("She is talking." -> "A woman.").
_PRONOUN_NOUNS = {"she": ("she", "her", "woman", "girl", "lady"), "he": ("he", "his", "him", "man", "boy", "guy")}


def subject_word(caption: str) -> str | None:
    """The word a caption is about: its first subject word (man, woman, person, she, ...), else its first word of
    more than three letters that is not a stop word; ``None`` for an empty caption."""
    m = _SUBJECTS.search(caption)
    if m:
        return m.group(0).lower()
    words = [w.lower() for w in re.findall(r"[A-Za-z']+", caption)]
    return next((w for w in words if len(w) > 3 and w not in _STOP), None)


def check_rewrite(caption: str, rewritten: str, speaking: bool) -> str | None:
    """Why a rewritten caption cannot be used, or ``None``.

    It must be one non-empty line of reasonable length, keep the caption's subject (:func:`subject_word`), parse
    (:func:`cofe_curation.caption_grammar.grammar_problems`), and agree with the speaking decision: a speaking
    clip's caption claims speech and no silence; a silent clip's has no speech word at all
    (:func:`cofe_curation.caption_grammar.speech_words`).
    """
    if not rewritten or "\n" in rewritten:
        return "empty or more than one line"
    if len(rewritten) > 2 * len(caption) + 60:
        return f"too long ({len(rewritten)} characters for a {len(caption)}-character caption)"
    subject = subject_word(caption)
    if subject:
        allowed = _PRONOUN_NOUNS.get(subject, (subject,))
        if not any(re.search(rf"\b{re.escape(w)}\b", rewritten, re.IGNORECASE) for w in allowed):
            return f"lost the subject {subject!r}"
    if speaking and not claims_speech(rewritten):
        return "does not say that the person speaks"
    if speaking and claims_silence(rewritten):
        return "says that a speaking person is silent"
    if not speaking and claims_speech(rewritten):
        return "claims speech in a silent clip"
    if not speaking and speech_words(rewritten):
        return f"speech words in a silent clip: {', '.join(speech_words(rewritten))}"
    problems = grammar_problems(rewritten)
    if problems:
        return f"does not parse ({problems[0]})"
    return None


def describe_facts(speaking: bool, facts: dict | None) -> str:
    """What the speech stage measured, in words, for the prompt of a language model."""
    if not facts:
        return "The person in the video speaks." if speaking else "The person in the video does not speak."
    ratio = facts.get("speech_ratio")
    parts = []
    heard = f"Speech is heard in {ratio:.0%} of the clip" if isinstance(ratio, float) and ratio > 0 else "No speech"
    parts.append(heard + ("." if heard != "No speech" else " is heard."))
    motion, base = facts.get("mouth_motion"), facts.get("mouth_baseline")
    if isinstance(motion, float) and isinstance(base, float):
        moves = (
            "moves"
            if speaking or facts.get("rule") in ("mouth_moves_without_voice", "mouth_out_of_sync")
            else ("stays still")
        )
        parts.append(f"The visible person's mouth {moves} ({motion:.2f} against a still baseline of {base:.2f}).")
    if facts.get("voice_over"):
        parts.append("The voice is a voice-over or an off-screen speaker: the visible person does not speak.")
    elif facts.get("rule") == "mouth_moves_without_voice":
        parts.append("The mouth moves without a voice (chewing, smiling): the person does not speak.")
    parts.append("The visible person speaks." if speaking else "The visible person does not speak.")
    return " ".join(parts)


class LocalLLMRewriter:
    """A local causal language model rewrites the captions that the rules would change, in batches; answers that
    fail :func:`check_rewrite` give way to the rule-based rewriter, and the source of each caption is recorded.

    Loads with ``transformers`` from a local directory only (``local_files_only=True``): a name that is not an
    existing directory is an error, never a download. Decoding is greedy (reproducible). On a GPU the model runs in
    bfloat16 (float16 where bfloat16 is not supported); prompts are left-padded into batches of ``batch_size``.
    A caption the rules leave unchanged (it already agrees) is not sent to the model (source ``"unchanged"``).

    Args:
        model_path: Directory with a causal LM and its tokenizer (``save_pretrained`` layout).
        max_new_tokens: Longest answer.
        speaking_sentence: For the rule-based fallback.
        model: An already loaded model (with ``generate``); skips loading (tests, custom loading).
        tokenizer: Its tokenizer (with ``model``).
        batch_size: Prompts generated together.
        device: ``"auto"`` (CUDA when available, else CPU), or a torch device string.

    Raises:
        FileNotFoundError: ``model_path`` is not a directory.
        ImportError: ``transformers`` is not installed.
    """

    PROMPT = (
        "Rewrite the video caption so that it is true. What was measured: {facts} Keep everything else, including "
        "who the caption is about. Answer with the caption only, on one line.\n"
        "Caption: {caption}\nRewritten caption:"
    )

    def __init__(
        self,
        model_path: str | Path | None = None,
        max_new_tokens: int = 64,
        speaking_sentence: str = "The person is speaking.",
        model: Any = None,
        tokenizer: Any = None,
        batch_size: int = 16,
        device: str = "auto",
    ) -> None:
        import torch

        self.fallback = RuleBasedRewriter(speaking_sentence)
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, int(batch_size))
        self.last_reason: str | None = None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
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
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, padding_side="left")
        dtype = torch.float32
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
        self.model = model.to(self.device).eval()

    def prompt(self, caption: str, speaking: bool, facts: dict | None = None) -> str:
        """The prompt for one caption: the measured facts, then the caption."""
        return self.PROMPT.format(facts=describe_facts(speaking, facts), caption=caption)

    def _generate(self, prompts: list[str]) -> list[str]:
        """Greedy answers to ``prompts`` (first line of each), ``batch_size`` at a time."""
        import torch

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if getattr(tok, "pad_token_id", None) is None and hasattr(tok, "pad_token"):
            tok.pad_token = tok.eos_token
        if hasattr(tok, "padding_side"):
            tok.padding_side = "left"  # decoder-only models continue from the right end of every row
        answers = []
        for i in range(0, len(prompts), self.batch_size):
            batch = prompts[i : i + self.batch_size]
            enc = tok(batch, return_tensors="pt", padding=True)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.no_grad():
                out = self.model.generate(
                    **enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad
                )  # (B, L + new)
            width = enc["input_ids"].shape[1]
            for row in out:
                text = tok.decode(row[width:], skip_special_tokens=True)
                answers.append(text.strip().split("\n")[0].strip())
        return answers

    def rewrite_batch(self, items: list[tuple[str, bool, dict | None]]) -> list[tuple[str, str]]:
        """``(caption, source)`` for each ``(caption, speaking, facts)``: ``"unchanged"`` when the caption already
        agrees, ``"llm"`` when the model's answer passes :func:`check_rewrite`, else the rule-based rewrite and
        ``"rules (llm answer <reason>)"``."""
        results: list[tuple[str, str] | None] = [None] * len(items)
        asked = []
        for n, (caption, speaking, _facts) in enumerate(items):
            caption = " ".join(caption.split())
            if not caption:
                results[n] = (self.fallback.rewrite(caption, speaking), "rules (empty caption)")
            elif self.fallback.rewrite(caption, speaking) == caption:
                results[n] = (caption, "unchanged")
            else:
                asked.append(n)
        answers = self._generate([self.prompt(" ".join(items[n][0].split()), items[n][1], items[n][2]) for n in asked])
        for n, answer in zip(asked, answers, strict=True):
            caption, speaking = " ".join(items[n][0].split()), items[n][1]
            self.last_reason = check_rewrite(caption, answer, speaking)
            if self.last_reason is None:
                results[n] = (answer, "llm")
            else:
                results[n] = (self.fallback.rewrite(caption, speaking), f"rules (llm answer {self.last_reason})")
        return [r for r in results if r is not None]

    def rewrite_with_source(self, caption: str, speaking: bool, facts: dict | None = None) -> tuple[str, str]:
        """One caption through :meth:`rewrite_batch`."""
        return self.rewrite_batch([(caption, speaking, facts)])[0]

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
