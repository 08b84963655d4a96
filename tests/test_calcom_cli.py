"""The piped ``bookingbot chat`` books, reschedules and cancels a tenant on ``backend: calcom`` (the double)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from calcom_setup import ROOT, calcom_env, demo_double, write_config

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
LONDON = ZoneInfo("Europe/London")


def chat(config: Path, data_dir: Path, script: str, user: str) -> subprocess.CompletedProcess[str]:
    env = calcom_env({k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")})
    env |= {"BOOKINGBOT_CONFIG": str(config), "BOOKINGBOT_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "bot", "chat", "--tenant", "demo", "--user", user, "--now", NOW.isoformat()],
        input=script, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip


def test_piped_chat_books_reschedules_and_cancels_in_calcom(tmp_path: Path) -> None:
    double = demo_double(now=lambda: NOW)
    with double.in_thread() as url:
        config = write_config(tmp_path / "config.yaml", url)
        data = tmp_path / "var"
        booked = chat(config, data, "hi\nhaircut tomorrow at 5pm\nJohn\n+447700900123\nyes\n", "cli-1")
        assert booked.returncode == 0, booked.stderr
        assert "17:00" in booked.stdout.split("> yes", 1)[1]
        [made] = double.accepted()
        assert made.start.astimezone(LONDON) == datetime(2026, 11, 24, 17, 0, tzinfo=LONDON)
        assert made.attendee["phoneNumber"] == "+447700900123"
        assert made.attendee["email"].endswith("@no-email.invalid")  # no email given: a stable guest address
        assert made.metadata["tenant"] == "demo" and made.metadata["conversation"] == "terminal:cli-1"

        moved = chat(config, data, "can I reschedule?\nFriday\n17:00\nyes\n", "cli-1")
        assert moved.returncode == 0, moved.stderr
        [now_booked] = double.accepted()
        assert now_booked.uid != made.uid and now_booked.rescheduled_from == made.uid
        assert now_booked.start.astimezone(LONDON) == datetime(2026, 11, 27, 17, 0, tzinfo=LONDON)
        assert double.bookings[made.uid].status == "cancelled"

        cancelled = chat(config, data, "cancel my booking\nyes\n", "cli-1")
        assert cancelled.returncode == 0, cancelled.stderr
        assert double.accepted() == []
        assert double.bookings[now_booked.uid].cancellation_reason
    versions = {(c.method.split()[1].split("/")[2], c.headers.get("cal-api-version")) for c in double.calls}
    assert versions == {("slots", "2024-09-04"), ("bookings", "2024-08-13")}
