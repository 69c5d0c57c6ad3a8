"""BLIP-2 / InstructBLIP faithfulness: converter + model reproduce LAVIS and transformers on every fixture case.

LAVIS cases (``blip2/{opt_caption,t5_vqa}``, ``instructblip/{vicuna,t5}``): the ``.pth`` + ``eva_vit_g.pth`` + LLM
folder converted by ``read_blip2`` / ``read_instructblip``; transformers cases (``hf_blip2_opt``, ``hf_blip2_t5``,
``hf_instructblip``): ``save_pretrained`` output read by the ``transformers`` readers. See ../shared/fixtures/README.md.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_case, load_case, load_tensors

from hf_videollm.conversion import convert, write_converted
from hf_videollm.conversion.blip2 import read_blip2, read_instructblip
from hf_videollm.registry import get_entry

ATOL = RTOL = 1e-4
LAVIS_CASES = [("blip2", "opt_caption"), ("blip2", "t5_vqa"), ("instructblip", "vicuna"), ("instructblip", "t5")]
HF_CASES = [("hf_blip2_opt", "blip2"), ("hf_blip2_t5", "blip2"), ("hf_instructblip", "instructblip")]


def _load(name: str, out):
    entry = get_entry(name)
    model = entry.model_class.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    processor = entry.processor_class.from_pretrained(out)
    return model, processor


def _prefixed(model, inputs, frames: int = 1):
    """Our inputs: the placeholder run (visual tokens) before the original's text ids."""
    n = model.config.num_query_tokens * frames
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    ph = torch.full((ids.shape[0], n), model.config.image_token_id, dtype=ids.dtype)
    return torch.cat([ph, ids], 1), torch.cat([torch.ones_like(ph), mask], 1)


def _qformer_kwargs(inputs):
    return {k: inputs[k] for k in ("qformer_input_ids", "qformer_attention_mask") if k in inputs}


