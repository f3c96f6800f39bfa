//! `ctgrade run --report --spread --heat-map`: the page's structure and pictures, the members'
//! probabilities and spread against each member run alone, the heat map's grid and range, and the
//! demonstration notice.

mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use common::{ctgrade, make_ensemble, run_args};
use ctgrade::ensemble::{self, Manifest};
use ctgrade::grading::Head;
use ctgrade::model::{self, Arch, NetworkConfig};
use ctgrade::synth::{phantom, PhantomConfig};
use ctgrade::volume::{self, ElementType};

fn write_phantom(path: &Path, seed: u64, co_rads: u8, flip_x: bool) {
    let cfg = PhantomConfig {
        size: [96, 96, 48],
        spacing: [3.5, 3.5, 6.0],
        seed,
        co_rads,
    };
    let (mut ct, _) = phantom(&cfg).unwrap();
    if flip_x {
        // Stored right-to-left: preprocessing flips it; the heat map must keep the file's grid.
        ct.direction = [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        ct.origin[0] = -ct.origin[0];
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    volume::write(path, &ct, ElementType::Short).unwrap();
}

/// A batch of two phantoms and one unreadable file.
fn batch(dir: &Path) -> PathBuf {
    let input = dir.join("input");
    write_phantom(&input.join("a.mha"), 2, 4, false);
    std::fs::write(input.join("b.mha"), b"ObjectType = Image\nNDims = 3\n").unwrap();
    write_phantom(&input.join("c.mha"), 3, 5, true);
    input
}

fn run(input: &Path, output: &Path, weights: &Path, extra: &[&str]) -> String {
    let mut args = run_args(input, output, weights);
    args.extend_from_slice(extra);
    let out = ctgrade(&args, &[]);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn summary(output: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("summary.json")).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

/// Each member's probability in summary.json equals that member graded alone (a one-member
/// ensemble), and the spread is their population standard deviation, in summary.json,
/// summary.csv, the spread socket and the log.
#[test]
fn spread_matches_members_run_alone() {
    for head in [Head::Continuous, Head::Categorical] {
        let dir = tempfile::tempdir().unwrap();
        let weights = make_ensemble(dir.path(), head, 3);
        let input = batch(dir.path());
        let output = dir.path().join("output");
        let log = run(&input, &output, &weights, &["--spread", "--heat-map"]);
        let cases = summary(&output);
        assert_eq!(cases.len(), 3, "{log}");
        let manifest: Manifest =
            serde_json::from_slice(&std::fs::read(weights.join("ensemble.json")).unwrap()).unwrap();
        let mut alone = Vec::new();
        for (i, m) in manifest.members.iter().enumerate() {
            let one = ensemble::create(
                &dir.path().join(format!("member-{i}")),
                Manifest {
                    members: Vec::new(),
                    lesion_model: None,
                    lobe_model: None,
                    ..manifest.clone()
                },
                &[weights.join(&m.file)],
            );
            assert!(one.is_ok());
            let out = dir.path().join(format!("alone-{i}"));
            run(&input, &out, &dir.path().join(format!("member-{i}")), &[]);
            alone.push(summary(&out));
        }
        let csv = std::fs::read_to_string(output.join("summary.csv")).unwrap();
        assert!(csv.starts_with(
            "case,file,probability,co_rads,error,seconds,spread,member_probabilities,"
        ));
        for (k, case) in cases.iter().enumerate() {
            let name = case["case"].as_str().unwrap();
            if name == "b" {
                assert!(case["error"].is_string());
                assert!(case.get("spread").is_none());
                assert!(!output
                    .join("b")
                    .join("probability-covid-19-spread.json")
                    .exists());
                continue;
            }
            let members: Vec<f64> = case["member_probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(members.len(), 3);
            for (i, a) in alone.iter().enumerate() {
                let p = a[k]["probability"].as_f64().unwrap();
                assert!((members[i] - p).abs() < 1e-9, "{head:?} {name} member {i}");
            }
            let mean = members.iter().sum::<f64>() / 3.0;
            let sd = (members.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / 3.0).sqrt();
            let spread = case["spread"].as_f64().unwrap();
            assert!((spread - sd).abs() < 1e-12);
            assert!(spread > 0.0, "random members should disagree");
            if head == Head::Continuous {
                let p = case["probability"].as_f64().unwrap();
                assert!((p - mean).abs() < 1e-9);
            }
            let socket: f64 =
                std::fs::read_to_string(output.join(name).join("probability-covid-19-spread.json"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
            assert!((socket - spread).abs() < 1e-12);
            let row = csv
                .lines()
                .find(|l| l.starts_with(&format!("{name},")))
                .unwrap();
            let fields: Vec<&str> = row.split(',').collect();
            // serde_json parses floats to within an ulp: compare with a tolerance.
            assert!((fields[6].parse::<f64>().unwrap() - spread).abs() < 1e-12);
            let listed: Vec<f64> = fields[7].split(';').map(|v| v.parse().unwrap()).collect();
            assert_eq!(listed.len(), members.len());
            for (l, m) in listed.iter().zip(&members) {
                assert!((l - m).abs() < 1e-12, "{row}");
            }
            assert!(
                log.contains(&format!("{name}: probability"))
                    && log.contains(&format!("spread {spread:.4}")),
                "{log}"
            );
        }
    }
}

/// `(src, width, height)` of every `<img>` of the page.
fn images(html: &str) -> Vec<(String, u32, u32)> {
    let attr = |tag: &str, name: &str| -> String {
        let key = format!(" {name}=\"");
        let start = tag
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in {tag:.80}"))
            + key.len();
        let end = start + tag[start..].find('"').unwrap();
        tag[start..end].to_string()
    };
    html.match_indices("<img")
        .map(|(i, _)| {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            (
                attr(tag, "src"),
                attr(tag, "width").parse().unwrap(),
                attr(tag, "height").parse().unwrap(),
            )
        })
        .collect()
}

/// One section per case, every picture a PNG of its stated size, the summary table as
/// summary.json; heat maps on each CT's grid in [0, 1].
#[test]
fn report_structure_images_and_heat_maps() {
    let dir = tempfile::tempdir().unwrap();
    // Trained (deterministic) weights: a random network's Grad-CAM may be zero everywhere.
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/default");
    let input = batch(dir.path());
    let output = dir.path().join("output");
    let log = run(&input, &output, &weights, &["--report", "--heat-map"]);
    let html = std::fs::read_to_string(output.join("report.html")).unwrap_or_else(|e| {
        panic!("no report.html ({e}): {log}");
    });
    let cases = summary(&output);
    assert!(!html.contains("<script"), "no scripts");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no network"
    );

    // One section per case, in order; the failed one with its reason.
    let sections: Vec<&str> = html.split("<section class=\"case\"").skip(1).collect();
    assert_eq!(sections.len(), cases.len());
    for (sec, case) in sections.iter().zip(&cases) {
        let name = case["case"].as_str().unwrap();
        assert!(
            sec.starts_with(&format!(" id=\"case-{name}\"")),
            "{sec:.100}"
        );
        match case["error"].as_str() {
            Some(reason) => {
                assert!(sec.contains("Failed: "));
                assert!(!sec.contains("<img"), "a failed case has no pictures");
                // The reason names the file (escaped for HTML).
                assert!(reason.contains("b.mha") && sec.contains("b.mha"));
            }
            None => {
                let p = case["probability"].as_f64().unwrap();
                assert!(sec.contains(&format!("probability <b>{p:.4}</b>")));
                // Three views, three heat-map views and the input strip.
                assert_eq!(images(sec).len(), 7, "{name}");
                assert!(sec.contains("spread (SD)"));
                assert!(sec.contains("lung mask outlined"));
                // Slices named by their position in mm and the CT's own index.
                for view in [
                    "axial slice at z = ",
                    "coronal slice at y = ",
                    "sagittal slice at x = ",
                ] {
                    assert!(sec.contains(view), "{name}: no '{view}'");
                }
                assert!(sec.contains("(CT k = "), "{name}");
                // The colour bar has its ticks, and the heat map's coarse grid is stated.
                assert!(sec.contains("class=\"heat-bar\""), "{name}");
                for tick in ["0", "0.1", "0.5", "1"] {
                    assert!(
                        sec.contains(&format!(">{tick}</text>")),
                        "{name}: tick {tick}"
                    );
                }
                assert!(sec.contains("coarse grid of "), "{name}");
            }
        }
    }

    // Every picture is a PNG of the size its tag states.
    let pictures = images(&html);
    assert_eq!(pictures.len(), 14);
    for (src, width, height) in pictures {
        let data = src
            .strip_prefix("data:image/png;base64,")
            .expect("an embedded PNG");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        let decoder = png::Decoder::new(Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (width, height));
        assert!(width >= 12 && height >= 12);
        let pixels = &buf[..info.buffer_size()];
        assert!(pixels.iter().any(|&v| v != pixels[0]), "a blank picture");
    }

    // The summary table: one row per case of summary.json, same values.
    let table = &html[html.find("<table id=\"summary\">").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let rows: Vec<&str> = table.split("<tr data-case=\"").skip(1).collect();
    assert_eq!(rows.len(), cases.len());
    for (row, case) in rows.iter().zip(&cases) {
        let cells: Vec<&str> = row
            .split("<td>")
            .skip(1)
            .map(|c| &c[..c.find("</td>").unwrap()])
            .collect();
        assert!(cells[0].contains(&format!(">{}<", case["case"].as_str().unwrap())));
        assert_eq!(cells[1], case["file"].as_str().unwrap());
        let fmt = |v: &serde_json::Value| v.as_f64().map_or(String::new(), |p| format!("{p:.4}"));
        assert_eq!(cells[2], fmt(&case["probability"]));
        assert_eq!(
            cells[3],
            case["co_rads"]
                .as_u64()
                .map_or(String::new(), |c| c.to_string())
        );
        assert_eq!(cells[4], fmt(&case["spread"]));
        assert_eq!(cells[5].contains("failed"), case["error"].is_string());
    }

    // Heat maps: float32 on the CT's own grid, values in [0, 1], not constant.
    for name in ["a", "c"] {
        let path = output.join(format!("images/covid-19-heat-map/{name}.mha"));
        let header = std::fs::read(&path).unwrap();
        let header = String::from_utf8_lossy(&header[..header.len().min(600)]).into_owned();
        assert!(header.contains("ElementType = MET_FLOAT"), "{header}");
        let heat = volume::read(&path).unwrap();
        let ct = volume::read(&input.join(format!("{name}.mha"))).unwrap();
        assert_eq!(heat.size, ct.size);
        assert_eq!(heat.spacing, ct.spacing);
        assert_eq!(heat.origin, ct.origin);
        assert_eq!(heat.direction, ct.direction);
        let (lo, hi) = heat
            .data
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(lo >= 0.0 && hi <= 1.0, "{name}: [{lo}, {hi}]");
        assert!(hi > lo, "{name}: constant heat map");
        // Scaled to a maximum of 1 on the network's grid; the CT's voxels sample it in between.
        assert!(hi > 0.5, "{name}: maximum {hi}");
    }
    assert!(!output.join("images/covid-19-heat-map/b.mha").exists());
}

/// A DICOM series socket: the heat map is on the series' grid, named after the case, and the
/// report shows the case.
#[test]
fn heat_map_of_a_dicom_series() {
    let dir = tempfile::tempdir().unwrap();
    let (ct, _) = phantom(&PhantomConfig {
        size: [96, 96, 48],
        spacing: [3.5, 3.5, 6.0],
        seed: 6,
        co_rads: 5,
    })
    .unwrap();
    let input = dir.path().join("input");
    let series = input.join("images/ct");
    std::fs::create_dir_all(&series).unwrap();
    common::write_series(&ct, &series);
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/default");
    let output = dir.path().join("output");
    let log = run(&input, &output, &weights, &["--heat-map", "--report"]);
    let maps: Vec<PathBuf> = std::fs::read_dir(output.join("images/covid-19-heat-map"))
        .unwrap_or_else(|e| panic!("no heat maps ({e}): {log}"))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(maps.len(), 1, "{maps:?}");
    let heat = volume::read(&maps[0]).unwrap();
    let read = volume::read(&series).unwrap();
    assert_eq!(heat.size, read.size);
    for k in 0..3 {
        assert!((heat.spacing[k] - read.spacing[k]).abs() < 1e-9);
        assert!((heat.origin[k] - read.origin[k]).abs() < 1e-9);
    }
    assert_eq!(heat.direction, read.direction);
    assert!(heat.data.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(
        heat.data.iter().any(|&v| v != heat.data[0]),
        "constant heat map"
    );
    let html = std::fs::read_to_string(output.join("report.html")).unwrap();
    assert_eq!(html.matches("<section class=\"case\"").count(), 1);
    assert!(html.contains(", heat map</figcaption>"));
}

/// `--heat-map` with networks it cannot explain is refused before any case is graded.
#[test]
fn heat_map_refused_for_2d_networks() {
    let dir = tempfile::tempdir().unwrap();
    let network = NetworkConfig {
        arch: Arch::DenseNet121_2d,
        ..common::tiny_network(Head::Continuous)
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    model::build(&network, vb).unwrap();
    let member = dir.path().join("m.safetensors");
    varmap.save(&member).unwrap();
    let weights = dir.path().join("ensemble");
    let manifest = Manifest {
        name: "2d".into(),
        description: String::new(),
        demonstration: false,
        network,
        head: Head::Continuous,
        input: common::tiny_spec(),
        members: Vec::new(),
        lesion_model: None,
        lobe_model: None,
    };
    ensemble::create(&weights, manifest, &[member]).unwrap();
    let input = dir.path().join("input");
    write_phantom(&input.join("a.mha"), 5, 3, false);
    let output = dir.path().join("output");
    let mut args = run_args(&input, &output, &weights);
    args.push("--heat-map");
    let out = ctgrade(&args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("heat map not supported for densenet121-2d"),
        "{stderr}"
    );
    assert!(!output.join("probability-covid-19.json").exists());
    // Without --heat-map the same weights grade.
    let out = ctgrade(&run_args(&input, &output, &weights), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The demonstration ensemble says so on stderr and in the report; other weights do not.
#[test]
fn demonstration_weights_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    write_phantom(&input.join("a.mha"), 5, 3, false);
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/default");
    let output = dir.path().join("demo");
    let log = run(&input, &output, &demo, &["--report"]);
    let notice = "ctgrade: demonstration weights trained on synthetic phantoms; not a diagnosis";
    assert!(log.contains(notice), "{log}");
    let html = std::fs::read_to_string(output.join("report.html")).unwrap();
    assert!(html.contains("not a diagnosis"));

    let weights = make_ensemble(dir.path(), Head::Continuous, 1);
    let other = dir.path().join("other");
    let log = run(&input, &other, &weights, &["--report"]);
    assert!(!log.contains("not a diagnosis"), "{log}");
    let html = std::fs::read_to_string(other.join("report.html")).unwrap();
    assert!(!html.contains("not a diagnosis"));
    assert!(log.contains("a: probability"), "{log}");
    // The manifest field is optional and written only when set.
    let text = std::fs::read_to_string(weights.join("ensemble.json")).unwrap();
    assert!(!text.contains("demonstration"));
}
