"""The CRM from the command line: a piped `bookingbot chat` for a tenant with `crm.erxes` lands in the erxes
double (both profiles); `bookingbot outbox` shows a failed row and `bookingbot outbox retry` queues it again."""

from __future__ import annotations

import io
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from doubles.erxes import ErxesDouble
from ruamel.yaml import YAML
from test_cli import NOW, ROOT, run

from bot.cli import main
from bot.config import check_config

SCRIPT = "hi\nhaircut tomorrow at 5pm\nJohn\n+447700900123\nyes\n"


def _crm_config(tmp_path: Path, url: str, profile: str, stage: str) -> tuple[Path, str]:
    """The shipped config with the demo tenant renamed (no earlier run's bookings) and given an erxes."""
    yaml = YAML()
    doc = yaml.load((ROOT / "config.yaml").read_text())
    tenant = f"crm{uuid.uuid4().hex[:10]}"
    doc["tenants"][tenant] = doc["tenants"].pop("demo")
    doc["tenants"][tenant]["crm"] = {
        "erxes": {"url": url, "profile": profile, "token": "${TEST_ERXES_TOKEN}", "deal_stage_id": stage}
    }
    path = tmp_path / "config.yaml"
    with path.open("w") as out:
        yaml.dump(doc, out)
    return path, tenant


@pytest.mark.parametrize("profile", ["v1", "v3"])
def test_piped_chat_books_into_erxes(services_env: dict[str, str], tmp_path: Path, profile: str) -> None:
    double = ErxesDouble(profile, "tok")  # type: ignore[arg-type]
    with double.in_thread() as url:
        config, tenant = _crm_config(tmp_path, url, profile, "stage-1")
        env = {**os.environ, **services_env, "BOOKINGBOT_CONFIG": str(config), "TEST_ERXES_TOKEN": "tok"}
        chat = run(["chat", "--tenant", tenant, "--user", "ann", "--now", NOW], stdin=SCRIPT, env=env)
        assert chat.returncode == 0, chat.stderr
        assert "17:00" in chat.stdout.split("> yes", 1)[1]
        [customer] = double.customers.values()
        assert (customer["code"], customer["firstName"], customer["primaryPhone"]) == (
            "terminal:ann", "John", "+447700900123")
        [deal] = double.deals.values()
        assert deal["customerIds"] == [customer["_id"]] and deal["stageId"] == "stage-1"
        assert (deal["startDate"], deal["closeDate"]) == (
            datetime(2026, 11, 24, 17, 0, tzinfo=UTC), datetime(2026, 11, 24, 18, 0, tzinfo=UTC))



def _in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """A command run in this process (a subprocess costs seconds of imports on a loaded machine)."""
    assert main(args) == 0
    return capsys.readouterr().out.strip()


def test_outbox_shows_failed_rows_and_retry_requeues_them(
    services_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    double = ErxesDouble("v3", "tok")
    with double.in_thread() as url:
        config, tenant = _crm_config(tmp_path, url, "v3", "stage-later")  # a stage staff have not made yet
        for name, value in {**services_env, "BOOKINGBOT_CONFIG": str(config), "TEST_ERXES_TOKEN": "tok"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr("sys.stdin", io.StringIO(SCRIPT))
        _in_process(["chat", "--tenant", tenant, "--user", "bo", "--now", NOW], capsys)
        shown = _in_process(["outbox", "--tenant", tenant], capsys)
        assert " booking  failed " in shown and "Stage not found" in shown
        assert shown.endswith("0 pending, 1 failed")
        assert not double.deals
        double.stage_ids.add("stage-later")
        assert _in_process(["outbox", "retry", "--tenant", tenant], capsys) == "1 failed rows queued again"
        # Any process that relays delivers it: here a chat with nothing to say.
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        _in_process(["chat", "--tenant", tenant, "--user", "bo"], capsys)
        [deal] = double.deals.values()
        assert deal["startDate"] == datetime(2026, 11, 24, 17, 0, tzinfo=UTC)
        assert _in_process(["outbox", "--tenant", tenant], capsys).endswith("0 pending, 0 failed")


def test_check_config_locates_crm_mistakes(tmp_path: Path) -> None:
    yaml = YAML()
    doc = yaml.load((ROOT / "config.yaml").read_text())
    doc["tenants"]["demo"]["crm"] = {"erxes": {"url": "erxes.example.com", "profile": "v2", "token": "t"}}
    doc["tenants"]["demo-ru"]["crm"] = {
        "erxes": {"url": "https://e.example.com", "profile": "v1", "token": "t", "inbox_integration_id": "i"}
    }
    path = tmp_path / "config.yaml"
    with path.open("w") as out:
        yaml.dump(doc, out)
    problems = [str(p) for p in check_config(path)]
    assert any("tenants.demo.crm.erxes.url" in p and "http(s)" in p for p in problems), problems
    assert any("tenants.demo.crm.erxes.profile" in p and "v1" in p for p in problems), problems
    assert any("brand_code is required" in p for p in problems), problems
    assert all(p.startswith(f"{path}:") and int(p.split(":")[1]) > 1 for p in problems), problems
