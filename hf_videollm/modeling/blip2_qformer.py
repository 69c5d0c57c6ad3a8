"""BLIP-2 stage 1: Q-Former pre-training with a frozen image encoder (LAVIS ``Blip2Qformer``, arch ``blip2``).

Three losses on image-caption pairs, all through one Q-Former (:class:`~.qformer.QFormerBridge` with its text
branch), each with its own self-attention mask:

* ITC (image-text contrastive): queries alone (cross-attending the image) vs the caption alone (no queries,
  bidirectional); similarity = max over the queries of ``<query_feat, text_cls_feat>`` / ``temp``; symmetric
  cross-entropy (label smoothing 0.1).
* ITM (image-text matching): queries + caption jointly (bidirectional), ``itm_head`` on the query outputs averaged;
  one hard negative caption per image and one hard negative image per caption, sampled from the ITC similarities
  (``softmax`` with the positive excluded), as LAVIS does.
* ITG (image-grounded text generation): the caption's first token replaced by ``[DEC]``; queries see only queries,
  text sees every query and the text before it (causal); the LM head predicts the next token (label smoothing 0.1).

The trained Q-Former, queries and ``ln_vision`` initialise stage 2 (:class:`~.blip2.VideoLLMBlip2Model`): the key
names are the same (``vision_tower.*``, ``qformer.*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import ModelOutput
from transformers.models.blip_2.modeling_blip_2 import Blip2VisionModel

from .base import VideoLLMPreTrainedModel
from .blip2 import EVA_VIT_G
from .qformer import QFORMER_BERT_BASE, QFormerBridge

__all__ = ["VideoLLMBlip2QFormerConfig", "VideoLLMBlip2QFormerForPretraining", "Blip2QFormerPretrainingOutput"]


class VideoLLMBlip2QFormerConfig(PreTrainedConfig):
    r"""Stage-1 configuration: EVA ViT + ``ln_vision``, a Q-Former with its text branch (bert-base + ``[DEC]``),
    ``embed_dim`` (256) contrastive projections, ``temp`` initial temperature (0.07)."""

    model_type = "videollm_blip2_qformer"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="blip_2_vision_model", init_kwargs=EVA_VIT_G),
        "qformer_config": SubConfigSpec(
            AutoConfig, model_type="instructblip_qformer", init_kwargs={**QFORMER_BERT_BASE, "vocab_size": 30523}
        ),
    }
    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    embed_dim: int = 256
    temp: float = 0.07
    ln_vision_eps: float = 1e-5
    label_smoothing: float = 0.1
    bos_token_id: int = 30522  # [DEC]
    pad_token_id: int = 0
    initializer_range: float = 0.02


@dataclass
class Blip2QFormerPretrainingOutput(ModelOutput):
    loss: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    loss_itg: torch.Tensor | None = None
    sim_i2t: torch.Tensor | None = None


class _TextLMHead(nn.Module):
    """BERT's LM prediction head (dense -> gelu -> LayerNorm -> decoder); LAVIS ``Qformer.cls``."""

    def __init__(self, hidden: int, vocab: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(x))))


