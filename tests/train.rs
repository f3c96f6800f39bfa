//! `ctgrade train`: learning on a tiny problem, bit-exact resumption, augmentation, label errors,
//! lesion maps computed by a lesion model.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use ctgrade::grading::Head;
use ctgrade::model::{Arch, NetworkConfig};
use ctgrade::preprocess::{ChannelLayout, InputSpec};
use ctgrade::train::augment::{augment, AugmentConfig, Transform};
use ctgrade::train::labels::read_labels;
use ctgrade::train::net::TrainNet;
use ctgrade::train::optim::{loss, Adam, AdamConfig};
use ctgrade::train::synthdata::{write_phantom_set, PhantomSet};
use ctgrade::train::{train, LesionSource, Recipe, TrainError, TrainOptions};

fn tiny_network() -> NetworkConfig {
    NetworkConfig {
        growth_rate: Some(4),
        block_config: Some(vec![1, 1]),
        bn_size: Some(2),
        init_features: Some(4),
        ..NetworkConfig::new(Arch::DenseNet121_3d, 3, 1)
    }
}

/// A toy volume: background noise, plus a bright blob for the positive class.
fn toy(seed: u64, bright: bool) -> Vec<f32> {
    let mut r = ctgrade::rng::Rng::new(seed);
    let (d, h, w) = (8usize, 16usize, 16usize);
    let mut v = vec![0f32; d * h * w];
    for (i, x) in v.iter_mut().enumerate() {
        let (z, y, xx) = (i / (h * w), (i / w) % h, i % w);
        let blob = bright
            && (z as f64 - 4.0).powi(2) + (y as f64 - 8.0).powi(2) + (xx as f64 - 8.0).powi(2)
                < 12.0;
        *x = 0.2 + 0.05 * r.normal() as f32 + if blob { 0.6 } else { 0.0 };
    }
    v
}

#[test]
fn a_few_steps_lower_the_loss() {
    let dev = Device::Cpu;
    let mut net = TrainNet::new(&tiny_network(), 7, &dev).unwrap();
    let mut adam = Adam::new(
        net.params(),
        AdamConfig {
            lr: 1e-2,
            ..AdamConfig::default()
        },
    )
    .unwrap();
    let labels = [1u8, 5, 1, 5];
    let data: Vec<f32> = (0..4)
        .flat_map(|i| toy(i, labels[i as usize] == 5))
        .collect();
    // One channel: the CT repeated three times (the stem folds the repetition).
    let x = Tensor::from_vec(data, (4, 1, 8, 16, 16), &dev).unwrap();
    let mut losses = Vec::new();
    for _ in 0..15 {
        let y = net.forward_train(&x).unwrap();
        let l = loss(Head::Continuous, &y, &labels).unwrap();
        losses.push(l.to_scalar::<f32>().unwrap());
        adam.step(net.params(), &l.backward().unwrap(), 1e-2)
            .unwrap();
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.5 * first, "loss did not fall enough: {losses:?}");
    // The inference form (running statistics re-estimated) separates the classes too.
    net.recompute_bn_stats(std::slice::from_ref(&x)).unwrap();
    let x3 = x.repeat((1, 3, 1, 1, 1)).unwrap();
    let out = net.inference().unwrap().forward(&x3).unwrap();
    let out = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(
        out[1] > out[0] && out[3] > out[2],
        "inference outputs {out:?}"
    );
}

