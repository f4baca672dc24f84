"""URL table of the gateway."""
from __future__ import annotations

from aiohttp import web

from gateway import views

__all__ = ["setup_routes"]


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/v1/locations", views.post_locations)
    app.router.add_get("/v1/drivers/{driver_id}", views.get_driver)
    app.router.add_post("/v1/drivers/{driver_id}/status", views.post_driver_status)
    app.router.add_post("/v1/rides", views.post_ride)
    app.router.add_get("/v1/rides/{ride_id}", views.get_ride)
    app.router.add_post("/v1/rides/{ride_id}/{action}", views.ride_action)
    app.router.add_post("/v1/orders", views.post_order)
    app.router.add_get("/v1/orders/{order_id}", views.get_order)
    app.router.add_post("/v1/orders/{order_id}/events", views.post_order_event)
    app.router.add_post("/v1/notifications", views.post_notification)
    app.router.add_post("/v1/push-subscriptions", views.post_push_subscription)
    app.router.add_get("/v1/users/{user_id}/preferences", views.get_preferences)
    app.router.add_put("/v1/users/{user_id}/preferences", views.put_preferences)
    app.router.add_get("/v1/users/{user_id}/notifications", views.get_notifications)
    app.router.add_post("/v1/users/{user_id}/notifications/read", views.read_notifications)
    app.router.add_post("/v1/users/{user_id}/notifications/{notification_id}/ack", views.ack_notification)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/metrics", views.metrics)
    app.router.add_get("/", views.index)
    app.router.add_get("/track/{order_id}", views.track)
    app.router.add_static("/static/", views.STATIC, follow_symlinks=False)
