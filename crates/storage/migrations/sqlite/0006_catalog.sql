-- Model catalog and extended prices.
--
-- A price for cache writes: decimal USD per million cache-creation input
-- tokens (Anthropic's `cache_creation_input_tokens`). Empty = the input price.
ALTER TABLE prices ADD COLUMN cache_write TEXT NOT NULL DEFAULT '';

-- What the gateway knows about a model, shown in the public catalog.
-- model_type: chat, embedding, image, audio, rerank or moderation.
-- context_window / max_output: tokens; 0 = unknown.
-- capabilities: JSON array of names (`["vision","tools"]`).
-- release_date: YYYY-MM-DD, YYYY-MM or empty.
-- status: active, preview, deprecated or retired.
-- descriptions: JSON object, language tag (en, zh-CN, ja, pt-BR, hi) -> text.
CREATE TABLE model_catalog (
    model TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model_type TEXT NOT NULL DEFAULT 'chat',
    context_window BIGINT NOT NULL DEFAULT 0,
    max_output BIGINT NOT NULL DEFAULT 0,
    capabilities TEXT NOT NULL DEFAULT '',
    release_date TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'active',
    descriptions TEXT NOT NULL DEFAULT '',
    updated_at BIGINT NOT NULL
);

-- Statistics: per-channel figures over a time range read the request log by
-- channel, and all-user usage reads the hourly aggregates by hour.
CREATE INDEX logs_channel_time ON logs(channel_id, created_at);
CREATE INDEX quota_data_hour ON quota_data(hour);
