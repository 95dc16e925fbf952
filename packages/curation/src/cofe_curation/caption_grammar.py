"""A small clause grammar of video captions: find the clauses that claim (or deny) speech, remove or rewrite them
whole, and check that what is left is still a sentence.

Captioners write a narrow English: a subject noun phrase ("A woman in an orange suit"), then either a finite
predicate ("talks to the camera about her trip") or a participle ("talking to the camera"), with coordinated
predicates ("talks and laughs"), participle adjuncts (", explaining her work"), subordinate clauses ("while
speaking to someone off-camera", "as she speaks") and relative clauses ("who is talking"). This module tags words
with a hand-written closed-class lexicon plus ``lemminflect``'s lexicon of open-class words (its part-of-speech
candidates, lemmas and inflections: 1 MB, pure Python, offline), and works on those clauses:

- :func:`remove_speech` (a silent clip): each speech clause goes whole, the verb with its complements ("talks to
  the camera about her trip"); a clause addressed to the camera becomes "looks at the camera" in the verb's own
  form ("talks"/"talk"/"talked"/"is talking"/"talking"); a coordinated or adjunct action takes the place of a
  removed main predicate in its tense and number ("talks while walking" -> "walks", inflected by ``lemminflect``);
  denials become speech-free ("does not speak" -> "is silent", "without speaking" -> "silently").
- :func:`remove_silence` (a speaking clip): claims that the person is silent go ("a silent woman" -> "a woman").
- :func:`grammar_problems`: a shallow grammar check of the result: every sentence capitalised and closed, a
  subject before its finite verb in agreement with it, no clause that ends in a function word, no auxiliary
  followed by the wrong verb form, no pronoun left without a predicate.

Why not a statistical parser: spaCy's English models are not on PyPI (only third-party re-uploads are), and a
parser would add tens of MB to the curation install for a closed set of phrasings; the grammar here is tested
against a corpus of captioner phrasings (``tests/data/caption_corpus.json``).
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass, replace

# Verbs whose use claims that the subject speaks (lemmas).
SPEECH_VERBS = frozenset(
    "talk speak say tell chat converse narrate explain whisper shout yell scream sing hum lip-sync lipsync address "
    "discuss describe announce lecture preach recite mumble mutter murmur exclaim ask answer reply argue gossip "
    "babble rant stutter stammer pronounce introduce interview chatter".split()
)
# Nouns that name speech; with a light verb ("giving a speech", "having a conversation") or "in" they claim it.
SPEECH_NOUNS = frozenset(
    "speech talk conversation chat monologue dialogue lecture presentation interview discussion announcement sermon "
    "toast speeches talks conversations chats interviews discussions lectures presentations".split()
)
_LIGHT_VERBS = frozenset("give deliver make have hold host conduct lead engage".split())
# Complement heads that are the camera or its audience: a speech clause to them becomes "looks at the <noun>".
_CAMERA = frozenset("camera lens webcam viewer viewers audience".split())
# Complement heads that belong to the speech (so a prepositional phrase with them is part of the clause).
_SPEECH_MEDIA = frozenset(
    "phone telephone microphone mic megaphone radio call headset voice language tone whisper podcast interview "
    "conversation".split()
)
# Subjects that are not the visible person: a sentence about them goes in a silent clip.
_OFFSCREEN = frozenset("narrator voice voice-over voiceover announcer commentator".split())
_SILENT_ADJ = frozenset("silent mute speechless wordless".split())
_SILENT_ADV = frozenset("silently wordlessly mutely".split())
_CATENATIVE = frozenset("start begin keep continue seem appear try".split())

_DET = frozenset("a an the this that these those some another each every no any both all several many".split())
_POSS = frozenset("his her their its my your our".split())
_SUBJ_PRON = frozenset("he she they it we you i".split())
_PRON = _SUBJ_PRON | frozenset(
    "him them me us someone somebody something anything nothing everyone everybody everything one "
    "himself herself themselves itself each other".split()
)
_PREP = frozenset(
    "in on at to with about into onto from by for of near behind beside under over through across around during "
    "against toward towards inside outside along past beneath above below between among like off up down out "
    "regarding concerning via upon within without".split()
)
_LOCATIVE = frozenset(
    "in on at near behind beside under across around inside outside along beneath above below between among "
    "next front during against by".split()
)
_CONJ = frozenset("and or but".split())
# Prepositions that also stand alone as adverbs at the end of a clause ("stands outside", "looks around").
_PARTICLES = frozenset("off up down out outside inside around away back along over by behind in on about".split())
_COPULAS = frozenset("be remain stay keep fall become go sit stand".split())
_SUB = frozenset("while as when whilst before after until because although though then".split())
_REL = frozenset("who which whom whose".split())
_NEG = frozenset("not n't never".split())
_BE = {"is": ("VBZ", "sg"), "'s": ("VBZ", "sg"), "are": ("VBP", "pl"), "was": ("VBD", "sg"), "were": ("VBD", "pl"),
       "am": ("VBP", "sg"), "be": ("VB", None), "been": ("VBN", None), "being": ("VBG", None)}  # fmt: skip
_AUX_OTHER = {"does": "VBZ", "do": "VBP", "did": "VBD", "has": "VBZ", "have": "VBP", "had": "VBD"}
_MODAL = frozenset("can could will would may might shall should must".split())
_NUM = frozenset("one two three four five six seven eight nine ten".split())
_ADV_CLOSED = frozenset("also still just then again too very quite softly loudly quietly".split())
_PUNCT = frozenset(",.;:!?")
_LIP_SYNC = {
    f"{a}{b}": f for a in ("lip-sync", "lipsync") for b, f in (("", "VB"), ("s", "VBZ"), ("ed", "VBD"), ("ing", "VBG"))
}


@dataclass(frozen=True)
class Tok:
    """A word (or punctuation) with its coarse tag: DET POSS PRON PREP CONJ SUB REL NEG AUX MODAL NUM ADV ADJ NOUN
    VERB PUNCT X; ``form`` is the Penn verb form (VB VBZ VBP VBD VBG VBN) of verbs and auxiliaries."""

    text: str
    tag: str
    lemma: str = ""
    form: str = ""

    @property
    def low(self) -> str:
        return self.text.lower()


@functools.cache
def _lemmas(word: str) -> dict:
    from lemminflect import getAllLemmas

    return getAllLemmas(word)


@functools.cache
def _verb_forms(lemma: str) -> dict:
    from lemminflect import getAllInflections

    return getAllInflections(lemma, upos="VERB")


def inflect(lemma: str, form: str) -> str:
    """``lemma`` in Penn verb ``form`` (VB, VBZ, VBP, VBD, VBG, VBN), by ``lemminflect``."""
    if form in ("VB", "VBP"):
        return lemma
    from lemminflect import getInflection

    found = getInflection(lemma, tag=form)
    return found[0] if found else lemma


def _verb_form(word: str, lemma: str) -> str:
    forms = _verb_forms(lemma)
    for tag in ("VBG", "VBZ", "VBD", "VBN", "VB", "VBP"):
        if word in forms.get(tag, ()):
            return "VBD" if tag == "VBN" and word in forms.get("VBD", ()) else tag
    if word.endswith("ing"):
        return "VBG"
    return "VBZ" if word.endswith("s") else "VB"


_WORD_RE = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*|n't|'s|\d+|[,.;:!?\"]")


def _split(text: str) -> list[str]:
    words = []
    for w in _WORD_RE.findall(text):
        if w.lower().endswith("n't") and w.lower() not in ("n't",):
            words += [w[:-3] if w.lower() != "can't" else "can", "n't"]
        else:
            words.append(w)
    return words


def _candidates(low: str) -> dict:
    cand = dict(_lemmas(low))
    if "-" in low and not cand:  # "lip-syncs", "off-camera": the last part decides
        head, _, tail = low.rpartition("-")
        for upos, lem in _lemmas(tail).items():
            cand[upos] = (f"{head}-{lem[0]}",)
    return cand


def tag(text: str) -> list[Tok]:
    """Tokens of ``text`` with coarse tags, chosen by the closed-class lexicon, then ``lemminflect``'s candidates
    and the previous token (after a determiner, possessive, adjective or number a word is a noun or adjective;
    after a noun or pronoun an ambiguous word is a verb)."""
    out: list[Tok] = []
    words = _split(text)
    for i, w in enumerate(words):
        low = w.lower()
        prev = out[-1] if out else None
        nxt = words[i + 1].lower() if i + 1 < len(words) else ""
        if low in _PUNCT or low == '"':
            out.append(Tok(w, "PUNCT"))
        elif low in _BE:
            out.append(Tok(w, "AUX", "be", _BE[low][0]))
        elif low in _AUX_OTHER:
            out.append(Tok(w, "AUX", "do" if low.startswith("d") else "have", _AUX_OTHER[low]))
        elif low in _MODAL:
            out.append(Tok(w, "MODAL", low, "MD"))
        elif low in _NEG:
            out.append(Tok(w, "NEG", "not"))
        elif low in _DET and not (low == "that" and prev is not None and prev.tag in ("NOUN", "PRON")):
            out.append(Tok(w, "DET", low))
        elif low == "her":
            is_poss = bool(_candidates(nxt).keys() & {"NOUN", "ADJ"}) and nxt not in _PREP
            out.append(Tok(w, "POSS" if is_poss else "PRON", "her"))
        elif low in _POSS:
            out.append(Tok(w, "POSS", low))
        elif low in _PRON:
            out.append(Tok(w, "PRON", low))
        elif low == "that" or low in _REL:
            out.append(Tok(w, "REL", low))
        elif low in _CONJ:
            out.append(Tok(w, "CONJ", low))
        elif low in _SUB and not (low == "as" and nxt in ("well", "a", "an")) and not (prev and prev.tag == "DET"):
            out.append(Tok(w, "SUB", low))
        elif low in _PREP:
            out.append(Tok(w, "PREP", low))
        elif low in _NUM or low.isdigit():
            out.append(Tok(w, "NUM", low))
        elif low in ("hello", "hi", "goodbye", "bye", "yes", "thanks"):
            out.append(Tok(w, "NOUN", low))
        elif low in _ADV_CLOSED:
            out.append(Tok(w, "ADV", low))
        else:
            out.append(_open_class(w, low, _candidates(low), prev, _candidates(nxt) if nxt else {}))
    return out


def _open_class(w: str, low: str, cand: dict, prev: Tok | None, following: dict) -> Tok:
    if low in _LIP_SYNC:
        return Tok(w, "VERB", "lip-sync", _LIP_SYNC[low])
    after_det = prev is not None and prev.tag in ("DET", "POSS", "ADJ", "NUM")
    after_to = prev is not None and prev.low == "to"
    # A base form after a plural noun or a subject pronoun is a present-tense verb ("Two women talk", "They talk").
    after_subject = prev is not None and (
        (prev.tag == "PRON" and prev.low in _SUBJ_PRON) or (prev.tag == "NOUN" and prev.low != prev.lemma.lower())
    )
    if "VERB" in cand and not after_det:
        lemma = cand["VERB"][0]
        form = _verb_form(low, lemma)
        nominal = cand.keys() & {"NOUN", "ADJ"}
        # An ambiguous word right after a preposition or at the start is its noun or adjective ("in conversation",
        # "Orange"), except a participle ("while walking", "Talking, ...") or "to" + infinitive.
        if nominal and prev is not None and prev.tag == "PREP" and form != "VBG" and not after_to:
            pass
        elif (
            nominal
            and form == "VB"
            and not after_to
            and not after_subject
            and (prev is None or prev.tag not in ("MODAL", "AUX", "NEG"))
        ):
            pass  # "camera", "talk" after a noun stays ambiguous; a base form needs to/modal/do to be a verb
        elif not (nominal and form == "VBN" and prev is not None and prev.tag in ("DET", "PREP")):
            return Tok(w, "VERB", lemma, form)
    if "ADV" in cand and not after_det and low.endswith("ly"):
        return Tok(w, "ADV", cand["ADV"][0])
    if "ADJ" in cand and ("NOUN" not in cand or (after_det and following.keys() & {"NOUN", "ADJ"})):
        return Tok(w, "ADJ", cand["ADJ"][0])
    if "NOUN" in cand or "PROPN" in cand:
        return Tok(w, "NOUN", (cand.get("NOUN") or cand.get("PROPN"))[0])
    if "ADJ" in cand:
        return Tok(w, "ADJ", cand["ADJ"][0])
    if "ADV" in cand:
        return Tok(w, "ADV", cand["ADV"][0])
    if "VERB" in cand:
        lemma = cand["VERB"][0]
        return Tok(w, "VERB", lemma, _verb_form(low, lemma))
    return Tok(w, "NOUN", low)  # a word the lexicon does not know: in a caption, most likely a noun or a name


def _sentences(tokens: list[Tok]) -> list[list[Tok]]:
    out, cur = [], []
    for t in tokens:
        cur.append(t)
        if t.text in ".!?":
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def _is_speech_verb(t: Tok) -> bool:
    return t.tag == "VERB" and t.lemma.replace("lipsync", "lip-sync") in SPEECH_VERBS


def _speech_noun_after(toks: list[Tok], i: int) -> int | None:
    """Index just past ``(DET|POSS)? ADJ* speech-noun`` starting at ``i``, else ``None``."""
    j = i
    if j < len(toks) and toks[j].tag in ("DET", "POSS"):
        j += 1
    while j < len(toks) and toks[j].tag == "ADJ":
        j += 1
    if j < len(toks) and toks[j].low in SPEECH_NOUNS and toks[j].tag in ("NOUN", "VERB", "ADJ"):
        return j + 1
    return None


@dataclass
class _Clause:
    start: int  # first token of the clause (its joiner: comma, conjunction, subordinator, relative pronoun)
    head: int  # first token of the predicate proper (aux chain or verb)
    verb: int  # the speech verb, or the light verb / preposition of a speech noun
    end: int  # one past the last token of its complements
    role: str  # MAIN, COORD, SUB, REL, INIT, PP
    negated: bool = False
    camera: str | None = None  # the camera noun it was addressed to
    sign_language: bool = False


def _find_clause(toks: list[Tok], skip: set[int]) -> _Clause | None:
    for v, t in enumerate(toks):
        if v in skip:
            continue
        past = None
        if _is_speech_verb(t):
            past = v + 1
        elif t.tag == "VERB" and t.lemma in _LIGHT_VERBS:
            past = _speech_noun_after(toks, v + 1)
            if past is None and t.lemma == "engage" and v + 1 < len(toks) and toks[v + 1].low == "in":
                past = _speech_noun_after(toks, v + 2)
        elif t.tag == "PREP" and t.low == "in" and v + 1 < len(toks) and toks[v + 1].low in SPEECH_NOUNS:
            past = v + 2
        if past is None:
            continue
        return _extend(toks, v, past)
    return None


def _extend(toks: list[Tok], v: int, past: int) -> _Clause:
    # Back over the auxiliary chain: aux, negation, adverbs, catenatives ("seems to be", "starts"), "busy".
    head = v
    if toks[v].tag == "PREP":  # "in conversation with ...": a modifier of the noun before it
        return _Clause(v, v, v, _complement_end(toks, past), "PP")
    negated = False
    while head > 0:
        p = toks[head - 1]
        if p.tag in ("AUX", "MODAL", "ADV") or (p.low == "to" and head >= 2 and toks[head - 2].tag in ("VERB", "AUX")):
            head -= 1
        elif p.tag == "NEG":
            negated = True
            head -= 1
        elif p.tag == "VERB" and p.lemma in _CATENATIVE:
            head -= 1
        else:
            break
    start, role = head, "MAIN"
    prev = toks[head - 1] if head > 0 else None
    if prev is None:
        role = "INIT"
    elif prev.tag == "REL":
        start, role = head - 1, "REL"
    elif prev.tag == "SUB" or prev.low == "without":
        start, role = head - 1, "SUB"
    elif prev.tag in ("CONJ",) or prev.text == ",":
        start, role = head - 1, "COORD"
        if prev.tag == "CONJ" and toks[head].tag == "VERB" and toks[head].form == "VBG":
            # "A man and a woman talking": a participle after "and" + noun phrase is the main predicate.
            if head >= 2 and toks[head - 2].tag in ("NOUN", "PRON") and not any(t.tag == "VERB" for t in toks[:head]):
                start, role = head, "MAIN"
    else:
        # "when his friend speaks", "as he speaks": a subordinator before the clause's own subject.
        k = head - 1
        while k >= 0 and toks[k].tag in ("DET", "POSS", "ADJ", "NOUN", "PRON", "NUM"):
            k -= 1
        if k >= 0 and k < head - 1 and toks[k].tag == "SUB":
            start, role = k, "SUB"
    end = _complement_end(toks, past)
    clause = _Clause(start, head, v, end, role, negated)
    for j in range(v, end):
        if toks[j].low in _CAMERA and toks[j].tag == "NOUN":
            clause.camera = toks[j].low
        if toks[j].low == "sign" and j + 1 < end and toks[j + 1].low == "language":
            clause.sign_language = True
    return clause


def _complement_end(toks: list[Tok], i: int) -> int:
    """One past the speech clause's complements from ``i``: objects, quotes, "to/with/about ..." phrases, "on the
    phone", adverbs, up to a clause boundary (punctuation, a coordinated verb, a subordinator, a relative pronoun)
    or a place phrase ("in an office") that is not about the speech."""
    j = i
    quote = False
    while j < len(toks):
        t = toks[j]
        if t.text == '"':
            quote = not quote
            j += 1
            continue
        if quote:
            j += 1
            continue
        if t.tag == "PUNCT" or t.tag in ("SUB", "REL"):
            break
        if t.tag == "CONJ":
            k = j + 1
            while k < len(toks) and toks[k].tag in ("ADV", "AUX", "NEG"):
                k += 1
            if k < len(toks) and ((toks[k].tag == "VERB" and toks[k].form != "VBN") or toks[k].tag == "AUX"):
                break
        if t.tag == "VERB" and t.form in ("VBZ", "VBD", "VBP") and j > i and toks[j - 1].tag not in ("MODAL", "AUX"):
            break  # the predicate of the sentence resumes after a relative clause ("who talks about cars smiles")
        if t.tag == "PREP" and t.low in _LOCATIVE:
            k = j + 1
            while k < len(toks) and toks[k].tag in ("DET", "POSS", "ADJ", "NUM", "PREP"):
                k += 1
            head = toks[k].low if k < len(toks) else ""
            if head not in _SPEECH_MEDIA and head not in _CAMERA and head not in SPEECH_NOUNS and head != "sign":
                break
        j += 1
    return j


def _subject(toks: list[Tok]) -> tuple[int, int]:
    """``(start, end)`` of the sentence's subject noun phrase (after a leading participle adjunct)."""
    i = 0
    if toks and toks[0].tag == "VERB" and toks[0].form == "VBG":
        while i < len(toks) and toks[i].text != ",":
            i += 1
        i += 1
    j = i
    while (j < len(toks) and toks[j].tag in ("DET", "POSS", "ADJ", "NUM", "NOUN", "PRON", "X")) or (
        j < len(toks) and toks[j].tag == "CONJ" and j + 1 < len(toks) and toks[j + 1].tag in ("DET", "NOUN", "NUM")
    ):
        j += 1
    return i, j


