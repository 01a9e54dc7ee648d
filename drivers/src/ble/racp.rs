//! Record Access Control Point 0x2A52 (GATT Specification Supplement, Record Access Control
//! Point), shared by glucose, CGM and PLX: building the requests the gateway writes, and
//! parsing the indications that answer them.

use super::{Reader, Writer};
use crate::DecodeError;
use crate::time::LocalDateTime;

const RACP: &str = "2A52";

const OP_REPORT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_ABORT: u8 = 3;
const OP_COUNT: u8 = 4;
const OP_COUNT_RESPONSE: u8 = 5;
const OP_RESPONSE_CODE: u8 = 6;

const OPERATOR_NULL: u8 = 0;
const OPERATOR_ALL: u8 = 1;
const OPERATOR_LE: u8 = 2;
const OPERATOR_GE: u8 = 3;
const OPERATOR_RANGE: u8 = 4;
const OPERATOR_FIRST: u8 = 5;
const OPERATOR_LAST: u8 = 6;

/// Filter type 0x01: sequence number (GLS) or time offset (CGM), uint16.
const FILTER_SEQUENCE: u8 = 1;
/// Filter type 0x02: user-facing time (Date Time).
const FILTER_TIME: u8 = 2;

/// Which records a request applies to (the operator and its operand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordFilter {
    All,
    /// The oldest record.
    First,
    /// The newest record.
    Last,
    /// Sequence number (GLS) or time offset (CGM) at most this value.
    SequenceAtMost(u16),
    /// Sequence number (GLS) or time offset (CGM) at least this value: incremental sync.
    SequenceAtLeast(u16),
    /// Inclusive range of sequence numbers / time offsets.
    SequenceRange(u16, u16),
    TimeAtMost(LocalDateTime),
    TimeAtLeast(LocalDateTime),
    /// Inclusive range of user-facing times.
    TimeRange(LocalDateTime, LocalDateTime),
}

impl RecordFilter {
    fn write(&self, w: &mut Writer) {
        match self {
            RecordFilter::All => w.u8(OPERATOR_ALL),
            RecordFilter::First => w.u8(OPERATOR_FIRST),
            RecordFilter::Last => w.u8(OPERATOR_LAST),
            RecordFilter::SequenceAtMost(n) | RecordFilter::SequenceAtLeast(n) => {
                w.u8(if matches!(self, RecordFilter::SequenceAtMost(_)) {
                    OPERATOR_LE
                } else {
                    OPERATOR_GE
                });
                w.u8(FILTER_SEQUENCE);
                w.u16_le(*n);
            }
            RecordFilter::SequenceRange(a, b) => {
                w.u8(OPERATOR_RANGE);
                w.u8(FILTER_SEQUENCE);
                w.u16_le(*a);
                w.u16_le(*b);
            }
            RecordFilter::TimeAtMost(t) | RecordFilter::TimeAtLeast(t) => {
                w.u8(if matches!(self, RecordFilter::TimeAtMost(_)) {
                    OPERATOR_LE
                } else {
                    OPERATOR_GE
                });
                w.u8(FILTER_TIME);
                w.date_time(t);
            }
            RecordFilter::TimeRange(a, b) => {
                w.u8(OPERATOR_RANGE);
                w.u8(FILTER_TIME);
                w.date_time(a);
                w.date_time(b);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let at = r.offset();
        let operator = r.u8()?;
        let simple = match operator {
            OPERATOR_ALL => Some(RecordFilter::All),
            OPERATOR_FIRST => Some(RecordFilter::First),
            OPERATOR_LAST => Some(RecordFilter::Last),
            OPERATOR_LE | OPERATOR_GE | OPERATOR_RANGE => None,
            other => return Err(r.invalid(at, format!("operator {other} is not defined"))),
        };
        if let Some(f) = simple {
            return Ok(f);
        }
        let filter_at = r.offset();
        Ok(match (r.u8()?, operator) {
            (FILTER_SEQUENCE, OPERATOR_LE) => RecordFilter::SequenceAtMost(r.u16_le()?),
            (FILTER_SEQUENCE, OPERATOR_GE) => RecordFilter::SequenceAtLeast(r.u16_le()?),
            (FILTER_SEQUENCE, _) => RecordFilter::SequenceRange(r.u16_le()?, r.u16_le()?),
            (FILTER_TIME, OPERATOR_LE) => RecordFilter::TimeAtMost(r.date_time()?),
            (FILTER_TIME, OPERATOR_GE) => RecordFilter::TimeAtLeast(r.date_time()?),
            (FILTER_TIME, _) => RecordFilter::TimeRange(r.date_time()?, r.date_time()?),
            (other, _) => {
                return Err(r.invalid(filter_at, format!("filter type {other} is not defined")));
            }
        })
    }
}

/// A request the gateway writes to the RACP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RacpRequest {
    /// Op code 1: send the matching records as notifications, then a response code.
    ReportStoredRecords(RecordFilter),
    /// Op code 2.
    DeleteStoredRecords(RecordFilter),
    /// Op code 3: abort the running procedure (operator Null).
    Abort,
    /// Op code 4: answer with the number of matching records.
    ReportNumberOfStoredRecords(RecordFilter),
}

impl RacpRequest {
    /// The bytes to write, e.g. `01 01` for "report all records".
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            RacpRequest::ReportStoredRecords(f) => {
                w.u8(OP_REPORT);
                f.write(&mut w);
            }
            RacpRequest::DeleteStoredRecords(f) => {
                w.u8(OP_DELETE);
                f.write(&mut w);
            }
            RacpRequest::Abort => {
                w.u8(OP_ABORT);
                w.u8(OPERATOR_NULL);
            }
            RacpRequest::ReportNumberOfStoredRecords(f) => {
                w.u8(OP_COUNT);
                f.write(&mut w);
            }
        }
        w.bytes
    }

    /// Parses a request, as a device (or the simulator standing in for one) receives it.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(RACP, bytes);
        let op = r.u8()?;
        let request = match op {
            OP_REPORT => RacpRequest::ReportStoredRecords(RecordFilter::read(&mut r)?),
            OP_DELETE => RacpRequest::DeleteStoredRecords(RecordFilter::read(&mut r)?),
            OP_COUNT => RacpRequest::ReportNumberOfStoredRecords(RecordFilter::read(&mut r)?),
            OP_ABORT => {
                let at = r.offset();
                match r.u8()? {
                    OPERATOR_NULL => RacpRequest::Abort,
                    other => {
                        return Err(r.invalid(at, format!("abort needs operator 0, got {other}")));
                    }
                }
            }
            other => return Err(r.invalid(0, format!("op code {other} is not a request"))),
        };
        r.finish()?;
        Ok(request)
    }

    /// The op code, as echoed in a response-code indication.
    pub fn op_code(&self) -> u8 {
        match self {
            RacpRequest::ReportStoredRecords(_) => OP_REPORT,
            RacpRequest::DeleteStoredRecords(_) => OP_DELETE,
            RacpRequest::Abort => OP_ABORT,
            RacpRequest::ReportNumberOfStoredRecords(_) => OP_COUNT,
        }
    }
}

