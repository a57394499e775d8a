use super::*;
use crate::probe::nvml::{DeviceMemory, GpuInfo, MigSnapshot};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const UID: &str = "8b5f0d6e-1c2a-4b3d-9e8f-0a1b2c3d4e5f";

fn uid_underscored() -> String {
    UID.replace('-', "_")
}

fn owner(pod: &str, container: &str) -> Option<Owner> {
    Some(Owner {
        pod_uid: pod.into(),
        container_id: container.into(),
    })
}

#[test]
fn every_cgroup_path_form_names_its_pod_and_container() {
    let u = uid_underscored();
    let cases: Vec<(String, Option<Owner>, &str)> = vec![
        // cgroup v2, systemd driver, containerd: Burstable, BestEffort, Guaranteed.
        (
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope\n"),
            owner(UID, ID),
            "v2 systemd containerd burstable",
        ),
        (
            format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope\n"),
            owner(UID, ID),
            "v2 systemd containerd besteffort",
        ),
        (
            format!("0::/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope\n"),
            owner(UID, ID),
            "v2 systemd containerd guaranteed",
        ),
        // CRI-O, systemd driver; its conmon is not the container.
        (
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope\n"),
            owner(UID, ID),
            "v2 systemd cri-o",
        ),
        (
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{ID}.scope\n"),
            owner(UID, ""),
            "cri-o conmon",
        ),
        // cgroupfs driver: Guaranteed, Burstable, BestEffort, CRI-O's prefix.
        (format!("0::/kubepods/pod{UID}/{ID}\n"), owner(UID, ID), "v2 cgroupfs guaranteed"),
        (format!("0::/kubepods/burstable/pod{UID}/{ID}\n"), owner(UID, ID), "v2 cgroupfs burstable"),
        (format!("0::/kubepods/besteffort/pod{UID}/crio-{ID}\n"), owner(UID, ID), "v2 cgroupfs cri-o"),
        // cgroup v1: one line per hierarchy; name=systemd on a hybrid host names nothing.
        (
            format!(
                "12:memory:/kubepods/burstable/pod{UID}/{ID}\n11:pids:/kubepods/burstable/pod{UID}/{ID}\n\
                 1:name=systemd:/system.slice/containerd.service\n0::/\n"
            ),
            owner(UID, ID),
            "v1 cgroupfs",
        ),
        (
            format!(
                "1:name=systemd:/user.slice\n4:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope\n"
            ),
            owner(UID, ID),
            "v1 systemd, container on a later line",
        ),
        // Docker and Podman outside Kubernetes.
        (format!("0::/system.slice/docker-{ID}.scope\n"), owner("", ID), "docker systemd"),
        (format!("13:memory:/docker/{ID}\n"), owner("", ID), "docker cgroupfs v1"),
        (format!("0::/machine.slice/libpod-{ID}.scope/container\n"), owner("", ID), "podman"),
        // Seen from a private cgroup namespace.
        (
            format!("0::/../../kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope\n"),
            owner(UID, ID),
            "private cgroupns",
        ),
        // Outside any container.
        ("0::/system.slice/nvidia-persistenced.service\n".into(), owner("", ""), "host service"),
        ("0::/user.slice/user-1000.slice/session-3.scope\n".into(), owner("", ""), "login session"),
        ("0::/\n".into(), owner("", ""), "root"),
        // Static pods' uids are 32 hex digits without dashes.
        (
            format!("0::/kubepods/burstable/pod0123456789abcdef0123456789abcdef/{ID}\n"),
            owner("0123456789abcdef0123456789abcdef", ID),
            "static pod",
        ),
        // Nothing parseable.
        (String::new(), None, "empty"),
        ("garbage\n".into(), None, "garbage"),
    ];
    // Each form as a /proc tree, resolved the way the daemon does (by PID, under the root).
    let dir = tempfile::tempdir().unwrap();
    let mut r = Resolver::new(dir.path().to_path_buf());
    for (pid, (text, want, what)) in (1000u32..).zip(cases) {
        assert_eq!(owner_of_cgroup(&text), want, "{what}: {text}");
        write_proc(dir.path(), pid, u64::from(pid), &text);
        assert_eq!(r.resolve(pid), want, "{what} through /proc/{pid}");
    }
    // Near misses are not ids: 63 hex digits, a pod segment that is not a uid.
    assert_eq!(
        owner_of_cgroup(&format!("0::/docker/{}\n", &ID[1..])),
        owner("", "")
    );
    assert_eq!(
        owner_of_cgroup("0::/podman.slice/pods.slice\n"),
        owner("", "")
    );
}

