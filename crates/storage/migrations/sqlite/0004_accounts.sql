-- Accounts: e-mail, Google identity, two-factor, region and language,
-- managed mode (role user_root), sessions, e-mail tokens, sign-in states and
-- the managed users' own channels.
ALTER TABLE users ADD COLUMN email TEXT;
ALTER TABLE users ADD COLUMN email_verified BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
-- Google's stable subject identifier ("sub") of the linked Google account.
ALTER TABLE users ADD COLUMN google_id TEXT;
-- base32 TOTP secret; totp_enabled 1 once confirmed with a code.
ALTER TABLE users ADD COLUMN totp_secret TEXT NOT NULL DEFAULT '';
ALTER TABLE users ADD COLUMN totp_enabled BIGINT NOT NULL DEFAULT 0;
-- the last accepted 30-second step, so a code cannot be replayed
ALTER TABLE users ADD COLUMN totp_last_step BIGINT NOT NULL DEFAULT 0;
-- ISO country code (or language region) recorded at sign-up.
ALTER TABLE users ADD COLUMN register_region TEXT NOT NULL DEFAULT '';
-- UI and e-mail language tag (en, zh-CN, ja, pt-BR, hi).
ALTER TABLE users ADD COLUMN language TEXT NOT NULL DEFAULT 'en';
-- Managed mode (role user_root): routing of the user's own requests
-- ('own_only' or 'own_then_shared') and the platform fee multiplier (decimal
-- text) applied to requests served by the user's own channels.
ALTER TABLE users ADD COLUMN managed_route TEXT NOT NULL DEFAULT 'own_then_shared';
ALTER TABLE users ADD COLUMN platform_fee TEXT NOT NULL DEFAULT '0';
-- Sessions and access tokens created before this time (epoch ms) are void:
-- set by a password change or reset and by "sign out everywhere".
ALTER TABLE users ADD COLUMN auth_epoch BIGINT NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX users_email ON users(email);
CREATE UNIQUE INDEX users_google_id ON users(google_id);

-- Dashboard sessions: only the SHA-256 of the cookie value is stored.
-- mfa_pending 1: password accepted, the TOTP code is still owed.
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id),
    token_hash TEXT NOT NULL UNIQUE,
    mfa_pending BIGINT NOT NULL DEFAULT 0,
    ip TEXT NOT NULL DEFAULT '',
    user_agent TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

-- Single-use e-mail links (purpose 'verify' or 'reset'), stored hashed.
CREATE TABLE email_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users(id),
    purpose TEXT NOT NULL,
    email TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX email_tokens_user ON email_tokens(user_id);

-- TOTP recovery codes, stored hashed, each usable once.
CREATE TABLE recovery_codes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id),
    code_hash TEXT NOT NULL,
    used_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX recovery_codes_user ON recovery_codes(user_id);

-- An OAuth sign-in in progress (state, nonce, PKCE verifier), kept in the
-- database so any node can finish it. purpose 'login' or 'link'.
CREATE TABLE oauth_states (
    state_hash TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    purpose TEXT NOT NULL,
    user_id BIGINT NOT NULL DEFAULT 0,
    nonce TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    region TEXT NOT NULL DEFAULT '',
    language TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- A managed user's own upstream channels: the fields of channels, keyed by
-- owner. status 3: disabled because managed mode was revoked.
CREATE TABLE user_channels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id BIGINT NOT NULL REFERENCES users(id),
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
    created_at BIGINT NOT NULL,
    disabled_reason TEXT NOT NULL DEFAULT '',
    disabled_at BIGINT NOT NULL DEFAULT 0,
    disabled_keys TEXT NOT NULL DEFAULT '',
    proxy_url TEXT NOT NULL DEFAULT '',
    timeout_secs BIGINT NOT NULL DEFAULT 0,
    headers TEXT NOT NULL DEFAULT '',
    api_version TEXT NOT NULL DEFAULT '',
    native_responses BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX user_channels_owner ON user_channels(owner_id);
