"""The common suite: every registered model joins by adding a tiny builder to ``hf_videollm.tiny.TINY_BUILDERS``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hf_videollm
from hf_videollm.modeling.merge import MediaMismatchError
from hf_videollm.processors.base import ProcessorInputError
from hf_videollm.tiny import TINY_BUILDERS, build_tiny

MODELS = sorted(TINY_BUILDERS)


def _image(seed: int, h: int = 40, w: int = 52) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _video(seed: int, frames: int = 4, h: int = 32, w: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8)


def _inputs(processor, modalities, batch=1, seed=0, padding_side="left"):
    """A prompt per sample exercising every modality the model has (image, and video where supported)."""
    texts, images, videos = [], [], []
    for b in range(batch):
        parts = []
        if "image" in modalities:
            parts.append(processor.image_token)
            images.append(_image(seed + b))
        if "video" in modalities:
            parts.append(processor.video_token)
            videos.append(_video(seed + b))
        question = "what is shown" if b % 2 == 0 else "describe the video and the image in one word please"
        texts.append("USER: " + " ".join(parts) + f" {question} ASSISTANT:")
    return processor(text=texts, images=images or None, videos=videos or None, padding_side=padding_side)


@pytest.fixture(params=MODELS)
def tiny(request):
    model, processor = build_tiny(request.param, seed=0)
    model.eval()
    return request.param, model, processor


def test_forward_with_loss(tiny):
    name, model, processor = tiny
    batch = _inputs(processor, TINY_BUILDERS[name].modalities, batch=2)
    out = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.loss)
    for modality in TINY_BUILDERS[name].modalities:
        assert len(out.media_features[modality]) == 2


def test_backward_reaches_trainable_and_spares_frozen(tiny):
    name, model, processor = tiny
    model.train()
    parts = model.part_names()
    frozen = parts[0]  # the encoder of every model comes first
    model.set_trainable_parts([p for p in parts if p != frozen])
    batch = _inputs(processor, TINY_BUILDERS[name].modalities, batch=2)
    out = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    out.loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"trainable {pname} got no gradient"
        else:
            assert p.grad is None, f"frozen {pname} got a gradient"
            assert model.part_of_parameter(pname) == frozen
    summary = model.trainable_parameters_summary()
    assert frozen in summary and "all" in summary


def _generate(model, batch, **kw):
    return model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, **kw)


def test_generate_with_and_without_cache_equal(tiny):
    name, model, processor = tiny
    batch = _inputs(processor, TINY_BUILDERS[name].modalities)
    calls = {"n": 0}
    encoder = model.get_part_modules(model.part_names()[0])[0]
    handle = encoder.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        with_cache = _generate(model, batch, use_cache=True)
        encodes_with_cache = calls["n"]
        calls["n"] = 0
        without_cache = _generate(model, batch, use_cache=False)
        encodes_without_cache = calls["n"]
    finally:
        handle.remove()
    assert torch.equal(with_cache, without_cache)
    n_modalities = len(TINY_BUILDERS[name].modalities)
    assert encodes_with_cache == n_modalities  # media encoded once per modality, not once per step
    assert encodes_without_cache == n_modalities


def test_left_padded_batch_equals_single_samples(tiny):
    name, model, processor = tiny
    modalities = TINY_BUILDERS[name].modalities
    batch = _inputs(processor, modalities, batch=2, padding_side="left")
    assert (batch["attention_mask"] == 0).any(), "the two prompts should differ in length"
    together = _generate(model, batch)
    for b in range(2):
        single = _inputs(processor, modalities, batch=2, padding_side="left")
        texts_len = batch["input_ids"].shape[1]
        one = {k: v for k, v in single.items()}
        # Rebuild sample b alone (no padding).
        keep = one["attention_mask"][b].bool()
        one["input_ids"] = one["input_ids"][b : b + 1, keep]
        one["attention_mask"] = one["attention_mask"][b : b + 1, keep]
        for key in ("pixel_values", "pixel_values_videos"):
            if key in one:
                one[key] = one[key][b : b + 1]
        alone = _generate(model, one)
        assert torch.equal(alone[0, keep.sum() :], together[b, texts_len:]), f"sample {b} differs when batched"


def test_beam_search_and_num_return_sequences(tiny):
    name, model, processor = tiny
    batch = _inputs(processor, TINY_BUILDERS[name].modalities, batch=2)
    out = model.generate(**batch, max_new_tokens=4, num_beams=2, num_return_sequences=2, do_sample=False)
    assert out.shape[0] == 4
    # Each returned sequence keeps its own sample's prompt.
    assert torch.equal(out[0, : batch["input_ids"].shape[1]], batch["input_ids"][0])
    assert torch.equal(out[2, : batch["input_ids"].shape[1]], batch["input_ids"][1])


def test_save_load_round_trip_and_auto_in_fresh_process(tiny, tmp_path):
    name, model, processor = tiny
    batch = _inputs(processor, TINY_BUILDERS[name].modalities)
    with torch.no_grad():
        ref = model(**batch).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    torch.save(dict(batch), tmp_path / "batch.pt")
    torch.save(ref, tmp_path / "ref.pt")

    loaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, ref, atol=1e-6)
    reprocessed = type(processor).from_pretrained(tmp_path)
    assert torch.equal(_inputs(reprocessed, TINY_BUILDERS[name].modalities)["input_ids"], batch["input_ids"])

    script = textwrap.dedent(
        f"""
        import json, torch
        import hf_videollm  # registers the Auto classes
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
        d = {str(tmp_path)!r}
        model = AutoModelForImageTextToText.from_pretrained(d).eval()
        proc = AutoProcessor.from_pretrained(d)
        batch = torch.load(d + "/batch.pt", weights_only=True)
        with torch.no_grad():
            diff = (model(**batch).logits - torch.load(d + "/ref.pt", weights_only=True)).abs().max().item()
        print(json.dumps({{"model": type(model).__name__, "processor": type(proc).__name__,
                          "config": type(AutoConfig.from_pretrained(d)).__name__, "diff": diff}}))
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["model"] == type(model).__name__
    assert info["processor"] == type(processor).__name__
    assert info["diff"] < 1e-6


