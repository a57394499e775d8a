//! The command line: parse, run one command, print the error once, choose the exit code.
//!
//! `args` defines the arguments; each command has a file that runs it and prints
//! (`estimate`, `fit`, `gpus`, `bench`, `report`, `serve`). The work itself is the library's.

mod args;
mod bench;
mod estimate;
mod fit;
mod gpus;
mod report;
mod serve;
mod vllm;

pub use args::*;

use crate::bench::BenchError;
use crate::estimate::cuda::{CalibrationError, CudaOverheads};
use crate::spec::SpecError;
use crate::store;
use clap::Parser;
use std::path::Path;
use std::process::ExitCode;

/// `print!` to stdout that never panics: when stdout is closed (`vramprobe ... | head`) the
/// rest of the output is dropped and the command goes on (a bench still writes its report).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `println!` to stdout that never panics (see `out!`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}
pub(crate) use {out, outln};

/// Exit code for bad input (a config, a flag, an existing run directory).
pub const EXIT_BAD_INPUT: u8 = 2;

/// Exit code after SIGINT/SIGTERM.
pub const EXIT_INTERRUPTED: u8 = crate::bench::EXIT_INTERRUPTED;

/// A combination of flags that cannot work, found before anything runs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Parse the command line, run it, report the error once.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs its life (listening, sweeps, NVML lost and back) at info.
    let default_filter = if matches!(cli.command, Command::Serve(_)) {
        "warn,vramprobe=info,hf_hub=off"
    } else {
        // hf-hub logs its retries at ERROR; the one error that matters is ours.
        "warn,hf_hub=off"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VRAMPROBE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<BenchError>(),
                    Some(BenchError::Interrupted { .. })
                )
            }) {
                return ExitCode::from(EXIT_INTERRUPTED);
            }
            if is_bad_input(&e) {
                ExitCode::from(EXIT_BAD_INPUT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn is_bad_input(e: &anyhow::Error) -> bool {
    use crate::runner::RunError;
    e.chain().any(|c| {
        c.is::<SpecError>()
            || c.is::<BadInput>()
            || c.is::<CalibrationError>()
            || c.is::<crate::plan::PlanError>()
            || matches!(
                c.downcast_ref::<crate::hub::HubError>(),
                Some(crate::hub::HubError::Gated { .. })
                    | Some(crate::hub::HubError::NotFound { .. })
                    | Some(crate::hub::HubError::Offline { .. })
            )
            || matches!(
                c.downcast_ref::<BenchError>(),
                Some(BenchError::Plan(_))
                    | Some(BenchError::Options(_))
                    | Some(BenchError::Run(RunError::Device(_)))
                    | Some(BenchError::Store(
                        store::StoreError::Exists { .. }
                            | store::StoreError::NotARun { .. }
                            | store::StoreError::Locked { .. }
                    ))
                    | Some(BenchError::Run(RunError::Unsupported { .. }))
                    | Some(BenchError::Run(RunError::BadTensor { .. }))
                    | Some(BenchError::Run(RunError::NoWeights { .. }))
            )
    })
}

/// How a model's numbers are held, for headings: the dtype, or for candle-quantized its
/// GGML type (and f32 activations).
pub(crate) fn precision(
    dtype: crate::spec::DType,
    engine: crate::estimate::EngineProfile,
    quant: crate::estimate::Quant,
) -> String {
    match (engine, quant.ggml()) {
        (crate::estimate::EngineProfile::CandleQuantized, Some(t)) => {
            format!("{} (GGUF blocks; f32 activations and KV cache)", t.as_str())
        }
        (crate::estimate::EngineProfile::CandleQuantized, None) => {
            "q4k (GGUF blocks; f32 activations and KV cache)".into()
        }
        _ => dtype.to_string(),
    }
}

/// What `engine` cannot run at all: candle-quantized runs Llama-shaped GGUF models only
/// (no biases, q/k norms or fused projections; rows its blocks divide), trains nothing and
/// has rotary tables for 4096 positions.
///
/// # Errors
/// [`BadInput`] naming the flag or the config's field.
pub(crate) fn check_engine_workload(
    spec: &crate::spec::ModelSpec,
    engine: crate::estimate::EngineProfile,
    quant: crate::estimate::Quant,
    w: crate::estimate::Workload,
    mode: crate::plan::Mode,
) -> Result<(), BadInput> {
    use crate::estimate::EngineProfile;
    if let Some(what) = spec.not_llama() {
        if mode == crate::plan::Mode::Train {
            return Err(BadInput(format!(
                "{what}: --mode train models the Llama family's training step only (estimate \
                 inference with --engine transformers-sdpa or transformers-eager)"
            )));
        }
        if engine.is_measured() {
            return Err(BadInput(format!(
                "{what}: the candle engines ({}) run candle-transformers' Llama, which has no \
                 code for it; estimate it with --engine transformers-sdpa or \
                 transformers-eager",
                EngineProfile::MEASURED
                    .map(EngineProfile::as_str)
                    .join(", ")
            )));
        }
    }
    if engine != EngineProfile::CandleQuantized {
        return Ok(());
    }
    let t = quant
        .ggml()
        .unwrap_or(crate::estimate::candle_quantized::GgmlType::Q4K);
    crate::runner::quantized::check(spec, t).map_err(|e| BadInput(e.to_string()))?;
    if mode == crate::plan::Mode::Train {
        return Err(BadInput(
            "--mode train: candle-quantized runs inference only (its weights are frozen GGUF \
             blocks; QLoRA is --quant int4 with --lora-rank on the other engines)"
                .into(),
        ));
    }
    let max = crate::estimate::candle_quantized::MAX_POSITIONS;
    let need = w.context + w.decode_steps.max(1);
    if need > max {
        return Err(BadInput(format!(
            "--context {} + --decode-steps {} = {need} positions: candle-transformers' \
             quantized_llama has rotary tables for {max} (MAX_SEQ_LEN), so candle-quantized \
             cannot run past them",
            w.context,
            w.decode_steps.max(1)
        )));
    }
    Ok(())
}

/// Run a parsed command.
///
/// # Errors
/// Whatever the command reports, with context.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Estimate(a) => estimate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Gpus(a) => gpus::run(a),
        Command::Fit(a) => fit::run(a),
        Command::Report(a) => report::run(a),
        Command::Serve(a) => serve::run(a),
    }
}

