"""The head demo: fused vs plain torch loss, gradients and speed on one batch."""

from __future__ import annotations

import torch

from .ops.normalized_ce import normalized_softmax_ce
from .reference.normalized_ce import plain_normalized_ce
from .timing import peak_extra_memory, time_ms


def _step(loss_fn, hidden, items, targets):
    h = hidden.detach().requires_grad_()
    e = items.detach().requires_grad_()
    loss = loss_fn(h, e, targets)
    loss.backward()
    return loss.detach(), h.grad, e.grad


def head_demo(num_items: int, batch: int, dim: int, device: str, dtype: torch.dtype, temperature: float = 0.1) -> list[dict]:
    """Time forward+backward of the fused head and of plain torch on one random
    batch; returns one row per implementation (loss, ms, gradient difference,
    peak extra memory on CUDA)."""
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(batch, dim, generator=gen).to(dev, dtype)
    items = torch.randn(num_items, dim, generator=gen).to(dev, dtype)
    targets = torch.randint(0, num_items, (batch,), generator=gen).to(dev)
    impls = {
        "fused (" + ("triton" if dev.type == "cuda" else "chunked torch") + ")": lambda h, e, t: normalized_softmax_ce(
            h, e, t, temperature=temperature
        ),
        "plain torch": lambda h, e, t: plain_normalized_ce(h, e, t, temperature=temperature),
    }
    rows, grads = [], []
    for name, fn in impls.items():
        with peak_extra_memory(dev) as mem:
            loss, dh, de = _step(fn, hidden, items, targets)
        ms = time_ms(lambda: _step(fn, hidden, items, targets), dev)
        grads.append((dh, de))
        rows.append({"impl": name, "loss": loss.item(), "ms": ms, "peak_extra_bytes": mem["bytes"]})
    ref_dh, ref_de = grads[1]
    for row, (dh, de) in zip(rows, grads):
        row["max_grad_diff"] = max((dh - ref_dh).abs().max().item(), (de - ref_de).abs().max().item())
    return rows


def format_head_demo(rows: list[dict], num_items: int, batch: int, dim: int, dtype: torch.dtype) -> str:
    logits_mib = batch * num_items * 4 / 2**20
    lines = [
        f"normalized softmax CE, B={batch} N={num_items} d={dim} {str(dtype).replace('torch.', '')}: "
        f"the plain head materializes {logits_mib:.0f} MiB of fp32 logits",
        f"{'impl':<24}{'loss':>10}{'fwd+bwd ms':>12}{'max |grad diff|':>17}{'peak extra MiB':>16}",
    ]
    for r in rows:
        mem = "-" if r["peak_extra_bytes"] is None else f"{r['peak_extra_bytes'] / 2**20:.0f}"
        lines.append(f"{r['impl']:<24}{r['loss']:>10.5f}{r['ms']:>12.1f}{r['max_grad_diff']:>17.2e}{mem:>16}")
    return "\n".join(lines)


def training_demo(*, epochs: int = 8, device: str = "cpu", seed: int = 0) -> list[dict]:
    """SASRec on the built-in planted dataset, random vs Rec-PCA item
    initialization; one row per run with test metrics and timing."""
    from .pipeline import config_for, run_interactions
    from .synthetic import planted_dataset

    data, features = planted_dataset(seed=seed)
    rows = []
    for init in ("random", "recpca"):
        config = config_for(model="sasrec", init=init, epochs=epochs, patience=epochs, device=device, seed=seed,
                            model_options={"dropout": 0.2})
        result = run_interactions(data, config, features=features)
        rows.append({
            "init": init, "HR@10": result["test"]["HR@10"], "NDCG@10": result["test"]["NDCG@10"],
            "best_epoch": result["best_epoch"], "seconds": result["train_seconds"],
            "users": result["dataset"]["users"], "items": result["dataset"]["items"],
        })
    return rows


def format_training_demo(rows: list[dict]) -> str:
    first = rows[0]
    lines = [
        f"SASRec on the built-in planted dataset ({first['users']} users, {first['items']} items), "
        "leave-one-out, full ranking, history excluded",
        f"{'init':<10}{'HR@10':>9}{'NDCG@10':>10}{'best epoch':>12}{'train s':>10}",
    ]
    for r in rows:
        lines.append(f"{r['init']:<10}{r['HR@10']:>9.4f}{r['NDCG@10']:>10.4f}{r['best_epoch']:>12}{r['seconds']:>10.1f}")
    return "\n".join(lines)
