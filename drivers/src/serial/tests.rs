//! Every serial example frame of drivers/docs/test-vectors.md, the framers' resync and
//! checksum handling, and each session driven through a scripted device.

use super::*;
use crate::ieee11073::Value;
use crate::mdc;
use crate::model::Measurement;
use crate::time::DeviceTimestamp;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn dt(y: u16, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> LocalDateTime {
    datetime(y, mo, d, h, mi, s).expect("valid")
}

fn time_of(m: &Measurement) -> Option<LocalDateTime> {
    match m.device_time {
        Some(DeviceTimestamp::Local { time, .. }) => Some(time),
        _ => None,
    }
}

fn num(v: &Option<Value>) -> String {
    v.expect("value").to_string()
}

// ---------------------------------------------------------------- TaiDoc (test-vectors.md)

mod taidoc_examples {
    use super::*;
    use crate::serial::taidoc::{self, Frame, Framer, Kind, cmd};

    fn host_frame(bytes: &str) -> Frame {
        let mut f = Framer::new(taidoc::HOST);
        f.push(&hex(bytes));
        f.next().expect("a frame").expect("valid frame")
    }

    #[test]
    fn connect_request_checksum_worked_example() {
        // 0x51 + 0x22 + 0xA3 = 0x116 -> 0x16.
        assert_eq!(
            Frame::request(cmd::CONNECT, [0; 4]).encode().to_vec(),
            hex("51 22 00 00 00 00 A3 16")
        );
        assert_eq!(host_frame("51 22 00 00 00 00 A3 16").command, cmd::CONNECT);
    }

    #[test]
    fn real_command_frames() {
        for (text, command, message) in [
            ("51 24 00 00 00 00 A3 18", cmd::READ_MODEL, [0, 0, 0, 0]),
            ("51 43 00 00 01 01 A3 39", cmd::START_BP, [0, 0, 1, 1]),
            ("51 2B 00 00 00 00 A3 1F", cmd::RECORD_COUNT, [0, 0, 0, 0]),
            ("51 25 00 00 00 00 A3 19", cmd::RECORD_TIME, [0, 0, 0, 0]),
            ("51 26 00 00 00 00 A3 1A", cmd::RECORD_VALUE, [0, 0, 0, 0]),
        ] {
            let f = host_frame(text);
            assert_eq!((f.command, f.message), (command, message), "{text}");
            assert_eq!(
                Frame::request(command, message).encode().to_vec(),
                hex(text)
            );
        }
        assert_eq!(
            Frame::record_request(cmd::RECORD_TIME, 0).encode().to_vec(),
            hex("51 25 00 00 00 00 A3 19")
        );
    }

    #[test]
    fn datetime_test_vectors() {
        let (t, f) = taidoc::decode_datetime([0x21, 0x24, 0x0E, 0x15], 0).expect("valid");
        assert_eq!(t, dt(2018, 1, 1, 21, 14, 0));
        assert_eq!(f, taidoc::BpFlags::default());
        let (t, _) = taidoc::decode_datetime([0x04, 0x27, 0x25, 0x0D], 0).expect("valid");
        assert_eq!(t, dt(2019, 8, 4, 13, 37, 0));
        assert_eq!(taidoc::encode_datetime(&t), [0x04, 0x27, 0x25, 0x0D]);
        // BP flag bits: hour bit 7 = average, minute bit 6 = IHB.
        let (t, f) = taidoc::decode_datetime([0x04, 0x27, 0x65, 0x8D], 0).expect("valid");
        assert_eq!(t, dt(2019, 8, 4, 13, 37, 0));
        assert!(f.average && f.irregular_heartbeat);
        assert!(
            taidoc::decode_datetime([0xA1, 0x25, 0, 0], 9).is_err(),
            "month 13"
        );
    }

    #[test]
    fn synthetic_bp_record() {
        let frames = hex("51 25 6F 30 1E 08 A5 E0 51 26 80 60 50 48 A5 94");
        let mut f = Framer::new(taidoc::DEVICE);
        f.push(&frames);
        let time = f.next().expect("frame").expect("valid");
        let value = f.next().expect("frame").expect("valid");
        let (t, flags) = taidoc::decode_datetime(time.message, 0).expect("valid");
        assert_eq!(t, dt(2024, 3, 15, 8, 30, 0));
        let ms = taidoc::record_measurements(Kind::BloodPressure, t, flags, value.message);
        assert_eq!(ms.len(), 2);
        let parts: Vec<(u32, String)> = ms[0]
            .components
            .iter()
            .map(|c| (c.kind.0, c.value.to_string()))
            .collect();
        assert_eq!(
            parts,
            vec![
                (150021, "128".into()),
                (150022, "80".into()),
                (150023, "96".into())
            ]
        );
        assert_eq!(ms[0].components[0].unit.ucum, "mm[Hg]");
        assert_eq!(ms[1].kind, mdc::PULS_RATE_NON_INV);
        assert_eq!(num(&ms[1].value), "72");
        assert_eq!(time_of(&ms[0]), Some(t));
    }

    #[test]
    fn synthetic_glucose_record() {
        let report =
            decode_capture(Protocol::Taidoc, &hex("51 26 69 00 00 40 A5 C5")).expect("decodes");
        let m = &report.readings[0].measurement;
        assert_eq!(num(&m.value), "105");
        assert_eq!(m.unit.as_ref().map(|u| u.ucum.as_str()), Some("mg/dL"));
        // Byte 3 = 0x40: record type "before a meal" (bits 7-6), glucose test (bits 5-2).
        assert_eq!(
            m.qualifiers.context,
            vec![crate::model::ContextItem {
                kind: mdc::CTXT_GLU_MEAL,
                value: crate::model::ContextValue::Code(mdc::CTXT_GLU_MEAL_PREPRANDIAL),
                duration_s: None,
            }]
        );
    }

    #[test]
    fn capture_with_model_time_and_value() {
        // Model TD-3128 (BP), then a record.
        let mut bytes = taidoc::Frame::response(cmd::READ_MODEL, [0x28, 0x31, 0, 0])
            .encode()
            .to_vec();
        bytes.extend(hex("51 25 6F 30 1E 08 A5 E0 51 26 80 60 50 48 A5 94"));
        let r = decode_capture(Protocol::Taidoc, &bytes).expect("decodes");
        assert_eq!(r.device.model.as_deref(), Some("TD-3128"));
        assert_eq!(r.readings.len(), 2);
        assert_eq!(
            r.readings[0].dedup_key(),
            "ts:2024-03-15T08:30:00/150020/u-1"
        );
        assert_eq!(r.readings[0].raw.len(), 16);
    }

    #[test]
    fn framer_resyncs_after_garbage_and_reports_bad_checksums() {
        let mut bytes = hex("00 51 FF 13 51");
        bytes.extend(hex("51 26 69 00 00 40 A5 C6")); // checksum off by one
        bytes.extend(hex("51 26 69 00 00 40 A5 C5"));
        let mut f = Framer::new(taidoc::DEVICE);
        f.push(&bytes);
        let mut items = Vec::new();
        while let Some(i) = f.next() {
            items.push(i);
        }
        assert!(matches!(
            items[0],
            Err(SerialError::Garbage {
                offset: 0,
                len: 5,
                ..
            })
        ));
        assert!(matches!(
            items[1],
            Err(SerialError::Checksum {
                offset: 5,
                computed: 0xC5,
                received: 0xC6,
                ..
            })
        ));
        assert!(matches!(items[2], Ok(Frame { command: 0x26, .. })));
        assert_eq!(items.len(), 3);
        let e = items[1].clone().expect_err("checksum");
        assert_eq!(
            e.to_string(),
            "taidoc: bad checksum in the frame at offset 5: computed 0xc5, frame says 0xc6"
        );
    }

    #[test]
    fn kind_from_model() {
        assert_eq!(Kind::from_model("TD-3128"), Kind::BloodPressure);
        assert_eq!(Kind::from_model("TD-4277"), Kind::Glucose);
        assert_eq!(Kind::from_model("TD-1241"), Kind::Thermometer);
        assert_eq!(taidoc::decode_model([0x77, 0x42, 0, 0]), "TD-4277");
    }
}

/// A scripted TaiDoc device for the session tests: answers every request.
fn taidoc_device(records: &[(LocalDateTime, [u8; 4])], model: [u8; 2], req: &[u8]) -> Vec<u8> {
    use crate::serial::taidoc::{Frame, cmd, encode_datetime};
    let c = req[1];
    let index = usize::from(u16::from_le_bytes([req[2], req[3]]));
    let msg = match c {
        cmd::CONNECT => [0; 4],
        cmd::READ_MODEL => [model[0], model[1], 0, 0],
        cmd::READ_CLOCK => encode_datetime(&dt(2024, 3, 16, 9, 0, 0)),
        cmd::RECORD_COUNT => {
            let [a, b] = (records.len() as u16).to_le_bytes();
            [a, b, 0, 0]
        }
        cmd::RECORD_TIME => encode_datetime(&records[index].0),
        cmd::RECORD_VALUE => records[index].1,
        // Serial number 1122334455667788: each half sent in reverse byte order.
        cmd::SERIAL_HIGH => [0x44, 0x33, 0x22, 0x11],
        cmd::SERIAL_LOW => [0x88, 0x77, 0x66, 0x55],
        other => [other, 0, 0, 0],
    };
    Frame::response(c, msg).encode().to_vec()
}

/// Runs a request/response session against `device` until it stops asking; returns all
/// events. Requests the device answers with `None` go unanswered (a timeout follows).
fn drive(
    s: &mut dyn Session,
    mut device: impl FnMut(&[u8]) -> Option<Vec<u8>>,
    commit: bool,
) -> Vec<Event> {
    let mut all = Vec::new();
    let mut now = 0u64;
    let mut out = Vec::new();
    s.start(now, &mut out);
    for _ in 0..10_000 {
        if out.is_empty() {
            if s.is_done() {
                break;
            }
            let Some(d) = s.deadline() else { break };
            now = now.max(d);
            s.on_timeout(now, &mut out);
            continue;
        }
        let events = std::mem::take(&mut out);
        for e in events {
            now += 1;
            match &e {
                Event::Send(b) => {
                    if let Some(reply) = device(b) {
                        s.receive(now, &reply, &mut out);
                    }
                }
                Event::DownloadComplete { .. } if commit => s.committed(now, &mut out),
                _ => {}
            }
            all.push(e);
        }
    }
    all
}

fn records_of(events: &[Event]) -> Vec<&Measurement> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Record(r) => Some(&r.measurement),
            _ => None,
        })
        .collect()
}

