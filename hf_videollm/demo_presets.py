"""How ``hf-videollm demo`` / ``bench-synthetic`` build and train each model from scratch on the synthetic benchmark.

A preset is named by the model's registry entry (``ModelEntry.demo``). The measurements behind every choice are in
bench/RESULTS.md, section "Synthetic video QA" (sessions 3-6); the comments here say what each choice does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DemoPreset", "llava_demo_preset", "videollama2_demo_preset", "videollama2_av_demo_preset", "qwen2vl_demo_preset", "blip2_demo_preset", "instructblip_demo_preset", "longvlm_demo_preset", "qwen_vl_demo_preset"]


@dataclass(frozen=True)
class DemoPreset:
    """Builder overrides and training hyperparameters of one model's demo run (about five minutes on 2 CPU cores)."""

    model_overrides: dict
    num_frames: int = 8
    train_per_kind: int = 1000
    train_counts: dict = field(default_factory=dict)  # {kind: training videos} where a kind needs another count
    max_steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    # "cosine" (to 0 over the run) or "warmup_stable_decay": the peak learning rate held after warm-up, then a cosine
    # decay to 0 over the last ``decay_fraction`` of the steps (more learning per step at the same peak)
    lr_scheduler_type: str = "cosine"
    decay_fraction: float = 0.3
    stage: str = "stage2"  # the recipe stage whose machinery runs; every part trains (from scratch)
    # A hard-first data schedule: the first ``first_fraction`` of the steps hold only these question types (keys of
    # ``hf_videollm.synthetic.QUESTIONS``), the rest all kinds (``hf_videollm.demo.write_schedule``)
    first_types: tuple[str, ...] = ()
    first_fraction: float = 0.0
    trainer_args: dict = field(default_factory=dict)  # more ``TrainingArguments`` (e.g. ``adam_beta2``)


def _synthetic_processor() -> dict:
    """Processor settings shared by the demo presets: a plain Vicuna v1 prompt, and the synthetic videos' own pixel
    statistics (dark scenes), not CLIP's."""
    from .processors.chat_templates import vicuna_v1_template

    return dict(chat_template=vicuna_v1_template(system=""), image_mean=[0.18, 0.175, 0.165],
                image_std=[0.13, 0.12, 0.10])


def llava_demo_preset() -> DemoPreset:
    return DemoPreset(
        model_overrides=dict(
            image_size=28,
            patch_size=14,  # 2x2 patches: four tokens per frame
            vision_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4),
            vision_feature_layer=-1,  # every tower layer trains (the default -2 would leave the last one unused)
            # A GPT-2-style LLM: its learned absolute positions put each frame's index into the token itself, which a
            # model trained from scratch for minutes turns into "early vs late" sooner than RoPE's relative offsets
            text_config=dict(model_type="gpt2", n_embd=128, n_layer=2, n_head=4, n_positions=512, resid_pdrop=0.0,
                             embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1, tie_word_embeddings=False),
            processor=_synthetic_processor(),
        ),
        num_frames=8,
        max_steps=3000,
    )


def videollama2_demo_preset() -> DemoPreset:
    return DemoPreset(
        model_overrides=dict(
            image_size=32,
            patch_size=4,  # an 8x8 patch map per frame: the STC connector sees where the object is, frame to frame
            num_frames=8,
            # VideoLLaMA 2.1's connector: the Conv3d pairs frames (0, 1), (2, 3), ... without padding, 4x4x4 = 64
            # tokens per video (padding 1 gives 125 and learns motion more slowly)
            projector_type="stc_connector_v35",
            connector_depth=1,  # one RegNet block per stage (the original has 4): cheaper, and motion is learned sooner
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1),
            vision_feature_layer=-1,
            # a wider LLM init than transformers' 0.02 (with which the LLM never reads shape or motion in the budget),
            # and 8 heads of 8 without key-value sharing (fewer heads do not learn direction and shape together)
            text_config=dict(
                hidden_size=64, intermediate_size=128, initializer_range=0.1,
                num_attention_heads=8, num_key_value_heads=8, head_dim=8,
            ),
            processor=_synthetic_processor(),
        ),
        num_frames=8,
        train_counts={"appearance": 2000},  # enough shape questions that shapes are learned rather than memorised
        # 1400 steps (~235 s in all on an idle 2-core machine; 2400 with the cosine schedule took 359 s): the peak
        # learning rate is held for 70 % of the steps, then decays over the last 30 % (cosine at 1400 steps misses
        # order, 86 %; a higher peak, 2e-3, or batch 16 never learns direction or shape -- bench/RESULTS.md)
        max_steps=1400,
        lr_scheduler_type="warmup_stable_decay",
        decay_fraction=0.3,
        # Hard questions first: in a mix from the start, colour / order / count settle first and the vision path never
        # develops motion or shape features; learned first, both survive the mix, and AdamW's beta2 0.95 lets the easy
        # kinds come back within the budget
        first_types=("direction", "appearance_shape"),
        first_fraction=0.3,
        trainer_args={"adam_beta2": 0.95, "optim": "adamw_torch"},  # plain foreach AdamW: faster than fused on CPU here
    )


