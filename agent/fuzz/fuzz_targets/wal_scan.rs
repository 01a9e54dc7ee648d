//! A store's write-ahead log and its index are read before SQLite opens the store, after a
//! crash or on a damaged disk: any bytes must give an account (or none), never a panic, and
//! the account must stay within the log it describes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalgate::store::wal;

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the page size and how much of the rest is the index.
    let Some((&[ps, split], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let page_size = [0usize, 512, 1024, 4096][usize::from(ps) % 4];
    let (index, log) = rest.split_at(usize::from(split).min(rest.len()));
    let backfilled = wal::backfilled(index, log);
    if let Some(d) = wal::scan(log, page_size, backfilled) {
        let frames = (log.len() / (24 + page_size).max(1)) as u64 + 1;
        assert!(d.lost_frames <= frames && d.usable_frames <= frames, "{d:?}");
        assert!(d.lost_commits >= 1 && d.lost_commits <= d.lost_frames, "{d:?}");
        assert!(!(d.header && d.tail_only), "{d:?}");
        let _ = d.to_string();
    }
});
