-- Core schema: users, access tokens, API keys, channels, prices, groups,
-- ledger, request logs and hourly usage. Money columns are integer units
-- (1 unit = 1/1,000,000 USD); times are epoch milliseconds; flags are BIGINT.
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL DEFAULT '',
    role TEXT NOT NULL DEFAULT 'user',
    status BIGINT NOT NULL DEFAULT 1,
    user_group TEXT NOT NULL DEFAULT 'default',
    balance BIGINT NOT NULL DEFAULT 0,
    used BIGINT NOT NULL DEFAULT 0,
    request_count BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE access_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id),
    token_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL DEFAULT '',
    key_hash TEXT NOT NULL UNIQUE,
    key_hint TEXT NOT NULL DEFAULT '',
    status BIGINT NOT NULL DEFAULT 1,
    expires_at BIGINT NOT NULL DEFAULT 0,
    quota_limit BIGINT NOT NULL DEFAULT -1,
    used BIGINT NOT NULL DEFAULT 0,
    allowed_models TEXT NOT NULL DEFAULT '',
    allowed_ips TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
CREATE INDEX api_keys_user ON api_keys(user_id);

CREATE TABLE channels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'openai',
    base_url TEXT NOT NULL,
    api_keys TEXT NOT NULL DEFAULT '',
    models TEXT NOT NULL DEFAULT '',
    model_mapping TEXT NOT NULL DEFAULT '',
    groups TEXT NOT NULL DEFAULT 'default',
    priority BIGINT NOT NULL DEFAULT 0,
    weight BIGINT NOT NULL DEFAULT 1,
    status BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL
);

CREATE TABLE prices (
    model TEXT PRIMARY KEY,
    input TEXT NOT NULL,
    output TEXT NOT NULL,
    cached_input TEXT NOT NULL DEFAULT '',
    updated_at BIGINT NOT NULL
);

CREATE TABLE user_groups (
    name TEXT PRIMARY KEY,
    ratio TEXT NOT NULL
);

CREATE TABLE ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id),
    kind TEXT NOT NULL,
    amount BIGINT NOT NULL,
    reference TEXT,
    note TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_user ON ledger(user_id);
CREATE UNIQUE INDEX ledger_reference ON ledger(reference);

CREATE TABLE logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    user_id BIGINT NOT NULL,
    key_id BIGINT NOT NULL,
    channel_id BIGINT NOT NULL DEFAULT 0,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    upstream_model TEXT NOT NULL DEFAULT '',
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cached_tokens BIGINT NOT NULL DEFAULT 0,
    cost BIGINT NOT NULL DEFAULT 0,
    latency_ms BIGINT NOT NULL DEFAULT 0,
    ttft_ms BIGINT NOT NULL DEFAULT 0,
    is_stream BIGINT NOT NULL DEFAULT 0,
    status BIGINT NOT NULL,
    estimated BIGINT NOT NULL DEFAULT 0,
    client_ip TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
CREATE INDEX logs_user_time ON logs(user_id, created_at);
CREATE INDEX logs_time ON logs(created_at);

CREATE TABLE quota_data (
    user_id BIGINT NOT NULL,
    model TEXT NOT NULL,
    hour BIGINT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, model, hour)
);

CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
