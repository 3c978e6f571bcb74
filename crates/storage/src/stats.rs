//! Statistics over a time range, in buckets, for charts.
//!
//! Buckets are computed with integer arithmetic on epoch milliseconds
//! (`(t + offset) / size`), which SQLite and PostgreSQL evaluate alike — no
//! date functions. Usage (requests, tokens, cost) comes from the hourly
//! aggregates in `quota_data`, so it has one-hour resolution; per-channel
//! figures (success, latency, time to first token) and error counts come
//! from the request log.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{Result, Store};

const HOUR_MS: i64 = 3_600_000;

/// A time range `[from, to]` (epoch ms) cut into buckets of `bucket_ms`
/// that start at `offset` from a multiple of the bucket size: bucket
/// starts are `k × bucket_ms − offset_ms` (an offset of +8 h makes day
/// buckets start at midnight UTC+8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsRange {
    pub from: i64,
    pub to: i64,
    pub bucket_ms: i64,
    pub offset_ms: i64,
}

impl StatsRange {
    /// The start of the bucket holding `t`.
    pub fn bucket_start(&self, t: i64) -> i64 {
        let size = self.bucket_ms.max(1);
        (t + self.offset_ms).div_euclid(size) * size - self.offset_ms
    }

    /// Every bucket start from the one holding `from` to the one holding
    /// `to`.
    pub fn bucket_starts(&self) -> Vec<i64> {
        let size = self.bucket_ms.max(1);
        let mut v = Vec::new();
        let mut t = self.bucket_start(self.from);
        while t <= self.to {
            v.push(t);
            t += size;
        }
        v
    }

    fn start_of_index(&self, b: i64) -> i64 {
        b * self.bucket_ms.max(1) - self.offset_ms
    }
}

/// What usage figures are split by, besides the time bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageGrouping {
    Total,
    Model,
    User,
}

/// Usage in one bucket (and, when grouped, for one model or user).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageBucket {
    /// Start of the bucket, epoch ms.
    pub t: i64,
    /// Set when grouped by user.
    pub user_id: Option<i64>,
    /// Set when grouped by model.
    pub model: Option<String>,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost: i64,
}

/// Request-log figures of one channel in one bucket. Latency and time to
/// first token are sums over successful requests (and successful streams),
/// so buckets add up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelBucket {
    pub channel_id: i64,
    pub t: i64,
    pub requests: i64,
    /// Requests answered with a 2xx or 3xx status.
    pub successes: i64,
    pub latency_sum_ms: i64,
    pub streams: i64,
    pub ttft_sum_ms: i64,
}

/// Per-model figures that the hourly aggregates do not hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelExtras {
    pub model: String,
    /// Distinct users with requests in the range.
    pub users: i64,
    /// Requests logged with a status outside 2xx/3xx.
    pub errors: i64,
}

const OK: &str = "CASE WHEN status >= 200 AND status < 400 THEN 1 ELSE 0 END";