/// The CUDA overheads: from a calibration file; else the committed calibration of the one
/// GPU `--gpu` names, where there is one; else the measured H100 defaults (and in a fit over
/// the catalogue, each GPU's committed calibration where it has one).
fn load_overheads(
    calibration: Option<&Path>,
    gpu: Option<&str>,
) -> anyhow::Result<(CudaOverheads, String)> {
    use crate::estimate::cuda;
    let committed = gpu
        .and_then(crate::estimate::gpus::find)
        .and_then(|g| cuda::committed_for(g.name));
    match (calibration, committed) {
        (None, Some(c)) => Ok((c.overheads, c.describe())),
        (None, None) => {
            let mut source =
                "default: NVIDIA H100 80GB HBM3, driver 580.159.04, measured 2026-11-26"
                    .to_string();
            let with: Vec<String> = cuda::committed()?
                .iter()
                .map(|c| format!("{} ({})", c.gpu_name, c.file))
                .collect();
            if gpu.is_none() && !with.is_empty() {
                source.push_str(&format!(
                    "; fits use the committed calibration of {}",
                    with.join(", ")
                ));
            }
            Ok((CudaOverheads::default(), source))
        }
        (Some(p), _) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| BadInput(format!("{}: {e}", p.display())))?;
            let shown = p.display().to_string();
            Ok((CudaOverheads::from_calibration_json(&text, &shown)?, shown))
        }
    }
}

/// The assumptions made about the requested workload, one line each.
fn print_assumed(assumed: &[String]) {
    for a in assumed {
        outln!("assumed: {a}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("40GiB"), Ok(40 << 30));
        assert_eq!(parse_size("24GB"), Ok(24_000_000_000));
        assert_eq!(parse_size("1.5 MiB"), Ok(1_572_864));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "0", "-1GB", "12 parsecs", "GB", "1e30"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    /// The daemon's sweeps run as `vramprobe bench` with the plan's arguments: parsed
    /// back, they give the same plan.
    #[test]
    fn a_plan_survives_its_command_line() {
        use crate::estimate::candle_train::LoraSetup;
        use crate::plan::{BenchPlan, DeviceChoice, Grid, Mode, WeightsChoice};
        let plans = [
            BenchPlan::default(),
            BenchPlan {
                model: Some("models/meta-llama-3-8b-instruct".into()),
                dtype: crate::spec::DType::BF16,
                device: DeviceChoice::Cuda,
                grid: Grid {
                    batches: vec![1, 8],
                    contexts: vec![8192],
                    decode_steps: 3,
                },
                weights: WeightsChoice::Dir("/weights".into()),
                seed: 7,
                nvml_hz: 20,
                find_boundary: Some(256),
                memory_limit: Some(40 << 30),
                max_position: Some(16384),
                ..BenchPlan::default()
            },
            BenchPlan {
                mode: Mode::Train,
                lora: Some(LoraSetup {
                    rank: 8,
                    targets: vec![crate::estimate::train::Target::Down],
                }),
                grid: Grid::default_for(Mode::Train),
                ..BenchPlan::default()
            },
            BenchPlan {
                engine: crate::estimate::EngineProfile::CandleChunked,
                prefill_chunk: Some(512),
                kv_capacity: Some(8192),
                attention_block: Some(1 << 20),
                ..BenchPlan::default()
            },
        ];
        for plan in plans {
            let mut argv = vec!["vramprobe".to_string()];
            argv.extend(plan.to_args());
            let Command::Bench(a) = Cli::try_parse_from(&argv).expect("parses").command else {
                panic!("not a bench command: {argv:?}");
            };
            assert_eq!(a.plan(), plan, "{argv:?}");
        }
    }
}