#[test]
fn taidoc_session_downloads_then_resumes_from_the_cursor_and_clears_after_commit() {
    let recs = vec![
        (dt(2024, 3, 15, 8, 30, 0), [0x69, 0, 0, 0x40]),
        (dt(2024, 3, 14, 20, 0, 0), [0x80, 0, 0, 0x80]),
        (dt(2024, 3, 14, 7, 5, 0), [0x70, 0, 0, 0]),
    ];
    let mut s = taidoc::TaidocSession::new(SessionOptions::default());
    let events = drive(
        &mut s,
        |r| Some(taidoc_device(&recs, [0x77, 0x42], r)),
        true,
    );
    let ms = records_of(&events);
    assert_eq!(ms.len(), 3);
    assert_eq!(num(&ms[0].value), "105");
    assert_eq!(time_of(ms[2]), Some(dt(2024, 3, 14, 7, 5, 0)));
    assert!(events.contains(&Event::DeviceClock(dt(2024, 3, 16, 9, 0, 0))));
    let cursor = events.iter().find_map(|e| match e {
        Event::DownloadComplete { cursor } => cursor.clone(),
        _ => None,
    });
    assert_eq!(cursor.as_deref(), Some("2024-03-15T08:30:00"));
    assert!(s.is_done());
    // No clear unless configured.
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Send(b) if b[1] == 0x52))
    );

    // Second session from the cursor, with one new record on top and clearing on.
    let mut recs2 = vec![(dt(2024, 3, 16, 7, 0, 0), [0x64, 0, 0, 0])];
    recs2.extend(recs.iter().copied());
    let mut s = taidoc::TaidocSession::new(SessionOptions {
        cursor,
        clear_memory: true,
        set_clock: None,
    });
    let events = drive(
        &mut s,
        |r| Some(taidoc_device(&recs2, [0x77, 0x42], r)),
        true,
    );
    assert_eq!(records_of(&events).len(), 1, "only the new record");
    let sends: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            Event::Send(b) => Some(b[1]),
            _ => None,
        })
        .collect();
    assert_eq!(
        sends,
        vec![0x22, 0x24, 0x28, 0x27, 0x23, 0x2B, 0x25, 0x26, 0x25, 0x52]
    );
    // The serial number (commands 0x28 then 0x27) identifies the meter wherever it is
    // plugged in.
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Device(d) if d.serial_number.as_deref() == Some("1122334455667788")
    )));
    let done_at = events
        .iter()
        .position(|e| matches!(e, Event::DownloadComplete { .. }))
        .expect("complete");
    let clear_at = events
        .iter()
        .position(|e| matches!(e, Event::Send(b) if b[1] == 0x52))
        .expect("clear");
    assert!(
        clear_at > done_at,
        "memory is cleared only after the commit"
    );
}

