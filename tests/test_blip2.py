"""BLIP-2 / InstructBLIP behaviour beyond the fixtures: processor (prefix placement, typed placeholders, the
Q-Former's tokenizer saved and loaded), video (frames through the Q-Former in time order, any frame count), errors."""

from __future__ import annotations

import pytest
import torch

from hf_videollm.modeling.qformer import QFormerBridge, qformer_config
from hf_videollm.tiny import build_tiny, tiny_media


@pytest.fixture(scope="module")
def instruct():
    model, processor = build_tiny("instructblip", seed=0)
    return model.eval(), processor


def test_media_tokens_go_before_bos_wherever_the_placeholder_stands(instruct):
    _, processor = instruct
    a = processor(text="what is shown <image>", images=[tiny_media("image")])
    b = processor(text="<image>what is shown", images=[tiny_media("image")])
    n = processor.num_query_tokens
    assert a["input_ids"][0, :n].tolist() == [processor.image_token_id] * n
    assert a["input_ids"][0, n] == processor.tokenizer.bos_token_id
    assert torch.equal(a["input_ids"], b["input_ids"])


def test_typed_placeholder_in_chat_text_is_text_for_both_tokenizers(instruct):
    _, processor = instruct
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what does <image> mean"}]}]
    out = processor.apply_chat_template(messages, tokenize=True, images=[tiny_media("image")])
    ids = out["input_ids"][0]
    assert (ids == processor.image_token_id).sum() == processor.num_query_tokens  # one image only
    q = processor.qformer_tokenizer.convert_ids_to_tokens(out["qformer_input_ids"][0])
    assert "image" in q and "<" in q  # the typed text reaches the Q-Former as text


def test_qformer_instruction_excludes_the_answer(instruct):
    _, processor = instruct
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red circle"}]},
    ]
    text = processor.apply_chat_template(messages, mark_generation=True)
    out = processor(text=[text], images=[tiny_media("image")], return_labels=True)
    q = processor.qformer_tokenizer.decode(out["qformer_input_ids"][0], skip_special_tokens=True)
    assert q == "what color"


def test_processor_saves_and_loads_the_qformer_tokenizer(instruct, tmp_path):
    _, processor = instruct
    processor.save_pretrained(tmp_path)
    loaded = type(processor).from_pretrained(tmp_path)
    texts = ["<image> describe the red circle", "<image> how many"]
    images = [tiny_media("image", 0), tiny_media("image", 1)]
    a, b = processor(text=texts, images=images), loaded(text=texts, images=images)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.qformer_tokenizer.bos_token == "[DEC]"


def test_video_frames_each_through_the_qformer_in_time_order(instruct):
    model, processor = instruct
    video = tiny_media("video", frames=3)
    out = processor(text="<video> describe the video", videos=[video])
    n = processor.num_query_tokens
    assert (out["input_ids"][0] == processor.video_token_id).sum() == 3 * n
    pixels = out["pixel_values_videos"]
    with torch.no_grad():
        tokens = model.get_video_features(pixels, out["qformer_video_input_ids"], out["qformer_video_attention_mask"])[0]
        for t in range(3):  # frame t alone, with the same instruction == the t-th block of the video's tokens
            frame = model.get_image_features(pixels[0, t:t + 1], out["qformer_video_input_ids"],
                                             out["qformer_video_attention_mask"])[0]
            torch.testing.assert_close(tokens[t * n:(t + 1) * n], frame, atol=1e-5, rtol=1e-5)
        logits = model(**out).logits
    assert logits.shape[1] == out["input_ids"].shape[1]


def test_videos_of_different_lengths_in_one_batch(instruct):
    model, processor = instruct
    out = processor(text=["<video> describe", "<video> how many"],
                    videos=[tiny_media("video", frames=2), tiny_media("video", 1, frames=5)])
    with torch.no_grad():
        feats = model.get_video_features(out["pixel_values_videos"], out["qformer_video_input_ids"],
                                         out["qformer_video_attention_mask"])
        model(**out)
    assert [f.shape[0] for f in feats] == [2 * processor.num_query_tokens, 5 * processor.num_query_tokens]


def test_instructblip_without_instruction_is_a_clear_error(instruct):
    model, _ = instruct
    with pytest.raises(ValueError, match="qformer_input_ids"):
        model.get_image_features(torch.zeros(1, 3, 28, 28))


