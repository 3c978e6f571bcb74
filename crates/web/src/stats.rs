//! Statistics for charts: usage (requests, tokens, cost) of the caller or of
//! everyone, per channel health (success rate, latency, time to first
//! token) and per model totals. Every answer covers `[from, to]` (epoch ms
//! or RFC 3339; default the last day, or the last 30 days by day) in
//! buckets of an hour or a day, as arrays of `{t, …}` points — one point per
//! bucket, zeros included, so a chart can draw them as they come.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use storage::{ChannelBucket, StatsRange, UsageBucket, UsageGrouping};

use crate::AppState;
use crate::api::{Admin, ApiError, Caller};

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Most buckets one answer may have (about 83 days by hour).
const MAX_BUCKETS: i64 = 2000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/self/stats/usage", get(self_usage))
        .route("/stats/usage", get(usage))
        .route("/stats/channels", get(channels))
        .route("/stats/models", get(models))
}

// ---- time ranges ----------------------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &str, range: std::ops::Range<usize>) -> Option<i64> {
    let part = s.get(range)?;
    if part.bytes().all(|b| b.is_ascii_digit()) {
        part.parse().ok()
    } else {
        None
    }
}

/// Epoch ms of an RFC 3339 time (`2025-01-02T03:04:05Z`,
/// `2025-01-02T11:04:05.5+08:00`) or of a date (`2025-01-02`, midnight UTC).
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let (y, mo, d) = (digits(s, 0..4)?, digits(s, 5..7)?, digits(s, 8..10)?);
    if s.get(4..5)? != "-" || s.get(7..8)? != "-" || !(1..=12).contains(&mo) {
        return None;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=month_days[(mo - 1) as usize]).contains(&d) {
        return None;
    }
    let day_ms = days_from_civil(y, mo, d) * DAY_MS;
    if s.len() == 10 {
        return Some(day_ms);
    }
    if !matches!(s.get(10..11)?, "T" | "t" | " ") || s.get(13..14)? != ":" || s.get(16..17)? != ":"
    {
        return None;
    }
    let (h, mi, sec) = (digits(s, 11..13)?, digits(s, 14..16)?, digits(s, 17..19)?);
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let first3 = format!("{:0<3}", &frac[..n.min(3)]);
        ms = first3.parse::<i64>().ok()?;
        rest = &frac[n..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.get(0..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.get(3..4)? != ":" {
                return None;
            }
            let (oh, om) = (digits(rest, 1..3)?, digits(rest, 4..6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 60 + om)
        }
    };
    Some(day_ms + ((h * 60 + mi - offset_min) * 60 + sec) * 1000 + ms)
}

fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    let v = v.trim();
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    parse_rfc3339(v).ok_or_else(|| {
        ApiError::bad(format!(
            "{name} is epoch milliseconds or an RFC 3339 time such as 2025-01-31T00:00:00Z"
        ))
    })
}

/// The query of every statistics endpoint.
#[derive(Debug, Default)]
struct StatsQuery {
    from: Option<i64>,
    to: Option<i64>,
    day: bool,
    tz_offset_min: i64,
    group_by: Option<String>,
    user_id: Option<i64>,
    model: Option<String>,
}

fn parse_query(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<StatsQuery, ApiError> {
    let mut q = StatsQuery::default();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown parameter `{k}`: use {}",
                allowed.join(", ")
            )));
        }
        match k.as_str() {
            "from" => q.from = Some(parse_time("from", &v)?),
            "to" => q.to = Some(parse_time("to", &v)?),
            "bucket" => {
                q.day = match v.trim() {
                    "hour" => false,
                    "day" => true,
                    _ => return Err(ApiError::bad("bucket is `hour` or `day`")),
                }
            }
            "tz_offset" => {
                q.tz_offset_min = v
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|m| (-720..=840).contains(m))
                    .ok_or_else(|| {
                        ApiError::bad("tz_offset is minutes east of UTC, from -720 to 840")
                    })?
            }
            "group_by" => q.group_by = Some(v.trim().to_string()),
            "user_id" => {
                q.user_id = Some(
                    v.trim()
                        .parse()
                        .map_err(|_| ApiError::bad("user_id is a number"))?,
                )
            }
            "model" => q.model = Some(v).filter(|m| !m.is_empty()),
            _ => {}
        }
    }
    Ok(q)
}

