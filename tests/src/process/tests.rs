use super::*;

fn shell(script: &str, dir: &Path) -> Process {
    Process::start(
        "sh",
        Path::new("/bin/sh"),
        &["-c".into(), script.into()],
        &[("HUBWATCH_TEST_MARK".into(), "set".into())],
        dir,
    )
}

#[test]
fn sigterm_stops_and_restart_keeps_one_log_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut process = shell(
        // The trap first: a SIGTERM right after the line is logged must find it set.
        "trap 'exit 0' TERM; echo \"run $HUBWATCH_TEST_MARK\" >&2; while true; do sleep 0.05; done",
        dir.path(),
    );
    crate::wait::eventually("first line logged", Duration::from_secs(5), || {
        process
            .stderr()
            .contains("run set")
            .then_some(())
            .ok_or_else(|| anyhow::anyhow!("not yet"))
    });
    assert!(process.is_running());
    assert!(process.sigterm(Duration::from_secs(5)).success());
    assert!(!process.is_running());
    process.restart();
    assert_eq!(process.starts(), 2);
    crate::wait::eventually("second run logged", Duration::from_secs(5), || {
        (process.stderr().matches("run set").count() == 2)
            .then_some(())
            .ok_or_else(|| anyhow::anyhow!("not yet"))
    });
    assert_eq!(process.stderr_of_last_start().trim(), "run set");
    process.sigkill();
    assert!(!process.is_running());
}

#[test]
fn an_exited_process_is_not_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut process = shell("exit 3", dir.path());
    let status = process.wait(Duration::from_secs(5)).expect("exits");
    assert_eq!(status.code(), Some(3));
    assert!(!process.is_running());
}
