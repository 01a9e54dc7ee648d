//! Pulse Oximeter Service 0x1822 (Bluetooth SIG Pulse Oximeter Service; layouts as in the GATT
//! Specification Supplement): PLX Spot-check Measurement 0x2A5E, PLX Continuous Measurement
//! 0x2A5F and PLX Features 0x2A60.

use super::{Reader, bit_struct, local};
use crate::DecodeError;
use crate::ieee11073::Value;
use crate::mdc::{self, MdcCode, Unit};
use crate::model::{Condition, Measurement, Origin, Sample as SampleKind, StatusBits};
use crate::stream::{Sample, StreamSource};
use crate::time::LocalDateTime;

const SPOT: &str = "2A5E";
const CONTINUOUS: &str = "2A5F";
const FEATURES: &str = "2A60";

bit_struct! {
    /// PLX Measurement Status (16 bits; bits 0-4 RFU).
    PlxMeasurementStatus: u16 {
        measurement_ongoing = 5,
        early_estimated_data = 6,
        validated_data = 7,
        fully_qualified_data = 8,
        data_from_measurement_storage = 9,
        data_for_demonstration = 10,
        data_for_testing = 11,
        calibration_ongoing = 12,
        measurement_unavailable = 13,
        questionable_measurement_detected = 14,
        invalid_measurement_detected = 15,
    }
}

bit_struct! {
    /// PLX Device and Sensor Status (24 bits on the wire; bits 16-23 RFU).
    PlxDeviceSensorStatus: u32 {
        extended_display_update_ongoing = 0,
        equipment_malfunction_detected = 1,
        signal_processing_irregularity_detected = 2,
        inadequate_signal_detected = 3,
        poor_signal_detected = 4,
        low_perfusion_detected = 5,
        erratic_signal_detected = 6,
        nonpulsatile_signal_detected = 7,
        questionable_pulse_detected = 8,
        signal_analysis_ongoing = 9,
        sensor_interference_detected = 10,
        sensor_unconnected_to_user = 11,
        unknown_sensor_connected = 12,
        sensor_displaced = 13,
        sensor_malfunctioning = 14,
        sensor_disconnected = 15,
    }
}

/// One SpO2 / pulse-rate pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpO2Pr {
    /// Percent.
    pub spo2: Value,
    /// Beats per minute.
    pub pulse_rate: Value,
}

/// PLX Spot-check Measurement (0x2A5E).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlxSpotCheck {
    pub reading: SpO2Pr,
    /// Flag bit 0.
    pub timestamp: Option<LocalDateTime>,
    /// Flag bit 1.
    pub measurement_status: Option<PlxMeasurementStatus>,
    /// Flag bit 2.
    pub device_sensor_status: Option<PlxDeviceSensorStatus>,
    /// Flag bit 3: pulse amplitude index, percent.
    pub pulse_amplitude_index: Option<Value>,
    /// Flag bit 4: the device says its clock is not set, so the timestamp is unusable.
    pub device_clock_not_set: bool,
}

/// PLX Continuous Measurement (0x2A5F). It has no timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlxContinuous {
    pub normal: SpO2Pr,
    /// Flag bit 0.
    pub fast: Option<SpO2Pr>,
    /// Flag bit 1.
    pub slow: Option<SpO2Pr>,
    /// Flag bit 2.
    pub measurement_status: Option<PlxMeasurementStatus>,
    /// Flag bit 3.
    pub device_sensor_status: Option<PlxDeviceSensorStatus>,
    /// Flag bit 4.
    pub pulse_amplitude_index: Option<Value>,
}

fn pair(r: &mut Reader<'_>) -> Result<SpO2Pr, DecodeError> {
    Ok(SpO2Pr {
        spo2: r.sfloat()?,
        pulse_rate: r.sfloat()?,
    })
}

/// Decodes PLX Spot-check Measurement (0x2A5E).
pub fn decode_spot_check(bytes: &[u8]) -> Result<PlxSpotCheck, DecodeError> {
    let mut r = Reader::new(SPOT, bytes);
    let flags = r.u8()?;
    let reading = pair(&mut r)?;
    let timestamp = (flags & 0x01 != 0).then(|| r.date_time()).transpose()?;
    let measurement_status = (flags & 0x02 != 0)
        .then(|| r.u16_le().map(PlxMeasurementStatus::from_bits))
        .transpose()?;
    let device_sensor_status = (flags & 0x04 != 0)
        .then(|| r.u24_le().map(PlxDeviceSensorStatus::from_bits))
        .transpose()?;
    let pulse_amplitude_index = (flags & 0x08 != 0).then(|| r.sfloat()).transpose()?;
    r.finish()?;
    Ok(PlxSpotCheck {
        reading,
        timestamp,
        measurement_status,
        device_sensor_status,
        pulse_amplitude_index,
        device_clock_not_set: flags & 0x10 != 0,
    })
}