/// The range and bucketing of a query: `to` defaults to now, `from` to the
/// start of the 24th hour (or 30th day) back, the one holding `to` being the
/// first. Day buckets start at midnight at `tz_offset`; hour buckets at
/// whole UTC hours.
fn range_of(q: &StatsQuery) -> Result<StatsRange, ApiError> {
    let (bucket_ms, offset_ms) = if q.day {
        (DAY_MS, q.tz_offset_min * 60_000)
    } else {
        (HOUR_MS, 0)
    };
    let to = q.to.unwrap_or_else(storage::now_ms);
    let mut range = StatsRange {
        from: to,
        to,
        bucket_ms,
        offset_ms,
    };
    range.from = match q.from {
        Some(from) => from,
        None => range.bucket_start(to) - if q.day { 29 } else { 23 } * bucket_ms,
    };
    if range.from > to {
        return Err(ApiError::bad("`from` is after `to`"));
    }
    let from = range.from;
    let buckets = (range.bucket_start(to) - range.bucket_start(from)) / bucket_ms + 1;
    if buckets > MAX_BUCKETS {
        return Err(ApiError::bad(format!(
            "the range holds {buckets} buckets, more than {MAX_BUCKETS}: narrow it or use bucket=day"
        )));
    }
    Ok(range)
}

fn range_json(r: &StatsRange, q: &StatsQuery) -> Value {
    json!({
        "from": r.from,
        "to": r.to,
        "bucket": if q.day { "day" } else { "hour" },
        "tz_offset": if q.day { q.tz_offset_min } else { 0 },
    })
}

// ---- usage ------------------------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct Usage {
    requests: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost: i64,
}

impl Usage {
    fn add(&mut self, b: &UsageBucket) {
        self.requests += b.requests;
        self.prompt_tokens += b.prompt_tokens;
        self.completion_tokens += b.completion_tokens;
        self.cost += b.cost;
    }
    fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "cost_usd": billing::units_to_usd(self.cost),
        })
    }
}

/// One point per bucket of the range (zeros where nothing happened) and the
/// totals of `buckets`.
fn usage_points(range: &StatsRange, buckets: &[&UsageBucket]) -> (Vec<Value>, Usage) {
    let mut by_t: BTreeMap<i64, Usage> = BTreeMap::new();
    let mut total = Usage::default();
    for b in buckets {
        by_t.entry(b.t).or_default().add(b);
        total.add(b);
    }
    let points = range
        .bucket_starts()
        .into_iter()
        .map(|t| {
            let u = by_t.get(&t).copied().unwrap_or_default();
            let mut v = u.json();
            if let Some(o) = v.as_object_mut() {
                o.insert("t".into(), json!(t));
            }
            v
        })
        .collect();
    (points, total)
}

