//! The deployment files in `deploy/`: the Kubernetes Indexed Jobs (grading and training) and
//! their merge and gather Jobs parse as YAML and carry the fields a sharded run depends on (and
//! agree with each other), the Slurm scripts are valid shell with the array and GPU settings, and
//! every ctgrade command line they hold is one the binary accepts.

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
    for dir in [
        "data/archive",
        "data/results",
        "data/train",
        "data/ensemble",
    ] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    let args: Vec<String> = args
        .iter()
        .map(|a| a.replace("/data/", &format!("{r}/data/")))
        .collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ctgrade"));
    // Only the task index the test gives (this process may itself run as an array task).
    for v in ctgrade::gc::shard::INDEX_VARIABLES
        .iter()
        .chain(&["SLURM_ARRAY_TASK_MIN"])
    {
        command.env_remove(v);
    }
    let out = command
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

/// `deploy/slurm/<script>`, checked to be valid shell holding each of `needles`.
fn slurm_script(script: &str, needles: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/slurm")
        .join(script);
    let status = Command::new("bash").arg("-n").arg(&path).status().unwrap();
    assert!(status.success(), "{script}: bash -n failed");
    let text = std::fs::read_to_string(&path).unwrap();
    for needle in needles {
        assert!(text.contains(needle), "{script} lacks {needle:?}");
    }
    text
}

