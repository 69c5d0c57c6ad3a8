"""The core contract expresses models unlike LLaVA: built here from the shared core and transformers' own parts.

* ``Seq2Seq``: a CLIP tower + linear projector in front of transformers' T5 (an encoder-decoder LM), media tokens
  before BOS (BLIP-2's placement): media merged into the encoder's embeddings, labels are the decoder sequence,
  ``generate`` through the seq2seq path, LoRA with ``SEQ_2_SEQ_LM``, the collator's decoder labels.
* ``Grid``: packed patches with a per-item grid (``image_grid_thw``, Qwen2-VL's layout) in front of transformers'
  Qwen2-VL text model, whose multimodal rotary positions are computed per call from the grids by the model's
  ``compute_position_ids`` hook -- at prefill and at every decoding step, never kept on the module.

Both are checked against what their transformers parts compute when driven by hand.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import CausalLMOutputWithPast

from hf_videollm.modeling.base import VideoLLMPreTrainedModel, VisionTowerModel
from hf_videollm.modeling.contract import InputSpec, Modality, ModelInputs, collate_inputs
from hf_videollm.processors.base import VideoLLMProcessor
from hf_videollm.processors.pixels import FramePixelsMixin
from hf_videollm.tiny import tiny_media, tiny_tokenizer
from hf_videollm.training.collator import VideoLLMCollator

ANSWER = "a red circle"

# ----------------------------------------------------------------------------------------------- encoder-decoder
SEQ2SEQ_INPUTS = ModelInputs(
    modalities=(Modality("image", ("vision_tower", "multi_modal_projector")),),
    inputs=(InputSpec("pixel_values", modality="image"),),
    lm="seq2seq",
    placement="prefix",
)
T5_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}{{ '<image>' }}{% else %}{{ p['text'] }}{% endif %}{% endfor %}{{ ' answer :' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' }}{% generation %}{% for p in m['content'] %}{{ p['text'] }}"
    "{% endfor %}{% endgeneration %}{% endif %}{% endfor %}"
)


class Seq2SeqConfig(PreTrainedConfig):
    model_type = "videollm_test_seq2seq"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(AutoConfig, model_type="t5"),
    }
    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 0
    vision_feature_layer: int = -1
    vision_feature_select_strategy: str = "default"


class Seq2SeqModel(VisionTowerModel):
    config_class = Seq2SeqConfig
    input_spec = SEQ2SEQ_INPUTS
    with_lm_head = False

    def __init__(self, config):
        super().__init__(config)
        from transformers import AutoModel

        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = nn.Linear(config.vision_config.hidden_size, config.text_config.d_model)
        self.language_model = self.build_language_model(config.text_config)
        self.post_init()

    def get_image_features(self, pixel_values):
        return self.multi_modal_projector(self.get_vision_features(pixel_values))


class Seq2SeqForConditionalGeneration(Seq2SeqModel, GenerationMixin):
    with_lm_head = True


class Seq2SeqProcessor(FramePixelsMixin, VideoLLMProcessor):
    input_spec = SEQ2SEQ_INPUTS
    settings = {"image_size": 28, "patch_size": 14}

    def default_chat_template(self):
        return T5_TEMPLATE

    def image_tokens(self):
        return (self.image_size // self.patch_size) ** 2


@pytest.fixture(scope="module")
def seq2seq():
    tok = tiny_tokenizer(bos=True, eos=True, padding_side="left")  # BOS before, EOS after: both placements show
    torch.manual_seed(0)
    config = Seq2SeqConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=28, patch_size=14),
        text_config=dict(model_type="t5", vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                         num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         decoder_start_token_id=tok.pad_token_id, tie_word_embeddings=False, dropout_rate=0.0),
        image_token_id=len(tok),
    )
    model = Seq2SeqForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.decoder_start_token_id = tok.pad_token_id
    return model, Seq2SeqProcessor(tok, image_token_id=config.image_token_id)


def _chat(question: str, answer: str | None = None):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def _manual_embeds(model, batch):
    """What the encoder should see: the projected image tokens, then the embedded text (pads stay pads)."""
    ids = batch["input_ids"]
    feats = model.get_image_features(batch["pixel_values"])
    out = model.language_model.get_input_embeddings()(ids.masked_fill(ids == model.config.image_token_id, 0))
    mask = (ids == model.config.image_token_id).unsqueeze(-1)
    return out.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]))


def test_seq2seq_media_go_before_bos_and_the_answer_is_the_decoder_sequence(seq2seq):
    model, proc = seq2seq
    text = proc.apply_chat_template(_chat("what is shown", ANSWER), mark_generation=True)
    batch = proc(text=[text], images=[tiny_media("image", 0)], return_labels=True)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    n = proc.image_tokens()
    tok = proc.tokenizer
    assert ids[:n] == [proc.image_token_id] * n and ids[n] == tok.bos_token_id  # media, then BOS
    assert ids[-1] == tok.eos_token_id  # the encoder input keeps the tokenizer's EOS
    question = tok("what is shown answer :", add_special_tokens=False)["input_ids"]
    assert ids[n + 1 : -1] == question  # no answer token in the encoder input
    assert labels == tok(ANSWER, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_seq2seq_forward_merges_media_into_the_encoder_embeddings(seq2seq):
    model, proc = seq2seq
    texts = [proc.apply_chat_template(_chat(q, ANSWER), mark_generation=True) for q in ("what is shown", "which color")]
    batch = proc(text=texts, images=[tiny_media("image", 0), tiny_media("image", 1)], return_labels=True)
    with torch.no_grad():
        ours = model(**batch)
        ref = model.language_model(
            inputs_embeds=_manual_embeds(model, batch), attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
    assert torch.allclose(ours.loss, ref.loss, atol=1e-6)
    assert torch.allclose(ours.logits, ref.logits, atol=1e-5)
    assert len(ours.media_features["image"]) == 2


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=2, num_return_sequences=2)])
def test_seq2seq_generate_runs_the_lm_on_the_merged_embeddings(seq2seq, kw):
    model, proc = seq2seq
    texts = [proc.apply_chat_template(_chat(q), add_generation_prompt=True) for q in ("what is shown", "which color is it")]
    batch = proc(text=texts, images=[tiny_media("image", 0), tiny_media("image", 1)])
    gen = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, **kw)
    with torch.no_grad():
        ours = model.generate(**batch, **gen)
        ref = model.language_model.generate(
            inputs_embeds=_manual_embeds(model, batch), attention_mask=batch["attention_mask"],
            generation_config=model.generation_config, **gen,
        )
    assert torch.equal(ours, ref)


def test_seq2seq_collator_lora_and_base_model(seq2seq, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModel

    from hf_videollm.training import default_lora_config

    model, proc = seq2seq
    collator = VideoLLMCollator(proc)
    samples = [
        {"index": i, "messages": [{"role": "user", "content": [{"type": "image", "image": tiny_media("image", i)},
                                                               {"type": "text", "text": q}]},
                                  {"role": "assistant", "content": [{"type": "text", "text": a}]}]}
        for i, (q, a) in enumerate([("what is shown", ANSWER), ("which color", "red")])
    ]
    batch = collator(samples)
    tok = proc.tokenizer
    assert batch["labels"].tolist() == [
        tok(ANSWER, add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
        tok("red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, -100, -100],
    ]
    assert batch["pixel_values"].shape[0] == 2 and set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values"}

    cfg = default_lora_config(model, r=4, alpha=8)
    assert cfg.task_type == "SEQ_2_SEQ_LM"
    model.save_pretrained(tmp_path)
    fresh = Seq2SeqForConditionalGeneration.from_pretrained(tmp_path)
    pm = peft.get_peft_model(fresh, default_lora_config(fresh, r=4, alpha=8))
    out = pm(**batch)
    out.loss.backward()
    lora = [n for n, p in pm.named_parameters() if p.grad is not None]
    assert lora and all("lora_" in n and ".language_model." in n for n in lora)

    base = Seq2SeqModel.from_pretrained(tmp_path).eval()  # T5Model: no head, same hidden states
    dec = model.language_model._shift_right(batch["labels"])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        ref = model(**inputs, decoder_input_ids=dec, output_hidden_states=True).decoder_hidden_states[-1]
        assert torch.allclose(base(**inputs, decoder_input_ids=dec).last_hidden_state, ref, atol=1e-5)
    del AutoModel


# ----------------------------------------------------------------------------------------------- grid positions
PATCH = 8
GRID_INPUTS = ModelInputs(
    modalities=(Modality("image", ("patch_embed",)),),
    inputs=(
        InputSpec("pixel_values", modality="image", collate="packed", rows_from="image_grid_thw"),
        InputSpec("image_grid_thw", modality="image", layout=True),  # the encoder reads it; positions need it per step
    ),
)


class GridConfig(PreTrainedConfig):
    model_type = "videollm_test_grid"
    sub_configs_defaults = {"text_config": SubConfigSpec(AutoConfig, model_type="qwen2_vl_text")}
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 0


class _MRopeLM(PreTrainedModel, GenerationMixin):
    """transformers' Qwen2-VL text model with an LM head (transformers has no causal-LM class for it alone)."""

    config_class = AutoConfig.for_model("qwen2_vl_text").__class__
    base_model_prefix = "model"
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLTextModel

        self.model = Qwen2VLTextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        logits = self.lm_head(out.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else out.last_hidden_state)
        return CausalLMOutputWithPast(logits=logits, cache=getattr(out, "cache", None))