/// The usage answer: points and totals over everything, and a series per
/// model or user when grouped.
async fn usage_answer(
    s: &AppState,
    q: &StatsQuery,
    user_id: Option<i64>,
    grouping: UsageGrouping,
) -> ApiResult {
    s.relay.flush().await;
    let range = range_of(q)?;
    let rows = s
        .store
        .usage_buckets(&range, user_id, q.model.as_deref(), grouping)
        .await?;
    let (points, totals) = usage_points(&range, &rows.iter().collect::<Vec<_>>());
    let mut answer = range_json(&range, q);
    let Some(o) = answer.as_object_mut() else {
        return Ok(Json(answer));
    };
    o.insert("totals".into(), totals.json());
    o.insert("points".into(), json!(points));
    if grouping != UsageGrouping::Total {
        let mut groups: BTreeMap<(Option<i64>, Option<String>), Vec<&UsageBucket>> =
            BTreeMap::new();
        for r in &rows {
            groups
                .entry((r.user_id, r.model.clone()))
                .or_default()
                .push(r);
        }
        let names: HashMap<i64, String> = if grouping == UsageGrouping::User {
            s.store
                .users()
                .await?
                .into_iter()
                .map(|u| (u.id, u.username))
                .collect()
        } else {
            HashMap::new()
        };
        let mut series: Vec<(i64, Value)> = groups
            .into_iter()
            .map(|((uid, model), buckets)| {
                let (points, totals) = usage_points(&range, &buckets);
                let mut v = json!({"totals": totals.json(), "points": points});
                if let Some(o) = v.as_object_mut() {
                    if let Some(uid) = uid {
                        o.insert("user_id".into(), json!(uid));
                        o.insert("username".into(), json!(names.get(&uid)));
                    }
                    if let Some(m) = model {
                        o.insert("model".into(), json!(m));
                    }
                }
                (totals.cost, v)
            })
            .collect();
        // dearest first; ties keep the order of the key
        series.sort_by_key(|(cost, _)| std::cmp::Reverse(*cost));
        o.insert(
            "series".into(),
            json!(series.into_iter().map(|(_, v)| v).collect::<Vec<_>>()),
        );
    }
    Ok(Json(answer))
}

/// `GET /api/self/stats/usage`: the caller's own usage.
async fn self_usage(
    State(s): State<AppState>,
    Caller(u): Caller,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let q = parse_query(
        pairs,
        &["from", "to", "bucket", "tz_offset", "group_by", "model"],
    )?;
    let grouping = match q.group_by.as_deref() {
        None | Some("") => UsageGrouping::Total,
        Some("model") => UsageGrouping::Model,
        Some(_) => return Err(ApiError::bad("group_by is `model` (or absent)")),
    };
    usage_answer(&s, &q, Some(u.id), grouping).await
}

/// `GET /api/stats/usage`: everyone's usage, optionally of one user or
/// model, optionally per user or model.
async fn usage(
    State(s): State<AppState>,
    _: Admin,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let q = parse_query(
        pairs,
        &[
            "from",
            "to",
            "bucket",
            "tz_offset",
            "group_by",
            "model",
            "user_id",
        ],
    )?;
    let grouping = match q.group_by.as_deref() {
        None | Some("") => UsageGrouping::Total,
        Some("model") => UsageGrouping::Model,
        Some("user") => UsageGrouping::User,
        Some(_) => return Err(ApiError::bad("group_by is `user` or `model` (or absent)")),
    };
    usage_answer(&s, &q, q.user_id, grouping).await
}

// ---- channels ---------------------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct ChannelSums {
    requests: i64,
    successes: i64,
    latency_sum_ms: i64,
    streams: i64,
    ttft_sum_ms: i64,
}

impl ChannelSums {
    fn add(&mut self, b: &ChannelBucket) {
        self.requests += b.requests;
        self.successes += b.successes;
        self.latency_sum_ms += b.latency_sum_ms;
        self.streams += b.streams;
        self.ttft_sum_ms += b.ttft_sum_ms;
    }
    fn errors(&self) -> i64 {
        self.requests - self.successes
    }
    /// Successes over requests, 4 decimals; `None` without requests.
    fn success_rate(&self) -> Option<f64> {
        (self.requests > 0)
            .then(|| (self.successes as f64 / self.requests as f64 * 10_000.0).round() / 10_000.0)
    }
    fn latency_avg_ms(&self) -> Option<i64> {
        avg(self.latency_sum_ms, self.successes)
    }
    fn ttft_avg_ms(&self) -> Option<i64> {
        avg(self.ttft_sum_ms, self.streams)
    }
}

/// A rounded (half up) integer average; `None` over nothing.
fn avg(sum: i64, n: i64) -> Option<i64> {
    (n > 0).then(|| (2 * sum + n) / (2 * n))
}

/// What a channel is called in the statistics.
struct ChannelLabel {
    name: Option<String>,
    kind: Option<String>,
    owner_id: i64,
    owner: Option<String>,
}

