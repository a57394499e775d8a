//! A run directory's files as `bench --resume`, `report` and the daemon read them: any bytes
//! as run.json (and its stored plan, checked) and as points.jsonl give a value or an error
//! naming the file and line, never a panic. The input is split at its first 0 byte:
//! run.json before it, points.jsonl after.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vramprobe::store::fuzz_run_files(data);
});
