//! Pairing as BlueZ does it over D-Bus: `org.bluez.AgentManager1` on `/org/bluez` (clients
//! register an `org.bluez.Agent1` object of their own), and `Device1.Pair`, which connects,
//! then calls back into the caller's agent (or the default one) according to the device's
//! pairing method, and fails with BlueZ's error names: `AuthenticationFailed` for a wrong
//! passkey or an agent that cannot do the method, `AuthenticationRejected` when the agent
//! refuses, `AuthenticationCanceled` on `CancelPairing` or an agent that cancels,
//! `AuthenticationTimeout` when the agent does not answer in time (BlueZ then sends it
//! `Cancel`), `AlreadyExists` for a bonded device. Checked against BlueZ's `src/agent.c`,
//! `src/device.c` (`bonding_request_new`, `device_bonding_complete`) and
//! `doc/org.bluez.Agent.rst`.

use std::sync::Arc;

use zbus::interface;
use zbus::message::Header;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use super::error::BluezError;
use super::link;
use super::profile::PairingMethod;
use super::world::{AgentReg, Core};

pub(crate) const AGENT_MANAGER_PATH: &str = "/org/bluez";

const CAPABILITIES: [&str; 6] = [
    "",
    "DisplayOnly",
    "DisplayYesNo",
    "KeyboardOnly",
    "NoInputNoOutput",
    "KeyboardDisplay",
];

fn sender(h: &Header<'_>) -> String {
    h.sender().map(|s| s.to_string()).unwrap_or_default()
}

/// `org.bluez.AgentManager1`.
#[derive(Debug)]
pub(crate) struct AgentManager {
    pub core: Arc<Core>,
}