/// `GET /api/stats/channels`: per channel success rate, counts, latency
/// (median and mean of successful requests) and mean time to first token
/// (successful streams), from the request log.
async fn channels(
    State(s): State<AppState>,
    _: Admin,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let q = parse_query(pairs, &["from", "to", "bucket", "tz_offset"])?;
    s.relay.flush().await;
    let range = range_of(&q)?;
    let rows = s.store.channel_buckets(&range).await?;
    let usernames: HashMap<i64, String> = s
        .store
        .users()
        .await?
        .into_iter()
        .map(|u| (u.id, u.username))
        .collect();
    let mut labels: HashMap<i64, ChannelLabel> = HashMap::new();
    for c in s
        .store
        .channels()
        .await?
        .into_iter()
        .chain(s.store.user_channels(None).await?)
    {
        labels.insert(
            c.id,
            ChannelLabel {
                name: Some(c.name),
                kind: Some(c.kind),
                owner_id: c.owner_id,
                owner: usernames.get(&c.owner_id).cloned(),
            },
        );
    }
    let mut by_channel: BTreeMap<i64, Vec<&ChannelBucket>> = BTreeMap::new();
    for r in &rows {
        by_channel.entry(r.channel_id).or_default().push(r);
    }
    let mut data = Vec::new();
    let mut unrouted = ChannelSums::default();
    for (id, buckets) in by_channel {
        let mut total = ChannelSums::default();
        let mut by_t: BTreeMap<i64, ChannelSums> = BTreeMap::new();
        for b in &buckets {
            total.add(b);
            by_t.entry(b.t).or_default().add(b);
        }
        if id == 0 {
            unrouted = total;
            continue;
        }
        let points: Vec<Value> = range
            .bucket_starts()
            .into_iter()
            .map(|t| {
                let c = by_t.get(&t).copied().unwrap_or_default();
                json!({
                    "t": t, "requests": c.requests, "successes": c.successes,
                    "errors": c.errors(), "success_rate": c.success_rate(),
                    "latency_avg_ms": c.latency_avg_ms(), "ttft_avg_ms": c.ttft_avg_ms(),
                })
            })
            .collect();
        let p50 = s
            .store
            .channel_latency_p50(id, range.from, range.to, total.successes)
            .await?;
        let label = labels.remove(&id).unwrap_or(ChannelLabel {
            name: None,
            kind: None,
            owner_id: 0,
            owner: None,
        });
        let managed = id < 0;
        let shown = match (&label.name, managed) {
            (Some(n), false) => n.clone(),
            (Some(n), true) => format!(
                "{n} (own channel of {})",
                label
                    .owner
                    .clone()
                    .unwrap_or_else(|| format!("user {}", label.owner_id))
            ),
            (None, false) => format!("channel {id} (deleted)"),
            (None, true) => format!("managed user's channel {} (deleted)", -id),
        };
        data.push(json!({
            "channel_id": id,
            "name": label.name,
            "label": shown,
            "kind": label.kind,
            "managed": managed,
            "owner_id": if managed { Some(label.owner_id) } else { None },
            "owner": label.owner,
            "requests": total.requests,
            "successes": total.successes,
            "errors": total.errors(),
            "success_rate": total.success_rate(),
            "latency_p50_ms": p50,
            "latency_avg_ms": total.latency_avg_ms(),
            "ttft_avg_ms": total.ttft_avg_ms(),
            "points": points,
        }));
    }
    let mut answer = range_json(&range, &q);
    if let Some(o) = answer.as_object_mut() {
        o.insert("data".into(), json!(data));
        o.insert(
            "unrouted".into(),
            json!({"requests": unrouted.requests, "errors": unrouted.errors()}),
        );
    }
    Ok(Json(answer))
}

// ---- models -----------------------------------------------------------------------