/// Response codes of op code 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RacpResponseCode {
    Success = 1,
    OpCodeNotSupported = 2,
    InvalidOperator = 3,
    OperatorNotSupported = 4,
    InvalidOperand = 5,
    /// Not a failure for incremental sync: there was simply nothing new.
    NoRecordsFound = 6,
    AbortUnsuccessful = 7,
    ProcedureNotCompleted = 8,
    OperandNotSupported = 9,
}

impl RacpResponseCode {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Success,
            2 => Self::OpCodeNotSupported,
            3 => Self::InvalidOperator,
            4 => Self::OperatorNotSupported,
            5 => Self::InvalidOperand,
            6 => Self::NoRecordsFound,
            7 => Self::AbortUnsuccessful,
            8 => Self::ProcedureNotCompleted,
            9 => Self::OperandNotSupported,
            _ => return None,
        })
    }
}

/// An RACP indication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RacpResponse {
    /// `06 00 <request op code> <response code>`.
    ResponseCode {
        request_op_code: u8,
        code: RacpResponseCode,
    },
    /// `05 00 <count>`: uint16 in the specification; Nordic also accepts uint8 and uint32
    /// widths, and so do we.
    NumberOfStoredRecords(u32),
}

impl RacpResponse {
    /// Parses an RACP indication.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(RACP, bytes);
        let op = r.u8()?;
        let operator_at = r.offset();
        let operator = r.u8()?;
        if op != OP_RESPONSE_CODE && op != OP_COUNT_RESPONSE {
            return Err(r.invalid(0, format!("op code {op} is not a response")));
        }
        if operator != OPERATOR_NULL {
            return Err(r.invalid(
                operator_at,
                format!("responses use operator 0 (Null), got {operator}"),
            ));
        }
        let response = if op == OP_RESPONSE_CODE {
            let request_op_code = r.u8()?;
            let code_at = r.offset();
            let raw = r.u8()?;
            let code = RacpResponseCode::from_u8(raw)
                .ok_or_else(|| r.invalid(code_at, format!("response code {raw} is not defined")))?;
            RacpResponse::ResponseCode {
                request_op_code,
                code,
            }
        } else {
            let count_at = r.offset();
            let count = match r.remaining() {
                1 => u32::from(r.u8()?),
                2 => u32::from(r.u16_le()?),
                4 => r.u32_le()?,
                0 => {
                    // Reading the uint16 the specification requires reports the truncation.
                    u32::from(r.u16_le()?)
                }
                n => {
                    return Err(r.invalid(
                        count_at,
                        format!("a record count of {n} bytes is neither uint8, uint16 nor uint32"),
                    ));
                }
            };
            RacpResponse::NumberOfStoredRecords(count)
        };
        r.finish()?;
        Ok(response)
    }

    /// Encodes the response as a device sends it (uint16 count). For the simulators.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            RacpResponse::ResponseCode {
                request_op_code,
                code,
            } => vec![
                OP_RESPONSE_CODE,
                OPERATOR_NULL,
                *request_op_code,
                *code as u8,
            ],
            RacpResponse::NumberOfStoredRecords(n) => {
                let mut w = Writer::default();
                w.u8(OP_COUNT_RESPONSE);
                w.u8(OPERATOR_NULL);
                match u16::try_from(*n) {
                    Ok(n) => w.u16_le(n),
                    Err(_) => w.bytes.extend_from_slice(&n.to_le_bytes()),
                }
                w.bytes
            }
        }
    }

    /// True when a download finished normally: success, or "no records found".
    pub fn is_download_complete(&self) -> bool {
        matches!(
            self,
            RacpResponse::ResponseCode {
                request_op_code: OP_REPORT,
                code: RacpResponseCode::Success | RacpResponseCode::NoRecordsFound,
            }
        )
    }
}