def _plural(toks: list[Tok]) -> bool:
    s, e = _subject(toks)
    words = toks[s:e]
    if any(t.tag == "CONJ" for t in words):
        return True
    heads = [t for t in words if t.tag in ("NOUN", "PRON")]
    if not heads:
        return False
    h = heads[0] if heads[0].tag == "PRON" else [t for t in words if t.tag == "NOUN"][-1]
    if h.tag == "PRON":
        return h.low in ("they", "we", "you")
    return h.low != h.lemma.lower() or h.low in ("people", "men", "women", "children")


def _finite_form(toks: list[Tok], c: _Clause) -> str:
    """Penn form of the clause's first verb or auxiliary (VBZ, VBP, VBD, VBG, ...)."""
    for t in toks[c.head : c.verb + 1]:
        if t.tag in ("AUX", "VERB", "MODAL"):
            return t.form
    return toks[c.verb].form


def _be(form: str, plural: bool) -> str:
    if form == "VBD":
        return "were" if plural else "was"
    if form == "VBG":
        return "being"
    if form == "MD":
        return "be"
    return "are" if plural or form == "VBP" else "is"


def _word(text: str, tag_: str = "X", lemma: str = "", form: str = "") -> Tok:
    return Tok(text, tag_, lemma or text.lower(), form)