/// Decodes PLX Continuous Measurement (0x2A5F).
pub fn decode_continuous(bytes: &[u8]) -> Result<PlxContinuous, DecodeError> {
    let mut r = Reader::new(CONTINUOUS, bytes);
    let flags = r.u8()?;
    let normal = pair(&mut r)?;
    let fast = (flags & 0x01 != 0).then(|| pair(&mut r)).transpose()?;
    let slow = (flags & 0x02 != 0).then(|| pair(&mut r)).transpose()?;
    let measurement_status = (flags & 0x04 != 0)
        .then(|| r.u16_le().map(PlxMeasurementStatus::from_bits))
        .transpose()?;
    let device_sensor_status = (flags & 0x08 != 0)
        .then(|| r.u24_le().map(PlxDeviceSensorStatus::from_bits))
        .transpose()?;
    let pulse_amplitude_index = (flags & 0x10 != 0).then(|| r.sfloat()).transpose()?;
    r.finish()?;
    Ok(PlxContinuous {
        normal,
        fast,
        slow,
        measurement_status,
        device_sensor_status,
        pulse_amplitude_index,
    })
}

/// Status fields as the model's status bits. Two status fields share one characteristic, so
/// the device and sensor status is tagged `<uuid>:device-sensor`.
fn status_bits(
    characteristic: &str,
    measurement: Option<PlxMeasurementStatus>,
    device: Option<PlxDeviceSensorStatus>,
) -> Vec<StatusBits> {
    let mut out = Vec::new();
    if let Some(s) = measurement {
        out.push(StatusBits {
            attribute: characteristic.into(),
            bits: u32::from(s.raw),
            width: 16,
        });
    }
    if let Some(s) = device {
        out.push(StatusBits {
            attribute: format!("{characteristic}:device-sensor"),
            bits: s.raw,
            width: 24,
        });
    }
    out
}

/// SpO2 (150456, %), pulse rate (149530, /min) and, when present, the pulse amplitude index
/// (150320, %), each tagged with `modality` as a supplemental type when given.
fn readings(
    pair: SpO2Pr,
    pai: Option<Value>,
    modality: Option<MdcCode>,
    status: &[StatusBits],
) -> Vec<Measurement> {
    let mut out = vec![
        Measurement::numeric(mdc::PULS_OXIM_SAT_O2, pair.spo2, Unit::percent()),
        Measurement::numeric(
            mdc::PULS_OXIM_PULS_RATE,
            pair.pulse_rate,
            Unit::beats_per_minute(),
        ),
    ];
    out.extend(pai.map(|v| Measurement::numeric(mdc::SAT_O2_QUAL, v, Unit::percent())));
    for m in &mut out {
        m.supplemental.extend(modality);
        m.status = status.to_vec();
    }
    out
}

/// What the PLX Measurement Status says about the values (PLXS 1.0, Measurement Status
/// field; its meanings line up with the IEEE 11073-10206 measurement status the PHD IG maps
/// in PhdBaseObservation "Measurement Status"). "Validated", "fully qualified" and "from
/// storage" need no flag on the value: storage sets the origin instead.
fn qualify(out: &mut [Measurement], status: Option<PlxMeasurementStatus>) {
    let Some(s) = status else {
        return;
    };
    for m in out {
        let q = &mut m.qualifiers;
        for (set, c) in [
            (s.measurement_ongoing, Condition::Ongoing),
            (s.early_estimated_data, Condition::EarlyEstimate),
            (s.calibration_ongoing, Condition::Calibrating),
            (s.measurement_unavailable, Condition::Unavailable),
            (s.questionable_measurement_detected, Condition::Questionable),
            (s.invalid_measurement_detected, Condition::Invalid),
        ] {
            if set {
                q.add(c);
            }
        }
        if s.data_for_demonstration || s.data_for_testing {
            q.sample = SampleKind::DeviceTest;
        }
    }
}