fn stat(pid: u32, comm: &str, start: u64) -> String {
    // Fields 3..=21, then 22 = starttime, then more.
    let middle = (3..22).map(|i| i.to_string()).collect::<Vec<_>>().join(" ");
    format!("{pid} ({comm}) S {middle} {start} 4096 100\n").replacen(" S 3 ", " S ", 1)
}

#[test]
fn start_time_is_field_22_even_with_odd_command_names() {
    let s = stat(7, "python", 123_456);
    assert_eq!(start_time(&s), Some(123_456), "{s}");
    assert_eq!(start_time(&stat(7, "a (b) c", 99)), Some(99));
    assert_eq!(start_time("7 (x) S 1 2"), None, "short");
    assert_eq!(start_time("nonsense"), None);
}

fn write_proc(root: &std::path::Path, pid: u32, start: u64, cgroup: &str) {
    let d = root.join(pid.to_string());
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("stat"), stat(pid, "vllm serve", start)).unwrap();
    std::fs::write(d.join("cgroup"), cgroup).unwrap();
}

fn device(index: u32, used: u64, processes: Vec<(u32, Option<u64>)>) -> DeviceSnapshot {
    DeviceSnapshot {
        info: GpuInfo {
            index,
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: format!("GPU-{index}"),
            driver_version: "580.159.04".into(),
            cuda_driver_version: "13.0".into(),
            memory_total_bytes: 80 << 30,
        },
        memory: DeviceMemory {
            used,
            free: (80 << 30) - used,
            reserved: 0,
            total: 80 << 30,
        },
        processes,
        mig: Vec::new(),
        health: Default::default(),
    }
}

#[test]
fn processes_sum_per_container_and_the_rest_is_unattributed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let other = "f".repeat(64);
    write_proc(root, 100, 1, &format!("0::/kubepods/pod{UID}/{ID}\n"));
    write_proc(root, 101, 2, &format!("0::/kubepods/pod{UID}/{ID}\n"));
    write_proc(
        root,
        200,
        3,
        &format!("0::/system.slice/docker-{other}.scope\n"),
    );
    write_proc(root, 300, 4, "0::/system.slice/x.service\n");
    // PID 400 is listed by NVML but has no /proc entry (exited; or not the host's PIDs).
    let devices = vec![
        device(
            0,
            10_000,
            vec![
                (100, Some(3_000)),
                (101, Some(2_000)),
                (200, Some(1_000)),
                (400, Some(500)),
                (500, None),
            ],
        ),
        device(1, 700, vec![(300, Some(600))]),
    ];
    let mut r = Resolver::new(root.to_path_buf());
    let a = attribute(&devices, &mut r, 100);
    let find = |gpu: &str, c: &str| {
        a.containers
            .iter()
            .find(|x| x.gpu == gpu && x.owner.container_id == c)
            .map(|x| (x.owner.pod_uid.clone(), x.bytes))
    };
    assert_eq!(find("0", ID), Some((UID.to_string(), 5_000)));
    assert_eq!(find("0", &other), Some((String::new(), 1_000)));
    assert_eq!(find("1", ""), Some((String::new(), 600)));
    assert_eq!(a.containers.len(), 3);
    assert_eq!(a.containers[0].bytes, 5_000, "largest first");
    // GPU 0: 10,000 used, processes account for 6,500 (PID 500's bytes are unknown).
    assert_eq!(a.unattributed[0], ("0".into(), "GPU-0".into(), 3_500));
    assert_eq!(a.unresolved[0], ("0".into(), "GPU-0".into(), 500));
    assert_eq!(a.unattributed[1], ("1".into(), "GPU-1".into(), 100));
    assert_eq!(a.dropped, 0);
    // The cap keeps the largest.
    let capped = attribute(&devices, &mut r, 2);
    assert_eq!(capped.containers.len(), 2);
    assert_eq!(capped.dropped, 1);
    assert_eq!(capped.containers[1].bytes, 1_000);
}

