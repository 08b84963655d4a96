"""A tenant's config as the dialog layer sees it (:class:`dialogs.ports.TenantProfile`).

Apart from :mod:`bot.runtime` so that commands that only read the config (``extract``) do not import the
database and Redis clients.
"""

from __future__ import annotations

from bot.settings import WEEKDAYS, TenantConfig
from dialogs.ports import BusinessInfo, ServiceInfo, TenantProfile


def tenant_profile(tenant_id: str, cfg: TenantConfig) -> TenantProfile:
    services = tuple(
        ServiceInfo(
            id=s.id, label=s.label, minutes=s.minutes, synonyms=tuple(s.synonyms), price=s.price, label_acc=s.label_acc
        )
        for s in cfg.services
    )
    return TenantProfile(
        id=tenant_id,
        name=cfg.name,
        locale=cfg.locale,
        timezone=cfg.timezone,
        services=services,
        default_region=cfg.phone_region,
        template=cfg.dialog.template,
        texts=cfg.dialog.texts,
        horizon_days=cfg.booking.horizon_days,
        hours={WEEKDAYS.index(day): tuple(ranges) for day, ranges in cfg.hours.items()},
        info=BusinessInfo.model_validate(cfg.info.model_dump()),
        handoff_reachable=cfg.handoff.webhook_url is not None,
        handoff_quiet_minutes=cfg.handoff.quiet_minutes,
    )
