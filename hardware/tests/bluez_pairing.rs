//! The emulated BlueZ's pairing contract, from a plain zbus client with an `org.bluez.Agent1`
//! of its own: AgentManager1 registration rules, `Device1.Pair` calling back into the agent
//! per pairing method, BlueZ's error names for each failure, `CancelPairing`, `Trusted`, and
//! `RemoveDevice` dropping the bond.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vitalgate_hardware::bluez::{Emulator, PairingMethod, PeripheralSpec, PrivateBus, Profile};
use zbus::Connection;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

const METER: &str = "A0:00:00:00:18:08";
const DEV: &str = "/org/bluez/hci0/dev_A0_00_00_00_18_08";
const AGENT: &str = "/test/agent";

/// What the test agent answers, and what it was asked.
#[derive(Debug, Default)]
struct Script {
    passkey: u32,
    /// Sleep this long before answering (to provoke the timeout).
    stall: Option<Duration>,
    reject: bool,
    asked: Vec<String>,
}

struct TestAgent(Arc<Mutex<Script>>);

#[zbus::interface(name = "org.bluez.Agent1")]
impl TestAgent {
    async fn request_passkey(&self, device: OwnedObjectPath) -> zbus::fdo::Result<u32> {
        let (stall, passkey) = {
            let mut s = self.0.lock().expect("script");
            s.asked.push(format!("RequestPasskey {}", device.as_str()));
            (s.stall, s.passkey)
        };
        if let Some(d) = stall {
            tokio::time::sleep(d).await;
        }
        Ok(passkey)
    }

    async fn request_confirmation(
        &self,
        _device: OwnedObjectPath,
        passkey: u32,
    ) -> Result<(), AgentError> {
        let mut s = self.0.lock().expect("script");
        s.asked.push(format!("RequestConfirmation {passkey}"));
        if s.reject {
            return Err(AgentError::Rejected("no".into()));
        }
        Ok(())
    }

    fn cancel(&self) {
        self.0.lock().expect("script").asked.push("Cancel".into());
    }
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.bluez.Error")]
enum AgentError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Rejected(String),
}

fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("{other}"),
    }
}

async fn call(c: &Connection, path: &str, iface: &str, method: &str) -> zbus::Result<()> {
    c.call_method(Some("org.bluez"), path, Some(iface), method, &())
        .await
        .map(drop)
}

