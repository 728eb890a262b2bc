"""The head demo: fused vs plain torch loss, gradients and speed on one batch."""

from __future__ import annotations

import torch

from .ops.normalized_ce import normalized_softmax_ce
from .options import DEFAULT_TEMPERATURE
from .reference.normalized_ce import plain_normalized_ce
from .timing import peak_extra_memory, time_ms


def _step(loss_fn, hidden, items, targets):
    h = hidden.detach().requires_grad_()
    e = items.detach().requires_grad_()
    loss = loss_fn(h, e, targets)
    loss.backward()
    return loss.detach(), h.grad, e.grad


def head_demo(num_items: int, batch: int, dim: int, device: str, dtype: torch.dtype,
              temperature: float = DEFAULT_TEMPERATURE) -> list[dict]:
    """Time forward+backward of the fused head (the library's default path on
    ``device``) and of plain torch on one random batch; returns one row per
    implementation (loss, ms, gradient difference, peak extra memory)."""
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
        ms = time_ms(lambda: _step(fn, hidden, items, targets), dev)  # warms up before the memory run
        with peak_extra_memory(dev) as mem:
            loss, dh, de = _step(fn, hidden, items, targets)
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
        mem = "n/a" if r["peak_extra_bytes"] is None else f"{r['peak_extra_bytes'] / 2**20:.0f}"
        lines.append(f"{r['impl']:<24}{r['loss']:>10.5f}{r['ms']:>12.1f}{r['max_grad_diff']:>17.2e}{mem:>16}")
    fused, plain = rows
    lines.append(
        f"Read: same loss, gradients equal to rounding (max |grad diff|), and the fused head "
        f"{plain['ms'] / fused['ms']:.1f}x {'faster' if fused['ms'] <= plain['ms'] else 'SLOWER'} than plain torch"
        + ("" if fused["peak_extra_bytes"] is None or not plain["peak_extra_bytes"] else
           f" with {plain['peak_extra_bytes'] / max(fused['peak_extra_bytes'], 1):.1f}x less extra memory")
        + ", because it never holds the whole logit matrix."
    )
    return "\n".join(lines)


# The demo's data is sparse on purpose (600 users, 4,000 items, ~2 interactions
# per item in training): where items are seen too rarely to learn from
# interactions alone, their features carry them, which is what Rec-PCA is for.
DEMO_DATA = dict(num_users=600, num_items=4000, clusters=200, max_len=20, seed=0)
DEMO_TRAIN = dict(model="sasrec", max_len=20, batch_size=64, lr=3e-3, epochs=40, patience=3, seed=0,
                  diagnostics_sample=0, model_options={"dropout": 0.2})


def training_demo(*, epochs: int | None = None, device: str = "cpu") -> list[dict]:
    """SASRec on the built-in planted dataset, random vs Rec-PCA item
    initialization, each trained to early stop (patience 3); one row per run
    with test metrics and timing."""
    from .config import ItemInitConfig, RunConfig
    from .pipeline import run
    from .synthetic import planted_dataset
    from .train import TrainConfig

    data, features = planted_dataset(**DEMO_DATA)
    train = TrainConfig(**{**DEMO_TRAIN, "device": device, **({"epochs": epochs} if epochs else {})})
    rows = []
    for init in ("random", "recpca"):
        result = run(RunConfig(items=ItemInitConfig(init=init), train=train), data=data, features=features)
        rows.append({
            "init": init, "HR@10": result["test"]["HR@10"], "NDCG@10": result["test"]["NDCG@10"],
            "best_epoch": result["best_epoch"], "epochs_run": result["epochs_run"], "seconds": result["train_seconds"],
            "users": result["dataset"]["users"], "items": result["dataset"]["items"],
        })
    return rows


def format_training_demo(rows: list[dict]) -> str:
    first = rows[0]
    lines = [
        f"SASRec on the built-in planted dataset ({first['users']} users, {first['items']} items), "
        "leave-one-out, full ranking, history excluded, trained to early stop",
        f"{'init':<10}{'HR@10':>9}{'NDCG@10':>10}{'best / run epochs':>19}{'train s':>10}",
    ]
    for r in rows:
        epochs = f"{r['best_epoch']} / {r['epochs_run']}"
        lines.append(f"{r['init']:<10}{r['HR@10']:>9.4f}{r['NDCG@10']:>10.4f}{epochs:>19}{r['seconds']:>10.1f}")
    random, recpca = rows
    verdict = ("the item features carry items the interactions barely show"
               if recpca["NDCG@10"] > random["NDCG@10"] else "here the features did not help")
    lines.append(
        f"Read: test NDCG@10 with Rec-PCA item initialization vs random {recpca['NDCG@10']:.3f} vs "
        f"{random['NDCG@10']:.3f} (best epochs {recpca['best_epoch']} and {random['best_epoch']}): {verdict}."
    )
    return "\n".join(lines)


def run_demo(*, device: str = "cpu", epochs: int | None = None, head_items: int = 50_000,
             head_batch: int = 1024) -> str:
    """The whole demo's text: the training comparison, then the head timing."""
    training = format_training_demo(training_demo(epochs=epochs, device=device))
    rows = head_demo(head_items, head_batch, 64, device, torch.float32)
    return training + "\n\n" + format_head_demo(rows, head_items, head_batch, 64, torch.float32)