#[test]
fn augmentation_keeps_shapes_and_is_deterministic() {
    let dims = [8, 16, 16];
    let src: Vec<f32> = [toy(1, true), toy(2, false)].concat();
    let cfg = AugmentConfig::default().scaled(dims);
    let a = augment(&src, 2, dims, &[0.0, 0.0], &Transform::draw(&cfg, 42));
    let b = augment(&src, 2, dims, &[0.0, 0.0], &Transform::draw(&cfg, 42));
    let c = augment(&src, 2, dims, &[0.0, 0.0], &Transform::draw(&cfg, 43));
    assert_eq!(a.len(), src.len());
    assert_eq!(a, b, "same seed, same output");
    assert_ne!(a, c, "another seed, another output");
    assert!(a.iter().all(|v| v.is_finite()));
    // The scaled translation: 20 voxels at 240 become 20 * 16 / 240 here.
    assert!((cfg.translate_xy - 20.0 * 16.0 / 240.0).abs() < 1e-12);
    assert!((cfg.translate_z - 2.0 * 8.0 / 128.0).abs() < 1e-12);
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

#[test]
fn label_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("", "empty"),
        (
            "name,grade\na,3\n",
            "must name the columns `case` and `co_rads`",
        ),
        (
            "case,co_rads\na,6\n",
            "line 2: case a: CO-RADS must be an integer 1 to 5, got \"6\"",
        ),
        ("case,co_rads\na,three\n", "got \"three\""),
        (
            "case,co_rads\na,3\nb,2\na,4\n",
            "line 4: case a appears twice (first on line 2)",
        ),
        (
            "case,co_rads\na,3,x\n",
            "line 2: 3 field(s), the header has 2",
        ),
        ("case,co_rads\n", "no cases after the header"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = write(&dir.path().join(format!("l{i}.csv")), text);
        let err = read_labels(&path).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
        assert!(
            err.contains(&format!("l{i}.csv")),
            "the error names the file: {err}"
        );
    }
    let missing = read_labels(&dir.path().join("nope.csv")).unwrap_err();
    assert!(missing.to_string().contains("cannot read it"), "{missing}");
    // A labelled case without a scan.
    let labels = read_labels(&write(
        &dir.path().join("ok.csv"),
        "case,co_rads\nscan-1,2\n",
    ))
    .unwrap();
    let err = ctgrade::train::data::find_cases(dir.path(), &labels).unwrap_err();
    assert!(
        matches!(&err, TrainError::Data { msg, .. } if msg.contains("1 labelled case(s): scan-1")),
        "{err}"
    );
    // Through the command line: exit status 1 and the reason on the last line.
    let out = Command::new(env!("CARGO_BIN_EXE_ctgrade"))
        .args(["train", "--arch", "densenet121-3d", "--data"])
        .arg(dir.path())
        .arg("--labels")
        .arg(dir.path().join("l2.csv"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap_or("")
            .contains("CO-RADS must be an integer"),
        "{stderr}"
    );
}

#[test]
fn config_overrides_the_architectures_defaults() {
    // --config holds only the fields to change, as for `forward` and `ensemble new`: the run
    // gets past it to the labels (which are wrong here, so nothing is trained).
    let dir = tempfile::tempdir().unwrap();
    let labels = write(&dir.path().join("labels.csv"), "case,co_rads\na,6\n");
    let train = |config: &str| {
        let path = write(&dir.path().join("config.json"), config);
        let out = Command::new(env!("CARGO_BIN_EXE_ctgrade"))
            .args(["train", "--arch", "densenet121-3d", "--data"])
            .arg(dir.path())
            .arg("--labels")
            .arg(&labels)
            .arg("--config")
            .arg(&path)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).trim_end().to_string()
    };
    let partial = train(r#"{"growth_rate": 4, "block_config": [1, 1]}"#);
    assert!(partial.contains("CO-RADS must be an integer"), "{partial}");
    let other_arch = train(r#"{"arch": "densenet169-3d"}"#);
    assert!(
        other_arch.contains("densenet169-3d") && other_arch.contains("config.json"),
        "{other_arch}"
    );
    let not_an_object = train("[1]");
    assert!(
        not_an_object.contains("expected a JSON object"),
        "{not_an_object}"
    );
}

/// Ten small phantoms (two per CO-RADS category) with their labels in `dir/data`.
fn phantom_data(dir: &Path, seed: u64) -> PathBuf {
    let data = dir.join("data");
    write_phantom_set(
        &PhantomSet {
            out: data.clone(),
            per_class: 2,
            seed,
            size: [48, 48, 32],
            spacing: [7.5, 7.5, 10.0],
            prefix: "p".into(),
            lesion_labels: None,
        },
        |_| {},
    )
    .unwrap();
    data
}

fn options(data: &Path, out: &Path) -> TrainOptions {
    TrainOptions {
        data: data.to_path_buf(),
        labels: data.join("labels.csv"),
        out: out.to_path_buf(),
        recipe: Recipe {
            network: tiny_network(),
            head: Head::Continuous,
            input: InputSpec {
                spacing_mm: 10.0,
                crop_xy: [16, 16],
                slices: 8,
                hu_window: [-1100.0, 300.0],
                z_margin_mm: 10.0,
                channels: ChannelLayout::CtX3,
            },
            seed: 11,
            adam: AdamConfig {
                lr: 1e-3,
                ..AdamConfig::default()
            },
            batch_size: 2,
            max_steps: 6,
            patience: 0,
            val_every: 3,
            val_fraction: 0.25,
            augment: AugmentConfig::default(),
            init: None,
            grad_checkpoint: false,
            lesion_model: None,
        },
        members: 2,
        member: None,
        max_minutes: None,
        resume: false,
        checkpoint_every: 2,
        log_every: 0,
        cache: true,
        lesion_model: None,
        name: "test".into(),
        description: String::new(),
        demonstration: false,
        interrupt_after: None,
        device: Device::Cpu,
    }
}

/// Interrupted twice (between checkpoints, and in the second member) and resumed: the members
/// are the same files, byte for byte, as those of an uninterrupted run.
#[test]
fn resume_after_interruption_gives_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = phantom_data(dir.path(), 100);

    let whole = dir.path().join("whole");
    let report = train(&options(&data, &whole)).unwrap();
    assert!(report.completed);
    assert_eq!(report.members.len(), 2);
    assert!(whole.join("ensemble.json").is_file());
    for f in ["train-log.csv", "train-log.json", "loss.svg"] {
        assert!(whole.join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(whole.join("train-log.csv")).unwrap();
    // Two validations (steps 3 and 6) per member.
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");

    let parts = dir.path().join("parts");
    let mut o = options(&data, &parts);
    o.interrupt_after = Some(3);
    let r = train(&o).unwrap();
    assert!(!r.completed && r.members.is_empty());
    // Continuing without --resume is refused.
    o.interrupt_after = None;
    let err = train(&o).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
    // Resume: member 0 goes on from its step-2 checkpoint (step 3 is redone); member 1 is
    // interrupted at its step 3, after its step-2 checkpoint.
    o.resume = true;
    o.interrupt_after = Some(7);
    assert!(!train(&o).unwrap().completed);
    o.interrupt_after = None;
    let r = train(&o).unwrap();
    assert!(r.completed);
    for m in 0..2 {
        let name = format!("member-{m:02}.safetensors");
        let a = std::fs::read(whole.join(&name)).unwrap();
        let b = std::fs::read(parts.join(&name)).unwrap();
        assert!(
            a == b,
            "{name} differs between the whole and the resumed run"
        );
    }
    // The logs agree too, but for the seconds column.
    let strip = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p.join("train-log.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').map_or(l, |(a, _)| a).to_string())
            .collect()
    };
    assert_eq!(strip(&whole), strip(&parts));
    // Other settings are refused on resume.
    o.recipe.seed = 12;
    let err = train(&o).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");

    // Resumable per member: member 1 alone, interrupted after its step-2 checkpoint and resumed,
    // is the whole run's member 1.
    let task = dir.path().join("task");
    let mut t = options(&data, &task);
    t.member = Some(1);
    t.interrupt_after = Some(3);
    assert!(!train(&t).unwrap().completed);
    t.interrupt_after = None;
    let err = train(&t).unwrap_err().to_string();
    assert!(
        err.contains("of member 1") && err.contains("--resume"),
        "{err}"
    );
    t.resume = true;
    let r = train(&t).unwrap();
    assert!(r.completed && r.manifest.is_none());
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.members[0].member, 1);
    assert!(
        std::fs::read(task.join("member-01.safetensors")).unwrap()
            == std::fs::read(whole.join("member-01.safetensors")).unwrap(),
        "member 1 trained alone and resumed differs from the whole run's"
    );
    assert!(!task.join("member-00.safetensors").exists());
    assert!(!task.join("ensemble.json").exists());
    assert!(task.join("train-log-member-01.csv").is_file());
}

/// `--grad-checkpoint` trains the same members as the plain backward pass (its gradients are the
/// plain ones: `train::net`'s unit test), and a run cannot switch it on resume.
#[test]
fn gradient_checkpointing_trains_the_same_members() {
    let dir = tempfile::tempdir().unwrap();
    let data = phantom_data(dir.path(), 300);
    let mut members = Vec::new();
    for ckpt in [false, true] {
        let out = dir.path().join(format!("ckpt-{ckpt}"));
        let mut o = options(&data, &out);
        o.members = 1;
        o.recipe.grad_checkpoint = ckpt;
        assert!(train(&o).unwrap().completed);
        let path = out.join("member-00.safetensors");
        members.push(candle_core::safetensors::load(&path, &Device::Cpu).unwrap());
        if ckpt {
            o.recipe.grad_checkpoint = false;
            o.resume = true;
            let err = train(&o).unwrap_err().to_string();
            assert!(err.contains("other settings"), "{err}");
        }
    }
    let (plain, ckpt) = (&members[0], &members[1]);
    assert_eq!(plain.len(), ckpt.len());
    for (name, a) in plain {
        let b = &ckpt[name];
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let d = d.to_scalar::<f32>().unwrap();
        assert!(d <= 1e-4, "{name}: differs by {d}");
    }
}

/// `ctgrade train --arch A` from the command line for a narrow network of three families (a
/// ResNet-18 with MONAI's defaults otherwise, a 2-D DenseNet on slices, an I3D), then
/// `ctgrade run` with the trained ensemble: the member loads into the inference engine and
/// grades every case.
#[test]
fn other_families_train_and_run_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = phantom_data(dir.path(), 500);
    let small = options(&data, dir.path()).recipe.input;
    // The I3D's four pools need a larger input.
    let large = InputSpec {
        spacing_mm: 5.0,
        crop_xy: [32, 32],
        slices: 16,
        ..small.clone()
    };
    let networks = [
        (
            "resnet18-3d",
            r#""width_divisor": 16, "block_config": [1, 1, 1, 1]"#,
        ),
        (
            "densenet121-2d",
            r#""growth_rate": 4, "block_config": [1, 1], "bn_size": 2, "init_features": 4"#,
        ),
        ("inception-v1-3d", r#""width_divisor": 32"#),
    ];
    for (arch, overrides) in networks {
        let input = if arch.starts_with("inception") {
            &large
        } else {
            &small
        };
        let spec = write(
            &dir.path().join(format!("{arch}-spec.json")),
            &serde_json::to_string(input).unwrap(),
        );
        let config = write(
            &dir.path().join(format!("{arch}.json")),
            &format!(r#"{{"arch": "{arch}", "in_channels": 3, "num_outputs": 1, {overrides}}}"#),
        );
        let out = dir.path().join(format!("out-{arch}"));
        let train = Command::new(env!("CARGO_BIN_EXE_ctgrade"))
            .args(["train", "--arch", arch, "--device", "cpu", "--data"])
            .arg(&data)
            .arg("--labels")
            .arg(data.join("labels.csv"))
            .arg("--config")
            .arg(&config)
            .arg("--input-spec")
            .arg(&spec)
            .arg("--out")
            .arg(&out)
            .args([
                "--max-steps",
                "4",
                "--val-every",
                "2",
                "--checkpoint-every",
                "2",
            ])
            .args(["--log-every", "0", "--lr", "1e-3"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&train.stderr);
        assert!(train.status.success(), "{arch}: {stderr}");
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("ensemble.json")).unwrap())
                .unwrap();
        assert!(manifest.to_string().contains(arch), "{manifest}");
        let graded = dir.path().join(format!("graded-{arch}"));
        let run = Command::new(env!("CARGO_BIN_EXE_ctgrade"))
            .args(["run", "--device", "cpu", "--input"])
            .arg(&data)
            .arg("--output")
            .arg(&graded)
            .arg("--weights")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{arch}: {stderr}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(graded.join("summary.json")).unwrap())
                .unwrap();
        let cases = summary["cases"].as_array().expect("summary.json has cases");
        assert_eq!(cases.len(), 10, "{arch}: {summary}");
        for c in cases {
            let p = c["probability"].as_f64().expect("a probability");
            assert!((0.0..=1.0).contains(&p), "{arch}: {c}");
        }
    }
}

/// `ctgrade train` on a cluster, through the command line as the tasks run it: members trained
/// as separate `--member` processes (one by index, one by `auto` from JOB_COMPLETION_INDEX), then
/// gathered, are the single run's members byte for byte, with the same manifest and log; the
/// gather refuses a missing, duplicated or inconsistent member by name.
#[test]
fn members_trained_as_tasks_equal_the_single_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = phantom_data(dir.path(), 700);
    let spec = write(
        &dir.path().join("spec.json"),
        &serde_json::to_string(&options(&data, dir.path()).recipe.input).unwrap(),
    );
    let config = write(
        &dir.path().join("tiny.json"),
        r#"{"growth_rate": 4, "block_config": [1, 1], "bn_size": 2, "init_features": 4}"#,
    );
    let ctgrade = |out: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ctgrade"));
        c.arg("train").arg("--out").arg(out).args(extra);
        for v in [
            "JOB_COMPLETION_INDEX",
            "SLURM_ARRAY_TASK_ID",
            "SLURM_ARRAY_TASK_MIN",
        ] {
            c.env_remove(v);
        }
        let out = c.envs(env.iter().copied()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
        (out.status.code(), stderr)
    };
    let run_args: Vec<String> = [
        "--arch",
        "densenet121-3d",
        "--device",
        "cpu",
        "--seed",
        "11",
        "--members",
        "2",
        "--max-steps",
        "6",
        "--val-every",
        "3",
        "--checkpoint-every",
        "2",
        "--log-every",
        "0",
        "--lr",
        "1e-3",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--data".into(),
        data.display().to_string(),
        "--labels".into(),
        data.join("labels.csv").display().to_string(),
        "--config".into(),
        config.display().to_string(),
        "--input-spec".into(),
        spec.display().to_string(),
    ])
    .collect();
    let train_with = |out: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let args: Vec<&str> = run_args
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        ctgrade(out, &args, env)
    };
    let ok = |(code, stderr): (Option<i32>, String)| assert_eq!(code, Some(0), "{stderr}");
    let fails = |(code, stderr): (Option<i32>, String), want: &str| {
        assert_eq!(code, Some(1), "{stderr}");
        let last = stderr.lines().last().unwrap_or("");
        assert!(
            last.contains(want),
            "wanted {want:?} on the last line: {stderr}"
        );
    };

    let whole = dir.path().join("whole");
    ok(train_with(&whole, &[], &[]));

    let parts = dir.path().join("parts");
    // The index must be below K, and auto needs a task index.
    fails(
        train_with(&parts, &["--member", "2"], &[]),
        "--member 2: the index must be below --members 2",
    );
    fails(
        train_with(&parts, &["--member", "auto"], &[]),
        "neither JOB_COMPLETION_INDEX (Kubernetes Indexed Job) nor SLURM_ARRAY_TASK_ID",
    );
    ok(train_with(&parts, &["--member", "1"], &[]));
    assert!(!parts.join("ensemble.json").exists());
    assert!(!parts.join("member-00.safetensors").exists());
    // Gathering before member 0 is there names it.
    fails(
        ctgrade(&parts, &["--gather"], &[]),
        "1 of 2 member(s) missing: member-00 (not started)",
    );
    // Another task of the run with other settings is refused before it trains.
    fails(
        train_with(&parts, &["--member", "0", "--patience", "5"], &[]),
        "every member of a run needs the same options",
    );
    ok(train_with(
        &parts,
        &["--member", "auto"],
        &[("JOB_COMPLETION_INDEX", "0")],
    ));
    ok(ctgrade(&parts, &["--gather", "--members", "2"], &[]));

    for m in 0..2 {
        let name = format!("member-{m:02}.safetensors");
        assert!(
            std::fs::read(whole.join(&name)).unwrap() == std::fs::read(parts.join(&name)).unwrap(),
            "{name} differs between the single run and the tasks"
        );
    }
    // The same manifest (member hashes included) and log, but for the seconds column.
    let manifest = |p: &Path| std::fs::read_to_string(p.join("ensemble.json")).unwrap();
    assert_eq!(manifest(&whole), manifest(&parts));
    let parsed: serde_json::Value = serde_json::from_str(&manifest(&parts)).unwrap();
    assert_eq!(parsed["members"].as_array().map(Vec::len), Some(2));
    let log = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p.join("train-log.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplit_once(',').map_or(l, |(a, _)| a).to_string())
            .collect()
    };
    assert_eq!(log(&whole), log(&parts));
    assert_eq!(log(&parts).len(), 1 + 4);
    // A finished member resumed is left as it is.
    ok(train_with(&parts, &["--member", "1", "--resume"], &[]));

    // A duplicated member: member 1's checkpoint folder holding member 0's run.
    let record = |m: usize| parts.join(format!("checkpoints/member-{m:02}/member.json"));
    let saved = std::fs::read(record(1)).unwrap();
    std::fs::copy(record(0), record(1)).unwrap();
    fails(
        ctgrade(&parts, &["--gather"], &[]),
        "checkpoints/member-01 holds the run of member 0 (seed 11), not of member 1: a duplicated member",
    );
    // Trained with other settings (the record says so).
    let mut other: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    other["recipe"]["max_steps"] = 7.into();
    std::fs::write(record(1), other.to_string()).unwrap();
    fails(
        ctgrade(&parts, &["--gather"], &[]),
        "member-01 was trained with other settings than member-00 (they differ in: max_steps)",
    );
    std::fs::write(record(1), &saved).unwrap();
    // The same weights twice.
    let file = |m: usize| parts.join(format!("member-{m:02}.safetensors"));
    std::fs::copy(file(0), file(1)).unwrap();
    fails(
        ctgrade(&parts, &["--gather"], &[]),
        "member-01.safetensors is the same file as member-00.safetensors: a duplicated member",
    );
    // Gathering more members than were trained names the missing ones.
    std::fs::copy(whole.join("member-01.safetensors"), file(1)).unwrap();
    fails(
        ctgrade(&parts, &["--gather", "--members", "3"], &[]),
        "1 of 3 member(s) missing: member-02 (not started)",
    );
    ok(ctgrade(&parts, &["--gather"], &[]));
    assert_eq!(manifest(&whole), manifest(&parts));
}