async fn agent_call(
    c: &Connection,
    method: &str,
    body: &(ObjectPath<'_>, &str),
) -> zbus::Result<()> {
    c.call_method(
        Some("org.bluez"),
        "/org/bluez",
        Some("org.bluez.AgentManager1"),
        method,
        body,
    )
    .await
    .map(drop)
}

#[test]
fn pairing_goes_through_the_registered_agent_with_bluez_errors() {
    let bus = PrivateBus::start().expect("bus");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let emu = Emulator::start(
            bus.address(),
            vec![
                PeripheralSpec::new(Profile::Glucose, METER)
                    .unbonded()
                    .with_pairing(PairingMethod::Passkey(123_456)),
            ],
        )
        .await
        .expect("emulator");
        let script = Arc::new(Mutex::new(Script::default()));
        let c = zbus::connection::Builder::address(bus.address())
            .expect("address")
            .serve_at(AGENT, TestAgent(script.clone()))
            .expect("agent object")
            .build()
            .await
            .expect("client");
        let agent = ObjectPath::try_from(AGENT).expect("path");
        // The device must be discovered before it can be paired.
        call(
            &c,
            "/org/bluez/hci0",
            "org.bluez.Adapter1",
            "StartDiscovery",
        )
        .await
        .expect("discover");
        for _ in 0..50 {
            if emu.is_known(METER) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(emu.is_known(METER));

        // Without an agent, a passkey device cannot pair.
        let e = call(&c, DEV, "org.bluez.Device1", "Pair")
            .await
            .expect_err("no agent");
        assert_eq!(error_name(&e), "org.bluez.Error.AuthenticationFailed");

        // Registration: bad capability, default before register, double register.
        let e = agent_call(&c, "RegisterAgent", &(agent.clone(), "Telepathy"))
            .await
            .expect_err("capability");
        assert_eq!(error_name(&e), "org.bluez.Error.InvalidArguments");
        let e = c
            .call_method(
                Some("org.bluez"),
                "/org/bluez",
                Some("org.bluez.AgentManager1"),
                "RequestDefaultAgent",
                &(agent.clone(),),
            )
            .await
            .expect_err("not registered");
        assert_eq!(error_name(&e), "org.bluez.Error.DoesNotExist");
        agent_call(&c, "RegisterAgent", &(agent.clone(), "KeyboardDisplay"))
            .await
            .expect("register");
        let e = agent_call(&c, "RegisterAgent", &(agent.clone(), "KeyboardDisplay"))
            .await
            .expect_err("twice");
        assert_eq!(error_name(&e), "org.bluez.Error.AlreadyExists");
        c.call_method(
            Some("org.bluez"),
            "/org/bluez",
            Some("org.bluez.AgentManager1"),
            "RequestDefaultAgent",
            &(agent.clone(),),
        )
        .await
        .expect("default");

        // Wrong passkey.
        script.lock().expect("script").passkey = 111_111;
        let e = call(&c, DEV, "org.bluez.Device1", "Pair")
            .await
            .expect_err("wrong");
        assert_eq!(error_name(&e), "org.bluez.Error.AuthenticationFailed");
        assert!(!emu.is_paired(METER));
        assert_eq!(
            script.lock().expect("script").asked,
            vec![format!("RequestPasskey {DEV}")]
        );

        // An agent that does not answer in time gets Cancel; Pair times out.
        emu.set_agent_timeout(Duration::from_millis(300));
        script.lock().expect("script").stall = Some(Duration::from_secs(2));
        let e = call(&c, DEV, "org.bluez.Device1", "Pair")
            .await
            .expect_err("timeout");
        assert_eq!(error_name(&e), "org.bluez.Error.AuthenticationTimeout");
        assert!(
            script
                .lock()
                .expect("script")
                .asked
                .contains(&"Cancel".to_owned())
        );

        // CancelPairing while the agent is being asked.
        script.lock().expect("script").asked.clear();
        emu.set_agent_timeout(Duration::from_secs(10));
        let pairing = {
            let c = c.clone();
            tokio::spawn(async move { call(&c, DEV, "org.bluez.Device1", "Pair").await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        call(&c, DEV, "org.bluez.Device1", "CancelPairing")
            .await
            .expect("cancel");
        let e = pairing.await.expect("task").expect_err("canceled");
        assert_eq!(error_name(&e), "org.bluez.Error.AuthenticationCanceled");
        let e = call(&c, DEV, "org.bluez.Device1", "CancelPairing")
            .await
            .expect_err("nothing to cancel");
        assert_eq!(error_name(&e), "org.bluez.Error.DoesNotExist");

        // The right passkey bonds; a second Pair is AlreadyExists.
        {
            let mut s = script.lock().expect("script");
            s.stall = None;
            s.passkey = 123_456;
        }
        call(&c, DEV, "org.bluez.Device1", "Pair")
            .await
            .expect("pair");
        assert!(emu.is_paired(METER));
        let e = call(&c, DEV, "org.bluez.Device1", "Pair")
            .await
            .expect_err("again");
        assert_eq!(error_name(&e), "org.bluez.Error.AlreadyExists");

        // Trusted is writable.
        c.call_method(
            Some("org.bluez"),
            DEV,
            Some("org.freedesktop.DBus.Properties"),
            "Set",
            &(
                "org.bluez.Device1",
                "Trusted",
                zbus::zvariant::Value::from(true),
            ),
        )
        .await
        .expect("set trusted");
        assert!(emu.is_trusted(METER));

        // RemoveDevice drops the bond and the object.
        c.call_method(
            Some("org.bluez"),
            "/org/bluez/hci0",
            Some("org.bluez.Adapter1"),
            "RemoveDevice",
            &(ObjectPath::try_from(DEV).expect("path"),),
        )
        .await
        .expect("remove");
        assert!(!emu.is_paired(METER) && !emu.is_trusted(METER));

        // Numeric comparison that the agent rejects.
        emu.set_pairing(METER, PairingMethod::Confirmation(42));
        script.lock().expect("script").reject = true;
        for _ in 0..50 {
            if emu.is_known(METER) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let e = call(&c, DEV, "org.bluez.Device1", "Pair")
            .await
            .expect_err("rejected");
        assert_eq!(error_name(&e), "org.bluez.Error.AuthenticationRejected");
        assert!(
            script
                .lock()
                .expect("script")
                .asked
                .contains(&"RequestConfirmation 42".to_owned())
        );
        // Unregistering twice: the second is DoesNotExist.
        c.call_method(
            Some("org.bluez"),
            "/org/bluez",
            Some("org.bluez.AgentManager1"),
            "UnregisterAgent",
            &(agent.clone(),),
        )
        .await
        .expect("unregister");
        let e = c
            .call_method(
                Some("org.bluez"),
                "/org/bluez",
                Some("org.bluez.AgentManager1"),
                "UnregisterAgent",
                &(agent.clone(),),
            )
            .await
            .expect_err("gone");
        assert_eq!(error_name(&e), "org.bluez.Error.DoesNotExist");
    });
}