#[test]
fn a_reused_pid_is_resolved_again_and_gone_pids_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_proc(root, 42, 1000, &format!("0::/kubepods/pod{UID}/{ID}\n"));
    let mut r = Resolver::new(root.to_path_buf());
    assert_eq!(r.resolve(42), owner(UID, ID));
    // Same start time: the cache answers, even if the file changed under it.
    std::fs::write(root.join("42/cgroup"), "0::/system.slice/x.service\n").unwrap();
    assert_eq!(r.resolve(42), owner(UID, ID));
    // The PID now belongs to a new process (another start time): read again.
    let other = "e".repeat(64);
    write_proc(
        root,
        42,
        2000,
        &format!("0::/system.slice/docker-{other}.scope\n"),
    );
    assert_eq!(r.resolve(42), owner("", &other));
    // A poll without PID 42 forgets it.
    let _ = attribute(&[device(0, 0, vec![])], &mut r, 10);
    assert_eq!(r.cached(), 0);
    std::fs::remove_dir_all(root.join("42")).unwrap();
    assert_eq!(r.resolve(42), None);
}

#[test]
fn mig_instances_are_attributed_each_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    write_proc(dir.path(), 7, 1, &format!("0::/kubepods/pod{UID}/{ID}\n"));
    let mut d = device(0, 9_000, vec![]);
    d.mig = vec![
        MigSnapshot {
            index: 0,
            uuid: "MIG-a".into(),
            memory: DeviceMemory {
                used: 4_000,
                free: 6_000,
                reserved: 0,
                total: 10_000,
            },
            processes: vec![(7, Some(3_500))],
        },
        MigSnapshot {
            index: 1,
            uuid: "MIG-b".into(),
            memory: DeviceMemory {
                used: 100,
                free: 9_900,
                reserved: 0,
                total: 10_000,
            },
            processes: vec![],
        },
    ];
    let mut r = Resolver::new(dir.path().to_path_buf());
    let a = attribute(&[d], &mut r, 10);
    assert_eq!(a.containers.len(), 1);
    assert_eq!(a.containers[0].uuid, "MIG-a");
    assert_eq!(a.containers[0].bytes, 3_500);
    assert_eq!(
        a.unattributed,
        vec![
            ("0".into(), "MIG-a".into(), 500),
            ("0".into(), "MIG-b".into(), 100)
        ]
    );
}

#[test]
fn a_fifo_or_a_huge_file_under_the_root_does_not_block_or_bloat_the_poller() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_proc(root, 5, 1, "0::/\n");
    // A FIFO where the cgroup file should be: opening it for reading would block forever.
    std::fs::remove_file(root.join("5/cgroup")).unwrap();
    nix::unistd::mkfifo(&root.join("5/cgroup"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut r = Resolver::new(root.to_path_buf());
    assert_eq!(r.resolve(5), None);
    // A 1 MiB cgroup file: only its first 64 KiB are read, and it still parses.
    write_proc(
        root,
        6,
        1,
        &format!("0::/docker/{ID}\n{}", "x".repeat(1 << 20)),
    );
    assert_eq!(r.resolve(6), owner("", ID));
}
