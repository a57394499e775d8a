//! Load generator for `vramprobe serve`'s /metrics: a fixed request rate (open loop: each
//! request's latency is counted from when it was due, so a slow answer cannot hide the
//! requests it delayed), over keep-alive HTTP/1.1 connections, with latency percentiles.
//! Standard library only.
//!
//! ```sh
//! cargo run --release --example scrape_load -- 127.0.0.1:8947 /metrics 200 30
//! ```
//! Arguments: address, path, requests per second, seconds [, connections (default 4)].
//! Prints one JSON line: rate, requests, errors, bytes per answer, p50/p90/p99/max in ms.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: Option<T>) -> T {
    match args.get(i).map(|s| s.parse::<T>()) {
        Some(Ok(v)) => v,
        _ => default.unwrap_or_else(|| {
            eprintln!("usage: scrape_load ADDR PATH RATE SECONDS [CONNECTIONS]");
            std::process::exit(2)
        }),
    }
}

/// One request on an open connection: the body's length, or why it failed.
fn get(conn: &mut BufReader<TcpStream>, host: &str, path: &str) -> Result<usize, String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n"
    );
    conn.get_mut()
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut status = String::new();
    conn.read_line(&mut status).map_err(|e| e.to_string())?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status {}", status.trim()));
    }
    let mut length = None;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            }
        }
    }
    let n = length.ok_or("no content-length")?;
    let mut body = vec![0u8; n];
    conn.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok(n)
}

fn connect(addr: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| {
        eprintln!("connect {addr}: {e}");
        std::process::exit(1)
    });
    let _ = s.set_nodelay(true);
    BufReader::new(s)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: String = arg(&args, 1, None);
    let path: String = arg(&args, 2, None);
    let rate: f64 = arg(&args, 3, None);
    let secs: f64 = arg(&args, 4, None);
    let conns: usize = arg(&args, 5, Some(4));
    let total = (rate * secs).round() as usize;
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let workers: Vec<_> = (0..conns)
        .map(|w| {
            let (addr, path) = (addr.clone(), path.clone());
            std::thread::spawn(move || {
                let mut conn = connect(&addr);
                let mut lat = Vec::new();
                let (mut errors, mut bytes) = (0usize, 0usize);
                // Worker w sends requests w, w + conns, ... each at its due time.
                let offset = interval.mul_f64(w as f64 / conns as f64);
                let mut k = 0u32;
                while (k as usize) * conns + w < total {
                    let due = start + offset + interval * k;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    match get(&mut conn, &addr, &path) {
                        Ok(n) => {
                            bytes = n;
                            lat.push(due.elapsed());
                        }
                        Err(_) => {
                            errors += 1;
                            conn = connect(&addr);
                        }
                    }
                    k += 1;
                }
                (lat, errors, bytes)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let (mut errors, mut bytes) = (0, 0);
    for w in workers {
        let (l, e, b) = w.join().unwrap_or_default();
        lat.extend(l);
        errors += e;
        bytes = bytes.max(b);
    }
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i].as_secs_f64() * 1e3
    };
    println!(
        "{{\"rate\":{rate},\"seconds\":{secs},\"connections\":{conns},\"requests\":{},\"errors\":{errors},\"bytes\":{bytes},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        lat.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
}