def _look(toks: list[Tok], c: _Clause, verb: str, rest: list[str]) -> list[Tok]:
    """Replace the speech verb and its complements with ``verb`` (in the speech verb's form) + ``rest``."""
    form = toks[c.verb].form if toks[c.verb].tag == "VERB" else "VBZ"
    if c.role == "INIT" or form == "VBG":
        form = "VBG"
    word = inflect(verb, form)
    if toks[c.verb].text[:1].isupper():
        word = word.capitalize()
    new = [Tok(word, "VERB", verb, form)] + [_word(w, "NOUN" if w in _CAMERA or w == "language" else "X") for w in rest]
    return toks[: c.verb] + new + toks[c.end :]


def _promote(toks: list[Tok], c: _Clause) -> list[Tok] | None:
    """A removed main predicate followed by another action ("talks while walking", "talks, smiling", "talks and
    laughs"): the action becomes the predicate, in the removed one's form."""
    e = c.end
    if e >= len(toks):
        return None
    nxt = toks[e]
    k = e + 1
    if (nxt.tag == "SUB" and nxt.low in ("while", "as", "whilst")) or nxt.text == ",":
        if k < len(toks) and toks[k].tag == "PRON" and toks[k].low in _SUBJ_PRON:
            k += 1  # "as he walks": the action already has its form
            if k < len(toks) and toks[k].tag == "VERB":
                return toks[: c.head] + toks[k:]
            return None
        if k < len(toks) and toks[k].tag == "VERB" and toks[k].form == "VBG":
            aux = [t for t in toks[c.head : c.verb] if t.tag == "AUX"]
            verb = toks[c.verb]
            if aux or verb.form == "VBG":  # "is talking while turning" -> "is turning"; "talking while walking"
                return toks[: c.verb] + toks[k:] if aux else toks[: c.head] + toks[k:]
            form = verb.form if verb.form in ("VBZ", "VBD", "VBP") else "VBZ"
            act = toks[k]
            return [*toks[: c.head], Tok(inflect(act.lemma, form), "VERB", act.lemma, form), *toks[k + 1 :]]
        if nxt.tag == "SUB":
            return None
    if nxt.tag == "CONJ" or nxt.text == ",":
        j = e + 1
        while j < len(toks) and toks[j].tag in ("ADV", "AUX", "NEG"):
            j += 1
        if (j < len(toks) and toks[j].tag in ("VERB", "AUX") and toks[j].form != "VBG") or (
            nxt.tag == "CONJ" and (j < len(toks) and toks[j].tag == "VERB")
        ):
            # Keep "is" of "is talking and laughing", not the do-support of a denial ("does not say ... and").
            aux = [t for t in toks[c.head : c.verb] if t.tag == "MODAL" or (t.tag == "AUX" and t.lemma != "do")]
            return toks[: c.verb] + toks[e + 1 :] if aux else toks[: c.head] + toks[e + 1 :]
    return None


