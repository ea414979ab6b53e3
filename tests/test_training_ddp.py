"""Data-parallel training: two CPU processes (gloo) keep identical weights."""
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from streamsnn.snn import build_model
        from streamsnn.training.loop import TrainConfig, fit, seed_everything

        rng = np.random.default_rng(0)
        frames = rng.poisson(0.4, (16, 3, 2, 34, 34)).astype(np.int16)
        labels = rng.integers(0, 10, 16)
        cfg = TrainConfig(timesteps=3, reg="str", epochs=1, batch_size=8, seed=0, shift=1)
        seed_everything(0)
        model = build_model("nmnist")
        before = {k: v.clone() for k, v in model.state_dict().items()}
        fit(model, frames, labels, cfg, progress=False, max_steps=3)
        changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
        torch.save({"state": model.state_dict(), "changed": changed}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_weights_agree(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["changed"] and r1["changed"]
    for key, value in r0["state"].items():
        assert torch.allclose(value.float(), r1["state"][key].float(), atol=1e-6), key
