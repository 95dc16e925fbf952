"""The local-LLM caption rewriter: local files only, batched, told what was measured, answers checked, the rules as
fallback, the source recorded."""

import pytest
import torch

from cofe_curation.caption import LocalLLMRewriter, build_rewriter, check_rewrite, describe_facts, rewrite_many

CAPTION = "A man talking to the camera in an office."  # needs a rewrite when the man does not speak
SILENT_CAPTION = "A man sits in an office."  # needs a rewrite when he speaks


class _FakeTokenizer:
    pad_token_id = 0
    eos_token_id = 0
    padding_side = "right"

    def __init__(self, answers) -> None:
        self.answers = answers if isinstance(answers, dict) else None
        self.answer = answers if isinstance(answers, str) else None
        self.batches: list[list[str]] = []

    def __call__(self, prompts, return_tensors="pt", padding=True):
        assert isinstance(prompts, list) and padding and self.padding_side == "left"
        self.batches.append(prompts)
        ids = torch.arange(len(prompts))[:, None].repeat(1, 5)  # (B, 5): row b says which prompt it is
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def decode(self, ids, skip_special_tokens=True):
        assert len(ids) == 3  # only the generated tokens are decoded
        prompt = self.batches[-1][int(ids[0])]
        answer = self.answer
        if self.answers is not None:
            answer = next(a for key, a in self.answers.items() if f"Caption: {key}\n" in prompt)
        return answer + "\nCaption: more text the model went on with"


class _FakeModel:
    def __init__(self) -> None:
        self.calls = 0

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id):
        assert do_sample is False and attention_mask.shape == input_ids.shape
        self.calls += 1
        return torch.cat([input_ids, input_ids[:, :3]], dim=1)  # the "answer" tokens name the row again


def _rewriter(answers, batch_size=16) -> LocalLLMRewriter:
    return LocalLLMRewriter(model=_FakeModel(), tokenizer=_FakeTokenizer(answers), batch_size=batch_size)


def test_a_good_answer_is_used_and_recorded():
    answer = "A man looking at the camera in an office."
    assert _rewriter(answer).rewrite_with_source(CAPTION, speaking=False) == (answer, "llm")
    answer = "A man sits in an office, clearly speaking."
    assert _rewriter(answer).rewrite_with_source(SILENT_CAPTION, speaking=True) == (answer, "llm")


def test_a_caption_that_already_agrees_is_not_sent():
    rewriter = _rewriter("anything")
    assert rewriter.rewrite_with_source(CAPTION, speaking=True) == (CAPTION, "unchanged")
    assert rewriter.rewrite_with_source(SILENT_CAPTION, speaking=False) == (SILENT_CAPTION, "unchanged")
    assert rewriter.model.calls == 0


@pytest.mark.parametrize(
    ("caption", "answer", "speaking", "reason"),
    [
        (CAPTION, "A woman looking at the camera in an office.", False, "lost the subject 'man'"),
        (CAPTION, "A man talking in an office.", False, "claims speech in a silent clip"),
        (CAPTION, "A man who does not speak, in an office.", False, "speech words in a silent clip"),
        (SILENT_CAPTION, "A man sits in an office.", True, "does not say that the person speaks"),
        (SILENT_CAPTION, "A silent man sits in an office and talks.", True, "says that a speaking person is silent"),
        (CAPTION, "A man looking at the camera in an.", False, "does not parse"),
        (CAPTION, "Caption:", False, "lost the subject 'man'"),
        (CAPTION, "A man " + "and a man " * 30, False, "too long"),
    ],
)
def test_a_bad_answer_falls_back_to_the_rules(caption, answer, speaking, reason):
    text, source = _rewriter(answer).rewrite_with_source(caption, speaking)
    assert text == build_rewriter("rules").rewrite(caption, speaking)
    assert source.startswith("rules (llm answer") and reason in source, source
    assert reason in (check_rewrite(caption, answer, speaking) or "")


