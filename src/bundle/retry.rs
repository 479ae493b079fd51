//! When a bundle is asked again: which failures are transient, how long to pause before the
//! next attempt (exponential backoff with jitter, or the server's `Retry-After`), and the
//! watch that turns a body gone quiet into an interruption.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::Stream;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use tokio::time::{Instant, Sleep};

/// How a bundle is retried (see [`BundleStore`](super::BundleStore), "Retries").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Attempts after the first, per bundle.
    pub max_retries: u32,
    /// The backoff before the first retry (before jitter); doubled for each further one.
    pub base: Duration,
    /// The longest pause: the backoff's cap, and the longest `Retry-After` waited out.
    pub max: Duration,
    /// The longest wait for the response head or for the next bytes of the body.
    pub stall: Duration,
}

impl RetryPolicy {
    /// The pause before the next attempt, after `retries` retries were made and the last
    /// attempt failed transiently (with the server's `Retry-After`, if it named one); or why
    /// there is no next attempt.
    ///
    /// Retry `r` (1-based) pauses for the server's `Retry-After` if it named one (not longer
    /// than `max`), otherwise for `d/2 + u·d/2`, `u` uniform in [0, 1), with
    /// `d = min(max, base·2^(r-1))`.
    pub fn pause(
        &self,
        retries: u32,
        retry_after: Option<Duration>,
    ) -> std::result::Result<Duration, String> {
        if retries >= self.max_retries {
            return Err(if self.max_retries == 0 {
                "retries are off".to_string()
            } else {
                format!("gave up after {retries} retries")
            });
        }
        if let Some(asked) = retry_after {
            if asked > self.max {
                return Err(format!(
                    "not retried: the server asked for a pause of {asked:?} (Retry-After), longer \
                     than the longest pause of {:?}",
                    self.max
                ));
            }
            return Ok(asked);
        }
        let factor = 1u32.checked_shl(retries).unwrap_or(u32::MAX);
        let backoff = self.base.saturating_mul(factor).min(self.max);
        Ok(backoff / 2 + backoff.mul_f64(unit_random() / 2.0))
    }
}

