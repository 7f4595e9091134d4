use super::*;

#[test]
fn same_user_same_pseudonym_and_no_raw_name() {
    let p = Pseudonymiser::with_secret(b"0123456789abcdef0123");
    let a = p.user("alice");
    assert_eq!(a, p.user("alice"));
    assert_ne!(a, p.user("bob"));
    assert!(!a.contains("alice"));
    assert!(a.starts_with("u-") && a.len() == 34, "{a}");
}

#[test]
fn different_secrets_give_different_pseudonyms() {
    let p1 = Pseudonymiser::with_secret(b"0123456789abcdef0123");
    let p2 = Pseudonymiser::with_secret(b"fedcba98765432100123");
    assert_ne!(p1.user("alice"), p2.user("alice"));
}

#[test]
fn disabled_passes_names_through() {
    let cfg = PrivacyConfig {
        pseudonymise_users: false,
        secret_file: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let p = Pseudonymiser::from_config(&cfg, dir.path()).unwrap();
    assert_eq!(p.user("alice"), "alice");
    assert!(!dir.path().join(GENERATED_SECRET_FILE).exists());
}

#[test]
fn generated_secret_is_reused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PrivacyConfig::default();
    let first = Pseudonymiser::from_config(&cfg, dir.path())
        .unwrap()
        .user("alice");
    let again = Pseudonymiser::from_config(&cfg, dir.path())
        .unwrap()
        .user("alice");
    assert_eq!(first, again);
}

#[test]
fn secret_file_is_read_and_short_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "0123456789abcdef-member-secret\n").unwrap();
    let cfg = PrivacyConfig {
        pseudonymise_users: true,
        secret_file: Some(path.clone()),
    };
    let p = Pseudonymiser::from_config(&cfg, dir.path()).unwrap();
    assert_eq!(
        p.user("alice"),
        Pseudonymiser::with_secret(b"0123456789abcdef-member-secret").user("alice")
    );
    std::fs::write(&path, "short").unwrap();
    let err = Pseudonymiser::from_config(&cfg, dir.path()).unwrap_err();
    assert!(err.to_string().contains("privacy.secret_file"), "{err}");
    let missing = PrivacyConfig {
        pseudonymise_users: true,
        secret_file: Some(dir.path().join("nope")),
    };
    assert!(Pseudonymiser::from_config(&missing, dir.path()).is_err());
}
