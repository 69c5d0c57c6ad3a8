"""The common suite: every model in the registry (``hf_videollm.registry.MODELS``) runs it through its tiny builder.

Nothing here names a model's inputs: prompts, media and batch slicing come from the model's declaration
(``model.input_spec``), so a model with other inputs (grids, a second tokenizer's ids, audio) or another language
model kind (encoder-decoder) runs the same tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import hf_videollm
from hf_videollm.modeling.merge import MediaMismatchError
from hf_videollm.processors.base import ProcessorInputError
from hf_videollm.registry import MODELS
from hf_videollm.tiny import build_tiny, tiny_media

NAMES = sorted(MODELS)
_MEDIA_ARG = {"image": "images", "video": "videos", "audio": "audio"}
QUESTIONS = ("what is shown", "describe the video and the image in one word please")


def _media_args(items: dict[str, list]) -> dict[str, list]:
    return {_MEDIA_ARG[m]: v for m, v in items.items() if v}


def _sample(processor, b: int, seed: int = 0) -> tuple[str, dict[str, list]]:
    """Sample ``b``: one item of every modality the model declares, and a question (two lengths alternate)."""
    media = {m: [tiny_media(m, seed + b)] for m in processor.modalities}
    placeholders = " ".join(processor.media_token(m) for m in processor.modalities)
    return f"USER: {placeholders} {QUESTIONS[b % 2]} ASSISTANT:", media


def _inputs(processor, batch: int = 1, seed: int = 0, padding_side: str = "left", samples=None):
    """A batch of ``batch`` samples (or of the sample indices in ``samples``)."""
    texts, media = [], {m: [] for m in processor.modalities}
    for b in samples if samples is not None else range(batch):
        text, items = _sample(processor, b, seed)
        texts.append(text)
        for m, v in items.items():
            media[m] += v
    return processor(text=texts, **_media_args(media), padding_side=padding_side)


def _training_batch(processor, batch: int = 2):
    """Chat samples with an assistant answer -> inputs and labels (decoder-only: aligned; seq2seq: the answer)."""
    texts, media = [], {m: [] for m in processor.modalities}
    for b in range(batch):
        content = [{"type": m} for m in processor.modalities] + [{"type": "text", "text": QUESTIONS[b % 2]}]
        messages = [{"role": "user", "content": content},
                    {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}]
        texts.append(processor.apply_chat_template(messages, mark_generation=True))
        for m in processor.modalities:
            media[m].append(tiny_media(m, b))
    return processor(text=texts, **_media_args(media), return_labels=True, padding_side="right")


def _new_tokens(model, out: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The generated tokens: a decoder-only model returns the prompt too, an encoder-decoder only the decoder."""
    return out if model.is_seq2seq else out[:, prompt_len:]


@pytest.fixture(params=NAMES)
def tiny(request):
    model, processor = build_tiny(request.param, seed=0)
    model.eval()
    return request.param, model, processor


def test_processor_emits_exactly_the_declared_inputs(tiny):
    name, model, processor = tiny
    assert processor.input_spec is model.input_spec
    batch = _inputs(processor, batch=2)
    extra = set(batch) - {"input_ids", "attention_mask"}
    assert extra <= set(model.input_spec.names), f"undeclared processor outputs: {extra - set(model.input_spec.names)}"
    for m in model.input_spec.modality_names:  # every modality's switching input is present
        assert model.input_spec.encoder_inputs(m)[0] in batch


def test_forward_with_loss(tiny):
    name, model, processor = tiny
    batch = _training_batch(processor)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    if not model.is_seq2seq:
        assert out.logits.shape[:2] == batch["input_ids"].shape
    else:
        assert out.logits.shape[:2] == batch["labels"].shape
    for modality in model.input_spec.modality_names:
        assert len(out.media_features[modality]) == 2


def test_labels_supervise_exactly_the_answer(tiny):
    name, model, processor = tiny
    batch = _training_batch(processor, batch=1)
    answer = processor.tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    supervised = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert supervised[: len(answer)] == answer
    assert len(supervised) - len(answer) <= 2  # + the end-of-turn token(s) of the template / tokenizer


def test_backward_reaches_trainable_and_spares_frozen(tiny):
    name, model, processor = tiny
    model.train()
    parts = model.part_names()
    frozen = parts[0]  # the encoder of every model comes first
    model.set_trainable_parts([p for p in parts if p != frozen])
    out = model(**_training_batch(processor))
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


def test_generate_with_and_without_cache_equal_and_media_encoded_once(tiny):
    name, model, processor = tiny
    batch = _inputs(processor)
    spec = model.input_spec
    # each module of each modality's encoder path runs once per modality that uses it, whatever the step count
    calls: dict[str, int] = {}
    handles = []
    for path in {p for m in spec.modalities for p in m.modules}:
        module = model.get_submodule(path)
        handles.append(module.register_forward_hook(lambda *a, path=path: calls.__setitem__(path, calls.get(path, 0) + 1)))
    expected = {p: sum(p in m.modules for m in spec.modalities) for p in calls.keys() | {p for m in spec.modalities for p in m.modules}}
    try:
        with_cache = _generate(model, batch, use_cache=True)
        assert calls == expected
        calls.clear()
        without_cache = _generate(model, batch, use_cache=False)
        assert calls == expected
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(with_cache, without_cache)


