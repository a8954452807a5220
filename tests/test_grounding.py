"""An ASR answer held to what the CTC bridge heard (tympan/runtime/grounding.py)."""

from __future__ import annotations

import pytest

from tympan.runtime.decode import DecodeSettings
from tympan.runtime.grounding import departure, grounded, held, word_edits


def test_word_edits_count_substitutions_insertions_and_deletions() -> None:
    assert word_edits([], []) == 0
    assert word_edits(["a", "b", "c"], ["a", "b", "c"]) == 0
    assert word_edits(["a", "b", "c"], ["a", "x", "c"]) == 1
    assert word_edits(["a", "b", "c"], ["a", "c"]) == 1
    assert word_edits(["a", "c"], ["a", "b", "c", "d"]) == 2
    assert word_edits(["kitten", "sat"], []) == 2


def test_the_written_form_of_the_heard_words_does_not_depart() -> None:
    """Case, punctuation and numbers written as digits are what the LLM is for: no departure."""
    assert departure("Go forward 10 meters.", "go forward ten meters") == 0
    assert departure("Eight of spades, 4 of clubs.", "eight of spades four of clubs") == 0
    assert departure("Ten of clubs.", "ten of clocks") == pytest.approx(1 / 3)


def test_an_answer_that_departs_is_replaced_by_the_heard_words() -> None:
    assert grounded("10:00", "front left", 0.5) == ("Front left", True)
    assert grounded("The text is in the format of a speech", "front center", 0.5) == ("Front center", True)
    # A mended word is kept: one edit in three heard words is within 0.5.
    assert grounded("Ten of clubs.", "ten of clocks", 0.5) == ("Ten of clubs.", False)
    # Nothing heard: nothing to hold the answer to (the runtime does not decode then anyway).
    assert grounded("Hello.", "", 0.5) == ("Hello.", False)
    assert departure("Hello there.", "") == 2


def test_held_applies_the_settings_and_needs_something_heard() -> None:
    """The one rule the engine, `tympan infer` and `tympan eval` serve by."""
    assert held("10:00", "front left", DecodeSettings()) == ("Front left", True)
    assert held("10:00", "front left", DecodeSettings(ground_asr=False)) == ("10:00", False)
    assert held("10:00", None, DecodeSettings()) == ("10:00", False)  # no CTC bridge
    # max_departure is the settings' own: one edit in three heard words passes 0.5, not 0.2.
    assert held("Ten of clubs.", "ten of clocks", DecodeSettings(max_departure=0.5)) == ("Ten of clubs.", False)
    assert held("Ten of clubs.", "ten of clocks", DecodeSettings(max_departure=0.2)) == ("Ten of clocks", True)
