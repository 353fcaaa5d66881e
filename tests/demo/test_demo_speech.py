"""The speech demo stage: spoken-number data, voice split, and the whole stage end to end in quick mode on
tone "speech" (CI has no espeak-ng), plus a real quick run with espeak-ng where it is installed."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from modaloom.demo import install, speech
from modaloom.demo.stage import StageContext, StageReport
from modaloom.errors import DataError


def tone_synthesise(root: Path, utterances: list[speech.Utterance], processes: int = 2) -> None:
    """Stands in for espeak-ng: each word a 0.15 s tone whose pitch depends on the word, at 16 kHz."""
    import soundfile

    words = speech.vocabulary_words()
    rate = 16000
    t = np.arange(int(0.15 * rate)) / rate
    for u in utterances:
        path = root / u.wav
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tones = [0.3 * np.sin(2 * np.pi * (200 + 40 * words.index(w)) * t) for w in u.text.split()]
        wave = np.concatenate(tones)
        soundfile.write(path, wave.astype(np.float32), rate)


def test_number_words() -> None:
    assert speech.number_words(0) == "zero"
    assert speech.number_words(13) == "thirteen"
    assert speech.number_words(40) == "forty"
    assert speech.number_words(342) == "three hundred and forty two"
    assert speech.number_words(900) == "nine hundred"
    assert speech.number_words(917) == "nine hundred and seventeen"
    words = set(speech.vocabulary_words())
    assert all(set(speech.number_words(n).split()) <= words for n in range(1000))
    with pytest.raises(ValueError, match="1000"):
        speech.number_words(1000)


def test_voices_held_out_and_plan_fixed_by_seed() -> None:
    split = speech.voice_split(speech.FULL)
    train, dev, test = set(split["train"]), set(split["dev"]), set(split["test"])
    assert len(test) == speech.FULL.test_voices and len(dev) == speech.FULL.dev_voices
    assert not (train & dev or train & test or dev & test)
    plan = speech.plan(speech.FULL)
    assert plan == speech.plan(speech.FULL)  # the seed fixes everything
    assert plan != speech.plan(speech.FULL, seed=speech.SEED + 1)
    for name, voices in split.items():
        heard = {u.voice for u in plan if u.split == name}
        assert heard == set(voices) if name != "train" else heard <= set(voices)
    assert len({u.wav for u in plan}) == len(plan)


def test_missing_espeak_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(install, "is_root", lambda: False)  # never really run apt-get
    with pytest.raises(DataError, match="Debian package espeak-ng"):
        speech.espeak_binary()


def check_report(report: StageReport, work: Path) -> None:
    assert set(report.headline) == {"wer_heldout_voices", "cer_heldout_voices"}
    assert all(v >= 0.0 for v in report.headline.values())
    table = report.tables[0]
    assert table.header == ["split", "voices", "utterances", "WER", "CER"]
    assert [row[0].split()[0] for row in table.rows] == ["train", "dev", "test"]
    assert table.rows[2][2] == speech.QUICK.test
    assert {f.path for f in report.figures} == {"run/curves.png", "spectrogram.png"}
    for figure in report.figures:
        assert (work / figure.path).stat().st_size < 300_000
    assert (work / report.configs["S2T model"]).is_file()
    assert [r["name"] for r in report.runs] == ["s2t"] and report.runs[0]["steps"] > 0
    assert len(report.samples) == speech.QUICK.samples
    assert all(s["expected"] and "voice" in s["input"] for s in report.samples)
    assert any(c.startswith("modaloom finetune --task speech_to_text") for c in report.commands)
    assert any(c.startswith("modaloom evaluate") for c in report.commands)
    assert report.wall_s > 0


@pytest.mark.timeout(300)
def test_quick_stage_end_to_end_on_tones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech, "synthesise", tone_synthesise)
    work = tmp_path / "speech"
    report = speech.run(StageContext(work=work, quick=True, threads=1, log=io.StringIO()))
    check_report(report, work)
    assert json.loads((work / "data" / speech.MANIFEST).read_text())["utterances"] == 48
    # a second run reuses every step: no command runs again, the numbers are the same
    again = speech.run(StageContext(work=work, quick=True, threads=1, log=io.StringIO()))
    assert again.commands == []
    assert again.headline == report.headline


@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (Debian espeak-ng)")
def test_quick_stage_with_espeak(tmp_path: Path) -> None:
    import soundfile

    work = tmp_path / "speech"
    report = speech.run(StageContext(work=work, quick=True, threads=1, log=io.StringIO()))
    check_report(report, work)
    wav = next((work / "data" / "wav" / "test").glob("*.wav"))
    info = soundfile.info(wav)
    assert info.samplerate == 22050 and info.duration > 0.3


