//! Writes the seed corpora (`fuzz/checks/seeds.rs`) under a directory,
//! `fuzz/seeds` by default: `cargo run --manifest-path fuzz/Cargo.toml
//! --example make_seeds -- fuzz/seeds`. The committed seeds are kept current
//! by the test suite (`UPDATE_GENERATED=1 cargo test -p hubwatch-tests
//! --test fuzz_smoke`); this is for a corpus elsewhere.

#[path = "../checks/seeds.rs"]
mod seeds;

fn main() -> Result<(), String> {
    let out = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".to_string()),
    );
    let all = seeds::all()?;
    for (target, name, bytes) in &all {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join(name), bytes).map_err(|e| format!("{}/{name}: {e}", dir.display()))?;
    }
    println!("wrote {} seeds under {}", all.len(), out.display());
    Ok(())
}
