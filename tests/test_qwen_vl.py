"""Qwen-VL behaviour on the tiny model: chat template and labels, image / video expansion, grounding text, the
resampler's sin-cos table against the release, dynamic NTK / logN with padding, bad inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_case

from hf_videollm.grounding import format_grounding, parse_boxes
from hf_videollm.modeling.qwen_vl import qwen_ntk_alpha, sincos_2d_table
from hf_videollm.tiny import build_tiny, tiny_media


@pytest.fixture
def tiny():
    model, processor = build_tiny("qwen_vl", seed=0)
    return model.eval(), processor


def _ids(processor, *tokens):
    return processor.tokenizer.convert_tokens_to_ids(list(tokens))


def test_chat_template_numbers_pictures_per_turn_like_from_list_format(tiny):
    _, processor = tiny
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "compare"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and this"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nPicture 1:<image>\nPicture 2:<image>\ncompare<|im_end|>\n"
        "<|im_start|>assistant\ntwo<|im_end|>\n"
        "<|im_start|>user\nPicture 1:<image>\nand this<|im_end|>\n<|im_start|>assistant\n"
    )
    system = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]
    assert processor.apply_chat_template(system + messages[:1]).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_labels_default_and_as_the_original_finetune(tiny):
    model, processor = tiny
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}]
    image = [tiny_media("image")]
    im_start, im_end = _ids(processor, "<|im_start|>", "<|im_end|>")
    answer = processor.tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    newline = processor.tokenizer("\n", add_special_tokens=False)["input_ids"]

    def supervised(proc):
        text = proc.apply_chat_template(messages, mark_generation=True)
        batch = proc(text=text, images=image, return_labels=True)
        return batch["labels"][0][batch["labels"][0] != -100].tolist()

    assert supervised(processor) == answer + [im_end] + newline
    _, original = build_tiny("qwen_vl", seed=0, processor={"finetune_labels": True})
    # finetune.py: <|im_start|> and "<|im_end|>\n" of every turn (system, user, assistant) + the answer
    assert supervised(original) == [im_start, im_end, *newline, im_start, im_end, *newline, im_start, *answer, im_end,
                                    *newline]


def test_images_and_video_frames_are_wrapped_and_encoded_alike(tiny):
    model, processor = tiny
    n = model.config.vision_config.n_queries
    img_start, img_end = model.config.image_start_token_id, model.config.image_end_token_id
    video = tiny_media("video", frames=2)
    batch = processor(text="look <video> and <image> now", videos=[video], images=[tiny_media("image")])
    ids = batch["input_ids"][0].tolist()
    frame = [img_start] + [model.config.video_token_id] * n + [img_end]
    image = [img_start] + [model.config.image_token_id] * n + [img_end]
    text = "".join(map(str, ids))
    assert text.count("".join(map(str, frame * 2))) == 1 and text.count("".join(map(str, image))) == 1
    with torch.no_grad():
        video_tokens = model.get_video_features(batch["pixel_values_videos"])[0]
        as_images = model.get_image_features(batch["pixel_values_videos"][0])
        out = model(**batch)
    assert video_tokens.shape == (2 * n, model.config.text_config.hidden_size)
    torch.testing.assert_close(video_tokens, as_images.flatten(0, 1))  # every frame is encoded as an image
    assert out.logits.shape[1] == len(ids)


def test_grounding_text_round_trips_in_qwen_vl_markers():
    text = format_grounding("the dog", (32, 24, 160, 120), (320, 240), style="qwen_vl")
    assert text == "<ref>the dog</ref><box>(100,100),(500,500)</box>"
    (box,) = parse_boxes(f"It is {text}.", (320, 240), style="qwen_vl")
    assert box.label == "the dog" and box.xyxy == (32.0, 24.0, 160.0, 120.0)
    with pytest.raises(ValueError, match="style must be one of"):
        parse_boxes(text, (320, 240), style="qwen3")


def test_sincos_table_is_the_one_the_release_stores():
    """The resampler's fixed table (MAE recipe: first half column, second half row) equals the release's saved
    ``attn_pool.pos_embed`` up to its bfloat16 rounding."""
    from safetensors.torch import load_file

    stored = load_file(str(fixture_case("qwen_vl", "chat") / "original" / "model.safetensors"))
    pos = stored["transformer.visual.attn_pool.pos_embed"]
    ours = sincos_2d_table(pos.shape[1], 16)
    assert torch.equal(ours.to(torch.bfloat16), pos)
    grid = ours.view(16, 16, -1)
    assert torch.equal(grid[0, :, : pos.shape[1] // 2], grid[5, :, : pos.shape[1] // 2])  # first half: column only
    assert torch.equal(grid[:, 0, pos.shape[1] // 2 :], grid[:, 7, pos.shape[1] // 2 :])  # second half: row only


def test_dynamic_ntk_and_logn_past_seq_length_with_left_padding():
    """With the options active (seq_length 8), a left-padded batch still equals each sample alone: alpha is chosen
    per row from its real length and logN follows each row's positions."""
    model, processor = build_tiny("qwen_vl", seed=0, text_config={"seq_length": 8})
    model.eval()
    texts = ["describe <image> please now", "what is <image> in this picture frame here"]
    images = [tiny_media("image", 1), tiny_media("image", 2)]
    batch = processor(text=texts, images=images, padding_side="left")
    lengths = batch["attention_mask"].sum(1).tolist()
    assert lengths[0] != lengths[1] and {qwen_ntk_alpha(n, 8) for n in lengths} != {1}
    with torch.no_grad():
        together = model.generate(**batch, max_new_tokens=3, do_sample=False)[:, batch["input_ids"].shape[1]:]
        for b in range(2):
            one = processor(text=texts[b], images=[images[b]])
            alone = model.generate(**one, max_new_tokens=3, do_sample=False)[:, one["input_ids"].shape[1]:]
            assert torch.equal(alone[0], together[b])
        ntk_off = model.config.text_config
        ntk_off.use_dynamic_ntk = ntk_off.use_logn_attn = False
        plain = model(**batch).logits
        ntk_off.use_dynamic_ntk = ntk_off.use_logn_attn = True
        assert not torch.allclose(plain, model(**batch).logits, atol=1e-4)


