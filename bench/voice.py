"""Real-time factor of a voice turn end to end, next to raw faster-whisper on the same file in the same run.

A voice turn: the Telegram double (``tests/doubles/telegram.py``, real HTTP on loopback) serves the clip;
``getFile`` + download, PyAV decode with the limits, transcription (``llm.stt``, the configured model), the
dialog step with the transcript, session save on the real Redis, message log on the real PostgreSQL. Raw:
``WhisperModel.transcribe(path)`` on the same loaded model with the same options (its own decoding). The two
are interleaved, REPEATS times each, and compared by their medians.

Usage: ``make bench-voice`` (REDIS_URL / DATABASE_URL point at the real services).
Last line: ``voice_rtf=X overhead_pct=Y``: median turn seconds / audio seconds, and how much longer the median
turn took than the median raw transcription.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from datetime import datetime
from pathlib import Path

from bot.config import load_config
from bot.pipeline import Pipeline
from bot.runtime import Runtime
from channels.base import InboundMessage, MediaRef
from channels.settings import TelegramSettings
from channels.telegram import TelegramChannel
from llm.stt import SAMPLE_RATE, decode, load_model
from tests.doubles.telegram import TelegramDouble

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "fixtures" / "voice" / "haircut_tomorrow_at_five.ogg"  # "A haircut tomorrow at five pm, please."
NOW = datetime.fromisoformat("2026-11-23T09:00:00+00:00")
REPEATS = int(os.environ.get("BENCH_REPEATS", "7"))
TOKEN = "4242:bench"


def rss_mb() -> float:
    """Resident memory of this process now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main() -> None:
    env = {
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    }
    runtime = await Runtime.start(load_config(ROOT / "config.yaml", env=env))
    tenant = runtime.add_tenant(f"bench~{uuid.uuid4().hex[:8]}", runtime.tenant("demo").config)
    stt = runtime.voice.stt(tenant)
    audio = CLIP.read_bytes()
    audio_s = len(decode(audio, 600)) / SAMPLE_RATE
    try:
        async with TelegramDouble(TOKEN) as double:
            channel = TelegramChannel(TelegramSettings(token=TOKEN, webhook_secret="s", api_base=double.url))

            async def fetch(msg: InboundMessage) -> bytes:
                assert msg.voice is not None
                return await channel.fetch_media(msg.voice)

            pipeline = Pipeline(runtime, media=fetch)
            before = rss_mb()
            started = time.perf_counter()
            await stt.warm_up()
            load_s = time.perf_counter() - started
            loaded = rss_mb()
            model = await asyncio.to_thread(load_model, stt.config)

            def raw() -> str:
                segments, _ = model.transcribe(
                    str(CLIP),
                    language="en",
                    beam_size=stt.config.beam_size,
                    vad_filter=True,
                    condition_on_previous_text=False,
                    without_timestamps=True,
                )
                return " ".join(s.text.strip() for s in segments)

            async def turn(n: int) -> str:
                file_id = f"bench-{n}-{uuid.uuid4().hex[:6]}"
                double.add_file(file_id, audio)
                user = f"voice-{n}-{uuid.uuid4().hex[:6]}"
                msg = InboundMessage(
                    tenant=tenant.id, channel="telegram", user_id=user, event_id=file_id,
                    voice=MediaRef(id=file_id, mime="audio/ogg"),
                )  # fmt: skip
                result = await pipeline.handle(msg, NOW)
                if result.session.slots.get("service") != "haircut":
                    raise AssertionError(f"the turn did not hear a haircut: {result.session.slots}")
                return result.session.state

            await turn(-1)  # warm-up: VAD model, connections, first-call paths
            await asyncio.to_thread(raw)
            ours: list[float] = []
            theirs: list[float] = []
            cpu_ours: list[float] = []
            cpu_theirs: list[float] = []
            for n in range(REPEATS):
                started, cpu = time.perf_counter(), time.process_time()
                await turn(n)
                ours.append(time.perf_counter() - started)
                cpu_ours.append(time.process_time() - cpu)
                started, cpu = time.perf_counter(), time.process_time()
                await asyncio.to_thread(raw)
                theirs.append(time.perf_counter() - started)
                cpu_theirs.append(time.process_time() - cpu)
            await channel.aclose()
    finally:
        await runtime.drop_tenant(tenant.id)
        await runtime.aclose()
    turn_s, raw_s = statistics.median(ours), statistics.median(theirs)
    cfg = stt.config
    print(f"clip: {CLIP.name}, {audio_s:.2f} s of audio; model {cfg.model} {cfg.compute_type} on {cfg.device}, "
          f"beam {cfg.beam_size}, {os.cpu_count()} cores; {REPEATS} runs each, interleaved")  # fmt: skip
    load = os.getloadavg()[0]
    print(f"load average during the run: {load:.1f} on {os.cpu_count()} cores (wall times include waiting for a core)")
    print("| what | median s | min s | RTF (median / audio) | CPU s (median, all threads) |")
    print("|---|---|---|---|---|")
    print(f"| voice turn end to end (fetch, decode, transcribe, dialog, save) | {turn_s:.3f} | {min(ours):.3f} "
          f"| {turn_s / audio_s:.3f} | {statistics.median(cpu_ours):.3f} |")  # fmt: skip
    print(f"| raw faster-whisper on the file | {raw_s:.3f} | {min(theirs):.3f} | {raw_s / audio_s:.3f} "
          f"| {statistics.median(cpu_theirs):.3f} |")  # fmt: skip
    print(f"model load: {load_s:.2f} s; memory: {before:.0f} MB before the model, {loaded:.0f} MB after loading it, "
          f"{rss_mb():.0f} MB at the end")  # fmt: skip
    print(f"voice_rtf={turn_s / audio_s:.3f} overhead_pct={(turn_s - raw_s) / raw_s * 100:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
