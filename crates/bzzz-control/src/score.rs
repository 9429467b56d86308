//! Weighted node scores.
//!
//! `score = vram·w_vram + ram·w_ram + cores·w_cpu + disk·w_disk
//!          + min(uptime, cap)·w_uptime − load·w_load − rtt·w_link`
//!
//! VRAM, RAM and free disk in GiB; load is the 1-minute load average per
//! core (0 = idle, 1 = saturated); rtt in milliseconds (the node's link
//! quality as seen by the scorer). Unhealthy nodes score 0. The function is
//! total: any input (NaN, negative load, absurd sizes) gives a finite score
//! ≥ 0; a healthy node scores at least `HEALTHY_FLOOR` (0 = unhealthy).

use bzzz_proto::Capabilities;
use serde::{Deserialize, Serialize};

/// Score weights (config `control.weights`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// Per GiB of GPU memory (all GPUs).
    pub vram_gib: f64,
    /// Per GiB of RAM.
    pub ram_gib: f64,
    /// Per logical core.
    pub cpu_core: f64,
    /// Per GiB of free disk.
    pub disk_free_gib: f64,
    /// Per hour of uptime, up to `uptime_cap_hours`.
    pub uptime_hour: f64,
    pub uptime_cap_hours: f64,
    /// Subtracted per unit of load per core.
    pub load: f64,
    /// Subtracted per millisecond of round-trip time.
    pub link_ms: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            vram_gib: 4.0,
            ram_gib: 0.5,
            cpu_core: 1.0,
            disk_free_gib: 0.01,
            uptime_hour: 0.5,
            uptime_cap_hours: 24.0,
            load: 10.0,
            link_ms: 0.2,
        }
    }
}

impl Weights {
    /// Every weight finite and ≥ 0 (the names of bad ones otherwise).
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("vram_gib", self.vram_gib),
            ("ram_gib", self.ram_gib),
            ("cpu_core", self.cpu_core),
            ("disk_free_gib", self.disk_free_gib),
            ("uptime_hour", self.uptime_hour),
            ("uptime_cap_hours", self.uptime_cap_hours),
            ("load", self.load),
            ("link_ms", self.link_ms),
        ];
        let bad: Vec<&str> = fields
            .iter()
            .filter(|(_, v)| !v.is_finite() || *v < 0.0 || *v > 1e6)
            .map(|(n, _)| *n)
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "weights must be finite numbers from 0 to 1e6: {}",
                bad.join(", ")
            ))
        }
    }
}

/// What a score is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub capabilities: &'a Capabilities,
    pub uptime_secs: u64,
    /// Round-trip time to the node, when measured.
    pub rtt_ms: Option<f64>,
    /// Alive and reachable (the caller's liveness verdict).
    pub healthy: bool,
}

const GIB: f64 = (1u64 << 30) as f64;

fn finite_nonneg(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

/// The lowest score of a healthy node.
pub const HEALTHY_FLOOR: f64 = 0.001;

/// The node's score (finite; 0 when unhealthy, at least [`HEALTHY_FLOOR`]
/// when healthy).
pub fn score(input: &Input<'_>, w: &Weights) -> f64 {
    if !input.healthy {
        return 0.0;
    }
    let c = input.capabilities;
    let vram: f64 = c.gpus.iter().map(|g| g.vram_total_bytes as f64 / GIB).sum();
    let ram = c.memory_total_bytes as f64 / GIB;
    let cores = f64::from(c.cpu.cores);
    let disk = c.disk_free_bytes as f64 / GIB;
    let hours = (input.uptime_secs as f64 / 3600.0).min(finite_nonneg(w.uptime_cap_hours));
    let load = if cores > 0.0 {
        finite_nonneg(c.cpu.load_1m) / cores
    } else {
        0.0
    };
    let rtt = finite_nonneg(input.rtt_ms.unwrap_or(0.0));
    let s = vram * w.vram_gib
        + ram * w.ram_gib
        + cores * w.cpu_core
        + disk * w.disk_free_gib
        + hours * w.uptime_hour
        - load.min(10.0) * w.load
        - rtt.min(10_000.0) * w.link_ms;
    // Round to 1e-3 so that float noise in inputs never reorders equal nodes;
    // a healthy node never scores 0 (0 means unhealthy), however loaded.
    ((finite_nonneg(s) * 1000.0).round() / 1000.0).max(HEALTHY_FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bzzz_proto::{CpuInfo, GpuInfo};

    fn caps(vram_gib: u64, ram_gib: u64, cores: u32, load: f64) -> Capabilities {
        Capabilities {
            cpu: CpuInfo {
                model: "x".into(),
                cores,
                load_1m: load,
                load_5m: load,
                load_15m: load,
            },
            memory_total_bytes: ram_gib << 30,
            memory_free_bytes: ram_gib << 29,
            disk_free_bytes: 100 << 30,
            disk_total_bytes: 200 << 30,
            gpus: if vram_gib > 0 {
                vec![GpuInfo {
                    vendor: "nvidia".into(),
                    model: "g".into(),
                    vram_total_bytes: vram_gib << 30,
                    ..Default::default()
                }]
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    fn s(c: &Capabilities, up: u64, rtt: Option<f64>) -> f64 {
        score(
            &Input {
                capabilities: c,
                uptime_secs: up,
                rtt_ms: rtt,
                healthy: true,
            },
            &Weights::default(),
        )
    }

    #[test]
    fn a_big_gpu_outweighs_a_few_cores_and_some_ram() {
        let gpu = caps(24, 32, 8, 0.0);
        let cpu_box = caps(0, 64, 32, 0.0);
        assert!(s(&gpu, 0, None) > s(&cpu_box, 0, None));
    }

    #[test]
    fn load_latency_and_health_lower_the_score_uptime_raises_it_up_to_a_cap() {
        let c = caps(8, 16, 8, 0.0);
        let base = s(&c, 0, None);
        assert!(s(&caps(8, 16, 8, 8.0), 0, None) < base);
        assert!(s(&c, 0, Some(50.0)) < base);
        assert!(s(&c, 3600, None) > base);
        assert_eq!(s(&c, 24 * 3600, None), s(&c, 240 * 3600, None));
        let unhealthy = score(
            &Input {
                capabilities: &c,
                uptime_secs: 0,
                rtt_ms: None,
                healthy: false,
            },
            &Weights::default(),
        );
        assert_eq!(unhealthy, 0.0);
    }

    #[test]
    fn bad_weights_are_named() {
        let w = Weights {
            load: f64::NAN,
            link_ms: -1.0,
            ..Weights::default()
        };
        let e = w.validate().unwrap_err();
        assert!(e.contains("load") && e.contains("link_ms"), "{e}");
        assert!(Weights::default().validate().is_ok());
    }

    proptest::proptest! {
        #[test]
        fn scores_are_finite_and_non_negative(
            vram in 0u64..4096, ram in 0u64..4096, cores in 0u32..1024,
            load in proptest::num::f64::ANY, rtt in proptest::num::f64::ANY,
            up in proptest::num::u64::ANY,
        ) {
            let c = caps(vram, ram, cores, load);
            let v = s(&c, up, Some(rtt));
            proptest::prop_assert!(v.is_finite() && v >= 0.0);
        }
    }
}
