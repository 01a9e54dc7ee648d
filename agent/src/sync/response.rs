//! How a FHIR server's answer to a transaction is read (FHIR R4 http.html#transaction-response):
//! pure functions over status, headers and body, so every branch is tested without a server.

use std::time::Duration;

use serde_json::Value;

/// Largest transaction-response body read; a bigger one is treated as unreadable (the
/// request is retried), so a hostile server cannot exhaust the gateway's memory.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// How much of a rejection's body is kept with each reading it quarantines.
pub const MAX_OUTCOME_BYTES: usize = 8 << 10;
/// The longest a server's Retry-After may hold a destination back.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What the server said about one entry of a transaction (or batch) response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// 2xx: stored (or already there), with its `Type/id` when the server said.
    Stored(Option<String>),
    /// 4xx: refused for good; the entry's OperationOutcome, bounded.
    Refused { status: u16, outcome: String },
    /// 5xx, or a status that is not one: not stored; send it again.
    Transient,
}

/// What to do after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// 2xx and every entry 2xx: one `Type/id` (when the server said) per request entry, in
    /// order.
    Accepted(Vec<Option<String>>),
    /// 2xx whose entries did not all succeed: the server answered with batch semantics
    /// (FHIR R4 http.html#transaction allows only all-or-nothing for a transaction, but
    /// servers in the field do this). One outcome per request entry, in order.
    Entries(Vec<EntryOutcome>),
    /// 2xx with a body that is not a response to what was sent (not JSON, not a Bundle, a
    /// different number of entries). The server may or may not have stored the entries, so
    /// they are sent again (every entry is a conditional create); the destination counts
    /// these and raises an alarm when they persist.
    Malformed { status: u16, reason: String },
    /// Network error, 408, 429, 5xx: the outcome is unknown or transient; send the same
    /// request again after at least `after` (the server's Retry-After).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// 401: the token is no good.
    Unauthorized,
    /// The destination itself, not the readings, is refused or misconfigured: 403, 406, 415,
    /// a redirect (never followed). Readings are kept and sent again; an alarm says why.
    DestinationRefused {
        status: u16,
        after: Option<Duration>,
        reason: String,
    },
    /// 404, 405 or 410: the base URL may be wrong (the destination's fault) or an entry may
    /// point at something the server does not have (the readings' fault). The destination
    /// asks the server's `/metadata` to tell them apart.
    NotFound { status: u16, outcome: String },
    /// Any other 4xx: permanent for this request. `outcome` is the server's
    /// OperationOutcome (or the body as received), bounded.
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
    let after = || retry_after.and_then(|v| parse_retry_after(v, now));
    match status {
        200..=299 => match parse_entries(body, entries) {
            Ok(outcomes)
                if outcomes
                    .iter()
                    .all(|o| matches!(o, EntryOutcome::Stored(_))) =>
            {
                Classified::Accepted(
                    outcomes
                        .into_iter()
                        .map(|o| match o {
                            EntryOutcome::Stored(id) => id,
                            _ => None,
                        })
                        .collect(),
                )
            }
            Ok(outcomes) => Classified::Entries(outcomes),
            Err(reason) => Classified::Malformed { status, reason },
        },
        401 => Classified::Unauthorized,
        // Redirects are not followed (readings and the token go only where the configuration
        // says): a moved server is the destination failing, for IT to see, not bad readings.
        300..=399 => Classified::DestinationRefused {
            status,
            after: after(),
            reason: format!("HTTP {status}: redirect not followed"),
        },
        403 | 406 | 415 => Classified::DestinationRefused {
            status,
            after: after(),
            reason: format!("HTTP {status}"),
        },
        404 | 405 | 410 => Classified::NotFound {
            status,
            outcome: bounded_text(body),
        },
        408 | 429 | 500..=599 => Classified::Retry {
            after: after(),
            reason: format!("HTTP {status}"),
        },
        _ => Classified::Rejected {
            status,
            outcome: bounded_text(body),
        },
    }
}

