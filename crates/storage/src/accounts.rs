//! Account storage: e-mail and Google identities, two-factor state,
//! sessions, single-use e-mail links, OAuth sign-ins in progress, managed
//! mode and the managed users' own channels.
//!
//! Every check-and-change that must happen once (a link used, a TOTP step
//! spent, a recovery code used, an OAuth state taken) is one conditional
//! statement, so two nodes racing on the same token cannot both win.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::records::*;
use crate::store::{CHANNEL_COLS, USER_COLS, channel_row, conflict, user_row};
use crate::{Result, StorageError, Store, now_ms};

const SESSION_COLS: &str =
    "id, user_id, token_hash, mfa_pending, ip, user_agent, created_at, last_seen_at, expires_at";

fn session_row(r: &AnyRow) -> Result<SessionRow> {
    Ok(SessionRow {
        id: r.try_get("id")?,
        user_id: r.try_get("user_id")?,
        token_hash: r.try_get("token_hash")?,
        mfa_pending: r.try_get::<i64, _>("mfa_pending")? != 0,
        ip: r.try_get("ip")?,
        user_agent: r.try_get("user_agent")?,
        created_at: r.try_get("created_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

/// Maps a unique violation on `users` to the field a person must change.
fn user_conflict(e: sqlx::Error) -> StorageError {
    if let sqlx::Error::Database(d) = &e
        && d.is_unique_violation()
    {
        let msg = d.message().to_ascii_lowercase();
        let what = d.constraint().unwrap_or_default().to_ascii_lowercase();
        let field = if msg.contains("email") || what.contains("email") {
            "an account with this e-mail address"
        } else if msg.contains("google") || what.contains("google") {
            "an account linked to this Google identity"
        } else {
            "an account with this username"
        };
        return StorageError::Conflict(field.into());
    }
    StorageError::Db(e)
}

impl Store {
    // ---- identities ----------------------------------------------------

    /// Creates a user, telling which unique field (username, e-mail, Google
    /// identity) is already taken.
    pub async fn create_account(&self, u: &NewUser) -> Result<UserRow> {
        match self.create_user(u).await {
            Err(StorageError::Conflict(_)) => {
                // find out which field collided, for a message a person can act on
                if let Some(email) = &u.email
                    && self.user_by_email(email).await?.is_some()
                {
                    return Err(StorageError::Conflict(
                        "an account with this e-mail address".into(),
                    ));
                }
                if let Some(g) = &u.google_id
                    && self.user_by_google_id(g).await?.is_some()
                {
                    return Err(StorageError::Conflict(
                        "an account linked to this Google identity".into(),
                    ));
                }
                Err(StorageError::Conflict(
                    "an account with this username".into(),
                ))
            }
            other => other,
        }
    }

    async fn user_where(&self, column: &str, value: &str) -> Result<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE {column} = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .fetch_optional(&self.write)
            .await?;
        row.as_ref().map(user_row).transpose()
    }

    /// The user with this e-mail address (compared lowercased).
    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>> {
        self.user_where("email", &email.trim().to_lowercase()).await
    }

    pub async fn user_by_google_id(&self, sub: &str) -> Result<Option<UserRow>> {
        self.user_where("google_id", sub).await
    }

    /// The user with this username, or else with this e-mail address.
    pub async fn user_by_login(&self, login: &str) -> Result<Option<UserRow>> {
        if let Some(u) = self.user_where("username", login.trim()).await? {
            return Ok(Some(u));
        }
        self.user_by_email(login).await
    }

    async fn update_user(&self, id: i64, set: &str, binds: &[Bind<'_>]) -> Result<()> {
        let sql = format!("UPDATE users SET {set} WHERE id = ${}", binds.len() + 1);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = match b {
                Bind::Int(v) => q.bind(*v),
                Bind::Text(v) => q.bind(*v),
                Bind::OptText(v) => q.bind(*v),
            };
        }
        let r = q
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(user_conflict)?;
        if r.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("user {id}")));
        }
        Ok(())
    }

    /// Sets (or clears) the e-mail address and whether it is verified.
    pub async fn set_email(&self, id: i64, email: Option<&str>, verified: bool) -> Result<()> {
        let email = email.map(|e| e.trim().to_lowercase());
        self.update_user(
            id,
            "email = $1, email_verified = $2",
            &[
                Bind::OptText(email.as_deref()),
                Bind::Int(i64::from(verified)),
            ],
        )
        .await
    }

    /// Links (`Some`) or unlinks (`None`) a Google identity.
    pub async fn set_google_id(&self, id: i64, sub: Option<&str>) -> Result<()> {
        self.update_user(id, "google_id = $1", &[Bind::OptText(sub)])
            .await
    }

    pub async fn set_profile(&self, id: i64, display_name: &str, language: &str) -> Result<()> {
        self.update_user(
            id,
            "display_name = $1, language = $2",
            &[Bind::Text(display_name), Bind::Text(language)],
        )
        .await
    }

    /// Rate limits over all of a user's keys.
    pub async fn set_user_limits(&self, id: i64, limits: &RateLimits) -> Result<()> {
        let text = limits.to_text();
        self.update_user(id, "limits = $1", &[Bind::Text(&text)])
            .await
    }

    pub async fn set_role(&self, id: i64, role: &str) -> Result<()> {
        self.update_user(id, "role = $1", &[Bind::Text(role)]).await
    }

    /// Managed-mode routing (`own_only` / `own_then_shared`) and platform fee.
    pub async fn set_managed_options(&self, id: i64, route: &str, fee: &str) -> Result<()> {
        self.update_user(
            id,
            "managed_route = $1, platform_fee = $2",
            &[Bind::Text(route), Bind::Text(fee)],
        )
        .await
    }

    /// Replaces the password hash and voids every session created before now.
    pub async fn change_password(&self, id: i64, hash: &str) -> Result<()> {
        self.update_user(
            id,
            "password_hash = $1, auth_epoch = $2",
            &[Bind::Text(hash), Bind::Int(now_ms())],
        )
        .await
    }

    pub async fn delete_access_token(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM access_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// A user's access tokens (without their secrets), newest first.
    pub async fn access_tokens_of(&self, user_id: i64) -> Result<Vec<AccessTokenRow>> {
        let rows = sqlx::query(
            "SELECT id, name, created_at, expires_at FROM access_tokens \
             WHERE user_id = $1 AND (expires_at = 0 OR expires_at > $2) ORDER BY id DESC",
        )
        .bind(user_id)
        .bind(now_ms())
        .fetch_all(&self.write)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AccessTokenRow {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    /// Revokes one of a user's access tokens; false if they have no such token.
    pub async fn revoke_access_token(&self, user_id: i64, id: i64) -> Result<bool> {
        let r = sqlx::query("DELETE FROM access_tokens WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Signs a user out everywhere: every session and access token created
    /// until now stops working, on every node (the check reads the database).
    pub async fn sign_out_everywhere(&self, id: i64) -> Result<()> {
        let now = now_ms();
        self.update_user(id, "auth_epoch = $1", &[Bind::Int(now)])
            .await?;
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    // ---- two-factor ----------------------------------------------------

    /// Stores a TOTP secret awaiting confirmation (two-factor stays off).
    pub async fn set_totp_secret(&self, id: i64, secret: &str) -> Result<()> {
        self.update_user(
            id,
            "totp_secret = $1, totp_enabled = 0, totp_last_step = 0",
            &[Bind::Text(secret)],
        )
        .await
    }

    /// Turns two-factor on (after a good code) and stores the recovery codes.
    pub async fn enable_totp(&self, id: i64, step: i64, code_hashes: &[String]) -> Result<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "UPDATE users SET totp_enabled = 1, totp_last_step = $1 WHERE id = $2 AND totp_secret <> ''",
        )
        .bind(step)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for h in code_hashes {
            sqlx::query("INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                .bind(id)
                .bind(h)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn disable_totp(&self, id: i64) -> Result<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "UPDATE users SET totp_enabled = 0, totp_secret = '', totp_last_step = 0 WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Spends a TOTP time step: true once per step, and only for steps later
    /// than the last one used (a code cannot be replayed, even on another node).
    pub async fn use_totp_step(&self, id: i64, step: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE users SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1",
        )
        .bind(step)
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Uses a recovery code once.
    pub async fn use_recovery_code(&self, user_id: i64, code_hash: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at = 0",
        )
        .bind(now_ms())
        .bind(user_id)
        .bind(code_hash)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() >= 1)
    }

    pub async fn recovery_codes_left(&self, user_id: i64) -> Result<i64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM recovery_codes WHERE user_id = $1 AND used_at = 0",
        )
        .bind(user_id)
        .fetch_one(&self.write)
        .await?
        .try_get("n")?)
    }

    // ---- sessions ------------------------------------------------------

    pub async fn create_session(
        &self,
        user_id: i64,
        token_hash: &str,
        mfa_pending: bool,
        ip: &str,
        user_agent: &str,
        expires_at: i64,
    ) -> Result<SessionRow> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO sessions (user_id, token_hash, mfa_pending, ip, user_agent, created_at, \
             last_seen_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $6, $7) RETURNING {SESSION_COLS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(token_hash)
            .bind(i64::from(mfa_pending))
            .bind(ip)
            .bind(user_agent)
            .bind(now)
            .bind(expires_at)
            .fetch_one(&self.write)
            .await
            .map_err(conflict("session"))?;
        session_row(&row)
    }

    /// A live session and its user: not expired, and not created before the
    /// user's last password change.
    pub async fn session(&self, token_hash: &str) -> Result<Option<(SessionRow, UserRow)>> {
        let sql = format!("SELECT {SESSION_COLS} FROM sessions WHERE token_hash = $1");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(token_hash)
            .fetch_optional(&self.write)
            .await?
        else {
            return Ok(None);
        };
        let s = session_row(&row)?;
        let now = now_ms();
        if s.expires_at <= now {
            return Ok(None);
        }
        let u = self.user_fresh(s.user_id).await?;
        if s.created_at < u.auth_epoch {
            return Ok(None);
        }
        Ok(Some((s, u)))
    }

    /// Slides a session's expiry forward.
    pub async fn touch_session(&self, id: i64, expires_at: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = $1, expires_at = $2 WHERE id = $3")
            .bind(now_ms())
            .bind(expires_at)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// The second factor was given: the session becomes a full one.
    pub async fn complete_mfa(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE sessions SET mfa_pending = 0 WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn sessions_of(&self, user_id: i64) -> Result<Vec<SessionRow>> {
        let sql = format!(
            "SELECT {SESSION_COLS} FROM sessions WHERE user_id = $1 AND expires_at > $2 ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(now_ms())
            .fetch_all(&self.write)
            .await?;
        rows.iter().map(session_row).collect()
    }

    pub async fn delete_session(&self, token_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Signs a user out everywhere, except (optionally) one session.
    pub async fn delete_sessions_of(&self, user_id: i64, except_id: Option<i64>) -> Result<u64> {
        let r = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2")
            .bind(user_id)
            .bind(except_id.unwrap_or(0))
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected())
    }

    /// Removes expired sessions, e-mail links and OAuth states.
    pub async fn purge_expired_auth(&self) -> Result<()> {
        let now = now_ms();
        for sql in [
            "DELETE FROM sessions WHERE expires_at <= $1",
            "DELETE FROM email_tokens WHERE expires_at <= $1",
            "DELETE FROM oauth_states WHERE expires_at <= $1",
        ] {
            sqlx::query(sql).bind(now).execute(&self.write).await?;
        }
        Ok(())
    }

    // ---- e-mail links --------------------------------------------------

    /// Stores a new single-use link; earlier unused links of the same
    /// purpose for the user stop working.
    pub async fn create_email_token(
        &self,
        token_hash: &str,
        user_id: i64,
        purpose: &str,
        email: &str,
        expires_at: i64,
    ) -> Result<()> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "UPDATE email_tokens SET used_at = $1 WHERE user_id = $2 AND purpose = $3 AND used_at = 0",
        )
        .bind(now)
        .bind(user_id)
        .bind(purpose)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO email_tokens (token_hash, user_id, purpose, email, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_hash)
        .bind(user_id)
        .bind(purpose)
        .bind(email)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uses a link: returns it once, if it exists, has this purpose, is
    /// unused and has not expired; `None` otherwise.
    pub async fn consume_email_token(
        &self,
        token_hash: &str,
        purpose: &str,
    ) -> Result<Option<EmailTokenRow>> {
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE email_tokens SET used_at = $1 WHERE token_hash = $2 AND purpose = $3 \
             AND used_at = 0 AND expires_at > $1 \
             RETURNING id, user_id, purpose, email, created_at, expires_at, used_at",
        )
        .bind(now)
        .bind(token_hash)
        .bind(purpose)
        .fetch_optional(&self.write)
        .await?;
        row.map(|r| {
            Ok(EmailTokenRow {
                id: r.try_get("id")?,
                user_id: r.try_get("user_id")?,
                purpose: r.try_get("purpose")?,
                email: r.try_get("email")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                used_at: r.try_get("used_at")?,
            })
        })
        .transpose()
    }

    // ---- OAuth states --------------------------------------------------

    pub async fn create_oauth_state(&self, s: &OAuthStateRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO oauth_states (state_hash, provider, purpose, user_id, nonce, pkce_verifier, \
             region, language, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&s.state_hash)
        .bind(&s.provider)
        .bind(&s.purpose)
        .bind(s.user_id)
        .bind(&s.nonce)
        .bind(&s.pkce_verifier)
        .bind(&s.region)
        .bind(&s.language)
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(&self.write)
        .await
        .map_err(conflict("sign-in state"))?;
        Ok(())
    }

    /// Takes a sign-in state: returns it once if it has not expired.
    pub async fn take_oauth_state(&self, state_hash: &str) -> Result<Option<OAuthStateRow>> {
        let row = sqlx::query(
            "DELETE FROM oauth_states WHERE state_hash = $1 RETURNING state_hash, provider, purpose, \
             user_id, nonce, pkce_verifier, region, language, created_at, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(&self.write)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let s = OAuthStateRow {
            state_hash: r.try_get("state_hash")?,
            provider: r.try_get("provider")?,
            purpose: r.try_get("purpose")?,
            user_id: r.try_get("user_id")?,
            nonce: r.try_get("nonce")?,
            pkce_verifier: r.try_get("pkce_verifier")?,
            region: r.try_get("region")?,
            language: r.try_get("language")?,
            created_at: r.try_get("created_at")?,
            expires_at: r.try_get("expires_at")?,
        };
        Ok((s.expires_at > now_ms()).then_some(s))
    }

    // ---- managed users' own channels -----------------------------------

    /// Adds a channel owned by a managed user. Its relay id is negative.
    pub async fn create_user_channel(&self, owner_id: i64, c: &NewChannel) -> Result<ChannelRow> {
        self.insert_channel(c, owner_id).await
    }

    /// Own channels of one managed user, or of every user (`None`).
    pub async fn user_channels(&self, owner_id: Option<i64>) -> Result<Vec<ChannelRow>> {
        let sql = match owner_id {
            Some(_) => format!(
                "SELECT {CHANNEL_COLS}, owner_id FROM user_channels WHERE owner_id = $1 ORDER BY id"
            ),
            None => format!("SELECT {CHANNEL_COLS}, owner_id FROM user_channels ORDER BY id"),
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(o) = owner_id {
            q = q.bind(o);
        }
        let rows = q.fetch_all(&self.read).await?;
        rows.iter().map(channel_row).collect()
    }

    /// Sets the status of every own channel of a user that has status `from`
    /// (revoking managed mode: enabled → 3; restoring it: 3 → enabled).
    pub async fn set_user_channels_status(&self, owner_id: i64, from: i64, to: i64) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE user_channels SET status = $1, disabled_reason = $2 WHERE owner_id = $3 AND status = $4",
        )
        .bind(to)
        .bind(if to == 3 { "managed mode revoked" } else { "" })
        .bind(owner_id)
        .bind(from)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected())
    }
}

enum Bind<'a> {
    Int(i64),
    Text(&'a str),
    OptText(Option<&'a str>),
}