#[test]
fn taidoc_session_retries_and_gives_up() {
    let recs = vec![(dt(2024, 3, 15, 8, 30, 0), [0x69, 0, 0, 0x40])];
    // Every request is answered only on its second try.
    let mut seen = std::collections::HashSet::new();
    let mut s = taidoc::TaidocSession::new(SessionOptions::default());
    let events = drive(
        &mut s,
        |r| {
            if seen.insert(r.to_vec()) {
                None
            } else {
                Some(taidoc_device(&recs, [0x77, 0x42], r))
            }
        },
        true,
    );
    assert_eq!(records_of(&events).len(), 1);

    let mut s = taidoc::TaidocSession::new(SessionOptions::default());
    let events = drive(&mut s, |_| None, true);
    assert!(matches!(
        events.last(),
        Some(Event::Fatal(SerialError::NoAnswer { tries: 5, .. }))
    ));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Send(_)))
            .count(),
        5
    );
}

// ---------------------------------------------------------------- Nonin (test-vectors.md)

mod nonin_examples {
    use super::*;
    use crate::serial::nonin::{self, Format, Framer, Item, Packetizer};

    fn frames(text: &str, format: Format) -> Vec<nonin::Frame> {
        let mut f = Framer::new(format);
        f.push(&hex(text));
        let mut out = Vec::new();
        while let Some(i) = f.next() {
            match i.expect("valid") {
                Item::Frame(fr) => out.push(fr),
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }

    /// A DF2 packet: the four documented frames, then 21 filler frames.
    fn df2_packet(status: u8) -> Vec<u8> {
        let mut b = hex("01 81 01 00 83 01 80 01 48 CA 01 80 01 61 E3 01 80 01 30 B2");
        b[1] = status | 1;
        b[4] = b[..4].iter().fold(0u8, |a, x| a.wrapping_add(*x));
        for _ in 0..21 {
            b.extend(hex("01 80 01 00 82"));
        }
        b
    }

    #[test]
    fn df2_test_vectors() {
        let f = frames(
            "01 81 01 00 83 01 80 01 48 CA 01 80 01 61 E3 01 80 01 30 B2",
            Format::Df2,
        );
        assert_eq!(f.len(), 4);
        assert!(f[0].is_sync() && !f[1].is_sync());
        assert_eq!([f[1].data, f[2].data, f[3].data], [0x48, 0x61, 0x30]);
        let f = frames("01 86 01 61 E9", Format::Df2);
        assert_eq!(f[0].status & 0x06, 0x06, "yellow perfusion");
        let f = frames("01 C0 01 00 C2", Format::Df2);
        assert_eq!(f[0].status & nonin::status::SNSD, nonin::status::SNSD);
    }

    #[test]
    fn df2_packet_gives_hr_72_spo2_97_firmware_48() {
        let r = decode_capture(Protocol::NoninDf2, &df2_packet(0x80)).expect("decodes");
        assert_eq!(r.readings.len(), 2);
        assert_eq!(r.readings[0].measurement.kind, mdc::PULS_OXIM_SAT_O2);
        assert_eq!(num(&r.readings[0].measurement.value), "97");
        assert_eq!(r.readings[1].measurement.kind, mdc::PULS_OXIM_PULS_RATE);
        assert_eq!(num(&r.readings[1].measurement.value), "72");
        assert_eq!(r.device.firmware.as_deref(), Some("48"));
        // A disconnected sensor gives no values.
        let r = decode_capture(Protocol::NoninDf2, &df2_packet(0xC0));
        assert!(r.map(|r| r.readings.is_empty()).unwrap_or(true));
    }

    #[test]
    fn hr_uses_the_two_bit_msb_mask() {
        let mut fr = vec![nonin::Frame {
            status: 0x81,
            pleth: 0,
            data: 0x03,
        }];
        fr.push(nonin::Frame {
            status: 0x80,
            pleth: 0,
            data: 0x7F,
        });
        fr.push(nonin::Frame {
            status: 0x80,
            pleth: 0,
            data: 95,
        });
        while fr.len() < 25 {
            fr.push(nonin::Frame {
                status: 0x80,
                pleth: 0,
                data: 0,
            });
        }
        let v = nonin::decode_packet(Format::Df2, &fr).expect("packet");
        assert_eq!(v.pulse, None, "511 is the missing sentinel");
        fr[0].data = 0x01;
        fr[1].data = 0x04;
        let v = nonin::decode_packet(Format::Df2, &fr).expect("packet");
        assert_eq!(v.pulse, Some(132));
    }

    #[test]
    fn df2_resync_bad_checksum_and_early_sync() {
        let mut b = hex("FF 00 13");
        let mut p = df2_packet(0x80);
        b.extend(p.clone());
        p[14] ^= 0xFF; // corrupt the SpO2 frame's checksum
        b.extend(p.clone());
        b.extend(df2_packet(0x80)[..50].to_vec()); // cut short by the next SYNC
        b.extend(df2_packet(0x80));
        let r = decode_capture(Protocol::NoninDf2, &b).expect("decodes");
        assert_eq!(r.readings.len(), 4, "two good packets");
        let kinds: Vec<&str> = r.problems.iter().map(|e| e.kind()).collect();
        assert_eq!(kinds, vec!["garbage", "checksum", "invalid"]);
        assert!(matches!(
            r.problems[0],
            SerialError::Garbage {
                offset: 0,
                len: 3,
                ..
            }
        ));
        assert!(matches!(
            r.problems[1],
            SerialError::Checksum { offset: 138, .. }
        ));
    }

    #[test]
    fn df7_frames_and_command_answers() {
        assert_eq!(
            nonin::command::SET_FORMAT_DF7[6],
            0x70u8.wrapping_add(4 + 2 + 7 + 0x21)
        );
        let mut bytes = vec![nonin::ACK];
        bytes.extend(hex("02 F4 09"));
        bytes.extend(b"501234567");
        bytes.push(0x03);
        let mut frames = Vec::new();
        for i in 0..25u8 {
            let f = nonin::Frame {
                status: 0x80 | u8::from(i == 0),
                pleth: 0x1234,
                data: match i {
                    0 => 0,
                    1 => 72,
                    2 => 97,
                    3 => 12,
                    _ => 0,
                },
            };
            frames.push(f);
            bytes.extend(f.encode(Format::Df7));
        }
        let mut f = Framer::new(Format::Df7);
        f.push(&bytes);
        assert_eq!(f.next(), Some(Ok(Item::Ack)));
        assert!(matches!(
            f.next(),
            Some(Ok(Item::Response { opcode: 0xF4, ref data })) if data == b"501234567"
        ));
        let mut pk = Packetizer::default();
        let mut packet = None;
        while let Some(Ok(Item::Frame(fr))) = f.next() {
            if let Some(p) = pk.push(Protocol::NoninDf7, fr, 0) {
                packet = Some(p.expect("packet"));
            }
        }
        let v = nonin::decode_packet(Format::Df7, &packet.expect("a packet")).expect("values");
        assert_eq!((v.spo2, v.pulse, v.firmware), (Some(97), Some(72), 12));
    }

    #[test]
    fn ascii_lines() {
        let r = decode_capture(Protocol::NoninAscii, b"SPO2=097 HR=072\r\n").expect("decodes");
        assert_eq!(num(&r.readings[0].measurement.value), "97");
        assert_eq!(num(&r.readings[1].measurement.value), "72");
        let text = b"Nonin 9847 format 1 12/03/24 10:00:00\r\n12:00:01 SPO2=--- HR=---\r\n\
            12:00:02 SPO2=098 HR=101 F*\r\nSPO2=0x9 HR=072\r\n";
        let r = decode_capture(Protocol::NoninAscii, text).expect("decodes");
        assert_eq!(
            r.readings.len(),
            2,
            "the header and the no-data line give nothing"
        );
        assert_eq!(num(&r.readings[1].measurement.value), "101");
        assert_eq!(r.problems.len(), 1);
        assert!(
            r.problems[0].to_string().contains("bad SpO2 value"),
            "{}",
            r.problems[0]
        );
    }

    #[test]
    fn nonin_session_negotiates_df7_and_reissues() {
        let mut s = nonin::NoninSession::new(Format::Df7);
        let mut out = Vec::new();
        s.start(0, &mut out);
        assert!(out.contains(&Event::Send(nonin::command::SET_FORMAT_DF7.to_vec())));
        out.clear();
        assert_eq!(s.deadline(), Some(3000), "the silence watchdog comes first");
        s.on_timeout(3000, &mut out);
        assert!(
            out.iter()
                .any(|e| matches!(e, Event::Problem(SerialError::NoAnswer { .. })))
        );
        // Silence renegotiates a DF7 device.
        assert!(out.contains(&Event::Send(nonin::command::SET_FORMAT_DF7.to_vec())));
        out.clear();
        // Reported once per silence: next comes the reissue, not the watchdog again.
        assert_eq!(s.deadline(), Some(8000));
        s.on_timeout(8000, &mut out);
        assert_eq!(
            out,
            vec![Event::Send(nonin::command::SET_FORMAT_DF7.to_vec())]
        );
        out.clear();
        s.receive(8100, &[nonin::ACK], &mut out);
        assert_eq!(out, vec![Event::Send(nonin::command::GET_SERIAL.to_vec())]);
    }
}

// ---------------------------------------------------------------- Contec (test-vectors.md)

mod contec_examples {
    use super::*;
    use crate::serial::contec::{self, Framer, Packet};

    fn packet(text: &str) -> Packet {
        let mut f = Framer::default();
        f.push(&hex(text));
        f.next().expect("a packet").expect("valid")
    }

    #[test]
    fn live_frames() {
        let l = contec::decode_live(&packet("01 E0 85 B3 96 C1 E1 FF FF"));
        assert_eq!(
            (l.signal, l.pleth, l.pulse, l.spo2),
            (5, 0x33, Some(65), Some(97))
        );
        let l = contec::decode_live(&packet("01 E0 85 D5 9A BD E3 FF FF"));
        assert_eq!((l.pulse, l.spo2), (Some(61), Some(99)));
        let l = contec::decode_live(&packet("01 E1 84 C0 90 80 80 FF FF"));
        assert_eq!((l.pulse, l.spo2), (None, None), "finger out");
    }

    #[test]
    fn stored_frames() {
        assert_eq!(
            contec::decode_stored(&packet("0F 80 E2 C6 E2 C6 E2 C6")),
            vec![(Some(98), Some(70)); 3]
        );
        assert_eq!(
            contec::decode_stored(&packet("0F 80 E1 C5 E1 C4 E1 C4")),
            vec![
                (Some(97), Some(69)),
                (Some(97), Some(68)),
                (Some(97), Some(68))
            ]
        );
    }

    #[test]
    fn identity_and_session_metadata_frames() {
        let r = decode_capture(
            Protocol::Contec,
            &hex("02 80 80 B5 B0 C4 A8 C1 A9 02 81 FF AB A0 A0 A0 A0 A0 \
                 04 80 F5 F3 E5 F2 A0 A0 A0 06 80 80 87 0A 80 80 81 \
                 07 80 80 80 94 8E 88 92 12 80 80 80 82 A6 92 80 \
                 0F 80 E2 C6 E2 C6 E2 C6"),
        )
        .expect("decodes");
        assert_eq!(r.device.model.as_deref(), Some("50D(A)+"));
        // "user" is the label the owner sets, not a serial number: it identifies nothing.
        assert_eq!(r.device.serial_number, None);
        assert_eq!(r.device.firmware.as_deref(), Some("protocol 7"));
        assert_eq!(
            contec::decode_date(&packet("07 80 80 80 94 8E 88 92")),
            Some((2014, 8, 18))
        );
        assert_eq!(
            contec::decode_time(&packet("12 80 80 80 82 A6 92 80")),
            (2, 38, 18)
        );
        assert_eq!(packet("0A 80 80 81").byte(3), 1, "one session");
        assert_eq!(packet("06 80 80 87").byte(3), 7, "protocol version 7");
        // Three samples 1 s apart from the session start.
        assert_eq!(r.readings.len(), 6);
        let times: Vec<_> = r.readings.iter().map(|x| time_of(&x.measurement)).collect();
        assert_eq!(times[0], Some(dt(2014, 8, 18, 2, 38, 18)));
        assert_eq!(times[5], Some(dt(2014, 8, 18, 2, 38, 20)));
        assert_eq!(
            r.readings[0].dedup_key(),
            "ts:2014-08-18T02:38:18/150456/u-1"
        );
    }

    #[test]
    fn commands_and_encoding_round_trip() {
        assert_eq!(
            contec::command(0xA8, None),
            [0x7D, 0x81, 0xA8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]
        );
        assert_eq!(contec::command(0xA6, Some(2))[4], 0x82);
        let enc = Packet::encode(0x01, &[0x05, 0x33, 0x16, 0x41, 0x61, 0xFF, 0xFF]);
        assert_eq!(enc, hex("01 E0 85 B3 96 C1 E1 FF FF"));
    }

    #[test]
    fn framer_resyncs_on_corrupted_packets() {
        // A live packet whose byte 5 lost bit 7 (as a line error would), between good ones.
        let mut b = hex("01 E0 85 B3 96 C1 E1 FF FF");
        b.extend(hex("01 E0 85 B3 96 41 E1 FF FF"));
        b.extend(hex("33 33"));
        b.extend(hex("01 E0 85 B3 96 C1 E1 FF FF"));
        let r = decode_capture(Protocol::Contec, &b).expect("decodes");
        assert_eq!(r.readings.len(), 4);
        assert!(
            r.problems.iter().all(|p| p.kind() == "garbage"),
            "{:?}",
            r.problems
        );
        assert!(!r.problems.is_empty());
    }

    #[test]
    fn legacy_stream_is_detected() {
        // Legacy packet: b0 bit 7 set, others clear; `F0 C4 5F` style triplets are the
        // recorded download; live packets look like this.
        let mut d = contec::LegacyDetector::default();
        let pkt = [0x85, 0x33, 0x40, 0x44, 0x5F];
        assert_eq!(contec::decode_legacy(pkt), (5, 0x33, 0xC4, 95));
        let mut at = None;
        for _ in 0..6 {
            at = at.or(d.push(&pkt));
        }
        assert_eq!(at, Some(0));
        // The wiki's recorded-download triplet: pulse 68, SpO2 95.
        let (b0, b1, b2) = (0xF0u8, 0xC4u8, 0x5Fu8);
        assert_eq!((u16::from(b0 & 1) << 7) | u16::from(b1 & 0x7F), 68);
        assert_eq!(b2, 95);
    }

    /// A scripted CMS50 with one stored session of 6 samples.
    fn device(legacy: bool) -> impl FnMut(&[u8]) -> Option<Vec<u8>> {
        let mut live = false;
        move |c: &[u8]| {
            if c[2] == 0xA1 {
                if live {
                    return None;
                }
                live = true;
            }
            if legacy {
                return Some([0x85, 0x33, 0x40, 0x44, 0x5F].repeat(6));
            }
            let p = |k, v: &[u8]| Packet::encode(k, v);
            Some(match c[2] {
                0xA0 => p(0x06, &[0, 7]),
                0xA8 => [
                    p(0x02, &[0, b'5', b'0', b'F', b' ', b' ', b' ']),
                    p(0x02, &[1, b' ', b' ', b' ', b' ', b' ', b' ']),
                ]
                .concat(),
                0xAA => p(0x04, b"sim    "),
                0xA3 => p(0x0A, &[0, 1]),
                0xA5 => [
                    p(0x07, &[0, 0, 20, 24, 3, 15]),
                    p(0x12, &[0, 0, 22, 10, 5, 0]),
                ]
                .concat(),
                0xA6 => [
                    p(0x0F, &[97, 70, 97, 71, 96, 72]),
                    p(0x0F, &[98, 70, 98, 70, 98, 150]),
                ]
                .concat(),
                0xA1 => p(0x01, &[5, 0x33, 0x16, 65, 97, 0xFF, 0xFF]),
                _ => return None,
            })
        }
    }

    #[test]
    fn session_downloads_stored_sessions_then_streams_live() {
        let mut s = contec::ContecSession::new(SessionOptions::default());
        let events = drive(&mut s, device(false), true);
        let samples: Vec<&Sample> = events
            .iter()
            .filter_map(|e| match e {
                Event::Sample(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(samples.len(), 7, "6 stored + 1 live");
        assert_eq!(samples[0].device_time, Some(dt(2024, 3, 15, 22, 10, 5)));
        assert_eq!(
            samples[5].pulse,
            Some(Value::number(150, 0)),
            "pulse above 127 via the high bits"
        );
        assert_eq!(samples[6].device_time, None);
        assert!(events.contains(&Event::DownloadComplete {
            cursor: Some("2024-03-15T22:10:05".into())
        }));
        assert!(events.contains(&Event::StreamEnd));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Device(d) if d.model.as_deref() == Some("50F")))
        );
        // Keep-alives are sent while live.
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Send(c) if c[2] == 0xAF))
        );

