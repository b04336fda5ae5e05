"""DDP for one large run: two processes under torchrun (Gloo on CPU) train one model on disjoint shards and
end with identical weights. On a GPU machine the same script runs with NCCL (see docs/distributed.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset
    from medhub.train import ddp
    from medhub.train.network import build_network

    torch.set_num_threads(1)
    device = ddp.setup()
    me = ddp.world()
    torch.manual_seed(100 + me.rank)  # different initial weights per rank: DDP must broadcast rank 0's
    data = np.load(sys.argv[1])
    images = torch.tensor(data["train_images"][:64], dtype=torch.float32).unsqueeze(1) / 255.0
    labels = torch.tensor(data["train_labels"][:64, 0], dtype=torch.float32)
    loader = ddp.sharded_loader(TensorDataset(images, labels, torch.arange(64)), batch_size=8)
    model = ddp.wrap(build_network("random:test_resnet", num_outputs=1, in_chans=1), device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    start = torch.cat([p.detach().flatten() for p in ddp.unwrap(model).parameters()]).clone()
    seen = []
    for epoch in range(2):
        ddp.set_epoch(loader, epoch)
        for x, y, index in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x.to(device))[:, 0], y.to(device))
            loss.backward()
            optimizer.step()
            if epoch == 0:
                seen += index.tolist()
    weights = torch.cat([p.detach().flatten() for p in ddp.unwrap(model).parameters()])
    loss = ddp.mean_across(float(loss), device)
    with open(f"{sys.argv[2]}/rank{me.rank}.json", "w") as f:
        json.dump({"size": me.size, "seen": seen, "moved": float((weights - start).abs().sum()),
                   "weights": weights[:200].tolist(), "loss": loss}, f)
    ddp.cleanup()
    """
)


def test_torchrun_two_processes_train_one_model(tmp_path, shared_data):
    script = tmp_path / "ddp_step.py"
    script.write_text(SCRIPT)
    npz = shared_data / "breastmnist" / "breastmnist.npz"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(npz), str(tmp_path)]  # fmt: skip
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["size"] for r in ranks] == [2, 2]
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])  # each process trained on its own shard
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == list(range(64))
    assert ranks[0]["moved"] > 0  # training changed the weights...
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], abs=1e-6)  # ...identically on both
    assert ranks[0]["loss"] == ranks[1]["loss"]
