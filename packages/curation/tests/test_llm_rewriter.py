"""The local-LLM caption rewriter: local files only, answers checked, the rules as fallback, the source recorded."""

import pytest
import torch

from cofe_curation.caption import LocalLLMRewriter, build_rewriter, check_rewrite

CAPTION = "A man talking to the camera in an office."


class _FakeTokenizer:
    pad_token_id = 0
    eos_token_id = 0

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def __call__(self, prompt, return_tensors="pt"):
        return {"input_ids": torch.ones(1, 5, dtype=torch.long)}

    def decode(self, ids, skip_special_tokens=True):
        assert len(ids) == 3  # only the generated tokens are decoded
        return self.answer + "\nCaption: more text the model went on with"


class _FakeModel:
    def generate(self, input_ids, max_new_tokens, do_sample, pad_token_id):
        assert do_sample is False
        return torch.cat([input_ids, torch.full((1, 3), 7)], dim=1)


def _rewriter(answer: str) -> LocalLLMRewriter:
    return LocalLLMRewriter(model=_FakeModel(), tokenizer=_FakeTokenizer(answer))


def test_a_good_answer_is_used_and_recorded():
    answer = "A man looking at the camera in an office."
    assert _rewriter(answer).rewrite_with_source(CAPTION, speaking=False) == (answer, "llm")
    answer = "A man talking to the camera in an office, clearly speaking."
    assert _rewriter(answer).rewrite_with_source(CAPTION, speaking=True) == (answer, "llm")


@pytest.mark.parametrize(
    ("answer", "speaking", "reason"),
    [
        ("A woman looking at the camera in an office.", False, "lost the subject 'man'"),
        ("A man talking in an office.", False, "claims speech in a silent clip"),
        ("A man in an office.", True, "does not say that the person speaks"),
        ("Caption:", False, "lost the subject 'man'"),
        ("A man " + "and a man " * 30, False, "too long"),
    ],
)
def test_a_bad_answer_falls_back_to_the_rules(answer, speaking, reason):
    text, source = _rewriter(answer).rewrite_with_source(CAPTION, speaking)
    assert text == build_rewriter("rules").rewrite(CAPTION, speaking)
    assert source.startswith("rules (llm answer") and reason in source, source
    assert reason in (check_rewrite(CAPTION, answer, speaking) or "")


def test_check_rewrite_wants_one_line():
    assert check_rewrite(CAPTION, "", False) == "empty or more than one line"
    assert check_rewrite(CAPTION, "A man looking.\nA man.", False) == "empty or more than one line"
    assert check_rewrite("", "Anything.", False) is None  # no subject to keep


def test_only_local_directories_are_loaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found: gpt2"):
        build_rewriter("local-llm:gpt2")  # a hub name is not a directory: no download is tried
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        build_rewriter(f"local-llm:{tmp_path / 'missing'}")


@pytest.mark.slow
def test_a_tiny_random_local_model_runs_and_falls_back(tmp_path):
    pytest.importorskip("transformers", reason="the local LLM rewriter needs transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[EOS]"])
    tok.train_from_iterator([CAPTION.lower(), "rewrite the video caption person speaks"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=fast.vocab_size, n_positions=256, n_embd=16, n_layer=1, n_head=2)
    fast.save_pretrained(tmp_path)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)

    rewriter = build_rewriter(f"local-llm:{tmp_path}")
    assert isinstance(rewriter, LocalLLMRewriter)
    text, source = rewriter.rewrite_with_source(CAPTION, speaking=False)  # random weights: a garbage answer
    assert text == "A man looking at the camera in an office." and source.startswith("rules (llm answer"), source
