//! Every seed corpus (`fuzz/corpus/<target>/`), and every reproducer kept there, replayed
//! through its target: what the fuzzers once found stays fixed, and the targets keep working
//! in an ordinary (uninstrumented) test build.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;

use ember_fuzz::engine;
use ember_fuzz::targets::TARGETS;

fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let d = std::fs::read(&p).unwrap();
            (p, d)
        })
        .collect()
}

#[test]
fn every_target_has_seeds_and_survives_them() {
    for t in TARGETS {
        let inputs = corpus(t.name);
        assert!(!inputs.is_empty(), "{}: no seeds", t.name);
        if let Err(e) = engine::replay(t.run, &inputs) {
            panic!("{}: {e}", t.name);
        }
    }
}

#[test]
fn generated_seeds_match_the_committed_ones() {
    // The committed seeds are what `ember-fuzz seeds` writes; a change to a target's seed
    // generator must be followed by regenerating them.
    for t in TARGETS {
        let committed: Vec<Vec<u8>> = corpus(t.name)
            .into_iter()
            .filter(|(p, _)| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("seed-")
            })
            .map(|(_, d)| d)
            .collect();
        assert_eq!(committed.len(), (t.seeds)().len(), "{}: seed count", t.name);
    }
}