def videollama2_av_demo_preset() -> DemoPreset:
    """VideoLLaMA 2.1-AV on the synthetic tasks: the VideoLLaMA 2 preset + the tiny BEATs (the audio kinds need it)."""
    base = videollama2_demo_preset()
    overrides = dict(base.model_overrides)
    # the synthetic clips last 2 s: their whole track, once (the original's 8 clips of 2 s would repeat it 8 times)
    overrides["processor"] = {**overrides.get("processor", {}), "audio_seconds": 2.0, "audio_clips_per_video": 1,
                              "audio_clip_seconds": 2.0}
    # its schedule as measured (bench/RESULTS.md, VideoLLaMA 2.1-AV): 2400 steps, cosine
    return DemoPreset(**{**base.__dict__, "model_overrides": overrides, "stage": "av_joint", "max_steps": 2400,
                         "lr_scheduler_type": "cosine"})


def qwen2vl_demo_preset() -> DemoPreset:
    """Tiny Qwen2-VL on the synthetic videos: 32 px frames, patch 4 + 2x2 merge -> 4x4 tokens per pair of frames."""
    from .processors.chat_templates import qwen2vl_template

    processor = {**_synthetic_processor(), "chat_template": qwen2vl_template(system=""), "video_min_pixels": 64,
                 "video_max_pixels": 32 * 32, "max_visual_tokens": None}
    return DemoPreset(
        model_overrides=dict(
            vision_config=dict(depth=2, embed_dim=64, num_heads=4),
            text_config=dict(hidden_size=64, intermediate_size=128, initializer_range=0.1),
            processor=processor,
        ),
        num_frames=8,
        max_steps=1500,
    )


def qwen_vl_demo_preset() -> DemoPreset:
    """Tiny Qwen-VL on the synthetic videos: every 32 px frame (8x8 patches of 4 px) through the ViT and the resampler
    (16 queries) as a ``<img>``-wrapped image, frames in order. Qwen-VL-Chat's ChatML with an empty system prompt.
    Not tuned (the other presets' LLM settings)."""
    from .processors.chat_templates import qwen_vl_template

    processor = {**_synthetic_processor(), "chat_template": qwen_vl_template(system="")}
    return DemoPreset(
        model_overrides=dict(
            vision_config=dict(image_size=32, patch_size=4, hidden_size=64, num_attention_heads=4, n_queries=16,
                               resampler_num_heads=4),
            text_config=dict(hidden_size=64, intermediate_size=128, initializer_range=0.1),
            processor=processor,
        ),
        num_frames=8,
        max_steps=1500,
    )


def longvlm_demo_preset() -> DemoPreset:
    """LongVLM's token layout at demo scale: 8 frames in 4 segments of 2, each segment's 2 x 64 patch tokens merged to
    16 (ToMe), 2 global CLS tokens first: 66 visual tokens. Not tuned (the other presets' LLM settings)."""
    return DemoPreset(
        model_overrides=dict(
            image_size=32,
            patch_size=4,  # an 8x8 patch map per frame
            num_frames=8, num_segments=4, tokens_per_segment=16, num_global_tokens=2, merge_heads=4,
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2),
            vision_feature_layer=-1,  # every tower layer trains
            text_config=dict(
                hidden_size=64, intermediate_size=128, initializer_range=0.1,
                num_attention_heads=8, num_key_value_heads=8, head_dim=8,
            ),
            processor=_synthetic_processor(),
        ),
        num_frames=8,
        max_steps=1500,
        stage="stage1",  # the recipe's machinery; the demo trains every part from scratch
    )


def blip2_demo_preset() -> DemoPreset:
    """Tiny BLIP-2 on the synthetic videos: each 32 px frame (8x8 patches of 4 px) through the ViT and the Q-Former (4
    queries), the frames' query tokens in time order before the prompt -> OPT. The BLIP-2 prompt format (no chat
    template), the synthetic videos' pixel statistics. Not tuned (the common preset settings)."""
    return DemoPreset(
        model_overrides=dict(
            image_size=32,
            vision_config=dict(patch_size=4),
            processor={k: v for k, v in _synthetic_processor().items() if k != "chat_template"},
        ),
        num_frames=8,
        max_steps=1500,
    )


def instructblip_demo_preset() -> DemoPreset:
    """As :func:`blip2_demo_preset`, with InstructBLIP's Q-Former reading the question (tiny BERT tokenizer) and a
    LLaMA (Vicuna-style) LLM."""
    return blip2_demo_preset()


def video_llama_demo_preset() -> DemoPreset:
    """Tiny Video-LLaMA on the synthetic videos: each 32 px frame (8x8 patches of 4 px) through the ViT and the image
    Q-Former (4 queries), frame positions, the video Q-Former (4 queries for the whole clip) -> LLaMA; with the
    synthetic tracks, ImageBind's audio path -> audio Q-Former (2 queries) after the video's tokens. Video-LLaMA's own
    "###" prompt format without the frame-time message (the demo evaluates from decoded frames, which carry no
    timestamps). Not tuned (the common preset settings)."""
    processor = {k: v for k, v in _synthetic_processor().items() if k != "chat_template"}
    return DemoPreset(
        model_overrides=dict(
            image_size=32,
            vision_config=dict(patch_size=4),
            text_config=dict(hidden_size=64, intermediate_size=128, initializer_range=0.1),
            processor={**processor, "video_message": False},
        ),
        num_frames=8,
        max_steps=1500,
    )
