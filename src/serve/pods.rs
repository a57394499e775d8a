//! GPU memory attributed to containers and pods.
//!
//! NVML reports each compute process by its host PID. Which container (and Kubernetes pod)
//! a PID belongs to is in the host's `/proc/<pid>/cgroup`, read under `--proc-root` (the
//! host's /proc mounted into the daemon's container, or hostPID). Every form seen in the
//! wild is understood:
//!
//! - cgroup v2 (`0::/path`) and v1 (`N:controllers:/path`, every line tried);
//! - the systemd driver (`kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`) and the
//!   cgroupfs driver (`kubepods/burstable/pod<uid>/<id>`);
//! - Guaranteed pods (no QoS level in the path), Burstable and BestEffort;
//! - containerd (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`, `crio-<id>`; its
//!   `crio-conmon-<id>` monitor is not the container), Docker (`docker-<id>.scope`,
//!   `docker/<id>`), Podman (`libpod-<id>.scope`) and a bare 64-hex directory;
//! - paths seen from a private cgroup namespace (`/../../kubepods.slice/...`): the `..`
//!   segments are dropped;
//! - processes outside any container (`system.slice/...`, `user.slice/...`, `/`): pod and
//!   container empty.
//!
//! PIDs are reused: a resolution is cached by PID together with the process's start time
//! (`/proc/<pid>/stat`, field 22), and a PID whose start time changed is resolved again.

use crate::probe::nvml::DeviceSnapshot;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

/// Which container a process runs in; both empty outside containers, `pod_uid` empty for
/// containers outside Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Owner {
    pub pod_uid: String,
    pub container_id: String,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container id: 64 hexadecimal digits.
fn container_id(s: &str) -> Option<&str> {
    (s.len() == 64 && is_hex(s)).then_some(s)
}

/// The container id a cgroup path segment names, if any.
fn container_segment(seg: &str) -> Option<String> {
    if seg.starts_with("crio-conmon-") {
        return None; // CRI-O's monitor process, not the container
    }
    let body = seg.strip_suffix(".scope").unwrap_or(seg);
    for prefix in ["cri-containerd-", "crio-", "docker-", "libpod-", ""] {
        if let Some(id) = body.strip_prefix(prefix).and_then(container_id) {
            return Some(id.to_ascii_lowercase());
        }
    }
    None
}

/// The pod uid a cgroup path segment names, if any: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_segment(seg: &str) -> Option<String> {
    let uid = if let Some(rest) = seg.strip_suffix(".slice") {
        let (_, uid) = rest.rsplit_once("-pod")?;
        if !rest.starts_with("kubepods") {
            return None;
        }
        uid
    } else {
        seg.strip_prefix("pod")?
    };
    let uid = uid.replace('_', "-");
    let hex_digits = uid.bytes().filter(u8::is_ascii_hexdigit).count();
    let valid = uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        && (hex_digits == 32)
        && uid.len() <= 36;
    valid.then(|| uid.to_ascii_lowercase())
}

/// The owner a cgroup path describes (`..` segments from a private namespace dropped).
fn owner_of_path(path: &str) -> Owner {
    let mut owner = Owner::default();
    for seg in path.split('/').filter(|s| !s.is_empty() && *s != "..") {
        if let Some(uid) = pod_segment(seg) {
            owner.pod_uid = uid;
        } else if let Some(id) = container_segment(seg) {
            owner.container_id = id;
        }
    }
    owner
}

/// The owner a `/proc/<pid>/cgroup` file describes: the first line that names a container
/// (cgroup v1 lists one line per hierarchy, and some, like `name=systemd` on hybrid hosts,
/// may not), else the first that names a pod, else outside containers. `None` for a file
/// with no `id:controllers:path` line.
pub fn owner_of_cgroup(text: &str) -> Option<Owner> {
    let owners: Vec<Owner> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_id, _controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some(owner_of_path(path.trim()))
        })
        .collect();
    if owners.is_empty() {
        return None;
    }
    owners
        .iter()
        .find(|o| !o.container_id.is_empty())
        .or_else(|| owners.iter().find(|o| !o.pod_uid.is_empty()))
        .or(owners.first())
        .cloned()
}

/// A process's start time in clock ticks since boot: field 22 of `/proc/<pid>/stat` (the
/// command name in field 2 may hold spaces and parentheses: fields are counted after the
/// last `)`).
pub fn start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3 (state); field 22 is the 20th from there.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The most bytes read of one /proc file (a cgroup file is a few hundred bytes).
const MAX_PROC_FILE: u64 = 64 << 10;

