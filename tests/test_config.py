"""Config loading: the shipped config, ``${VAR}`` interpolation, every error kind at its exact ``file:line``.

The bad configs live in ``fixtures/configs/``; the expected line numbers below are the lines of those files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import check_config, config_path, load_config
from bot.exceptions import ConfigError
from bot.settings import ServiceConfig
from dialogs.engine import override_problems
from dialogs.loader import builtin_template
from dialogs.ports import TenantProfile

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "fixtures" / "configs"
SHIPPED = ROOT / "config.yaml"


def problems(config: str | Path, env: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """(line, message) of every problem of ``config``, checking that each names the file."""
    path = CONFIGS / config if isinstance(config, str) else config
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env or {})
    assert caught.value.problems, "a ConfigError must carry problems"
    assert {p.file for p in caught.value.problems} == {str(path)}
    return [(p.line, p.message) for p in caught.value.problems]


# --- the shipped config -------------------------------------------------------------------------------------


def test_shipped_config_has_the_demo_tenants_of_the_design() -> None:
    settings = load_config(SHIPPED, env={})
    assert (settings.redis_url, settings.database_url, settings.data_dir) == (None, None, "./var")
    assert list(settings.tenants) == ["demo", "demo-ru"]
    week = {day: ["10:00-20:00"] for day in ("mon", "tue", "wed", "thu", "fri", "sat")}

    demo = settings.tenants["demo"]
    assert (demo.name, demo.locale, demo.phone_region) == ("Demo Salon", "en", "GB")
    assert demo.timezone == "Europe/London"
    assert demo.hours == week
    assert (demo.booking.backend, demo.booking.slot_step, demo.dialog.template) == ("local", 30, "booking")
    assert demo.services == [
        ServiceConfig(id="haircut", label="Haircut", minutes=60, synonyms=["hair cut", "trim", "cut"], price="£30"),
        ServiceConfig(id="manicure", label="Manicure", minutes=45, synonyms=["nails"], price="£25"),
        ServiceConfig(id="colouring", label="Hair colouring", minutes=120,
                      synonyms=["colour", "color", "dye", "hair color"], price="from £60"),
    ]  # fmt: skip
    assert demo.info.address and demo.info.payment and demo.info.faq
    assert demo.handoff.webhook_url is None  # the demo needs no accounts

    ru = settings.tenants["demo-ru"]
    assert (ru.name, ru.locale, ru.timezone, ru.phone_region) == ("Салон Демо", "ru", "Europe/Moscow", "RU")
    assert ru.hours == week
    assert (ru.booking.backend, ru.booking.slot_step) == ("local", 30)
    assert ru.services == [
        ServiceConfig(id="haircut", label="Стрижка", minutes=60, synonyms=["подстричься", "постричься"],
                      price="1500 ₽", label_acc="стрижку"),
        ServiceConfig(id="manicure", label="Маникюр", minutes=45, synonyms=["ногти"], price="1200 ₽",
                      label_acc="маникюр"),
        ServiceConfig(id="colouring", label="Окрашивание", minutes=120, synonyms=["покрасить", "окраска"],
                      price="от 3500 ₽", label_acc="окрашивание"),
    ]  # fmt: skip


def test_shipped_config_takes_the_service_urls_from_the_environment() -> None:
    env = {"REDIS_URL": "redis://127.0.0.1:6379/3", "DATABASE_URL": "postgresql://postgres@127.0.0.1/test"}
    settings = load_config(SHIPPED, env=env)
    assert (settings.redis_url, settings.database_url) == (env["REDIS_URL"], env["DATABASE_URL"])
    # An empty variable means "unset": embedded Redis and SQLite.
    settings = load_config(SHIPPED, env={"REDIS_URL": "", "DATABASE_URL": ""})
    assert (settings.redis_url, settings.database_url) == (None, None)


def test_check_config_of_the_shipped_config_is_empty() -> None:
    assert check_config(SHIPPED) == []


# --- ${VAR} interpolation -----------------------------------------------------------------------------------


def test_variables_and_defaults_are_interpolated() -> None:
    env = {"BB_TEST_DATABASE": "sqlite:///x.db", "BB_TEST_TOKEN": "123:abc", "BB_TEST_NAME": "Acme",
           "BB_TEST_MINUTES": "90", "BB_TEST_REDIS": ""}  # fmt: skip
    settings = load_config(CONFIGS / "env.yaml", env=env)
    tenant = settings.tenants["t"]
    assert settings.redis_url is None and settings.database_url == "sqlite:///x.db"
    assert tenant.name == "Acme Salon"  # a reference inside a longer string
    assert tenant.services[0].minutes == 90  # text from the environment still becomes an integer
    assert tenant.channels.telegram is not None
    assert (tenant.channels.telegram.token, tenant.channels.telegram.webhook_secret) == ("123:abc", "default-secret")


def test_defaults_apply_when_a_variable_is_unset_or_empty() -> None:
    env = {"BB_TEST_DATABASE": "", "BB_TEST_TOKEN": "123:abc", "BB_TEST_NAME": ""}
    settings = load_config(CONFIGS / "env.yaml", env=env)
    assert settings.database_url is None  # ${VAR} set to "" is "" (then: unset)
    assert settings.tenants["t"].name == "Demo Salon"  # ${VAR:-Demo} with VAR="" takes the default
    assert settings.tenants["t"].services[0].minutes == 60


def test_malformed_channel_secrets_are_reported_at_their_lines() -> None:
    env = {"BB_TEST_DATABASE": "", "BB_TEST_TOKEN": "not-a-token", "BB_TEST_SECRET": "has spaces"}
    assert [line for line, _ in problems("env.yaml", env=env)] == [11, 12]


def test_missing_variables_are_errors_at_their_lines() -> None:
    assert problems("env.yaml") == [
        (2, "database_url: environment variable 'BB_TEST_DATABASE' is not set "
            "(write ${BB_TEST_DATABASE:-default} to give it a default)"),
        (11, "tenants.t.channels.telegram.token: environment variable 'BB_TEST_TOKEN' is not set "
             "(write ${BB_TEST_TOKEN:-default} to give it a default)"),
    ]  # fmt: skip


def test_env_argument_replaces_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BB_TEST_DATABASE", "sqlite:///x.db")
    monkeypatch.setenv("BB_TEST_TOKEN", "123:abc")
    assert [line for line, _ in problems("env.yaml", env={"BB_TEST_TOKEN": "123:abc"})] == [2]
    assert load_config(CONFIGS / "env.yaml").tenants["t"].name == "Demo Salon"  # env=None: the process's


# --- error kinds, each at its exact line --------------------------------------------------------------------


def test_bad_yaml_is_one_problem_at_the_line_the_parser_reports() -> None:
    assert problems("syntax.yaml") == [(6, "invalid YAML: expected ',' or ']', but got '}'")]


def test_duplicate_keys_are_all_reported() -> None:
    assert problems("duplicate_keys.yaml") == [
        (8, "tenants.t: duplicate key 'timezone' (first at line 4)"),
        (11, "tenants.u.hours: duplicate key 'mon' (first at line 11)"),
    ]


def test_unknown_keys_suggest_the_known_one() -> None:
    assert problems("unknown_keys.yaml") == [
        (2, "unknown key 'tenant' (did you mean 'tenants'?)"),
        (5, "tenants.t: missing required key 'services'"),
        (8, "tenants.t: unknown key 'servics' (did you mean 'services'?)"),
        (12, "tenants.t.booking: unknown key 'slotstep' (did you mean 'slot_step'?)"),
    ]


def test_wrong_types_and_values() -> None:
    assert problems("wrong_types.yaml") == [
        (1, "session_ttl_days: must be greater than 0, got -1"),
        (5, "tenants.t.locale: expected 'en' or 'ru', got 'de'"),
        (6, "tenants.t.phone_region: 'gb' is invalid: use a two-letter country code in capitals, like GB"),
        (11, "tenants.t.services[0].minutes: expected an integer, got 'abc'"),
        (13, "tenants.t.services[1].label: expected a string, got 45 (put it in quotes)"),
        (15, "tenants.t.services[1].synonyms: expected a list, got 'nails'"),
        (17, "tenants.t.booking.slot_step: expected a whole number, got 1.5"),
        (18, "tenants.t.dialog: expected a mapping, got 'booking'"),
        (20, "tenants.t.channels.vk.group_id: expected an integer, got 'abc'"),
        (22, "tenants.u.name: expected a string, got nothing"),
        (24, "tenants.u.services: must not be empty"),
    ]


def test_unknown_timezones() -> None:
    assert problems("timezone.yaml") == [
        (4, "tenants.t.timezone: unknown timezone 'Europe/Londn' (did you mean 'Europe/London'?)"),
        (10, "tenants.u.timezone: unknown timezone 'Mars/Olympus_Mons'"),
    ]


def test_inverted_overlapping_and_malformed_hours() -> None:
    assert problems("hours.yaml") == [
        (5, "tenants.t.hours.mon[0]: '10:00-09:00' ends before it starts"),
        (6, "tenants.t.hours.tue: '13:00-18:00' overlaps '10:00-14:00'"),
        (9, "tenants.t.hours.wed[0]: '9-17' is not HH:MM-HH:MM"),
        (10, "tenants.t.hours.thu[0]: '10:00-24:30' is not HH:MM-HH:MM"),
        (11, "tenants.t.hours.fri: expected a list, got '10:00-20:00'"),
        (13, "tenants.t.hours: unknown weekday 'mond' (did you mean 'mon'?)"),
    ]  # and sun "00:00-24:00" (line 12) is fine


def test_duplicate_and_malformed_service_ids() -> None:
    assert problems("services.yaml") == [
        (12, "tenants.t.services[2].id: duplicate service id 'haircut' (first at line 6)"),
        (15, "tenants.t.services[3].id: 'Hair Cut' is invalid: use lowercase letters, digits, '-' and '_'"),
    ]


def test_dialog_references_are_checked_against_the_template() -> None:
    where = "tenants.u.dialog"
    assert problems("dialog.yaml") == [
        (8, "tenants.t.dialog.template: unknown template 'bookng' (did you mean 'booking'?)"),
        (17, f"{where}.texts: unknown text 'no_such_text' in template 'booking'"),
        (18, f"{where}.texts: unknown text 'greetng' in template 'booking' (did you mean 'greeting'?)"),
        (19, f"{where}.texts: text 'greeting': unknown placeholder {{busines}} (available: {{business}})"),
        (20, f"{where}.texts: text 'booked': malformed placeholder (expected '}}' before end of string)"),
        (22, f"{where}.slots: unknown slot 'phon' in template 'booking' (did you mean 'phone'?)"),
        (25, f"{where}.slots: slot 'phone': unknown validator 'no_such_validator' (known: free_time, "
             "known_service, name_like, not_past, open_day, valid_email, valid_phone, within_horizon)"),
        (25, f"{where}.slots: slot 'phone': validator 'open_day' checks date values, not phone"),
    ]  # fmt: skip


def test_overrides_that_pass_the_check_pass_the_engine_too() -> None:
    settings = load_config(CONFIGS / "overrides.yaml", env={})
    cfg = settings.tenants["t"]
    profile = TenantProfile(id="t", name=cfg.name, locale=cfg.locale, timezone=cfg.timezone, services=(),
                            texts=cfg.dialog.texts)  # fmt: skip
    overrides = {name: (o.required, o.validators) for name, o in cfg.dialog.slots.items()}
    assert cfg.dialog.slots["date"].validators == ["not_past", "open_day"]
    assert override_problems(builtin_template("booking"), profile, overrides) == []


def test_anchors_and_merge_keys_point_at_the_line_that_holds_the_value() -> None:
    assert problems("anchors.yaml") == [
        (7, "tenants.t.services[0].minutes: must be greater than 0, got 0"),
        (7, "tenants.u.services[0].minutes: must be greater than 0, got 0"),  # merged in from t
        (11, "tenants.u.timezone: unknown timezone 'Europe/Pariss' (did you mean 'Europe/Paris'?)"),
    ]


def test_all_problems_are_reported_at_once_in_line_order() -> None:
    assert problems("many.yaml") == [
        (4, "tenants.t.timezone: unknown timezone 'Europe/Londn' (did you mean 'Europe/London'?)"),
        (6, "tenants.t.hours.mon[0]: '10:00-09:00' ends before it starts"),
        (8, "tenants.t.services[0].minutes: expected an integer, got 'abc'"),
        (9, "tenants.t: unknown key 'servics' (did you mean 'services'?)"),
        (15, "tenants.u.services[1].id: duplicate service id 'haircut' (first at line 14)"),
        (18, "tenants.u.channels.telegram.token: environment variable 'BB_TEST_UNSET_TOKEN' is not set "
             "(write ${BB_TEST_UNSET_TOKEN:-default} to give it a default)"),
        (19, "tenants.u.channels.telegram.webhook_secret: bad reference '${BB_TEST_SECRET': "
             "use ${VAR} or ${VAR:-default}"),
        (21, "tenants.u.dialog.template: unknown template 'bookng' (did you mean 'booking'?)"),
    ]  # fmt: skip


def test_problems_print_as_file_line_message() -> None:
    path = CONFIGS / "timezone.yaml"
    printed = [str(p) for p in check_config(path)]
    assert printed[1] == f"{path}:10: tenants.u.timezone: unknown timezone 'Mars/Olympus_Mons'"


# --- files that are not a config at all ---------------------------------------------------------------------


def test_a_missing_file(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == [(0, "cannot read the config: No such file or directory")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", (1, "expected a mapping with 'tenants' at the top, got an empty file")),
        ("# only a comment\n", (1, "expected a mapping with 'tenants' at the top, got an empty file")),
        ("- a\n- b\n", (1, "expected a mapping with 'tenants' at the top, got a list")),
        ("data_dir: a\n---\ndata_dir: b\n", (2, "invalid YAML: but found another document")),
        ("data_dir: a\nsession_ttl_days: !!int x\n", (2, "invalid YAML: invalid value 'x': "
                                                         "invalid literal for int() with base 10: 'x'")),
        ("data_dir: a\n\tsession_ttl_days: 3\n",
         (2, "invalid YAML: found character '\\t' that cannot start any token "
             "(this line has a tab: use spaces, not tabs, to indent YAML)")),
        ("data_dir: a\nx: b\x01\n", (2, "invalid YAML: special characters are not allowed")),
    ],
)  # fmt: skip
def test_not_a_config(tmp_path: Path, text: str, expected: tuple[int, str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert problems(path) == [expected]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes("data_dir: a\nname: caf\u00e9\n".encode("latin-1"))
    assert problems(path) == [(2, "not UTF-8 text")]


# --- which file ---------------------------------------------------------------------------------------------


def test_config_path_prefers_the_flag_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOOKINGBOT_CONFIG", raising=False)
    assert config_path(None) == Path("config.yaml")
    monkeypatch.setenv("BOOKINGBOT_CONFIG", "/etc/bookingbot.yaml")
    assert config_path(None) == Path("/etc/bookingbot.yaml")
    assert config_path("mine.yaml") == Path("mine.yaml")


def test_a_bad_config_leaves_an_earlier_one_untouched() -> None:
    good = load_config(SHIPPED, env={})
    before = good.model_dump()
    with pytest.raises(ConfigError):
        load_config(CONFIGS / "many.yaml", env={})
    assert good.model_dump() == before
    assert load_config(SHIPPED, env={}) == good


def test_voice_settings_and_models_that_are_not_installed(tmp_path: Path) -> None:
    """Models are never downloaded: a voice-enabled tenant's model must be here (checked without loading it)."""
    assert problems("voice.yaml") == [
        (3, "voice.device: expected 'cpu', 'cuda' or 'auto', got 'gpu'"),
        (4, "voice.max_seconds: must be greater than 0.0, got 0"),
    ]
    path = tmp_path / "voice.yaml"
    text = (CONFIGS / "voice.yaml").read_text()
    path.write_text(text.replace("device: gpu", "device: cpu").replace("max_seconds: 0", "max_seconds: 60"))
    found = problems(path)
    assert [line for line, _ in found] == [2, 11]  # tenant `off` has voice off: its model is not checked
    assert found[0][1].startswith("voice.model: model 'large-v3' is neither a directory nor one of the packaged")
    assert found[0][1].endswith("(voice is enabled for tenant 'u')")
    assert found[1][1].startswith("tenants.t.voice.model: model '/no/such/model/dir' is neither a directory")


