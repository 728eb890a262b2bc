"""``tfllmer-fast embed`` and the text path into training: the real MiniLM
model's rows equal ``SentenceTransformer.encode``, decoder last-token pooling
does not depend on the padding side, rows line up with the training data's
item ids after its id mapping and k-core filter, a missing text is a named
error, and a stopped embedding run resumes from its saved chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tfllmer_fast.app import cli
from tfllmer_fast.app.data import k_core, read_interactions
from tfllmer_fast.app.embed import EmbedConfig, embed_items, encode_with, load_aligned, pool
from tfllmer_fast.app.item_text import read_item_table, render_texts
from tfllmer_fast.app.pipeline import load_features

SHARED = Path(__file__).resolve().parents[2] / "shared"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"
ML100K_ITEMS = SHARED / "data" / "ml-100k" / "ml-100k.item"
TEMPLATE = "{movie_title} ({release_year}). Genres: {class}"


def _item_file(tmp_path, rows, header="item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"):
    path = tmp_path / "items.item"
    path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


def _real_items(tmp_path, count):
    lines = ML100K_ITEMS.read_text().splitlines()
    path = tmp_path / "ml.item"
    path.write_text("\n".join(lines[: count + 1]) + "\n")
    return path


@pytest.mark.skipif(not MINILM.is_dir() or not ML100K_ITEMS.exists(), reason=f"needs {MINILM} and {ML100K_ITEMS}")
def test_embed_command_equals_sentence_transformers_encode(tmp_path, capsys):
    st = pytest.importorskip("sentence_transformers", reason="needs sentence-transformers (pip install .[text])")
    items = _real_items(tmp_path, 40)
    out = tmp_path / "emb.npy"
    assert cli.main(["embed", "--items", str(items), "--model", str(MINILM), "--template", TEMPLATE,
                     "--out", str(out), "--chunk-items", "16", "--batch-size", "8", "--device", "cpu"]) == 0
    assert "40 items x 384 dims" in capsys.readouterr().out
    table = read_item_table(items)
    texts = render_texts(table, TEMPLATE)
    assert texts[0] == "Toy Story (1995). Genres: Animation Children's Comedy"
    expected = st.SentenceTransformer(str(MINILM), device="cpu").encode(texts)
    got = np.load(out)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)  # fp32 rounding: a different batching
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["item_ids"] == table.ids and manifest["dims"] == 384 and manifest["normalize"] is False
    assert manifest["backend"] == "sentence-transformers" and manifest["template"] == TEMPLATE
    norms = np.linalg.norm(got, axis=1)
    assert np.allclose(norms, 1, atol=1e-4)  # MiniLM's own modules end in a Normalize layer
    assert not out.with_suffix(".parts").exists()


def _tiny_decoder():
    transformers = pytest.importorskip("transformers", reason="needs transformers (pip install .[text])")
    if not MINILM.is_dir():
        pytest.skip(f"needs a tokenizer: {MINILM}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MINILM))
    config = transformers.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return transformers.LlamaModel(config).eval(), tokenizer


TEXTS = ["Toy Story (1995)", "GoldenEye (1995). Genres: Action Adventure Thriller", "Heat", "a much longer text " * 4]


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_decoder_pooling_does_not_depend_on_the_padding_side(pooling):
    model, tokenizer = _tiny_decoder()
    alone = np.concatenate([encode_with(model, tokenizer, [t], pooling=pooling, prompt="Represent: ")
                            for t in TEXTS])
    for side in ("left", "right"):
        tokenizer.padding_side = side
        batched = encode_with(model, tokenizer, TEXTS, pooling=pooling, prompt="Represent: ", batch_size=4)
        np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-5, err_msg=f"{side} padding")


def test_last_token_pooling_reads_each_rows_last_real_token():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool(hidden, right, "max")


class _LengthEncoder:
    """A stand-in model: each text's vector is [its length, a hash of it]."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, texts):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        return np.array([[len(t), sum(map(ord, t)) % 97] for t in texts], dtype=np.float32)


def test_rows_line_up_with_the_data_after_k_core(tmp_path):
    # Items 10..15 with texts; the interactions use original ids, item 13 drops out at k = 2.
    items = _item_file(tmp_path, [(i, f"movie {i}", 1990 + i, "Drama") for i in range(10, 16)])
    inter = tmp_path / "d.inter"
    rows = [(u, i, 5, u * 10 + n) for u in range(1, 7) for n, i in enumerate((10, 11, 12, 14, 15))] + [(1, 13, 1, 99)]
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    data = k_core(read_interactions(inter), 2)
    assert data.num_items == 5 and "13" not in [str(x) for x in data.item_ids[1:]]
    out = tmp_path / "emb.npy"
    embed_items(items, EmbedConfig(model="stand-in", template="{movie_title}"), out, encoder=_LengthEncoder())
    aligned = load_features(out, data.num_items, data.item_ids)
    assert aligned.shape == (6, 2) and not aligned[0].any()
    for new in range(1, data.num_items + 1):
        text = f"movie {data.item_ids[new]}"
        assert aligned[new].tolist() == [len(text), sum(map(ord, text)) % 97]
    assert read_interactions(inter, min_rating=4).num_interactions == 30