        // From the cursor: the stored session is skipped.
        let mut s = contec::ContecSession::new(SessionOptions {
            cursor: Some("2024-03-15T22:10:05".into()),
            ..SessionOptions::default()
        });
        let events = drive(&mut s, device(false), true);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::Send(c) if c[2] == 0xA6))
        );
    }

    #[test]
    fn legacy_device_is_reported_clearly() {
        let mut s = contec::ContecSession::new(SessionOptions::default());
        let events = drive(&mut s, device(true), true);
        let fatal = events.iter().find_map(|e| match e {
            Event::Fatal(e) => Some(e.clone()),
            _ => None,
        });
        let e = fatal.expect("fatal");
        assert_eq!(e.kind(), "legacy-protocol");
        assert!(e.to_string().contains("19200 baud"), "{e}");

        // A device that answers nothing: probe 19200 8O1, then give up and restore 115200.
        let mut s = contec::ContecSession::new(SessionOptions::default());
        let events = drive(&mut s, |_| None, true);
        assert!(events.contains(&Event::Reconfigure(contec::LEGACY_LINE)));
        assert!(events.contains(&Event::Reconfigure(Protocol::Contec.default_line())));
        assert!(matches!(
            events.last(),
            Some(Event::Fatal(SerialError::NoAnswer { .. }))
        ));
    }
}

