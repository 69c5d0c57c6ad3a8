"""BEATsEncoder against the golden fixture videollama2/av_beats_qwen2 (original VideoLLaMA2 AV branch outputs)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fixture_case, load_case, load_tensors
from torch import nn

from hf_videollm.modeling.beats import BEATsConfig, BEATsEncoder, convert_beats_state_dict

CASE = ("videollama2", "av_beats_qwen2")
SIZE_KEYS = (
    "embed_dim", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
    "conv_pos", "conv_pos_groups", "num_buckets", "max_distance",
)


def _tiny_sizes(case_dir) -> dict:
    note = json.loads((case_dir / "original" / "config.json").read_text())["audio_tower_config_note"]
    sizes = json.loads(note[note.index("{"):])
    return {k: sizes[k] for k in SIZE_KEYS}


def _checkpoint(case_dir) -> dict[str, torch.Tensor]:
    weights = {}
    for f in sorted((case_dir / "original").glob("model-*.safetensors")):
        weights.update(load_tensors(f))
    return weights


def _load_strict(module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    missing, unexpected = module.load_state_dict(weights, strict=False)
    assert not missing and not unexpected, f"missing={missing} unexpected={unexpected}"


def test_beats_matches_original():
    case_dir = fixture_case(*CASE)
    tol = load_case(case_dir)["tolerance"]
    atol, rtol = tol.get("recommended_atol", 1e-4), tol.get("recommended_rtol", 1e-4)
    inputs = load_tensors(case_dir / "inputs.safetensors")
    expected = load_tensors(case_dir / "expected.safetensors")
    ckpt = _checkpoint(case_dir)

    encoder = BEATsEncoder(BEATsConfig(**_tiny_sizes(case_dir))).eval()
    audio_keys = {k for k in ckpt if k.startswith("model.audio_tower.")}
    state = convert_beats_state_dict(ckpt)
    # every checkpoint key is used except the documented unused classifier head
    assert {f"model.audio_tower.{k}" for k in state} | {k for k in audio_keys if ".predictor." in k} == audio_keys
    _load_strict(encoder, state)

    fbank = inputs["audio_fbank_0"].float()
    with torch.no_grad():
        feats = encoder(fbank, padding_mask=torch.zeros(fbank.shape[:2], dtype=torch.bool))
        feats_nomask = encoder(fbank)
    assert feats.shape == expected["audio_features"].shape
    torch.testing.assert_close(feats, expected["audio_features"], atol=atol, rtol=rtol)
    torch.testing.assert_close(feats_nomask, feats, atol=0, rtol=0)

    projector = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64)).eval()
    _load_strict(projector, {k[len("model.mm_projector_a."):]: v for k, v in ckpt.items()
                             if k.startswith("model.mm_projector_a.")})
    with torch.no_grad():
        tokens = projector(feats)
    torch.testing.assert_close(tokens, expected["audio_tokens"], atol=atol, rtol=rtol)


def test_convert_drops_tied_relative_bias_copies():
    table = torch.randn(32, 2)
    sd = {
        "model.audio_tower.encoder.layers.0.self_attn.relative_attention_bias.weight": table,
        "model.audio_tower.encoder.layers.1.self_attn.relative_attention_bias.weight": table.clone(),
        "model.audio_tower.predictor.weight": torch.zeros(1),
    }
    assert list(convert_beats_state_dict(sd)) == ["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    sd["model.audio_tower.encoder.layers.1.self_attn.relative_attention_bias.weight"] = table + 1
    with pytest.raises(ValueError, match="not tied"):
        convert_beats_state_dict(sd)


@pytest.mark.parametrize("shape", [(1, 160, 64), (160, 128), (1, 8, 128)])
def test_bad_fbank_shape_raises(shape):
    encoder = BEATsEncoder(BEATsConfig(embed_dim=32, encoder_layers=1, encoder_embed_dim=32,
                                       encoder_ffn_embed_dim=64, encoder_attention_heads=2, conv_pos=16,
                                       conv_pos_groups=4, num_buckets=32, max_distance=64))
    with pytest.raises(ValueError, match=r"\(B, T_frames, 128\)"):
        encoder(torch.zeros(shape))
