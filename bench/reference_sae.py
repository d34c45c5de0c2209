#!/usr/bin/env python3
"""The SAE training step of engine/sae/sae.h as a plain PyTorch loop.

Baseline for DESIGN.md §9 ("faster than the same algorithm written as a plain
PyTorch-in-Python loop"): same shapes (d_in 512, d_sae 8192, batch 4096,
fp32, CPU), same formulas, same per-step work as SaeTrainer::Step:

  f     = ReLU((x - b_dec) W_enc + b_enc)
  x_hat = f W_dec + b_dec
  loss  = sum ||x_hat - x||^2 / sum ||x - mean_batch(x)||^2
        + l1 * mean_b ||f_b||_1
  backward; remove the component of W_dec.grad parallel to each decoder row;
  Adam (lr with linear warm-up); renormalise decoder rows.

Both loss terms are read with .item() each step, as the engine does.
Initialisation is Kaiming-uniform with unit-norm decoder rows; b_dec is the
batch mean rather than the geometric median (it does not affect timing).

Threads: SAETRACK_BENCH_THREADS (default 2). Steps timed: --steps (default 5)
after one warm-up step. Prints one line of JSON.
"""
import argparse
import json
import os
import time

import torch

D_IN, D_SAE, BATCH = 512, 8192, 4096
L1, LR, WARMUP = 8e-5, 4e-4, 100
TINY = 1e-12


def threads_from_env():
    try:
        threads = int(os.environ.get("SAETRACK_BENCH_THREADS", "2") or "2")
    except ValueError:
        threads = 2
    return threads if threads > 0 else 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    threads = threads_from_env()
    torch.set_num_threads(threads)

    torch.manual_seed(4)
    x = torch.randn(BATCH, D_IN) + torch.randn(1, D_IN)
    w_enc = torch.empty(D_IN, D_SAE)
    w_dec = torch.empty(D_SAE, D_IN)
    torch.nn.init.kaiming_uniform_(w_enc, a=5 ** 0.5)
    torch.nn.init.kaiming_uniform_(w_dec, a=5 ** 0.5)
    w_dec /= w_dec.norm(dim=1, keepdim=True).clamp_min(TINY)
    b_enc = torch.zeros(D_SAE)
    b_dec = x.mean(0).clone()
    params = [p.requires_grad_(True) for p in (w_enc, b_enc, w_dec, b_dec)]
    optimizer = torch.optim.Adam(params, lr=LR, betas=(0.9, 0.999))

    def step(n):
        optimizer.zero_grad()
        f = torch.relu(torch.addmm(b_enc, x - b_dec, w_enc))
        x_hat = torch.addmm(b_dec, f, w_dec)
        reconstruction = (x_hat - x).pow(2).sum() / (
            x - x.mean(0, keepdim=True)).pow(2).sum().clamp_min(TINY)
        sparsity = L1 * f.sum(1).mean()
        loss = reconstruction + sparsity
        logged = (reconstruction.item(), sparsity.item())
        loss.backward()
        with torch.no_grad():
            grad = w_dec.grad
            grad.sub_((grad * w_dec).sum(1, keepdim=True) * w_dec)
        for group in optimizer.param_groups:
            group["lr"] = LR * min(1.0, (n + 1) / max(1, WARMUP))
        optimizer.step()
        with torch.no_grad():
            w_dec.div_(w_dec.norm(2, 1, keepdim=True).clamp_min(TINY))
        return logged

    step(0)  # warm-up: Adam state, allocator
    start = time.perf_counter()
    for n in range(1, args.steps + 1):
        step(n)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "impl": "python",
        "torch": torch.__version__,
        "threads": threads,
        "d_in": D_IN, "d_sae": D_SAE, "batch": BATCH,
        "steps": args.steps,
        "seconds_per_step": seconds / args.steps,
        "tokens_per_second": BATCH * args.steps / seconds,
    }))


if __name__ == "__main__":
    main()
