"""Commands the agents send each other, built whole (every field of the record, typed)."""
from __future__ import annotations

from schemas import typed

__all__ = ["notification_request", "offer_command", "order_event", "ride_command"]


def ride_command(
    ride_id: str, command: str, ts: int, actor: str, actor_id: str, *, rider_id: str | None = None,
    product: str | None = None, pickup_lat: float | None = None, pickup_lng: float | None = None,
    dest_lat: float | None = None, dest_lng: float | None = None, driver_id: str | None = None, attempt: int = 0,
    lat: float | None = None, lng: float | None = None, expires_at: int = 0, reason: str | None = None,
    order_id: str | None = None,
) -> typed.RideCommand:
    """A RideCommand (topic `ride-commands`)."""
    return {"ride_id": ride_id, "command": command, "ts": ts, "actor": actor, "actor_id": actor_id,
            "rider_id": rider_id, "product": product, "pickup_lat": pickup_lat, "pickup_lng": pickup_lng,
            "dest_lat": dest_lat, "dest_lng": dest_lng, "driver_id": driver_id, "attempt": attempt, "lat": lat,
            "lng": lng, "expires_at": expires_at, "reason": reason, "order_id": order_id}


def offer_command(
    driver_id: str, op: str, ride_id: str, ts: int, actor: str, *, attempt: int = 0, ttl_ms: int = 0,
    pickup_lat: float | None = None, pickup_lng: float | None = None, dest_lat: float | None = None,
    dest_lng: float | None = None, fare_estimate: float | None = None, reason: str | None = None,
) -> typed.OfferCommand:
    """An OfferCommand (topic `offers`, or decided in place by the driver desk)."""
    return {"driver_id": driver_id, "op": op, "ride_id": ride_id, "ts": ts, "actor": actor, "attempt": attempt,
            "ttl_ms": ttl_ms, "pickup_lat": pickup_lat, "pickup_lng": pickup_lng, "dest_lat": dest_lat,
            "dest_lng": dest_lng, "fare_estimate": fare_estimate, "reason": reason}


def notification_request(
    op: str, user_id: str, ts: int, *, idempotency_key: str | None = None, category: str | None = None,
    priority: str = "normal", expires_at: int = 0, title: str | None = None, body: str | None = None,
    data: str | None = None, channels: list[str] | None = None, source: str | None = None,
    notification_id: str | None = None, seq: int = 0, channel: str | None = None, result: str | None = None,
    payload: str | None = None,
) -> typed.NotificationRequest:
    """A NotificationRequest (topic `notification-requests`)."""
    return {"op": op, "user_id": user_id, "ts": ts, "idempotency_key": idempotency_key, "category": category,
            "priority": priority, "expires_at": expires_at, "title": title, "body": body, "data": data,
            "channels": channels or [], "source": source, "notification_id": notification_id, "seq": seq,
            "channel": channel, "result": result, "payload": payload}


def order_event(
    order_id: str, event_id: str, source: str, kind: str, ts: int, *, customer_id: str | None = None,
    pickup_lat: float | None = None, pickup_lng: float | None = None, dropoff_lat: float | None = None,
    dropoff_lng: float | None = None, courier_id: str | None = None, dispatch: bool = False,
    lat: float | None = None, lng: float | None = None, reason: str | None = None,
) -> typed.OrderEvent:
    """An OrderEvent (topic `order-events`) of type `kind`."""
    return {"order_id": order_id, "event_id": event_id, "source": source, "type": kind, "ts": ts,
            "customer_id": customer_id, "pickup_lat": pickup_lat, "pickup_lng": pickup_lng,
            "dropoff_lat": dropoff_lat, "dropoff_lng": dropoff_lng, "courier_id": courier_id, "dispatch": dispatch,
            "lat": lat, "lng": lng, "reason": reason}
