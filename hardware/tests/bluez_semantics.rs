//! The emulated BlueZ's D-Bus contract, checked from a plain D-Bus client (zbus proxies, no
//! btleplug): object paths, property types and the `org.bluez.Error.*` answers of
//! hardware/docs/bluez-pitfalls.md ("What clients require of the objects", "BlueZ's error
//! answers"), and the `io.vitalgate.Control1` control interface.

use std::collections::HashMap;
use std::time::Duration;

use vitalgate_hardware::bluez::{Emulator, PeripheralSpec, PrivateBus, Profile};
use zbus::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

const DEV: &str = "/org/bluez/hci0/dev_A0_00_00_00_18_08";

async fn call<R>(
    c: &Connection,
    path: &str,
    iface: &str,
    method: &str,
    body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
) -> zbus::Result<R>
where
    R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
{
    let reply = c
        .call_method(Some("org.bluez"), path, Some(iface), method, body)
        .await?;
    reply.body().deserialize()
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("{other}"),
    }
}

async fn prop(c: &Connection, path: &str, iface: &str, name: &str) -> OwnedValue {
    call(
        c,
        path,
        "org.freedesktop.DBus.Properties",
        "Get",
        &(iface, name),
    )
    .await
    .unwrap_or_else(|e| panic!("Get {iface}.{name} on {path}: {e}"))
}