def _drop_coordinated(toks: list[Tok], c: _Clause) -> list[Tok]:
    """Remove a coordinated or adjunct clause with its joiner, and mend the list it leaves ("waves, smiles and
    talks" -> "waves and smiles"; "A man, speaking softly, looks down" -> "A man looks down")."""
    start, end = c.start, c.end
    if toks[start].text == "," and end < len(toks) and toks[end].text == ",":
        end += 1
    out = toks[:start] + toks[end:]
    if toks[start].tag == "CONJ":
        # The last comma of the list before it becomes the conjunction.
        for i in range(start - 1, -1, -1):
            if out[i].text == "," and i + 1 < len(out) and out[i + 1].tag in ("VERB", "AUX"):
                out[i] = Tok(toks[start].low, "CONJ", toks[start].low)
                break
            if out[i].tag == "CONJ":
                break
    return out


def _pronoun_noun(toks: list[Tok]) -> str:
    s, e = _subject(toks)
    pron = next((t.low for t in toks[s:e] if t.tag == "PRON"), "")
    return {"she": "A woman", "he": "A man", "they": "People"}.get(pron, "A person")


def _apply(toks: list[Tok], c: _Clause, silent_clip: bool, plural: bool) -> list[Tok] | None:
    """One edit; ``None`` drops the sentence."""
    if silent_clip and c.negated:
        # A denial of speech in a silent clip is true: say it without a speech verb.
        return [
            *toks[: c.head],
            _word(_be(_finite_form(toks, c), plural), "AUX", "be"),
            _word("silent", "ADJ"),
            *toks[c.end :],
        ]
    if silent_clip and c.camera and c.role != "PP":
        return _look(toks, c, "look", ["at", "the", c.camera])
    if silent_clip and c.sign_language and c.role != "PP":
        return _look(toks, c, "use", ["sign", "language"])
    if c.role in ("COORD", "SUB", "REL", "PP"):
        if c.role == "SUB" and toks[c.start].low == "without" and silent_clip:
            return [*toks[: c.start], _word("silently", "ADV"), *toks[c.end :]]
        return _drop_coordinated(toks, c)
    if c.role == "INIT":
        end = c.end + 1 if c.end < len(toks) and toks[c.end].text == "," else c.end
        return toks[end:]
    promoted = _promote(toks, c)
    if promoted is not None:
        return promoted
    # Only the predicate goes: the subject with the place phrases after it is left as a noun-phrase caption.
    rest = toks[: c.head] + toks[c.end :]
    s, e = _subject(rest)
    content = [t for t in rest if t.tag != "PUNCT"]
    if all(t.tag == "PRON" for t in rest[s:e]) and rest[s:e]:
        return None
    return rest if content else None


