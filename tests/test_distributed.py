"""Distributed training: the shipped Accelerate configs, and real 2-process DDP runs on the CPU (gloo).

The 2-process runs train ``tiny:llava`` on two samples, one with an image and one text-only, so in every step one
rank has an image and the other none. The rank without media must still run the vision tower + projector (the dummy
pass of ``VideoLLMPreTrainedModel._multimodal_forward``): DDP with ``find_unused_parameters=False`` (the Trainer's
choice whenever gradient checkpointing is on) waits for gradients of every trainable parameter on every rank, and
FSDP / ZeRO-3 gather parameters collectively. The negative control removes the dummy pass and shows the run
deadlocks. Each launched worker arms a ``faulthandler`` watchdog when its first batch is collated, so a hang ends
with every thread's stack on stderr instead of blocking the test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import hf_videollm.training

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = Path(hf_videollm.training.__file__).resolve().parent / "accelerate_configs"
GPU_CONFIGS = ["ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"]
CPU_CONFIG = "cpu_ddp_2proc.yaml"


# ------------------------------------------------------------------------------------------------ config files
def _launch_env(config_file: Path, monkeypatch) -> tuple:
    """What ``accelerate launch --config_file`` makes of a file: its parsed args and the environment it gives the
    workers (accelerate's own parser, validation and env builders; nothing is started). The new variables are set
    in this process through ``monkeypatch`` so plugins can be built from them."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    new = {k: v for k, v in env.items() if os.environ.get(k) != v and k.startswith(("ACCELERATE_", "FSDP_"))}
    for key, value in new.items():
        monkeypatch.setenv(key, value)
    return args, new


@pytest.mark.parametrize("name", [*GPU_CONFIGS, CPU_CONFIG])
def test_accelerate_config_loads(name, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import ComputeEnvironment, DistributedType

    config = load_config_from_file(str(CONFIG_DIR / name))  # unknown keys raise here
    assert isinstance(config, ClusterConfig)
    assert config.compute_environment == ComputeEnvironment.LOCAL_MACHINE
    assert config.num_machines == 1
    args, env = _launch_env(CONFIG_DIR / name, monkeypatch)
    if name == CPU_CONFIG:
        # accelerate's MULTI_CPU type starts one process without mpirun; the torchrun-based launcher starts 2.
        assert config.distributed_type == DistributedType.MULTI_GPU and config.use_cpu
        assert config.num_processes == 2 and args.multi_gpu and args.num_processes == 2
        assert env["ACCELERATE_MIXED_PRECISION"] == "no"
        return
    assert config.mixed_precision == "bf16" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert config.num_processes == 8 and not config.use_cpu
    expected = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP"}.get(name, "DEEPSPEED")
    assert config.distributed_type == DistributedType[expected]


def test_fsdp_config(monkeypatch):
    from accelerate.utils.dataclasses import get_module_class_from_name

    from hf_videollm.tiny import build_tiny

    args, env = _launch_env(CONFIG_DIR / "fsdp.yaml", monkeypatch)
    assert args.use_fsdp
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_VERSION"] == "1"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_USE_ORIG_PARAMS"] == "true"  # frozen and trainable parameters share FSDP units
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert env["FSDP_SYNC_MODULE_STATES"] == "true"
    # FullyShardedDataParallelPlugin cannot be built without an accelerator; resolve the names the way its
    # set_auto_wrap_policy does. The file names the classes explicitly: the model's `_no_split_modules` (what
    # accelerate uses when the key is unset) also lists CLIPTextEmbeddings, absent from a vision-only tower.
    model, _ = build_tiny("llava")
    names = env["FSDP_TRANSFORMER_CLS_TO_WRAP"].split(",")
    assert names == ["CLIPEncoderLayer", "LlamaDecoderLayer"]
    for name in names:
        cls = get_module_class_from_name(model, name)
        assert cls is not None and name in model._no_split_modules
    wrapped = {type(m).__name__ for m in model.modules()} & set(names)
    assert wrapped == set(names)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_config(stage, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    args, env = _launch_env(CONFIG_DIR / f"deepspeed_zero{stage}.yaml", monkeypatch)
    assert args.use_deepspeed and env["ACCELERATE_USE_DEEPSPEED"] == "true"
    plugin = DeepSpeedPlugin()  # reads the ACCELERATE_DEEPSPEED_* variables; needs no deepspeed install
    plugin.set_mixed_precision(env["ACCELERATE_MIXED_PRECISION"])
    ds = plugin.deepspeed_config
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert zero["offload_optimizer"]["device"] == "none" and zero["offload_param"]["device"] == "none"
    assert ds["bf16"]["enabled"] is True
    # Left to the training config (TrainingArguments fills "auto"), so they cannot conflict with it.
    assert ds["gradient_accumulation_steps"] == "auto" and ds["gradient_clipping"] == "auto"
    assert ds["train_micro_batch_size_per_gpu"] == "auto"
    assert plugin.zero3_init_flag is (stage == 3)
    assert zero["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)


def test_readme_covers_every_config():
    readme = (CONFIG_DIR / "README.md").read_text()
    files = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
    assert files == sorted([*GPU_CONFIGS, CPU_CONFIG])
    for name in files:
        assert f"`{name}`" in readme
    assert "accelerate launch --config_file" in readme and "-m hf_videollm.cli train --config" in readme
    assert "torchrun --nproc_per_node" in readme


# ------------------------------------------------------------------------------------------------ 2-process DDP
WORKER = textwrap.dedent(
    '''
    """One rank of a distributed test run: train(TrainConfig(...)), then report what this rank ended with."""
    import faulthandler
    import hashlib
    import json
    import os
    import sys
    from pathlib import Path

    import torch

    from hf_videollm.modeling.base import VideoLLMPreTrainedModel
    from hf_videollm.training import TrainConfig, VideoLLMCollator, train

    opts = json.loads(Path(sys.argv[1]).read_text())
    rank = int(os.environ["RANK"])
    report = Path(opts["report_dir"])

    if opts.get("disable_dummy"):  # negative control: no encoder pass on ranks whose batch lacks the modality
        VideoLLMPreTrainedModel._dummy_media_sum = lambda self, features: None

    has_image = []
    _collate = VideoLLMCollator.__call__


    def collate(self, samples):
        if not has_image:  # training starts: from here on a hang is a failure
            (report / f"started_rank{rank}").touch()
            # each rank dumps to its own file: two ranks writing to one stderr interleave their stacks
            dump = open(report / f"watchdog_rank{rank}.txt", "w")
            faulthandler.dump_traceback_later(opts["watchdog_s"], exit=True, file=dump)
        batch = _collate(self, samples)
        has_image.append("pixel_values" in batch)
        return batch


    VideoLLMCollator.__call__ = collate
    trainer = train(TrainConfig(**opts["config"]))
    faulthandler.cancel_dump_traceback_later()

    params = {n: p.detach().float().cpu().contiguous() for n, p in trainer.model.named_parameters()}
    digest = hashlib.sha256()
    for name in sorted(params):
        digest.update(name.encode())
        digest.update(params[name].numpy().tobytes())
    projector = {n: t for n, t in params.items() if n.startswith("multi_modal_projector.")}
    torch.save(projector, report / f"projector_rank{rank}.pt")
    (report / f"rank{rank}.json").write_text(json.dumps({
        "world_size": int(os.environ["WORLD_SIZE"]),
        "sha256": digest.hexdigest(),
        "has_image": has_image,
        "global_step": trainer.state.global_step,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
    }))
    print(f"rank {rank} finished: {trainer.state.global_step} steps, image per batch {has_image}", flush=True)
    '''
)


def _write_case(tmp_path: Path, **opts) -> Path:
    """Data (one image sample, one text-only sample), the worker script and its options; returns the options file."""
    import numpy as np
    from PIL import Image

    from hf_videollm.training.train import _materialize_tiny

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(tmp_path / "picture.png")
    records = [
        {
            "image": "picture.png",
            "conversations": [
                {"from": "human", "value": "<image>\nwhat color is shown in this image ?"},
                {"from": "gpt", "value": "red and green"},
            ],
        },
        {
            "conversations": [
                {"from": "human", "value": "how many times does it flash ?"},
                {"from": "gpt", "value": "three times"},
            ]
        },
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    # The tiny model's on-disk base, written once before launch: every rank of train() would otherwise write it
    # to the same directory at the same time.
    _materialize_tiny("llava", out, seed=42)
    (tmp_path / "worker.py").write_text(WORKER)
    config = dict(
        model="tiny:llava",
        data=[str(tmp_path / "data.jsonl")],
        output_dir=str(out),
        stage="stage2",  # projector + LLM train, CLIP frozen
        seed=42,
        max_steps=3,  # 2 samples / 2 ranks: one step per epoch, and every step mixes image and text-only
        per_device_train_batch_size=1,
        logging_steps=1,
        use_cpu=True,
        extra_training_args={"ddp_backend": "gloo", "ddp_find_unused_parameters": False},
    )
    opts_file = tmp_path / "opts.json"
    opts_file.write_text(json.dumps({"report_dir": str(tmp_path), "config": config, **opts}))
    return opts_file


def _run(cmd: list[str], tmp_path: Path, timeout: float) -> tuple[int, str, float]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]),
        HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TQDM_DISABLE="1",
    )
    env.pop("ACCELERATE_USE_CPU", None)
    start = time.monotonic()
    with open(tmp_path / "log.txt", "w") as log:
        try:
            proc = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    return rc, (tmp_path / "log.txt").read_text(), time.monotonic() - start


@pytest.mark.slow
def test_ddp_two_cpu_processes_text_only_rank(tmp_path):
    """accelerate launch with cpu_ddp_2proc.yaml: one rank text-only in every step, no hang, synced weights."""
    opts = _write_case(tmp_path, watchdog_s=120)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIG_DIR / CPU_CONFIG),
        str(tmp_path / "worker.py"),
        str(opts),
    ]
    rc, log, _ = _run(cmd, tmp_path, timeout=240)
    assert rc == 0, f"distributed run failed (rc={rc}):\n{log[-6000:]}"

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["global_step"] == 3 for r in reports)
    # Every step, exactly one of the two ranks had an image: the other ran the encoder on the dummy input.
    steps = list(zip(reports[0]["has_image"], reports[1]["has_image"], strict=True))
    assert len(steps) == 3 and all(a != b for a, b in steps), steps
    # Both ranks logged every step, the same (all-reduced) loss.
    assert len(reports[0]["losses"]) == 3 and reports[0]["losses"] == reports[1]["losses"]
    # DDP kept the replicas identical: all parameters, and the projector that only one rank had real inputs for.
    assert reports[0]["sha256"] == reports[1]["sha256"]
    proj0, proj1 = (torch.load(tmp_path / f"projector_rank{r}.pt") for r in (0, 1))
    assert proj0.keys() == proj1.keys() and proj0
    for name in proj0:
        torch.testing.assert_close(proj0[name], proj1[name], rtol=0, atol=0)

    # The final model was saved (by rank 0), holds the trained weights, and the projector did train.
    from safetensors.torch import load_file

    out = tmp_path / "out"
    saved = load_file(out / "model.safetensors")
    base = load_file(out / "base_model" / "model.safetensors")
    for name, value in proj0.items():
        torch.testing.assert_close(saved[name].float(), value, rtol=0, atol=0)
    assert any(not torch.equal(base[n].float(), proj0[n]) for n in proj0), "the projector did not change"
    meta = json.loads((out / "hf_videollm_training.json").read_text())
    assert meta["hyperparameters"]["world_size"] == 2


