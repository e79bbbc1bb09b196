//! A stopped run resumes to exactly the losses of an uninterrupted one:
//! in process (the stop flag Ctrl-C sets) and through the binary with a real
//! SIGINT, then `--resume`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use common::{Quiet, StopAt, prepare};
use lamda_runtime::session::{RunOptions, run};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lamdac-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn losses_of(metrics: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn stop_and_resume_in_process_is_bit_for_bit() {
    // The golden LaMDA case: B freezes column by column, so the freeze step
    // and the optimizer's per-tensor counters must survive the checkpoint.
    let spec = PathBuf::from("tests/golden_specs/lamda_qv_r4_linear03.lamda");
    let full_out = tmp("full");
    let opts = RunOptions {
        spec: spec.clone(),
        out: Some(full_out.clone()),
        ..RunOptions::default()
    };
    let full = run(&mut prepare(&opts).unwrap(), &mut Quiet, &AtomicBool::new(false)).unwrap();

    let out = tmp("stopped");
    let opts = RunOptions {
        spec: spec.clone(),
        out: Some(out.clone()),
        ..RunOptions::default()
    };
    let stop = AtomicBool::new(false);
    let first = run(&mut prepare(&opts).unwrap(), &mut StopAt(2, &stop), &stop).unwrap();
    assert!(first.interrupted);
    assert_eq!(first.steps, 2);
    let opts = RunOptions {
        spec,
        out: Some(out.clone()),
        resume: Some(out.clone()),
        ..RunOptions::default()
    };
    let mut resumed = prepare(&opts).unwrap();
    assert_eq!(resumed.resumed_from, Some(2));
    let second = run(&mut resumed, &mut Quiet, &AtomicBool::new(false)).unwrap();
    assert_eq!(
        second.losses, full.losses,
        "losses after resume differ from the uninterrupted run"
    );
    assert_eq!(
        losses_of(&out.join("metrics.jsonl")),
        losses_of(&full_out.join("metrics.jsonl"))
    );
    for d in [full_out, out] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn resume_refuses_another_spec() {
    let out = tmp("mismatch");
    let spec = PathBuf::from("tests/golden_specs/lamda_qv_r4_linear03.lamda");
    let opts = RunOptions {
        spec,
        out: Some(out.clone()),
        steps: Some(3),
        ..RunOptions::default()
    };
    run(&mut prepare(&opts).unwrap(), &mut Quiet, &AtomicBool::new(false)).unwrap();
    let other = RunOptions {
        spec: PathBuf::from("tests/golden_specs/lamda_qv_r4_linear03.lamda"),
        out: Some(out.clone()),
        steps: Some(4),
        resume: Some(out.clone()),
        ..RunOptions::default()
    };
    let err = prepare(&other).err().expect("a mismatch");
    assert_eq!(err.code().as_str(), "lamda::resume::mismatch", "{err}");
    let _ = std::fs::remove_dir_all(out);
}

fn lamdac(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_lamdac"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs")
}

#[cfg(unix)]
#[test]
fn sigint_saves_a_checkpoint_and_resume_continues_exactly() {
    let steps = "40";
    let full = tmp("cli-full");
    let status = lamdac(&[
        "train",
        "examples/quickstart.lamda",
        "--steps",
        steps,
        "--quiet",
        "--out",
        full.to_str().unwrap(),
    ])
    .wait()
    .unwrap();
    assert!(status.success());
    let want = losses_of(&full.join("metrics.jsonl"));
    assert_eq!(want.len(), 41);
    // The quickstart learns: the final evaluation is far below the first loss.
    assert!(want[40].1 < 0.75 * want[0].1, "loss {} -> {}", want[0].1, want[40].1);

    let out = tmp("cli-int");
    let child = lamdac(&[
        "train",
        "examples/quickstart.lamda",
        "--steps",
        steps,
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    // Wait for a few steps, then Ctrl-C.
    let metrics = out.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 3 {
        assert!(started.elapsed().as_secs() < 120, "the run made no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    let output = child.wait_with_output().unwrap();
    let status = output.status;
    if status.success() {
        eprintln!("the run finished before the signal arrived; nothing to resume");
    } else {
        assert_eq!(status.code(), Some(130), "an interrupted run exits 130");
        let done = losses_of(&metrics).len();
        assert!(done < 41);
        // Issue 10.4: the printed command, pasted verbatim into a shell, must
        // continue this run in its folder (it dropped `--steps` before, and
        // without `--out` a resume wrote to the spec's `out`).
        let stderr = String::from_utf8_lossy(&output.stderr);
        let command = stderr
            .lines()
            .find_map(|l| l.strip_prefix("resume with: "))
            .unwrap_or_else(|| panic!("no resume command in:\n{stderr}"));
        assert!(command.contains("--steps 40"), "{command}");
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_lamdac")).parent().unwrap();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let status = Command::new("sh")
            .args(["-c", &format!("{command} --quiet")])
            .env("PATH", path)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "`{command}` failed");
    }
    assert_eq!(
        losses_of(&metrics),
        want,
        "an interrupted and resumed run must match the uninterrupted one"
    );
    for d in [full, out] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A finished run of the golden spec (10 steps) in a fresh folder; returns the
/// folder and its (only) checkpoint folder.
fn finished_run(name: &str) -> (PathBuf, PathBuf) {
    let out = tmp(name);
    let opts = RunOptions {
        spec: PathBuf::from("tests/golden_specs/lamda_qv_r4_linear03.lamda"),
        out: Some(out.clone()),
        ..RunOptions::default()
    };
    run(&mut prepare(&opts).unwrap(), &mut Quiet, &AtomicBool::new(false)).unwrap();
    let ckpt = out.join("checkpoints").join("step-000010");
    assert!(ckpt.join("state.json").is_file());
    (out, ckpt)
}

fn resume_error(out: &Path) -> String {
    let opts = RunOptions {
        spec: PathBuf::from("tests/golden_specs/lamda_qv_r4_linear03.lamda"),
        out: Some(out.to_path_buf()),
        resume: Some(out.to_path_buf()),
        ..RunOptions::default()
    };
    match prepare(&opts) {
        Ok(_) => "resumed".into(),
        Err(e) => format!("{} {e}", e.code()),
    }
}

fn edit_state(ckpt: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = ckpt.join("state.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

/// Issue 10.3: an edited state.json was trusted: `"step": 1000` in a short
/// run "trained 1000 steps", steps that disagree with the saved losses and an
/// empty `adam_steps` were accepted, a flipped bit in the state tensors went
/// unnoticed, and `checkpoints/latest` could lead out of the run folder.
#[test]
fn resume_refuses_an_edited_checkpoint() {
    let (out, ckpt) = finished_run("edited");
    let original = std::fs::read(ckpt.join("state.json")).unwrap();
    assert_eq!(resume_error(&out), "resumed", "an untouched checkpoint resumes");
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("step 1000", Box::new(|v| v["step"] = 1000.into())),
        ("step 0", Box::new(|v| v["step"] = 0.into())),
        ("step 5", Box::new(|v| v["step"] = 5.into())),
        ("step 25", Box::new(|v| v["step"] = 25.into())),
        (
            "no adam counters",
            Box::new(|v| v["adam_steps"] = serde_json::json!({})),
        ),
        (
            "no checksum",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("state_checksum");
            }),
        ),
    ];
    for (what, edit) in cases {
        std::fs::write(ckpt.join("state.json"), &original).unwrap();
        edit_state(&ckpt, edit);
        let e = resume_error(&out);
        assert!(e.starts_with("lamda::resume::invalid"), "{what}: {e}");
    }
    std::fs::write(ckpt.join("state.json"), &original).unwrap();

    // One flipped bit in the last tensor value of state.safetensors.
    let st = ckpt.join("state.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x10;
    std::fs::write(&st, &bytes).unwrap();
    let e = resume_error(&out);
    assert!(e.starts_with("lamda::resume::invalid") && e.contains("checksum"), "{e}");
    bytes[n - 2] ^= 0x10;
    std::fs::write(&st, &bytes).unwrap();
    assert_eq!(resume_error(&out), "resumed");

    // `latest` naming a path outside the run folder.
    let outside = tmp("edited-outside");
    std::fs::create_dir_all(outside.join("step-000010")).unwrap();
    for f in ["state.json", "state.safetensors"] {
        std::fs::copy(ckpt.join(f), outside.join("step-000010").join(f)).unwrap();
    }
    for name in [
        "../../..",
        "../../lamdac-elsewhere/step-000010",
        "/etc",
        "step-000010/../../x",
    ] {
        std::fs::write(out.join("checkpoints").join("latest"), format!("{name}\n")).unwrap();
        let e = resume_error(&out);
        assert!(e.starts_with("lamda::resume::invalid"), "latest = {name}: {e}");
    }
    let rel = Path::new("..")
        .join("..")
        .join(outside.file_name().unwrap())
        .join("step-000010");
    std::fs::write(out.join("checkpoints").join("latest"), rel.to_str().unwrap()).unwrap();
    let e = resume_error(&out);
    assert!(
        e.starts_with("lamda::resume::invalid"),
        "latest = {}: {e}",
        rel.display()
    );
    for d in [out, outside] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Issue 10.4: `--resume DIR` without `--out` continues in DIR (the run the
/// checkpoint belongs to), not in the spec's `out` or `runs/<name>`.
#[test]
fn resume_without_out_continues_in_the_resumed_folder() {
    let out = tmp("no-out");
    let spec = PathBuf::from("tests/golden_specs/lamda_qv_r4_linear03.lamda");
    let opts = RunOptions {
        spec: spec.clone(),
        out: Some(out.clone()),
        ..RunOptions::default()
    };
    let stop = AtomicBool::new(false);
    run(&mut prepare(&opts).unwrap(), &mut StopAt(2, &stop), &stop).unwrap();
    for from in [
        out.clone(),
        out.join("checkpoints"),
        out.join("checkpoints").join("step-000002"),
    ] {
        let opts = RunOptions {
            spec: spec.clone(),
            resume: Some(from.clone()),
            ..RunOptions::default()
        };
        let session = prepare(&opts).unwrap();
        assert_eq!(session.resumed_from, Some(2));
        assert_eq!(session.out, out, "resuming from {}", from.display());
    }
    let _ = std::fs::remove_dir_all(out);
}

/// The library's session reports a spec with errors as `lamda::spec` (the
/// CLI reports the diagnostics themselves first).
#[test]
fn a_session_on_a_spec_with_errors_is_lamda_spec() {
    let opts = RunOptions {
        spec: PathBuf::from("tests/ui/many_errors.lamda"),
        ..RunOptions::default()
    };
    let err = prepare(&opts).err().expect("errors");
    assert_eq!(err.code().as_str(), "lamda::spec", "{err}");
}