impl PlxSpotCheck {
    /// SpO2, pulse rate and PAI with the spot modality (150588); flag bit 4 (clock not set)
    /// becomes a time fault.
    pub fn measurements(&self) -> Vec<Measurement> {
        let status = status_bits(SPOT, self.measurement_status, self.device_sensor_status);
        let mut out = readings(
            self.reading,
            self.pulse_amplitude_index,
            Some(mdc::MODALITY_SPOT),
            &status,
        );
        qualify(&mut out, self.measurement_status);
        let stored = self
            .measurement_status
            .is_some_and(|s| s.data_from_measurement_storage);
        for m in &mut out {
            m.device_time = self.timestamp.map(local);
            m.clock.time_fault = self.device_clock_not_set;
            m.qualifiers.origin = if stored {
                Origin::Stored
            } else {
                Origin::Unknown
            };
        }
        out
    }
}

impl PlxContinuous {
    /// The normal pair (no modality), then the fast (150580) and slow (150584) pairs; the PAI
    /// goes with the normal pair. Status applies to all of them.
    pub fn measurements(&self) -> Vec<Measurement> {
        let status = status_bits(
            CONTINUOUS,
            self.measurement_status,
            self.device_sensor_status,
        );
        let mut out = readings(self.normal, self.pulse_amplitude_index, None, &status);
        if let Some(p) = self.fast {
            out.extend(readings(p, None, Some(mdc::MODALITY_FAST), &status));
        }
        if let Some(p) = self.slow {
            out.extend(readings(p, None, Some(mdc::MODALITY_SLOW), &status));
        }
        qualify(&mut out, self.measurement_status);
        for m in &mut out {
            // A continuous measurement has no time stamp: it is sent as it is taken.
            m.qualifiers.origin = Origin::Live;
        }
        out
    }
}

impl PlxContinuous {
    /// The SpO2PR-Normal pair as a stream sample at `at_ms` (the caller's clock), with the
    /// measurement status as conditions and the Device and Sensor Status as status bits. A
    /// value the device marks invalid, unavailable or still being measured, or data for
    /// testing or demonstration, leaves the sample without values: it is kept raw but is
    /// nothing a reduction may count. The Fast and Slow pairs and the pulse amplitude index
    /// stay in the raw stream.
    pub fn sample(&self, at_ms: u64, raw: &[u8]) -> Sample {
        let mut ms = readings(self.normal, None, None, &[]);
        qualify(&mut ms, self.measurement_status);
        let q = ms.first().map(|m| m.qualifiers.clone()).unwrap_or_default();
        let unusable = q.sample != SampleKind::Patient
            || [
                Condition::Invalid,
                Condition::Unavailable,
                Condition::Ongoing,
            ]
            .iter()
            .any(|c| q.has(*c));
        let usable = |v: Value| (!unusable && v.as_decimal().is_some()).then_some(v);
        Sample {
            at_ms,
            spo2: usable(self.normal.spo2),
            pulse: usable(self.normal.pulse_rate),
            device_time: None,
            raw: raw.to_vec(),
            conditions: q.conditions,
            source: StreamSource::Oximeter,
            status: status_bits(CONTINUOUS, None, self.device_sensor_status),
        }
    }
}

bit_struct! {
    /// PLX Supported Features (first field of 0x2A60).
    PlxSupportedFeatures: u16 {
        measurement_status = 0,
        device_sensor_status = 1,
        spot_check_storage = 2,
        spot_check_timestamp = 3,
        spo2pr_fast = 4,
        spo2pr_slow = 5,
        pulse_amplitude_index = 6,
        multiple_bonds = 7,
    }
}

/// PLX Features (0x2A60).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlxFeatures {
    pub supported: PlxSupportedFeatures,
    /// Present when supported bit 0 is set: which measurement status bits the device uses.
    pub measurement_status_support: Option<PlxMeasurementStatus>,
    /// Present when supported bit 1 is set.
    pub device_sensor_status_support: Option<PlxDeviceSensorStatus>,
}

/// Decodes PLX Features (0x2A60).
pub fn decode_features(bytes: &[u8]) -> Result<PlxFeatures, DecodeError> {
    let mut r = Reader::new(FEATURES, bytes);
    let supported = PlxSupportedFeatures::from_bits(r.u16_le()?);
    let measurement_status_support = supported
        .measurement_status
        .then(|| r.u16_le().map(PlxMeasurementStatus::from_bits))
        .transpose()?;
    let device_sensor_status_support = supported
        .device_sensor_status
        .then(|| r.u24_le().map(PlxDeviceSensorStatus::from_bits))
        .transpose()?;
    r.finish()?;
    Ok(PlxFeatures {
        supported,
        measurement_status_support,
        device_sensor_status_support,
    })
}
