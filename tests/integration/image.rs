//! The CPU container image, built here without pulling anything (scripts/build-image.sh: an
//! OCI image layout), and deploy/kubernetes checked offline (scripts/check-deploy.py). No
//! container runtime runs here (no podman; docker has no daemon), so the image's root file
//! system is run with chroot as its user 65532 and asked for /healthz.

use super::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let path = layout.join("blobs/sha256").join(hex);
    let o = Command::new("sha256sum").arg(&path).output().unwrap();
    let sum = String::from_utf8_lossy(&o.stdout);
    assert!(
        sum.starts_with(hex),
        "{digest}: the blob's content does not match"
    );
    std::fs::read(path).unwrap()
}

#[test]
fn the_cpu_image_is_an_oci_layout_that_serves_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("image");
    let o = Command::new("scripts/build-image.sh")
        .arg(&out)
        .current_dir(root())
        .env("VRAMPROBE_BIN", env!("CARGO_BIN_EXE_vramprobe"))
        .output()
        .unwrap();
    ok(&o);
    let version = env!("CARGO_PKG_VERSION");
    let layout = out.join(version);
    assert!(out.join(format!("{version}.oci.tar")).is_file());
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(
        m["annotations"]["io.containerd.image.name"],
        format!("ghcr.io/vramprobe/vramprobe:{version}")
    );
    let manifest: Value =
        serde_json::from_slice(&blob(&layout, m["digest"].as_str().unwrap())).unwrap();
    let config: Value = serde_json::from_slice(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let c = &config["config"];
    assert_eq!(c["Entrypoint"][0], "/usr/local/bin/vramprobe");
    assert_eq!(c["Cmd"][0], "serve");
    assert!(c["ExposedPorts"]["8947/tcp"].is_object());
    assert_eq!(c["User"], "65532:65532");
    let layer = blob(&layout, manifest["layers"][0]["digest"].as_str().unwrap());
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let layer_file = dir.path().join("layer.tar.gz");
    std::fs::write(&layer_file, layer).unwrap();
    let o = Command::new("tar")
        .arg("-xzf")
        .arg(&layer_file)
        .arg("-C")
        .arg(&rootfs)
        .output()
        .unwrap();
    ok(&o);
    assert!(rootfs.join("usr/local/bin/vramprobe").is_file());
    assert!(rootfs
        .join("usr/share/vramprobe/models/meta-llama-3-8b-instruct/config.json")
        .is_file());

    // Run it as the image would: its own root, its user, its environment.
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: running the image's root file system needs root (chroot)");
        return;
    }
    let chroot = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .expect("chroot (coreutils) on PATH");
    let mut child = Command::new(chroot)
        .arg("--userspec=65532:65532")
        .arg(&rootfs)
        .arg("/usr/local/bin/vramprobe")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("VRAMPROBE_RUNS_DIR", "/var/lib/vramprobe/runs")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    let health: Value = reqwest::blocking::get(format!("http://{addr}/healthz"))
        .unwrap()
        .json()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(health["status"], "ok", "{line}");
}

/// The manifests parse as Kubernetes objects of known kinds with their required fields,
/// their references resolve, the images are those the build scripts tag, and the Job writes
/// its run where the DaemonSet reads it.
#[test]
fn deploy_manifests_pass_the_offline_check() {
    let have_yaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if !have_yaml && std::env::var_os("VRAMPROBE_REQUIRE_TOOLS").is_none() {
        eprintln!("skipped: deploy_manifests_pass_the_offline_check: needs PyYAML (scripts/test.sh installs it)");
        return;
    }
    let o = Command::new("python3")
        .args(["scripts/check-deploy.py", env!("CARGO_PKG_VERSION")])
        .current_dir(root())
        .output()
        .unwrap();
    ok(&o);
    assert!(
        stdout(&o).contains("4 objects checked, 0 problems"),
        "{}",
        stdout(&o)
    );
}