def test_calcom_and_reminder_errors() -> None:
    found = problems("bad_calcom.yaml", env={"CALCOM_KEY": "cal_x"})
    assert found == [
        (14, "tenants.salon.booking.calcom.event_types: service 'manicure' has no cal.com event type"),
        (14, "tenants.salon.booking.calcom.event_types: 'pedicure' is not a service of this tenant"
             " (did you mean 'manicure'?)"),
        (16, "tenants.salon.reminders.before[1]: '2 hours' is not a duration: use a positive number with m, h or d,"
             " like 24h or 90m"),
        (22, "tenants.other.booking.backend: expected 'local' or 'calcom', got 'google'"),
        (28, "tenants.bare.booking.backend: backend 'calcom' needs a 'calcom:' block beside it"),
    ]  # fmt: skip


def test_calcom_config_is_loaded_with_its_defaults(tmp_path: Path) -> None:
    from calcom_setup import write_config

    settings = load_config(write_config(tmp_path / "c.yaml", "http://127.0.0.1:9"), env={
        "TEST_CALCOM_API_KEY": "cal_k", "TEST_CALCOM_WEBHOOK_SECRET": "sec"})  # fmt: skip
    calcom = settings.tenants["demo"].booking.calcom
    assert calcom is not None and calcom.api_key == "cal_k" and calcom.guest_email_domain == "no-email.invalid"
    assert settings.tenants["demo"].reminders.offsets() == [24 * 60, 2 * 60]
