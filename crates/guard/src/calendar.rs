//! Calendar-aligned budget periods in UTC (no time-zone database needed: UTC only).

use serde::{Deserialize, Serialize};

const DAY_MS: i64 = 86_400_000;

/// How often a spending budget starts over. Periods are calendar-aligned in UTC: a day starts at
/// 00:00, a week on Monday 00:00 (ISO 8601), a month on the 1st at 00:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// 00:00 UTC to 00:00 UTC.
    Daily,
    /// Monday 00:00 UTC to the next Monday 00:00 UTC.
    Weekly,
    /// The 1st of the month 00:00 UTC to the 1st of the next month.
    Monthly,
}

impl BudgetPeriod {
    /// The period containing `now_ms`: `(start_ms, end_ms)`, end exclusive.
    pub fn bounds(self, now_ms: u64) -> (u64, u64) {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let day = now.div_euclid(DAY_MS);
        let (start_day, end_day) = match self {
            BudgetPeriod::Daily => (day, day + 1),
            BudgetPeriod::Weekly => {
                // 1970-01-01 was a Thursday; with Monday = 0 it is weekday 3.
                let weekday = (day + 3).rem_euclid(7);
                (day - weekday, day - weekday + 7)
            }
            BudgetPeriod::Monthly => {
                let (y, m, _) = civil_from_days(day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (days_from_civil(y, m, 1), days_from_civil(ny, nm, 1))
            }
        };
        let to_ms = |d: i64| u64::try_from(d.saturating_mul(DAY_MS)).unwrap_or(0);
        (to_ms(start_day), to_ms(end_day))
    }

    pub(crate) fn code(self) -> char {
        match self {
            BudgetPeriod::Daily => 'd',
            BudgetPeriod::Weekly => 'w',
            BudgetPeriod::Monthly => 'm',
        }
    }
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(y, m, d)` of a day number since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i64, m: i64, d: i64, h: i64) -> u64 {
        u64::try_from(days_from_civil(y, m, d) * DAY_MS + h * 3_600_000).unwrap()
    }

    #[test]
    fn civil_round_trip() {
        for day in [
            -1000, 0, 1, 59, 60, 365, 10_957, 11_016, 19_782, 20_000, 100_000,
        ] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn daily_bounds() {
        let now = ms(2024, 2, 29, 13);
        assert_eq!(
            BudgetPeriod::Daily.bounds(now),
            (ms(2024, 2, 29, 0), ms(2024, 3, 1, 0))
        );
        assert_eq!(
            BudgetPeriod::Daily.bounds(ms(2024, 3, 1, 0)),
            (ms(2024, 3, 1, 0), ms(2024, 3, 2, 0))
        );
    }

    #[test]
    fn weekly_bounds_start_on_monday() {
        // 2024-06-05 is a Wednesday; that week starts Monday 2024-06-03.
        assert_eq!(
            BudgetPeriod::Weekly.bounds(ms(2024, 6, 5, 10)),
            (ms(2024, 6, 3, 0), ms(2024, 6, 10, 0))
        );
        // A Sunday belongs to the week that started six days earlier.
        assert_eq!(
            BudgetPeriod::Weekly.bounds(ms(2024, 6, 9, 23)),
            (ms(2024, 6, 3, 0), ms(2024, 6, 10, 0))
        );
        // Monday 00:00 starts a new week.
        assert_eq!(
            BudgetPeriod::Weekly.bounds(ms(2024, 6, 10, 0)),
            (ms(2024, 6, 10, 0), ms(2024, 6, 17, 0))
        );
        // The first Monday after the epoch (a Thursday).
        assert_eq!(
            BudgetPeriod::Weekly.bounds(ms(1970, 1, 8, 0)),
            (ms(1970, 1, 5, 0), ms(1970, 1, 12, 0))
        );
    }

    #[test]
    fn monthly_bounds_handle_leap_years_and_december() {
        assert_eq!(
            BudgetPeriod::Monthly.bounds(ms(2024, 2, 15, 5)),
            (ms(2024, 2, 1, 0), ms(2024, 3, 1, 0))
        );
        assert_eq!(
            BudgetPeriod::Monthly.bounds(ms(2023, 2, 28, 23)),
            (ms(2023, 2, 1, 0), ms(2023, 3, 1, 0))
        );
        assert_eq!(
            BudgetPeriod::Monthly.bounds(ms(2024, 12, 31, 23)),
            (ms(2024, 12, 1, 0), ms(2025, 1, 1, 0))
        );
        assert_eq!(ms(2024, 3, 1, 0) - ms(2024, 2, 1, 0), 29 * 86_400_000);
    }
}
