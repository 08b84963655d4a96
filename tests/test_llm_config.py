"""The ``llm:`` keys: check-config errors at their lines, and how a tenant's block overrides the global one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.assist.wiring import effective_llm
from bot.config import load_config
from bot.exceptions import ConfigError
from bot.settings import BudgetConfig, LLMConfig

ROOT = Path(__file__).resolve().parents[1]


def test_llm_errors_are_reported_at_their_lines() -> None:
    path = ROOT / "fixtures" / "configs" / "llm.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert [(p.line, p.message) for p in caught.value.problems] == [
        (3, "llm.base_url: 'api.example.com/v1' is not an http(s) URL"),
        (4, "llm.timeout_seconds: must be greater than 0.0, got 0"),
        (11, "tenants.shop.llm.paraphrase: expected true or false, got 'yes please'"),
        (12, "tenants.shop.llm: unknown key 'extrakt' (did you mean 'extract'?)"),
        (14, "tenants.shop.llm.budget.daily_tokens: must be at least 0, got -5"),
        (15, "tenants.shop.llm.budget.monthly_tokens: expected an integer, got 'lots'"),
        (16, "tenants.shop.llm.budget.alert_webhook: 'hooks.example.com' is not an http(s) URL"),
    ]


def test_shipped_config_has_the_llm_off_without_a_key() -> None:
    settings = load_config(ROOT / "config.yaml", env={})
    for tenant in settings.tenants.values():
        llm = effective_llm(settings.llm, tenant.llm)
        assert llm.paraphrase and llm.extract and not llm.on  # asked for, but no api_key: off (make demo)
    keyed = load_config(ROOT / "config.yaml", env={"OPENAI_API_KEY": "sk-x"})
    llm = effective_llm(keyed.llm, keyed.tenants["demo"].llm)
    assert llm.on and (llm.base_url, llm.model, llm.timeout_seconds) == ("https://api.openai.com/v1", "gpt-4o-mini", 5)
    assert llm.budget == BudgetConfig(daily_tokens=200000, monthly_tokens=3000000, customer_daily_tokens=4000)


def test_a_tenant_overrides_the_global_block_key_by_key() -> None:
    global_cfg = LLMConfig(api_key="sk-global", model="m1", style="formal",
                           budget=BudgetConfig(daily_tokens=100, monthly_tokens=1000))  # fmt: skip
    tenant_cfg = LLMConfig(model="m2", paraphrase=True, budget=BudgetConfig(daily_tokens=50))
    llm = effective_llm(global_cfg, tenant_cfg)
    assert (llm.api_key, llm.model, llm.style) == ("sk-global", "m2", "formal")
    assert (llm.paraphrase, llm.extract) == (True, False)
    assert (llm.budget.daily_tokens, llm.budget.monthly_tokens, llm.budget.customer_daily_tokens) == (50, 1000, None)
    assert effective_llm(global_cfg, LLMConfig(api_key="", paraphrase=True)).on is False  # a tenant can opt out