class GridForConditionalGeneration(VideoLLMPreTrainedModel, GenerationMixin):
    config_class = GridConfig
    input_spec = GRID_INPUTS
    positions_from_layout = True
    _parts = {"patch_embed": ("patch_embed",), "language_model": ("language_model",)}

    def __init__(self, config):
        super().__init__(config)
        self.patch_embed = nn.Linear(3 * PATCH * PATCH, config.text_config.hidden_size)
        self.language_model = _MRopeLM(config.text_config)
        self.post_init()

    def get_image_features(self, pixel_values, image_grid_thw):
        rows = [int(g.prod()) for g in image_grid_thw]
        return list(self.patch_embed(pixel_values).split(rows))

    def compute_position_ids(self, input_ids, attention_mask, image_grid_thw=None):
        """(t, h, w) positions: text advances all three together; an image's tokens share t and spread h/w over its
        grid; the next text starts after the largest position so far. Padding gets position 1 (ignored)."""
        grids = [] if image_grid_thw is None else [tuple(int(x) for x in g) for g in image_grid_thw]
        out = torch.ones(3, *input_ids.shape, dtype=torch.long)
        item = 0
        for b in range(input_ids.shape[0]):
            real = attention_mask[b].bool() if attention_mask is not None else torch.ones_like(input_ids[b], dtype=torch.bool)
            idx = real.nonzero().flatten().tolist()
            cur, i = 0, 0
            while i < len(idx):
                if input_ids[b, idx[i]] == self.config.image_token_id:
                    _, h, w = grids[item]
                    item += 1
                    cols = torch.arange(h * w)
                    pos = idx[i : i + h * w]
                    out[0, b, pos] = cur
                    out[1, b, pos] = cur + cols // w
                    out[2, b, pos] = cur + cols % w
                    cur += max(h, w)
                    i += h * w
                else:
                    out[:, b, idx[i]] = cur
                    cur += 1
                    i += 1
        return out


