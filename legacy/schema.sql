-- The legacy platform's orders and its "message queue" of order events, as its scheduled jobs
-- write them. Safe to apply again and again (legacy.db.apply_schema).
--
-- order_events is shaped as a Debezium outbox: one row a committed event, read from the WAL by the
-- bridge (pgoutput) and routed by Debezium's EventRouter to `legacy-order-events`:
-- key aggregateid, value payload (JSON text), headers row_id (id) and event_type (type).

CREATE TABLE IF NOT EXISTS orders (
    id           text PRIMARY KEY,
    customer_id  text NOT NULL,
    status       text NOT NULL,
    pickup_lat   double precision NOT NULL,
    pickup_lng   double precision NOT NULL,
    dropoff_lat  double precision NOT NULL,
    dropoff_lng  double precision NOT NULL,
    courier_id   text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    seq          integer NOT NULL DEFAULT 0  -- this order's events so far (the latest event's seq)
);

CREATE TABLE IF NOT EXISTS order_events (
    id             bigserial PRIMARY KEY,
    aggregatetype  text NOT NULL DEFAULT 'order',
    aggregateid    text NOT NULL,  -- the order id
    type           text NOT NULL,  -- the order's new status
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS order_events_by_order ON order_events (aggregateid, id);
