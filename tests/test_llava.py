"""LLaVA specifics: video pooling, several images per prompt, processor settings round trip, device_map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_videollm.modeling.llava import llava_tokens_per_frame
from hf_videollm.processors.llava import VideoLLMLlavaProcessor
from hf_videollm.tiny import build_tiny


def _frames(n=4, size=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_video_spatial_pooling_matches_processor_count():
    model, processor = build_tiny("llava", image_size=56, video_pool_stride=2)
    assert processor.video_pool_stride == 2
    batch = processor(text=[f"{processor.video_token} what happens"], videos=[_frames()])
    n = (batch["input_ids"] == model.config.video_token_id).sum().item()
    assert n == 4 * llava_tokens_per_frame(56, 14, "default", 2) == 4 * 4  # 4x4 grid pooled to 2x2, 4 frames
    with torch.no_grad():
        feats = model.get_video_features(batch["pixel_values_videos"])
        out = model(**batch)
    assert feats[0].shape[0] == n and torch.isfinite(out.logits).all()


def test_several_images_keep_their_order():
    model, processor = build_tiny("llava")
    model.eval()
    imgs = [torch.full((3, 30, 30), v, dtype=torch.uint8) for v in (0, 255)]
    a = processor(text=[f"{processor.image_token} and {processor.image_token}"], images=imgs)
    b = processor(text=[f"{processor.image_token} and {processor.image_token}"], images=imgs[::-1])
    with torch.no_grad():
        la, lb = model(**a).logits, model(**b).logits
    assert not torch.allclose(la, lb)  # swapping the images changes the output: each placeholder gets its own image
    # the same two images given per sample (nested) or flat are equivalent
    c = processor(text=[f"{processor.image_token} and {processor.image_token}"], images=[imgs])
    assert torch.equal(a["pixel_values"], c["pixel_values"])


def test_processor_saves_every_preprocessing_setting(tmp_path):
    _, processor = build_tiny("llava")
    processor.num_frames, processor.video_fps, processor.max_visual_tokens = None, 2.0, 999
    processor.save_pretrained(tmp_path)
    again = VideoLLMLlavaProcessor.from_pretrained(tmp_path)
    for key in ("image_size", "pad_to_square", "pad_fill", "image_mean", "image_std", "num_frames", "video_fps",
                "max_frames", "max_visual_tokens", "image_token_id", "video_token_id", "tokenization", "chat_template"):
        assert getattr(again, key) == getattr(processor, key), key
    assert (tmp_path / "chat_template.jinja").is_file()


def test_device_map_splits_cpu_and_disk_without_cutting_a_no_split_block(tmp_path):
    """A budget too small for the whole model: accelerate puts part on the CPU and offloads the rest to disk, never
    inside a no-split block, and the offloaded model computes the same logits as the model in memory."""
    from accelerate import infer_auto_device_map

    model, processor = build_tiny("llava")
    model.eval().save_pretrained(tmp_path / "m")
    dmap = infer_auto_device_map(model, max_memory={"cpu": "400KB", "disk": "10GB"},
                                 no_split_module_classes=model._no_split_modules)
    assert set(dmap.values()) == {"cpu", "disk"}, dmap
    blocks = [n for n, m in model.named_modules() if type(m).__name__ in model._no_split_modules]
    assert blocks
    for key in dmap:  # a key inside a block would place part of that block elsewhere
        assert not any(key.startswith(b + ".") for b in blocks), (key, blocks)

    loaded = type(model).from_pretrained(tmp_path / "m", device_map=dmap, offload_folder=str(tmp_path / "off")).eval()
    assert loaded.hf_device_map == dmap
    on_disk = [k for k, v in dmap.items() if v == "disk"]
    for name, param in loaded.named_parameters():  # disk-offloaded weights are loaded on demand, not held in memory
        where = "disk" if any(name == k or name.startswith(k + ".") for k in on_disk) else "cpu"
        assert param.device.type == ("meta" if where == "disk" else "cpu"), (name, param.device)
    batch = processor(text=[f"{processor.image_token} hi"], images=[torch.zeros(3, 20, 20, dtype=torch.uint8)])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)



@pytest.mark.parametrize("layer", [-2, 0, 1, -1, [-2, 1], [0, -3], [-3, -2]])
def test_vision_features_stop_at_the_selected_layer(layer):
    """The tower runs only up to the deepest selected hidden state (hooks), with the same values as transformers'
    full ``output_hidden_states`` run; the layers after it are never called."""
    from hf_videollm.modeling.vision import _encoder_layers, select_hidden_features

    model, _ = build_tiny("llava")
    tower = model.vision_tower.eval()
    layers = _encoder_layers(tower)
    n = len(layers)
    pixels = torch.randn(2, 3, tower.config.image_size, tower.config.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
        wanted = [layer] if isinstance(layer, int) else layer
        expected = torch.cat([full[i] for i in wanted], dim=-1)[:, 1:]
        calls = []
        hooks = [m.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, m in enumerate(layers)]
        got = select_hidden_features(tower, pixels, layer, "default")
        for h in hooks:
            h.remove()
    assert torch.equal(got, expected)
    deepest = max(i % (n + 1) for i in wanted)
    whole = deepest == n or min(i % (n + 1) for i in wanted) == 0  # the embeddings or the last layer: a whole run
    assert calls == list(range(n if whole else deepest))
    assert len(_encoder_layers(tower)) == n  # the layer list is restored


def test_long_videos_are_encoded_in_bounded_chunks(monkeypatch):
    """Frames go through the tower at most ``vision_batch_pixels`` pixels at a time; the features equal one batched
    call; small frames all go in one call."""
    model, _ = build_tiny("llava")
    model.eval()
    size = model.config.vision_config.image_size
    frames = torch.randn(7, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model.get_vision_features(frames)
        batches = []
        handle = model.vision_tower.register_forward_pre_hook(
            lambda m, args, kwargs: batches.append(kwargs["pixel_values"].shape[0]), with_kwargs=True
        )
        monkeypatch.setattr(model, "vision_batch_pixels", 3 * size * size + 5)
        chunked = model.get_vision_features(frames)
        handle.remove()
    assert batches == [3, 3, 1]
    assert type(model).vision_batch_pixels // (size * size) >= 7 * 16  # a tiny model's clips: one call for a whole batch
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