class VideoLLMBlip2QFormerForPretraining(VideoLLMPreTrainedModel):
    """Stage 1: ``forward(pixel_values, input_ids, attention_mask)`` -> ITC + ITM + ITG losses (summed in ``loss``).

    ``input_ids`` are the captions tokenized by the Q-Former tokenizer (``[CLS] caption [SEP]``, right-padded). The
    batch needs at least two pairs (ITM's negatives come from the other pairs)."""

    config_class = VideoLLMBlip2QFormerConfig
    main_input_name = "pixel_values"
    _parts = {
        "vision_tower": ("vision_tower",),
        "ln_vision": ("vision_tower.post_layernorm",),
        "qformer": ("qformer", "text_head", "vision_proj", "text_proj", "itm_head", "temp"),
    }

    def __init__(self, config: VideoLLMBlip2QFormerConfig):
        super().__init__(config)
        self.vision_tower = Blip2VisionModel(config.vision_config)
        self.vision_tower.post_layernorm = nn.LayerNorm(config.vision_config.hidden_size, eps=config.ln_vision_eps)
        self.qformer = QFormerBridge(config.qformer_config, config.num_query_tokens)
        if not self.qformer.text_input:
            raise ValueError("stage 1 needs a Q-Former with its text branch (qformer_config of type instructblip_qformer)")
        h = config.qformer_config.hidden_size
        self.text_head = _TextLMHead(h, config.qformer_config.vocab_size, config.qformer_config.layer_norm_eps)
        self.vision_proj = nn.Linear(h, config.embed_dim)
        self.text_proj = nn.Linear(h, config.embed_dim)
        self.itm_head = nn.Linear(h, 2)
        self.temp = nn.Parameter(torch.tensor(float(config.temp)))
        self.post_init()
        self.vision_tower.requires_grad_(False)  # frozen image encoder (ln_vision trains)
        self.vision_tower.post_layernorm.requires_grad_(True)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, QFormerBridge):
            module.init_queries(self.config.qformer_config.initializer_range)
            return
        if module is self:
            from transformers import initialization as init

            init.constant_(self.temp, float(self.config.temp))
        super()._init_weights(module)

    def get_input_embeddings(self):
        return self.qformer.bert.get_input_embeddings()

    def _itg_mask(self, text_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive ``(B, 1, Q+T, Q+T)`` mask: queries see queries; text sees every query and earlier text."""
        b, t = text_mask.shape
        q = self.config.num_query_tokens
        allowed = torch.zeros(b, q + t, q + t, dtype=torch.bool, device=text_mask.device)
        allowed[:, :q, :q] = True
        allowed[:, q:, :q] = True
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=text_mask.device))
        allowed[:, q:, q:] = causal[None] & text_mask[:, None, :].bool()
        mask = torch.zeros(allowed.shape, dtype=dtype, device=text_mask.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.LongTensor, attention_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        b = input_ids.shape[0]
        if b < 2:
            raise ValueError("stage-1 pre-training needs at least 2 image-caption pairs per batch (ITM negatives)")
        smooth = self.config.label_smoothing if self.training else 0.0
        image_embeds = self.vision_tower(self._cast_for(self.vision_tower, pixel_values)).last_hidden_state
        q = self.config.num_query_tokens

        # ---- ITC
        query_out = self.qformer(image_embeds).last_hidden_state[:, :q]
        image_feats = F.normalize(self.vision_proj(query_out), dim=-1)  # (B, Q, E)
        text_out = self.qformer(None, input_ids=input_ids, attention_mask=attention_mask, use_queries=False)
        text_feat = F.normalize(self.text_proj(text_out.last_hidden_state[:, 0]), dim=-1)  # (B, E)
        temp = self.temp.clamp(0.001, 0.5)
        sim_i2t = torch.einsum("iqe,te->itq", image_feats, text_feat).max(-1).values / temp
        sim_t2i = torch.einsum("te,iqe->tiq", text_feat, image_feats).max(-1).values / temp
        targets = torch.arange(b, device=input_ids.device)
        loss_itc = (F.cross_entropy(sim_i2t, targets, label_smoothing=smooth)
                    + F.cross_entropy(sim_t2i, targets, label_smoothing=smooth)) / 2

        # ---- ITM with hard negatives sampled from the contrastive similarities
        with torch.no_grad():
            eye = torch.eye(b, dtype=torch.bool, device=input_ids.device)
            w_t2i = F.softmax(sim_t2i.float().masked_fill(eye, -10000.0), dim=1)
            w_i2t = F.softmax(sim_i2t.float().masked_fill(eye, -10000.0), dim=1)
            neg_image = torch.multinomial(w_t2i, 1).squeeze(1)  # for each caption, an image that is not its own
            neg_text = torch.multinomial(w_i2t, 1).squeeze(1)  # for each image, a caption that is not its own
        ids_all = torch.cat([input_ids, input_ids, input_ids[neg_text]])
        mask_all = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]])
        images_all = torch.cat([image_embeds, image_embeds[neg_image], image_embeds])
        itm_out = self.qformer(images_all, input_ids=ids_all, attention_mask=mask_all).last_hidden_state[:, :q]
        itm_logits = self.itm_head(itm_out).mean(1)
        itm_labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(input_ids.device)
        loss_itm = F.cross_entropy(itm_logits, itm_labels)

        # ---- ITG: [DEC] + caption, causal text over the queries
        dec_ids = input_ids.clone()
        dec_ids[:, 0] = self.config.bos_token_id
        labels = dec_ids.masked_fill(attention_mask == 0, -100)
        mask4d = self._itg_mask(attention_mask, query_out.dtype)
        itg_hidden = self.qformer(image_embeds, input_ids=dec_ids, attention_mask=mask4d).last_hidden_state[:, q:]
        logits = self.text_head(itg_hidden)
        loss_itg = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100,
            label_smoothing=smooth,
        )
        loss = loss_itc + loss_itm + loss_itg
        return Blip2QFormerPretrainingOutput(loss=loss, loss_itc=loss_itc.detach(), loss_itm=loss_itm.detach(),
                                             loss_itg=loss_itg.detach(), sim_i2t=sim_i2t.detach())
