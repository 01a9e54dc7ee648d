//! How a FHIR server's answer to a transaction is read (fhir-endpoints.md §4): pure
//! functions over status, headers and body, so every branch is tested without a server.

use std::time::Duration;

use serde_json::Value;

/// Largest transaction-response body read; a bigger one is treated as unreadable (the
/// request is retried), so a hostile server cannot exhaust the gateway's memory.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// How much of a rejection's body is kept with the readings it quarantines.
pub const MAX_OUTCOME_BYTES: usize = 16 << 10;
/// The longest a server's Retry-After may hold a destination back.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What to do after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// 2xx: one `Type/id` (when the server said) per request entry, in order.
    Accepted(Vec<Option<String>>),
    /// Network error, 408, 429, 5xx: the outcome is unknown or transient; send the same
    /// request again after at least `after` (the server's Retry-After).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// 401: the token is no good.
    Unauthorized,
    /// Any other 4xx: permanent for this request. `outcome` is the server's
    /// OperationOutcome (or the body as received).
    Rejected { status: u16, outcome: String },
}

/// Classifies an HTTP response to a transaction Bundle.
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    entries: usize,
    now: std::time::SystemTime,
) -> Classified {
    match status {
        200..=299 => match parse_locations(body, entries) {
            Ok(locations) => Classified::Accepted(locations),
            // A 2xx whose body we cannot read: the server may or may not have stored the
            // entries. Retrying is safe (every entry is a conditional create).
            Err(reason) => Classified::Retry {
                after: None,
                reason: format!("HTTP {status} with an unreadable body: {reason}"),
            },
        },
        401 => Classified::Unauthorized,
        // Redirects are not followed (readings and the token go only where the configuration
        // says): a moved server is the destination failing, for IT to see, not bad readings.
        300..=399 => Classified::Retry {
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
            reason: format!("HTTP {status}: redirect not followed"),
        },
        408 | 429 | 500..=599 => Classified::Retry {
            after: retry_after.and_then(|v| parse_retry_after(v, now)),
            reason: format!("HTTP {status}"),
        },
        _ => Classified::Rejected {
            status,
            outcome: {
                let mut text = String::from_utf8_lossy(body).into_owned();
                if text.len() > MAX_OUTCOME_BYTES {
                    let mut end = MAX_OUTCOME_BYTES;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                    text.push_str(" [truncated]");
                }
                text
            },
        },
    }
}

/// `Type/id` from a `Location` like `https://x/fhir/Observation/123/_history/1`.
pub fn resource_id(location: &str) -> Option<String> {
    let path = location.split(['?', '#']).next().unwrap_or(location);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let end = match parts.iter().rposition(|p| *p == "_history") {
        Some(h) => h,
        None => parts.len(),
    };
    if end < 2 {
        return None;
    }
    let (ty, id) = (parts[end - 2], parts[end - 1]);
    ty.chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase())
        .then(|| format!("{ty}/{id}"))
}

fn parse_locations(body: &[u8], entries: usize) -> Result<Vec<Option<String>>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if v["resourceType"] != "Bundle" {
        return Err("not a Bundle".into());
    }
    let list = v["entry"].as_array().map(Vec::as_slice).unwrap_or_default();
    if list.len() != entries {
        return Err(format!(
            "{} response entries for {entries} requests",
            list.len()
        ));
    }
    let mut out = Vec::with_capacity(entries);
    for e in list {
        let status = e["response"]["status"].as_str().unwrap_or("");
        // "201", "201 Created", "200 OK".
        if !status.starts_with('2') {
            return Err(format!(
                "entry status {status:?} in a successful transaction"
            ));
        }
        out.push(
            e["response"]["location"]
                .as_str()
                .and_then(resource_id)
                .or_else(|| {
                    let r = &e["resource"];
                    Some(format!(
                        "{}/{}",
                        r["resourceType"].as_str()?,
                        r["id"].as_str()?
                    ))
                }),
        );
    }
    Ok(out)
}