def test_model_types_do_not_collide_with_transformers():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    for entry in hf_videollm.MODELS.values():
        assert entry.config_class.model_type not in CONFIG_MAPPING_NAMES
        import transformers

        for cls in (entry.config_class, entry.model_class, entry.processor_class):
            assert not hasattr(transformers, cls.__name__), f"{cls.__name__} shadows a transformers class"


def test_eager_and_sdpa_agree_and_switch_at_runtime(tiny):
    name, model, processor = tiny
    batch = _inputs(processor, TINY_BUILDERS[name].modalities, batch=2)
    model.set_attn_implementation("eager")
    assert model.config.text_config._attn_implementation == "eager"
    assert model.config.vision_config._attn_implementation == "eager"
    with torch.no_grad():
        eager = model(**batch).logits
    model.set_attn_implementation("sdpa")
    assert model.config.text_config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = model(**batch).logits
    mask = batch["attention_mask"].bool()
    assert torch.allclose(eager[mask], sdpa[mask], atol=1e-5)


def test_flash_attention_request_is_refused_clearly_without_the_package(tiny):
    name, model, processor = tiny
    try:
        import flash_attn  # noqa: F401

        pytest.skip("flash-attn installed; the refusal path cannot be exercised")
    except ImportError:
        pass
    with pytest.raises((ImportError, ValueError)) as e:
        model.set_attn_implementation("flash_attention_2")
    assert "flash" in str(e.value).lower()