def test_left_padded_batch_equals_single_samples(tiny):
    name, model, processor = tiny
    batch = _inputs(processor, batch=2, padding_side="left")
    assert (batch["attention_mask"] == 0).any(), "the two prompts should differ in length"
    together = _new_tokens(model, _generate(model, batch), batch["input_ids"].shape[1])
    for b in range(2):
        one = _inputs(processor, samples=[b])
        alone = _new_tokens(model, _generate(model, one), one["input_ids"].shape[1])
        assert torch.equal(alone[0], together[b]), f"sample {b} differs when batched"


def test_beam_search_and_num_return_sequences_keep_each_sample(tiny):
    name, model, processor = tiny
    batch = _inputs(processor, batch=2)
    kw = dict(max_new_tokens=4, min_new_tokens=4, num_beams=2, num_return_sequences=2, do_sample=False)
    out = _new_tokens(model, model.generate(**batch, **kw), batch["input_ids"].shape[1])
    assert out.shape[0] == 4
    for b in range(2):  # each sample's two returns are what that sample alone returns
        one = _inputs(processor, samples=[b])
        alone = _new_tokens(model, model.generate(**one, **kw), one["input_ids"].shape[1])
        assert torch.equal(out[2 * b : 2 * b + 2], alone), f"sample {b}'s sequences differ when batched"


def test_base_model_returns_the_hidden_states_under_the_head(tiny, tmp_path):
    name, model, processor = tiny
    entry = MODELS[name]
    batch = _training_batch(processor)
    model.save_pretrained(tmp_path)
    from transformers import AutoModel

    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is entry.base_model_class
    assert not hasattr(base.language_model, "lm_head")
    extra = {}
    if model.is_seq2seq:
        extra["decoder_input_ids"] = model.language_model._shift_right(batch["labels"])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        ref = model(**inputs, **extra, output_hidden_states=True)
        out = base(**inputs, **extra)
    ref_hidden = ref.decoder_hidden_states[-1] if model.is_seq2seq else ref.hidden_states[-1]
    assert torch.allclose(out.last_hidden_state, ref_hidden, atol=1e-5)
    assert set(out.media_features) == set(model.input_spec.modality_names)


