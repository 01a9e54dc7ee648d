use super::*;

fn key(n: u8) -> PrivateKey {
    PrivateKey::from_seed(&[n; 32])
}

fn unsigned() -> serde_json::Value {
    serde_json::json!({
        "format": 1,
        "version": "0.2.0",
        "architectures": ["amd64", "arm64"],
        "urls": ["https://updates.example.org/vitalgate-0.2.0"],
        "size": 1234,
        "sha256": "ab".repeat(32),
    })
}

fn signed_by(value: &serde_json::Value, k: &PrivateKey) -> Vec<u8> {
    sign(&serde_json::to_vec(value).expect("json"), k).expect("sign")
}

fn platform(version: &str) -> Platform {
    Platform {
        version: version.parse().expect("version"),
        arch: "amd64".into(),
        target: "x86_64-unknown-linux-gnu".into(),
    }
}

#[test]
fn signed_manifest_verifies_with_the_trusted_key() {
    let k = key(1);
    let bytes = signed_by(&unsigned(), &k);
    let v = verify(&bytes, &[key(9).public(), k.public()]).expect("verifies");
    assert_eq!(v.key_id, k.public().id());
    assert_eq!(v.manifest.version, semver::Version::new(0, 2, 0));
    assert_eq!(v.manifest.size, 1234);
}

#[test]
fn canonical_form_is_sorted_compact_and_excludes_signatures() {
    let bytes = signed_by(&unsigned(), &key(1));
    let c = String::from_utf8(canonical(&bytes).expect("canonical")).expect("utf8");
    assert_eq!(
        c,
        format!(
            "{{\"architectures\":[\"amd64\",\"arm64\"],\"format\":1,\"sha256\":\"{}\",\"size\":1234,\"urls\":[\"https://updates.example.org/vitalgate-0.2.0\"],\"version\":\"0.2.0\"}}",
            "ab".repeat(32)
        )
    );
}

#[test]
fn canonical_string_escapes_follow_jcs() {
    let out =
        crate::signed::canonical_unsigned(&serde_json::json!({"s": "a\"b\\c\n\u{1}é/\u{7f}"}))
            .expect("canonical");
    assert_eq!(out, "{\"s\":\"a\\\"b\\\\c\\n\\u0001é/\u{7f}\"}".as_bytes());
}

#[test]
fn reformatting_and_member_order_do_not_break_the_signature() {
    let bytes = signed_by(&unsigned(), &key(1));
    let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    // Reverse the members and print compactly: a different file, the same manifest.
    let obj = value.as_object().expect("object");
    let mut parts: Vec<String> = obj
        .iter()
        .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).expect("k"), v))
        .collect();
    parts.reverse();
    let reordered = format!("{{{}}}", parts.join(" , "));
    verify(reordered.as_bytes(), &[key(1).public()]).expect("still verifies");
}

#[test]
fn any_change_to_a_signed_field_breaks_the_signature() {
    let bytes = signed_by(&unsigned(), &key(1));
    let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    for (field, new) in [
        ("version", serde_json::json!("0.2.1")),
        ("size", serde_json::json!(1235)),
        ("sha256", serde_json::json!("cd".repeat(32))),
        ("urls", serde_json::json!(["https://evil.example.org/x"])),
        ("architectures", serde_json::json!(["armhf"])),
        ("allow_downgrade", serde_json::json!(true)),
        ("expires", serde_json::json!("2099-01-01T00:00:00Z")),
    ] {
        let mut v = value.clone();
        v[field] = new;
        let e =
            verify(&serde_json::to_vec(&v).expect("json"), &[key(1).public()]).expect_err(field);
        assert!(
            matches!(e, ManifestError::BadSignature { .. }),
            "{field}: {e}"
        );
    }
}

#[test]
fn unsigned_untrusted_and_garbage_signatures_are_refused() {
    let raw = serde_json::to_vec(&unsigned()).expect("json");
    assert_eq!(
        verify(&raw, &[key(1).public()]).expect_err("unsigned"),
        ManifestError::Unsigned
    );
    let by2 = signed_by(&unsigned(), &key(2));
    assert!(matches!(
        verify(&by2, &[key(1).public()]).expect_err("untrusted"),
        ManifestError::UntrustedKey { .. }
    ));
    assert_eq!(
        verify(&by2, &[]).expect_err("no keys"),
        ManifestError::NoTrustedKeys
    );
    // A signature claiming a trusted key id but made by another key.
    let mut v: serde_json::Value = serde_json::from_slice(&by2).expect("json");
    v["signatures"][0]["key_id"] = serde_json::json!(key(1).public().id());
    let forged = serde_json::to_vec(&v).expect("json");
    assert!(matches!(
        verify(&forged, &[key(1).public()]).expect_err("forged"),
        ManifestError::BadSignature { .. }
    ));
    v["signatures"][0]["signature"] = serde_json::json!("not base64!");
    let garbage = serde_json::to_vec(&v).expect("json");
    assert!(matches!(
        verify(&garbage, &[key(1).public()]).expect_err("garbage"),
        ManifestError::BadSignature { .. }
    ));
}