def _claims(toks: list[Tok]) -> list[_Clause]:
    """Every speech clause of a sentence, in order."""
    found, skip = [], set()
    while True:
        c = _find_clause(toks, skip)
        if c is None:
            return found
        found.append(c)
        skip.add(c.verb)


def _offscreen_subject(toks: list[Tok]) -> bool:
    s, e = _subject(toks)
    return any(t.low in _OFFSCREEN for t in toks[s:e])


def _render(sentences: list[list[Tok]]) -> str:
    parts = []
    for toks in sentences:
        words = []
        for t in toks:
            if (t.tag == "PUNCT" and t.text != '"') or t.text in ("n't", "'s"):
                if words:
                    words[-1] += t.text
                continue
            words.append(t.text)
        text = " ".join(words)
        text = re.sub(r"\bcan n't\b", "can't", text)
        if not text:
            continue
        text = text[0].upper() + text[1:]
        if text[-1] not in ".!?":
            text += "."
        parts.append(text)
    return " ".join(parts)


def _fix_articles(toks: list[Tok]) -> list[Tok]:
    out = list(toks)
    for i, t in enumerate(out[:-1]):
        if t.low in ("a", "an"):
            nxt = out[i + 1].low
            vowel = bool(re.match(r"[aeio]|u(?!ni|se|sa|su|ra|re|ro)|hon|hour|heir", nxt)) and not nxt.startswith("one")
            want = "an" if vowel else "a"
            if t.low != want:
                out[i] = replace(t, text=want.capitalize() if t.text[0].isupper() else want, lemma=want)
    return out


