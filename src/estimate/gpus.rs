//! The GPU catalogue: memory as NVML (and nvidia-smi) reports it, not the marketing number,
//! compute capability, and whether the card has bf16 (compute capability 8.0 and later).
//!
//! Each entry names where its memory figure comes from: measured on a lent machine here,
//! or an nvidia-smi output seen in a public issue (linked), or, where none was found, the
//! commonly reported value marked unverified.

use serde::Serialize;

/// One GPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuModel {
    /// Short id for `--gpu` (`h100-sxm`).
    pub id: &'static str,
    /// The name NVML reports.
    pub name: &'static str,
    /// What the data sheet says, in GB.
    pub marketing_gb: u32,
    /// NVML's total memory (`nvidia-smi --query-gpu=memory.total`), in bytes.
    pub memory_bytes: u64,
    pub compute_capability: (u32, u32),
    /// Where `memory_bytes` comes from.
    pub source: &'static str,
}

impl GpuModel {
    /// bf16 arithmetic needs compute capability 8.0 (Ampere) or later.
    pub fn bf16(&self) -> bool {
        self.compute_capability.0 >= 8
    }

    /// Memory a process can hope to use: NVML's total minus what the driver holds before
    /// any process exists (measured on the H100: 85,520,809,984 total, 85,017,493,504 free
    /// with no process, so 480 MiB; taken as the same on every card).
    pub fn usable_bytes(&self) -> u64 {
        self.memory_bytes.saturating_sub(DRIVER_RESERVED_BYTES)
    }
}

/// Device memory in use before any process (driver reservations), measured on the H100.
pub const DRIVER_RESERVED_BYTES: u64 = 85_520_809_984 - 85_017_493_504;

const MIB: u64 = 1 << 20;

/// Every GPU vramprobe plans for.
pub const CATALOGUE: &[GpuModel] = &[
    GpuModel {
        id: "a100-40gb",
        name: "NVIDIA A100-SXM4-40GB",
        marketing_gb: 40,
        memory_bytes: 40_960 * MIB,
        compute_capability: (8, 0),
        source: "nvidia-smi in github.com/bottlerocket-os/bottlerocket-core-kit/pull/834",
    },
    GpuModel {
        id: "a100-80gb",
        name: "NVIDIA A100-SXM4-80GB",
        marketing_gb: 80,
        memory_bytes: 81_920 * MIB,
        compute_capability: (8, 0),
        source: "commonly reported nvidia-smi value (unverified here)",
    },
    GpuModel {
        id: "h100-sxm",
        name: "NVIDIA H100 80GB HBM3",
        marketing_gb: 80,
        memory_bytes: 85_520_809_984,
        compute_capability: (9, 0),
        source: "measured here, 2026-11-26 (reports/gpu/2026-11-26-h100-80gb)",
    },
    GpuModel {
        id: "h100-pcie",
        name: "NVIDIA H100 PCIe",
        marketing_gb: 80,
        memory_bytes: 81_559 * MIB,
        compute_capability: (9, 0),
        source: "commonly reported nvidia-smi value (unverified here)",
    },
    GpuModel {
        id: "h200",
        name: "NVIDIA H200",
        marketing_gb: 141,
        memory_bytes: 143_771 * MIB,
        compute_capability: (9, 0),
        source: "nvidia-smi on a lent H200 of this workplace, 2026-10-27",
    },
    GpuModel {
        id: "b200",
        name: "NVIDIA B200",
        marketing_gb: 192,
        memory_bytes: 183_359 * MIB,
        compute_capability: (10, 0),
        source: "nvidia-smi in github.com/NVIDIA/TensorRT-LLM/issues/10278",
    },
    GpuModel {
        id: "l40s",
        name: "NVIDIA L40S",
        marketing_gb: 48,
        memory_bytes: 46_068 * MIB,
        compute_capability: (8, 9),
        source: "nvidia-smi in github.com/akash-network/provider-configs/pull/99",
    },
    GpuModel {
        id: "l4",
        name: "NVIDIA L4",
        marketing_gb: 24,
        memory_bytes: 23_034 * MIB,
        compute_capability: (8, 9),
        source: "commonly reported nvidia-smi value (unverified here)",
    },
    GpuModel {
        id: "a10",
        name: "NVIDIA A10",
        marketing_gb: 24,
        memory_bytes: 23_028 * MIB,
        compute_capability: (8, 6),
        source: "commonly reported nvidia-smi value (unverified here)",
    },
    GpuModel {
        id: "a6000",
        name: "NVIDIA RTX A6000",
        marketing_gb: 48,
        memory_bytes: 49_140 * MIB,
        compute_capability: (8, 6),
        source: "commonly reported nvidia-smi value (unverified here)",
    },
    GpuModel {
        id: "rtx6000-ada",
        name: "NVIDIA RTX 6000 Ada Generation",
        marketing_gb: 48,
        memory_bytes: 49_140 * MIB,
        compute_capability: (8, 9),
        source: "commonly reported nvidia-smi value (unverified here)",
    },
    GpuModel {
        id: "rtx3090",
        name: "NVIDIA GeForce RTX 3090",
        marketing_gb: 24,
        memory_bytes: 24_576 * MIB,
        compute_capability: (8, 6),
        source: "nvidia-smi in github.com/noonghunna/club-3090/issues/1128",
    },
    GpuModel {
        id: "rtx4090",
        name: "NVIDIA GeForce RTX 4090",
        marketing_gb: 24,
        memory_bytes: 24_564 * MIB,
        compute_capability: (8, 9),
        source: "nvidia-smi in github.com/RLinf/RLinf/issues/255",
    },
    GpuModel {
        id: "t4",
        name: "Tesla T4",
        marketing_gb: 16,
        memory_bytes: 15_360 * MIB,
        compute_capability: (7, 5),
        source: "commonly reported nvidia-smi value (unverified here)",
    },
    GpuModel {
        id: "v100-16gb",
        name: "Tesla V100-SXM2-16GB",
        marketing_gb: 16,
        memory_bytes: 16_160 * MIB,
        compute_capability: (7, 0),
        source: "nvidia-smi in github.com/4paradigm/k8s-vgpu-scheduler/issues/7",
    },
    GpuModel {
        id: "v100-32gb",
        name: "Tesla V100-SXM2-32GB",
        marketing_gb: 32,
        memory_bytes: 32_510 * MIB,
        compute_capability: (7, 0),
        source: "commonly reported nvidia-smi value (unverified here)",
    },
];

