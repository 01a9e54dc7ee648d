//! A secret held in memory (a bearer token, a client secret, a private key): zeroed when
//! dropped, and shown as `<redacted>` by `Debug`, so a derived `Debug` on a type holding one
//! can never print it into a log or a crash report.

use std::fmt;

use zeroize::Zeroize;

/// A secret value; [`Secret::expose`] is the only way to read it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that must send or use it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de, T: Zeroize + serde::Deserialize<'de>> serde::Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            token: Secret<String>,
            key: Option<Secret<Vec<u8>>>,
        }
        let h = Holder {
            token: Secret::new("eyJhbGciOi-token".into()),
            key: Some(Secret::new(b"-----BEGIN".to_vec())),
        };
        let shown = format!("{h:?} {h:#?}");
        assert!(
            !shown.contains("eyJ") && !shown.contains("BEGIN"),
            "{shown}"
        );
        assert_eq!(h.token.expose(), "eyJhbGciOi-token");
    }
}
