//! Helpers for the software-update tests that the `vitalgate-next` binary also needs.

/// The version `vitalgate-next` reports: the next minor version after the package's.
pub fn next_version() -> String {
    let v = env!("CARGO_PKG_VERSION");
    let core = v.split(['-', '+']).next().unwrap_or(v);
    let mut parts = core.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    format!("{major}.{}.0", minor + 1)
}