#[interface(name = "org.bluez.AgentManager1")]
impl AgentManager {
    async fn register_agent(
        &self,
        agent: OwnedObjectPath,
        capability: String,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<(), BluezError> {
        let who = sender(&h);
        self.core
            .enter("RegisterAgent", AGENT_MANAGER_PATH, Some(&who))
            .await?;
        if !CAPABILITIES.contains(&capability.as_str()) {
            return Err(BluezError::InvalidArguments(
                "Invalid arguments in method call".into(),
            ));
        }
        let mut w = self.core.world();
        if w.agents.contains_key(&who) {
            return Err(BluezError::AlreadyExists("Already Exists".into()));
        }
        let capability = if capability.is_empty() {
            "KeyboardDisplay".to_owned()
        } else {
            capability
        };
        w.agents.insert(
            who,
            AgentReg {
                path: agent.to_string(),
                capability,
            },
        );
        Ok(())
    }

    async fn unregister_agent(
        &self,
        agent: OwnedObjectPath,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<(), BluezError> {
        let who = sender(&h);
        self.core
            .enter("UnregisterAgent", AGENT_MANAGER_PATH, Some(&who))
            .await?;
        let mut w = self.core.world();
        match w.agents.get(&who) {
            Some(a) if a.path == agent.as_str() => {
                w.agents.remove(&who);
                if w.default_agent.as_deref() == Some(who.as_str()) {
                    w.default_agent = None;
                }
                Ok(())
            }
            _ => Err(BluezError::DoesNotExist("No such Agent found".into())),
        }
    }

    async fn request_default_agent(
        &self,
        agent: OwnedObjectPath,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<(), BluezError> {
        let who = sender(&h);
        self.core
            .enter("RequestDefaultAgent", AGENT_MANAGER_PATH, Some(&who))
            .await?;
        let mut w = self.core.world();
        match w.agents.get(&who) {
            Some(a) if a.path == agent.as_str() => {
                w.default_agent = Some(who);
                Ok(())
            }
            _ => Err(BluezError::DoesNotExist("No such Agent found".into())),
        }
    }
}

/// What the agent said, as BlueZ maps it onto the pairing result.
enum AgentAnswer<T> {
    Ok(T),
    Err(BluezError),
}

/// The secret a device expects, as the agent typed it: another one fails as BlueZ fails it.
fn expect_answer<T: PartialEq>(answer: AgentAnswer<T>, expected: &T) -> Result<(), BluezError> {
    match answer {
        AgentAnswer::Ok(given) if given == *expected => Ok(()),
        AgentAnswer::Ok(_) => Err(BluezError::AuthenticationFailed(
            "Authentication Failed".into(),
        )),
        AgentAnswer::Err(e) => Err(e),
    }
}

/// Calls `method` on the agent of `client`, within the agent timeout, aborting on
/// `CancelPairing`. On timeout or cancel, the agent gets `Cancel()` as BlueZ sends it.
async fn ask_agent<T>(
    core: &Arc<Core>,
    client: &str,
    agent_path: &str,
    cancel: &tokio::sync::Notify,
    method: &str,
    body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
) -> AgentAnswer<T>
where
    T: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
{
    let timeout = core.world().agent_timeout;
    let call = core.conn.call_method(
        Some(client),
        agent_path,
        Some("org.bluez.Agent1"),
        method,
        body,
    );
    let outcome = tokio::select! {
        r = tokio::time::timeout(timeout, call) => r.ok(),
        _ = cancel.notified() => {
            send_cancel(core, client, agent_path).await;
            return AgentAnswer::Err(BluezError::AuthenticationCanceled(
                "Authentication Canceled".into(),
            ));
        }
    };
    match outcome {
        None => {
            send_cancel(core, client, agent_path).await;
            AgentAnswer::Err(BluezError::AuthenticationTimeout(
                "Authentication Timeout".into(),
            ))
        }
        Some(Ok(reply)) => match reply.body().deserialize::<T>() {
            Ok(v) => AgentAnswer::Ok(v),
            Err(_) => AgentAnswer::Err(BluezError::AuthenticationFailed(
                "Authentication Failed".into(),
            )),
        },
        // BlueZ (`src/agent.c`): Rejected → rejected, Canceled → canceled, anything else
        // (including a missing agent object) → failed.
        Some(Err(zbus::Error::MethodError(name, _, _))) => AgentAnswer::Err(match name.as_str() {
            "org.bluez.Error.Rejected" => {
                BluezError::AuthenticationRejected("Authentication Rejected".into())
            }
            "org.bluez.Error.Canceled" => {
                BluezError::AuthenticationCanceled("Authentication Canceled".into())
            }
            _ => BluezError::AuthenticationFailed("Authentication Failed".into()),
        }),
        Some(Err(_)) => AgentAnswer::Err(BluezError::AuthenticationFailed(
            "Authentication Failed".into(),
        )),
    }
}

async fn send_cancel(core: &Core, client: &str, agent_path: &str) {
    let _ = core
        .conn
        .call_method(
            Some(client),
            agent_path,
            Some("org.bluez.Agent1"),
            "Cancel",
            &(),
        )
        .await;
}

/// `Device1.Pair` called by `caller` on the device `address` at `path`.
pub(crate) async fn pair(
    core: &Arc<Core>,
    address: &str,
    path: &str,
    caller: &str,
) -> Result<(), BluezError> {
    let (method, cancel, agent) = {
        let mut w = core.world();
        let agent = w
            .agents
            .get(caller)
            .map(|a| (caller.to_owned(), a.clone()))
            .or_else(|| {
                let d = w.default_agent.clone()?;
                w.agents.get(&d).map(|a| (d.clone(), a.clone()))
            });
        let Some(d) = w.devices.get_mut(address) else {
            return Err(BluezError::DoesNotExist("Does Not Exist".into()));
        };
        if d.paired {
            return Err(BluezError::AlreadyExists("Already Exists".into()));
        }
        if d.pairing_cancel.is_some() {
            return Err(BluezError::InProgress("In Progress".into()));
        }
        let cancel = Arc::new(tokio::sync::Notify::new());
        d.pairing_cancel = Some(cancel.clone());
        (d.spec.pairing.clone(), cancel, agent)
    };
    let result = pair_steps(core, address, path, &method, &cancel, agent).await;
    {
        let mut w = core.world();
        if let Some(d) = w.devices.get_mut(address) {
            d.pairing_cancel = None;
            if result.is_ok() {
                d.paired = true;
            }
        }
    }
    match result {
        Ok(()) => {
            core.changed(
                path,
                "org.bluez.Device1",
                vec![("Paired", true.into()), ("Bonded", true.into())],
            )
            .await;
            Ok(())
        }
        Err(e) => {
            // A failed pairing leaves the link BlueZ opened for it down again.
            link::disconnect(core, address).await;
            Err(e)
        }
    }
}

async fn pair_steps(
    core: &Arc<Core>,
    address: &str,
    path: &str,
    method: &PairingMethod,
    cancel: &tokio::sync::Notify,
    agent: Option<(String, AgentReg)>,
) -> Result<(), BluezError> {
    // LE pairing runs over a connection; BlueZ opens one when there is none.
    let was_connected = core
        .world()
        .devices
        .get(address)
        .is_some_and(|d| d.connected);
    if !was_connected {
        link::connect(core, address)
            .await
            .map_err(|_| BluezError::ConnectionAttemptFailed("Page Timeout".into()))?;
    }
    // A device that is slow to complete pairing; CancelPairing still ends it at once.
    let slow = core
        .world()
        .devices
        .get(address)
        .and_then(|d| d.pairing_delay);
    if let Some(delay) = slow {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.notified() => {
                return Err(BluezError::AuthenticationCanceled(
                    "Authentication Canceled".into(),
                ));
            }
        }
    }
    if !method.needs_agent() {
        return Ok(());
    }
    // Without an agent, or with one that can neither show nor type, BlueZ pairs with the
    // NoInputNoOutput capability; a device that needs a passkey then refuses.
    let Some((client, agent)) = agent else {
        return Err(BluezError::AuthenticationFailed(
            "Authentication Failed".into(),
        ));
    };
    if agent.capability == "NoInputNoOutput" {
        return Err(BluezError::AuthenticationFailed(
            "Authentication Failed".into(),
        ));
    }
    let device = ObjectPath::try_from(path.to_owned())
        .map_err(|_| BluezError::Failed("bad device path".into()))?;
    match method {
        PairingMethod::JustWorks => Ok(()),
        PairingMethod::Passkey(expected) => {
            let answer = ask_agent::<u32>(
                core,
                &client,
                &agent.path,
                cancel,
                "RequestPasskey",
                &(device,),
            )
            .await;
            expect_answer(answer, expected)
        }
        PairingMethod::PinCode(expected) => {
            let answer = ask_agent::<String>(
                core,
                &client,
                &agent.path,
                cancel,
                "RequestPinCode",
                &(device,),
            )
            .await;
            expect_answer(answer, expected)
        }
        PairingMethod::Confirmation(passkey) => {
            match ask_agent::<()>(
                core,
                &client,
                &agent.path,
                cancel,
                "RequestConfirmation",
                &(device, *passkey),
            )
            .await
            {
                AgentAnswer::Ok(()) => Ok(()),
                AgentAnswer::Err(e) => Err(e),
            }
        }
        PairingMethod::DisplayPasskey(passkey) => {
            // The user types the shown passkey on the device; the emulated user always
            // types it right. `entered` is the number of digits typed so far.
            match ask_agent::<()>(
                core,
                &client,
                &agent.path,
                cancel,
                "DisplayPasskey",
                &(device, *passkey, 0u16),
            )
            .await
            {
                AgentAnswer::Ok(()) => Ok(()),
                AgentAnswer::Err(e) => Err(e),
            }
        }
    }
}

/// `Device1.CancelPairing`: fails the `Pair` in progress, or `DoesNotExist` when none is.
pub(crate) fn cancel_pairing(core: &Core, address: &str) -> Result<(), BluezError> {
    let w = core.world();
    match w
        .devices
        .get(address)
        .and_then(|d| d.pairing_cancel.clone())
    {
        Some(n) => {
            n.notify_one();
            Ok(())
        }
        None => Err(BluezError::DoesNotExist("Does Not Exist".into())),
    }
}

/// Forgets the agents of a client that left the bus, as BlueZ does.
pub(crate) fn client_gone(core: &Core, client: &str) {
    let mut w = core.world();
    w.agents.remove(client);
    if w.default_agent.as_deref() == Some(client) {
        w.default_agent = None;
    }
}
