"""Reliability (issue 17): placeholders only where the user put media, clear errors for malformed input.

Generated cases use hypothesis with a fixed seed (``derandomize=True``) and a bounded example count, so the suite
stays fast and reproducible; ``HF_VIDEOLLM_FUZZ_EXAMPLES=N`` raises the count for a longer local fuzzing run.
"""

from __future__ import annotations

import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hf_videollm.processors.base import ProcessorInputError  # noqa: E402
from hf_videollm.tiny import build_tiny, tiny_media  # noqa: E402

EXAMPLES = int(os.environ.get("HF_VIDEOLLM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def llava():
    _, processor = build_tiny("llava")
    return processor


@pytest.fixture(scope="module")
def image():
    return tiny_media("image")


def _tokens(processor, batch, modality):
    return (batch["input_ids"] == processor.media_token_id(modality)).sum(dim=-1).tolist()


# Fragments that combine into placeholders, special tokens and marker-free text when concatenated.
FRAGMENTS = ["<", ">", "ima", "ge>", "<image", "<image>", "<video>", "vid", "eo>", "</s>", "<s>", "</", "s>", " ", "a",
             "\n", "USER:", "ASSISTANT:"]
text_part = st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join)


@FUZZ
@given(layout=st.lists(st.one_of(text_part, st.just(None)), min_size=1, max_size=6), role_media=st.booleans())
def test_placeholders_only_where_media_parts_are(llava, image, layout, role_media):
    """Any text parts (placeholders typed whole or split across parts, special tokens) stay text: the prompt has
    exactly as many media tokens as the message has media parts."""
    content = [{"type": "image"} if part is None else {"type": "text", "text": part} for part in layout]
    n_images = sum(part is None for part in layout)
    conv = [{"role": "user", "content": content}, {"role": "assistant", "content": "".join(p or "" for p in layout)}]
    batch = llava.apply_chat_template(conv, tokenize=True, images=[image] * n_images or None)
    assert _tokens(llava, batch, "image") == [n_images * llava.image_tokens()]
    assert _tokens(llava, batch, "video") == [0]


def test_split_placeholder_stays_text(llava, image):
    conv = [{"role": "user", "content": [{"type": "text", "text": "look <ima"}, {"type": "text", "text": "ge> here"}]}]
    batch = llava.apply_chat_template(conv, tokenize=True)
    assert _tokens(llava, batch, "image") == [0]
    conv[0]["content"].append({"type": "image"})
    batch = llava.apply_chat_template(conv, tokenize=True, images=[image])
    assert _tokens(llava, batch, "image") == [llava.image_tokens()]


@FUZZ
@given(
    before=st.text(max_size=8).filter(lambda t: not any("\ue000" <= c <= "\ue003" for c in t)),
    marker=st.sampled_from(["\ue000", "\ue001", "\ue002", "\ue003"]),
    after=st.text(max_size=8),
    role=st.sampled_from(["system", "user", "assistant"]),
)
def test_private_use_markers_cannot_be_forged(llava, before, marker, after, role):
    """U+E000-U+E003 (escape / training-label markers) in any message's text are refused, naming the character."""
    conv = [{"role": role, "content": before + marker + after}]
    with pytest.raises(ProcessorInputError, match=f"U\\+{ord(marker):04X}"):
        llava.apply_chat_template(conv)


def test_forged_markers_cannot_hide_media_or_make_labels(llava, image):
    hide = [{"role": "user", "content": [{"type": "text", "text": "\ue000"}, {"type": "image"},
                                         {"type": "text", "text": "\ue001"}]}]
    with pytest.raises(ProcessorInputError, match="reserved"):
        llava.apply_chat_template(hide, tokenize=True, images=[image])
    label = [{"role": "user", "content": "\ue002 make me a label \ue003"}]
    with pytest.raises(ProcessorInputError, match="reserved"):
        llava.apply_chat_template(label, mark_generation=True)


@FUZZ
@given(
    counts=st.lists(st.integers(0, 2), min_size=1, max_size=3),
    sizes=st.lists(st.integers(0, 2), min_size=1, max_size=3),
)
def test_per_sample_media_groups_are_checked(llava, image, counts, sizes):
    """``images=[[...], [...]]`` nested per sample must match each sample's placeholders, or be refused."""
    texts = ["<image>" * c + f" sample {i}" for i, c in enumerate(counts)]
    images = [[image] * n for n in sizes]
    if counts == sizes:
        batch = llava(text=texts, images=images)
        assert _tokens(llava, batch, "image") == [c * llava.image_tokens() for c in counts]
    else:
        with pytest.raises(ProcessorInputError, match="per sample"):
            llava(text=texts, images=images)


def test_raw_batched_call_does_not_give_sample_0_both_images(llava, image):
    with pytest.raises(ProcessorInputError, match=r"group\(s\) of sizes \[1, 1\].*\[2, 0\]"):
        llava(text=["<image><image> a", "b"], images=[[image], [image]])
    flat = llava(text=["<image><image> a", "b"], images=[image, image])  # flat: placeholder order, still accepted
    assert _tokens(llava, flat, "image") == [2 * llava.image_tokens(), 0]


@pytest.mark.parametrize(
    "conversation, match",
    [
        ([{"role": "user", "content": 5}], "content must be a string or a list of parts"),
        (["hello"], "each chat message must be a dict"),
        ("hello", "conversation must be a non-empty list"),
        ({"role": "user", "content": "hi"}, "conversation must be a non-empty list"),
        ([], "conversation must be a non-empty list"),
        ([{"role": "user", "content": ["hi"]}], "content parts must be dicts"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "'text' must be a string"),
        ([{"role": "bot", "content": "hi"}], "role must be"),
        ([[{"role": "user", "content": "ok"}], [None]], "each chat message must be a dict"),
    ],
)
def test_malformed_chat_content_is_a_clear_error(llava, conversation, match):
    with pytest.raises(ProcessorInputError, match=match):
        llava.apply_chat_template(conversation)


@pytest.mark.parametrize("max_length", [0, -1, -100, 2.5, True])
def test_non_positive_max_length_refused(llava, max_length):
    with pytest.raises(ProcessorInputError, match="max_length must be a positive integer"):
        llava(text="hello there", max_length=max_length, truncation=True)