/// A number in [0, 1) that differs from call to call (std's per-`RandomState` random keys;
/// jitter needs no more).
fn unit_random() -> f64 {
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Statuses worth asking again: 408 (request timeout), 429 (too many requests), 500, 502,
/// 503 and 504 (the server or a gateway failed or is overloaded for now).
pub(crate) fn transient_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// The pause a response's `Retry-After` names: delay-seconds or an HTTP-date (a date in the
/// past is no pause). `None` without the header or when it cannot be read.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = parse_http_date(value)?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An HTTP-date (RFC 9110 5.6.7): IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), or the
/// obsolete RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
/// (`Sun Nov  6 08:49:37 1994`) forms. The weekday is not checked.
fn parse_http_date(text: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = text.split_ascii_whitespace().collect();
    let (day, month, year, time) = match parts.as_slice() {
        // IMF-fixdate
        [weekday, day, month, year, time, "GMT"] if weekday.ends_with(',') => {
            (*day, *month, year.parse::<i64>().ok()?, *time)
        }
        // RFC 850: two-digit years from 70 are 19xx, below 70 20xx.
        [weekday, date, time, "GMT"] if weekday.ends_with(',') => {
            let mut fields = date.split('-');
            let (day, month, year) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() || year.len() != 2 {
                return None;
            }
            let year: i64 = year.parse().ok()?;
            (
                day,
                month,
                if year < 70 { 2000 + year } else { 1900 + year },
                *time,
            )
        }
        // asctime
        [_weekday, month, day, time, year] => (*day, *month, year.parse::<i64>().ok()?, *time),
        _ => return None,
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let mut hms = time.split(':').map(|f| f.parse::<i64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some()
        || !(1..=31).contains(&day)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0..=60).contains(&second)
        || !(1970..=9999).contains(&year)
    {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The body of a bundle was interrupted (the connection failed, the request's time limit ran
/// out, or no bytes came for the stall timeout): the error a body stream carries so that the
/// bundle's reader tells it from a malformed archive.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Interrupted(pub String);

/// Whether a tar reading error means the stream was cut, rather than malformed: an
/// interruption of the body, or a stream that ends inside a member or a compressed frame.
pub(crate) fn is_cut(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::UnexpectedEof
        || error.get_ref().is_some_and(|e| e.is::<Interrupted>())
}

/// A body stream that fails with [`Interrupted`] once it has been waited on for `limit`
/// without a chunk arriving. The clock starts when the reader asks for a chunk that is not
/// there, so a reader that pauses does not count against the server.
pub(crate) struct StallWatch<S> {
    inner: S,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    waiting: bool,
    fired: bool,
}

impl<S> StallWatch<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        StallWatch {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep_until(deadline(limit))),
            waiting: false,
            fired: false,
        }
    }
}

/// `limit` from now, or far in the future for a limit too large to add.
fn deadline(limit: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(limit)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

impl<S> Stream for StallWatch<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.fired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                this.waiting = false;
                Poll::Ready(item)
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.timer.as_mut().reset(deadline(this.limit));
                }
                if this.timer.as_mut().poll(cx).is_ready() {
                    this.fired = true;
                    let message =
                        format!("no bytes arrived for {:?} (the stall timeout)", this.limit);
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        Interrupted(message),
                    ))));
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use reqwest::header::HeaderValue;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        // 1994-11-06 08:49:37 UTC, the RFC's example.
        let want = at(784_111_777);
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(text), Some(want), "{text}");
        }
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(UNIX_EPOCH)
        );
        // A leap day and a date after 2038.
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 12:00:00 GMT"),
            Some(at(1_709_208_000))
        );
        assert_eq!(
            parse_http_date("Sat, 01 Jan 2050 00:00:01 GMT"),
            Some(at(2_524_608_001))
        );
        for bad in [
            "",
            "tomorrow",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let header = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
            headers
        };
        let now = at(784_111_777);
        assert_eq!(
            retry_after(&header(" 7 "), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&header("Sun, 06 Nov 1994 08:49:40 GMT"), now),
            Some(Duration::from_secs(3))
        );
        // A date in the past: no pause.
        assert_eq!(
            retry_after(&header("Sun, 06 Nov 1994 08:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&header("-1"), now), None);
        assert_eq!(retry_after(&header("soon"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_bound() {
        let policy = RetryPolicy {
            max_retries: 4,
            base: Duration::from_millis(100),
            max: Duration::from_millis(500),
            stall: Duration::from_secs(1),
        };
        for _ in 0..100 {
            for (retries, full) in [(0, 100), (1, 200), (2, 400), (3, 500)] {
                let pause = policy.pause(retries, None).unwrap();
                let full = Duration::from_millis(full);
                assert!(pause >= full / 2 && pause <= full, "{retries}: {pause:?}");
            }
        }
        let message = policy.pause(4, None).unwrap_err();
        assert_eq!(message, "gave up after 4 retries");
        // The server's pause replaces the backoff, up to the cap.
        assert_eq!(
            policy.pause(0, Some(Duration::from_millis(300))),
            Ok(Duration::from_millis(300))
        );
        let message = policy.pause(0, Some(Duration::from_secs(60))).unwrap_err();
        assert!(message.contains("Retry-After"), "{message}");
        let off = RetryPolicy {
            max_retries: 0,
            ..policy
        };
        assert_eq!(off.pause(0, None).unwrap_err(), "retries are off");
        // No overflow at absurd settings.
        let huge = RetryPolicy {
            max_retries: u32::MAX,
            base: Duration::MAX,
            max: Duration::MAX,
            stall: Duration::MAX,
        };
        assert!(huge.pause(100, None).unwrap() >= Duration::MAX / 2);
    }

    #[test]
    fn transient_statuses() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(
                transient_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [200, 400, 401, 403, 404, 416, 501, 505] {
            assert!(
                !transient_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_body_is_interrupted_after_the_stall_timeout() {
        let chunks = futures::stream::iter([Ok(Bytes::from_static(b"abc"))])
            .chain(futures::stream::pending());
        let mut watched = StallWatch::new(chunks.boxed(), Duration::from_secs(5));
        // A reader that waits before asking does not count against the server.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(watched.next().await.unwrap().unwrap(), "abc");
        let started = Instant::now();
        let error = watched.next().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(is_cut(&error), "{error}");
        assert!(error.to_string().contains("stall timeout"), "{error}");
        assert!(watched.next().await.is_none());
        // A malformed archive is not a cut; a stream that ends inside a member is.
        assert!(!is_cut(&io::Error::new(io::ErrorKind::InvalidData, "bad")));
        assert!(is_cut(&io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short"
        )));
    }
}