def _check_common(model, inputs, expected, *, lavis: bool):
    pixels = inputs["pixel_values"]
    qkw = _qformer_kwargs(inputs)
    with torch.no_grad():
        embeds, vit = model.get_vision_features(pixels, output_hidden_states=True)
        q_hidden = model.get_qformer_features(pixels, **qkw)
        tokens = model.get_image_features(pixels, **qkw)
    if lavis:
        torch.testing.assert_close(vit, expected["vision_hidden_states"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(embeds, expected["image_embeds"], atol=ATOL, rtol=RTOL)
    else:
        torch.testing.assert_close(embeds, expected["vision_last_hidden_state"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(q_hidden, expected["qformer_last_hidden_state"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(tokens, expected["visual_tokens"], atol=ATOL, rtol=RTOL)
    return tokens


@pytest.mark.parametrize("model_name,case_name", LAVIS_CASES)
def test_lavis_release(model_name, case_name, tmp_path):
    case_dir = fixture_case(model_name, case_name)
    case = load_case(case_dir)
    heads = case["original_config"]["eva_vit"]["num_heads"]
    read = read_blip2 if model_name == "blip2" else read_instructblip
    report = write_converted(read(case_dir / "original", vision_num_heads=heads), tmp_path / "out",
                             dtype=torch.float32, progress=False)
    dropped = report.to_dict()["dropped"]
    assert any("blocks.2." in k for k in dropped)  # eva_vit_g.pth's extra block: consumed on purpose, never built
    model, processor = _load(model_name, tmp_path / "out")
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    tokens = _check_common(model, inputs, expected, lavis=True)
    ids, mask = _prefixed(model, inputs)
    with torch.no_grad():
        merged = model.build_inputs_embeds(ids, {"image": list(tokens)}, mask)
    torch.testing.assert_close(merged, expected["llm_inputs_embeds"], atol=ATOL, rtol=RTOL)
    assert torch.equal(mask, expected["llm_attention_mask"])
    vocab = case["logits_vocab_to_compare"]
    batch = dict(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"], **_qformer_kwargs(inputs))
    with torch.no_grad():
        if model.is_seq2seq:
            out = model(**batch, decoder_input_ids=inputs["decoder_input_ids"],
                        decoder_attention_mask=inputs["decoder_attention_mask"], labels=inputs["labels"])
            torch.testing.assert_close(out.encoder_last_hidden_state, expected["encoder_last_hidden_state"], atol=ATOL, rtol=RTOL)
            torch.testing.assert_close(out.loss, expected["loss"], atol=ATOL, rtol=RTOL)
        else:
            out = model(**batch)
    valid = expected["logits_mask"][0].bool()
    torch.testing.assert_close(out.logits[0, valid, :vocab], expected["logits"][0, valid, :vocab], atol=ATOL, rtol=RTOL)

    # greedy decoding as the original's generate (num_beams 1, max_length 5)
    gen = {"max_new_tokens": 5, "do_sample": False}
    if model.config.text_config.model_type == "opt":  # LAVIS Blip2OPT stops at "\n": the converted default
        assert model.generation_config.eos_token_id == processor.tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        seq = model.generate(**batch, **gen)
    new = seq if model.is_seq2seq else seq[:, ids.shape[1]:]
    ref = expected["generated_ids"]
    n = min(new.shape[1], ref.shape[1])
    assert torch.equal(new[:, :n], ref[:, :n]), (new, ref)


@pytest.mark.parametrize("case_name,model_name", HF_CASES)
def test_transformers_layout(case_name, model_name, tmp_path):
    case_dir = fixture_case(case_name, "single")
    convert(model_name, case_dir / "original", tmp_path / "out", source_format="transformers", progress=False)
    model, processor = _load(model_name, tmp_path / "out")
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    _check_common(model, inputs, expected, lavis=False)
    batch = {k: v for k, v in inputs.items()}
    with torch.no_grad():
        out = model(**batch)
    if "loss" in expected:
        torch.testing.assert_close(out.loss, expected["loss"], atol=ATOL, rtol=RTOL)
    valid = inputs["attention_mask"][0].bool() if not model.is_seq2seq else slice(None)
    torch.testing.assert_close(out.logits[0, valid], expected["logits"][0, valid], atol=ATOL, rtol=RTOL)
    batch.pop("labels", None)
    with torch.no_grad():
        seq = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    ref = expected["greedy_generate_output"]
    new = seq if model.is_seq2seq else seq[:, inputs["input_ids"].shape[1]:]
    assert torch.equal(new[:, -ref.shape[1]:] if not model.is_seq2seq else new, ref), (new, ref)


@pytest.mark.parametrize("model_name", ["blip2", "instructblip"])
def test_lavis_preprocess(model_name):
    """BlipImageEvalProcessor(224): square bicubic resize (PIL), CLIP mean/std -- through our processor."""
    from PIL import Image

    from hf_videollm.tiny import build_tiny

    case_dir = fixture_case(model_name, "preprocess")
    expected = load_tensors(case_dir / "expected.safetensors")["pixel_values"]
    _, processor = build_tiny(model_name, processor={"image_size": 224})
    image = Image.open(case_dir / "image.png").convert("RGB")
    out = processor(text="<image> a photo of", images=[image])
    torch.testing.assert_close(out["pixel_values"], expected, atol=1e-5, rtol=0)


def test_lavis_processor_reproduces_prompt_ids(tmp_path):
    """The converted processors tokenize the fixture prompts to the original ids (OPT BOS, Vicuna BOS remapped to
    </s>, T5 </s>, the Q-Former's BERT ids), media tokens first."""
    for model_name, case_name in LAVIS_CASES:
        case_dir = fixture_case(model_name, case_name)
        case = load_case(case_dir)
        heads = case["original_config"]["eva_vit"]["num_heads"]
        read = read_blip2 if model_name == "blip2" else read_instructblip
        processor = read(case_dir / "original", vision_num_heads=heads).processor
        inputs = load_tensors(case_dir / "inputs.safetensors")
        prompt = case["call"]["samples"]["prompt"]
        pixels = inputs["pixel_values"]
        out = processor(text=f"<image>{prompt}", images=[torch.zeros(3, 20, 20, dtype=torch.uint8)])
        n = processor.num_query_tokens
        assert out["input_ids"][0, :n].tolist() == [processor.image_token_id] * n
        assert out["input_ids"][0, n:].tolist() == inputs["input_ids"][0].tolist(), (model_name, case_name)
        if "qformer_input_ids" in inputs:
            assert torch.equal(out["qformer_input_ids"], inputs["qformer_input_ids"])
            assert torch.equal(out["qformer_attention_mask"], inputs["qformer_attention_mask"])
        assert pixels.shape[-1] == case["original_config"]["lavis_model_config"]["image_size"]


def test_finetuned_vit_inside_the_pth(tmp_path):
    """``caption_coco_*`` layout: the fine-tuned ViT is inside the LAVIS ``.pth`` (``visual_encoder.*``, every block
    used) and no ``eva_vit_g.pth`` is needed. Built from the opt_caption case: same outputs."""
    import shutil

    case_dir = fixture_case("blip2", "opt_caption")
    case = load_case(case_dir)
    heads = case["original_config"]["eva_vit"]["num_heads"]
    src = tmp_path / "release"
    shutil.copytree(case_dir / "original", src, ignore=shutil.ignore_patterns("eva_vit_g.pth", "*.pth"))
    ckpt = torch.load(case_dir / "original" / "blip2_pretrained_opt2.7b.pth", weights_only=True)
    eva = torch.load(case_dir / "original" / "eva_vit_g.pth", weights_only=True)
    used = case["original_config"]["eva_vit"]["depth_used"]
    for k, v in eva.items():
        if not k.startswith("blocks.") or int(k.split(".")[1]) < used:
            ckpt["model"][f"visual_encoder.{k}"] = v.float()
    torch.save(ckpt, src / "blip2_caption_opt2.7b.pth")
    write_converted(read_blip2(src, vision_num_heads=heads), tmp_path / "out", dtype=torch.float32, progress=False)
    model, _ = _load("blip2", tmp_path / "out")
    assert model.config.vision_config.num_hidden_layers == used
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    _check_common(model, inputs, expected, lavis=True)


def test_missing_eva_file_is_a_clear_error(tmp_path):
    import shutil

    case_dir = fixture_case("blip2", "opt_caption")
    src = tmp_path / "release"
    shutil.copytree(case_dir / "original", src, ignore=shutil.ignore_patterns("eva_vit_g.pth"))
    from hf_videollm.conversion import ConversionError

    with pytest.raises(ConversionError, match="vision-tower"):
        read_blip2(src)
