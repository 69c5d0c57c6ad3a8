"""The part every converter shares: a Release written by write_converted, and the one preprocessor-config parser."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import fixture_case

from hf_videollm.conversion import (
    CheckpointSource,
    ConversionError,
    KeyTable,
    Release,
    Rename,
    convert,
    expected_from_model,
    write_converted,
)
from hf_videollm.conversion.towers import image_preprocessing, read_preprocessor_config
from hf_videollm.media.transforms import IMAGENET_STANDARD_MEAN, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def test_a_converter_is_a_release_that_write_converted_writes(tmp_path):
    """A made-up release layout (``orig.*`` keys): key table + config + processor in a Release is all a converter
    writes itself; weights, config (architectures, dtype), generation config and processor come out loadable."""
    from transformers import GenerationConfig

    from hf_videollm.modeling.llava import VideoLLMLlavaForConditionalGeneration
    from hf_videollm.processors.llava import VideoLLMLlavaProcessor
    from hf_videollm.tiny import build_tiny

    model, processor = build_tiny("llava")
    weights = {k: v for k, v in model.state_dict().items() if k in expected_from_model(model)}
    src = tmp_path / "release"
    GenerationConfig(max_new_tokens=7).save_pretrained(src)
    release = Release(
        VideoLLMLlavaForConditionalGeneration,
        model.config,
        sources=[(CheckpointSource.from_state_dict({"orig." + k: v for k, v in weights.items()}),
                  KeyTable("made-up", [Rename(r"^orig\.(.+)$", r"\1")]))],
        processor=processor,
        converted_from="someone/made-up-release",
        converter="test",
        generation_config_from=src,
    )
    report = write_converted(release, tmp_path / "out", dtype=torch.bfloat16, progress=False)
    assert report.num_tensors == len(weights)

    back = VideoLLMLlavaForConditionalGeneration.from_pretrained(tmp_path / "out", dtype="auto")
    assert back.config.architectures == ["VideoLLMLlavaForConditionalGeneration"]
    assert back.dtype == torch.bfloat16
    for k, v in back.state_dict().items():
        assert torch.equal(v, model.state_dict()[k].to(torch.bfloat16)), k
    assert GenerationConfig.from_pretrained(tmp_path / "out").max_new_tokens == 7
    assert VideoLLMLlavaProcessor.from_pretrained(tmp_path / "out").image_size == processor.image_size


def test_image_preprocessing_of_the_fixture_towers():
    clip = read_preprocessor_config(fixture_case("llava_v1_5", "single_image") / "original" / "vision_tower")
    assert image_preprocessing(clip, image_processor="CLIPImageProcessor") == {
        "image_size": 56, "resize_mode": "shortest_edge", "resample": "bicubic", "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD), "rescale_factor": 1 / 255,
    }
    siglip_dir = fixture_case("videollama2", "siglip_stc_v35_qwen2_video16") / "original" / "vision_tower"
    siglip = image_preprocessing(read_preprocessor_config(siglip_dir), image_processor="SiglipImageProcessor")
    assert siglip["image_size"] == 70 and siglip["resize_mode"] == "exact" and siglip["image_mean"] == [0.5] * 3
    # llava-hf: processor_config.json's image_processor (LlavaImageProcessor: CLIP's rules)
    hf = image_preprocessing(read_preprocessor_config(fixture_case("hf_llava", "single") / "original"))
    assert hf["image_size"] == 56 and hf["resize_mode"] == "shortest_edge"


def test_image_preprocessing_takes_the_defaults_of_the_class_the_original_instantiates():
    bare = {"size": 32, "crop_size": 32}
    assert image_preprocessing(bare)["image_mean"] == list(OPENAI_CLIP_MEAN)
    siglip = image_preprocessing({"size": 32}, image_processor="SiglipImageProcessor")
    assert siglip["resize_mode"] == "exact" and siglip["image_mean"] == list(IMAGENET_STANDARD_MEAN)
    # the class, not the type the file names, decides (as XImageProcessor.from_pretrained does)
    named = {"size": 32, "crop_size": 32, "image_processor_type": "SiglipImageProcessor"}
    assert image_preprocessing(named, image_processor="CLIPImageProcessor")["resize_mode"] == "shortest_edge"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"size": 256, "crop_size": 224}, "crops"),
        ({"size": {"height": 32, "width": 48}}, "only squares"),
        ({"size": 32, "crop_size": 32, "do_resize": False}, "do_resize"),
        ({"size": 32, "crop_size": 32, "do_normalize": False}, "do_normalize"),
        ({"size": {"longest_edge": 32}}, "unsupported size"),
    ],
)
def test_image_preprocessing_refuses_what_the_processors_cannot_express(config, message):
    with pytest.raises(ConversionError, match=message):
        image_preprocessing(config)


def test_a_tower_without_preprocessing_fails_before_anything_is_written(tmp_path):
    """The processor is built before the weights are written: a tower repo without its preprocessor config stops the
    conversion with the file named, and the output directory is never created."""
    case = fixture_case("llava_v1_5", "single_image") / "original"
    tower = tmp_path / "tower"
    shutil.copytree(case / "vision_tower", tower, ignore=shutil.ignore_patterns("preprocessor_config.json"))
    with pytest.raises(ConversionError, match="preprocessor_config.json"):
        convert("llava", case, tmp_path / "out", vision_tower=str(tower), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_tower_of_another_width_than_mm_hidden_size_is_refused_before_reading_weights(tmp_path):
    case = fixture_case("llava_v1_5", "single_image") / "original"
    tower = tmp_path / "tower"
    shutil.copytree(case / "vision_tower", tower)
    cfg = json.loads((tower / "config.json").read_text())
    (tower / "config.json").write_text(json.dumps({**cfg, "hidden_size": 2 * cfg["hidden_size"]}))
    with pytest.raises(ConversionError, match="mm_hidden_size"):
        convert("llava", case, tmp_path / "out", vision_tower=str(tower), progress=False)
    assert not (tmp_path / "out").exists()


def test_options_and_formats_that_do_not_apply_are_refused_before_reading(tmp_path):
    """A reader declares the options it takes; the others are refused by name (nothing is read or written)."""
    with pytest.raises(ConversionError, match="--base does not apply to videollama2"):
        convert("videollama2", tmp_path, tmp_path / "out", base="some/llm", progress=False)
    with pytest.raises(ConversionError, match="--vision-tower does not apply to llava .transformers"):
        convert("llava", tmp_path, tmp_path / "out", source_format="transformers", vision_tower="x/y", progress=False)
    with pytest.raises(ConversionError, match="unknown source format 'transformers' for videollama2; use 'original'"):
        convert("videollama2", tmp_path, tmp_path / "out", source_format="transformers", progress=False)
    with pytest.raises(ConversionError, match="no converter for 'nope'"):
        convert("nope", tmp_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_that_exists_only_as_release_code_is_refused_without_running_it(tmp_path):
    """A release whose tokenizer is a custom class (``auto_map``) must neither run that code nor stop at
    transformers' interactive "trust remote code?" prompt: a ConversionError that says what to do instead."""
    from hf_videollm.conversion.release import load_tokenizer
    from hf_videollm.conversion.sources import ConversionError

    marker = tmp_path / "ran"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "FooTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_foo.FooTokenizer", None]}}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoConfig": "x.Y"}}))
    (tmp_path / "tokenization_foo.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(ConversionError, match="never runs a release's code"):
        load_tokenizer(tmp_path)
    assert not marker.exists()