/// What a quarantine keeps of a refusal: the OperationOutcome's issues (severity, code, the
/// first 256 characters of their text, their first three expressions; ten issues at most), or
/// the body's first characters when it is not one; never more than [`MAX_OUTCOME_BYTES`]. A
/// server's answer is untrusted and may be megabytes, once per quarantined reading.
pub fn bounded_text(body: &[u8]) -> String {
    let summary = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(|v| v["resourceType"] == "OperationOutcome")
        .map(|v| {
            let clip = |s: &str, n: usize| s.chars().take(n).collect::<String>();
            let issues: Vec<Value> = v["issue"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .take(10)
                .map(|i| {
                    serde_json::json!({
                        "severity": clip(i["severity"].as_str().unwrap_or(""), 16),
                        "code": clip(i["code"].as_str().unwrap_or(""), 32),
                        "details": { "text": clip(
                            i["details"]["text"].as_str().or(i["diagnostics"].as_str()).unwrap_or(""),
                            256,
                        ) },
                        "expression": i["expression"].as_array().map(|e| {
                            e.iter().take(3).filter_map(Value::as_str).map(|x| clip(x, 128)).collect::<Vec<_>>()
                        }).unwrap_or_default(),
                    })
                })
                .collect();
            serde_json::json!({ "resourceType": "OperationOutcome", "issue": issues }).to_string()
        });
    let mut text = summary.unwrap_or_else(|| {
        String::from_utf8_lossy(&body[..body.len().min(MAX_OUTCOME_BYTES + 4)]).into_owned()
    });
    if text.len() > MAX_OUTCOME_BYTES {
        let mut end = MAX_OUTCOME_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" [truncated]");
    }
    text
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

/// One outcome per request entry, from a 2xx transaction- or batch-response
/// (FHIR R4 bundle.html: `Bundle.entry.response.status` starts with the HTTP status code;
/// `location` names what was created; `outcome` says why an entry failed).
fn parse_entries(body: &[u8], entries: usize) -> Result<Vec<EntryOutcome>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
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
    Ok(list
        .iter()
        .map(|e| {
            let response = &e["response"];
            // "201", "201 Created", "200 OK".
            let code = response["status"]
                .as_str()
                .and_then(|s| s.split_whitespace().next())
                .and_then(|c| c.parse::<u16>().ok());
            match code {
                Some(200..=299) => EntryOutcome::Stored(
                    response["location"]
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
                ),
                // As for a whole response: 408 and 429 are transient, 401 and 403 the
                // destination's (its token or its rights), not the reading's.
                Some(408 | 429 | 401 | 403) => EntryOutcome::Transient,
                Some(status @ 400..=499) => EntryOutcome::Refused {
                    status,
                    outcome: bounded_text(response["outcome"].to_string().as_bytes()),
                },
                _ => EntryOutcome::Transient,
            }
        })
        .collect())
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
        // A 2xx that does not answer what was sent is malformed, never "delivered".
        for (body, n) in [
            (&ok[..], 3),
            (&b"not json"[..], 1),
            (&br#"{"resourceType":"OperationOutcome"}"#[..], 1),
        ] {
            assert!(
                matches!(
                    classify(200, None, body, n, now()),
                    Classified::Malformed { .. }
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(s, None, b"", 1, now()), Classified::Retry { .. }),
                "{s}"
            );
        }
        assert_eq!(classify(401, None, b"", 1, now()), Classified::Unauthorized);
        // The destination's fault, not the readings': kept, alarmed, sent again.
        for s in [301, 302, 307, 308] {
            assert!(
                matches!(classify(s, None, b"", 1, now()), Classified::DestinationRefused { ref reason, .. } if reason.contains("redirect")),
                "{s}"
            );
        }
        for s in [403, 406, 415] {
            assert!(
                matches!(classify(s, None, b"", 1, now()), Classified::DestinationRefused { status, .. } if status == s),
                "{s}"
            );
        }
        for s in [404, 405, 410] {
            assert!(
                matches!(classify(s, None, b"{}", 1, now()), Classified::NotFound { status, .. } if status == s),
                "{s}"
            );
        }
        for s in [400, 409, 412, 413, 422] {
            assert!(
                matches!(classify(s, None, b"{}", 1, now()), Classified::Rejected { status, .. } if status == s),
                "{s}"
            );
        }
    }

    #[test]
    fn a_quarantine_keeps_a_summary_of_a_huge_outcome() {
        let text = "x".repeat(1 << 20);
        let issue = serde_json::json!({"severity":"error","code":"invalid","details":{"text": text},
            "expression":["Observation.value", "a", "b", "c", "d"]});
        let oo = serde_json::json!({"resourceType":"OperationOutcome","issue": vec![issue; 50]});
        let kept = bounded_text(oo.to_string().as_bytes());
        assert!(kept.len() <= MAX_OUTCOME_BYTES + 16, "{}", kept.len());
        assert_eq!(issue_codes(&kept).len(), 10, "{kept}");
    }

    #[test]
    fn a_batch_response_gives_each_entry_its_own_outcome() {
        // bundle.html: entry.response.status begins with the status code; outcome explains.
        let mixed = br#"{"resourceType":"Bundle","type":"batch-response","entry":[
            {"response":{"status":"201 Created","location":"Observation/a/_history/1"}},
            {"response":{"status":"422 Unprocessable Entity","outcome":{"resourceType":"OperationOutcome","issue":[{"code":"invalid"}]}}},
            {"response":{"status":"503"}},
            {"response":{"status":"banana"}},
            {"response":{"status":"429 Too Many Requests"}},
            {"response":{"status":"403"}}]}"#;
        match classify(200, None, mixed, 6, now()) {
            Classified::Entries(e) => {
                assert_eq!(e[0], EntryOutcome::Stored(Some("Observation/a".into())));
                assert!(
                    matches!(&e[1], EntryOutcome::Refused { status: 422, outcome } if issue_codes(outcome) == ["invalid"])
                );
                assert_eq!(e[2], EntryOutcome::Transient);
                assert_eq!(e[3], EntryOutcome::Transient);
                assert_eq!(e[4], EntryOutcome::Transient, "429 is transient");
                assert_eq!(
                    e[5],
                    EntryOutcome::Transient,
                    "403 is not the reading's fault"
                );
            }
            other => panic!("{other:?}"),
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