def test_bad_inputs_are_named(tiny):
    model, processor = tiny
    with pytest.raises(ValueError, match=r"square RGB images \(N, 3, S, S\)"):
        model.get_image_features(torch.zeros(1, 3, 28, 42))
    with pytest.raises(ValueError, match="pixel_values_videos must be"):
        model.get_video_features(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="must equal text_config.hidden_size"):
        type(model.config)(vision_config={"output_dim": 256}, text_config=model.config.text_config.to_dict())


def test_gradient_checkpointing_reaches_the_vision_blocks(tiny):
    model, processor = tiny
    batch = processor(text="see <image> here", images=[tiny_media("image")])
    model.train()

    def grads():
        model.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.vision_tower.named_parameters()}

    plain = grads()
    model.gradient_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in model.vision_tower.blocks)
    checkpointed = grads()
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, atol=1e-6, rtol=1e-5)


def test_qwen_vl_finetune_records_with_img_paths_in_the_text(tiny, tmp_path):
    """Qwen-VL's own fine-tuning data (finetune.py / README): the image path inside the text as
    ``Picture 1: <img>path</img>\\n``, roles user / assistant, grounding as <ref>/<box> text."""
    from hf_videollm.training.data import normalize_record

    _, processor = tiny
    record = {"id": "identity_0", "conversations": [
        {"from": "user", "value": "Picture 1: <img>imgs/a.jpg</img>\nWhere is the dog?"},
        {"from": "assistant", "value": "<ref>the dog</ref><box>(10,20),(300,400)</box>"},
    ]}
    messages = normalize_record(record, media_root=str(tmp_path))
    assert messages[0]["content"] == [{"type": "image", "image": str(tmp_path / "imgs" / "a.jpg")},
                                      {"type": "text", "text": "Where is the dog?"}]
    text = processor.apply_chat_template(messages)
    assert "<|im_start|>user\nPicture 1:<image>\nWhere is the dog?<|im_end|>\n" in text
    assert "<|im_start|>assistant\n<ref>the dog</ref><box>(10,20),(300,400)</box><|im_end|>\n" in text
    ids = processor.tokenizer(text.replace("<image>", ""), add_special_tokens=False)["input_ids"]
    assert set(_ids(processor, "<ref>", "</ref>", "<box>", "</box>")) <= set(ids)  # markers are special tokens
    plain = normalize_record({"conversations": [{"from": "human", "value": "write an <img> tag\nand </img>"}]})
    assert plain[0]["content"] == [{"type": "text", "text": "write an <img> tag\nand </img>"}]  # no path: text


def test_tokenizer_splits_digits_one_by_one_as_qwen(tmp_path):
    """Qwen's pre-tokenization takes single digits (``\\p{N}``; cl100k's takes up to three): with a merge for "20" in
    the ranks, "2048" stays four tokens, and "20" alone is one."""
    import base64

    from hf_videollm.conversion.qwen_vl import load_qwen_tokenizer

    ranks = [bytes([b]) for b in range(256)] + [b"20", b"48"]
    (tmp_path / "qwen.tiktoken").write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))
    tok = load_qwen_tokenizer(tmp_path)
    assert tok("2048", add_special_tokens=False)["input_ids"] == [ord("2"), ord("0"), ord("4"), ord("8")]
    assert tok("x 20", add_special_tokens=False)["input_ids"] == [ord("x"), ord(" "), ord("2"), ord("0")]
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 258