def test_4bit_load_quantizes_only_the_language_model(tiny, tmp_path):
    pytest.importorskip("bitsandbytes")
    name, model, processor = tiny
    model.save_pretrained(tmp_path)
    qc = type(model).default_quantization_config(compute_dtype=torch.float32, skip_modules=["language_model.model.layers.0.mlp"])
    assert "vision_tower" in qc.llm_int8_skip_modules and "lm_head" in qc.llm_int8_skip_modules
    q = type(model).from_pretrained(tmp_path, quantization_config=qc, dtype=torch.float32).eval()
    kinds = {n: type(m).__name__ for n, m in q.named_modules()}
    lm_4bit = [n for n, k in kinds.items() if k == "Linear4bit"]
    assert lm_4bit and all(n.startswith("language_model.") for n in lm_4bit)
    assert not any(n.startswith("language_model.model.layers.0.mlp") for n in lm_4bit)  # user skip extends defaults
    for part in q.part_names():
        if part != "language_model":
            for m in q.get_part_modules(part):
                assert not any(type(s).__name__ == "Linear4bit" for s in m.modules())
    # A user-given config without the defaults still keeps the towers unquantized.
    from transformers import BitsAndBytesConfig

    q2 = type(model).from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    )
    assert not any(type(s).__name__ == "Linear4bit" for s in q2.get_part_modules(q2.part_names()[0])[0].modules())
    batch = _inputs(processor, TINY_BUILDERS[name].modalities)
    with torch.no_grad():
        ref = model(**batch).logits
        out = q(**batch).logits
    assert out.shape == ref.shape and torch.isfinite(out).all()
    # 4-bit noise on a random tiny model is large; the outputs must still be clearly related.
    assert torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1] > 0.9


def test_lora_targets_only_the_language_model_by_default(tiny):
    peft = pytest.importorskip("peft")
    from hf_videollm.training import default_lora_config

    name, model, processor = tiny
    cfg = default_lora_config(model, r=4, alpha=8)
    pm = peft.get_peft_model(model, cfg)
    lora = [n for n, _ in pm.named_modules() if n.endswith("lora_A")]
    assert lora and all(".language_model." in n for n in lora)
    assert not any("lm_head" in n for n in lora)
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_bad_inputs_raise_clear_errors(tiny):
    name, model, processor = tiny
    mods = TINY_BUILDERS[name].modalities
    # more placeholders than media, per the processor
    with pytest.raises(ProcessorInputError, match="placeholder"):
        processor(text=[f"{processor.image_token} {processor.image_token} hi"], images=[_image(0)])
    with pytest.raises(ProcessorInputError, match="1 image"):
        processor(text=["no placeholder here"], images=[_image(0)])
    # placeholder ids that do not match the pixels (e.g. truncated or hand-made input_ids)
    batch = _inputs(processor, mods)
    ids = batch["input_ids"].clone()
    first = (ids[0] == processor.image_token_id).nonzero()[0, 0]
    ids[0, first] = processor.tokenizer.eos_token_id
    with pytest.raises(MediaMismatchError, match="sample 0"):
        model(**{**batch, "input_ids": ids})
    with pytest.raises(MediaMismatchError):
        model.generate(**{**batch, "input_ids": ids}, max_new_tokens=2)
    # over the visual-token budget
    processor.max_visual_tokens = 1
    with pytest.raises(ProcessorInputError, match="budget"):
        _inputs(processor, mods)
    processor.max_visual_tokens = None
    # extreme aspect ratio
    with pytest.raises(ValueError, match="aspect"):
        processor(text=[processor.image_token], images=[_image(0, h=2, w=600)])
    # max_length that would cut a media span
    with pytest.raises(ProcessorInputError, match="max_length"):
        processor(text=[processor.image_token + " hi"], images=[_image(0)], max_length=3, truncation=True)


def test_literal_placeholder_typed_by_user_is_text(tiny):
    name, model, processor = tiny
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"what does {processor.image_token} mean"}]}]
    batch = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, images=[_image(1)])
    n_img = (batch["input_ids"] == processor.image_token_id).sum().item()
    assert n_img == processor._process_images([_image(1)])[1][0]  # exactly one image's tokens
    # The caller may opt in to treating typed placeholders as placeholders.
    with pytest.raises(ProcessorInputError):
        processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, images=[_image(1)],
                                      placeholders_in_text=True)
