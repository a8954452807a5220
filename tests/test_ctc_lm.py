"""The token n-gram LM and the CTC beam search that reads a bridge's frames with it (tympan/runtime/ctc_lm.py,
training/ngram.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tympan.manifest import Example
from tympan.runtime.ctc_lm import EOS, LmError, LmSettings, NgramLM, beam_search
from tympan.training.ngram import count, english_texts, greedy

V = 12
BLANK_WINS = np.log(0.9)


def frames(rows: list[dict[int, float]], k: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames given as {label: probability}; the blank takes what is left; top-k ids and log-probs per frame."""
    ids = np.zeros((len(rows), k), dtype=np.int64)
    logp = np.full((len(rows), k), -30.0, dtype=np.float32)
    blank = np.zeros(len(rows), dtype=np.float32)
    for t, row in enumerate(rows):
        ranked = sorted(row.items(), key=lambda kv: -kv[1])
        others = [i for i in range(V) if i not in row]
        for j in range(k):
            ids[t, j], p = ranked[j] if j < len(ranked) else (others[j - len(ranked)], 1e-13)
            logp[t, j] = math.log(p)
        blank[t] = math.log(max(1.0 - sum(row.values()), 1e-13))
    return ids, logp, blank


def test_probabilities_sum_to_one_after_any_context() -> None:
    lm = count([[1, 2, 3], [1, 2, 4], [2, 3], [5]], order=3, vocab_size=V)
    for context in [(), (1,), (1, 2), (2, 3), (7, 8), (9,)]:
        total = sum(math.exp(lm.logp(context, t)) for t in [*range(V), EOS])
        assert total == pytest.approx(1.0, abs=1e-6), context
    # What was counted is likelier than what was not.
    assert lm.logp((1, 2), 3) > lm.logp((1, 2), 5) and lm.logp((), 1) > lm.logp((), 6)


def test_a_saved_model_loads_the_same_and_a_broken_file_is_named(tmp_path: Path) -> None:
    lm = count([[1, 2, 3], [3, 2, 1]], order=2, vocab_size=V, settings=LmSettings(0.4, 1.5, 6))
    lm.save(tmp_path / "lm.npz")
    again = NgramLM.load(tmp_path / "lm.npz")
    assert again.settings == LmSettings(0.4, 1.5, 6) and again.order == 2
    assert [again.logp((a,), b) for a in range(V) for b in range(V)] == \
        pytest.approx([lm.logp((a,), b) for a in range(V) for b in range(V)])
    assert not list(tmp_path.glob(".*tmp"))  # written through a rename
    (tmp_path / "cut.npz").write_bytes((tmp_path / "lm.npz").read_bytes()[:100])
    with pytest.raises(LmError, match=r"cut\.npz: not a tympan n-gram model"):
        NgramLM.load(tmp_path / "cut.npz")
    keys = [k[::-1].copy() for k in lm.keys]
    with pytest.raises(LmError, match="1-gram keys are not sorted"):
        NgramLM(2, keys, lm.logp_, lm.backoff, lm.unk_logp, lm.settings)
    with pytest.raises(ValueError, match="order 4"):
        count([[1]], order=4, vocab_size=V)
    with pytest.raises(ValueError, match=r"outside 0\.\.11"):
        count([[1, 12]], order=2, vocab_size=V)


def test_without_the_lm_the_beam_finds_what_greedy_finds() -> None:
    lm = count([[1]], order=2, vocab_size=V, settings=LmSettings(0.0, 0.0, 8))
    post = frames([{3: 0.9}, {3: 0.95}, {}, {3: 0.9}, {5: 0.6}, {5: 0.7}, {}, {7: 0.99}])
    assert greedy(post) == [3, 3, 5, 7]  # a blank between two 3s makes two tokens, none between makes one
    assert beam_search(*post, lm) == [3, 3, 5, 7]


def test_the_lm_decides_between_labels_the_frames_hardly_tell_apart() -> None:
    """"seven of clocks" vs "seven of clubs": the frames lean a little to the wrong word, the LM knows better."""
    seven, of, clubs, clocks = 1, 2, 3, 4
    text = [[seven, of, clubs]] * 20 + [[of, clubs]] * 5 + [[clocks]]
    post = frames([{seven: 0.9}, {}, {of: 0.9}, {}, {clocks: 0.5, clubs: 0.45}, {}])
    plain = count(text, order=3, vocab_size=V, settings=LmSettings(0.0, 0.0, 8))
    assert beam_search(*post, plain) == greedy(post) == [seven, of, clocks]
    assert beam_search(*post, plain.with_settings(LmSettings(0.5, 0.0, 8))) == [seven, of, clubs]


def test_the_length_bonus_keeps_words_the_lm_alone_would_drop() -> None:
    a, b = 1, 2
    lm = count([[a]] * 50 + [[a, b]], order=2, vocab_size=V)
    post = frames([{a: 0.95}, {}, {b: 0.55}, {}])
    assert beam_search(*post, lm.with_settings(LmSettings(1.0, 0.0, 8))) == [a]
    assert beam_search(*post, lm.with_settings(LmSettings(1.0, 6.0, 8))) == [a, b]


def test_the_lm_text_is_every_english_thing_said_or_written_once() -> None:
    def ex(task: str, src: str, target: str, text: str | None = None) -> Example:
        return Example(id=target, task=task, src_lang=src, tgt_lang="en", target=target, text=text)

    examples = [ex("asr", "en", "Front left."), ex("st", "en", "Vorne links", "Front left."),
                ex("sqa", "en", "Francoa", "It belongs to the genus Francoa."), ex("asr", "de", "Hallo")]
    assert english_texts(examples) == ["Front left.", "It belongs to the genus Francoa."]


def test_the_weight_is_the_weakest_within_one_standard_error_of_the_best() -> None:
    """Dev sentences share the LM's corpus: of weights the dev set cannot tell apart, the weakest is kept."""
    from tympan.training.ngram import WEIGHTS, standard_error, tune, utterance_errors

    errors = utterance_errors(["front left", "rear right", "seven of clubs"], ["front left", "ring right", "seven"])
    assert errors.tolist() == [[0, 2], [1, 2], [2, 3]]
    assert standard_error(errors[:1]) == 0.0 and standard_error(errors) > 0.0

    class Words:
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            return " ".join(f"w{i}" for i in ids)

    lm = count([[1, 2], [2, 3]], order=2, vocab_size=V)
    posteriors = [frames([{1: 0.99}, {}, {2: 0.99}]), frames([{2: 0.99}, {}, {3: 0.99}])]
    chosen, figures = tune(lm, posteriors, ["w1 w2", "w2 w3"], Words(), say=lambda _: None)
    assert figures["greedy"] == 0.0 and figures["standard_error"] == 0.0
    assert chosen.settings.weight == min(WEIGHTS)  # every weight scores 0: the weakest