/// The `.safetensors` files of `out/cache`.
fn cached_inputs(out: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// `--lesion-model`: the lesion channel of every case is the map `ctgrade run` would compute
/// (the segmenter's copy in the run's folder, which the manifest names); a changed model
/// recomputes the cached inputs, and a resumed run with another model is refused.
#[test]
fn a_lesion_model_computes_the_training_lesion_channel() {
    use ctgrade::ensemble::{Ensemble, LesionModelSpec};
    use ctgrade::preprocess::preprocess;
    let dir = tempfile::tempdir().unwrap();
    let data = phantom_data(dir.path(), 800);
    let out = dir.path().join("run");
    let model = common::lesion_model(dir.path());
    let mut opts = options(&data, &out);
    opts.members = 1;
    opts.recipe.input.channels = ChannelLayout::CtLesionZeros;

    // Without a lesion map or a model there is no lesion channel.
    let err = train(&opts).unwrap_err().to_string();
    assert!(err.contains("lesion map"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();

    opts.lesion_model = Some(LesionSource {
        dir: model.clone(),
        lesion_labels: vec![1, 2],
    });
    let report = train(&opts).unwrap();
    let spec = LesionModelSpec {
        path: "lesion".into(),
        lesion_labels: vec![1, 2],
    };
    assert_eq!(report.manifest.unwrap().lesion_model, Some(spec.clone()));
    let ensemble = Ensemble::open(&out).unwrap();
    let lesion = ensemble.lesion_model.as_ref().unwrap();
    assert_eq!(lesion.spec, spec);

    // Each cached input's lesion channel is what grading computes from the CT.
    let cached = cached_inputs(&out);
    assert_eq!(cached.len(), 10, "{cached:?}");
    let input = &opts.recipe.input;
    let [_, d, h, w] = input.shape();
    let vol = d * h * w;
    let mut lesion_voxels = 0;
    for case in ["p-000", "p-004"] {
        let ct = ctgrade::volume::read(&data.join(format!("{case}.mha"))).unwrap();
        let map = lesion.lesion_map(&lesion.segment(&ct).unwrap());
        let want = preprocess(&ct, Some(&map), input).unwrap().input[vol..2 * vol].to_vec();
        let file = cached
            .iter()
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(case))
            .unwrap();
        let got = candle_core::safetensors::load(file, &Device::Cpu).unwrap()["input"]
            .get(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(got, want, "{case}");
        lesion_voxels += got.iter().filter(|&&v| v > 0.0).count();
    }
    assert!(lesion_voxels > 0, "the fixture model marks no lesion");

    // Another model, resumed: refused by the recipe.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let other = {
        let m = common::lesion_model(&other);
        let plans_path = m.join("plans.json");
        let mut plans: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&plans_path).unwrap()).unwrap();
        plans["configurations"]["3d_fullres"]["spacing"] = serde_json::json!([10.0, 5.0, 5.0]);
        std::fs::write(&plans_path, plans.to_string()).unwrap();
        m
    };
    let digest = |p: &Path| ctgrade::segment::compact::digest(p).unwrap();
    let before = digest(&out.join("lesion"));
    let mut resumed = opts.clone();
    resumed.resume = true;
    resumed.lesion_model = Some(LesionSource {
        dir: other.clone(),
        lesion_labels: vec![1, 2],
    });
    let err = train(&resumed).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
    assert_eq!(
        digest(&out.join("lesion")),
        before,
        "the refused run left the run's model in place"
    );

    // A fresh run in the same folder with the other model recomputes every cached input.
    std::fs::remove_dir_all(out.join("checkpoints")).unwrap();
    resumed.resume = false;
    train(&resumed).unwrap();
    assert_eq!(cached_inputs(&out).len(), 20);
    let mut bad = options(&data, &dir.path().join("bad"));
    bad.recipe.input.channels = ChannelLayout::CtLesionZeros;
    bad.lesion_model = Some(LesionSource {
        dir: model,
        lesion_labels: vec![3],
    });
    let err = train(&bad).unwrap_err().to_string();
    assert!(err.contains("lesion_labels: 3"), "{err}");
    let mut ct_only = options(&data, &dir.path().join("ct-only"));
    ct_only.lesion_model = resumed.lesion_model.clone();
    let err = train(&ct_only).unwrap_err().to_string();
    assert!(err.contains("ct_lesion_zeros"), "{err}");
}
