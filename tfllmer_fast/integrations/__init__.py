"""The fused head inside the training tools people already use.

One module per client library, each imported only when asked for (none of
them is a dependency of tfllmer_fast)::

    from tfllmer_fast.integrations import recbole   # needs RecBole 1.2
    from tfllmer_fast.integrations import rectools  # needs rectools[torch] 0.19
    from tfllmer_fast.integrations import replay    # needs replay-rec[torch] 0.22

Each trains with ``tfllmer_fast.normalized_softmax_ce`` against the model's
own item table and ranks with ``topk_scores`` / ``target_rank`` and the
client's own filtering of seen items, so neither step builds the (B, N)
score matrix. The default ``HeadOptions(normalize_items=False)`` is the
client's own cross-entropy (same value, same gradients); ``HeadOptions()``
is the TF-LLMER head (L2-normalized items).
"""
