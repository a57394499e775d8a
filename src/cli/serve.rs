//! `vramprobe serve`: the daemon's options, then the daemon.

use super::{outln, BadInput, ServeArgs};

pub(super) fn run(a: ServeArgs) -> anyhow::Result<()> {
    use crate::serve::{self, job::BenchRequest, Secret, ServeError, ServeOptions};
    let opts = ServeOptions {
        listen: a.listen,
        // A token read from a file (a Kubernetes secret) often ends with a newline: the
        // token is what is between the white space.
        token: a.token.map(|t| Secret(t.trim().to_string())),
        runs_dir: a.runs_dir,
        poll_interval: a.poll_interval,
        per_process: a.per_process,
        fake_nvml: a.fake_nvml,
        proc_root: (!a.no_containers).then_some(a.proc_root),
        max_containers: a.max_containers,
        engines: a.engine_metrics,
        engine_models: a.engine_model,
        bench_on_start: a.bench_on_start,
        bench_every: a.bench_every,
        bench_defaults: BenchRequest {
            model: a.bench_model,
            dtype: a.bench_dtype,
            device: a.bench_device,
            batch: a.bench_batch,
            context: a.bench_context,
            decode_steps: a.bench_decode_steps,
            mode: a.bench_mode,
            lora_rank: None,
            lora_targets: None,
            engine: a.bench_engine,
            prefill_chunk: None,
            kv_capacity: None,
            attention_block: None,
            quant: a.bench_quant,
        },
        header_timeout: a.header_timeout,
        request_timeout: a.request_timeout,
        shutdown_grace: a.shutdown_grace,
    };
    serve::run(opts, |addr| {
        outln!("vramprobe serve: listening on http://{addr}");
    })
    .map_err(|e| match e {
        ServeError::Options(m) => anyhow::Error::new(BadInput(m)),
        other => anyhow::Error::new(other),
    })
}