/// A GPU by id (`h100-sxm`) or by a case-insensitive part of its name (`4090`).
pub fn find(query: &str) -> Option<&'static GpuModel> {
    let q = query.to_ascii_lowercase();
    CATALOGUE.iter().find(|g| g.id == q).or_else(|| {
        let hits: Vec<&GpuModel> = CATALOGUE
            .iter()
            .filter(|g| g.name.to_ascii_lowercase().contains(&q) || g.id.contains(&q))
            .collect();
        (hits.len() == 1).then(|| hits[0])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_every_gpu_the_issue_names_and_no_marketing_numbers() {
        for id in [
            "a100-40gb",
            "a100-80gb",
            "h100-sxm",
            "h100-pcie",
            "h200",
            "b200",
            "l40s",
            "l4",
            "a10",
            "a6000",
            "rtx6000-ada",
            "rtx3090",
            "rtx4090",
            "t4",
            "v100-16gb",
            "v100-32gb",
        ] {
            let g = find(id).unwrap_or_else(|| panic!("{id}"));
            // NVML's total is never the marketing number in bytes (GB or GiB).
            assert_ne!(
                g.memory_bytes,
                u64::from(g.marketing_gb) * 1_000_000_000,
                "{id}"
            );
            assert!(!g.source.is_empty());
        }
        let ids: std::collections::BTreeSet<_> = CATALOGUE.iter().map(|g| g.id).collect();
        assert_eq!(ids.len(), CATALOGUE.len(), "ids are unique");
    }

    #[test]
    fn bf16_from_ampere_on_and_lookup_by_name() {
        assert!(find("h100-sxm").is_some_and(|g| g.bf16()));
        assert!(find("t4").is_some_and(|g| !g.bf16()));
        assert!(find("v100-32gb").is_some_and(|g| !g.bf16()));
        assert_eq!(find("4090").map(|g| g.id), Some("rtx4090"));
        assert_eq!(find("H200").map(|g| g.id), Some("h200"));
        assert!(find("a100").is_none(), "ambiguous: 40 and 80 GB");
        assert!(find("tpu").is_none());
        // The measured H100: 81559 MiB as nvidia-smi shows it.
        assert_eq!(find("h100-sxm").map(|g| g.memory_bytes / MIB), Some(81_559));
    }
}
