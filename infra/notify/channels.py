"""Each channel's providers, from the one Settings."""
from __future__ import annotations

from infra.notify.email import SmtpProvider, Templates
from infra.notify.providers import Channel, Provider, RetryPolicy
from infra.notify.sms import TwilioProvider
from infra.notify.webpush import WebPushProvider, vapid_key
from infra.settings import Settings

__all__ = ["channels_from"]


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    return host, int(port)


def channels_from(settings: Settings) -> dict[str, Channel]:
    """e-mail, SMS and web push, each with its providers in failover order (in-app needs none)."""
    s = settings
    retry = RetryPolicy(attempts=s.notify_retry_attempts, first_s=s.notify_retry_first_s,
                        max_s=s.notify_retry_max_s, timeout_s=s.notify_provider_timeout_s)
    templates = Templates()
    password = s.notify_smtp_password.get_secret_value() or None
    smtp: list[Provider] = [
        SmtpProvider(host, port, sender=s.notify_email_from, starttls=s.notify_smtp_starttls,
                     username=s.notify_smtp_username or None, password=password, templates=templates,
                     timeout_s=s.notify_provider_timeout_s)
        for host, port in (_host_port(x) for x in s.notify_smtp_servers.split(",") if x.strip())]
    sms: list[Provider] = [
        TwilioProvider(url.strip(), account_sid=s.notify_twilio_account_sid,
                       auth_token=s.notify_twilio_auth_token.get_secret_value(), sender=s.notify_sms_from)
        for url in s.notify_sms_base_urls.split(",") if url.strip()]
    push: list[Provider] = [WebPushProvider(vapid_key(s.notify_vapid_key or s.state_dir / "vapid.pem"),
                                            s.notify_vapid_subject, timeout_s=s.notify_provider_timeout_s)]

    def channel(name: str, providers: list[Provider]) -> Channel:
        return Channel(name, providers, retry, s.notify_breaker_failures, s.notify_breaker_cooldown_s)

    return {"email": channel("email", smtp), "sms": channel("sms", sms), "webpush": channel("webpush", push)}
