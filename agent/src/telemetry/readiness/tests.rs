use std::sync::Arc;

use super::*;

fn token(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, "secret\n").expect("write token");
    path
}

fn causes(r: &Readiness) -> Vec<&'static str> {
    r.check().into_iter().map(|c| c.cause).collect()
}

#[test]
fn ready_with_a_writable_spool_and_a_token_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Readiness::new(dir.path().to_path_buf(), Some(token(dir.path())), None);
    assert_eq!(r.check(), vec![]);
    assert_eq!(body(&[]), "ready");
    assert!(
        !dir.path().join(PROBE_FILE).exists(),
        "the probe file is removed"
    );
}

#[test]
fn a_missing_or_empty_token_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = token(dir.path());
    let r = Readiness::new(dir.path().to_path_buf(), Some(path.clone()), None);
    std::fs::remove_file(&path).expect("remove");
    let found = r.check();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].cause, cause::TOKEN_FILE);
    assert!(
        found[0].detail.contains("collector.token_file"),
        "{found:?}"
    );
    assert!(body(&found).contains("token_file: collector.token_file"));

    std::fs::write(&path, "").expect("write");
    assert_eq!(causes(&r), vec![cause::TOKEN_FILE]);

    std::fs::write(&path, "again").expect("write");
    assert_eq!(causes(&r), Vec::<&str>::new());
}

#[test]
fn an_unwritable_spool_dir_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A path under a regular file cannot be created, whoever runs the test
    // (a read-only mode would not stop root).
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").expect("write");
    let r = Readiness::new(blocker.join("spool"), None, None);
    let found = r.check();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].cause, cause::SPOOL_DIR);
    assert!(found[0].detail.contains("agent.spool_dir"), "{found:?}");
    assert!(found[0].detail.contains("not writable"), "{found:?}");
}

#[test]
fn a_missing_spool_dir_is_named_and_recovers_when_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let r = Readiness::new(spool.clone(), None, None);
    assert_eq!(causes(&r), vec![cause::SPOOL_DIR]);
    std::fs::create_dir(&spool).expect("mkdir");
    assert_eq!(causes(&r), Vec::<&str>::new());
}

#[test]
fn a_certificate_failure_holds_until_the_collector_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Readiness::new(dir.path().to_path_buf(), None, None);
    r.certificate_failed("invalid peer certificate: UnknownIssuer".to_string());
    let found = r.check();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].cause, cause::COLLECTOR_CERTIFICATE);
    assert!(found[0].detail.contains("UnknownIssuer"), "{found:?}");
    // Still failing on the next check: it is state, not an event.
    assert_eq!(causes(&r), vec![cause::COLLECTOR_CERTIFICATE]);
    r.certificate_ok();
    assert_eq!(causes(&r), Vec::<&str>::new());
}

#[test]
fn each_cause_is_counted_once_per_appearance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(AgentMetrics::new());
    let r = Readiness::new(dir.path().to_path_buf(), None, Some(Arc::clone(&metrics)));
    let count = || {
        metrics
            .not_ready
            .with_label_values(&[cause::COLLECTOR_CERTIFICATE])
            .get()
    };
    r.certificate_failed("bad".to_string());
    r.check();
    r.check();
    assert_eq!(count(), 1, "one appearance, two checks");
    r.certificate_ok();
    r.check();
    r.certificate_failed("bad".to_string());
    r.check();
    assert_eq!(count(), 2, "it appeared again");
}

#[test]
fn rustls_certificate_errors_are_recognised_through_io_wrapping() {
    let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
    let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
    let found = certificate_error(&io).expect("certificate error found");
    assert!(found.contains("UnknownIssuer"), "{found}");
    // As hyper-rustls hands it on: io::Error::other around tokio-rustls's.
    let twice = std::io::Error::other(io);
    let found = certificate_error(&twice).expect("found through two io::Errors");
    assert!(found.contains("UnknownIssuer"), "{found}");

    let other = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::General("handshake".to_string()),
    );
    assert_eq!(certificate_error(&other), None);
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert_eq!(certificate_error(&refused), None);
}
