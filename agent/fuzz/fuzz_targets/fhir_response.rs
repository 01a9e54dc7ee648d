//! FHIR server replies and the other text the delivery path parses: any status, Retry-After
//! and body must classify without panicking, and a 2xx is only "accepted" with one location
//! slot per request entry. Also patient bindings and `decode` arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::sync::response::{
    Classified, EntryOutcome, MAX_OUTCOME_BYTES, classify, issue_codes, parse_retry_after,
    resource_id,
};

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let status = 100 + u16::from(head) * 2;
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let (header, body) = rest.split_at(split);
    let header = String::from_utf8_lossy(header);
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
    let entries = usize::from(head % 8);
    match classify(status, Some(&header), body, entries, now) {
        Classified::Accepted(locations) => {
            assert_eq!(locations.len(), entries);
            assert!((200..300).contains(&status));
        }
        // Per-entry outcomes only for a 2xx, one per request entry, each summary bounded.
        Classified::Entries(outcomes) => {
            assert_eq!(outcomes.len(), entries);
            assert!((200..300).contains(&status));
            for o in outcomes {
                if let EntryOutcome::Refused { outcome, .. } = o {
                    assert!(outcome.len() <= MAX_OUTCOME_BYTES + 16);
                }
            }
        }
        Classified::Rejected { outcome, .. } | Classified::NotFound { outcome, .. } => {
            assert!(outcome.len() <= MAX_OUTCOME_BYTES + 16);
        }
        _ => {}
    }
    let _ = parse_retry_after(&header, now);
    let text = String::from_utf8_lossy(body);
    let _ = resource_id(&text);
    let _ = issue_codes(&text);
    let _ = text.parse::<vitalgate::fhir::PatientRef>();
    let _ = vitalgate::fhir::decode::parse_hex(&text);
    let _ = vitalgate::fhir::decode::parse_characteristic(&header);
});
