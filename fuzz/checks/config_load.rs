//! Fuzz target: arbitrary text into the config loader both binaries use
//! (`hubwatch_shared::config::load`: defaults, the TOML file, then
//! `HUBWATCH_<SECTION>__<KEY>` overrides, then validation).
//!
//! The input is split at the first `0xFF` byte (never part of UTF-8): before
//! it the file's text, after it the environment, one `KEY=VALUE` a line. The
//! same input is loaded as the agent's and as the collector's config. Beyond
//! "no panic" (a broken file must be an error naming the key):
//! - loading is deterministic, and an error always has a message;
//! - a config that loads, written back as TOML, loads again to the same
//!   config under the same environment (what `check-config` accepts means one
//!   thing; secrets from the environment are never written back).

use std::collections::HashMap;

use hubwatch_shared::config::{self, AgentConfig, CollectorConfig, Validate};

fn round_trip<T>(text: &str, env: &HashMap<String, String>)
where
    T: for<'de> serde::Deserialize<'de> + serde::Serialize + Validate + PartialEq + std::fmt::Debug,
{
    let loaded = config::load::<T>(text, env);
    let again = config::load::<T>(text, env);
    match (&loaded, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "load is not deterministic"),
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "errors are not deterministic");
            assert!(!a.to_string().is_empty(), "an error without a message");
        }
        _ => panic!("load is not deterministic"),
    }
    let Ok(cfg) = loaded else {
        return;
    };
    let Ok(written) = toml::to_string(&cfg) else {
        // A value TOML cannot hold (e.g. NaN in a float key) is fine to
        // refuse here: the loaded config was still checked.
        return;
    };
    // Secrets (tokens from the environment) are not written back: reload under the same
    // environment, as the binary would run.
    let reloaded = config::load::<T>(&written, env)
        .unwrap_or_else(|e| panic!("a loaded config written back does not load: {e}\n{written}"));
    assert_eq!(
        cfg, reloaded,
        "a config changed across writing and loading:\n{written}"
    );
}

/// One input: a panic is a finding.
pub fn check(data: &[u8]) {
    let (file, env) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(file);
    let env: HashMap<String, String> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    round_trip::<AgentConfig>(&text, &env);
    round_trip::<CollectorConfig>(&text, &env);
}
