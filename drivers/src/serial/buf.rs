//! The receive buffer every framer shares: bytes not yet framed, the stream offset of the
//! first of them, and the garbage skipped since the last frame.

use super::{Protocol, SerialError};

/// Bytes received but not yet consumed by a framer. Consumed bytes are dropped lazily (in
/// bulk), so feeding a byte at a time stays linear.
#[derive(Debug, Default, Clone)]
pub(crate) struct StreamBuf {
    data: Vec<u8>,
    start: usize,
    /// Stream offset of `data[0]`.
    base: u64,
    /// Garbage being skipped: (stream offset of its first byte, length).
    garbage: Option<(u64, u64)>,
}

/// Garbage is reported at least every this many bytes, so a stream of pure noise still
/// shows up in the logs while it lasts.
const GARBAGE_REPORT: u64 = 4096;

impl StreamBuf {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && (self.start >= 4096 || self.start * 2 >= self.data.len()) {
            self.data.drain(..self.start);
            self.base += self.start as u64;
            self.start = 0;
        }
        self.data.extend_from_slice(bytes);
    }

    /// The unconsumed bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.data[self.start..]
    }

    /// Stream offset of `bytes()[0]`.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.data.len());
    }

    /// Skips `n` bytes as garbage. Returns a report when the garbage run is long enough to
    /// be worth reporting before it ends.
    pub(crate) fn skip(&mut self, protocol: Protocol, n: usize) -> Option<SerialError> {
        let at = self.offset();
        self.consume(n);
        let (_, len) = self.garbage.get_or_insert((at, 0));
        *len += n as u64;
        if *len >= GARBAGE_REPORT {
            return self.take_garbage(protocol);
        }
        None
    }

    /// Whether skipped garbage awaits a report.
    pub(crate) fn has_garbage(&self) -> bool {
        self.garbage.is_some()
    }

    /// The garbage skipped since the last report, as an error, if any.
    pub(crate) fn take_garbage(&mut self, protocol: Protocol) -> Option<SerialError> {
        self.garbage
            .take()
            .map(|(offset, len)| SerialError::Garbage {
                protocol,
                offset,
                len,
            })
    }

    /// At the end of a capture: pending garbage, then whatever partial frame is left.
    pub(crate) fn finish(&mut self, protocol: Protocol, out: &mut Vec<SerialError>) {
        out.extend(self.take_garbage(protocol));
        let left = self.bytes().len();
        if left > 0 {
            out.push(SerialError::Truncated {
                protocol,
                offset: self.offset(),
                len: left as u64,
            });
            self.consume(left);
        }
    }
}

/// Sum of bytes modulo 256.
pub(crate) fn sum8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}
