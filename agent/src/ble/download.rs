//! Which records to ask a glucose meter or CGM for, as a pure state machine (no I/O): the
//! session feeds it the records and RACP answers it receives, and it says what to request
//! next and which record the store's cursor advances to.
//!
//! A record number alone does not name a record for ever: a CGM's time offset restarts at 0
//! with every sensor session, a meter's sequence number restarts when the meter is reset and
//! wraps after 65535. So the cursor is the last record downloaded, by number *and* identity
//! (the glucose record's base time, the CGM session start: the reading's record
//! qualifier), stored as `<number>@<identity>`. Each download asks for the records from the
//! cursor's number on, inclusive, so the first answer is the cursor's own record again. If it
//! is still that record, everything after it is new. If it is another record (a new session,
//! a reset meter), or there is no record with that number any more, the device's numbering
//! started over and everything it holds is asked for: the store's dedup keys, which carry the
//! same identity, absorb what was already taken. Nothing is skipped for having a number the
//! cursor already passed.

use vitalgate_drivers::ble::racp::{RacpRequest, RecordFilter};

/// The last record a download committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub number: u16,
    /// `None` for a cursor written before identities were kept: the next download's first
    /// record then supplies it.
    pub identity: Option<String>,
}

impl Cursor {
    /// Parses a stored cursor (`"17"` or `"17@2024-03-01T08:00:00"`).
    pub fn parse(value: &str) -> Option<Self> {
        let (number, identity) = match value.split_once('@') {
            Some((n, id)) => (n, Some(id.to_owned())),
            None => (value, None),
        };
        let number = number.trim().parse::<u32>().ok()?;
        Some(Self {
            number: u16::try_from(number).unwrap_or(u16::MAX),
            identity,
        })
    }

