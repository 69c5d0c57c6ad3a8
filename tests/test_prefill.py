"""Encoding the training samples ahead in threads (``TrainConfig.prefill_cache_threads``, used by the demo) trains on
exactly what lazy first-epoch encoding gives: the same batches, in the same order, with the same pixels."""

from __future__ import annotations

import pytest
import torch

from hf_videollm import synthetic as S
from hf_videollm.demo import write_schedule
from hf_videollm.registry import MODELS
from hf_videollm.tiny import tiny_tokenizer
from hf_videollm.training import TrainConfig, VideoLLMCollator, VideoLLMDataset, load_records, train


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The demo's tiny VideoLLaMA 2 (saved) and a schedule that repeats 8 synthetic videos over 6 batches of 4."""
    root = tmp_path_factory.mktemp("prefill")
    data = S.generate_dataset(root / "data", split="train", samples_per_kind=2, kinds=["appearance", "direction",
                              "order", "count"], size=32, num_frames=16, workers=1)
    schedule, _ = write_schedule(data, first_types=("direction",), first_steps=2, steps=6, batch_size=4, seed=0)
    spec = MODELS["videollama2"]
    model, processor = spec.build_tiny(tiny_tokenizer(extra_words=S.VOCABULARY), 0, **spec.get_demo_preset().model_overrides)
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    return root, schedule, processor


def test_prefill_gives_the_batches_lazy_encoding_gives(demo_data, monkeypatch):
    _, schedule, processor = demo_data
    ds = VideoLLMDataset(load_records([str(schedule)]), processor)
    assert len(ds) == 24 and len(ds.distinct_positions()) == 8  # every video of the 8 rows repeats
    ahead = VideoLLMCollator(processor, cache=True)
    assert ahead.prefill((ds[i] for i in ds.distinct_positions()), threads=3) == 8
    assert ahead.prefill((ds[i] for i in range(len(ds))), threads=2) == 0  # all there already
    calls = []
    real = type(processor).__call__
    monkeypatch.setattr(type(processor), "__call__", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    lazy = VideoLLMCollator(processor, cache=True)
    for start in range(0, len(ds), 4):
        batch = [ds[i] for i in range(start, start + 4)]
        a, b = ahead(batch), lazy(batch)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert len(calls) == 8  # the lazy collator's first epoch; the prefilled one encoded nothing more
    assert ds.distinct_positions(limit=4) == [i for i in range(4) if ds[i]["messages"] not in [ds[j]["messages"] for j in range(i)]]
    with pytest.raises(ValueError, match="cache=True"):
        VideoLLMCollator(processor).prefill([ds[0]])


def test_training_with_prefill_is_identical_to_lazy_encoding(demo_data):
    root, schedule, _ = demo_data
    runs = {}
    for threads in (0, 2):
        cfg = TrainConfig(model=str(root / "base"), data=[str(schedule)], output_dir=str(root / f"out{threads}"),
                          model_family="videollama2", trainable_parts=["vision_tower", "connector", "language_model"],
                          learning_rate=1e-3, max_steps=4, per_device_train_batch_size=4, shuffle=False, seed=0,
                          logging_steps=1, cache_encoded_samples=True, prefill_cache_threads=threads, use_cpu=True,
                          extra_training_args={"disable_tqdm": True})
        trainer = train(cfg)
        runs[threads] = ([h["loss"] for h in trainer.state.log_history if "loss" in h],
                         {k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    assert runs[0][0] == runs[2][0] and len(runs[0][0]) == 4
    assert all(torch.equal(runs[0][1][k], runs[2][1][k]) for k in runs[0][1])
    with pytest.raises(ValueError, match="cache_encoded_samples"):
        TrainConfig(model="m", data=["d"], output_dir="o", prefill_cache_threads=2)