// ---------------------------------------------------------------- ASTM (test-vectors.md)

mod astm_examples {
    use super::*;
    use crate::serial::astm::{self, Frame, Framer, Item};

    fn frame(bytes: &[u8]) -> Result<Frame, SerialError> {
        let mut f = Framer::default();
        f.push(bytes);
        match f.next().expect("an item") {
            Ok(Item::Frame(fr)) => Ok(fr),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn checksum_worked_example() {
        let f = frame(b"\x021A|B|C|D\r\x03BF\r\n").expect("valid");
        assert_eq!(f.number, 1);
        assert_eq!(f.text, b"A|B|C|D\r");
        assert!(f.last);
        assert_eq!(f.encode(), b"\x021A|B|C|D\r\x03BF\r\n");
    }

    #[test]
    fn frame_number_wrap_vectors() {
        for (bytes, n) in [
            (&b"\x021foo|1\r\x0332\r\n"[..], 1),
            (b"\x022bar|2\r\x0325\r\n", 2),
            (b"\x020H\r\x0388\r\n", 0),
        ] {
            assert_eq!(frame(bytes).expect("valid").number, n);
        }
        let frames = astm::frames_for(&vec!["a".to_owned(); 9], 1, 240);
        let numbers: Vec<u8> = frames.iter().map(|f| f.number).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6, 7, 0, 1]);
        assert!(frames[8].last && !frames[7].last);
    }

