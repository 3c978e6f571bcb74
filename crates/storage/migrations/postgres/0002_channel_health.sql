-- Channel health and per-channel transport settings.
-- status: 1 enabled, 0 disabled by an operator, 2 disabled automatically
-- (failures or no working key left; probed and re-enabled when it recovers).
ALTER TABLE channels ADD COLUMN disabled_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE channels ADD COLUMN disabled_at BIGINT NOT NULL DEFAULT 0;
-- JSON object: SHA-256 prefix of an upstream key -> why it was disabled.
ALTER TABLE channels ADD COLUMN disabled_keys TEXT NOT NULL DEFAULT '';
ALTER TABLE channels ADD COLUMN proxy_url TEXT NOT NULL DEFAULT '';
ALTER TABLE channels ADD COLUMN timeout_secs BIGINT NOT NULL DEFAULT 0;
-- JSON object of extra headers sent upstream.
ALTER TABLE channels ADD COLUMN headers TEXT NOT NULL DEFAULT '';
-- Azure OpenAI api-version.
ALTER TABLE channels ADD COLUMN api_version TEXT NOT NULL DEFAULT '';
-- 1 when an OpenAI channel serves the Responses API itself (else /v1/responses
-- requests are translated to chat completions for it).
ALTER TABLE channels ADD COLUMN native_responses BIGINT NOT NULL DEFAULT 0;