/// A /proc file's text, if it is a regular file (a FIFO or device planted under
/// `--proc-root` must not block the poller), at most [`MAX_PROC_FILE`] bytes.
fn read_small(path: &std::path::Path) -> Option<String> {
    use std::io::Read as _;
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_PROC_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Resolves PIDs to owners under a /proc root, caching by (pid, start time).
#[derive(Debug)]
pub struct Resolver {
    root: PathBuf,
    cache: HashMap<u32, (u64, Owner)>,
}

impl Resolver {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            cache: HashMap::new(),
        }
    }

    /// The owner of `pid` now; `None` when its /proc entry cannot be read (it exited, or the
    /// daemon does not see the host's PIDs).
    pub fn resolve(&mut self, pid: u32) -> Option<Owner> {
        let dir = self.root.join(pid.to_string());
        let start = start_time(&read_small(&dir.join("stat"))?)?;
        if let Some((s, owner)) = self.cache.get(&pid) {
            if *s == start {
                return Some(owner.clone());
            }
        }
        let owner = owner_of_cgroup(&read_small(&dir.join("cgroup"))?)?;
        self.cache.insert(pid, (start, owner.clone()));
        Some(owner)
    }

    /// Forget PIDs not seen in the last poll (the cache stays as small as the process list).
    pub fn retain(&mut self, live: &HashSet<u32>) {
        self.cache.retain(|pid, _| live.contains(pid));
    }

    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// One container's memory on one GPU (or MIG instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMemory {
    pub gpu: String,
    pub uuid: String,
    pub owner: Owner,
    pub bytes: u64,
}

/// What one poll attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    /// Summed over each container's processes, largest first, at most the cap.
    pub containers: Vec<ContainerMemory>,
    /// Per GPU: (gpu, uuid, used - what its processes account for).
    pub unattributed: Vec<(String, String, u64)>,
    /// Per GPU: (gpu, uuid, bytes of processes whose /proc entry could not be read).
    pub unresolved: Vec<(String, String, u64)>,
    /// Container series left out by the cap this poll.
    pub dropped: u64,
}

/// The default cap on container series (over all GPUs).
pub const DEFAULT_MAX_CONTAINERS: usize = 1024;

/// Attribute every GPU's (and MIG instance's) processes to containers, at most `cap`
/// container series, the largest kept.
pub fn attribute(devices: &[DeviceSnapshot], resolver: &mut Resolver, cap: usize) -> Attribution {
    let mut sums: BTreeMap<(String, String, Owner), u64> = BTreeMap::new();
    let mut a = Attribution::default();
    let mut live = HashSet::new();
    let mut account = |gpu: String,
                       uuid: &str,
                       used: u64,
                       processes: &[(u32, Option<u64>)],
                       a: &mut Attribution| {
        let mut accounted = 0u64;
        let mut unresolved = 0u64;
        for &(pid, bytes) in processes {
            live.insert(pid);
            let Some(bytes) = bytes else { continue };
            accounted = accounted.saturating_add(bytes);
            match resolver.resolve(pid) {
                Some(owner) => {
                    let e = sums
                        .entry((gpu.clone(), uuid.to_string(), owner))
                        .or_insert(0);
                    *e = e.saturating_add(bytes);
                }
                None => unresolved = unresolved.saturating_add(bytes),
            }
        }
        a.unattributed.push((
            gpu.clone(),
            uuid.to_string(),
            used.saturating_sub(accounted),
        ));
        a.unresolved.push((gpu, uuid.to_string(), unresolved));
    };
    for d in devices {
        let gpu = d.info.index.to_string();
        if d.mig.is_empty() {
            account(gpu, &d.info.uuid, d.memory.used, &d.processes, &mut a);
        } else {
            for m in &d.mig {
                account(gpu.clone(), &m.uuid, m.memory.used, &m.processes, &mut a);
            }
        }
    }
    let mut containers: Vec<ContainerMemory> = sums
        .into_iter()
        .map(|((gpu, uuid, owner), bytes)| ContainerMemory {
            gpu,
            uuid,
            owner,
            bytes,
        })
        .collect();
    containers.sort_by_key(|c| std::cmp::Reverse(c.bytes));
    if containers.len() > cap {
        a.dropped = (containers.len() - cap) as u64;
        containers.truncate(cap);
    }
    a.containers = containers;
    resolver.retain(&live);
    a
}

#[cfg(test)]
mod tests;
