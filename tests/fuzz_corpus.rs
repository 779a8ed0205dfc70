//! Replays the saved fuzz inputs (the seeds, `fuzz/corpus/TARGET/seed-*`, and
//! `fuzz/regressions/TARGET/`, inputs that once crashed) through the target
//! bodies in `switchboard_tests::fuzz`, on stable Rust: a fixed crash stays
//! fixed even where `cargo fuzz` is not installed. (What the fuzzer adds to the
//! corpus locally is not replayed: it changes while a fuzzer runs.)

use switchboard_tests::{fuzz, root};

#[test]
fn every_saved_fuzz_input_still_passes() {
    let mut replayed = 0;
    for (name, target) in fuzz::TARGETS {
        for kind in ["corpus", "regressions"] {
            let dir = root().join("fuzz").join(kind).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let seed = e.file_name().to_string_lossy().starts_with("seed-");
                if kind == "corpus" && !seed {
                    continue;
                }
                let data = std::fs::read(e.path()).expect("read input");
                let path = e.path();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} fails again", path.display());
                replayed += 1;
            }
        }
    }
    assert!(
        replayed >= 5,
        "only {replayed} saved inputs: the corpus is missing"
    );
}

#[test]
fn the_seed_inputs_pass_and_can_be_written_out() {
    let write = std::env::var("SWITCHBOARD_WRITE_SEEDS").is_ok_and(|v| v == "1");
    for (i, (name, data)) in fuzz::seeds().into_iter().enumerate() {
        let target = fuzz::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .expect("a seed for a known target");
        target(&data);
        if write {
            let dir = root().join("fuzz/corpus").join(name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join(format!("seed-{i}")), &data).expect("write seed");
        }
    }
}