/// `GET /api/stats/models`: per model totals (requests, failed requests,
/// distinct users, tokens, cost) with a point per bucket.
async fn models(
    State(s): State<AppState>,
    _: Admin,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult {
    let q = parse_query(pairs, &["from", "to", "bucket", "tz_offset", "user_id"])?;
    s.relay.flush().await;
    let range = range_of(&q)?;
    let rows = s
        .store
        .usage_buckets(&range, q.user_id, None, UsageGrouping::Model)
        .await?;
    let extras: HashMap<String, (i64, i64)> = s
        .store
        .model_extras(&range)
        .await?
        .into_iter()
        .map(|e| (e.model, (e.users, e.errors)))
        .collect();
    let mut groups: BTreeMap<String, Vec<&UsageBucket>> = BTreeMap::new();
    for r in &rows {
        groups
            .entry(r.model.clone().unwrap_or_default())
            .or_default()
            .push(r);
    }
    let (_, totals) = usage_points(&range, &rows.iter().collect::<Vec<_>>());
    let mut data: Vec<(Usage, Value)> = groups
        .into_iter()
        .map(|(model, buckets)| {
            let (points, t) = usage_points(&range, &buckets);
            let (users, errors) = if q.user_id.is_some() {
                // the extras count everyone; with one user they do not apply
                (None, None)
            } else {
                let e = extras.get(&model).copied().unwrap_or_default();
                (Some(e.0), Some(e.1))
            };
            let mut v = t.json();
            if let Some(o) = v.as_object_mut() {
                o.insert("model".into(), json!(model));
                o.insert("users".into(), json!(users));
                o.insert("errors".into(), json!(errors));
                o.insert("points".into(), json!(points));
            }
            (t, v)
        })
        .collect();
    data.sort_by(|a, b| {
        b.0.cost
            .cmp(&a.0.cost)
            .then_with(|| b.0.requests.cmp(&a.0.requests))
    });
    let mut answer = range_json(&range, &q);
    if let Some(o) = answer.as_object_mut() {
        o.insert("totals".into(), totals.json());
        o.insert(
            "data".into(),
            json!(data.into_iter().map(|(_, v)| v).collect::<Vec<_>>()),
        );
    }
    Ok(Json(answer))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-01-01"), Some(1_704_067_200_000));
        assert_eq!(
            parse_rfc3339("2024-01-01T08:00:00+08:00"),
            Some(1_704_067_200_000)
        );
        assert_eq!(
            parse_rfc3339("2023-12-31T19:30:00.25-04:30"),
            Some(1_704_067_200_250)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29t12:00:00.123456z"),
            Some(1_709_208_000_123)
        );
        for bad in [
            "2023-02-29",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+0800",
            "2024-01-01T00:00:00.Z",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(
            parse_time("from", "1700000000000").ok().unwrap(),
            1_700_000_000_000
        );
        assert!(parse_time("from", "soon").is_err());
    }

    #[test]
    fn ranges_default_and_are_bounded() {
        let q = StatsQuery {
            to: Some(10 * DAY_MS),
            ..StatsQuery::default()
        };
        let r = range_of(&q).ok().unwrap();
        assert_eq!((r.from, r.bucket_ms), (9 * DAY_MS + HOUR_MS, HOUR_MS));
        assert_eq!(r.bucket_starts().len(), 24);
        let q = StatsQuery {
            from: Some(0),
            to: Some(100 * DAY_MS),
            ..StatsQuery::default()
        };
        assert!(range_of(&q).is_err());
        let q = StatsQuery {
            day: true,
            tz_offset_min: 480,
            ..q
        };
        let r = range_of(&q).ok().unwrap();
        assert_eq!(r.offset_ms, 8 * HOUR_MS);
        assert_eq!(r.bucket_starts()[0], -8 * HOUR_MS);
        let q = StatsQuery {
            from: Some(5),
            to: Some(4),
            ..StatsQuery::default()
        };
        assert!(range_of(&q).is_err());
    }

    #[test]
    fn averages_and_rates() {
        assert_eq!(avg(5, 2), Some(3));
        assert_eq!(avg(4, 3), Some(1));
        assert_eq!(avg(0, 0), None);
        let c = ChannelSums {
            requests: 3,
            successes: 2,
            ..ChannelSums::default()
        };
        assert_eq!(c.success_rate(), Some(0.6667));
        assert_eq!(c.errors(), 1);
    }
}
