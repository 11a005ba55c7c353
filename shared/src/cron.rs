//! Cron expressions as Cloudflare Workers accept them (five fields: minute, hour, day of month,
//! month, day of week), parsed to sets, and the next time each one fires: `/status` shows the
//! next runs computed from the same expressions the Workers are configured with.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError(pub String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CronError {}

/// A parsed schedule: for each field, which values match (bit `n` set = value `n` matches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Whether day of month / day of week were restricted (not `*`): with both restricted, a
    /// day matches when either does (the classic cron rule).
    dom_restricted: bool,
    dow_restricted: bool,
}

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The value the first name stands for (JAN = 1, SUN = 0).
    names_from: u32,
}

fn parse_value(text: &str, field: &Field) -> Result<u32, CronError> {
    let upper = text.to_ascii_uppercase();
    if let Some(i) = field.names.iter().position(|n| *n == upper) {
        return Ok(i as u32 + field.names_from);
    }
    let value: u32 = text
        .parse()
        .map_err(|_| CronError(format!("{}: {text:?} is not a number{}", field.name, names_hint(field))))?;
    if value < field.min || value > field.max {
        return Err(CronError(format!("{}: {value} is outside {}-{}", field.name, field.min, field.max)));
    }
    Ok(value)
}

fn names_hint(field: &Field) -> String {
    if field.names.is_empty() {
        String::new()
    } else {
        format!(" or a name ({})", field.names.join(", "))
    }
}

/// Parses one field into a bit set; returns it and whether the field was `*`.
fn parse_field(text: &str, field: &Field) -> Result<(u64, bool), CronError> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| CronError(format!("{}: step {step:?} must be a positive number", field.name)))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (start, end) = if range == "*" {
            (field.min, field.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(a, field)?, parse_value(b, field)?);
            if a > b {
                return Err(CronError(format!("{}: range {range} runs backwards", field.name)));
            }
            (a, b)
        } else if part.contains('/') {
            // `5/15` means from 5 to the end, every 15.
            (parse_value(range, field)?, field.max)
        } else {
            let v = parse_value(range, field)?;
            (v, v)
        };
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text == "*"))
}

impl CronSchedule {
    pub fn parse(expression: &str) -> Result<CronSchedule, CronError> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields.as_slice() else {
            return Err(CronError(format!(
                "{expression:?} has {} fields; expected 5 (minute hour day-of-month month day-of-week)",
                fields.len()
            )));
        };
        let (minutes, _) = parse_field(minute, &Field { name: "minute", min: 0, max: 59, names: &[], names_from: 0 })?;
        let (hours, _) = parse_field(hour, &Field { name: "hour", min: 0, max: 23, names: &[], names_from: 0 })?;
        let (days_of_month, dom_any) =
            parse_field(dom, &Field { name: "day of month", min: 1, max: 31, names: &[], names_from: 0 })?;
        let (months, _) = parse_field(month, &Field { name: "month", min: 1, max: 12, names: &MONTHS, names_from: 1 })?;
        let (mut days_of_week, dow_any) =
            parse_field(dow, &Field { name: "day of week", min: 0, max: 7, names: &WEEKDAYS, names_from: 0 })?;
        // 7 is Sunday too.
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week | 1) & !(1 << 7);
        }
        Ok(CronSchedule {
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            dom_restricted: !dom_any,
            dow_restricted: !dow_any,
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first minute strictly after `after` at which the schedule fires, looking up to
    /// eight years ahead (enough for any valid expression, 29 February included).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let mut date = start.date_naive();
        let last = date + Duration::days(8 * 366);
        let mut first_day = true;
        while date <= last {
            if self.day_matches(date) {
                let (from_hour, from_minute) = if first_day { (start.hour(), start.minute()) } else { (0, 0) };
                for hour in from_hour..24 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    let minute_from = if hour == from_hour { from_minute } else { 0 };
                    if let Some(minute) = (minute_from..60).find(|m| self.minutes & (1 << m) != 0) {
                        return Utc.from_utc_datetime(&date.and_hms_opt(hour, minute, 0)?).into();
                    }
                }
            }
            date = date.succ_opt()?;
            first_day = false;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str) -> String {
        CronSchedule::parse(expr).unwrap().next_after(at(after)).unwrap().to_rfc3339()
    }

    #[test]
    fn nightly_weekly_and_stepped_schedules() {
        assert_eq!(next("0 3 * * *", "2026-11-23T02:59:59Z"), "2026-11-23T03:00:00+00:00");
        assert_eq!(next("0 3 * * *", "2026-11-23T03:00:00Z"), "2026-11-24T03:00:00+00:00");
        // 2026-11-23 is a Monday.
        assert_eq!(next("0 4 * * SUN", "2026-11-23T10:00:00Z"), "2026-11-29T04:00:00+00:00");
        assert_eq!(next("0 4 * * 7", "2026-11-29T04:00:00Z"), "2026-12-06T04:00:00+00:00");
        assert_eq!(next("*/15 * * * *", "2026-11-23T10:07:30Z"), "2026-11-23T10:15:00+00:00");
        assert_eq!(next("5/20 1-2 * * mon-fri", "2026-11-21T00:00:00Z"), "2026-11-23T01:05:00+00:00");
        assert_eq!(next("0 0 1,15 JAN,jul *", "2026-11-23T00:00:00Z"), "2027-01-01T00:00:00+00:00");
    }

    #[test]
    fn rare_days() {
        assert_eq!(next("0 0 29 2 *", "2026-11-23T00:00:00Z"), "2028-02-29T00:00:00+00:00");
        assert_eq!(next("0 0 31 * *", "2026-11-01T00:00:00Z"), "2026-12-31T00:00:00+00:00");
        // Day of month and day of week both restricted: either matches.
        assert_eq!(next("0 0 13 * FRI", "2026-11-23T00:00:00Z"), "2026-11-27T00:00:00+00:00");
    }

    #[test]
    fn refuses_bad_expressions() {
        for bad in ["", "0 3 * *", "0 3 * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *",
                    "* * * * 8", "*/0 * * * *", "5-1 * * * *", "x * * * *", "* * * FOO *"] {
            assert!(CronSchedule::parse(bad).is_err(), "{bad:?}");
        }
        assert!(CronSchedule::parse("0 0 31 2 *").unwrap().next_after(at("2026-01-01T00:00:00Z")).is_none());
    }
}