    const CONTOUR_HEADER: &[u8] = b"\x04\x021H|\\^&||7w3LBL|Bayer7390^01.24\\01.04\\09.02.20^7390-2336773^7403-|A=1^C=63^G=1^I=0200^R=0^S=1^U=0^V=10600^X=070070070070180130150250^Y=360126090050099050300089^Z=1|1714||||||1|201909221304\r\x17D7\r\n\x05";

    #[test]
    fn real_contour_header() {
        let mut f = Framer::default();
        f.push(CONTOUR_HEADER);
        assert_eq!(f.next(), Some(Ok(Item::Eot)));
        let Some(Ok(Item::Frame(fr))) = f.next() else {
            panic!("frame")
        };
        assert!(!fr.last, "ETB");
        assert_eq!(f.next(), Some(Ok(Item::Enq)));
        let text = String::from_utf8(fr.text.clone()).expect("ascii");
        let mut d = astm::Delimiters::default();
        let parsed = astm::parse_record(text.trim_end_matches('\r'), &mut d, 0).expect("parses");
        let astm::Parsed::Header { device, time } = parsed else {
            panic!("header")
        };
        assert_eq!(device.model.as_deref(), Some("Bayer7390"));
        assert_eq!(device.serial_number.as_deref(), Some("7390-2336773"));
        assert_eq!(device.firmware.as_deref(), Some("01.24,01.04,09.02.20"));
        assert_eq!(time, Some(dt(2019, 9, 22, 13, 4, 0)));
    }