def _negated_objects(toks: list[Tok]) -> list[Tok]:
    """ "says nothing" / "said not a word" -> NEG before the verb, so they read as denials."""
    out = list(toks)
    i = 0
    while i < len(out) - 1:
        t = out[i]
        if _is_speech_verb(t) and t.lemma == "say":
            nxt = out[i + 1]
            if nxt.low == "nothing":
                form = t.form
                aux = {"VBZ": "does", "VBP": "do", "VBD": "did"}.get(form)
                if aux:
                    out[i : i + 2] = [_word(aux, "AUX", "do", form), _word("not", "NEG", "not"), replace(t, form="VB")]
                    i += 3
                    continue
            if nxt.low == "not" and i + 3 < len(out) and out[i + 3].low == "word":
                del out[i + 1 : i + 4]
                out.insert(i, _word("not", "NEG", "not"))
        i += 1
    return out


def remove_speech(caption: str) -> str:
    """The caption without any claim that the visible person speaks (for a clip that is not speaking).

    Each speech clause goes whole (see the module docstring); a sentence about an off-screen narrator goes; a
    pronoun sentence left without its predicate goes too (its subject becomes "A woman"/"A man"/"A person" when
    nothing else is left). Denials of speech are kept without speech verbs.
    """
    out = []
    sentences = _sentences(tag(" ".join(caption.split())))
    for toks in sentences:
        if _offscreen_subject(toks) and _claims(toks):
            continue
        toks = _negated_objects(toks)
        plural = _plural(toks)
        dropped = False
        for _ in range(12):
            claims = _claims(toks)
            if not claims:
                break
            edited = _apply(toks, claims[0], True, plural)
            if edited is None:
                dropped = True
                break
            toks = edited
        if dropped:
            if len(sentences) == 1:
                out.append([_word(w) for w in _pronoun_noun(toks).split()] + [_word(".", "PUNCT")])
            continue
        if any(t.tag != "PUNCT" for t in toks):
            out.append(_fix_articles(toks))
    return _render(out)


