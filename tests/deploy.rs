//! The deployment files in `deploy/`: the Kubernetes Indexed Job and merge Job parse as YAML and
//! carry the fields a sharded run depends on (and agree with each other), the Slurm scripts are
//! valid shell with the array and GPU settings, and every ctgrade command line they hold is one
//! the binary accepts.

mod common;

use std::path::Path;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn load(path: &str) -> Yaml {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one document");
    docs.remove(0)
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("not a list: {y:?}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The one container of a Job's pod template, with the pod spec.
fn container(job: &Yaml) -> (&Yaml, &Yaml) {
    assert_eq!(job["apiVersion"].as_str(), Some("batch/v1"));
    assert_eq!(job["kind"].as_str(), Some("Job"));
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"].as_str(), Some("Never"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let containers = pod["containers"].as_vec().unwrap();
    assert_eq!(containers.len(), 1);
    (&containers[0], pod)
}

/// The mount path of the volume named `volume` in `c`, checking that the pod defines it.
fn mount<'a>(c: &'a Yaml, pod: &Yaml, volume: &str) -> &'a str {
    let claim = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some(volume))
        .unwrap_or_else(|| panic!("no volume {volume}"));
    assert!(claim["persistentVolumeClaim"]["claimName"]
        .as_str()
        .is_some());
    c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some(volume))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("{volume} not mounted"))
}

fn arg<'a>(args: &'a [String], flag: &str) -> &'a str {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
        .unwrap_or_else(|| panic!("no {flag}= in {args:?}"))
}

/// Runs the ctgrade command line `args` (after the binary) with `/data/...` paths moved under a
/// temporary folder: it must get past argument parsing to the work itself.
fn accepted(args: &[String], env: &[(&str, &str)], expect: &str) {
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    for dir in ["data/archive", "data/results"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("/data/", &format!("{r}/data/")))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_ctgrade"))
        .args(&args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("Usage:"), "{args:?} rejected: {stderr}");
    assert!(stderr.contains(expect), "{args:?}: {stderr}");
}

#[test]
fn kubernetes_indexed_job_and_merge_job() {
    let job = load("deploy/kubernetes/grade-indexed-job.yaml");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    let completions = spec["completions"].as_i64().unwrap();
    let parallelism = spec["parallelism"].as_i64().unwrap();
    assert!(parallelism >= 1 && parallelism <= completions);
    assert!(spec["backoffLimitPerIndex"].as_i64().unwrap() >= 1);
    let (c, pod) = container(&job);
    assert!(c["image"].as_str().is_some());
    assert!(c["resources"]["limits"]["nvidia.com/gpu"].as_i64().unwrap() >= 1);
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    let command = strings(&c["command"]);
    assert_eq!(command, ["/opt/app/ctgrade", "run"]);
    let args = strings(&c["args"]);
    assert_eq!(arg(&args, "--shard"), format!("auto/{completions}"));
    assert!(args.iter().any(|a| a == "--skip-done"));
    assert_eq!(arg(&args, "--input"), mount(c, pod, "archive"));
    let results = mount(c, pod, "results");
    assert_eq!(arg(&args, "--output"), results);

    let merge = load("deploy/kubernetes/merge-job.yaml");
    let (m, mpod) = container(&merge);
    assert_eq!(strings(&m["command"]), ["/opt/app/ctgrade", "merge"]);
    let margs = strings(&m["args"]);
    assert_eq!(margs[0], mount(m, mpod, "results"));
    assert_eq!(arg(&margs, "--output"), results);
    assert_eq!(
        mpod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        pod["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some("results"))
            .unwrap()["persistentVolumeClaim"]["claimName"]
    );

    // The command lines as the pods run them (the binary's path aside).
    let index = (completions - 1).to_string();
    let line = |command: &[String], args: &[String]| -> Vec<String> {
        command[1..].iter().chain(args).cloned().collect()
    };
    accepted(
        &line(&command, &args),
        &[("JOB_COMPLETION_INDEX", &index)],
        "no CT image found",
    );
    let mcommand = strings(&m["command"]);
    accepted(&line(&mcommand, &margs), &[], "holds no summary.json");
}

#[test]
fn slurm_array_and_merge_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm");
    for script in ["ctgrade-array.sbatch", "ctgrade-merge.sbatch"] {
        let path = dir.join(script);
        let status = Command::new("bash").arg("-n").arg(&path).status().unwrap();
        assert!(status.success(), "{script}: bash -n failed");
    }
    let array = std::fs::read_to_string(dir.join("ctgrade-array.sbatch")).unwrap();
    for needle in [
        "#SBATCH --array=0-",
        "#SBATCH --gres=gpu:",
        "exec --nv",
        "--shard \"auto/${SLURM_ARRAY_TASK_COUNT}\" --skip-done",
    ] {
        assert!(
            array.contains(needle),
            "ctgrade-array.sbatch lacks {needle}"
        );
    }
    let merge = std::fs::read_to_string(dir.join("ctgrade-merge.sbatch")).unwrap();
    assert!(merge.contains("/opt/app/ctgrade merge /output --output /output"));

    // The array task's ctgrade command line, as task 3 of 8 runs it.
    let args: Vec<String> = [
        "run",
        "--input",
        "/data/archive",
        "--output",
        "/data/results",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--shard".into(), "auto/8".into(), "--skip-done".into()])
    .collect();
    accepted(
        &args,
        &[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ],
        "no CT image found",
    );
}