#[test]
fn slurm_array_and_merge_scripts() {
    slurm_script(
        "ctgrade-array.sbatch",
        &[
            "#SBATCH --array=0-",
            "#SBATCH --gres=gpu:",
            "exec --nv",
            "--shard \"auto/${SLURM_ARRAY_TASK_COUNT}\" --skip-done",
            // --containall cleans the environment: the index must be passed in.
            "--env \"SLURM_ARRAY_TASK_ID=${SLURM_ARRAY_TASK_ID}\"",
        ],
    );
    slurm_script(
        "ctgrade-merge.sbatch",
        &["/opt/app/ctgrade merge /output --output /output"],
    );

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

fn has(args: &[String], flag: &str) -> bool {
    args.iter().any(|a| a == flag)
}

/// Training: an Indexed Job of one member per pod (one GPU each) writing into a shared volume,
/// and the gather Job that reads the same volume once the Job has completed.
#[test]
fn kubernetes_training_indexed_job_and_gather_job() {
    let path = "deploy/kubernetes/train-indexed-job.yaml";
    let job = load(path);
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    let completions = spec["completions"].as_i64().unwrap();
    // Every member at once, each on its own GPU.
    assert_eq!(spec["parallelism"].as_i64(), Some(completions));
    assert!(spec["backoffLimitPerIndex"].as_i64().unwrap() >= 1);
    let (c, pod) = container(&job);
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"].as_i64(), Some(1));
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    let command = strings(&c["command"]);
    assert_eq!(command, ["/opt/app/ctgrade", "train"]);
    let args = strings(&c["args"]);
    assert_eq!(arg(&args, "--member"), "auto");
    assert_eq!(arg(&args, "--members"), completions.to_string());
    // A retried pod continues its member.
    assert!(has(&args, "--resume"));
    let data = mount(c, pod, "train-data");
    assert_eq!(arg(&args, "--data"), data);
    assert!(arg(&args, "--labels").starts_with(&format!("{data}/")));
    let ensemble = mount(c, pod, "ensemble");
    assert_eq!(arg(&args, "--out"), ensemble);
    let claim = |pod: &Yaml, name: &str| {
        pod["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap()["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let gather = load("deploy/kubernetes/train-gather-job.yaml");
    let (g, gpod) = container(&gather);
    assert_eq!(strings(&g["command"]), ["/opt/app/ctgrade", "train"]);
    let gargs = strings(&g["args"]);
    assert!(has(&gargs, "--gather"));
    assert_eq!(arg(&gargs, "--members"), completions.to_string());
    assert_eq!(arg(&gargs, "--out"), mount(g, gpod, "ensemble"));
    assert_eq!(claim(gpod, "ensemble"), claim(pod, "ensemble"));
    assert!(g["resources"]["limits"]["nvidia.com/gpu"].is_badvalue());
    // The gather runs once the training Job has completed, as its header says.
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    let name = job["metadata"]["name"].as_str().unwrap();
    let wait = text
        .find("kubectl wait --for=condition=complete --timeout=")
        .expect("a kubectl wait line");
    assert!(text[wait..]
        .lines()
        .next()
        .unwrap()
        .ends_with(&format!("job/{name}")));
    let apply = text
        .find("kubectl apply -f train-gather-job.yaml")
        .expect("the gather's kubectl apply line");
    assert!(wait < apply);

    // The command lines as the pods run them (the binary's path aside): the last pod gets past
    // its member index to the (here missing) labels; the gather names the missing members.
    let index = (completions - 1).to_string();
    let line = |command: &[String], args: &[String]| -> Vec<String> {
        command[1..].iter().chain(args).cloned().collect()
    };
    accepted(
        &line(&command, &args),
        &[("JOB_COMPLETION_INDEX", &index)],
        "labels.csv: cannot read it",
    );
    accepted(
        &line(&strings(&g["command"]), &gargs),
        &[],
        &format!("{completions} of {completions} member(s) missing: member-00 (not started)"),
    );
}

/// What a Slurm script hands the container runtime: the script run with a stand-in `apptainer`
/// that writes its arguments down. Returns the `--env` settings and the command after the image.
fn slurm_container_command(
    script: &str,
    env: &[(&str, &str)],
) -> (Vec<(String, String)>, Vec<String>) {
    // In the target folder: a stand-in must be executable, which /tmp may not allow.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("apptainer");
    let args_file = tmp.path().join("args");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/bash\nprintf '%s\\n' \"$@\" > '{}'\n",
            args_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/slurm")
        .join(script);
    let out = Command::new("bash")
        .arg(&path)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("DATA", tmp.path().join("data"))
        .env("OUT", tmp.path().join("out"))
        .env("SIF", "ctgrade.sif")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args: Vec<String> = std::fs::read_to_string(&args_file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(args[0], "exec");
    let image = args.iter().position(|a| a == "ctgrade.sif").unwrap();
    let envs = args[..image]
        .windows(2)
        .filter(|w| w[0] == "--env")
        .filter_map(|w| w[1].split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (envs, args[image + 1..].to_vec())
}

/// Training: a Slurm array of one member per task with a GPU each, and its gather submitted
/// with an afterok dependency on the array.
#[test]
fn slurm_training_array_and_gather_scripts() {
    slurm_script(
        "ctgrade-train-array.sbatch",
        &[
            "#SBATCH --array=0-9\n",
            "#SBATCH --gres=gpu:1\n",
            "#SBATCH --requeue\n",
            "exec --nv",
            // The gather waits for every task to succeed.
            "sbatch --dependency=afterok:$jid --export=ALL,OUT=/data/ensemble ctgrade-train-gather.sbatch",
        ],
    );
    let gather = slurm_script("ctgrade-train-gather.sbatch", &["--dependency=afterok:"]);
    assert!(!gather.contains("--gres"), "the gather needs no GPU");

    // Task 9 of the array 0-9 (--containall cleans the environment: the index must be passed in).
    let (envs, command) = slurm_container_command(
        "ctgrade-train-array.sbatch",
        &[
            ("SLURM_ARRAY_TASK_ID", "9"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "10"),
            ("EXTRA", "--grad-checkpoint --patience 3000"),
        ],
    );
    assert_eq!(command[..2], ["/opt/app/ctgrade", "train"]);
    let args = &command[1..];
    for flag in ["--member auto", "--members 10", "--patience 3000"] {
        assert!(args.join(" ").contains(flag), "{flag}: {args:?}");
    }
    assert!(has(args, "--resume") && has(args, "--grad-checkpoint"));
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(envs.contains(&("SLURM_ARRAY_TASK_ID", "9")), "{envs:?}");
    accepted(args, &envs, "labels.csv: cannot read it");
    // Without EXTRA: no empty argument in its place.
    let (_, plain) = slurm_container_command(
        "ctgrade-train-array.sbatch",
        &[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "10"),
        ],
    );
    assert_eq!(plain.len(), command.len() - 3, "{plain:?}");
    assert!(!plain.iter().any(|a| a.is_empty()), "{plain:?}");

    let (_, gather_command) = slurm_container_command("ctgrade-train-gather.sbatch", &[]);
    assert_eq!(
        gather_command,
        [
            "/opt/app/ctgrade",
            "train",
            "--gather",
            "--out",
            "/data/ensemble"
        ]
    );
    accepted(&gather_command[1..], &[], "no finished member run");
}
