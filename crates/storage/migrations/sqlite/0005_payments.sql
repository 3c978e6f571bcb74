-- Payments: orders, their raw callbacks, redemption codes.
--
-- An order carries everything needed to credit it later, on any node and
-- after any restart: who, how much (units credited), what was charged
-- (integer minor units of `currency`, e.g. fen or cents) and by which
-- provider and method. status: pending, paid, failed, refunded. The credit
-- itself is a ledger row whose reference is the order number, written in
-- the same transaction that moves the order from pending to paid.
CREATE TABLE payment_orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_no TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users(id),
    provider TEXT NOT NULL,
    method TEXT NOT NULL DEFAULT '',
    amount BIGINT NOT NULL,
    money BIGINT NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    trade_no TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    paid_at BIGINT NOT NULL DEFAULT 0,
    refunded_at BIGINT NOT NULL DEFAULT 0,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX payment_orders_user ON payment_orders(user_id, created_at);
CREATE INDEX payment_orders_time ON payment_orders(created_at);

-- Every payment callback as received (headers as JSON, the raw query or
-- body), with the verdict (credited, duplicate, refused, ignored) and why.
CREATE TABLE payment_callbacks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    provider TEXT NOT NULL,
    order_no TEXT NOT NULL DEFAULT '',
    http_method TEXT NOT NULL,
    headers TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL DEFAULT '',
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
CREATE INDEX payment_callbacks_order ON payment_callbacks(order_no);
CREATE INDEX payment_callbacks_time ON payment_callbacks(created_at);

-- Redemption codes, created in batches. Only the SHA-256 of a code is kept
-- (the plain codes are shown once, at creation). A code is used once:
-- used_at 0 means unused. status 1 usable, 0 disabled.
CREATE TABLE redemption_batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL DEFAULT '',
    quota BIGINT NOT NULL,
    code_count BIGINT NOT NULL,
    expires_at BIGINT NOT NULL DEFAULT 0,
    created_by BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE redemption_codes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id BIGINT NOT NULL REFERENCES redemption_batches(id),
    code_hash TEXT NOT NULL UNIQUE,
    code_hint TEXT NOT NULL DEFAULT '',
    quota BIGINT NOT NULL,
    expires_at BIGINT NOT NULL DEFAULT 0,
    status BIGINT NOT NULL DEFAULT 1,
    used_by BIGINT NOT NULL DEFAULT 0,
    used_at BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE INDEX redemption_codes_batch ON redemption_codes(batch_id);