    #[test]
    fn real_contour_results() {
        let mut bytes =
            b"\x025R|3|^^^Glucose|93|mg/dL^P||A/M0/T1||201505261150\r\x1774\r\n".to_vec();
        bytes.extend(b"\x024R|2|^^^Glucose|102|mg/dL^P||M0/T1||201402052135\r\x1726\r\n");
        bytes.extend(b"\x025L|1||N\r\x0384\r\n");
        let r = decode_capture(Protocol::Astm, &bytes).expect("decodes");
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.readings.len(), 2);
        let m = &r.readings[0].measurement;
        assert_eq!(m.kind, mdc::CONC_GLU_CAPILLARY_PLASMA);
        assert_eq!(num(&m.value), "93");
        assert_eq!(m.unit.as_ref().map(|u| u.ucum.as_str()), Some("mg/dL"));
        assert_eq!(time_of(m), Some(dt(2015, 5, 26, 11, 50, 0)));
        assert_eq!(m.status[0].bits, astm::FLAG_AFTER_MEAL);
        let m = &r.readings[1].measurement;
        assert_eq!(num(&m.value), "102");
        assert_eq!(time_of(m), Some(dt(2014, 2, 5, 21, 35, 0)));
    }

    #[test]
    fn mmol_values_are_exact_decimals_and_controls_are_kept_apart() {
        let recs = [
            "H|\\^&|||SIM^1.0^SN1||||||||1|202403150800".to_owned(),
            "R|1|^^^Glucose|5.4|mmol/L^W||B||202403150730".to_owned(),
            "R|2|^^^Glucose|6.0|mmol/L^W||C||202403150731".to_owned(),
            "R|3|^^^Glucose|33.3|mmol/L^W||>||202403150732".to_owned(),
            "L|1||N".to_owned(),
        ];
        let bytes: Vec<u8> = astm::frames_for(&recs, 1, 240)
            .iter()
            .flat_map(|f| f.encode())
            .collect();
        let r = decode_capture(Protocol::Astm, &bytes).expect("decodes");
        assert_eq!(r.readings.len(), 3);
        let v = r.readings[0].measurement.value.expect("value");
        assert_eq!(v, Value::number(54, -1));
        assert_eq!(v.to_string(), "5.4");
        // The control test is kept, as what it is; never a patient reading.
        assert_eq!(
            r.readings[1].measurement.qualifiers.sample,
            crate::model::Sample::ControlSolution
        );
        let hi = &r.readings[2].measurement;
        assert_eq!(hi.status[0].bits, astm::FLAG_HI);
        assert_eq!(hi.qualifiers.range, Some(crate::model::OutOfRange::Above));
        assert_eq!(r.device.serial_number.as_deref(), Some("SN1"));
    }

    #[test]
    fn bad_checksum_bad_structure_and_garbage() {
        assert!(matches!(
            frame(b"\x021A|B|C|D\r\x03BE\r\n"),
            Err(SerialError::Checksum {
                computed: 0xBF,
                received: 0xBE,
                ..
            })
        ));
        assert!(matches!(
            frame(b"\x029A\r\x03BF\r\n"),
            Err(SerialError::Invalid { .. })
        ));
        let mut f = Framer::default();
        f.push(b"zz\x021A|B|C|D\r\x03BF\r\n");
        assert!(matches!(
            f.next(),
            Some(Err(SerialError::Garbage {
                offset: 0,
                len: 2,
                ..
            }))
        ));
        assert!(matches!(f.next(), Some(Ok(Item::Frame(_)))));
        // Lowercase hex is accepted on receipt.
        assert!(frame(b"\x021A|B|C|D\r\x03bf\r\n").is_ok());
    }

    #[test]
    fn session_acks_naks_and_completes() {
        let recs = [
            "H|\\^&|||SIM^1.0^SN1||||||||1|202403150800".to_owned(),
            "R|1|^^^Glucose|93|mg/dL^P||||202403150730".to_owned(),
            "L|1||N".to_owned(),
        ];
        let frames: Vec<Vec<u8>> = astm::frames_for(&recs, 1, 240)
            .iter()
            .map(|f| f.encode())
            .collect();
        let mut s = astm::AstmSession::new(SessionOptions::default());
        let mut out = Vec::new();
        s.start(0, &mut out);
        s.receive(1, &[astm::ENQ], &mut out);
        assert_eq!(out, vec![Event::Send(vec![astm::ACK])]);
        out.clear();
        // A damaged frame is NAKed, then accepted when sent again.
        let mut bad = frames[0].clone();
        bad[5] ^= 1;
        s.receive(2, &bad, &mut out);
        assert!(out.contains(&Event::Send(vec![astm::NAK])));
        out.clear();
        for f in &frames {
            s.receive(3, f, &mut out);
        }
        // A retransmission of the last frame (its ACK was lost) is ACKed and ignored.
        s.receive(4, &frames[2], &mut out);
        s.receive(5, &[astm::EOT], &mut out);
        let acks = out
            .iter()
            .filter(|e| **e == Event::Send(vec![astm::ACK]))
            .count();
        assert_eq!(acks, 4);
        assert_eq!(records_of(&out).len(), 1);
        assert!(out.contains(&Event::DeviceClock(dt(2024, 3, 15, 8, 0, 0))));
        assert!(out.contains(&Event::DownloadComplete {
            cursor: Some("2024-03-15T07:30:00".into())
        }));
    }

    #[test]
    fn receiver_timeout_abandons_the_transfer() {
        let mut s = astm::AstmSession::new(SessionOptions::default());
        let mut out = Vec::new();
        s.receive(0, &[astm::ENQ], &mut out);
        assert_eq!(s.deadline(), Some(astm::RECEIVE_TIMEOUT_MS));
        out.clear();
        s.on_timeout(astm::RECEIVE_TIMEOUT_MS, &mut out);
        assert!(matches!(
            out[0],
            Event::Problem(SerialError::NoAnswer { .. })
        ));
        assert_eq!(s.deadline(), None);
    }
}