#[test]
fn rotation_two_signatures_either_key_is_enough() {
    let once = signed_by(&unsigned(), &key(1));
    let twice = sign(&once, &key(2)).expect("second signature");
    let v: serde_json::Value = serde_json::from_slice(&twice).expect("json");
    assert_eq!(v["signatures"].as_array().expect("list").len(), 2);
    verify(&twice, &[key(1).public()]).expect("old key");
    verify(&twice, &[key(2).public()]).expect("new key");
    // Re-signing by the same key replaces its signature.
    let again = sign(&twice, &key(2)).expect("re-sign");
    let v: serde_json::Value = serde_json::from_slice(&again).expect("json");
    assert_eq!(v["signatures"].as_array().expect("list").len(), 2);
}

#[test]
fn malformed_manifests_get_clear_errors() {
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (serde_json::json!([1]), "object"),
        (
            {
                let mut v = unsigned();
                v["urls"] = serde_json::json!(["http://updates.example.org/x"]);
                v
            },
            "https",
        ),
        (
            {
                let mut v = unsigned();
                v["sha256"] = serde_json::json!("AB".repeat(32));
                v
            },
            "sha256",
        ),
        (
            {
                let mut v = unsigned();
                v["size"] = serde_json::json!(1.5);
                v
            },
            "integer",
        ),
        (
            {
                let mut v = unsigned();
                v["bogus"] = serde_json::json!(1);
                v
            },
            "bogus",
        ),
        (
            {
                let mut v = unsigned();
                v.as_object_mut().expect("obj").remove("architectures");
                v
            },
            "architectures",
        ),
        (
            {
                let mut v = unsigned();
                v["version"] = serde_json::json!("two");
                v
            },
            "version",
        ),
        (
            {
                let mut v = unsigned();
                v["expires"] = serde_json::json!("tomorrow");
                v
            },
            "RFC 3339",
        ),
        (
            {
                let mut v = unsigned();
                v["format"] = serde_json::json!(2);
                v
            },
            "format 2",
        ),
    ];
    for (value, needle) in cases {
        let e = Manifest::parse(&serde_json::to_vec(&value).expect("json"))
            .expect_err(needle)
            .to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    assert!(matches!(
        Manifest::parse(b"{not json").expect_err("syntax"),
        ManifestError::Syntax { .. }
    ));
    let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
    assert!(matches!(
        Manifest::parse(&big).expect_err("too large"),
        ManifestError::TooLarge { .. }
    ));
}

/// The time the applicability tests run at, and a manifest expiring a day later.
fn now() -> SystemTime {
    humantime::parse_rfc3339("2026-06-01T00:00:00Z").expect("t")
}

fn expiring(mut v: serde_json::Value) -> Manifest {
    if v.get("expires").is_none() {
        v["expires"] = serde_json::json!("2026-06-02T00:00:00Z");
    }
    Manifest::parse(&serde_json::to_vec(&v).expect("json")).expect("parse")
}

fn applicable(m: &Manifest, running: &str) -> Result<(), ManifestError> {
    check_applicable(m, &platform(running), &Floors::default(), now())
}

#[test]
fn architecture_must_match_by_debian_name_or_triple() {
    let m = expiring(unsigned());
    applicable(&m, "0.1.0").expect("amd64 listed");
    let mut arm = platform("0.1.0");
    arm.arch = "armhf".into();
    arm.target = "armv7-unknown-linux-gnueabihf".into();
    assert!(matches!(
        check_applicable(&m, &arm, &Floors::default(), now()).expect_err("armhf not listed"),
        ManifestError::WrongArchitecture { .. }
    ));
    let mut v = unsigned();
    v.as_object_mut().expect("obj").remove("architectures");
    v["targets"] = serde_json::json!(["armv7-unknown-linux-gnueabihf"]);
    let m = expiring(v);
    check_applicable(&m, &arm, &Floors::default(), now()).expect("triple listed");
}

#[test]
fn versions_compare_by_semver_and_downgrades_need_the_flag() {
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = unsigned();
        f(&mut v);
        expiring(v)
    };
    let m = with(&|_| {});
    applicable(&m, "0.1.9").expect("upgrade");
    applicable(&m, "0.2.0-rc.1").expect("pre-release to release");
    assert!(matches!(
        applicable(&m, "0.2.0").expect_err("same"),
        ManifestError::SameVersion { .. }
    ));
    assert!(matches!(
        applicable(&m, "0.10.0").expect_err("0.10 > 0.2"),
        ManifestError::Downgrade { .. }
    ));
    let allowed = with(&|v| v["allow_downgrade"] = serde_json::json!(true));
    applicable(&allowed, "0.10.0").expect("explicit downgrade");
    assert!(matches!(
        applicable(&allowed, "0.2.0+build7").expect_err("same"),
        ManifestError::SameVersion { .. }
    ));
    let min = with(&|v| v["min_from_version"] = serde_json::json!("0.1.5"));
    applicable(&min, "0.1.5").expect("at the minimum");
    assert!(matches!(
        applicable(&min, "0.1.4").expect_err("too old"),
        ManifestError::TooOld { .. }
    ));
}