/// RFC 9110 Retry-After: delta-seconds or an HTTP-date.
/// Clamped to [`MAX_RETRY_AFTER`]: the header is the server's, and a year's wait would stop
/// delivery as surely as an outage.
pub fn parse_retry_after(v: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = httpdate(v)?;
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form servers send.
fn httpdate(s: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, mi, se] = hms.as_slice() else {
        return None;
    };
    // Bounds first: the arithmetic below must not overflow on a hostile header.
    if !(1..=9999).contains(&year) || !(1..=31).contains(&day) || !(0..24).contains(h) {
        return None;
    }
    if !(0..60).contains(mi) || !(0..61).contains(se) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Issue codes of an OperationOutcome, for events (never its text, which may echo values).
/// The server is untrusted: only strings shaped like FHIR IssueType codes (lowercase letters
/// and hyphens, `invalid`, `code-invalid`) pass, at most ten, so a code field cannot carry
/// a patient's data onto MQTT.
pub fn issue_codes(outcome: &str) -> Vec<String> {
    serde_json::from_str::<Value>(outcome)
        .ok()
        .and_then(|v| {
            v["issue"].as_array().map(|issues| {
                issues
                    .iter()
                    .filter_map(|i| i["code"].as_str())
                    .filter(|c| {
                        (1..=32).contains(&c.len())
                            && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                    })
                    .take(10)
                    .map(str::to_owned)
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(784_111_700) // 1994-11-06T08:48:20Z
    }

    #[test]
    fn hostile_responses_are_bounded() {
        // A Retry-After of a year, or a date far ahead, holds a destination back an hour.
        assert_eq!(parse_retry_after("31536000", now()), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Fri, 01 Jan 9999 00:00:00 GMT", now()),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("18446744073709551615", now()),
            Some(MAX_RETRY_AFTER)
        );
        // Issue codes that are not codes never reach an event.
        let oo = r#"{"resourceType":"OperationOutcome","issue":[
            {"code":"invalid"},{"code":"Jane Doe 1957-03-02"},{"code":"code-invalid"},{"code":7}]}"#;
        assert_eq!(issue_codes(oo), ["invalid", "code-invalid"]);
        // A rejection keeps a bounded part of the body with the quarantined readings.
        let big = vec![b'x'; MAX_OUTCOME_BYTES * 4];
        match classify(422, None, &big, 1, now()) {
            Classified::Rejected { outcome, .. } => {
                assert!(outcome.len() <= MAX_OUTCOME_BYTES + 16, "{}", outcome.len());
                assert!(outcome.ends_with("[truncated]"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn status_codes_classify_per_the_http_rules() {
        let ok = br#"{"resourceType":"Bundle","type":"transaction-response","entry":[
            {"response":{"status":"201 Created","location":"Observation/abc/_history/1"}},
            {"response":{"status":"200","location":"https://h/fhir/R4/Device/d1/_history/3"}}]}"#;
        assert_eq!(
            classify(200, None, ok, 2, now()),
            Classified::Accepted(vec![
                Some("Observation/abc".into()),
                Some("Device/d1".into())
            ])
        );
        assert!(matches!(
            classify(200, None, ok, 3, now()),
            Classified::Retry { .. }
        ));
        assert!(matches!(
            classify(200, None, b"not json", 1, now()),
            Classified::Retry { .. }
        ));
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(s, None, b"", 1, now()), Classified::Retry { .. }),
                "{s}"
            );
        }
        assert_eq!(classify(401, None, b"", 1, now()), Classified::Unauthorized);
        for s in [301, 302, 307, 308] {
            assert!(
                matches!(classify(s, None, b"", 1, now()), Classified::Retry { ref reason, .. } if reason.contains("redirect")),
                "{s}"
            );
        }
        for s in [400, 403, 404, 409, 412, 413, 415, 422] {
            assert!(
                matches!(classify(s, None, b"{}", 1, now()), Classified::Rejected { status, .. } if status == s),
                "{s}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        assert_eq!(
            classify(429, Some("2"), b"", 1, now()),
            Classified::Retry {
                after: Some(Duration::from_secs(2)),
                reason: "HTTP 429".into()
            }
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now()),
            Some(Duration::from_secs(77))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 99999999999999999 08:49:37 GMT", now()),
            None
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 99:49:37 GMT", now()),
            None
        );
    }

    #[test]
    fn locations_and_issue_codes() {
        assert_eq!(
            resource_id("Observation/1/_history/2").as_deref(),
            Some("Observation/1")
        );
        assert_eq!(
            resource_id("http://x/fhir/R4/Patient/p").as_deref(),
            Some("Patient/p")
        );
        assert_eq!(resource_id("garbage"), None);
        assert_eq!(
            issue_codes(
                r#"{"resourceType":"OperationOutcome","issue":[{"code":"structure"},{"code":"value"}]}"#
            ),
            ["structure", "value"]
        );
    }
}