class GridProcessor(VideoLLMProcessor):
    input_spec = GRID_INPUTS
    settings = {"image_token_id": 0}

    def default_chat_template(self):
        return None

    def _process_images(self, images):
        rows, grids, counts = [], [], []
        for img in images:  # (3, H, W) uint8: whole 8x8 patches, row-major
            h, w = img.shape[1] // PATCH, img.shape[2] // PATCH
            x = img[:, : h * PATCH, : w * PATCH].float() / 255
            patches = x.reshape(3, h, PATCH, w, PATCH).permute(1, 3, 0, 2, 4).reshape(h * w, -1)
            rows.append(patches)
            grids.append([1, h, w])
            counts.append(h * w)
        return {"pixel_values": torch.cat(rows), "image_grid_thw": torch.tensor(grids)}, counts


@pytest.fixture(scope="module")
def grid():
    tok = tiny_tokenizer(padding_side="left")
    torch.manual_seed(0)
    config = GridConfig(
        text_config=dict(model_type="qwen2_vl_text", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_id=len(tok),
    )
    model = GridForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, GridProcessor(tok, image_token_id=config.image_token_id)


def _img(h: int, w: int, seed: int = 0):
    return tiny_media("image", seed, height=h * PATCH, width=w * PATCH)


def test_grid_positions_come_from_the_grids_of_each_call(grid):
    model, proc = grid
    wide = proc(text=["<image> what is shown"], images=[_img(2, 4)])
    tall = proc(text=["<image> what is shown"], images=[_img(4, 2)])
    assert torch.equal(wide["input_ids"], tall["input_ids"])  # same tokens; only the grid differs
    pos_wide = model.compute_position_ids(wide["input_ids"], wide["attention_mask"], wide["image_grid_thw"])
    pos_tall = model.compute_position_ids(tall["input_ids"], tall["attention_mask"], tall["image_grid_thw"])
    assert not torch.equal(pos_wide, pos_tall)
    with torch.no_grad():
        a = model(**wide).logits
        b = model(**{**wide, "image_grid_thw": tall["image_grid_thw"]}).logits  # same pixels, other layout
        explicit = model(**wide, position_ids=pos_tall).logits
    assert not torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(b, explicit, atol=1e-6)  # forward computed exactly the grid's positions
    before = {k: v for k, v in vars(model).items() if isinstance(v, torch.Tensor)}
    two = proc(text=["<image> what is shown", "<image> which color"], images=[_img(2, 4), _img(3, 3, 1)])
    with torch.no_grad():
        model(**two)
        assert torch.allclose(model(**wide).logits, a, atol=1e-6)  # another batch size in between changes nothing
    assert {k: v for k, v in vars(model).items() if isinstance(v, torch.Tensor)} == before


def _greedy_by_full_forward(model, batch, steps: int) -> torch.Tensor:
    """Reference decoding: no cache, the whole sequence (and its positions) recomputed at every step."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(input_ids=ids, attention_mask=mask, **extra).logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


def test_grid_generate_computes_positions_at_every_step(grid):
    model, proc = grid
    batch = proc(text=["<image> what is shown", "a <image> which color is it please"], images=[_img(2, 4), _img(3, 2, 1)])
    gen = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    with_cache = model.generate(**batch, **gen)
    without_cache = model.generate(**batch, use_cache=False, **gen)
    assert torch.equal(with_cache, without_cache)
    assert torch.equal(with_cache, _greedy_by_full_forward(model, batch, 5))
    for b, (text, img) in enumerate([("<image> what is shown", _img(2, 4)), ("a <image> which color is it please", _img(3, 2, 1))]):
        one = proc(text=[text], images=[img])  # left padding changes nothing
        alone = model.generate(**one, **gen)
        assert torch.equal(alone[0, one["input_ids"].shape[1]:], with_cache[b, batch["input_ids"].shape[1]:])


def test_grid_beam_search_repeats_each_samples_grids(grid):
    model, proc = grid
    texts, images = ["<image> what is shown", "<image> <image> which color"], [_img(2, 4), _img(4, 2, 1), _img(1, 3, 2)]
    batch = proc(text=texts, images=images)
    gen = dict(max_new_tokens=4, min_new_tokens=4, num_beams=2, num_return_sequences=2, do_sample=False)
    out = model.generate(**batch, **gen)[:, batch["input_ids"].shape[1]:]
    for b, (text, imgs) in enumerate([(texts[0], images[:1]), (texts[1], images[1:])]):
        one = proc(text=[text], images=imgs)
        assert torch.equal(out[2 * b : 2 * b + 2], model.generate(**one, **gen)[:, one["input_ids"].shape[1]:])


def test_grid_inputs_collate_by_their_declared_rule(grid):
    model, proc = grid
    a = proc(text=["<image> one"], images=[_img(2, 4)])
    b = proc(text=["<image> <image> two"], images=[_img(3, 3, 1), _img(1, 2, 2)])
    batched = collate_inputs(GRID_INPUTS, [a, b])
    assert batched["image_grid_thw"].tolist() == [[1, 2, 4], [1, 3, 3], [1, 1, 2]]
    assert torch.equal(batched["pixel_values"], torch.cat([a["pixel_values"], b["pixel_values"]]))


def test_seq2seq_first_answer_token_scores_match_generate(seq2seq):
    """The demo's scoring (``next_token_logits``) reads an encoder-decoder LM's first decoder step, the scores
    ``generate`` starts from."""
    from hf_videollm.demo import next_token_logits

    model, proc = seq2seq
    batch = proc(text=[proc.apply_chat_template(_chat(q)) for q in ("what is it", "which colour")],
                 images=[tiny_media("image", 1), tiny_media("image", 2)], padding=True)
    with torch.no_grad():
        scores = model.generate(**batch, max_new_tokens=1, do_sample=False, output_scores=True,
                                return_dict_in_generate=True).scores[0]
        ours = next_token_logits(model, batch)
    torch.testing.assert_close(ours, scores.float())


# ----------------------------------------------------------------------------------------------- alternative inputs
def test_alternative_inputs_are_declared_and_validated():
    """``InputSpec(alternative_to=...)``: an encoder input that can replace another of its modality (precomputed
    features instead of pixels) turns the branch on by itself; wrong declarations fail at definition time."""
    video = (Modality("video", ("vision_tower",)),)
    spec = ModelInputs(
        modalities=video,
        inputs=(
            InputSpec("pixel_values_videos", modality="video"),
            InputSpec("video_features", modality="video", alternative_to="pixel_values_videos"),
        ),
    )
    assert spec.branch_inputs("video") == ("pixel_values_videos", "video_features")
    assert spec.alternative_groups("video") == {"pixel_values_videos": ("video_features",)}
    assert spec.encoder_inputs("video") == ("pixel_values_videos", "video_features")
    with pytest.raises(ValueError, match="primary encoder input"):
        ModelInputs(modalities=video, inputs=(
            InputSpec("pixel_values_videos", modality="video"),
            InputSpec("video_features", modality="video", alternative_to="missing"),
        ))
    with pytest.raises(ValueError, match="first encoder input"):
        ModelInputs(modalities=video, inputs=(
            InputSpec("video_features", modality="video", alternative_to="pixel_values_videos"),
            InputSpec("pixel_values_videos", modality="video"),
        ))
    with pytest.raises(ValueError, match="only an encoder input"):
        InputSpec("x", modality="video", encoder=False, alternative_to="pixel_values_videos")
