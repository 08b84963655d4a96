"""Shared set-up for the cal.com tests: a double shaped like the demo salon, and configs pointing at it."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from doubles.calcom import CalcomDouble
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "cal_test_key"
WEBHOOK_SECRET = "whsec-calcom-test"
EVENT_TYPES = {"haircut": 1001, "manicure": 1002, "colouring": 1003}
MINUTES = {"haircut": 60, "manicure": 45, "colouring": 120}


def demo_double(now: Callable[[], datetime] | None = None, **options: Any) -> CalcomDouble:
    """The demo salon's calendar in cal.com: Europe/London, Mon-Sat 10:00-20:00, a start every 30 minutes."""
    event_types = {EVENT_TYPES[s]: MINUTES[s] for s in EVENT_TYPES}
    return CalcomDouble(API_KEY, event_types, timezone="Europe/London", step=30, now=now, **options)


def calcom_block(api_base: str, **extra: Any) -> dict[str, Any]:
    return {
        "api_base": api_base,
        "api_key": "${TEST_CALCOM_API_KEY}",
        "webhook_secret": "${TEST_CALCOM_WEBHOOK_SECRET}",
        "event_types": dict(EVENT_TYPES),
        **extra,
    }


def calcom_env(env: dict[str, str] | None = None) -> dict[str, str]:
    return {**(os.environ if env is None else env), "TEST_CALCOM_API_KEY": API_KEY,
            "TEST_CALCOM_WEBHOOK_SECRET": WEBHOOK_SECRET}  # fmt: skip


def write_config(path: Path, api_base: str | dict[str, str], **reminders: Any) -> Path:
    """The shipped config.yaml with ``demo`` (or each tenant of an ``api_base`` mapping) on cal.com there."""
    yaml = YAML()
    data = yaml.load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    bases = api_base if isinstance(api_base, dict) else {"demo": api_base}
    for tenant, base in bases.items():
        cfg = data["tenants"][tenant]
        cfg["booking"]["backend"] = "calcom"
        cfg["booking"]["calcom"] = calcom_block(base)
        if reminders:
            cfg["reminders"] = reminders
    with path.open("w", encoding="utf-8") as out:
        yaml.dump(data, out)
    return path