def test_query_only_qformer_refuses_text():
    bridge = QFormerBridge(qformer_config(False, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, encoder_hidden_size=16), 4)
    with pytest.raises(ValueError, match="reads no text"):
        bridge(torch.zeros(1, 5, 16), input_ids=torch.ones(1, 3, dtype=torch.long))
    assert bridge.query_output(torch.zeros(2, 5, 16)).shape == (2, 4, 32)


def test_ln_vision_epsilon_is_the_originals():
    model, _ = build_tiny("blip2", seed=0)
    assert model.vision_tower.post_layernorm.eps == 1e-5  # LAVIS ln_vision (torch default), not the ViT's 1e-6
    assert model.vision_tower.encoder.layers[0].layer_norm1.eps == 1e-6


def test_training_collator_batches_the_qformer_instruction(instruct):
    """Separately encoded samples (training collator) -> per-item Q-Former rows right-padded, same as the processor
    batching them at once; the batch trains."""
    from hf_videollm.training.collator import VideoLLMCollator

    model, processor = instruct
    samples = []
    for i, q in enumerate(["what color", "describe the image in one word please"]):
        samples.append({"index": i, "messages": [
            {"role": "user", "content": [{"type": "image", "image": tiny_media("image", i)}, {"type": "text", "text": q}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        ]})
    batch = VideoLLMCollator(processor)(samples)
    ids, mask = batch["qformer_input_ids"], batch["qformer_attention_mask"]
    assert ids.shape[0] == 2 and mask[0].sum() < mask[1].sum() and mask[0, -1] == 0
    for i, q in enumerate(["what color", "describe the image in one word please"]):
        ref = processor.qformer_tokenizer(q)["input_ids"]
        assert ids[i, : len(ref)].tolist() == ref
    out = model(**batch)
    assert torch.isfinite(out.loss)


def test_transformers_instructblipvideo_layout(tmp_path):
    """transformers' InstructBlipVideoForConditionalGeneration (same weights as InstructBLIP, video placeholder) ->
    ours: per-frame features, logits and greedy tokens equal; and ours takes any frame count."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import InstructBlipVideoConfig, InstructBlipVideoForConditionalGeneration, PreTrainedTokenizerFast

    from hf_videollm.conversion import convert
    from hf_videollm.modeling.blip2 import VideoLLMInstructBlipForConditionalGeneration

    video_id, nq, frames = 99, 4, 4
    cfg = InstructBlipVideoConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=14),
        qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            encoder_hidden_size=32, vocab_size=60, max_position_embeddings=32),
        text_config=dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=100, tie_word_embeddings=False),
        num_query_tokens=nq, video_token_index=video_id,
    )
    torch.manual_seed(0)
    theirs = InstructBlipVideoForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.1)
    theirs.save_pretrained(tmp_path / "ref")
    vocab = {f"w{i}": i for i in range(99)}
    vocab["<video>"] = video_id
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", bos_token="w1", eos_token="w2", pad_token="w0")
    fast.save_pretrained(tmp_path / "ref")
    fast.save_pretrained(tmp_path / "ref" / "qformer_tokenizer")
    convert("instructblip", tmp_path / "ref", tmp_path / "ours", source_format="transformers", progress=False)
    ours = VideoLLMInstructBlipForConditionalGeneration.from_pretrained(tmp_path / "ours", attn_implementation="eager").eval()
    theirs.set_attn_implementation("eager")
    assert ours.config.video_token_id == video_id
    pixels = torch.randn(1, frames, 3, 28, 28)
    q = torch.tensor([[2, 7, 9, 11, 3]])
    ids = torch.cat([torch.full((1, nq * frames), video_id), torch.tensor([[1, 5, 6, 7, 8]])], 1)
    with torch.no_grad():
        ref_feats = theirs.get_video_features(pixels, q, torch.ones_like(q)).pooler_output
        feats = ours.get_video_features(pixels, q, torch.ones_like(q))
        torch.testing.assert_close(feats[0], ref_feats[0], atol=1e-5, rtol=1e-5)
        a = ours(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels,
                 qformer_video_input_ids=q, qformer_video_attention_mask=torch.ones_like(q)).logits
        b = theirs(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, qformer_input_ids=q,
                   qformer_attention_mask=torch.ones_like(q)).logits
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        # any frame count: 6 frames -> 6 * nq tokens
        six = ours.get_video_features(torch.randn(1, 6, 3, 28, 28), q, torch.ones_like(q))
    assert six[0].shape[0] == 6 * nq