def test_a_missing_text_is_a_named_error(tmp_path):
    items = _item_file(tmp_path, [(i, f"movie {i}", 1990, "Drama") for i in (1, 2, 4)])
    out = tmp_path / "emb.npy"
    embed_items(items, EmbedConfig(model="stand-in"), out, encoder=_LengthEncoder())
    with pytest.raises(ValueError, match="no embedding for item '3'"):
        load_aligned(out, [None, "1", "2", "3", "4"], 4)
    assert load_aligned(out, [None, "1", "2", "3", "4"], 4, missing="zero")[3].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="names column"):
        embed_items(items, EmbedConfig(model="stand-in", template="{title}"), out, encoder=_LengthEncoder())


def test_a_stopped_embedding_run_resumes_from_its_chunks(tmp_path):
    items = _item_file(tmp_path, [(i, f"movie {i}", 1990, "Drama") for i in range(1, 11)])
    out = tmp_path / "emb.npy"
    config = EmbedConfig(model="stand-in", chunk_items=3)
    with pytest.raises(KeyboardInterrupt):
        embed_items(items, config, out, encoder=_LengthEncoder(fail_after=2))
    assert len(list(out.with_suffix(".parts").glob("chunk-*.npy"))) == 2
    rest = _LengthEncoder()
    embed_items(items, config, out, encoder=rest)
    assert rest.calls == 2  # chunks 3 and 4 of 4
    whole = tmp_path / "whole.npy"
    embed_items(items, config, whole, encoder=_LengthEncoder())
    np.testing.assert_array_equal(np.load(out), np.load(whole))


def test_multi_hot_rows_of_a_token_column(tmp_path):
    items = _item_file(tmp_path, [(1, "a", 1990, "Drama Comedy"), (2, "b", 1991, "Drama")])
    out = tmp_path / "genres.npy"
    assert cli.main(["embed", "--items", str(items), "--multi-hot", "class", "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), [[1, 1], [0, 1]])  # columns Comedy, Drama


def test_embed_errors_are_one_line(tmp_path, capsys):
    items = _item_file(tmp_path, [(1, "a", 1990, "Drama")])
    assert cli.main(["embed", "--items", str(items), "--out", str(tmp_path / "e.npy")]) != 0
    assert capsys.readouterr().err.strip().startswith("error: embed: --model is needed")
    assert cli.main(["embed", "--items", str(tmp_path / "none.item"), "--model", "m",
                     "--out", str(tmp_path / "e.npy")]) != 0
    assert "no such file" in capsys.readouterr().err


@pytest.mark.skipif(not MINILM.is_dir() or not ML100K_ITEMS.exists(), reason=f"needs {MINILM} and {ML100K_ITEMS}")
def test_train_embeds_an_item_table_in_one_go(tmp_path):
    pytest.importorskip("sentence_transformers", reason="needs sentence-transformers (pip install .[text])")
    items = _real_items(tmp_path, 80)  # Rec-PCA needs at least as many items as the table's 64 dims
    inter = tmp_path / "d.inter"
    rng = np.random.default_rng(0)
    rows = [(u, int(i), 4, t) for u in range(1, 61) for t, i in enumerate(rng.choice(np.arange(1, 81), 8, False))]
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(inter), "--init", "recpca", "--features", str(items), "--embed-model",
                     str(MINILM), "--template", TEMPLATE, "--epochs", "1", "--diagnostics-sample", "0",
                     "--out", str(out), "--device", "cpu"]) == 0
    manifest = json.loads((out / "item_embeddings.json").read_text())
    assert manifest["count"] == 80 and manifest["template"] == TEMPLATE
    assert json.loads((out / "metrics.json").read_text())["config"]["items"]["embed_model"] == str(MINILM)


def test_a_resumed_run_with_another_chunking_starts_over(tmp_path):
    items = _item_file(tmp_path, [(i, f"movie {i}", 1990, "Drama") for i in range(1, 11)])
    out = tmp_path / "emb.npy"
    with pytest.raises(KeyboardInterrupt):
        embed_items(items, EmbedConfig(model="stand-in", chunk_items=3), out, encoder=_LengthEncoder(fail_after=2))
    rest = _LengthEncoder()
    embed_items(items, EmbedConfig(model="stand-in", chunk_items=4), out, encoder=rest)
    assert rest.calls == 3  # every chunk of 4 encoded anew: the saved chunks of 3 start elsewhere
    whole = tmp_path / "whole.npy"
    embed_items(items, EmbedConfig(model="stand-in", chunk_items=4), whole, encoder=_LengthEncoder())
    np.testing.assert_array_equal(np.load(out), np.load(whole))
