"""Notification providers: one interface per channel's senders (e-mail, SMS, web push), with retries,
Retry-After, failover between providers and a circuit breaker each (`providers`)."""