#[test]
fn expired_manifests_are_refused() {
    let mut v = unsigned();
    v["expires"] = serde_json::json!("2026-01-01T00:00:00Z");
    let m = Manifest::parse(&serde_json::to_vec(&v).expect("json")).expect("parse");
    let before = humantime::parse_rfc3339("2025-12-31T23:59:59Z").expect("t");
    let after = humantime::parse_rfc3339("2026-01-01T00:00:00Z").expect("t");
    check_applicable(&m, &platform("0.1.0"), &Floors::default(), before).expect("not yet expired");
    assert!(matches!(
        check_applicable(&m, &platform("0.1.0"), &Floors::default(), after).expect_err("expired"),
        ManifestError::Expired { .. }
    ));
    assert_eq!(time_left(&m, before), Some(Duration::from_secs(1)));
}

#[test]
fn a_manifest_must_expire_soon_and_a_downgrade_sooner() {
    // Without `expires` a captured manifest could be replayed forever.
    let m = Manifest::parse(&serde_json::to_vec(&unsigned()).expect("json")).expect("parse");
    assert_eq!(applicable(&m, "0.1.0"), Err(ManifestError::NoExpiry));
    let mut v = unsigned();
    v["expires"] = serde_json::json!("2026-07-02T00:00:00Z");
    assert!(matches!(
        applicable(&expiring(v), "0.1.0"),
        Err(ManifestError::ExpiresTooFar { .. })
    ));
    let mut v = unsigned();
    v["expires"] = serde_json::json!("2026-06-30T00:00:00Z");
    applicable(&expiring(v.clone()), "0.1.0").expect("an upgrade may live 30 days");
    v["allow_downgrade"] = serde_json::json!(true);
    assert!(matches!(
        applicable(&expiring(v.clone()), "0.3.0"),
        Err(ManifestError::ExpiresTooFar { .. })
    ));
    v["expires"] = serde_json::json!("2026-06-03T23:00:00Z");
    applicable(&expiring(v), "0.3.0").expect("a downgrade may live 72 hours");
}

#[test]
fn the_committed_floor_stops_old_manifests_and_the_minimum_stops_everything_older() {
    let m = expiring(unsigned());
    // Running 0.1.0 (reinstalled by hand) below a committed 0.3.0: an old 0.2.0 manifest
    // replayed would be an upgrade of the running version, and is still refused.
    let floors = Floors {
        committed: Some("0.3.0".parse().expect("v")),
        minimum: None,
    };
    assert!(matches!(
        check_applicable(&m, &platform("0.1.0"), &floors, now()),
        Err(ManifestError::BelowFloor { .. })
    ));
    let mut v = unsigned();
    v["allow_downgrade"] = serde_json::json!(true);
    let downgrade = expiring(v.clone());
    check_applicable(&downgrade, &platform("0.1.0"), &floors, now())
        .expect("a signed, short-lived downgrade passes the committed floor");
    // Below the floor is a downgrade even where the running version is older: 72 hours.
    v["expires"] = serde_json::json!("2026-06-10T00:00:00Z");
    assert!(matches!(
        check_applicable(&expiring(v), &platform("0.1.0"), &floors, now()),
        Err(ManifestError::ExpiresTooFar { .. })
    ));
    let floors = Floors {
        committed: None,
        minimum: Some("0.2.1".parse().expect("v")),
    };
    assert!(matches!(
        check_applicable(&downgrade, &platform("0.3.0"), &floors, now()),
        Err(ManifestError::BelowMinimum { .. })
    ));
}

#[test]
fn key_text_forms_round_trip_and_bad_keys_are_named() {
    let k = key(7);
    let again = PrivateKey::from_base64(&k.to_base64()).expect("private");
    assert_eq!(again.public(), k.public());
    let p = PublicKey::from_base64(&format!("  {}\n", k.public().to_base64())).expect("public");
    assert_eq!(p.id(), k.public().id());
    assert_eq!(p.id().len(), 16);
    assert!(PublicKey::from_base64("AAAA").is_err());
    assert!(PublicKey::from_base64("%%%").is_err());
}

proptest::proptest! {
    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = Manifest::parse(&bytes);
        let _ = verify(&bytes, &[key(1).public()]);
    }
}
