"""2-process gloo DDP on the CPU equals one process with the same global batch (issue 7)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastncsn.training import train

CFG = dict(data="digits", steps=3, batch_size=8, ngf=4, num_levels=4, progress=False, lr=3e-3, seed=5)


def _worker(rank, world, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = train(**CFG)
        if rank == 0:
            torch.save(model.state_dict(), out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    ddp = torch.load(out)
    single = train(**CFG).state_dict()
    assert set(ddp) == set(single)
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6)
    # and it did train: the weights moved away from the seed's initialisation
    init = train(**dict(CFG, steps=1, lr=1e-12)).state_dict()
    assert any(not torch.allclose(init[k], v) for k, v in single.items() if v.is_floating_point())
