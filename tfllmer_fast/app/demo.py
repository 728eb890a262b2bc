"""The head demo: fused vs plain torch loss, gradients and speed on one batch."""

from __future__ import annotations

import torch

from .. import DEFAULT_TEMPERATURE, normalized_softmax_ce
from ..ops import selected_impl
from ..reference import plain_normalized_ce
from ..timing import peak_extra_memory, time_ms


def _step(loss_fn, hidden, items, targets):
    h = hidden.detach().requires_grad_()
    e = items.detach().requires_grad_()
    loss = loss_fn(h, e, targets)
    loss.backward()
    return loss.detach(), h.grad, e.grad


# The library's gradients are held to this multiple of plain torch's own
# error in the same dtype (against fp64), as its tests hold them.
GRAD_BUDGET_FACTOR = 3.0


def head_demo(num_items: int, batch: int, dim: int, device: str, dtype: torch.dtype,
              temperature: float = DEFAULT_TEMPERATURE) -> list[dict]:
    """Time forward+backward of the library's head (the implementation
    ``impl="auto"`` takes on ``device``) and of plain torch on one random
    batch; returns one row per implementation (loss, ms, peak extra memory,
    and the largest gradient difference from plain torch in fp64, with the
    budget the library's row is held to)."""
    dev = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(batch, dim, generator=gen).to(dev, dtype)
    items = torch.randn(num_items, dim, generator=gen).to(dev, dtype)
    targets = torch.randint(0, num_items, (batch,), generator=gen).to(dev)
    ran = selected_impl(hidden, items)
    impls = {
        f"tfllmer_fast ({ran})": lambda h, e, t: normalized_softmax_ce(h, e, t, temperature=temperature),
        "plain torch": lambda h, e, t: plain_normalized_ce(h, e, t, temperature=temperature),
    }
    rows, grads = [], []
    for name, fn in impls.items():
        ms = time_ms(lambda: _step(fn, hidden, items, targets), dev)  # warms up before the memory run
        with peak_extra_memory(dev) as mem:
            loss, dh, de = _step(fn, hidden, items, targets)
        grads.append((dh, de))
        rows.append({"impl": name, "loss": loss.item(), "ms": ms, "peak_extra_bytes": mem["bytes"]})
    _, ref_dh, ref_de = _step(lambda h, e, t: plain_normalized_ce(h, e, t, temperature=temperature),
                              hidden.double(), items.double(), targets)
    for row, (dh, de) in zip(rows, grads):
        row["max_grad_diff"] = max((dh.double() - ref_dh).abs().max().item(),
                                   (de.double() - ref_de).abs().max().item())
    # Plain torch's own error plus a floor of fp32 rounding of the largest gradient entry.
    floor = 2.0**-23 * max(ref_dh.abs().max().item(), ref_de.abs().max().item())
    rows[0]["grad_budget"] = GRAD_BUDGET_FACTOR * rows[1]["max_grad_diff"] + floor
    return rows


def format_head_demo(rows: list[dict], num_items: int, batch: int, dim: int, dtype: torch.dtype) -> str:
    logits_mib = batch * num_items * 4 / 2**20
    lines = [
        f"normalized softmax CE, B={batch} N={num_items} d={dim} {str(dtype).replace('torch.', '')}: "
        f"the plain head materializes {logits_mib:.0f} MiB of fp32 logits",
        f"{'impl':<34}{'loss':>10}{'fwd+bwd ms':>12}{'max |grad - fp64|':>19}{'peak extra MiB':>16}",
    ]
    for r in rows:
        mem = "n/a" if r["peak_extra_bytes"] is None else f"{r['peak_extra_bytes'] / 2**20:.0f}"
        lines.append(f"{r['impl']:<34}{r['loss']:>10.5f}{r['ms']:>12.1f}{r['max_grad_diff']:>19.2e}{mem:>16}")
    fused, plain = rows
    within = fused["max_grad_diff"] <= fused["grad_budget"]
    loss_gap = abs(fused["loss"] - plain["loss"])
    lines.append(
        f"Read: losses differ by {loss_gap:.1e}; the largest gradient difference from fp64 is "
        f"{fused['max_grad_diff']:.2e}, {'within' if within else 'OUTSIDE'} its budget {fused['grad_budget']:.2e} "
        f"({GRAD_BUDGET_FACTOR:g} x plain torch's {plain['max_grad_diff']:.2e} + fp32 rounding); "
        f"{fused['impl']} ran {plain['ms'] / fused['ms']:.1f}x {'faster' if fused['ms'] <= plain['ms'] else 'SLOWER'}"
        " than plain torch"
        + ("" if fused["peak_extra_bytes"] is None or not plain["peak_extra_bytes"] else
           f" with {plain['peak_extra_bytes'] / max(fused['peak_extra_bytes'], 1):.1f}x less extra memory")
        + "."
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
    from .config import TrainConfig

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