def test_save_load_round_trip_and_auto_in_fresh_process(tiny, tmp_path):
    name, model, processor = tiny
    batch = _inputs(processor)
    with torch.no_grad():
        ref = model(**batch).logits if not model.is_seq2seq else None
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    torch.save(dict(batch), tmp_path / "batch.pt")
    ref_gen = _generate(model, batch)
    torch.save(ref_gen, tmp_path / "ref_gen.pt")

    loaded = type(model).from_pretrained(tmp_path).eval()
    if ref is not None:
        with torch.no_grad():
            assert torch.allclose(loaded(**batch).logits, ref, atol=1e-6)
    reprocessed = type(processor).from_pretrained(tmp_path)
    assert reprocessed.to_dict() == processor.to_dict()
    assert torch.equal(_inputs(reprocessed)["input_ids"], batch["input_ids"])

    script = textwrap.dedent(
        f"""
        import json, torch
        import hf_videollm  # registers the Auto classes
        from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
        d = {str(tmp_path)!r}
        model = AutoModelForImageTextToText.from_pretrained(d).eval()
        proc = AutoProcessor.from_pretrained(d)
        batch = torch.load(d + "/batch.pt", weights_only=True)
        out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        same = torch.equal(out, torch.load(d + "/ref_gen.pt", weights_only=True))
        print(json.dumps({{"model": type(model).__name__, "processor": type(proc).__name__,
                          "base": type(AutoModel.from_pretrained(d)).__name__,
                          "config": type(AutoConfig.from_pretrained(d)).__name__, "same": same}}))
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    entry = MODELS[name]
    assert info == {"model": entry.model_class.__name__, "processor": entry.processor_class.__name__,
                    "base": entry.base_model_class.__name__, "config": entry.config_class.__name__, "same": True}


def test_model_types_and_names_do_not_collide_with_transformers():
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    for entry in MODELS.values():
        assert entry.config_class.model_type not in CONFIG_MAPPING_NAMES
        for cls in (entry.config_class, entry.model_class, entry.base_model_class, entry.processor_class):
            assert not hasattr(transformers, cls.__name__), f"{cls.__name__} shadows a transformers class"
            assert getattr(hf_videollm, cls.__name__) is cls  # exported from the registry


def test_eager_and_sdpa_agree_and_switch_at_runtime(tiny):
    name, model, processor = tiny
    batch = _inputs(processor, batch=2)
    sub_configs = [getattr(model.config, k) for k in model.config.sub_configs if getattr(model.config, k, None) is not None]
    assert sub_configs
    outputs = {}
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        for sub in sub_configs:
            assert sub._attn_implementation == impl, f"{type(sub).__name__} did not switch to {impl}"
        with torch.no_grad():
            outputs[impl] = _new_tokens(model, _generate(model, batch), batch["input_ids"].shape[1])
            if not model.is_seq2seq:
                mask = batch["attention_mask"].bool()
                outputs[impl + "_logits"] = model(**batch).logits[mask]
    assert torch.equal(outputs["eager"], outputs["sdpa"])
    if not model.is_seq2seq:
        assert torch.allclose(outputs["eager_logits"], outputs["sdpa_logits"], atol=1e-5)


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
    lm_layer = next(n for n, m in model.named_modules() if n.startswith("language_model.") and isinstance(m, torch.nn.Linear))
    user_skip = lm_layer.rsplit(".", 1)[0]
    qc = type(model).default_quantization_config(compute_dtype=torch.float32, skip_modules=[user_skip])
    for part in model.part_names():
        if part != "language_model":
            assert set(model._parts[part]) <= set(qc.llm_int8_skip_modules)
    assert "lm_head" in qc.llm_int8_skip_modules
    q = type(model).from_pretrained(tmp_path, quantization_config=qc, dtype=torch.float32).eval()
    lm_4bit = [n for n, m in q.named_modules() if type(m).__name__ == "Linear4bit"]
    assert lm_4bit and all(n.startswith("language_model.") for n in lm_4bit)
    assert not any(n.startswith(user_skip) for n in lm_4bit)  # the user's skip extends the defaults
    for part in q.part_names():
        if part != "language_model":
            for m in q.get_part_modules(part):
                assert not any(type(s).__name__ == "Linear4bit" for s in m.modules())
    # A user-given config without the defaults still keeps every non-LM part unquantized.
    from transformers import BitsAndBytesConfig

    q2 = type(model).from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    )
    for part in q2.part_names():
        if part != "language_model":
            for m in q2.get_part_modules(part):
                assert not any(type(s).__name__ == "Linear4bit" for s in m.modules())
    batch = _training_batch(processor)
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
    assert cfg.task_type == ("SEQ_2_SEQ_LM" if model.is_seq2seq else "CAUSAL_LM")
    pm = peft.get_peft_model(model, cfg)
    lora = [n for n, _ in pm.named_modules() if n.endswith("lora_A")]
    assert lora and all(".language_model." in n for n in lora)
    assert not any("lm_head" in n for n in lora)
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    out = pm(**_training_batch(processor))  # the PEFT wrapper of the LM kind forwards every declared input
    assert torch.isfinite(out.loss)


def test_bad_inputs_raise_clear_errors(tiny):
    name, model, processor = tiny
    m = processor.modalities[0]
    token, arg = processor.media_token(m), _MEDIA_ARG[m]
    # more placeholders than media, per the processor
    with pytest.raises(ProcessorInputError, match="placeholder"):
        processor(text=[f"{token} {token} hi"], **{arg: [tiny_media(m)]})
    with pytest.raises(ProcessorInputError, match=f"1 {m}"):
        processor(text=["no placeholder here"], **{arg: [tiny_media(m)]})
    # placeholder ids that do not match the media (e.g. truncated or hand-made input_ids)
    batch = _inputs(processor)
    ids = batch["input_ids"].clone()
    tid = processor.media_token_id(m)
    first = (ids[0] == tid).nonzero()[0, 0]
    ids[0, first] = processor.tokenizer.eos_token_id
    with pytest.raises(MediaMismatchError, match="sample 0"):
        model(**{**batch, "input_ids": ids})
    with pytest.raises(MediaMismatchError):
        model.generate(**{**batch, "input_ids": ids}, max_new_tokens=2)
    # an input the model does not declare
    with pytest.raises(TypeError, match="takes no input"):
        model.encode_media(pixel_value=torch.zeros(1))
    # over the visual-token budget
    processor.max_visual_tokens = 1
    with pytest.raises(ProcessorInputError, match="budget"):
        _inputs(processor)
    processor.max_visual_tokens = None
    # max_length that would cut a media span
    with pytest.raises(ProcessorInputError, match="max_length"):
        processor(text=[token + " hi"], **{arg: [tiny_media(m)]}, max_length=3, truncation=True)
    if "image" in processor.modalities:  # extreme aspect ratio
        with pytest.raises(ValueError, match="aspect"):
            processor(text=[processor.image_token], images=[tiny_media("image", height=2, width=600)])


def test_literal_placeholder_typed_by_user_is_text(tiny):
    name, model, processor = tiny
    m = processor.modalities[0]
    token, arg = processor.media_token(m), _MEDIA_ARG[m]
    msgs = [{"role": "user", "content": [{"type": m}, {"type": "text", "text": f"what does {token} mean"}]}]
    batch = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, **{arg: [tiny_media(m, 1)]})
    n = (batch["input_ids"] == processor.media_token_id(m)).sum().item()
    assert n == getattr(processor, f"_process_{m}s")([tiny_media(m, 1)])[1][0]  # exactly one item's tokens
    # The caller may opt in to treating typed placeholders as placeholders.
    with pytest.raises(ProcessorInputError):
        processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, **{arg: [tiny_media(m, 1)]},
                                      placeholders_in_text=True)
