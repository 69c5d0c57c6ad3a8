# Profile of the model stage of bench_e2e (speed3, issue 18): 16 random 720p frames -> our LLaVA video path vs
# transformers LlavaForConditionalGeneration (frames as images), same weights, generate 1 token, cProfile both.
#   OMP_NUM_THREADS=2 python bench/profile_e2e_model.py
import cProfile
import pstats
import sys
import time

import numpy as np
import torch

sys.path.insert(0,'bench')
from bench_model import build_pair

torch.set_num_threads(2)
ours, theirs, processor = build_pair()
print("attn ours", ours.config.text_config._attn_implementation, ours.config.vision_config._attn_implementation,
      "theirs", theirs.config.text_config._attn_implementation, theirs.config.vision_config._attn_implementation)
processor.num_frames = 16
frames = [np.random.randint(0,255,(720,1280,3),dtype=np.uint8) for _ in range(16)]
batch = processor(text=[f"{processor.video_token} hi"], videos=[frames])
print({k:(tuple(v.shape), v.dtype) for k,v in batch.items() if hasattr(v,'shape')})
ids = batch["input_ids"]
# theirs: frames as images
pv = [v for k,v in batch.items() if k.startswith('pixel')][0]
pv = pv.reshape(-1,3,336,336)
tid = theirs.config.image_token_id
n = ids.shape[1]
tb = dict(input_ids=torch.full((1,n), 1), attention_mask=torch.ones(1,n,dtype=torch.long), pixel_values=pv)
mask = ids >= theirs.config.text_config.vocab_size - 2
tb['input_ids'] = torch.where(mask, tid, ids)
print("media positions", int(mask.sum()), "theirs image tok", int((tb['input_ids']==tid).sum()))
gen = dict(max_new_tokens=1, do_sample=False)
def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _ours():
    return ours.generate(**batch, **gen)


def _theirs():
    return theirs.generate(**tb, **gen)


with torch.no_grad():
    for _ in range(2):  # alternating
        print("ours", _timed(_ours), "theirs", _timed(_theirs))
    for name, fn in (("ours", _ours), ("theirs", _theirs)):
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        print("=====", name)
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)