def test_batches_keep_their_order_and_size():
    captions = [f"A man in a {c} shirt talks to the camera." for c in ("red", "blue", "green", "white", "black")]
    answers = {c: c.replace("talks to", "looks at") for c in captions}
    answers[captions[2]] = "A man talks."  # fails the check: the rules write that one
    rewriter = _rewriter(answers, batch_size=2)
    items = [(c, False, {"speech_ratio": 0.94, "voice_over": True, "rule": "voice_over"}) for c in captions]
    items.insert(1, (CAPTION, True, None))  # already agrees: never sent
    out = rewrite_many(rewriter, items)
    assert [s for _, s in out] == ["llm", "unchanged", "llm", "rules (llm answer claims speech in a silent clip)",
                                   "llm", "llm"]  # fmt: skip
    assert (
        out[0][0] == "A man in a red shirt looks at the camera."
        and out[3][0] == "A man in a green shirt looks at the camera."
    )
    assert [len(b) for b in rewriter.tokenizer.batches] == [2, 2, 1] and rewriter.model.calls == 3


def test_the_prompt_states_what_was_measured():
    facts = {
        "speech_ratio": 0.94,
        "mouth_motion": 0.05,
        "mouth_baseline": 0.07,
        "voice_over": True,
        "rule": "voice_over",
    }
    prompt = _rewriter("x").prompt(CAPTION, False, facts)
    assert "Speech is heard in 94% of the clip" in prompt and "voice-over" in prompt
    assert "mouth stays still (0.05 against a still baseline of 0.07)" in prompt
    assert "does not speak" in prompt and prompt.endswith(f"Caption: {CAPTION}\nRewritten caption:")
    assert "mouth moves" in describe_facts(True, {"speech_ratio": 0.5, "mouth_motion": 0.4, "mouth_baseline": 0.1})
    assert describe_facts(False, {"speech_ratio": 0.0, "rule": "mouth_moves_without_voice"}).startswith("No speech")


def test_check_rewrite_wants_one_line():
    assert check_rewrite(CAPTION, "", False) == "empty or more than one line"
    assert check_rewrite(CAPTION, "A man looking.\nA man.", False) == "empty or more than one line"
    assert check_rewrite("", "A man waves.", False) is None  # no subject to keep


def test_only_local_directories_are_loaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found: gpt2"):
        build_rewriter("local-llm:gpt2")  # a hub name is not a directory: no download is tried
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        build_rewriter(f"local-llm:{tmp_path / 'missing'}")


def _tiny_model(path):
    """A tiny random GPT-2 and a word-level tokenizer saved in ``save_pretrained`` layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[EOS]"])
    tok.train_from_iterator(
        [CAPTION.lower(), SILENT_CAPTION.lower(), "rewrite the video caption person speaks"], trainer
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=fast.vocab_size, n_positions=512, n_embd=16, n_layer=1, n_head=2)
    fast.save_pretrained(path)
    GPT2LMHeadModel(config).save_pretrained(path)


@pytest.mark.slow
def test_a_tiny_random_local_model_runs_batched_and_falls_back(tmp_path):
    pytest.importorskip("transformers", reason="the local LLM rewriter needs transformers")
    _tiny_model(tmp_path)
    rewriter = build_rewriter(f"local-llm:{tmp_path}")
    assert isinstance(rewriter, LocalLLMRewriter) and rewriter.device.type == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    rewriter.batch_size = 2
    items = [(CAPTION, False, {"speech_ratio": 0.9, "voice_over": True}), (SILENT_CAPTION, True, None),
             ("A man talking to the camera.", False, None)]  # fmt: skip
    out = rewrite_many(rewriter, items)  # random weights: garbage answers, every one caught
    assert out[0] == ("A man looking at the camera in an office.", out[0][1]) and out[0][1].startswith("rules (llm")
    assert out[1][0] == "A man sits in an office. The person is speaking." and out[1][1].startswith("rules (llm")
    assert out[2][0] == "A man looking at the camera." and out[2][1].startswith("rules (llm")


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_local_model_runs_on_the_gpu(tmp_path):
    pytest.importorskip("transformers", reason="the local LLM rewriter needs transformers")
    _tiny_model(tmp_path)
    rewriter = build_rewriter(f"local-llm:{tmp_path}")
    assert next(rewriter.model.parameters()).device.type == "cuda"
    assert next(rewriter.model.parameters()).dtype in (torch.bfloat16, torch.float16)
    out = rewrite_many(rewriter, [(CAPTION, False, None)] * 20)
    assert all(text == "A man looking at the camera in an office." for text, _ in out)
