//! The body of POST /api/v1/bench as the daemon reads it: any bytes give a checked plan (and
//! its command line for the sweep's child) or an error naming the field, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vramprobe::serve::job::fuzz_request(data);
});