@pytest.mark.slow
def test_ddp_without_dummy_pass_deadlocks(tmp_path):
    """Negative control (torchrun): without the dummy pass the text-only rank never produces projector gradients;
    DDP (find_unused_parameters=False) on the image rank waits in backward for that bucket's all-reduce while the
    text-only rank has moved on to the next collective, so the run deadlocks (the watchdog ends it)."""
    opts = _write_case(tmp_path, watchdog_s=15, disable_dummy=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(tmp_path / "worker.py"),
        str(opts),
    ]
    rc, log, _ = _run(cmd, tmp_path, timeout=120)
    assert (tmp_path / "started_rank0").exists() and (tmp_path / "started_rank1").exists(), log[-6000:]
    assert rc not in (0, None), f"rc={rc}\n{log[-6000:]}"
    assert not (tmp_path / "rank0.json").exists() and not (tmp_path / "rank1.json").exists()
    # Either a deadlock (watchdog stack dump, one rank inside backward) or a DDP unused-parameter error.
    dumps = "".join(p.read_text() for p in sorted(tmp_path.glob("watchdog_rank*.txt")))
    deadlock = "Timeout (0:00:15)!" in dumps and " in backward" in dumps
    log = log + "\n" + dumps
    assert deadlock or "did not receive grad" in log or "finished reduction" in log, log[-6000:]
