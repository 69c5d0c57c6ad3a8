"""Placeholder merge: scatter media features into the text embeddings, validated per sample.

Every model returns, for each modality, one tensor of visual/audio tokens per media item, already in the language
model's width. The processor expanded each item's placeholder to exactly that many placeholder tokens, so the merge
never guesses: it assigns items to samples in order and checks, sample by sample, that the placeholder count of a
sample equals the token count of the items that fall into it. transformers only checks the whole batch, so 15 + 17
placeholders for two 16-token images pass there and silently shift features between samples; here they fail and the
error says which sample, which modality, what was expected and what was found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["MediaMismatchError", "assign_items_to_samples", "as_item_list", "merge_media_embeddings", "media_mask"]


class MediaMismatchError(ValueError):
    """The placeholders in ``input_ids`` do not match the media features given."""


def as_item_list(features: torch.Tensor | Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    """Normalise features to a list of ``(tokens_i, hidden)`` tensors, one per media item."""
    if features is None:
        return []
    if isinstance(features, torch.Tensor):
        if features.ndim == 2:  # a single item
            return [features]
        if features.ndim != 3:
            raise ValueError(f"media features must be (items, tokens, hidden) or a list of (tokens, hidden); got {tuple(features.shape)}")
        return list(features.unbind(0))
    items = list(features)
    for i, item in enumerate(items):
        if item.ndim != 2:
            raise ValueError(f"media item {i} must be a (tokens, hidden) tensor, got shape {tuple(item.shape)}")
    return items


def _last_real_token_is_placeholder(row_mask: torch.Tensor, row_attention: torch.Tensor | None) -> bool:
    if row_attention is not None:
        real = row_attention.nonzero()
        if real.numel() == 0:
            return False
        last = int(real.max())
    else:
        last = row_mask.shape[0] - 1
    return bool(row_mask[last])


def assign_items_to_samples(
    placeholder_counts: Sequence[int],
    item_lengths: Sequence[int],
    *,
    modality: str,
    token: str,
    attention_mask: torch.Tensor | None = None,
    placeholder_mask: torch.Tensor | None = None,
) -> list[list[int]]:
    """Return, for each sample, the indices of the media items it consumes.

    Items are consumed in order; a sample must consume whole items whose token counts add up exactly to its number
    of placeholder tokens. Raises :class:`MediaMismatchError` naming the sample otherwise.
    """
    groups: list[list[int]] = []
    item = 0
    n_items = len(item_lengths)
    for sample, count in enumerate(placeholder_counts):
        count = int(count)
        taken: list[int] = []
        filled = 0
        while filled < count and item < n_items:
            if filled + item_lengths[item] > count:
                break
            filled += item_lengths[item]
            taken.append(item)
            item += 1
        if filled != count:
            expected = filled + (item_lengths[item] if item < n_items else 0)
            cause = _likely_cause(sample, count, filled, item < n_items, attention_mask, placeholder_mask, modality)
            if item >= n_items:
                detail = (
                    f"sample {sample} has {count} {modality} placeholder tokens ({token}) but only {filled} {modality} "
                    f"feature tokens are left for it ({n_items} {modality} item(s) given in the batch)"
                )
            else:
                detail = (
                    f"sample {sample} has {count} {modality} placeholder tokens ({token}); the {modality} items assigned "
                    f"to it in order cover {filled} tokens and the next item ({modality} {item}) has "
                    f"{item_lengths[item]} tokens, so a whole number of items would need {expected} placeholders"
                )
            raise MediaMismatchError(f"{detail}. {cause}")
        groups.append(taken)
    if item != n_items:
        leftover = n_items - item
        raise MediaMismatchError(
            f"{leftover} {modality} item(s) were given but no {token} placeholders are left for them "
            f"(placeholder tokens per sample: {list(map(int, placeholder_counts))}; item token counts: "
            f"{list(map(int, item_lengths))}). Each {modality} needs its own placeholder in the prompt; build inputs "
            f"with the model's processor so the placeholders are expanded to the right count."
        )
    return groups


def _likely_cause(sample, count, filled, more_items, attention_mask, placeholder_mask, modality) -> str:
    if placeholder_mask is not None and count > 0:
        row_attn = attention_mask[sample] if attention_mask is not None else None
        if _last_real_token_is_placeholder(placeholder_mask[sample], row_attn):
            return (
                "Likely cause: the text was truncated inside the placeholder run (the sequence ends on a placeholder); "
                "raise max_length or shorten the text instead of cutting media tokens."
            )
    return (
        f"Likely causes: the prompt has a different number of {modality} markers than {modality}s passed for this "
        f"sample, the text was truncated, or the inputs were expanded for another resolution/frame count than the "
        f"pixels given; build inputs with the model's processor."
    )


def media_mask(input_ids: torch.Tensor, token_ids: Mapping[str, int | None]) -> torch.Tensor:
    """Boolean mask of every media placeholder position, over all modalities."""
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for tid in token_ids.values():
        if tid is not None:
            mask |= input_ids == tid
    return mask


def merge_media_embeddings(
    input_ids: torch.Tensor,
    inputs_embeds: torch.Tensor,
    features: Mapping[str, torch.Tensor | Sequence[torch.Tensor] | None],
    token_ids: Mapping[str, int | None],
    *,
    attention_mask: torch.Tensor | None = None,
    token_names: Mapping[str, str] | None = None,
) -> torch.Tensor:
    """Write each modality's feature tokens over its placeholder positions, after checking counts per sample.

    Args:
        input_ids: ``(B, L)`` token ids with placeholders already expanded (one id per feature token).
        inputs_embeds: ``(B, L, D)`` text embeddings (placeholder rows are overwritten).
        features: modality -> per-item features, each ``(tokens_i, D)``; items in order over the batch.
        token_ids: modality -> placeholder token id.
    """
    token_names = token_names or {}
    out = inputs_embeds
    for modality, tid in token_ids.items():
        items = as_item_list(features.get(modality))
        name = token_names.get(modality, f"<{modality}>")
        if tid is None:
            if items:
                raise MediaMismatchError(f"{modality} features were given but this model has no {modality} placeholder token")
            continue
        mask = input_ids == tid
        counts = mask.sum(dim=1).tolist()
        if not items:
            if any(counts):
                first = next(i for i, c in enumerate(counts) if c)
                raise MediaMismatchError(
                    f"sample {first} has {counts[first]} {modality} placeholder tokens ({name}) but no {modality} "
                    f"inputs were given; pass the {modality} pixels/features, or remove the placeholders."
                )
            continue
        assign_items_to_samples(
            counts, [it.shape[0] for it in items], modality=modality, token=name,
            attention_mask=attention_mask, placeholder_mask=mask,
        )
        hidden = out.shape[-1]
        for i, it in enumerate(items):
            if it.shape[-1] != hidden:
                raise MediaMismatchError(
                    f"{modality} item {i} has width {it.shape[-1]} but the language model embeddings have width {hidden}"
                )
        flat = torch.cat(items, dim=0).to(device=out.device, dtype=out.dtype)
        out = out.masked_scatter(mask.unsqueeze(-1).to(out.device), flat)
    return out
