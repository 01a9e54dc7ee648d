//! What fleet management left in force across a restart: the delivery plan of the last applied
//! desired configuration, restored only while its signature is still trusted.

use crate::config::Config;
use crate::store::StoreHandle;

/// The plan a process delivers by: the file configuration overlaid by the desired
/// configuration fleet management last applied (kept in the store); the store writer is
/// switched to its destinations. A stored document this configuration refuses (a destination
/// the file's settings make invalid) is logged, and the file alone is used.
pub async fn delivery_plan(
    config: &Config,
    store: &StoreHandle,
    keying: &crate::store::Keying,
) -> crate::sync::plan::DeliveryPlan {
    use crate::fleet::store::FleetStore;
    use crate::sync::plan::DeliveryPlan;
    let fleet = crate::fleet::store::SqlFleetStore::new(store.clone(), keying.clone());
    // The stored document counts only if it is still signed by a trusted operator key, as
    // the fleet side restores it (`fleet::handler::restorable`).
    let (trust, _) = crate::fleet::trust::Verifier::load(
        &config.fleet,
        Some(&config.update),
        config.gateway.id.as_str(),
    );
    let plan = match fleet.applied_config().await {
        Ok(Some((version, text))) => match crate::fleet::handler::restorable(&trust, &text)
            .and_then(|doc| DeliveryPlan::overlay(config, &doc))
        {
            Ok(plan) => plan,
            Err(reason) => {
                tracing::warn!(version, %reason, "Stored desired configuration does not apply to this configuration; delivering as the file says.");
                DeliveryPlan::from_file(config)
            }
        },
        Ok(None) => DeliveryPlan::from_file(config),
        Err(error) => {
            tracing::warn!(%error, "Cannot read the stored desired configuration; delivering as the file says.");
            DeliveryPlan::from_file(config)
        }
    };
    if plan.version.is_some() {
        tracing::info!(
            version = plan.version,
            destinations = plan.destinations.len(),
            "Delivery follows the applied desired configuration."
        );
        if let Err(error) = store.set_destinations(plan.ids()).await {
            tracing::warn!(%error, "Cannot route readings to the desired destinations.");
        }
    }
    plan
}