    /// The value stored in the `cursors` table.
    pub fn to_value(&self) -> String {
        match &self.identity {
            Some(id) => format!("{}@{id}", self.number),
            None => self.number.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Asked for the records from the cursor on; the first one received is checked.
    FromCursor {
        checked: bool,
        restart: bool,
    },
    /// Asked for the records after a cursor written before identities were kept, as that
    /// version did (its record is stored under a key without identity, so asking for it
    /// again would store it twice).
    AfterOldCursor,
    /// Asked for every record.
    All,
    Finished,
}

/// One download's plan.
#[derive(Debug, Clone)]
pub struct Download {
    cursor: Option<Cursor>,
    phase: Phase,
    last: Option<Cursor>,
}

impl Download {
    /// Starts a download from the stored cursor; returns the first request.
    pub fn start(cursor: Option<Cursor>) -> (Self, RacpRequest) {
        let (phase, filter) = match &cursor {
            Some(c) if c.identity.is_some() => (
                Phase::FromCursor {
                    checked: false,
                    restart: false,
                },
                RecordFilter::SequenceAtLeast(c.number),
            ),
            Some(c) => match c.number.checked_add(1) {
                Some(next) => (Phase::AfterOldCursor, RecordFilter::SequenceAtLeast(next)),
                None => (Phase::All, RecordFilter::All),
            },
            None => (Phase::All, RecordFilter::All),
        };
        (
            Self {
                cursor,
                phase,
                last: None,
            },
            RacpRequest::ReportStoredRecords(filter),
        )
    }

    /// A record arrived, with its number and identity.
    pub fn record(&mut self, number: u16, identity: Option<&str>) {
        if let (
            Phase::FromCursor {
                checked: checked @ false,
                restart,
            },
            Some(c),
        ) = (&mut self.phase, &self.cursor)
        {
            *checked = true;
            let same_identity = match (&c.identity, identity) {
                (Some(a), Some(b)) => a == b,
                // Nothing to compare with: a record with no identity.
                _ => true,
            };
            *restart = number != c.number || !same_identity;
        }
        // Records answered from the cursor's number after the numbering started over are
        // kept, but never advance the cursor: they are the new numbering's tail, and a cursor
        // on them would make the next download skip its head if this one is cut short.
        if !matches!(self.phase, Phase::FromCursor { restart: true, .. }) {
            self.last = Some(Cursor {
                number,
                identity: identity.map(str::to_owned),
            });
        }
    }

    /// The device answered the request: `found` false for "no records found". Returns the
    /// next request, if the numbering started over.
    pub fn answered(&mut self, found: bool) -> Option<RacpRequest> {
        let next = match self.phase {
            // The cursor's record is gone, or another record has its number.
            Phase::FromCursor { restart, .. } if restart || !found => Phase::All,
            _ => Phase::Finished,
        };
        self.phase = next;
        (next == Phase::All).then_some(RacpRequest::ReportStoredRecords(RecordFilter::All))
    }

    /// The cursor to commit with the records received so far: the last one received in
    /// order (`None` while only the tail of a new numbering has arrived).
    pub fn cursor(&self) -> Option<&Cursor> {
        self.last.as_ref()
    }

    /// Whether a request is still being answered.
    pub fn is_running(&self) -> bool {
        self.phase != Phase::Finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> RacpRequest {
        RacpRequest::ReportStoredRecords(RecordFilter::All)
    }

    #[test]
    fn cursors_parse_old_and_new_forms() {
        assert_eq!(
            Cursor::parse("17"),
            Some(Cursor {
                number: 17,
                identity: None
            })
        );
        let c = Cursor::parse("17@session 2024-03-01T08:00:00").expect("cursor");
        assert_eq!(c.identity.as_deref(), Some("session 2024-03-01T08:00:00"));
        assert_eq!(Cursor::parse(&c.to_value()), Some(c));
        assert_eq!(Cursor::parse("70000").map(|c| c.number), Some(u16::MAX));
        assert_eq!(Cursor::parse("x@y"), None);
    }

    #[test]
    fn a_first_download_asks_for_everything() {
        let (mut d, req) = Download::start(None);
        assert_eq!(req, all());
        d.record(1, Some("a"));
        d.record(2, Some("b"));
        assert_eq!(d.answered(true), None);
        assert!(!d.is_running());
        assert_eq!(d.cursor().map(Cursor::to_value).as_deref(), Some("2@b"));
    }

    #[test]
    fn the_cursor_record_seen_again_means_only_new_records_follow() {
        let cursor = Cursor::parse("5@t5");
        let (mut d, req) = Download::start(cursor);
        assert_eq!(
            req,
            RacpRequest::ReportStoredRecords(RecordFilter::SequenceAtLeast(5))
        );
        d.record(5, Some("t5"));
        d.record(6, Some("t6"));
        assert_eq!(d.answered(true), None);
        assert_eq!(d.cursor().map(Cursor::to_value).as_deref(), Some("6@t6"));
    }

    #[test]
    fn a_new_sensor_session_or_reset_meter_restarts_from_all() {
        // Record 5 exists but is another record: the numbering started over.
        let (mut d, _) = Download::start(Cursor::parse("5@session A"));
        d.record(5, Some("session B"));
        d.record(6, Some("session B"));
        // Kept, but the cursor stays: were the link lost now, the next download must still
        // ask for records 0 to 4 of the new session.
        assert_eq!(d.cursor(), None);
        assert_eq!(d.answered(true), Some(all()));
        assert!(d.is_running());
        d.record(0, Some("session B"));
        assert_eq!(d.answered(true), None);
        assert_eq!(d.cursor().map(|c| c.number), Some(0));
    }

    #[test]
    fn no_record_at_the_cursor_any_more_restarts_from_all() {
        // A reset meter with fewer records than before, or a wrapped sequence number.
        let (mut d, _) = Download::start(Cursor::parse("65535@t"));
        assert_eq!(d.answered(false), Some(all()));
        d.record(0, Some("u"));
        assert_eq!(d.answered(true), None);
        // And a device that really has nothing: done after the second answer.
        let (mut d, _) = Download::start(Cursor::parse("9@t"));
        assert_eq!(d.answered(false), Some(all()));
        assert_eq!(d.answered(false), None);
        assert_eq!(d.cursor(), None);
    }

    #[test]
    fn an_old_cursor_without_identity_asks_for_what_follows_and_learns_one() {
        // Its record is stored under a key without identity: asked for again, it would be
        // stored twice. So the records after it, as before.
        let (mut d, req) = Download::start(Cursor::parse("3"));
        assert_eq!(
            req,
            RacpRequest::ReportStoredRecords(RecordFilter::SequenceAtLeast(4))
        );
        d.record(4, Some("t4"));
        assert_eq!(d.answered(true), None);
        assert_eq!(d.cursor().map(Cursor::to_value).as_deref(), Some("4@t4"));
        // Nothing after it: nothing new, no restart.
        let (mut d, _) = Download::start(Cursor::parse("3"));
        assert_eq!(d.answered(false), None);
        assert!(!d.is_running());
    }
}
