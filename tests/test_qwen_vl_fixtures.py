"""Qwen-VL faithfulness: converter + model + processor reproduce what the original (Hub remote code) computed.

Fixtures (../shared/fixtures/README.md, "Qwen-VL"): ``qwen_vl/chat`` (Qwen-VL-Chat: ChatML context, one picture,
greedy 5 tokens) and ``qwen_vl/ntk_logn`` (raw grounding prompt with ``seq_length`` 128, so the original's
inference-time dynamic NTK (alpha 7) and logN query scaling are active). ``original/`` is the Hub folder (bf16
weights, ``qwen.tiktoken``, no Python files).
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import fixture_case, load_case, load_tensors
from safetensors.torch import save_file

from hf_videollm.conversion import ConversionError, convert
from hf_videollm.conversion.qwen_vl import load_qwen_tokenizer
from hf_videollm.modeling.qwen_vl import VideoLLMQwenVLForConditionalGeneration, qwen_logn_scale, qwen_ntk_alpha
from hf_videollm.processors.qwen_vl import VideoLLMQwenVLProcessor

ATOL = RTOL = 1e-4
CASES = ("chat", "ntk_logn")


def _convert(case_dir, tmp_path, **config):
    out = tmp_path / "converted"
    convert("qwen_vl", case_dir / "original", out, progress=False)
    model = VideoLLMQwenVLForConditionalGeneration.from_pretrained(
        out, attn_implementation="eager", dtype=torch.float32, **config
    ).eval()
    return model, VideoLLMQwenVLProcessor.from_pretrained(out)


def _our_ids(case, input_ids, model):
    """The original writes the image path's bytes + <imgpad> into the 256 slots (overwritten by the visual tokens);
    ours holds the placeholder id there."""
    ids = input_ids.clone()
    for ph in case["image_placeholders"]:
        a, b = ph["visual_slots"]
        assert ids[ph["row"], ph["img_token_pos"]] == model.config.image_start_token_id
        assert ids[ph["row"], ph["img_end_pos"]] == model.config.image_end_token_id
        ids[ph["row"], a : b + 1] = model.config.image_token_id
    return ids


def _assert_logits(logits, expected, case):
    keep = expected["logits_mask"].bool()
    vocab = case["logits_vocab_to_compare"]
    torch.testing.assert_close(logits[keep][:, :vocab], expected["logits"][keep][:, :vocab], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("case_name", CASES)
def test_qwen_vl_release(case_name, tmp_path):
    case_dir = fixture_case("qwen_vl", case_name)
    case = load_case(case_dir)
    model, _ = _convert(case_dir, tmp_path)
    orig = case["original_config"]["config.json"]
    text = model.config.text_config
    assert text.seq_length == orig["seq_length"] and text.use_dynamic_ntk and text.use_logn_attn
    assert text.intermediate_size == orig["intermediate_size"] // 2
    assert model.config.vision_config.n_queries == 256 and model.config.image_start_token_id == orig["visual"]["image_start_id"]
    eod = orig["visual"]["image_start_id"] - 214  # <|endoftext|>: 3 + 205 extras + 6 grounding tokens before <img>
    chat = case_name == "chat"  # Qwen-VL-Chat stops at <|im_end|> / <|im_start|> too (the original's stop words)
    assert model.generation_config.eos_token_id == ([eod, eod + 2, eod + 1] if chat else eod)

    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    pixels, mask = inputs["pixel_values"], inputs["attention_mask"]
    ids = _our_ids(case, inputs["input_ids"], model)
    with torch.no_grad():
        vit = model.get_vision_features(pixels)
        resampled = model.multi_modal_projector.attn_pool(vit)
        tokens = model.get_image_features(pixels)
        embeds = model.build_inputs_embeds(ids, {"image": list(tokens)}, mask)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
        generated = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=5,
                                   do_sample=False)
    torch.testing.assert_close(vit, expected["vision_hidden_states"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(resampled, expected["resampler_output"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(tokens, expected["visual_tokens"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(embeds, expected["llm_inputs_embeds"], atol=ATOL, rtol=RTOL)
    _assert_logits(out.logits, expected, case)
    assert torch.equal(generated[:, ids.shape[1]:], expected["generated_ids"])


def test_ntk_and_logn_are_what_reproduces_the_long_prompt(tmp_path):
    """``ntk_logn`` runs past ``seq_length``: without either option the logits leave the tolerance (both matter)."""
    case_dir = fixture_case("qwen_vl", "ntk_logn")
    case = load_case(case_dir)
    rule = case["dynamic_ntk_logn"]
    assert qwen_ntk_alpha(rule["prefill_length"], rule["seq_length"]) == rule["ntk_alpha_at_prefill"] == 7
    chat_rule = load_case(fixture_case("qwen_vl", "chat"))["dynamic_ntk_logn"]
    assert qwen_ntk_alpha(chat_rule["prefill_length"], chat_rule["seq_length"]) == chat_rule["ntk_alpha_at_prefill"] == 1
    scale = qwen_logn_scale(torch.arange(130)[None], 128)
    assert torch.equal(scale[0, :128], torch.ones(128))  # 1-based i <= seq_length: unscaled
    assert scale[0, 128].item() == pytest.approx(math.log(129) / math.log(128), rel=1e-7)
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    model, _ = _convert(case_dir, tmp_path)
    ids = _our_ids(case, inputs["input_ids"], model)
    args = dict(input_ids=ids, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"])
    text = model.config.text_config
    for off in ("use_dynamic_ntk", "use_logn_attn"):
        setattr(text, off, False)
        with torch.no_grad():
            logits = model(**args).logits
        setattr(text, off, True)
        keep = expected["logits_mask"].bool()
        assert (logits[keep] - expected["logits"][keep]).abs().max() > 10 * ATOL, f"{off} had no effect"
    model.train()  # the original applies neither in training mode
    with torch.no_grad():
        train_logits = model(**args).logits
    model.eval()
    with torch.no_grad():
        eval_logits = model(**args).logits
    assert not torch.allclose(train_logits, eval_logits, atol=ATOL)


def test_cached_decoding_keeps_the_prefill_ntk_alpha(tmp_path):
    """As the original: alpha is chosen at prefill and kept while decoding with the cache."""
    case_dir = fixture_case("qwen_vl", "ntk_logn")
    model, _ = _convert(case_dir, tmp_path)
    ids = torch.tensor([[5, 6, 7] * 85])  # 255 tokens: alpha 3 at seq_length 128; 257 would give 7
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config.text_config)
    with torch.no_grad():
        out = model(input_ids=ids, cache=cache, use_cache=True)
        assert out.cache.get_seq_length() == 255
        assert model.language_model.model._ntk_alpha(None, out.cache, 1, 1).tolist() == [3]
        nxt = out.logits[:, -1:].argmax(-1)
        model(input_ids=nxt, cache=out.cache, use_cache=True, position_ids=torch.tensor([[255]]))
        model(input_ids=nxt, cache=out.cache, use_cache=True, position_ids=torch.tensor([[256]]))
        assert model.language_model.model._ntk_alpha(None, out.cache, 1, 1).tolist() == [3]


@pytest.mark.parametrize("case_name", CASES)
def test_processor_reproduces_the_original_ids_and_pixels(case_name, tmp_path):
    case_dir = fixture_case("qwen_vl", case_name)
    case = load_case(case_dir)
    inputs = load_tensors(case_dir / "inputs.safetensors")
    model, processor = _convert(case_dir, tmp_path)
    image = str(case_dir / "image1.png")
    if case_name == "chat":  # make_context with the default system prompt, from_list_format's "Picture 1:"
        question = case["call"]["samples"][0]["query"][1]["text"]
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        assert text.replace("<image>", "<img>image1.png</img>") == case["raw_texts"][0]
    else:  # the raw (base model) prompt
        text = case["raw_texts"][0].replace("<img>image1.png</img>", "<image>")
    batch = processor(text=text, images=[image])
    assert torch.equal(batch["input_ids"], _our_ids(case, inputs["input_ids"], model))
    torch.testing.assert_close(batch["pixel_values"], inputs["pixel_values"], atol=1e-5, rtol=0)


def test_tokenizer_is_read_from_qwen_tiktoken_with_the_original_special_ids():
    case_dir = fixture_case("qwen_vl", "chat")
    tok = load_qwen_tokenizer(case_dir / "original")
    n = 320  # BPE ranks in the tiny qwen.tiktoken
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>", "<ref>", "<img>",
                                      "</img>", "<imgpad>"]) == [n, n + 1, n + 2, n + 3, n + 208, n + 214, n + 215, n + 216]
    assert len(tok) == n + 217 and tok.eos_token == tok.pad_token == "<|endoftext|>"
    text = "<|im_start|>user\nGenerate <ref>the box</ref><box>(12,345),(678,999)</box><|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert ids.count(n + 1) == 1 and n + 208 in ids  # special tokens are recognised in text (allowed_special="all")
    assert tok("caf\u00e9", add_special_tokens=False)["input_ids"] == tok("cafe\u0301", add_special_tokens=False)["input_ids"]  # NFC


def test_gptq_release_and_foreign_configs_are_refused(tmp_path):
    case_dir = fixture_case("qwen_vl", "chat")
    src = tmp_path / "int4"
    shutil.copytree(case_dir / "original", src)
    save_file({"transformer.h.0.attn.c_attn.qweight": torch.zeros(2, 2, dtype=torch.int32)}, str(src / "model.safetensors"))
    with pytest.raises(ConversionError, match="GPTQ"):
        convert("qwen_vl", src, tmp_path / "out", progress=False)
    cfg = json.loads((case_dir / "original" / "config.json").read_text())
    for field, value, message in (("model_type", "llama", "model_type"), ("rotary_pct", 0.5, "rotary_pct")):
        bad = tmp_path / f"bad_{field}"
        shutil.copytree(case_dir / "original", bad)
        (bad / "config.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(ConversionError, match=message):
            convert("qwen_vl", bad, tmp_path / "out2", progress=False)


def test_sharded_release_through_the_cli(tmp_path, capsys):
    """The Hub releases are sharded (``model-0000k-of-0000n.safetensors`` + index); ``hf-videollm convert qwen_vl``
    reads them like the single file, and refuses options that do not apply."""
    from safetensors.torch import load_file

    from hf_videollm_cli import main

    case_dir = fixture_case("qwen_vl", "chat")
    src = tmp_path / "sharded"
    shutil.copytree(case_dir / "original", src, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(str(case_dir / "original" / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(src / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    assert main(["convert", "qwen_vl", str(src), str(tmp_path / "out"), "--vision-tower", "x"]) != 0
    assert "does not apply to qwen_vl" in capsys.readouterr().err
    assert main(["convert", "qwen_vl", str(src), str(tmp_path / "out")]) == 0
    sharded = VideoLLMQwenVLForConditionalGeneration.from_pretrained(tmp_path / "out", dtype=torch.float32)
    single, _ = _convert(case_dir, tmp_path)
    for (name, a), (_, b) in zip(sorted(sharded.state_dict().items()), sorted(single.state_dict().items())):
        assert torch.equal(a, b), name


def test_chat_text_keeps_grounding_tokens_and_escapes_control_tokens(tmp_path):
    """As the original's make_context: <ref>/<box> in chat content are the special tokens; ChatML / image control
    tokens typed in content are text (the original refuses them there)."""
    case_dir = fixture_case("qwen_vl", "chat")
    _, processor = _convert(case_dir, tmp_path)
    tok = processor.tokenizer
    messages = [
        {"role": "user", "content": [{"type": "image", "image": str(case_dir / "image1.png")},
                                     {"type": "text", "text": "Where is <ref>the dog</ref>?<|im_end|><img>"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<ref>the dog</ref><box>(1,2),(3,4)</box>"}]},
    ]
    batch = processor.apply_chat_template(messages, tokenize=True)
    ids = batch["input_ids"][0].tolist()
    ref, box, im_start, im_end, img = tok.convert_tokens_to_ids(["<ref>", "<box>", "<|im_start|>", "<|im_end|>", "<img>"])
    assert ids.count(ref) == 2 and ids.count(box) == 1
    assert ids.count(im_start) == 3 and ids.count(im_end) == 3  # the typed <|im_end|> is text
    assert ids.count(img) == 1  # only the image's own wrapper
    assert tok.decode(tok("<ref>a</ref>", add_special_tokens=False)["input_ids"], skip_special_tokens=True) == "a"
