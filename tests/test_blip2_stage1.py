"""BLIP-2 stage 1 (Q-Former pre-training): ITC, ITM with hard negatives and ITG each fall on a tiny synthetic
image-caption set when trained through the package's Trainer (``VideoLLMTrainer``)."""

from __future__ import annotations

import torch

from hf_videollm.modeling.blip2 import VideoLLMBlip2Config, VideoLLMBlip2Model
from hf_videollm.modeling.blip2_qformer import VideoLLMBlip2QFormerConfig, VideoLLMBlip2QFormerForPretraining
from hf_videollm.tiny import tiny_qformer_tokenizer

COLORS = {"red": (1.0, -1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "green": (-1.0, 1.0, -1.0), "yellow": (1.0, 1.0, -1.0)}
SHAPES = ("circle", "bar")


def _tiny(tok):
    config = VideoLLMBlip2QFormerConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14, initializer_range=0.02),
        qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            encoder_hidden_size=32, max_position_embeddings=32, vocab_size=len(tok),
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        num_query_tokens=4, embed_dim=16, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    return VideoLLMBlip2QFormerForPretraining(config)


def _dataset(tok):
    """8 distinct pairs: a colour fill with a shape (a disc, or a horizontal bar) drawn dark on it."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    masks = {"circle": ((yy - 14) ** 2 + (xx - 14) ** 2) < 64, "bar": (yy > 10) & (yy < 18)}
    rows = []
    for name, color in COLORS.items():
        for shape in SHAPES:
            pixels = torch.tensor(color)[:, None, None].expand(3, 28, 28).clone()
            pixels[:, masks[shape]] = -1.5
            pixels += 0.1 * torch.randn(3, 28, 28, generator=g)
            rows.append({"pixel_values": pixels, "caption": f"a {name} {shape}"})
    return rows


def _collate(tok):
    def fn(rows):
        enc = tok([r["caption"] for r in rows], padding=True, return_tensors="pt")
        return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]), "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"]}

    return fn


def _losses(model, batch):
    model.eval()
    torch.manual_seed(1)  # the ITM negatives are sampled
    with torch.no_grad():
        out = model(**batch)
    return {k: float(getattr(out, k)) for k in ("loss_itc", "loss_itm", "loss_itg")}


def test_stage1_losses_fall_through_the_trainer(tmp_path):
    from transformers import TrainingArguments

    from hf_videollm.training.trainer import VideoLLMTrainer

    tok = tiny_qformer_tokenizer()
    tok.padding_side = "right"
    model = _tiny(tok)
    data = _dataset(tok)
    collate = _collate(tok)
    full = collate(data)
    before = _losses(model, full)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=60, learning_rate=2e-3,
        report_to=[], save_strategy="no", logging_steps=10, use_cpu=True, remove_unused_columns=False,
        dataloader_num_workers=0, seed=0, warmup_steps=0, weight_decay=0.05,
    )
    trainer = VideoLLMTrainer(model=model, args=args, train_dataset=data, data_collator=collate)
    trainer.train()
    after = _losses(model, full)
    assert after["loss_itc"] < 0.85 * before["loss_itc"], (before, after)
    assert after["loss_itg"] < 0.85 * before["loss_itg"], (before, after)
    # ITM (1 positive : 2 hard negatives) falls from its start; in this short run it reaches about the class prior
    # (-1/3 ln 1/3 - 2/3 ln 2/3 = 0.637) -- telling pairs apart needs far longer training than a unit test allows.
    assert after["loss_itm"] < before["loss_itm"] - 0.03, (before, after)
    # the frozen image encoder did not move; ln_vision trained
    assert not any(p.requires_grad for n, p in model.vision_tower.named_parameters() if "post_layernorm" not in n)
    assert model.vision_tower.post_layernorm.weight.requires_grad


def test_stage1_weights_initialise_stage2(tmp_path):
    """The stage-1 Q-Former, queries and ln_vision load into a stage-2 BLIP-2 by name (query branch)."""
    tok = tiny_qformer_tokenizer()
    stage1 = _tiny(tok)
    stage2 = VideoLLMBlip2Model(VideoLLMBlip2Config(
        vision_config=stage1.config.vision_config.to_dict(),
        qformer_config={**stage1.config.qformer_config.to_dict(), "model_type": "blip_2_qformer",
                        "use_qformer_text_input": False},
        text_config=dict(model_type="opt", hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50, word_embed_proj_dim=16),
        num_query_tokens=4, image_token_id=50, video_token_id=51,
    ))
    src = stage1.state_dict()
    # InstructBLIP-style text embeddings hold the query LayerNorm; BLIP-2's query-only Q-Former names it layernorm
    src = {k.replace("qformer.bert.embeddings.layernorm", "qformer.bert.layernorm"): v for k, v in src.items()}
    missing, _ = stage2.load_state_dict({k: v for k, v in src.items() if k in stage2.state_dict()}, strict=False)
    assert not [k for k in missing if k.startswith(("qformer.", "vision_tower."))]
    pixels = torch.randn(2, 3, 28, 28)
    stage1.eval(), stage2.eval()
    with torch.no_grad():
        a = stage1.qformer(stage1.vision_tower(pixels).last_hidden_state).last_hidden_state
        b = stage2.get_qformer_features(pixels)
    torch.testing.assert_close(a, b)
