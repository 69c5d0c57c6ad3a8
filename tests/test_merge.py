"""The shared placeholder merge validates per sample and names what is wrong."""

import pytest
import torch

from hf_videollm.modeling.merge import MediaMismatchError, assign_items_to_samples, merge_media_embeddings

IMG = 9


def _ids(rows):
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])


def test_merge_places_each_sample_features_in_its_own_row():
    ids = _ids([[1, IMG, IMG, 2], [1, 3, IMG, IMG, IMG, IMG]])
    embeds = torch.zeros(2, ids.shape[1], 4)
    a = torch.full((2, 4), 1.0)
    b = torch.full((4, 4), 2.0)
    out = merge_media_embeddings(ids, embeds, {"image": [a, b]}, {"image": IMG})
    assert torch.equal(out[0, 1:3], a)
    assert torch.equal(out[1, 2:6], b)
    assert out[0, 0].abs().sum() == 0 and out[1, 1].abs().sum() == 0


def test_global_count_match_but_per_sample_mismatch_is_rejected():
    # 15 + 17 placeholders for two 16-token images: transformers accepts this and shifts a feature across samples.
    ids = _ids([[IMG] * 15, [IMG] * 17])
    embeds = torch.zeros(2, 17, 4)
    feats = torch.ones(2, 16, 4)
    with pytest.raises(MediaMismatchError) as e:
        merge_media_embeddings(ids, embeds, {"image": feats}, {"image": IMG})
    msg = str(e.value)
    assert "sample 0" in msg and "15" in msg and "16" in msg and "image" in msg


def test_missing_features_and_leftover_items_are_named():
    ids = _ids([[1, IMG, IMG], [1, 2, 3]])
    with pytest.raises(MediaMismatchError, match="no image inputs were given"):
        merge_media_embeddings(ids, torch.zeros(2, 3, 4), {}, {"image": IMG})
    with pytest.raises(MediaMismatchError, match="no <image> placeholders are left"):
        merge_media_embeddings(ids, torch.zeros(2, 3, 4), {"image": torch.ones(2, 2, 4)}, {"image": IMG})


def test_truncation_is_reported_as_the_likely_cause():
    ids = _ids([[1, 2, IMG, IMG, IMG]])  # sequence ends inside the placeholder run: 3 of 4 survived truncation
    with pytest.raises(MediaMismatchError, match="truncated"):
        merge_media_embeddings(ids, torch.zeros(1, 5, 4), {"image": torch.ones(1, 4, 4)}, {"image": IMG})


def test_variable_length_items_are_grouped_per_sample():
    groups = assign_items_to_samples([5, 0, 3], [2, 3, 3], modality="video", token="<video>")
    assert groups == [[0, 1], [], [2]]
    with pytest.raises(MediaMismatchError, match="sample 0"):
        assign_items_to_samples([4, 4], [2, 3, 3], modality="video", token="<video>")


def test_width_mismatch_is_an_error():
    ids = _ids([[IMG, IMG]])
    with pytest.raises(MediaMismatchError, match="width"):
        merge_media_embeddings(ids, torch.zeros(1, 2, 4), {"image": torch.ones(1, 2, 5)}, {"image": IMG})


def test_merge_keeps_gradients_flowing_to_features():
    ids = _ids([[1, IMG, IMG]])
    feats = torch.randn(1, 2, 4, requires_grad=True)
    out = merge_media_embeddings(ids, torch.zeros(1, 3, 4), {"image": feats}, {"image": IMG})
    out.sum().backward()
    assert feats.grad is not None and torch.all(feats.grad == 1)
