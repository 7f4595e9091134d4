use super::*;

#[test]
fn eventually_returns_the_first_success() {
    let mut calls = 0;
    let value = eventually("third call", Duration::from_secs(5), || {
        calls += 1;
        if calls >= 3 {
            Ok(calls)
        } else {
            Err(anyhow::anyhow!("call {calls}"))
        }
    });
    assert_eq!(value, 3);
}

#[test]
fn try_eventually_gives_the_last_error_on_timeout() {
    let err = try_eventually(Duration::from_millis(250), || -> anyhow::Result<()> {
        Err(anyhow::anyhow!("never"))
    })
    .expect_err("times out");
    assert_eq!(err.to_string(), "never");
}

#[test]
fn free_ports_are_never_handed_out_twice() {
    let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 50);
}
