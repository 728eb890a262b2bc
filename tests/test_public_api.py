"""The drop-in API: a light import, the loss module that takes the table at
call time, the head options accepted whole (``options=``) by every public op
and module with one argument order, and the old names as deprecated aliases."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
import torch

import tfllmer_fast as tf
from tfllmer_fast import HeadOptions, NormalizedSoftmaxCELoss, normalized_softmax_ce
from tfllmer_fast.app.diagnostics import effective_stats
from tfllmer_fast.distributed import (ShardedNormalizedSoftmaxHead, sharded_normalized_softmax_ce,
                                      sharded_target_rank, sharded_topk_scores)
from tfllmer_fast.reference import (count_against_reference, normalized_ce_rows, normalized_logits,
                                    plain_normalized_ce, target_rank_reference, target_scores_reference,
                                    topk_reference)

HEAVY = ("scipy", "pandas", "matplotlib", "tfllmer_fast.app", "tfllmer_fast.graph", "tfllmer_fast.distributed")
OPTIONS = HeadOptions(temperature=0.5, normalize_items=True, normalize_hidden=True, eps=1e-8)

_IMPORT_PROBE = """
import json, sys, time
tic = time.perf_counter(); import torch; torch_s = time.perf_counter() - tic
tic = time.perf_counter(); import tfllmer_fast; own_s = time.perf_counter() - tic
print(json.dumps({"torch_s": torch_s, "own_s": own_s,
                  "loaded": sorted({m for m in sys.modules if m.split(".")[0] in ("scipy", "pandas", "matplotlib")
                                    or m.startswith(("tfllmer_fast.app", "tfllmer_fast.graph",
                                                     "tfllmer_fast.distributed"))})}))
