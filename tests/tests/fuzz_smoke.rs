//! The fuzz targets' smoke, on every test run: each target's check
//! (`fuzz/checks/<target>.rs`, the same code libFuzzer runs under
//! `scripts/fuzz.sh`) over its committed seeds and over seeded mutations of
//! them. No coverage guidance (that is the long cargo-fuzz run in
//! `BENCHMARKS.md`), but every check and every seed runs in CI, so a decoder
//! that panics on a mutated real input, or a check that no longer compiles,
//! fails here. The committed seed corpora are kept current with the code that
//! writes them (`UPDATE_GENERATED=1` rewrites them).
//!
//! `HUBWATCH_FUZZ_SMOKE_SEED` changes the mutation seed, `HUBWATCH_FUZZ_SMOKE_RUNS`
//! the mutations per target (20,000) and `HUBWATCH_FUZZ_SMOKE_SECONDS` the time
//! each target may take (4; the config loader runs ~200 inputs a second in a
//! debug build, the decoders tens of thousands). A failing input is written under
//! `fuzz/artifacts/<target>/` for `cargo fuzz run <target> <file>`.

#[path = "../../fuzz/checks/mod.rs"]
mod checks;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The committed seeds of `target`, in name order.
fn committed(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&path).expect("a seed reads");
            (name, bytes)
        })
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn committed_seeds_are_current() {
    let expected = checks::seeds::all().expect("every seed is valid for its target");
    let mut by_target: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for (target, name, bytes) in expected {
        by_target.entry(target).or_default().insert(name, bytes);
    }
    let targets: Vec<&str> = checks::TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        by_target.keys().copied().collect::<Vec<_>>(),
        targets,
        "every target has seeds"
    );
    let root = fuzz_dir().join("seeds");
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        let _ = std::fs::remove_dir_all(&root);
        for (target, seeds) in &by_target {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).expect("seed directory");
            for (name, bytes) in seeds {
                std::fs::write(dir.join(name), bytes).expect("seed written");
            }
        }
    }
    for (target, seeds) in &by_target {
        let on_disk: BTreeMap<String, Vec<u8>> = committed(target).into_iter().collect();
        assert!(
            &on_disk == seeds,
            "fuzz/seeds/{target} differs from fuzz/checks/seeds.rs (files {:?}, expected {:?}); \
             rerun with UPDATE_GENERATED=1",
            on_disk.keys().collect::<Vec<_>>(),
            seeds.keys().collect::<Vec<_>>()
        );
    }
}

#[test]
fn every_check_is_a_cargo_fuzz_target() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut bins: Vec<&str> = manifest
        .lines()
        .filter_map(|line| line.strip_prefix("name = \""))
        .filter_map(|rest| rest.strip_suffix('"'))
        .filter(|name| *name != "hubwatch-fuzz" && *name != "make_seeds")
        .collect();
    bins.sort_unstable();
    let targets: Vec<&str> = checks::TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(bins, targets);
    for target in targets {
        let source = fuzz_dir().join(format!("fuzz_targets/{target}.rs"));
        let text = std::fs::read_to_string(&source).expect("the target's source");
        assert!(
            text.contains(&format!("#[path = \"../checks/{target}.rs\"]")),
            "{} does not run fuzz/checks/{target}.rs",
            source.display()
        );
    }
}

/// Bytes the formats care about: separators the checks split on, JSON and
/// TOML punctuation, quotes, escapes, digits, high bits.
const INTERESTING: &[u8] = b"\xff\x00\n\"\\{}[]=,.:-+0129eE#\x7f\x80\xc3";

/// One to four libFuzzer-style mutations of a seed, sometimes spliced with
/// another.
fn mutate(rng: &mut StdRng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = data.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let at = rng.random_range(0..len);
                data[at] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let at = rng.random_range(0..len);
                data[at] = rng.random();
            }
            2 => {
                let at = rng.random_range(0..=len);
                let byte = INTERESTING[rng.random_range(0..INTERESTING.len())];
                data.insert(at, byte);
            }
            3 if len > 0 => {
                let from = rng.random_range(0..len);
                let to = (from + rng.random_range(1..=16)).min(len);
                data.drain(from..to);
            }
            4 if len > 0 => {
                let from = rng.random_range(0..len);
                let to = (from + rng.random_range(1..=32)).min(len);
                let copy = data[from..to].to_vec();
                let at = rng.random_range(0..=len);
                data.splice(at..at, copy);
            }
            5 if len > 0 => data.truncate(rng.random_range(0..len)),
            6 if !other.is_empty() => {
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            7 if len >= 8 => {
                // An "interesting" integer over 1, 2, 4 or 8 bytes.
                let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
                let at = rng.random_range(0..=len - width);
                let value: u64 = [0, 1, 0x7f, 0x80, 0xff, 0xffff, u64::MAX, u64::MAX / 2]
                    [rng.random_range(0..8)];
                data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            _ => {}
        }
    }
    data
}

/// Runs `target`'s check over its seeds, then over mutations of them.
fn smoke(target: &str) {
    let (_, check) = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let seeds = committed(target);
    assert!(!seeds.is_empty(), "{target} has no seeds");
    let runs = env_number("HUBWATCH_FUZZ_SMOKE_RUNS", 20_000);
    let budget = std::time::Duration::from_secs(env_number("HUBWATCH_FUZZ_SMOKE_SECONDS", 4));
    let started = std::time::Instant::now();
    let base = env_number("HUBWATCH_FUZZ_SMOKE_SEED", 0x6875_6277);
    let salt = target
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut rng = StdRng::seed_from_u64(base ^ salt);

    let run = |input: &[u8], what: &str| {
        if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
            let dir = fuzz_dir().join("artifacts").join(target);
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("smoke-{}", hex::encode(sha2_prefix(input))));
            let _ = std::fs::write(&file, input);
            panic!(
                "{target}: {what} fails its check ({} bytes, written to {}; \
                 reproduce with `cargo fuzz run {target} {}`)",
                input.len(),
                file.display(),
                file.display()
            );
        }
    };
    for (name, bytes) in &seeds {
        run(bytes, &format!("seed {name}"));
    }
    let mut done = 0;
    while done < runs && started.elapsed() < budget {
        let seed = &seeds[rng.random_range(0..seeds.len())].1;
        let other = &seeds[rng.random_range(0..seeds.len())].1;
        let input = mutate(&mut rng, seed, other);
        run(&input, &format!("mutation {done}"));
        done += 1;
    }
    // The budget is a ceiling for slow machines; a smoke that ran almost nothing is no smoke.
    assert!(done >= runs.min(200), "{target}: only {done} mutations ran");
    println!(
        "{target}: {} seeds and {done} mutations in {:.1} s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
}

/// The first 8 bytes of the input's SHA-256, to name its file.
fn sha2_prefix(input: &[u8]) -> [u8; 8] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(input);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

macro_rules! smoke_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                smoke(stringify!($target));
            }
        )*
    };
}

smoke_tests!(
    config_load,
    decode_batch,
    exposition_parse,
    missing_scopes,
    prometheus_response,
    remote_write,
    retry_after,
    roundtrip_batch,
    users_page,
);
