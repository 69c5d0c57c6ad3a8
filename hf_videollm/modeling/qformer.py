"""The Q-Former bridge (BLIP-2, InstructBLIP, Video-LLaMA 1): learned queries read an encoder's tokens.

``QFormerBridge`` = ``query_tokens (1, Q, H)`` + a BERT-style Q-Former composed from transformers:

* query-only (BLIP-2 OPT/T5, Video-LLaMA's image and video Q-Formers): ``Blip2QFormerModel`` -- the queries go
  through the embedding LayerNorm (LAVIS ``BertEmbeddings`` with ``query_embeds`` only), then the layers; cross-attention
  to the encoder tokens on every ``cross_attention_frequency``-th layer, query FFN (``intermediate_query`` /
  ``output_query``);
* with text (InstructBLIP, stage-1 pre-training): ``InstructBlipQFormerModel`` -- word + absolute position embeddings
  of the text (positions from 0 for the first text token), concatenated after the queries, the whole sequence
  LayerNorm'ed (LAVIS ``BertEmbeddings``); text positions use the text FFN (``intermediate`` / ``output``) and never
  cross-attend.

Both reproduce LAVIS' ``Qformer.py`` numerics (the additive mask value differs: ``finfo.min`` vs LAVIS' ``-10000``;
both give exactly zero attention weight in float32). The module attribute of the transformers Q-Former is ``bert``,
as LAVIS' ``Qformer.bert``, so the original key names map one to one.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, InstructBlipQFormerConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel
from transformers.models.instructblip.modeling_instructblip import InstructBlipQFormerModel

__all__ = ["QFormerBridge", "qformer_config", "QFORMER_BERT_BASE"]

#: ``bert-base-uncased`` sizes LAVIS builds its Q-Former from (``BertConfig.from_pretrained("bert-base-uncased")``).
QFORMER_BERT_BASE = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    layer_norm_eps=1e-12, initializer_range=0.02, pad_token_id=0, cross_attention_frequency=2,
    encoder_hidden_size=1408,
)


def qformer_config(text_input: bool, **kwargs) -> Blip2QFormerConfig | InstructBlipQFormerConfig:
    """A Q-Former config: bert-base sizes (LAVIS) updated by ``kwargs``; ``text_input`` selects the text branch."""
    values = {**QFORMER_BERT_BASE, **kwargs}
    if text_input:
        values.pop("use_qformer_text_input", None)
        return InstructBlipQFormerConfig(**values)
    values["use_qformer_text_input"] = False
    return Blip2QFormerConfig(**values)


class QFormerBridge(nn.Module):
    """``num_query_tokens`` learned queries -> Q-Former over ``encoder_hidden_states`` (+ optional text).

    ``config``: a ``Blip2QFormerConfig`` (queries only) or an ``InstructBlipQFormerConfig`` (queries + text: the
    instruction, or stage-1 captions). ``forward`` returns the Q-Former's last hidden state over the whole sequence
    ``[queries; text]``; :meth:`query_output` keeps the ``Q`` query positions (what goes to the language model).
    """

    def __init__(self, config: Blip2QFormerConfig | InstructBlipQFormerConfig, num_query_tokens: int):
        super().__init__()
        if num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be >= 1, got {num_query_tokens}")
        self.config = config
        self.num_query_tokens = num_query_tokens
        self.text_input = isinstance(config, InstructBlipQFormerConfig)
        if not self.text_input and getattr(config, "use_qformer_text_input", False):
            raise ValueError(
                "a query-only Q-Former (Blip2QFormerConfig) must have use_qformer_text_input=False; use an "
                "InstructBlipQFormerConfig for a Q-Former that reads text"
            )
        self.bert = InstructBlipQFormerModel(config) if self.text_input else Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, config.hidden_size))

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(
        self,
        encoder_hidden_states: torch.Tensor | None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_queries: bool = True,
        **kwargs,
    ):
        """Q-Former over ``[queries; embed(input_ids)]`` cross-attending ``encoder_hidden_states`` ``(N, S, C_enc)``.

        ``attention_mask``: the text mask ``(N, T)`` (queries are always attended), or a prepared 4D additive mask
        over the whole sequence (e.g. stage-1 image-grounded generation). ``use_queries=False`` runs the text alone
        (stage-1 text encoder: no queries, no cross-attention). Returns the transformers output
        (``last_hidden_state`` over queries then text)."""
        if use_queries and encoder_hidden_states is None:
            raise ValueError("the queries cross-attend the encoder's tokens: pass encoder_hidden_states")
        if input_ids is not None and not self.text_input:
            raise ValueError(
                "this Q-Former reads no text (query-only, as BLIP-2's); qformer_input_ids need an InstructBLIP-style "
                "Q-Former (InstructBlipQFormerConfig)"
            )
        ref = encoder_hidden_states if encoder_hidden_states is not None else input_ids
        batch = ref.shape[0]
        device = self.query_tokens.device
        queries = self.query_tokens.expand(batch, -1, -1) if use_queries else None
        enc_mask = None
        if encoder_hidden_states is not None and use_queries:
            encoder_hidden_states = encoder_hidden_states.to(device=device, dtype=self.query_tokens.dtype)
            enc_mask = encoder_attention_mask
            if enc_mask is None:
                enc_mask = torch.ones(encoder_hidden_states.shape[:-1], dtype=torch.long, device=device)
        if not self.text_input:
            return self.bert(
                query_embeds=queries, encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=enc_mask,
                **kwargs,
            )
        if input_ids is not None and attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask is not None and attention_mask.ndim == 2 and use_queries:
            ones = torch.ones(batch, self.num_query_tokens, dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
        if input_ids is None and attention_mask is None and use_queries:
            attention_mask = None
        return self.bert(
            input_ids=input_ids, attention_mask=attention_mask, query_embeds=queries,
            encoder_hidden_states=encoder_hidden_states if use_queries else None,
            encoder_attention_mask=enc_mask, **kwargs,
        )

    def query_output(
        self,
        encoder_hidden_states: torch.Tensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ``(N, Q, H)`` query outputs (text positions, if any, sliced off)."""
        out = self(encoder_hidden_states, input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state[:, : self.num_query_tokens]

    def init_queries(self, std: float) -> None:
        from transformers import initialization as init

        init.normal_(self.query_tokens, mean=0.0, std=std)