// ---------------------------------------------------------------- general

#[test]
fn protocol_names_round_trip() {
    for p in Protocol::ALL {
        assert_eq!(p.as_str().parse::<Protocol>(), Ok(p));
    }
    assert!("modbus".parse::<Protocol>().is_err());
}

#[test]
fn cursors_sort_as_text_and_parse_back() {
    let a = dt(2024, 3, 15, 8, 30, 0);
    assert_eq!(parse_cursor(&cursor_of(&a)), Some(a));
    assert!(cursor_of(&dt(2024, 3, 15, 8, 30, 0)) < cursor_of(&dt(2024, 11, 1, 0, 0, 0)));
    assert_eq!(parse_cursor("junk"), None);
}

#[test]
fn capture_of_pure_garbage_is_an_error_naming_the_offset() {
    for p in Protocol::ALL {
        let e = decode_capture(p, &[0xEE; 40]).expect_err("nothing decodes");
        assert_eq!(e.protocol(), p);
        assert_eq!(e.offset(), 0, "{e}");
    }
}

proptest::proptest! {
    /// Any bytes, fed in any chunking, give frames and errors whose offsets lie inside the
    /// input, never a panic; and the result does not depend on the chunking.
    #[test]
    fn framers_never_panic_and_ignore_chunking(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        split in 0usize..600,
    ) {
        for p in Protocol::ALL {
            let whole = decode_capture(p, &bytes);
            if let Err(e) = &whole {
                proptest::prop_assert!(e.offset() <= bytes.len() as u64);
            }
            // Chunked through a session.
            let mut s = session(p, SessionOptions::default());
            let mut out = Vec::new();
            let cut = split.min(bytes.len());
            s.receive(0, &bytes[..cut], &mut out);
            s.receive(1, &bytes[cut..], &mut out);
            for e in &out {
                if let Event::Problem(err) = e {
                    proptest::prop_assert!(err.offset() <= bytes.len() as u64);
                }
            }
        }
    }
}