def _is_silence_word(t: Tok) -> bool:
    return t.low in _SILENT_ADJ or t.low in _SILENT_ADV


def remove_silence(caption: str) -> str:
    """The caption without any claim that the visible person is silent (for a speaking clip): silence adjectives
    and adverbs ("a silent woman", "silently", "in silence"), "without speaking" and denials of speech ("does not
    speak", "says nothing") go; a sentence whose only predicate was a denial keeps its subject."""
    out = []
    for toks in _sentences(tag(" ".join(caption.split()))):
        toks = _negated_objects(toks)
        toks = _drop_silent_predicate(toks)
        if toks is None:
            continue
        toks = [t for t in toks if not _is_silence_word(t)]
        k = 0
        while k < len(toks) - 1:  # "in silence", "without a word"
            if toks[k].low in ("in", "without") and toks[k + 1].low == "silence":
                del toks[k : k + 2]
            elif (
                toks[k].low == "without" and k + 2 < len(toks) and toks[k + 1].low == "a" and toks[k + 2].low == "word"
            ):
                del toks[k : k + 3]
            else:
                k += 1
        plural = _plural(toks)
        for _ in range(12):
            denials = [c for c in _claims(toks) if c.negated or (c.role == "SUB" and toks[c.start].low == "without")]
            if not denials:
                break
            c = denials[0]
            edited = _apply(toks, replace(c, negated=False, camera=None, sign_language=False), False, plural)
            if edited is None:
                toks = toks[: c.head] + toks[c.end :]
                break
            toks = edited
        if any(t.tag != "PUNCT" for t in toks):
            out.append(_fix_articles(toks))
    return _render(out)


def _drop_silent_predicate(toks: list[Tok]) -> list[Tok] | None:
    """ "is silent (for a moment), then turns" -> "turns": a silence adjective as the predicate goes with its copula
    and the phrases after it, and a following action takes its place; ``None`` drops a pronoun sentence left
    without a predicate."""
    for k, t in enumerate(toks):
        if not (t.tag in ("AUX", "VERB") and t.lemma in _COPULAS):
            continue
        j = k + 1
        while j < len(toks) and toks[j].tag == "ADV" and not _is_silence_word(toks[j]):
            j += 1
        if j >= len(toks) or toks[j].low not in _SILENT_ADJ or (t.lemma in ("sit", "stand") and toks[j].tag != "ADJ"):
            continue
        if t.lemma in ("sit", "stand"):  # "sits silent": only the adjective goes
            return toks[:j] + toks[j + 1 :]
        end = j + 1
        while end < len(toks) and toks[end].tag not in ("PUNCT", "CONJ", "SUB"):
            end += 1
        after = end + 1
        while after < len(toks) and toks[after].low in ("then", "and", "but"):
            after += 1
        if (
            end < len(toks)
            and toks[end].text in (",", "and", "but")
            and after < len(toks)
            and toks[after].tag == "VERB"
        ):
            return toks[:k] + toks[after:]
        rest = toks[:k] + toks[end:]
        s, e = _subject(rest)
        if rest[s:e] and all(x.tag == "PRON" for x in rest[s:e]):
            return None
        return rest
    return toks


def claims_speech(caption: str) -> bool:
    """The caption says the visible person speaks: a speech clause that is not a denial ("does not speak",
    "without speaking") and not about an off-screen narrator."""
    for toks in _sentences(tag(caption)):
        toks = _negated_objects(toks)
        if _offscreen_subject(toks):
            continue
        for c in _claims(toks):
            if not c.negated and not (c.role == "SUB" and toks[c.start].low == "without"):
                return True
    return False


def claims_silence(caption: str) -> bool:
    """The caption says the visible person is silent ("a silent woman", "silently", "does not speak", ...)."""
    for toks in _sentences(tag(caption)):
        toks = _negated_objects(toks)
        if any(_is_silence_word(t) for t in toks) or any(
            a.low in ("in", "without") and b.low == "silence" for a, b in itertools.pairwise(toks)
        ):
            return True
        if any(c.negated or (c.role == "SUB" and toks[c.start].low == "without") for c in _claims(toks)):
            return True
    return False


