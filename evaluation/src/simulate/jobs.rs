//! The job loop: every case through the algorithm image, the predictions and the evaluation
//! image, with the clean-up on error and on SIGINT/SIGTERM.

use super::*;

/// Set by SIGINT or SIGTERM while a simulation runs.
pub(super) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    // A second signal means "now": leave at once (only async-signal-safe calls here).
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: _exit is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(130) };
    }
}

/// Makes SIGINT and SIGTERM set [`INTERRUPTED`] instead of killing the process, so that the
/// simulation stops at its next check and removes its containers and network. The docker
/// commands it runs get the terminal's Ctrl-C themselves (a caught signal is reset to its
/// default in a child), so a blocking call returns promptly.
pub(super) fn catch_interrupts() {
    INTERRUPTED.store(false, Ordering::SeqCst);
    let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only touches an atomic (or calls _exit).
        unsafe { libc::signal(signal, handler) };
    }
}

/// `Err(Interrupted)` once SIGINT or SIGTERM has arrived.
pub(super) fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(SimulateError::Interrupted)
    } else {
        Ok(())
    }
}

/// A short random id for container and network names.
pub(super) fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Absolute form of `p` (docker bind mounts need one).
pub(super) fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(io_err(p))
}

/// Runs the simulation (see the module documentation). `log` receives one progress line per
/// step and job.
///
/// SIGINT and SIGTERM are caught from here on (see `catch_interrupts`): the simulation then
/// stops with [`SimulateError::Interrupted`] after removing what it started.
pub fn simulate(opts: &SimulateOptions, log: &mut dyn FnMut(&str)) -> Result<SimulationReport> {
    // Everything that can be checked before a container starts.
    let cases = list_cases(&opts.cases)?;
    let truth = load_ground_truth(&opts.ground_truth)?;
    let truth_keys: HashSet<String> = truth.cases.iter().map(|c| match_key(&c.case)).collect();
    if let Some(c) = cases
        .iter()
        .find(|c| !truth_keys.contains(&match_key(&c.name)))
    {
        return Err(SimulateError::Usage(format!(
            "case {} has no row in the ground truth {}; the evaluation would reject its prediction",
            c.name,
            truth.path.display()
        )));
    }
    if let Some(model) = &opts.model {
        if !model.is_file() {
            return Err(SimulateError::Usage(format!(
                "--model {}: no such file",
                model.display()
            )));
        }
    }
    let output = absolute(&opts.output)?;
    fs::create_dir_all(&output).map_err(io_err(&output))?;
    if fs::read_dir(&output)
        .map_err(io_err(&output))?
        .next()
        .is_some()
    {
        return Err(SimulateError::Usage(format!(
            "the output folder {} is not empty; results of two runs would mix",
            output.display()
        )));
    }
    let algorithm_api = api_method(&opts.algorithm_image)?;
    let evaluation_api = api_method(&opts.evaluation_image)?;
    log(&format!(
        "algorithm image {} ({:?} mode), evaluation image {} ({:?} mode), {} case(s)",
        opts.algorithm_image,
        algorithm_api,
        opts.evaluation_image,
        evaluation_api,
        cases.len()
    ));

    catch_interrupts();
    let id = short_id();
    let mut started = Started::default();
    let work = output.join(".simulate");
    started.work = Some(work.clone());
    let input_dir = work.join("input");
    let output_dir = work.join("output");
    let logs = output.join("logs");
    fs::create_dir_all(&logs).map_err(io_err(&logs))?;
    started.logs = Some(logs.clone());
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    set_mode(&work, 0o755)?;

    let model_dir = match &opts.model {
        Some(tarball) => {
            let dir = work.join("model");
            fresh_dir(&dir, 0o755)?;
            let tar = Command::new("tar")
                .arg("-xzf")
                .arg(tarball)
                .arg("-C")
                .arg(&dir)
                .output()
                .map_err(io_err(tarball))?;
            if !tar.status.success() {
                return Err(SimulateError::Usage(format!(
                    "cannot extract the model tarball {}: {}",
                    tarball.display(),
                    last_line(&String::from_utf8_lossy(&tar.stderr)).unwrap_or_default()
                )));
            }
            Some(dir)
        }
        None => None,
    };

    let mut tester = None;
    if algorithm_api == ApiMethod::Invoke || evaluation_api == ApiMethod::Invoke {
        let net = format!("ctgrade-sim-{id}");
        docker(&["network", "create", "--internal", &net])?;
        started.network = Some(net.clone());
        let name = format!("ctgrade-sim-{id}-tester");
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net,
            &opts.tester_image,
            "sleep",
            "infinity",
        ])?;
        started.containers.push(name.clone());
        tester = Some(Tester { name });
    }

    // The algorithm container's mounts and flags, shared by both modes.
    let mut alg_args = restricted(&opts.memory);
    alg_args.extend(bind(&input_dir, "/input", true));
    alg_args.extend(bind(&output_dir, "/output", false));
    if let Some(dir) = &model_dir {
        alg_args.extend(bind(dir, "/opt/ml/model", true));
    }
    if opts.gpus {
        alg_args.extend(["--gpus".into(), "all".into()]);
    }
    // The folders must exist before the container binds them.
    fresh_dir(&input_dir, 0o755)?;
    fresh_dir(&output_dir, 0o777)?;

    let alg_name = format!("ctgrade-sim-{id}-algorithm");
    if let (ApiMethod::Invoke, Some(t)) = (algorithm_api, &tester) {
        let mut args: Vec<OsString> = vec!["run".into(), "-d".into(), "--name".into()];
        args.push(alg_name.clone().into());
        args.push("--network".into());
        args.push(started.network.clone().unwrap_or_default().into());
        args.extend(alg_args.iter().cloned());
        args.push(opts.algorithm_image.clone().into());
        docker(&args)?;
        started.containers.push(alg_name.clone());
        let t0 = Instant::now();
        wait_healthy(t, &alg_name, "algorithm", opts.health)?;
        log(&format!(
            "algorithm container healthy after {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
    }

    let mut jobs = Vec::new();
    let mut failed = Vec::new();
    let mut next_pk = 1u64;
    for (k, case) in cases.iter().enumerate() {
        check_interrupt()?;
        let pk = uuid::Uuid::new_v4().to_string();
        let image_pk = uuid::Uuid::new_v4().to_string();
        let input = ct_input(next_pk, &image_pk, &case.name, case.kind);
        next_pk += 1;
        // Provision /input as the platform does: the socket file named by the image's id, and
        // inputs.json; /output starts empty.
        fresh_dir(&input_dir, 0o755)?;
        let socket_dir = input_dir.join(&input.socket.relative_path);
        fs::create_dir_all(&socket_dir).map_err(io_err(&socket_dir))?;
        for dir in [input_dir.join("images"), socket_dir.clone()] {
            set_mode(&dir, 0o755)?;
        }
        let files = match case.kind {
            CaseKind::Image(ext) => vec![(case.path.clone(), format!("{image_pk}{ext}"))],
            // The platform names each slice <SOPInstanceUID>.dcm; simulate, which parses no DICOM,
            // keeps each file's own name (the algorithm recognises DICOM files by content).
            CaseKind::DicomSeries => dicom_files(&case.path)?
                .into_iter()
                .map(|f| {
                    let stem = f
                        .file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    (f, format!("{stem}.dcm"))
                })
                .collect(),
        };
        for (from, name) in files {
            let dest = socket_dir.join(name);
            fs::copy(&from, &dest).map_err(io_err(&from))?;
            set_mode(&dest, 0o644)?;
        }
        let inputs_json =
            serde_json::to_string_pretty(&[&input]).map_err(|e| SimulateError::Io {
                path: input_dir.join("inputs.json"),
                cause: e.into(),
            })?;
        write_atomic(&input_dir.join("inputs.json"), inputs_json.as_bytes())?;
        fresh_dir(&output_dir, 0o777)?;

        let started_at = SystemTime::now();
        let t0 = Instant::now();
        let outcome: Option<String> = match (algorithm_api, &tester) {
            (ApiMethod::Invoke, Some(t)) => {
                let url = format!("http://{alg_name}:{INVOKE_PORT}/invoke");
                let (status, body) = t.call("POST", &url, opts.job_timeout)?;
                // A Ctrl-C also ends the curl call: report the interruption, not its failure.
                check_interrupt()?;
                match status {
                    201 => None,
                    // No answer (a time-out, a crash): the container may still be busy with
                    // this job, so later calls would meet a 409; the platform would stop it.
                    0 => {
                        return Err(SimulateError::AlgorithmStopped {
                            case: case.name.clone(),
                            reason: format!("POST /invoke got no answer: {body}"),
                        })
                    }
                    500 => Some(last_line(&body).unwrap_or_else(|| "500 without a body".into())),
                    s => Some(format!(
                        "POST /invoke answered {s}: {}",
                        last_line(&body).unwrap_or_default()
                    )),
                }
            }
            _ => {
                let mut args: Vec<OsString> = vec!["--network".into(), "none".into()];
                args.extend(alg_args.iter().cloned());
                args.push(opts.algorithm_image.clone().into());
                run_once(
                    &format!("{alg_name}-{k}"),
                    &args,
                    &logs.join(&pk),
                    opts.job_timeout,
                )?
            }
        };
        let duration = t0.elapsed();
        if algorithm_api == ApiMethod::Invoke && !is_running(&alg_name) {
            return Err(SimulateError::AlgorithmStopped {
                case: case.name.clone(),
                reason: container_last_line(&alg_name),
            });
        }
        let outcome = match outcome {
            None => read_outputs(&output_dir, next_pk),
            Some(reason) => Err(reason),
        };
        match outcome {
            Ok(outputs) => {
                next_pk += outputs.len() as u64;
                let dest = output.join(&pk).join("output");
                copy_dir(&output_dir, &dest)?;
                let duration_text = format_duration(duration);
                let (exec_duration, invoke_duration) = match algorithm_api {
                    ApiMethod::Invoke => (None, Some(duration_text)),
                    ApiMethod::Exec => (Some(duration_text), None),
                };
                log(&format!(
                    "job {pk} ({}): succeeded in {:.1} s: {} = {}, {} = {}",
                    case.name,
                    duration.as_secs_f64(),
                    outputs[0].socket.slug,
                    outputs[0].value,
                    outputs[1].socket.slug,
                    outputs[1].value
                ));
                jobs.push(Job {
                    pk,
                    inputs: vec![input],
                    outputs,
                    status: "Succeeded".into(),
                    started_at: Some(format_time(started_at)),
                    completed_at: Some(format_time(SystemTime::now())),
                    exec_duration,
                    invoke_duration,
                });
            }
            Err(reason) => {
                log(&format!(
                    "job {pk} ({}): FAILED after {:.1} s: {reason}",
                    case.name,
                    duration.as_secs_f64()
                ));
                failed.push(FailedJob {
                    pk,
                    case: case.name.clone(),
                    reason,
                    duration: format_duration(duration),
                });
            }
        }
    }
    // The algorithm is done: free its memory (and GPU) before the evaluation.
    if algorithm_api == ApiMethod::Invoke {
        started.remove_container(&alg_name);
    }

    write_predictions(&output.join("predictions.json"), &jobs)?;
    if !failed.is_empty() {
        let doc = serde_json::json!({"note": FAILED_JOBS_NOTE, "jobs": failed});
        let text = serde_json::to_string_pretty(&doc).map_err(|e| SimulateError::Io {
            path: output.join("failed-jobs.json"),
            cause: e.into(),
        })? + "\n";
        write_atomic(&output.join("failed-jobs.json"), text.as_bytes())?;
    }
    if jobs.is_empty() {
        return Err(SimulateError::NothingSucceeded(failed.len()));
    }
    // The ground truth the evaluation sees: the rows of the successful jobs' cases only. The
    // evaluator rejects ground-truth cases without a prediction, which on the platform means a
    // failed job (no evaluation at all there) and here may also mean a folder holding a subset
    // of the table's cases.
    let succeeded_keys: HashSet<String> = jobs
        .iter()
        .flat_map(|j| &j.inputs)
        .filter_map(|sv| sv.image.as_ref())
        .map(|image| match_key(&image.name))
        .collect();
    let truth_name = truth.path.file_name().map_or_else(
        || "ground-truth.csv".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let evaluated_truth = output.join("ground-truth.csv");
    let dropped = write_only_cases(&truth, &succeeded_keys, &evaluated_truth)?;
    if dropped > 0 {
        log(&format!(
            "ground truth: {dropped} row(s) without a successful job left out ({} failed); the \
             rows evaluated are in {}",
            failed.len(),
            evaluated_truth.display()
        ));
    }

    // The evaluation's /input: predictions.json and each job's outputs under <pk>/output/.
    let eval_input = work.join("eval-input");
    let eval_output = work.join("eval-output");
    let eval_truth = work.join("ground_truth");
    fresh_dir(&eval_input, 0o755)?;
    fresh_dir(&eval_output, 0o777)?;
    fresh_dir(&eval_truth, 0o755)?;
    fs::copy(
        output.join("predictions.json"),
        eval_input.join("predictions.json"),
    )
    .map_err(io_err(&eval_input))?;
    set_mode(&eval_input.join("predictions.json"), 0o644)?;
    for job in &jobs {
        copy_dir(
            &output.join(&job.pk).join("output"),
            &eval_input.join(&job.pk).join("output"),
        )?;
    }
    let truth_copy = eval_truth.join(&truth_name);
    fs::copy(&evaluated_truth, &truth_copy).map_err(io_err(&truth_copy))?;
    set_mode(&truth_copy, 0o644)?;

    check_interrupt()?;
    let mut eval_args = restricted(&opts.memory);
    eval_args.extend(bind(&eval_input, "/input", true));
    eval_args.extend(bind(&eval_truth, "/opt/ml/input/data/ground_truth", true));
    eval_args.extend(bind(&eval_output, "/output", false));
    let eval_name = format!("ctgrade-sim-{id}-evaluation");
    let t0 = Instant::now();
    match (evaluation_api, &tester) {
        (ApiMethod::Invoke, Some(t)) => {
            let mut args: Vec<OsString> = vec!["run".into(), "-d".into(), "--name".into()];
            args.push(eval_name.clone().into());
            args.push("--network".into());
            args.push(started.network.clone().unwrap_or_default().into());
            args.extend(eval_args);
            args.push(opts.evaluation_image.clone().into());
            docker(&args)?;
            started.containers.push(eval_name.clone());
            wait_healthy(t, &eval_name, "evaluation", opts.health)?;
            let url = format!("http://{eval_name}:{INVOKE_PORT}/invoke");
            let (status, body) = t.call("POST", &url, opts.job_timeout)?;
            check_interrupt()?;
            if status != 201 {
                let reason = last_line(&body).unwrap_or_default();
                return Err(SimulateError::Evaluation(format!(
                    "POST /invoke answered {status}: {reason}"
                )));
            }
        }
        _ => {
            let mut args: Vec<OsString> = vec!["--network".into(), "none".into()];
            args.extend(eval_args);
            args.push(opts.evaluation_image.clone().into());
            if let Some(reason) = run_once(
                &eval_name,
                &args,
                &logs.join("evaluation"),
                opts.job_timeout,
            )? {
                return Err(SimulateError::Evaluation(reason));
            }
        }
    }
    let metrics_file = eval_output.join("metrics.json");
    let bytes = fs::read(&metrics_file).map_err(|_| {
        SimulateError::Evaluation("it succeeded but wrote no /output/metrics.json".into())
    })?;
    let metrics: Value = serde_json::from_slice(&bytes).map_err(|e| {
        SimulateError::Evaluation(format!("its metrics.json is not valid JSON: {e}"))
    })?;
    write_atomic(&output.join("metrics.json"), &bytes)?;
    log(&format!(
        "evaluation done in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(SimulationReport {
        algorithm_api,
        evaluation_api,
        jobs,
        failed,
        metrics,
        output,
    })
}
