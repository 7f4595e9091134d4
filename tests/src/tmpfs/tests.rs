use super::*;

#[test]
fn fill_makes_writes_fail_and_free_gives_space_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = Tmpfs::mount(&dir.path().join("mnt"), 256 * 1024).expect("mount tmpfs (needs root)");
    let probe = fs.path().join("probe");
    std::fs::write(&probe, vec![1u8; 8192]).expect("write while there is space");
    let filled = fs.fill().expect("fill");
    assert!(filled > 100 * 1024, "filled only {filled} bytes");
    assert!(
        std::fs::write(fs.path().join("probe2"), vec![1u8; 8192]).is_err(),
        "a write must fail on a full tmpfs"
    );
    fs.free().expect("free");
    std::fs::write(fs.path().join("probe2"), vec![1u8; 8192]).expect("write after free");
}