impl Store {
    /// Usage from the hourly aggregates: every hour that overlaps the range,
    /// summed per bucket (and per model or user). Only buckets with data
    /// are returned, oldest first.
    pub async fn usage_buckets(
        &self,
        range: &StatsRange,
        user_id: Option<i64>,
        model: Option<&str>,
        grouping: UsageGrouping,
    ) -> Result<Vec<UsageBucket>> {
        let group = match grouping {
            UsageGrouping::Total => "",
            UsageGrouping::Model => ", model",
            UsageGrouping::User => ", user_id",
        };
        let sql = format!(
            "SELECT b{group}, CAST(SUM(requests) AS BIGINT) AS requests, \
             CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens, \
             CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens, \
             CAST(SUM(cost) AS BIGINT) AS cost \
             FROM (SELECT (hour + $1) / $2 AS b, user_id, model, requests, prompt_tokens, \
             completion_tokens, cost FROM quota_data WHERE hour > $3 AND hour <= $4 \
             AND ($5 < 0 OR user_id = $5) AND ($6 = '' OR model = $6)) q \
             GROUP BY b{group} ORDER BY b{group}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(range.offset_ms)
            .bind(range.bucket_ms.max(1))
            .bind(range.from.saturating_sub(HOUR_MS))
            .bind(range.to)
            .bind(user_id.unwrap_or(-1))
            .bind(model.unwrap_or_default().to_string())
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageBucket {
                    t: range.start_of_index(r.try_get("b")?),
                    user_id: match grouping {
                        UsageGrouping::User => Some(r.try_get("user_id")?),
                        _ => None,
                    },
                    model: match grouping {
                        UsageGrouping::Model => Some(r.try_get("model")?),
                        _ => None,
                    },
                    requests: r.try_get("requests")?,
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    cost: r.try_get("cost")?,
                })
            })
            .collect()
    }

    /// Request-log figures per channel and bucket for requests logged in
    /// `[from, to]`, by channel then time. Channel 0 (requests that reached
    /// no channel) is included; negative ids are managed users' channels.
    pub async fn channel_buckets(&self, range: &StatsRange) -> Result<Vec<ChannelBucket>> {
        let sql = format!(
            "SELECT channel_id, b, COUNT(*) AS requests, CAST(SUM(ok) AS BIGINT) AS successes, \
             CAST(SUM(ok * latency_ms) AS BIGINT) AS latency_sum, \
             CAST(SUM(ok * is_stream) AS BIGINT) AS streams, \
             CAST(SUM(ok * is_stream * ttft_ms) AS BIGINT) AS ttft_sum \
             FROM (SELECT channel_id, (created_at + $1) / $2 AS b, latency_ms, ttft_ms, is_stream, \
             {OK} AS ok FROM logs WHERE created_at >= $3 AND created_at <= $4) q \
             GROUP BY channel_id, b ORDER BY channel_id, b"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(range.offset_ms)
            .bind(range.bucket_ms.max(1))
            .bind(range.from)
            .bind(range.to)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ChannelBucket {
                    channel_id: r.try_get("channel_id")?,
                    t: range.start_of_index(r.try_get("b")?),
                    requests: r.try_get("requests")?,
                    successes: r.try_get("successes")?,
                    latency_sum_ms: r.try_get("latency_sum")?,
                    streams: r.try_get("streams")?,
                    ttft_sum_ms: r.try_get("ttft_sum")?,
                })
            })
            .collect()
    }

    /// The median latency (nearest rank) of a channel's successful requests
    /// logged in `[from, to]`; `None` without any.
    pub async fn channel_latency_p50(
        &self,
        channel_id: i64,
        from: i64,
        to: i64,
        successes: i64,
    ) -> Result<Option<i64>> {
        if successes <= 0 {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT latency_ms FROM logs WHERE channel_id = $1 AND created_at >= $2 \
             AND created_at <= $3 AND status >= 200 AND status < 400 \
             ORDER BY latency_ms LIMIT 1 OFFSET $4",
        )
        .bind(channel_id)
        .bind(from)
        .bind(to)
        .bind((successes - 1) / 2)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.map(|r| r.try_get("latency_ms")).transpose()?)
    }

    /// Distinct users (from the hourly aggregates) and failed requests
    /// (from the request log) per model over the range.
    pub async fn model_extras(&self, range: &StatsRange) -> Result<Vec<ModelExtras>> {
        let users = sqlx::query(
            "SELECT model, COUNT(DISTINCT user_id) AS users FROM quota_data \
             WHERE hour > $1 AND hour <= $2 GROUP BY model",
        )
        .bind(range.from.saturating_sub(HOUR_MS))
        .bind(range.to)
        .fetch_all(&self.read)
        .await?;
        let errors = sqlx::query(
            "SELECT model, COUNT(*) AS errors FROM logs WHERE created_at >= $1 \
             AND created_at <= $2 AND (status < 200 OR status >= 400) GROUP BY model",
        )
        .bind(range.from)
        .bind(range.to)
        .fetch_all(&self.read)
        .await?;
        let mut out: std::collections::BTreeMap<String, ModelExtras> = Default::default();
        for r in &users {
            let model: String = r.try_get("model")?;
            out.insert(
                model.clone(),
                ModelExtras {
                    model,
                    users: r.try_get("users")?,
                    errors: 0,
                },
            );
        }
        for r in &errors {
            let model: String = r.try_get("model")?;
            out.entry(model.clone())
                .or_insert(ModelExtras {
                    model,
                    users: 0,
                    errors: 0,
                })
                .errors = r.try_get("errors")?;
        }
        Ok(out.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_offset() {
        let day = 86_400_000;
        // 2024-01-01T00:00:00Z = 1704067200000
        let r = StatsRange {
            from: 1_704_067_200_000 + 3 * HOUR_MS,
            to: 1_704_067_200_000 + 30 * HOUR_MS,
            bucket_ms: day,
            offset_ms: 0,
        };
        assert_eq!(r.bucket_start(r.from), 1_704_067_200_000);
        assert_eq!(
            r.bucket_starts(),
            vec![1_704_067_200_000, 1_704_067_200_000 + day]
        );
        // UTC+8: days start at 16:00 UTC the day before
        let r8 = StatsRange {
            offset_ms: 8 * HOUR_MS,
            ..r
        };
        assert_eq!(r8.bucket_start(r.from), 1_704_067_200_000 - 8 * HOUR_MS);
        assert_eq!(r8.bucket_starts().len(), 2);
        assert_eq!(
            r8.start_of_index((r.from + r8.offset_ms) / day),
            r8.bucket_start(r.from)
        );
    }
}