#[test]
fn bluez_contract_and_control_interface() {
    let bus = PrivateBus::start().expect("bus");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let emu = Emulator::start(
            bus.address(),
            vec![PeripheralSpec::new(Profile::Glucose, "A0:00:00:00:18:08")],
        )
        .await
        .expect("emulator");
        let c = zbus::connection::Builder::address(bus.address())
            .expect("address")
            .build()
            .await
            .expect("client");
        let adapter = "/org/bluez/hci0";
        // Adapter properties btleplug insists on, with BlueZ's types.
        let modalias: String = prop(&c, adapter, "org.bluez.Adapter1", "Modalias")
            .await
            .try_into()
            .expect("s");
        assert!(modalias.starts_with("usb:v"));
        // Discovery: StopDiscovery before starting fails, a second start is InProgress.
        let e = call::<()>(&c, adapter, "org.bluez.Adapter1", "StopDiscovery", &())
            .await
            .expect_err("no discovery");
        assert_eq!(error_name(&e), "org.bluez.Error.Failed");
        let filter: HashMap<&str, Value<'_>> = HashMap::from([
            (
                "UUIDs",
                Value::from(vec!["00001808-0000-1000-8000-00805f9b34fb"]),
            ),
            ("Transport", Value::from("le")),
        ]);
        call::<()>(
            &c,
            adapter,
            "org.bluez.Adapter1",
            "SetDiscoveryFilter",
            &(filter,),
        )
        .await
        .expect("filter");
        let bad: HashMap<&str, Value<'_>> = HashMap::from([("Bogus", Value::from(1u8))]);
        let e = call::<()>(
            &c,
            adapter,
            "org.bluez.Adapter1",
            "SetDiscoveryFilter",
            &(bad,),
        )
        .await
        .expect_err("bad key");
        assert_eq!(error_name(&e), "org.bluez.Error.InvalidArguments");
        call::<()>(&c, adapter, "org.bluez.Adapter1", "StartDiscovery", &())
            .await
            .expect("start");
        let e = call::<()>(&c, adapter, "org.bluez.Adapter1", "StartDiscovery", &())
            .await
            .expect_err("twice");
        assert_eq!(error_name(&e), "org.bluez.Error.InProgress");
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The device appeared with BlueZ's property types.
        let rssi: i16 = prop(&c, DEV, "org.bluez.Device1", "RSSI")
            .await
            .try_into()
            .expect("n");
        assert!(rssi < 0);
        let md: HashMap<u16, OwnedValue> = prop(&c, DEV, "org.bluez.Device1", "ManufacturerData")
            .await
            .try_into()
            .expect("a{qv}");
        assert!(md.contains_key(&0xFFFF));
        let adapter_path: OwnedObjectPath = prop(&c, DEV, "org.bluez.Device1", "Adapter")
            .await
            .try_into()
            .expect("o");
        assert_eq!(adapter_path.as_str(), adapter);
        // Not advertising: BlueZ's connection abort.
        emu.set_advertising("A0:00:00:00:18:08", false);
        let e = call::<()>(&c, DEV, "org.bluez.Device1", "Connect", &())
            .await
            .expect_err("not advertising");
        assert_eq!(error_name(&e), "org.bluez.Error.Failed");
        emu.set_advertising("A0:00:00:00:18:08", true);
        call::<()>(&c, DEV, "org.bluez.Device1", "Connect", &())
            .await
            .expect("connect");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let resolved: bool = prop(&c, DEV, "org.bluez.Device1", "ServicesResolved")
            .await
            .try_into()
            .expect("b");
        assert!(resolved);
        // GATT: glucose service first, RACP at handle 0x000a with its CCCD at 0x000c.
        let svc = format!("{DEV}/service0001");
        let racp = format!("{svc}/char000a");
        let uuid: String = prop(&c, &racp, "org.bluez.GattCharacteristic1", "UUID")
            .await
            .try_into()
            .expect("s");
        assert_eq!(uuid, "00002a52-0000-1000-8000-00805f9b34fb");
        let service: OwnedObjectPath = prop(&c, &racp, "org.bluez.GattCharacteristic1", "Service")
            .await
            .try_into()
            .expect("o");
        assert_eq!(service.as_str(), svc);
        let no: HashMap<&str, Value<'_>> = HashMap::new();
        // RACP before indications: ATT 0xFD.
        let e = call::<()>(
            &c,
            &racp,
            "org.bluez.GattCharacteristic1",
            "WriteValue",
            &(vec![1u8, 1], no.clone()),
        )
        .await
        .expect_err("0xfd");
        assert!(format!("{e}").contains("ATT error: 0xfd"), "{e}");
        // Reads need the read flag; StartNotify needs notify/indicate; offset must be uint16.
        let e = call::<Vec<u8>>(
            &c,
            &racp,
            "org.bluez.GattCharacteristic1",
            "ReadValue",
            &(no.clone(),),
        )
        .await
        .expect_err("write-only");
        assert_eq!(error_name(&e), "org.bluez.Error.NotPermitted");
        let feature = format!("{svc}/char0008");
        let e = call::<()>(
            &c,
            &feature,
            "org.bluez.GattCharacteristic1",
            "StartNotify",
            &(),
        )
        .await
        .expect_err("read-only");
        assert_eq!(error_name(&e), "org.bluez.Error.NotSupported");
        let bad_offset: HashMap<&str, Value<'_>> = HashMap::from([("offset", Value::from(1u64))]);
        let e = call::<Vec<u8>>(
            &c,
            &feature,
            "org.bluez.GattCharacteristic1",
            "ReadValue",
            &(bad_offset,),
        )
        .await
        .expect_err("offset u64");
        assert_eq!(error_name(&e), "org.bluez.Error.InvalidArguments");
        let value: Vec<u8> = call(
            &c,
            &feature,
            "org.bluez.GattCharacteristic1",
            "ReadValue",
            &(no.clone(),),
        )
        .await
        .expect("feature");
        assert_eq!(value, vec![0xF0, 0x03]);
        // StopNotify without a session; the CCCD belongs to BlueZ.
        let e = call::<()>(
            &c,
            &racp,
            "org.bluez.GattCharacteristic1",
            "StopNotify",
            &(),
        )
        .await
        .expect_err("no session");
        assert_eq!(error_name(&e), "org.bluez.Error.Failed");
        let e = call::<()>(
            &c,
            &format!("{racp}/desc000c"),
            "org.bluez.GattDescriptor1",
            "WriteValue",
            &(vec![2u8, 0], no.clone()),
        )
        .await
        .expect_err("cccd");
        assert_eq!(error_name(&e), "org.bluez.Error.NotPermitted");
        // With indications on, a count request answers "05 00 <count>".
        call::<()>(
            &c,
            &racp,
            "org.bluez.GattCharacteristic1",
            "StartNotify",
            &(),
        )
        .await
        .expect("notify");
        call::<()>(
            &c,
            &racp,
            "org.bluez.GattCharacteristic1",
            "WriteValue",
            &(vec![4u8, 1], no.clone()),
        )
        .await
        .expect("count");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let v: Vec<u8> = prop(&c, &racp, "org.bluez.GattCharacteristic1", "Value")
            .await
            .try_into()
            .expect("ay");
        assert_eq!(v, vec![0x05, 0x00, 3, 0]);
        // Unsupported op code, invalid operator, and abort during a report.
        call::<()>(
            &c,
            &racp,
            "org.bluez.GattCharacteristic1",
            "WriteValue",
            &(vec![2u8, 1], no.clone()),
        )
        .await
        .expect("delete");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let v: Vec<u8> = prop(&c, &racp, "org.bluez.GattCharacteristic1", "Value")
            .await
            .try_into()
            .expect("ay");
        assert_eq!(v, vec![0x06, 0x00, 2, 2], "op code not supported");
        call::<()>(
            &c,
            &racp,
            "org.bluez.GattCharacteristic1",
            "WriteValue",
            &(vec![1u8, 9], no.clone()),
        )
        .await
        .expect("bad operator");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let v: Vec<u8> = prop(&c, &racp, "org.bluez.GattCharacteristic1", "Value")
            .await
            .try_into()
            .expect("ay");
        assert_eq!(v, vec![0x06, 0x00, 1, 3], "invalid operator");
        emu.add_records("A0:00:00:00:18:08", 200);
        call::<()>(
            &c,
            &racp,
            "org.bluez.GattCharacteristic1",
            "WriteValue",
            &(vec![1u8, 1], no.clone()),
        )
        .await
        .expect("report all");
        let e = call::<()>(
            &c,
            &racp,
            "org.bluez.GattCharacteristic1",
            "WriteValue",
            &(vec![1u8, 1], no.clone()),
        )
        .await
        .expect_err("busy");
        assert!(format!("{e}").contains("ATT error: 0xfe"), "{e}");
        call::<()>(
            &c,
            &racp,
            "org.bluez.GattCharacteristic1",
            "WriteValue",
            &(vec![3u8, 0], no.clone()),
        )
        .await
        .expect("abort");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let v: Vec<u8> = prop(&c, &racp, "org.bluez.GattCharacteristic1", "Value")
            .await
            .try_into()
            .expect("ay");
        assert_eq!(v, vec![0x06, 0x00, 3, 1], "abort succeeded");
        // After the abort the meter takes requests again.
        call::<()>(
            &c,
            &racp,
            "org.bluez.GattCharacteristic1",
            "WriteValue",
            &(vec![4u8, 3, 1, 200, 0], no.clone()),
        )
        .await
        .expect("count >= 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let v: Vec<u8> = prop(&c, &racp, "org.bluez.GattCharacteristic1", "Value")
            .await
            .try_into()
            .expect("ay");
        assert_eq!(v, vec![0x05, 0x00, 4, 0]);

        // The control interface: a fault for the next Disconnect, then the call log.
        let ctl = |m: &'static str| (m, "io.vitalgate.Control1");
        let (m, i) = ctl("FailNext");
        c.call_method(
            Some("io.vitalgate.Control"),
            "/io/vitalgate/Control",
            Some(i),
            m,
            &("Disconnect", "org.bluez.Error.NotReady", "injected"),
        )
        .await
        .expect("FailNext");
        let e = call::<()>(&c, DEV, "org.bluez.Device1", "Disconnect", &())
            .await
            .expect_err("injected");
        assert_eq!(error_name(&e), "org.bluez.Error.NotReady");
        call::<()>(&c, DEV, "org.bluez.Device1", "Disconnect", &())
            .await
            .expect("disconnect");
        assert!(!emu.is_connected("A0:00:00:00:18:08"));
        let (m, i) = ctl("GetCallLog");
        let log: Vec<String> = c
            .call_method(
                Some("io.vitalgate.Control"),
                "/io/vitalgate/Control",
                Some(i),
                m,
                &(),
            )
            .await
            .expect("GetCallLog")
            .body()
            .deserialize()
            .expect("as");
        assert!(
            log.iter().filter(|l| l.starts_with("Disconnect ")).count() == 2,
            "{log:#?}"
        );
    });
}
