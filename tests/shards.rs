//! Grading a batch in shards as an Indexed Job or a Slurm array would: three `--shard I/3` runs into
//! one shared output folder, a task restarted with `--skip-done`, `ctgrade merge`, and the merged
//! summary equal, case by case, to one process grading everything.

mod common;

use std::path::Path;

use common::{ctgrade, make_ensemble, run_args, s};
use ctgrade::grading::Head;
use ctgrade::synth::{phantom, PhantomConfig};
use ctgrade::volume::{self, ElementType};
use serde_json::Value;

fn cases(summary: &Path) -> Vec<(String, Value, Value, Value)> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(summary).unwrap()).unwrap();
    let mut rows: Vec<_> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["case"].as_str().unwrap().to_string(),
                c["probability"].clone(),
                c["co_rads"].clone(),
                c["error"].clone(),
            )
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

#[test]
fn shards_resume_and_merge_like_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let weights = make_ensemble(dir.path(), Head::Continuous, 2);
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    for seed in 0..9u64 {
        let cfg = PhantomConfig {
            size: [96, 96, 48],
            spacing: [3.5, 3.5, 6.0],
            seed,
            co_rads: (seed % 5 + 1) as u8,
        };
        let path = input.join(format!("case-{seed}.mha"));
        volume::write(&path, &phantom(&cfg).unwrap().0, ElementType::Short).unwrap();
    }
    std::fs::write(input.join("broken.mha"), "ObjectType = Image\n").unwrap();

    let single = dir.path().join("single");
    let out = ctgrade(&run_args(&input, &single, &weights), &[]);
    assert_eq!(out.status.code(), Some(1), "the broken case fails the run");

    let shared = dir.path().join("shared");
    let mut owned = 0;
    for i in 0..3 {
        let spec = format!("{i}/3");
        let mut args = run_args(&input, &shared, &weights);
        args.extend_from_slice(&["--shard", &spec]);
        let out = ctgrade(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let n: usize = stderr
            .split(&format!("shard {i}/3 owns "))
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{stderr}"));
        owned += n;
        assert!(shared
            .join(format!("summary-shard-{i}-of-3.json"))
            .is_file());
    }
    assert_eq!(owned, 10, "every case in exactly one shard");
    assert!(!shared.join("summary.json").exists());

    // A task killed mid-run: one case's answers and its shard's summary never written. The
    // restarted task (auto/3 from JOB_COMPLETION_INDEX) grades that case and skips the others.
    let victim = "case-4";
    let i = ctgrade::gc::shard::shard_of(victim, 3);
    for f in ["probability-covid-19.json", "co-rads-score.json"] {
        std::fs::remove_file(shared.join(victim).join(f)).unwrap();
    }
    std::fs::remove_file(shared.join(format!("summary-shard-{i}-of-3.json"))).unwrap();
    let merged = dir.path().join("merged");
    let out = ctgrade(&["merge", s(&shared), "--output", s(&merged)], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("shard {i}/3 has no summary")),
        "{stderr}"
    );

    let index = i.to_string();
    let mut args = run_args(&input, &shared, &weights);
    args.extend_from_slice(&["--shard", "auto/3", "--skip-done"]);
    let out = ctgrade(&args, &[("JOB_COMPLETION_INDEX", &index)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped") || owned_by(i) == [victim],
        "{stderr}"
    );
    assert!(
        !stderr.contains(&format!("{victim}: already graded")),
        "{stderr}"
    );
    assert!(shared
        .join(victim)
        .join("probability-covid-19.json")
        .is_file());
    let resumed = cases(&shared.join(format!("summary-shard-{i}-of-3.json")));
    let expected: Vec<String> = owned_by(i).into_iter().map(String::from).collect();
    let names: Vec<String> = resumed.iter().map(|r| r.0.clone()).collect();
    assert_eq!(names, expected, "the summary lists every case of the shard");

    let out = ctgrade(&["merge", s(&shared), "--output", s(&merged)], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cases(&merged.join("summary.json")),
        cases(&single.join("summary.json"))
    );
}

/// The cases of this test that shard `i` of 3 owns, sorted.
fn owned_by(i: usize) -> Vec<&'static str> {
    const ALL: [&str; 10] = [
        "broken", "case-0", "case-1", "case-2", "case-3", "case-4", "case-5", "case-6", "case-7",
        "case-8",
    ];
    ALL.into_iter()
        .filter(|c| ctgrade::gc::shard::shard_of(c, 3) == i)
        .collect()
}