"""


def test_import_is_light_and_says_how_long_it_takes():
    out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"import torch {probe['torch_s']:.2f} s, then import tfllmer_fast {probe['own_s']:.2f} s")
    assert probe["loaded"] == [], f"import tfllmer_fast loaded {probe['loaded']}"
    # Without the kernels' and the app's imports it costs a fraction of torch's own.
    assert probe["own_s"] < max(2.0, probe["torch_s"])


def test_subpackages_load_on_first_use():
    assert tf.graph.rec_pca is tf.rec_pca
    assert tf.distributed.sharded_target_rank is sharded_target_rank
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        tf.nothing  # noqa: B018


def _problem(B=12, N=40, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, d, generator=g, dtype=torch.float64)
    items = torch.randn(N, d, generator=g, dtype=torch.float64)
    targets = torch.randint(0, N, (B,), generator=g)
    return hidden, items, targets


def _grads(fn, hidden, items, targets):
    h, e = hidden.clone().requires_grad_(), items.clone().requires_grad_()
    loss = fn(h, e, targets)
    loss.sum().backward()
    return loss.detach(), h.grad, e.grad


@pytest.mark.parametrize("settings", [
    {},
    {"reduction": "sum", "label_smoothing": 0.1},
    {"reduction": "none", "ignore_index": 3},
    {"options": OPTIONS},
    {"temperature": 0.2, "normalize_items": False},
])
@pytest.mark.parametrize("impl", ["torch", "torch_grad_in_forward"])
def test_the_loss_module_equals_the_function(settings, impl):
    if impl == "torch_grad_in_forward" and settings.get("reduction") == "none":
        pytest.skip("gradients in the forward serve reduced losses")
    hidden, items, targets = _problem()
    weight = torch.rand(targets.shape, dtype=torch.float64) + 0.5
    module = NormalizedSoftmaxCELoss(impl=impl, **settings)
    by_module = _grads(lambda h, e, t: module(h, e, t, row_weight=weight), hidden, items, targets)
    by_function = _grads(lambda h, e, t: normalized_softmax_ce(h, e, t, impl=impl, row_weight=weight, **settings),
                         hidden, items, targets)
    for a, b in zip(by_module, by_function):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_plain_cross_entropy_is_normalize_items_false():
    hidden, items, targets = _problem()
    loss = NormalizedSoftmaxCELoss(normalize_items=False)(hidden, items, targets)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(hidden @ items.T, targets))


def _keyword_form(options: HeadOptions) -> dict:
    return options._asdict()


def _calls():
    """Every public op and module that scores, each as f(head_settings) -> a result."""
    hidden, items, targets = _problem()
    exclude = (torch.tensor([0, 2] + [2] * (hidden.shape[0] - 1)), torch.tensor([5, 7]))
    head = lambda **kw: tf.NormalizedSoftmaxHead(40, 16, **kw).double()  # noqa: E731
    return {
        "normalized_softmax_ce": lambda **kw: normalized_softmax_ce(hidden, items, targets, impl="torch", **kw),
        "NormalizedSoftmaxCELoss": lambda **kw: NormalizedSoftmaxCELoss(impl="torch", **kw)(hidden, items, targets),
        "NormalizedSoftmaxHead": lambda **kw: (torch.manual_seed(0), head(**kw)(hidden, targets))[1],
        "NormalizedSoftmaxHead.scores": lambda **kw: (torch.manual_seed(0), head(**kw).scores(hidden))[1],
        "target_rank": lambda **kw: tf.target_rank(hidden, items, targets, exclude=exclude, impl="torch", **kw),
        "topk_scores": lambda **kw: tf.topk_scores(hidden, items, 5, exclude=exclude, impl="torch", **kw).values,
        "normalized_logits": lambda **kw: normalized_logits(hidden, items, **kw),
        "normalized_ce_rows": lambda **kw: normalized_ce_rows(hidden, items, targets, **kw)[0],
        "plain_normalized_ce": lambda **kw: plain_normalized_ce(hidden, items, targets, **kw),
        "target_rank_reference": lambda **kw: target_rank_reference(hidden, items, targets, **kw),
        "target_scores_reference": lambda **kw: target_scores_reference(hidden, items, targets, **kw),
        "count_against_reference": lambda **kw: count_against_reference(hidden, items, targets,
                                                                        torch.zeros(hidden.shape[0]), **kw),
        "topk_reference": lambda **kw: topk_reference(hidden, items, 5, **kw)[0],
        "effective_stats": lambda **kw: effective_stats(hidden, items, targets, m=4, **kw).kappa,
    }


@pytest.mark.parametrize("name", list(_calls()))
def test_every_public_op_takes_the_options_whole_or_as_keywords(name):
    call = _calls()[name]
    torch.testing.assert_close(call(options=OPTIONS), call(**_keyword_form(OPTIONS)), rtol=0, atol=0)
    with pytest.raises(TypeError, match="not both"):
        call(options=OPTIONS, temperature=0.5)
    with pytest.raises(TypeError, match="tempreature"):
        call(tempreature=0.5)
    with pytest.raises(ValueError, match="temperature must be a positive"):
        call(options=HeadOptions(temperature=0.0))


PUBLIC = [normalized_softmax_ce, tf.target_rank, tf.topk_scores, sharded_normalized_softmax_ce, sharded_target_rank,
          sharded_topk_scores, normalized_logits, normalized_ce_rows, plain_normalized_ce, target_rank_reference,
          target_scores_reference, count_against_reference, topk_reference, effective_stats,
          tf.NormalizedSoftmaxHead.__init__, ShardedNormalizedSoftmaxHead.__init__, NormalizedSoftmaxCELoss.__init__]


@pytest.mark.parametrize("fn", PUBLIC, ids=lambda f: f.__qualname__)
def test_one_argument_order_and_no_redeclared_head_options(fn):
    params = inspect.signature(fn).parameters
    assert not set(params) & set(HeadOptions._fields), "head options are declared once, in HeadOptions"
    kinds = [p.kind for p in params.values()]
    assert "options" in params and kinds[-1] == inspect.Parameter.VAR_KEYWORD
    # The options come first after the tensors (and a shard's placement: shard_start, num_items, process_group).
    placement = ("shard_start", "num_items", "process_group")
    keyword_only = [n for n, p in params.items() if p.kind == inspect.Parameter.KEYWORD_ONLY and n not in placement]
    assert keyword_only[0] == "options"


def test_old_names_still_work_and_warn():
    hidden, items, targets = _problem()
    weight = torch.rand(targets.shape, dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match="torch_grad_in_forward"):
        old = normalized_softmax_ce(hidden, items, targets, impl="chunked")
    torch.testing.assert_close(old, normalized_softmax_ce(hidden, items, targets, impl="torch_grad_in_forward"))
    with pytest.warns(DeprecationWarning, match="row_weight"):
        old = normalized_softmax_ce(hidden, items, targets, weight=weight, impl="torch")
    torch.testing.assert_close(old, normalized_softmax_ce(hidden, items, targets, row_weight=weight, impl="torch"))
    with pytest.warns(DeprecationWarning, match="row_weight"):
        tf.NormalizedSoftmaxHead(40, 16).double()(hidden, targets, weight=weight)
    with pytest.raises(TypeError, match="row_weight= only"):
        normalized_softmax_ce(hidden, items, targets, weight=weight, row_weight=weight)