def speech_words(caption: str) -> list[str]:
    """Every word of the caption whose lemma is a speech verb or noun, whatever its use (the strictest test that a
    caption says nothing of speech)."""
    words = []
    for t in tag(caption):
        if (t.tag == "VERB" and t.lemma in SPEECH_VERBS) or t.low in SPEECH_NOUNS or _is_speech_verb(t):
            words.append(t.text)
    return words


def grammar_problems(caption: str) -> list[str]:
    """What keeps ``caption`` from parsing as one or more caption sentences (empty: it parses).

    Each sentence must be a clause (a subject noun phrase, then a finite predicate that agrees with it in number)
    or a noun-phrase caption (a noun phrase with participle, prepositional or relative modifiers, never a bare
    pronoun), start with a capital and end with ``. ! ?``. No clause may end in a determiner, preposition,
    conjunction, subordinator, relative pronoun or auxiliary; no two joiners may follow each other; an auxiliary
    takes the verb form it governs ("is talking", "does not speak", never "is talks").
    """
    problems = []
    if not caption.strip():
        return ["empty"]
    for n, toks in enumerate(_sentences(tag(caption)), 1):
        words = [t for t in toks if t.text != '"']
        text = " ".join(t.text for t in words)
        where = f"sentence {n} ({text!r})"
        if not words[0].text[:1].isupper():
            problems.append(f"{where}: does not start with a capital")
        if words[-1].text not in ".!?":
            problems.append(f"{where}: does not end with . ! ?")
        body = [t for t in words if t.text not in ".!?"]
        if not body:
            problems.append(f"{where}: empty")
            continue
        if body[0].tag in ("CONJ", "PUNCT") or (body[0].tag == "PREP" and body[0].low not in _LOCATIVE | {"with"}):
            problems.append(f"{where}: starts with {body[0].text!r}")
        dangling = ("DET", "POSS", "PREP", "CONJ", "SUB", "REL", "AUX", "MODAL", "NEG")
        for i, (a, b) in enumerate(zip(body, [*body[1:], Tok(".", "PUNCT")], strict=True)):
            if a.tag in ("AUX", "MODAL"):  # the verb an auxiliary governs, past "not" and adverbs
                k = i + 1
                while k < len(body) and body[k].tag in ("NEG", "ADV"):
                    k += 1
                b = body[k] if k < len(body) else Tok(".", "PUNCT")
            if a.tag in dangling and b.tag == "PUNCT" and not (a.tag == "PREP" and a.low in _PARTICLES):
                if not (a.tag == "AUX" and a.lemma == "do"):
                    problems.append(f"{where}: a clause ends in {a.text!r}")
            if (
                a.tag in ("CONJ", "SUB", "PUNCT")
                and b.tag in ("CONJ", "PUNCT")
                and not (a.text == "," and b.tag == "CONJ")
            ):
                problems.append(f"{where}: {a.text!r} followed by {b.text!r}")
            if a.tag in ("DET", "POSS") and b.tag in ("VERB", "AUX", "PREP", "CONJ", "DET") and b.form != "VBG":
                problems.append(f"{where}: {a.text!r} followed by {b.text!r}")
            if a.tag == "AUX" and a.lemma == "be" and b.tag == "VERB" and b.form in ("VBZ", "VBP", "VB"):
                problems.append(f"{where}: {a.text!r} followed by {b.text!r}")
            if (
                (a.tag == "MODAL" or (a.tag == "AUX" and a.lemma == "do"))
                and b.tag == "VERB"
                and b.form not in ("VB", "VBP")
            ):
                problems.append(f"{where}: {a.text!r} followed by {b.text!r}")
        s, e = _subject(body)
        finite = next(
            (
                i
                for i, t in enumerate(body)
                if i >= e and (t.tag == "AUX" or (t.tag == "VERB" and t.form in ("VBZ", "VBP", "VBD")))
            ),
            None,
        )
        subject = body[s:e]
        if not subject:
            problems.append(f"{where}: no subject")
            continue
        if finite is None:
            if (len(subject) == 1 and subject[0].tag == "PRON") or all(t.tag == "PRON" for t in subject):
                problems.append(f"{where}: a pronoun without a predicate")
            continue
        verb = body[finite]
        plural = _plural(body)
        if (verb.form == "VBZ" and plural) or (verb.form == "VBP" and not plural and verb.low != "am"):
            if not (verb.form == "VBP" and subject[-1].low in ("you", "i")):
                problems.append(f"{where}: {verb.text!r} does not agree with its subject")
        if verb.low in ("was", "were") and (verb.low == "were") != plural:
            problems.append(f"{where}: {verb.text!r} does not agree with its subject")
    return problems
